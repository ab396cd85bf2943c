//! What a `fabricctl` subcommand kept in this crate prints: one record, or rows under columns,
//! and how times are written in them.

use serde_json::Value;

pub enum Reply {
    One(Value),
    List(Vec<Value>, &'static [&'static str]),
}

/// RFC 3339 text of a time in unix milliseconds (the number itself if it is out of range).
pub fn rfc3339_ms(ms: u64) -> String {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}
