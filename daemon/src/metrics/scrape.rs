//! Scrape time: the point-in-time gauges (`Gauges`) taken from the catalog, the store and the
//! audit writer, rendered for `/metrics` and the `Metrics` request alike. The only file of the
//! room that reads the catalog: the rest sits below it.

use secretd_proto::EntryState;
use tokio::time::Instant;

use super::{Gauges, Metrics, SlotGauges};
use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::store::Store;
use crate::util::time::now_ms;

/// The Prometheus text of every series, gauges as of now.
pub(crate) fn scrape(
    metrics: &Metrics,
    catalog: &Catalog,
    store: &Store,
    audit: &AuditLog,
) -> String {
    let metas = store.all_meta().unwrap_or_default();
    let now = now_ms();
    let mono = Instant::now();
    let slots = catalog
        .slots()
        .iter()
        .enumerate()
        .map(|(idx, slot)| {
            let overridden = slot.active_override();
            let served = overridden.clone().or_else(|| slot.current());
            let state = catalog.status(idx).state;
            SlotGauges {
                name: &slot.name,
                age: served
                    .as_ref()
                    .map(|e| (e.source, e.age(mono).as_secs_f64())),
                break_glass: overridden.is_some(),
                rotation_overdue: metas
                    .get(&*slot.name)
                    .is_some_and(|m| now > m.rotation_due_at_ms),
                served: served.map(|e| (e.version.clone(), e.source, e.fingerprint.clone())),
                servable: matches!(state, EntryState::Fresh | EntryState::Stale),
                stale: matches!(state, EntryState::Stale | EntryState::Expired),
                revoked: slot.health().revoked.map(|r| r.cause.as_str()),
                revocation_unconfirmed: slot.doubt.unconfirmed(),
            }
        })
        .collect();
    metrics.render(&Gauges {
        slots,
        audit_queue: audit.depth(),
        watchers: catalog.watchers(),
        audit_writable: audit.healthy(),
    })
}
