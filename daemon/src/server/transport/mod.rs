//! How bytes reach a request and replies leave: the `socket` (bound or adopted), the accept
//! loop here with `admission`'s seats, framing without I/O (`frame_buf`), and the one
//! `connection` loop driven by a runtime `task` or, while busy, a `thread` of its own.

mod accept;
mod admission;
mod alarm;
mod connection;
pub(crate) mod credentials_socket;
mod fair_queue;
mod frame_buf;
mod recv;
mod refusals;
pub(crate) mod socket;
mod task;
mod thread;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::Listener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::identity::{self, Accepted};

pub(crate) use admission::Limits;

/// How long a connection may sit between requests before the daemon closes it (clients
/// reconnect transparently).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Admitted connections started per turn of the accept loop (a uid at a time) before it looks
/// at the kernel's queue again.
const STARTS_PER_TURN: usize = 16;
/// The pause after an accept error such as EMFILE, so the loop does not spin.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the accept loop until `cancel` fires. Connection tasks join `tracker`. `limits` caps
/// all connections, those of one uid, and keeps a reserve for admins.
///
/// At shutdown the listener closes *before* the connections are told to finish: a client
/// whose connection ends (a watch stream, say) and that reconnects at once must find the door
/// shut, never be accepted by a daemon already on its way out and then cut off again.
pub(crate) async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    limits: admission::Limits,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = match accept::Acceptor::new(listener) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot take over the listening socket");
            return;
        }
    };
    let admission = Arc::new(admission::Admission::new(limits));
    // Connections follow this token, cancelled only once the listener is closed.
    let leave = CancellationToken::new();
    let mut refused = refusals::Refusals::default();
    let mut summary_at = Instant::now() + refusals::REFUSAL_LOG_INTERVAL;
    let mut batch = Vec::with_capacity(accept::ACCEPT_BATCH);
    // Admitted connections waiting for the rest of accept's work, a queue per uid.
    let mut waiting = fair_queue::FairQueue::default();
    loop {
        if waiting.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = tokio::time::sleep_until(summary_at) => {}
                accepted = acceptor.next_batch(&mut batch) => {
                    if let Err(e) = accepted {
                        accept_failed(&e).await;
                    }
                }
            }
        } else if cancel.is_cancelled() {
            break;
        } else {
            acceptor.try_batch(&mut batch);
        }
        if Instant::now() >= summary_at {
            summary_at = Instant::now() + refusals::REFUSAL_LOG_INTERVAL;
            for line in refused.take_summary() {
                line.log(limits);
            }
        }
        for connection in batch.drain(..) {
            admit(connection, &shared, &admission, &mut refused, &mut waiting);
        }
        for _ in 0..STARTS_PER_TURN {
            let Some((connection, cred, slot)) = waiting.pop() else {
                break;
            };
            if !accept::closed_unused(connection.as_fd()) {
                start(
                    connection, cred, &shared, &admission, slot, &leave, &tracker,
                );
            }
        }
        // Let the tasks just made (and everyone else) run before the next turn.
        tokio::task::yield_now().await;
    }
    for line in refused.take_summary() {
        line.log(limits);
    }
    waiting.clear();
    drop(acceptor);
    leave.cancel();
}

/// A connection admitted to a seat, waiting for the accept loop to start it.
type Waiting = (OwnedFd, libc::ucred, admission::Slot);

/// Gives `connection` a seat and queues it under its uid, or refuses it: counted, and logged
/// in the next summary, so a flood costs a line per uid.
fn admit(
    connection: OwnedFd,
    shared: &Shared,
    admission: &admission::Admission,
    refused: &mut refusals::Refusals,
    waiting: &mut fair_queue::FairQueue<Waiting>,
) {
    let Ok(cred) = identity::peer_cred(connection.as_fd()) else {
        return;
    };
    match admission.admit(cred.uid, shared.policy.is_admin(cred.uid)) {
        Ok(slot) => waiting.push(cred.uid, (connection, cred, slot)),
        Err(refusal) => {
            refused.note(cred.uid, refusal);
            shared
                .metrics
                .refused
                .with_label_values(&[refusal.label()])
                .inc();
            accept::refuse(connection, refusal);
        }
    }
}

/// Logs a failed accept (out of descriptors, say) and pauses so the loop does not spin.
async fn accept_failed(e: &io::Error) {
    if is_resource_exhaustion(e) {
        tracing::warn!(error = %e, "accept failed: out of resources; backing off");
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
}

/// Starts an admitted connection's task: what accept learns of the peer, then the connection
/// on the runtime.
fn start(
    connection: OwnedFd,
    cred: libc::ucred,
    shared: &Arc<Shared>,
    admission: &Arc<admission::Admission>,
    slot: admission::Slot,
    leave: &CancellationToken,
    tracker: &TaskTracker,
) {
    // Socket options only: nothing a peer controls (its executable, its descriptors) is read
    // here, so one peer cannot hold up the next accept.
    let accepted = match Accepted::of(connection.as_fd(), cred) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "dropping connection without peer credentials");
            return;
        }
    };
    let stream =
        match tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(connection)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot register a connection with the runtime");
                return;
            }
        };
    let open = shared.metrics.connections.clone();
    open.inc();
    let run = task::run(
        stream,
        accepted,
        shared.clone(),
        admission.clone(),
        slot,
        leave.clone(),
    );
    tracker.spawn(async move {
        run.await;
        open.dec();
    });
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
