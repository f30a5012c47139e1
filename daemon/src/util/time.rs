//! Wall-clock conversions for what the daemon reports and stores (staleness itself is judged
//! on the monotonic clock, in `catalog`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (negative before it).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => millis(d, i64::MAX),
        Err(e) => -millis(e.duration(), i64::MAX),
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// The wall-clock time `ms` milliseconds after the Unix epoch (the epoch itself for negative
/// values: nothing the daemon stores predates it).
pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// How finely [`rfc3339`] writes a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    /// Whole seconds, for people (`2026-12-06T03:00:00Z`).
    Seconds,
    /// Milliseconds, for machines (`2026-12-06T03:00:00.123Z`), as the status JSON gives them.
    Millis,
}

/// The one formatter of wall-clock times the daemon and its CLI show: `ms` after the Unix
/// epoch as RFC 3339 in UTC.
pub(crate) fn rfc3339(ms: i64, precision: Precision) -> String {
    let t = from_unix_ms(ms);
    match precision {
        Precision::Seconds => humantime::format_rfc3339_seconds(t).to_string(),
        Precision::Millis => humantime::format_rfc3339_millis(t).to_string(),
    }
}

/// `d` in whole milliseconds as `T`, saturating at `max` (durations from config can be huge).
pub(crate) fn millis<T: TryFrom<u128>>(d: Duration, max: T) -> T {
    T::try_from(d.as_millis()).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(from_unix_ms(1_700_000_000_123), t);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
        assert_eq!(from_unix_ms(-5), UNIX_EPOCH);
        assert_eq!(millis(Duration::from_secs(u64::MAX), u32::MAX), u32::MAX);
        assert_eq!(millis(Duration::from_millis(42), u32::MAX), 42);
    }
}
