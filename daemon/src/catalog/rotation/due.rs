//! The due-date monitor: a secret whose rotation is overdue, or due soon, is logged.

use std::time::Duration;

use crate::store::Store;
use crate::util::time::{millis, now_ms};

/// Logs `omni.rotation_overdue` for overdue secrets and `secret.near_expiry` for those due
/// within `warning`.
pub(crate) fn check(store: &Store, warning: Duration) {
    let metas = match store.all_meta() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot read secret metadata for the rotation check");
            return;
        }
    };
    let now = now_ms();
    for meta in metas.values() {
        let due = meta.rotation_due_at_ms;
        if now > due {
            tracing::error!(
                event = "omni.rotation_overdue",
                secret = %meta.name,
                overdue_days = (now - due) / 86_400_000,
                status = meta.status.as_str(),
                "secret rotation is overdue"
            );
        } else if due - now < millis(warning, i64::MAX) {
            tracing::warn!(
                event = "secret.near_expiry",
                secret = %meta.name,
                due_in_days = (due - now) / 86_400_000,
                "secret rotation is due soon"
            );
        }
    }
}
