//! One client connection: the hello exchange, then requests in and replies out, each step
//! under a deadline. Protocol violations get one error response and the connection closes
//! (after a bad frame the stream cannot be trusted to be in sync).

use std::sync::Arc;

use interprocess::local_socket::tokio::Stream;
use secretd_proto::{
    ErrorCode, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, ServerHello,
    WireError,
};
use tokio_util::sync::CancellationToken;

use super::admission::Refusal;
use super::dedicated::{self, Handback, Seat, Streak};
use super::framed::{Framed, ReadError};
use super::idle::IdleTimer;
use super::peer::Peer;
use super::reply::Reply;
use super::session::Session;
use super::watch::Subscription;
use super::{HELLO_TIMEOUT, IDLE_TIMEOUT, Shared};

/// A connected, credential-checked client.
pub(super) struct Connection {
    /// The socket and its buffers.
    framed: Framed,
    /// Who connected, per the kernel.
    peer: Peer,
    /// Catalog, policy, store, audit.
    shared: Arc<Shared>,
}

impl Connection {
    pub(super) fn new(stream: Stream, peer: Peer, shared: Arc<Shared>) -> Connection {
        Connection {
            framed: Framed::new(stream),
            peer,
            shared,
        }
    }

    /// Serves the connection until the client leaves, breaks the protocol, idles out, or the
    /// daemon shuts down.
    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let peer = &self.peer;
        tracing::debug!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            program = %peer.attested.describe(),
            "client connected"
        );
        let hello = tokio::select! {
            _ = cancel.cancelled() => return,
            r = self.framed.read_request_within(HELLO_TIMEOUT) => r,
        };
        let answer = match hello {
            Ok(request) => answer_hello(request),
            Err(e) => return close(&mut self.framed, &self.peer, &e).await,
        };
        let response = match &answer {
            Ok(hello) => Response::Hello(hello.clone()),
            Err(e) => Response::Error(e.clone()),
        };
        if self.framed.send_response(&response).await.is_err() || answer.is_err() {
            return;
        }
        let protocol = answer
            .as_ref()
            .map_or(PROTOCOL_VERSION, |h| h.protocol_version);
        let _registered = self.shared.connections.register(&self.peer, protocol);
        let mut session = Session::new(&self.shared, &self.peer, protocol);
        serve_requests(self.framed, &mut session, &cancel).await;
        session.flush();
        tracing::debug!(
            uid = self.peer.uid,
            pid = self.peer.pid,
            "client disconnected"
        );
    }
}

/// The request loop: read a request, hand it to the session, send the reply. A connection
/// that keeps asking moves to a thread of its own and back (`dedicated`). A watch turns the
/// connection into an event stream until it ends.
async fn serve_requests(mut framed: Framed, session: &mut Session<'_>, cancel: &CancellationToken) {
    loop {
        let subscription = match serve_on_runtime(&mut framed, session, cancel).await {
            Turn::Over => return,
            Turn::Watch(subscription) => subscription,
            Turn::Promote(seat) => match dedicated::serve(framed, session, cancel, seat) {
                Handback::Over => return,
                Handback::Quiet(back) => {
                    framed = back;
                    continue;
                }
                Handback::Watch(back, subscription) => {
                    framed = back;
                    subscription
                }
            },
        };
        // Reads counted so far are written now: a watch can last for days.
        session.flush();
        subscription
            .stream(
                &mut framed,
                cancel,
                session.protocol,
                &session.shared.metrics.watch_lagged,
            )
            .await;
        return;
    }
}

