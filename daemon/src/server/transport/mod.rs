//! How bytes reach a request and replies leave: the `socket` (bound or adopted), the accept
//! loop here with `admission`'s seats, framing without I/O (`frame_buf`), and the one
//! `connection` loop driven by a runtime `task` or, while busy, a `thread` of its own.

mod admission;
mod alarm;
mod connection;
mod frame_buf;
mod recv;
mod refusals;
pub(crate) mod socket;
mod task;
mod thread;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::identity::Accepted;

pub(crate) use admission::Limits;

/// How long a connection may sit between requests before the daemon closes it (clients
/// reconnect transparently).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long writing a refusal to a client over a connection limit may take (everything else
/// is written within `daemon.write_timeout`).
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
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
    let admission = Arc::new(admission::Admission::new(limits));
    // Connections follow this token, cancelled only once the listener is closed.
    let leave = CancellationToken::new();
    let mut refused = refusals::Refusals::default();
    let mut summary = tokio::time::interval(refusals::REFUSAL_LOG_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = summary.tick() => {
                for line in refused.take_summary() {
                    line.log(limits);
                }
                continue;
            }
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
        let Stream::UdSocket(stream) = stream;
        let stream = tokio::net::UnixStream::from(stream);
        // Socket options only: nothing a peer controls (its executable, its descriptors) is
        // read here, so one peer cannot hold up the next accept.
        let accepted = match Accepted::of(std::os::fd::AsFd::as_fd(&stream)) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "dropping connection without peer credentials");
                continue;
            }
        };
        let uid = accepted.sender.uid;
        match admission.admit(uid, shared.policy.is_admin(uid)) {
            Ok(slot) => {
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
            Err(refusal) => {
                // Counted, and logged in the next summary: a flood costs a line per uid.
                refused.note(uid, refusal);
                shared
                    .metrics
                    .refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                tracker.spawn(task::refuse_busy(stream, refusal));
            }
        }
    }
    for line in refused.take_summary() {
        line.log(limits);
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
