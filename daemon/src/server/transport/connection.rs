//! The one connection loop: the hello, then frames in and replies out, each step under a
//! deadline, whichever driver moves the bytes. A driver ([`super::task`] on the runtime,
//! [`super::thread`] on a thread of its own) implements [`Io`]: wait for bytes until a
//! deadline, write a reply, and say after each answer whether the connection should move.
//! Everything else (framing, deadlines, violations, the step from a request to its reply) is
//! here, once.
//!
//! Protocol violations get one error response and the connection closes: after a bad frame
//! the stream cannot be trusted to be in step.

use std::io;
use std::time::Instant;

use secretd_proto::frame::{FrameError, decode_body};
use secretd_proto::{
    ErrorCode, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, ServerHello,
    WireError,
};

use super::IDLE_TIMEOUT;
use super::admission::Seat;
use super::frame_buf::{FrameBuf, FrameFault, Sender};
use crate::server::identity::Peer;
use crate::server::requests::{Reply, Session, Subscription, encode_reply};

/// What a wait for bytes came to.
#[derive(Debug)]
pub(super) enum Received {
    /// This many bytes arrived in the buffer's spare room, written by this process.
    Bytes(usize, Sender),
    /// The client closed its end.
    Closed,
    /// The deadline passed first.
    Deadline,
    /// The driver ends the loop here (shutdown, or the connection moves).
    Stop(Turn),
    /// The socket failed.
    Failed(io::Error),
}

/// How a driver moves bytes. Its futures may block the thread they run on (a dedicated
/// thread's driver does) or wait on the runtime (a task's does).
pub(super) trait Io {
    /// Reads into `buf` until something arrives or `until` passes. `between_frames`: no
    /// frame is in progress, so the driver may stop here (a move, or a quiet connection).
    async fn receive(&mut self, buf: &mut [u8], until: Instant, between_frames: bool) -> Received;
    /// Writes all of `bytes` within the write deadline.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), FrameError>;
    /// A request of `uid` was answered (`served_read`: a value was sent); `Some` ends the
    /// loop.
    fn answered(&mut self, served_read: bool, uid: u32) -> Option<Turn>;
}

/// Why the request loop stopped.
#[derive(Debug)]
pub(super) enum Turn {
    /// The connection is over.
    Over,
    /// A watch was granted; its events follow on the runtime.
    Watch(Subscription),
    /// The client keeps asking: the connection moves to a thread of its own.
    Promote(Seat),
    /// The client went quiet on its thread: it moves back to the runtime.
    Quiet,
}

/// A connection's state, whichever driver holds it: bytes not yet taken as frames, the reply
/// buffer, and the session. It moves between drivers whole.
#[derive(Debug)]
pub(super) struct Conn {
    /// Bytes in, frames out.
    pub(super) frames: FrameBuf,
    /// The reply being written; wiped after every write.
    out: Vec<u8>,
    /// The peer's view of the daemon, from its hello on.
    pub(super) session: Session,
    /// When the client last sent a request, for the idle timeout.
    active: Instant,
}

/// What reading the next request came to.
enum Next {
    /// A request to answer.
    Request(Request),
    /// The audit flush came due between frames.
    Flush,
    /// The loop ends.
    End(Turn),
}

impl Conn {
    /// The connection of a client whose hello agreed on its session's protocol.
    pub(super) fn new(frames: FrameBuf, session: Session) -> Conn {
        Conn {
            frames,
            out: Vec::new(),
            session,
            active: Instant::now(),
        }
    }

