//! The socket server, in rooms along the path a request takes: `transport` (the socket, the
//! accept loop with its seats, framing, the one connection loop and its two drivers) →
//! `identity` (who the peer is, what program it runs, what policy grants it) → `requests`
//! (the session, a handler per request, the reply). Beside them, `http` serves `/metrics`,
//! `/healthz` and `/status`, and `credentials` answers systemd's `LoadCredential=` requests.

pub(crate) mod credentials;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod requests;
pub(crate) mod transport;

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::catalog::break_glass::BreakGlass;
use crate::catalog::source::Source;
use crate::metrics::Metrics;
use crate::store::Store;
use identity::Policy;
use requests::{Denials, ReadLedger, Registry};

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The values.
    pub(crate) catalog: Arc<Catalog>,
    /// Who may read what.
    pub(crate) policy: Policy,
    /// Attests the program behind each writer (its hash cache and work bound).
    pub(crate) attestor: identity::Attestor,
    /// Metadata and the audit trail.
    pub(crate) store: Arc<Store>,
    /// The audit writer.
    pub(crate) audit: AuditLog,
    /// Each slot's source, by slot index (rotation pins versions on them).
    pub(crate) sources: Vec<Arc<dyn Source>>,
    /// Break-glass overrides.
    pub(crate) break_glass: Arc<BreakGlass>,
    /// Counters and gauges.
    pub(crate) metrics: Arc<Metrics>,
    /// Refusals, aggregated and rate-limited per uid.
    pub(crate) denials: Denials,
    /// Reads, aggregated per uid, program, secret and version across connections.
    pub(crate) reads: ReadLedger,
    /// How often counted reads reach the audit trail (`daemon.audit_read_window`).
    pub(crate) audit_read_window: std::time::Duration,
    /// Every open connection and what was attested of it, for `status --connections`.
    pub(crate) connections: Registry,
    /// How long writing one response may take (`daemon.write_timeout`).
    pub(crate) write_timeout: std::time::Duration,
    /// How long a started frame, or the hello after accept, may take (`daemon.frame_deadline`).
    pub(crate) frame_deadline: std::time::Duration,
}

impl Shared {
    /// The Prometheus text, gauges as of now: the `Metrics` request's answer and `/metrics`.
    pub(crate) fn scrape(&self) -> String {
        crate::metrics::scrape(&self.metrics, &self.catalog, &self.store, &self.audit)
    }
}