/// Why the runtime's request loop stopped.
enum Turn {
    /// The connection is over.
    Over,
    /// A watch was granted; its events follow.
    Watch(Subscription),
    /// The client keeps asking: the connection moves to a dedicated thread.
    Promote(Seat<'static>),
}

/// Serves requests on the runtime until the connection ends, a watch starts, or the client
/// has asked often enough to earn a thread.
async fn serve_on_runtime(
    framed: &mut Framed,
    session: &mut Session<'_>,
    cancel: &CancellationToken,
) -> Turn {
    // One shutdown waiter, one flush timer and one idle timer for the loop's life, not one of
    // each per request: registering any of them takes a lock the runtime's workers share.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let flush = tokio::time::sleep_until(session.next_flush);
    tokio::pin!(flush);
    let mut idle = IdleTimer::new(IDLE_TIMEOUT);
    let mut streak = Streak::default();
    loop {
        // Waiting for a first byte is cancel-safe, so the flush timer, the idle timer and
        // shutdown may interrupt it; reading the rest of a frame is never interrupted.
        let ready = tokio::select! {
            () = &mut cancelled => return Turn::Over,
            () = &mut flush => {
                session.flush();
                flush.as_mut().reset(session.next_flush);
                continue;
            }
            () = idle.expired() => Err(ReadError::Idle(IDLE_TIMEOUT)),
            r = framed.wait_for_data() => r,
        };
        let read = match ready {
            Ok(()) => framed.read_request().await,
            Err(e) => Err(e),
        };
        let request = match screen(read) {
            Next::Serve(request) => request,
            Next::Refuse(violation) => {
                let _ = framed
                    .send(&refusal(session, violation), session.protocol)
                    .await;
                return Turn::Over;
            }
            Next::Close(e) => {
                close(framed, session.peer, &e).await;
                return Turn::Over;
            }
        };
        idle.touch();
        let is_read = matches!(request, Request::Get { .. });
        let op = request.op();
        let reply = session.respond(request).await;
        session.shared.metrics.request(op, reply.outcome());
        if framed.send(&reply, session.protocol).await.is_err() || session.closing {
            return Turn::Over;
        }
        if let Reply::Watch(subscription) = reply {
            return Turn::Watch(subscription);
        }
        if streak.asked(is_read)
            && let Some(seat) = dedicated::seat(session.peer.uid)
        {
            return Turn::Promote(seat);
        }
    }
}

/// What a loop does with the frame it just read.
pub(super) enum Next {
    /// Answer it.
    Serve(Request),
    /// Answer with this protocol violation, then close.
    Refuse(WireError),
    /// Close (telling the client why when the frame was the problem).
    Close(ReadError),
}

/// Sorts a frame read: a request to serve, a violation to answer, or the end.
pub(super) fn screen(read: Result<Result<Request, WireError>, ReadError>) -> Next {
    match read {
        Ok(Ok(Request::Hello(_))) => Next::Refuse(WireError::new(
            ErrorCode::ProtocolViolation,
            "hello may only be sent once",
        )),
        Ok(Ok(request)) => Next::Serve(request),
        Ok(Err(violation)) => Next::Refuse(violation),
        Err(e) => Next::Close(e),
    }
}

/// The reply to a protocol violation, logged.
pub(super) fn refusal(session: &Session<'_>, violation: WireError) -> Reply {
    let peer = session.peer;
    tracing::debug!(uid = peer.uid, pid = peer.pid, error = %violation, "protocol violation");
    Reply::from(violation)
}

/// The answer to the first frame: it must be a hello with our magic, from a client whose
/// protocol version this daemon still serves. The answer names the version both speak: the
/// client's, or ours if the client is newer.
fn answer_hello(request: Result<Request, WireError>) -> Result<ServerHello, WireError> {
    match request? {
        Request::Hello(h) if h.magic != MAGIC => Err(WireError::new(
            ErrorCode::ProtocolViolation,
            "bad hello magic",
        )),
        Request::Hello(h) if h.protocol_version < MIN_PROTOCOL_VERSION => Err(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this daemon speaks protocol versions {MIN_PROTOCOL_VERSION} to \
                 {PROTOCOL_VERSION}, the client sent {}",
                h.protocol_version
            ),
        )),
        Request::Hello(h) => Ok(ServerHello {
            protocol_version: h.protocol_version.min(PROTOCOL_VERSION),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
        }),
        other => Err(WireError::new(
            ErrorCode::ProtocolViolation,
            format!("expected hello as the first request, got {}", other.op()),
        )),
    }
}

/// Ends a connection whose next frame could not be read, telling the client why when the
/// frame itself was the problem.
async fn close(framed: &mut Framed, peer: &Peer, e: &ReadError) {
    if let Some(violation) = last_word(peer, e) {
        let _ = framed.send_response(&Response::Error(violation)).await;
    }
}

/// Logs why a connection closes; what to tell the client first, when the frame itself was
/// the problem (a closed or idle connection has nobody listening).
pub(super) fn last_word(peer: &Peer, e: &ReadError) -> Option<WireError> {
    tracing::debug!(uid = peer.uid, pid = peer.pid, error = %e, "closing connection");
    e.violation()
}

/// Tells a client over a connection limit to come back later, then closes.
pub(super) async fn refuse_busy(stream: Stream, refusal: Refusal) {
    let message = match refusal {
        Refusal::Total => "secretd is at its connection limit; retry shortly",
        Refusal::PerUid => {
            "this uid holds as many connections as secretd allows one uid; close some or retry"
        }
    };
    let busy = Response::Error(WireError::new(ErrorCode::Busy, message));
    let _ = Framed::new(stream).send_response(&busy).await;
}
