//! Humane values shared by every table: durations like `"5m"`, bounded, naming their key on
//! error.

use std::time::Duration;

use super::{ConfigError, invalid};

/// The longest duration any key accepts: far beyond any sane setting, and far below what would
/// overflow the clock arithmetic it feeds.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a humane duration (`"5m"`, `"25m"`, `"12h"`), naming the key on error.
pub(crate) fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        invalid(format!(
            "{key} = {text:?} is not a duration like \"5m\": {e}"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(invalid(format!(
            "{key} = {text:?} is longer than 100 years"
        )));
    }
    Ok(d)
}

/// The duration at `key`, or `default` when the key is absent: the one place config turns an
/// optional humane duration into a value.
pub(super) fn duration_or(
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        Some(t) => parse_duration(key, &t),
        None => Ok(default),
    }
}

/// [`duration_or`] for keys where zero makes no sense (an interval, a timeout, a period).
pub(super) fn positive_duration_or(
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration_or(key, text, default)?;
    if d.is_zero() {
        return Err(invalid(format!("{key} must be longer than zero")));
    }
    Ok(d)
}

/// A duration `key` longer than zero and at most `max` (`default` when unset).
pub(super) fn bounded_duration(
    key: &str,
    text: Option<String>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let value = positive_duration_or(key, text, default)?;
    if value > max {
        return Err(invalid(format!("{key} must be at most {}s", max.as_secs())));
    }
    Ok(value)
}
