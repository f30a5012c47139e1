//! Wall-clock helpers for what the daemon reports (staleness itself uses the monotonic clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (negative before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
