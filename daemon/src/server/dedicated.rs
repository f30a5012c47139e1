//! A busy connection's own thread.
//!
//! On a host whose cores are shared, a request served by a runtime worker costs an epoll
//! round and a wake-up of whichever worker holds the I/O driver; a thread blocked in `recv` on
//! its own socket is woken by the kernel straight into the read, which is what a raw echo
//! server does. So a connection that keeps reading ([`PROMOTE_AFTER`] `Get`s in a row, each
//! within [`QUIET`] of the last) leaves the runtime: `block_in_place` hands this worker's place to
//! another thread, and this one serves the connection with blocking reads and writes. It goes
//! back to the runtime when the client is quiet for [`QUIET`] or starts a watch, so a thousand
//! idle or watching connections still cost no thread each. [`MAX_DEDICATED`] bounds the
//! threads, and no uid holds more than [`MAX_DEDICATED_PER_UID`] of them (a local user who
//! keeps many connections busy cannot take every thread from the other services);
//! connections beyond either stay on the runtime, served as before.
//!
//! Every limit of the runtime's loop holds here too: a frame's rest within
//! `FRAME_READ_TIMEOUT`, a reply written within `WRITE_TIMEOUT`, read counts flushed every
//! `AUDIT_FLUSH_INTERVAL`, and shutdown ends the connection at once (the socket's reading side
//! is shut down under the blocked `recv`).

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secretd_proto::frame::{FrameError, HEADER_LEN, body_len, decode_body};
use secretd_proto::{ErrorCode, Request, WireError};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_util::sync::CancellationToken;

use super::connection::{Next, last_word, refusal, screen};
use super::framed::{
    Detached, Framed, READ_BUFFER, ReadError, encode_reply, eof_is_truncation, wipe,
};
use super::reply::Reply;
use super::session::Session;
use super::watch::Subscription;
use super::{FRAME_READ_TIMEOUT, WRITE_TIMEOUT};

/// Reads in a row, each within [`QUIET`] of the last, that earn a connection its thread. A
/// process that connects for one read never gets there; nor does a `status` poller (its
/// large replies would grow the thread's own heap for nothing the hot path needs).
pub(super) const PROMOTE_AFTER: u32 = 8;
/// A dedicated connection quiet this long goes back to the runtime.
pub(super) const QUIET: Duration = Duration::from_secs(2);
/// Dedicated threads at once, daemon-wide (beyond the runtime's workers).
pub(super) const MAX_DEDICATED: usize = 32;
/// Dedicated threads one uid may hold at once.
pub(super) const MAX_DEDICATED_PER_UID: usize = MAX_DEDICATED / 2;
/// How often a blocked read or write looks up from the socket to check its deadlines.
const TICK: Duration = Duration::from_millis(250);

/// The daemon's dedicated threads: one set per process, since threads are.
static SEATS: Seats = Seats::new(MAX_DEDICATED, MAX_DEDICATED_PER_UID);

/// Places for dedicated threads, in all and per uid.
#[derive(Debug)]
pub(super) struct Seats {
    /// Places in all.
    total: usize,
    /// Places one uid may hold.
    per_uid: usize,
    /// Places held, by uid (touched only when a connection moves, never per request).
    held: Mutex<Vec<(u32, usize)>>,
}

impl Seats {
    const fn new(total: usize, per_uid: usize) -> Seats {
        Seats {
            total,
            per_uid,
            held: Mutex::new(Vec::new()),
        }
    }

    /// A place for `uid`, if both limits allow one.
    fn take(&self, uid: u32) -> Option<Seat<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let in_use: usize = held.iter().map(|(_, n)| n).sum();
        let at = held.iter().position(|(u, _)| *u == uid);
        let mine = at.map_or(0, |i| held[i].1);
        if in_use >= self.total || mine >= self.per_uid {
            return None;
        }
        match at {
            Some(i) => held[i].1 += 1,
            None => held.push((uid, 1)),
        }
        Some(Seat { seats: self, uid })
    }

    fn give_back(&self, uid: u32) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|(u, _)| *u == uid) {
            held[i].1 -= 1;
            if held[i].1 == 0 {
                held.swap_remove(i);
            }
        }
    }
}

