//! Scrape time: the point-in-time gauges (`metrics::Gauges`) taken from the catalog, the
//! store and the audit writer, rendered for `/metrics` and the `Metrics` request alike.

use secretd_proto::EntryState;
use tokio::time::Instant;

use crate::metrics::{Gauges, SlotGauges};
use crate::server::Shared;
use crate::util::time::now_ms;

/// The Prometheus text, gauges as of now.
pub(crate) fn render(shared: &Shared) -> String {
    let metas = shared.store.all_meta().unwrap_or_default();
    let now = now_ms();
    let mono = Instant::now();
    let slots = shared
        .catalog
        .slots()
        .iter()
        .enumerate()
        .map(|(idx, slot)| {
            let overridden = slot.active_override();
            let served = overridden.clone().or_else(|| slot.current());
            let state = shared.catalog.status(idx).state;
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
    shared.metrics.render(&Gauges {
        slots,
        audit_queue: shared.audit.depth(),
        watchers: shared.catalog.watchers(),
        audit_writable: shared.audit.healthy(),
    })
}
