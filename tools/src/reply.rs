//! What a `fabricctl` subcommand kept in this crate prints: one record, or rows under columns,
//! how times are written in them, and how durations are read from the command line.

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

/// Parses a duration given as seconds (`90`) or with a unit (`90s`, `15m`, `2h`, `3d`) into
/// seconds.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: want a number of seconds, or with s, m, h or d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(n.saturating_mul(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("15m"), Ok(900));
        assert_eq!(parse_secs("72h"), Ok(72 * 3600));
        assert_eq!(parse_secs("2d"), Ok(2 * 86_400));
        assert!(parse_secs("1w").is_err());
        assert!(parse_secs("h").is_err());
    }
}