/// One place for a dedicated thread; given back on drop.
#[derive(Debug)]
pub(super) struct Seat<'s> {
    /// Where it was taken from.
    seats: &'s Seats,
    /// Whose it is.
    uid: u32,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.seats.give_back(self.uid);
    }
}

/// A free place for a dedicated thread for `uid`, if the limits allow one and the runtime can
/// hand a worker's place over (a single-threaded runtime cannot).
pub(super) fn seat(uid: u32) -> Option<Seat<'static>> {
    if Handle::try_current().ok()?.runtime_flavor() != RuntimeFlavor::MultiThread {
        return None;
    }
    SEATS.take(uid)
}

/// Counts reads in a row that came within [`QUIET`] of each other.
#[derive(Debug, Default)]
pub(super) struct Streak {
    /// Reads in the current run.
    count: u32,
    /// When the last one came.
    last: Option<Instant>,
}

impl Streak {
    /// A request came now (`is_read`: a `Get`); true once the run of reads is long enough to
    /// earn a thread. Any other request ends the run.
    pub(super) fn asked(&mut self, is_read: bool) -> bool {
        let now = Instant::now();
        let close = self.last.is_some_and(|last| now - last < QUIET);
        self.count = match (is_read, close) {
            (false, _) => 0,
            (true, true) => self.count + 1,
            (true, false) => 1,
        };
        self.last = Some(now);
        self.count >= PROMOTE_AFTER
    }
}

/// One dedicated connection in `omni_secretd_dedicated_connections`, for as long as it lives
/// (a handler that panics on the thread unwinds through it, too).
struct Counted(prometheus::IntGauge);

impl Counted {
    fn new(gauge: &prometheus::IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a dedicated spell ended.
pub(super) enum Handback {
    /// The connection is over.
    Over,
    /// The client went quiet: back to the runtime's loop.
    Quiet(Framed),
    /// A watch was granted; the runtime streams its events.
    Watch(Framed, Subscription),
}

/// Serves `framed` on this thread, taken out of the runtime's worker pool, until the client
/// goes quiet, starts a watch, leaves, or the daemon shuts down.
pub(super) fn serve(
    framed: Framed,
    session: &mut Session<'_>,
    cancel: &CancellationToken,
    seat: Seat<'static>,
) -> Handback {
    let peer = session.peer;
    let detached = match framed.detach() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(uid = peer.uid, pid = peer.pid, error = %e, "cannot take a connection off the runtime");
            return Handback::Over;
        }
    };
    let Some(waker) = shutdown_waker(&detached.stream, cancel) else {
        return Handback::Over;
    };
    let handle = Handle::current();
    let counted = Counted::new(&session.shared.metrics.dedicated);
    tracing::debug!(
        uid = peer.uid,
        pid = peer.pid,
        "connection moved to a thread of its own"
    );
    let ending = tokio::task::block_in_place(|| {
        let mut thread = Thread {
            stream: &detached.stream,
            session,
            handle: &handle,
            cancel,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        };
        let ending = thread.run(&detached.buffered);
        wipe(&mut thread.inbuf);
        wipe(&mut thread.outbuf);
        ending
    });
    waker.cancel();
    drop((counted, seat));
    let Detached {
        stream,
        mut buffered,
    } = detached;
    // Used up by the thread (what it left unread is in a watch's `carried`).
    wipe(&mut buffered);
    let (carried, subscription) = match ending {
        Ending::Over => return Handback::Over,
        Ending::Quiet => (Vec::new(), None),
        Ending::Watch(carried, subscription) => (carried, Some(subscription)),
    };
    let framed = match Framed::reattach(Detached {
        stream,
        buffered: carried,
    }) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(uid = peer.uid, pid = peer.pid, error = %e, "cannot return a connection to the runtime");
            return Handback::Over;
        }
    };
    match subscription {
        Some(s) => Handback::Watch(framed, s),
        None => Handback::Quiet(framed),
    }
}

