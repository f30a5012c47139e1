//! The thread driver: a busy connection served on a thread of its own.
//!
//! On a host whose cores are shared, a request served by a runtime worker costs an epoll
//! round and a wake-up of whichever worker holds the I/O driver; a thread blocked in `recv` on
//! its own socket is woken by the kernel straight into the read, which is what a raw echo
//! server does. So a connection that keeps reading ([`PROMOTE_AFTER`] values served in a row,
//! each within [`QUIET`] of the last) is handed by its task (`super::task`) to a thread of the
//! runtime's blocking pool, and the task waits parked until the thread hands it back: when the
//! client is quiet for [`QUIET`], starts a watch, or leaves. A thousand idle or watching connections still cost
//! no thread each, and admission's seats bound the threads in all and per uid.
//!
//! The loop is the same one the runtime runs ([`Conn::serve`]); only the waiting differs:
//! blocking reads and writes whose timeouts tick every [`TICK`], so deadlines and shutdown are
//! checked while blocked. The handlers, which are async, run under `Handle::block_on`.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use secretd_proto::frame::FrameError;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::admission::Seat;
use super::connection::{Conn, Io, Received, Turn, write_timed_out};
use super::recv;

/// Values served in a row, each within [`QUIET`] of the last, that earn a connection its
/// thread. A process that connects for one read never gets there; nor does a `status` poller
/// (its large replies would grow the thread's own heap for nothing the hot path needs), nor a
/// client asking for names it may not read.
pub(super) const PROMOTE_AFTER: u32 = 8;
/// A connection on a thread that is quiet this long goes back to the runtime.
pub(super) const QUIET: Duration = Duration::from_secs(2);
/// How often a blocked read or write looks up from the socket to check its deadlines.
const TICK: Duration = Duration::from_millis(250);
/// Ticks in a row with nothing to read, between frames, that make a connection quiet: each
/// tick is at least [`TICK`] long, so this is at least [`QUIET`] (counting ticks keeps the
/// clock off the hot path).
const QUIET_TICKS: u32 = (QUIET.as_millis() / TICK.as_millis()) as u32;

/// Counts values served in a row that came within [`QUIET`] of each other.
#[derive(Debug, Default)]
pub(super) struct Streak {
    /// Values in the current run.
    count: u32,
    /// When the last one came.
    last: Option<Instant>,
}

impl Streak {
    /// A request was answered now (`served_read`: with a value); true once the run is long
    /// enough to earn a thread. Any other answer ends the run.
    pub(super) fn asked(&mut self, served_read: bool) -> bool {
        let now = Instant::now();
        let close = self.last.is_some_and(|last| now - last < QUIET);
        self.count = match (served_read, close) {
            (false, _) => 0,
            (true, true) => self.count + 1,
            (true, false) => 1,
        };
        self.last = Some(now);
        self.count >= PROMOTE_AFTER
    }
}

/// One connection in `omni_secretd_dedicated_connections`, for as long as its thread serves
/// it (a handler that panics on the thread unwinds through it, too).
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

/// A connection on its thread.
struct ThreadIo<'s> {
    /// The socket, blocking, with [`TICK`] timeouts both ways.
    stream: &'s UnixStream,
    /// Daemon shutdown.
    cancel: &'s CancellationToken,
    /// How long writing one response may take.
    write_timeout: Duration,
}

/// Serves `conn` on this thread until the client goes quiet, starts a watch, leaves, or the
/// daemon shuts down. `seat` is the thread's place in admission's count.
pub(super) fn serve(
    conn: &mut Conn,
    stream: &UnixStream,
    handle: &Handle,
    cancel: &CancellationToken,
    seat: Seat,
) -> Turn {
    let peer = &conn.session.peer;
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(TICK)))
        .and_then(|()| stream.set_write_timeout(Some(TICK)))
    {
        tracing::error!(error = %e, "cannot make a dedicated connection blocking");
        return Turn::Over;
    }
    tracing::debug!(
        uid = peer.uid,
        pid = peer.pid(),
        "connection moved to a thread of its own"
    );
    let counted = Counted::new(&conn.session.shared.metrics.dedicated);
    let mut io = ThreadIo {
        stream,
        cancel,
        write_timeout: conn.session.shared.write_timeout,
    };
    let turn = handle.block_on(conn.serve(&mut io));
    drop((counted, seat));
    turn
}

impl Io for ThreadIo<'_> {
    async fn receive(&mut self, buf: &mut [u8], until: Instant, between: bool) -> Received {
        let mut quiet_ticks = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Received::Stop(Turn::Over);
            }
            match recv::recv(std::os::fd::AsFd::as_fd(self.stream), buf) {
                Ok(recv::Read::Closed) => return Received::Closed,
                Ok(recv::Read::Bytes(n, sender)) => return Received::Bytes(n, sender),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_tick(&e) => {
                    quiet_ticks += 1;
                    if between && quiet_ticks >= QUIET_TICKS {
                        return Received::Stop(Turn::Quiet);
                    }
                    if Instant::now() >= until {
                        return Received::Deadline;
                    }
                }
                Err(e) => return Received::Failed(e),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let deadline = Instant::now() + self.write_timeout;
        let mut sent = 0;
        while sent < bytes.len() {
            match (&*self.stream).write(&bytes[sent..]) {
                Ok(0) => return Err(FrameError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => sent += n,
                Err(e) if is_tick(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        return Err(FrameError::Io(write_timed_out()));
                    }
                }
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        Ok(())
    }

    fn answered(&mut self, _served_read: bool, _uid: u32) -> Option<Turn> {
        None
    }
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
    fn only_a_run_of_values_earns_a_thread() {
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
        // A status poller, or a client refused every read, never gets there.
        let mut poller = Streak::default();
        assert!((0..100).all(|_| !poller.asked(false)));
    }
}
