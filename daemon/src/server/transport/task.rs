//! The runtime's driver: a connection as a tokio task. It waits for bytes with the runtime's
//! readiness, keeps one shutdown waiter and one alarm for the connection's life, streams a
//! watch's events, and hands a connection that keeps reading to a thread of its own
//! ([`super::thread`]), waiting (parked, holding no worker) until the thread hands it back.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::{ErrorCode, Response, WireError};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::admission::{Admission, Seat, Slot};
use super::alarm::Alarm;
use super::connection::{self, Conn, Io, Received, Turn, write_timed_out};
use super::frame_buf::FrameBuf;
use super::{recv, thread};
use crate::server::Shared;
use crate::server::identity::{self, Accepted};
use crate::server::requests::{Session, Subscription};

/// A connection on the runtime.
pub(super) struct TaskIo {
    /// The socket, registered with the runtime.
    stream: UnixStream,
    /// Daemon shutdown: one waiter for the connection's life (registering one per request
    /// takes a lock the workers share).
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// One timer for the connection's deadlines, re-armed only when they move closer.
    alarm: Alarm,
    /// Reads served in a row, toward a thread of its own.
    streak: thread::Streak,
    /// Where seats for threads come from, when this runtime can hand a worker's place over.
    seats: Option<Arc<Admission>>,
    /// How long writing one response may take.
    write_timeout: Duration,
}

impl TaskIo {
    fn new(stream: UnixStream, cancel: &CancellationToken, write_timeout: Duration) -> TaskIo {
        TaskIo {
            stream,
            cancelled: Box::pin(cancel.clone().cancelled_owned()),
            alarm: Alarm::new(),
            streak: thread::Streak::default(),
            seats: None,
            write_timeout,
        }
    }
}