    /// Serves requests until the connection ends, a watch starts, or the driver hands the
    /// connection over.
    pub(super) async fn serve(&mut self, io: &mut impl Io) -> Turn {
        loop {
            let request = match self.next_request(io).await {
                Next::Request(request) => request,
                Next::Flush => {
                    self.session.flush();
                    continue;
                }
                Next::End(turn) => return turn,
            };
            let op = request.op_index();
            let reply = self.session.respond(request).await;
            self.session.shared.metrics.request(op, reply.refused());
            let sent = send_reply(&mut self.out, io, &reply, self.session.protocol).await;
            if sent.is_err() || self.session.closing {
                return Turn::Over;
            }
            if let Reply::Watch(subscription) = reply {
                return Turn::Watch(subscription);
            }
            let uid = self.session.peer.uid;
            if let Some(turn) = io.answered(matches!(reply, Reply::Secret(_)), uid) {
                return turn;
            }
        }
    }

    /// Reads the next request: from the buffer when one is already whole, else from the
    /// driver, within the frame's deadline once it has started.
    async fn next_request(&mut self, io: &mut impl Io) -> Next {
        loop {
            match take_request(&mut self.frames) {
                Ok(Some((Request::Hello(_), _))) => {
                    let v = violation("hello may only be sent once");
                    return self.refuse(io, v).await;
                }
                // Each request is answered for the process that wrote it: a new writer (a
                // child sharing the connection, a thief holding a copy) is identified first.
                Ok(Some((request, sender))) if sender != self.session.peer.sender() => {
                    match self.session.reidentify(sender).await {
                        Ok(()) => return Next::Request(request),
                        Err(e) => {
                            let refused =
                                WireError::new(ErrorCode::PermissionDenied, e.to_string());
                            return self.refuse(io, refused).await;
                        }
                    }
                }
                Ok(Some((request, _))) => return Next::Request(request),
                Ok(None) => {}
                Err(v) => return self.refuse(io, v).await,
            }
            let partial = self.frames.partial_since();
            let until = match partial {
                Some(started) => started + self.session.shared.frame_deadline,
                None => self.session.next_flush.min(self.active + IDLE_TIMEOUT),
            };
            let received = io
                .receive(self.frames.spare(), until, partial.is_none())
                .await;
            let end = match received {
                Received::Bytes(n, sender) => {
                    // The one clock read a request costs: when its bytes came is when the
                    // client was last active, and when a frame's deadline starts.
                    let now = Instant::now();
                    self.frames.filled(n, sender, now);
                    self.active = now;
                    continue;
                }
                Received::Deadline if partial.is_none() && Instant::now() < until_idle(self) => {
                    return Next::Flush;
                }
                Received::Deadline if partial.is_some() => {
                    Ending::SlowFrame(self.session.shared.frame_deadline)
                }
                Received::Deadline => Ending::Idle,
                Received::Closed if partial.is_some() => Ending::Frame(FrameError::Truncated),
                Received::Closed => Ending::Frame(FrameError::Closed),
                Received::Failed(e) => Ending::Frame(FrameError::Io(e)),
                Received::Stop(turn) => return Next::End(turn),
            };
            let peer = &self.session.peer;
            tracing::debug!(uid = peer.uid, pid = peer.pid(), why = %end, "closing connection");
            return Next::End(Turn::Over);
        }
    }

    /// Answers a protocol violation and ends the connection.
    async fn refuse(&mut self, io: &mut impl Io, violation: WireError) -> Next {
        let peer = &self.session.peer;
        tracing::debug!(uid = peer.uid, pid = peer.pid(), error = %violation, "protocol violation");
        let reply = Reply::from(violation);
        let _ = send_reply(&mut self.out, io, &reply, self.session.protocol).await;
        Next::End(Turn::Over)
    }
}

/// When an idle connection times out.
fn until_idle(conn: &Conn) -> Instant {
    conn.active + IDLE_TIMEOUT
}

/// Why a connection closed without a violation to tell (logged only: nobody is listening).
#[derive(Debug, thiserror::Error)]
enum Ending {
    /// Closed, truncated, or the socket failed.
    #[error("{0}")]
    Frame(FrameError),
    /// No request within the idle timeout.
    #[error("no request within {IDLE_TIMEOUT:?}")]
    Idle,
    /// A frame started but did not finish within the frame deadline.
    #[error("frame not completed within {0:?}")]
    SlowFrame(std::time::Duration),
}

