//! Retention: records older than `audit_retention` are pruned from the start of the chain,
//! which moves its checkpoint so the rest still verifies; the prune itself is audited.

use std::time::Duration;

use super::event::{Action, Actor, AuditEvent, Outcome};
use super::writer::AuditLog;
use crate::store::Store;
use crate::util::time::{millis, now_ms};

/// Removes audit records older than `retention`, keeping the chain verifiable. The prune and
/// its own `audit_prune` record (which names the new checkpoint, so a moved checkpoint is
/// caught) commit in one transaction.
pub(crate) fn prune(store: &Store, audit: &AuditLog, retention: Duration) {
    let cutoff = now_ms().saturating_sub(millis(retention, i64::MAX));
    let record = AuditEvent::new(Action::AuditPrune, "", &Actor::daemon(), Outcome::Ok);
    let older_than = humantime::format_duration(retention).to_string();
    match audit.prune(store, cutoff, record, &older_than) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "pruned audit records past retention"),
        Err(e) => tracing::error!(error = %e, "cannot prune the audit trail"),
    }
}
