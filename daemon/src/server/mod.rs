//! The socket server, along the path a request takes: `socket` (bind or adopt the listener)
//! → this accept loop with `peer` credentials and `admission` caps → `connection` (hello,
//! then the request loop over a `framed` socket) → `session` (the peer's `policy` access and
//! audit tallies) → a handler (`read`, `admin`, `break_glass`, `watch`) returning a `reply`.
//! Beside it, `http` serves `/metrics` (`scrape`), `/healthz` (`health`, which `Health`
//! requests share) and `/status` (`status_json`).

pub(crate) mod admin;
mod admission;
pub(crate) mod attest;
mod break_glass;
mod connection;
mod dedicated;
pub(crate) mod denials;
mod framed;
mod health;
pub(crate) mod http;
mod idle;
pub(crate) mod peer;
pub(crate) mod policy;
mod read;
mod registry;
mod reply;
mod scrape;
mod session;
pub(crate) mod socket;
pub(crate) mod status_json;
mod watch;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::catalog::break_glass::BreakGlass;
use crate::catalog::source::Source;
use crate::metrics::Metrics;
use crate::store::Store;
use peer::Peer;
use policy::Policy;

/// How long a new connection may take to send its hello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit between requests before the daemon closes it (clients
/// reconnect transparently).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the rest of a frame may take once its first byte arrived (slow senders).
pub(crate) const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one response may take (clients that stop reading).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after an accept error such as EMFILE, so the loop does not spin.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How often a connection writes its aggregated read counts to the audit trail (also at
/// disconnect).
pub(crate) const AUDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The values.
    pub(crate) catalog: Arc<Catalog>,
    /// Who may read what.
    pub(crate) policy: Policy,
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
    pub(crate) denials: denials::Denials,
    /// Every open connection and what was attested of it, for `status --connections`.
    pub(crate) connections: registry::Registry,
}

/// Runs the accept loop until `cancel` fires. Connection tasks join `tracker`.
/// `max_connections` caps all connections, `max_per_uid` those of one uid.
///
/// At shutdown the listener closes *before* the connections are told to finish: a client
/// whose connection ends (a watch stream, say) and that reconnects at once must find the door
/// shut, never be accepted by a daemon already on its way out and then cut off again.
pub(crate) async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    (max_connections, max_per_uid): (usize, usize),
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let admission = admission::Admission::new(max_connections, max_per_uid);
    // Connections follow this token, cancelled only once the listener is closed.
    let leave = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    tracing::warn!(error = %e, "accept failed: out of resources; backing off");
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let peer = match Peer::of(&stream, shared.policy.needs_hash()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "dropping connection without peer credentials");
                continue;
            }
        };
        match admission.admit(peer.uid) {
            Ok(permit) => {
                let conn = connection::Connection::new(stream, peer, shared.clone());
                let leave = leave.clone();
                let open = shared.metrics.connections.clone();
                open.inc();
                tracker.spawn(async move {
                    conn.run(leave).await;
                    open.dec();
                    drop(permit);
                });
            }
            Err(refusal) => {
                let why = match refusal {
                    admission::Refusal::Total => "connection limit reached; refusing",
                    admission::Refusal::PerUid => "per-uid connection limit reached; refusing",
                };
                tracing::warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    max_connections,
                    max_per_uid,
                    "{why}"
                );
                tracker.spawn(connection::refuse_busy(stream, refusal));
            }
        }
    }
    drop(listener);
    leave.cancel();
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