/// A task that shuts the socket's reading side when the daemon shuts down, which ends the
/// thread's blocked `recv` (a tick would, too, but later). Cancel the returned token once the
/// thread is done.
fn shutdown_waker(stream: &UnixStream, cancel: &CancellationToken) -> Option<CancellationToken> {
    let socket = stream
        .try_clone()
        .inspect_err(|e| tracing::error!(error = %e, "cannot watch a dedicated connection"))
        .ok()?;
    let done = CancellationToken::new();
    let (cancel, finished) = (cancel.clone(), done.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {
                let _ = socket.shutdown(std::net::Shutdown::Read);
            }
            () = finished.cancelled() => {}
        }
    });
    Some(done)
}

/// Why the thread's loop stopped.
enum Ending {
    Over,
    Quiet,
    /// A watch, with any bytes the client sent after asking for it.
    Watch(Vec<u8>, Subscription),
}

/// The thread's loop and what it borrows.
struct Thread<'s, 'a> {
    /// The socket, blocking, with [`TICK`] timeouts both ways.
    stream: &'s UnixStream,
    /// The connection's session, moved here with it.
    session: &'s mut Session<'a>,
    /// To run the session's handlers, which are async (a read may wait for a first fetch).
    handle: &'s Handle,
    /// Daemon shutdown.
    cancel: &'s CancellationToken,
    /// The body of the frame being read; wiped after decoding.
    inbuf: Vec<u8>,
    /// The frame being written; wiped after every write.
    outbuf: Vec<u8>,
}

impl Thread<'_, '_> {
    fn run(&mut self, buffered: &[u8]) -> Ending {
        if let Err(e) = self
            .stream
            .set_nonblocking(false)
            .and_then(|()| self.stream.set_read_timeout(Some(TICK)))
            .and_then(|()| self.stream.set_write_timeout(Some(TICK)))
        {
            tracing::error!(error = %e, "cannot make a dedicated connection blocking");
            return Ending::Over;
        }
        let stream = self.stream;
        let mut reader = BufReader::with_capacity(READ_BUFFER, Cursor::new(buffered).chain(stream));
        let ending = self.serve(&mut reader);
        // Bytes read past the last request belong to whoever serves the connection next.
        match ending {
            Ending::Watch(_, subscription) => {
                let mut carried = reader.buffer().to_vec();
                let cursor = reader.get_ref().get_ref().0;
                let rest = &cursor.get_ref()[cursor.position() as usize..];
                carried.extend_from_slice(rest);
                Ending::Watch(carried, subscription)
            }
            other => other,
        }
    }

    fn serve<R: BufRead>(&mut self, reader: &mut R) -> Ending {
        let mut last = Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                return Ending::Over;
            }
            match reader.fill_buf() {
                Ok([]) => return Ending::Over,
                Ok(_) => {}
                Err(e) if is_tick(&e) => {
                    self.session.flush_if_due();
                    if last.elapsed() >= QUIET {
                        return Ending::Quiet;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(&FrameError::Io(e).into()),
            }
            let request = match screen(self.read_request(reader)) {
                Next::Serve(request) => request,
                Next::Refuse(violation) => {
                    let reply = refusal(self.session, violation);
                    let _ = self.send(&reply);
                    return Ending::Over;
                }
                Next::Close(e) => return self.close(&e),
            };
            last = Instant::now();
            let op = request.op();
            let reply = self.handle.block_on(self.session.respond(request));
            self.session.shared.metrics.request(op, reply.outcome());
            if self.send(&reply).is_err() || self.session.closing {
                return Ending::Over;
            }
            if let Reply::Watch(subscription) = reply {
                return Ending::Watch(Vec::new(), subscription);
            }
            self.session.flush_if_due();
        }
    }

