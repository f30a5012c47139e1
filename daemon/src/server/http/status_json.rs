//! The JSON shape of a status row, shared by `secretd status --json` and HTTP `/status`.

use secretd_proto::{EntryState, SecretStatus};
use serde_json::{Value, json};

use crate::util::time::{self, Precision};

/// Unix milliseconds as RFC 3339 with milliseconds (UTC); nothing for none or a time before
/// the epoch.
pub(crate) fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.filter(|ms| *ms >= 0)
        .map(|ms| time::rfc3339(ms, Precision::Millis))
}

/// The state as people read it: a secret with nothing loaded and no failure yet is `loading`
/// (its first fetch is running), not `missing`.
pub(crate) fn state_name(s: &SecretStatus) -> &'static str {
    if s.state == EntryState::Missing && s.last_error.is_none() {
        "loading"
    } else {
        s.state.as_str()
    }
}

/// One status row as JSON. Never a value.
pub(crate) fn status_json(s: &SecretStatus) -> Value {
    json!({
        "name": s.name,
        "source": s.configured_source.as_str(),
        "cacheSource": s.cache_source.map(|k| k.as_str()),
        "state": state_name(s),
        "version": s.version,
        "fetchedAt": rfc3339(s.fetched_at_ms),
        "expiresAt": rfc3339(s.expires_at_ms),
        "ageSeconds": s.age_ms.map(|ms| ms as f64 / 1000.0),
        "lastError": s.last_error.as_ref().map(|e| e.message.clone()),
        "lastErrorReason": s.last_error_reason,
        "versionAlias": s.version_alias,
        "gcpSecret": s.gcp_secret,
        "owner": s.owner,
        "lastRotatedAt": rfc3339(s.last_rotated_at_ms),
        "lastValidatedAt": rfc3339(s.last_validated_at_ms),
        "activeVersion": s.active_version,
        "status": s.metadata_status,
        "rotationDueAt": rfc3339(s.rotation_due_at_ms),
        "breakGlassExpiresAt": rfc3339(s.break_glass_expires_at_ms),
        "fingerprint": s.fingerprint,
    })
}