impl Io for TaskIo {
    async fn receive(&mut self, buf: &mut [u8], until: Instant, _between: bool) -> Received {
        loop {
            let read = self.stream.try_io(Interest::READABLE, || {
                recv::recv(std::os::fd::AsFd::as_fd(&self.stream), buf)
            });
            match read {
                Ok(recv::Read::Closed) => return Received::Closed,
                Ok(recv::Read::Bytes(n, sender)) => return Received::Bytes(n, sender),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Received::Failed(e),
            }
            tokio::select! {
                biased;
                () = &mut self.cancelled => return Received::Stop(Turn::Over),
                () = self.alarm.at(until) => return Received::Deadline,
                ready = self.stream.readable() => {
                    if let Err(e) = ready {
                        return Received::Failed(e);
                    }
                }
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        write_all(&self.stream, bytes, self.write_timeout).await
    }

    fn answered(&mut self, served_read: bool, uid: u32) -> Option<Turn> {
        if !self.streak.asked(served_read) {
            return None;
        }
        let seat = self.seats.as_ref()?.dedicated_seat(uid)?;
        Some(Turn::Promote(seat))
    }
}

/// Writes all of `bytes` within `timeout` (the fast path, a reply that fits the socket's
/// buffer, sets no timer).
async fn write_all(stream: &UnixStream, bytes: &[u8], timeout: Duration) -> Result<(), FrameError> {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.try_write(&bytes[sent..]) {
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(timeout, stream.writable())
                    .await
                    .map_err(|_| FrameError::Io(write_timed_out()))??;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Serves an accepted, admitted connection until it ends: the hello (the writer identified
/// before it is answered), then requests on the runtime or, while it keeps reading, on a thread
/// of its own; a watch's events at the end. `_slot` holds the connection's place in the
/// admission counts for as long as it lives.
pub(super) async fn run(
    stream: UnixStream,
    mut accepted: Accepted,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    _slot: Slot,
    cancel: CancellationToken,
) {
    let accepted_at = Instant::now();
    let mut io = TaskIo::new(stream, &cancel, shared.write_timeout);
    if can_hand_over() {
        io.seats = Some(admission);
    }
    let mut frames = FrameBuf::default();
    let identify = async |sender| {
        identity::identify(sender, &mut accepted, &shared.policy, &shared.attestor)
            .await
            .map_err(|e| WireError::new(ErrorCode::PermissionDenied, e.to_string()))
    };
    let Some((protocol, peer)) = connection::hello(
        &mut frames,
        &mut io,
        (accepted_at, shared.frame_deadline),
        identify,
    )
    .await
    else {
        return;
    };
    tracing::debug!(
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid(),
        program = %peer.attested.describe(),
        "client connected"
    );
    let (uid, pid) = (peer.uid, peer.pid());
    let session = Session::new(shared, peer, accepted, protocol);
    let mut conn = Conn::new(frames, session);
    let watch = loop {
        match conn.serve(&mut io).await {
            Turn::Over => break None,
            Turn::Watch(subscription) => break Some(subscription),
            Turn::Quiet => {}
            Turn::Promote(seat) => match hand_over(conn, io, seat, &cancel).await {
                Handback::Quiet(back, back_io) => (conn, io) = (back, back_io),
                Handback::Watch(back, back_io, subscription) => {
                    (conn, io) = (back, back_io);
                    break Some(subscription);
                }
                Handback::Over(Some(mut back)) => {
                    back.session.flush();
                    return;
                }
                Handback::Over(None) => return,
            },
        }
    };
    if let Some(subscription) = watch {
        // Reads counted so far are written now: a watch can last for days.
        conn.session.flush();
        stream_watch(subscription, &mut conn, &mut io).await;
    }
    conn.session.flush();
    tracing::debug!(uid, pid, "client disconnected");
}

/// Whether this runtime can spare a connection to a thread: a current-thread runtime serves
/// everything on one thread, and tests build one.
fn can_hand_over() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// How a connection came back from its thread.
enum Handback {
    /// Quiet: served on the runtime again.
    Quiet(Conn, TaskIo),
    /// A watch was granted on the thread; the runtime streams it.
    Watch(Conn, TaskIo, Subscription),
    /// The connection ended (its state, unless the thread died with it).
    Over(Option<Conn>),
}

/// Moves the connection to a thread of its own and waits, parked and holding no worker, until
/// it comes back. Shutdown shuts the socket's reading side under the thread's blocked read.
async fn hand_over(conn: Conn, io: TaskIo, seat: Seat, cancel: &CancellationToken) -> Handback {
    let (uid, pid) = (conn.session.peer.uid, conn.session.peer.pid());
    let TaskIo {
        stream,
        cancelled,
        alarm,
        streak: _,
        seats,
        write_timeout,
    } = io;
    let stream = match stream
        .into_std()
        .and_then(|s| s.try_clone().map(|w| (s, w)))
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(uid, pid, error = %e, "cannot take a connection off the runtime");
            return Handback::Over(Some(conn));
        }
    };
    let Some((conn, stream, turn)) = on_thread(conn, stream, seat, cancel).await else {
        tracing::error!(
            uid,
            pid,
            "a connection's thread ended without handing it back"
        );
        return Handback::Over(None);
    };
    let subscription = match turn {
        Turn::Quiet => None,
        Turn::Watch(subscription) => Some(subscription),
        Turn::Over | Turn::Promote(_) => return Handback::Over(Some(conn)),
    };
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(uid, pid, error = %e, "cannot return a connection to the runtime");
            return Handback::Over(Some(conn));
        }
    };
    let io = TaskIo {
        stream,
        cancelled,
        alarm,
        streak: thread::Streak::default(),
        seats,
        write_timeout,
    };
    match subscription {
        Some(s) => Handback::Watch(conn, io, s),
        None => Handback::Quiet(conn, io),
    }
}

/// Serves `conn` on a thread of the runtime's blocking pool and waits for it to come back with
/// its socket and why (`None` if the thread died with it). `waker` (a second handle on the
/// socket) shuts its reading side when the daemon stops.
///
/// The blocking pool, not a thread of our own per move: its threads are kept and reused for
/// the next busy connection, and measured on this VM a pooled thread answers a lone client in
/// 11 µs where a fresh one took 35 (BENCHMARKS, "Architecture II").
async fn on_thread(
    conn: Conn,
    (stream, waker): (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
    seat: Seat,
    cancel: &CancellationToken,
) -> Option<(Conn, std::os::unix::net::UnixStream, Turn)> {
    let handle = Handle::current();
    let cancel_for_thread = cancel.clone();
    let mut done_rx = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        let turn = thread::serve(&mut conn, &stream, &handle, &cancel_for_thread, seat);
        (conn, stream, turn)
    });
    let finished = tokio::select! {
        () = cancel.cancelled() => {
            let _ = waker.shutdown(std::net::Shutdown::Read);
            (&mut done_rx).await
        }
        finished = &mut done_rx => finished,
    };
    finished.ok()
}

/// Streams a watch's events until the client closes, sends anything, stops reading, or the
/// daemon shuts down.
async fn stream_watch(subscription: Subscription, conn: &mut Conn, io: &mut TaskIo) {
    let protocol = conn.session.protocol;
    let lagged_total = conn.session.shared.metrics.watch_lagged.clone();
    let mut events = subscription.events(protocol);
    let mut batch = Vec::new();
    loop {
        if conn.frames.has_bytes() {
            return watcher_spoke(io).await;
        }
        tokio::select! {
            biased;
            () = &mut io.cancelled => return,
            ready = io.stream.readable() => {
                if ready.is_err() {
                    return;
                }
                let mut probe = [0u8; 1];
                match io.stream.try_read(&mut probe) {
                    Ok(0) => return,
                    Ok(_) => return watcher_spoke(io).await,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
            more = events.next_batch(&mut batch) => {
                if !more {
                    return;
                }
                if events.lagged() {
                    lagged_total.inc();
                }
                let sent = write_all(&io.stream, &batch, io.write_timeout).await;
                connection::wipe(&mut batch);
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// A watching client sent bytes: it is told that is a violation, then the stream ends.
async fn watcher_spoke(io: &mut TaskIo) {
    let v = WireError::new(
        ErrorCode::ProtocolViolation,
        "a watching connection may not send requests",
    );
    send_error(&io.stream, v, io.write_timeout).await;
}

/// Writes one error frame, best effort: the connection closes after it either way.
async fn send_error(stream: &UnixStream, error: WireError, timeout: Duration) {
    let mut out = Vec::new();
    if encode_frame(&Response::Error(error), &mut out).is_ok() {
        let _ = write_all(stream, &out, timeout).await;
    }
}
