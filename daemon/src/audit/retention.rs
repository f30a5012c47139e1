//! Retention: records older than `audit_retention` are pruned from the start of the chain,
//! which moves its checkpoint so the rest still verifies; the prune itself is audited.

use std::time::Duration;

use super::event::{Action, Actor, AuditEvent, Outcome};
use super::table;
use super::writer::AuditLog;
use crate::store::Store;
use crate::util::time::{millis, now_ms};

/// Removes audit records older than `retention`, keeping the chain verifiable.
pub(crate) fn prune(store: &Store, audit: &AuditLog, retention: Duration) {
    match table::prune(store, now_ms().saturating_sub(millis(retention, i64::MAX))) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(removed = n, "pruned audit records past retention");
            let mut event = AuditEvent::new(Action::AuditPrune, "", Actor::daemon(), Outcome::Ok);
            event.count = n;
            event.detail = format!(
                "removed {n} records older than {}",
                humantime::format_duration(retention)
            );
            audit.record(event);
        }
        Err(e) => tracing::error!(error = %e, "cannot prune the audit trail"),
    }
}