/// The next whole request in `frames`, decoded (`Ok(None)` until one is whole), or the
/// violation to answer: a bad length, a frame from two writers, a body that does not decode.
fn take_request(frames: &mut FrameBuf) -> Result<Option<(Request, Sender)>, WireError> {
    let frame = match frames.next_frame() {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(None),
        Err(fault) => return Err(fault_violation(&fault)),
    };
    decode_body::<Request>(frame.body())
        .map(|request| Some((request, frame.sender)))
        .map_err(|e| violation(e.to_string()))
}

/// The violation a framing fault is answered with.
fn fault_violation(fault: &FrameFault) -> WireError {
    violation(fault.to_string())
}

fn violation(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::ProtocolViolation, message)
}

/// Encodes `reply` for a client speaking `protocol`, writes it and wipes the buffer.
async fn send_reply(
    out: &mut Vec<u8>,
    io: &mut impl Io,
    reply: &Reply,
    protocol: u16,
) -> Result<(), FrameError> {
    let result = match encode_reply(reply, protocol, out) {
        Ok(()) => io.send(out).await,
        Err(e) => Err(e),
    };
    wipe(out);
    result
}

/// Reads and answers the hello, the first frame, within `deadline` of `accepted`. The
/// process that wrote it is identified (`identify`) before the answer, so a writer that cannot
/// be answered for is told why at once. Returns the protocol version both speak and the
/// identity, or `None` when the connection ends here.
pub(super) async fn hello(
    frames: &mut FrameBuf,
    io: &mut impl Io,
    (accepted, deadline): (Instant, std::time::Duration),
    identify: impl AsyncFnOnce(Sender) -> Result<Peer, WireError>,
) -> Option<(u16, Peer)> {
    let until = accepted + deadline;
    let first = loop {
        match take_request(frames) {
            Ok(Some(first)) => break Ok(first),
            Err(v) => break Err(v),
            Ok(None) => {}
        }
        match io.receive(frames.spare(), until, false).await {
            Received::Bytes(n, sender) => frames.filled(n, sender, Instant::now()),
            Received::Closed | Received::Deadline | Received::Stop(_) | Received::Failed(_) => {
                return None;
            }
        }
    };
    let answer = match first.and_then(|(request, sender)| Ok((answer_hello(request)?, sender))) {
        Ok((hello, sender)) => identify(sender).await.map(|peer| (hello, peer)),
        Err(e) => Err(e),
    };
    let response = match &answer {
        Ok((hello, _)) => Response::Hello(hello.clone()),
        Err(e) => Response::Error(e.clone()),
    };
    let mut out = Vec::new();
    let sent = match secretd_proto::frame::encode_frame(&response, &mut out) {
        Ok(()) => io.send(&out).await,
        Err(e) => Err(e),
    };
    if sent.is_err() {
        return None;
    }
    answer.ok().map(|(h, peer)| (h.protocol_version, peer))
}

/// The answer to the first frame: it must be a hello with our magic, from a client whose
/// protocol version this daemon still serves. The answer names the version both speak: the
/// client's, or ours if the client is newer.
fn answer_hello(request: Request) -> Result<ServerHello, WireError> {
    match request {
        Request::Hello(h) if h.magic != MAGIC => Err(violation("bad hello magic")),
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
        other => Err(violation(format!(
            "expected hello as the first request, got {}",
            other.op()
        ))),
    }
}

/// Zeroes a scratch buffer; releases it when it grew large, so one big reply does not make
/// every later wipe expensive.
pub(super) fn wipe(buf: &mut Vec<u8>) {
    /// Scratch buffers above this size are released after use.
    const KEEP: usize = 16 * 1024;
    zeroize::Zeroize::zeroize(buf);
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    }
}

/// The error of a client that did not read its reply in time.
pub(super) fn write_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client did not read its response in time",
    )
}