    /// Ends the connection whose next frame could not be read, as `connection::close` does
    /// on the runtime.
    fn close(&mut self, e: &ReadError) -> Ending {
        if let Some(violation) = last_word(self.session.peer, e) {
            let _ = self.send(&Reply::from(violation));
        }
        Ending::Over
    }

    /// Reads the frame whose first byte is buffered, within [`FRAME_READ_TIMEOUT`], and
    /// decodes it, as `Framed::read_request` does on the runtime.
    fn read_request<R: BufRead>(
        &mut self,
        reader: &mut R,
    ) -> Result<Result<Request, WireError>, ReadError> {
        let deadline = Instant::now() + FRAME_READ_TIMEOUT;
        let mut header = [0u8; HEADER_LEN];
        read_exact_by(reader, &mut header, deadline)?;
        let len = body_len(header)?;
        self.inbuf.clear();
        self.inbuf.resize(len, 0);
        read_exact_by(reader, &mut self.inbuf, deadline)?;
        let request = decode_body::<Request>(&self.inbuf)
            .map_err(|e| WireError::new(ErrorCode::ProtocolViolation, e.to_string()));
        wipe(&mut self.inbuf);
        Ok(request)
    }

    /// Encodes and writes `reply` within [`WRITE_TIMEOUT`], then wipes the buffer.
    fn send(&mut self, reply: &Reply) -> Result<(), FrameError> {
        let result = encode_reply(reply, self.session.protocol, &mut self.outbuf)
            .and_then(|()| write_all_by(self.stream, &self.outbuf, Instant::now() + WRITE_TIMEOUT));
        wipe(&mut self.outbuf);
        result
    }
}

/// Fills `buf` from `reader` by `deadline`, looking up at every [`TICK`].
fn read_exact_by<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ReadError> {
    let mut have = 0;
    while have < buf.len() {
        match reader.read(&mut buf[have..]) {
            Ok(0) => return Err(FrameError::Truncated.into()),
            Ok(n) => have += n,
            Err(e) if is_tick(&e) || e.kind() == io::ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    return Err(ReadError::SlowFrame);
                }
            }
            Err(e) => return Err(eof_is_truncation(e).into()),
        }
    }
    Ok(())
}

/// Writes all of `bytes` by `deadline`, looking up at every [`TICK`].
fn write_all_by(
    mut stream: &UnixStream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), FrameError> {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if is_tick(&e) || e.kind() == io::ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    return Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read its response in time",
                    )));
                }
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// A socket timeout: the [`TICK`] passed with nothing to read or no room to write.
fn is_tick(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_run_of_reads_earns_a_thread() {
        let mut streak = Streak::default();
        for _ in 1..PROMOTE_AFTER {
            assert!(!streak.asked(true));
        }
        // Anything else breaks the run.
        assert!(!streak.asked(false));
        for _ in 1..PROMOTE_AFTER {
            assert!(!streak.asked(true));
        }
        assert!(streak.asked(true));
        // A status poller never gets there.
        let mut poller = Streak::default();
        assert!((0..100).all(|_| !poller.asked(false)));
    }

    #[test]
    fn no_uid_takes_more_than_its_share_of_threads() {
        let seats = Seats::new(4, 2);
        let a1 = seats.take(1).expect("first of uid 1");
        let a2 = seats.take(1).expect("second of uid 1");
        assert!(seats.take(1).is_none(), "uid 1 holds its share");
        let b1 = seats.take(2).expect("uid 2 still gets one");
        let b2 = seats.take(2).expect("and a second");
        assert!(seats.take(3).is_none(), "all places taken");
        drop(a1);
        let c1 = seats.take(3).expect("a place given back is free again");
        assert!(seats.take(1).is_none());
        drop((a2, b1, b2, c1));
        assert!(seats.held.lock().expect("lock").is_empty());
    }
}
