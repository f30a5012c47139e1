//! Periodic housekeeping: rotation due dates, audit retention, and audit anchors.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditLog};
use crate::catalog::rotation;
use crate::config::DaemonConfig;
use crate::store::Store;

/// How often records past retention are pruned.
pub(crate) const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Checks rotation due dates every `rotation_check_interval` (and at once), prunes the audit
/// trail every [`PRUNE_INTERVAL`], and logs the audit chain's head every
/// `audit_anchor_interval` (and at once), until cancelled.
pub(crate) async fn run(
    store: Arc<Store>,
    audit: AuditLog,
    cfg: DaemonConfig,
    cancel: CancellationToken,
) {
    let mut rotation = tokio::time::interval(cfg.rotation_check_interval);
    let mut prune_timer = tokio::time::interval(PRUNE_INTERVAL);
    prune_timer.tick().await; // startup already pruned
    let mut anchor = tokio::time::interval(cfg.audit_anchor_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = rotation.tick() => rotation::due::check(&store, cfg.rotation_warning),
            _ = prune_timer.tick() => audit::prune(&store, &audit, cfg.audit_retention),
            _ = anchor.tick() => log_anchor(&store),
        }
    }
}

/// Logs the chain's head as `audit.anchor`: shipped off the host with the journal, anchors are
/// what a truncated or rolled-back database cannot match (`secretd audit verify --head`).
pub(crate) fn log_anchor(store: &Store) {
    match AuditLog::head(store) {
        Ok(Some((seq, hash))) => tracing::info!(
            event = "audit.anchor",
            seq,
            hash = %hex::encode(hash),
            "audit chain head"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cannot read the audit chain's head"),
    }
}
