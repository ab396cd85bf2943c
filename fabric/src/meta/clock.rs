//! The wall clock, where a record needs the time of day (audit entries, token expiry): the
//! proposing member reads it and the command carries it, so the state's apply never does.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
