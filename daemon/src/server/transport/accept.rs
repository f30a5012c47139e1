//! Taking connections off the kernel's queue in batches, and refusing the ones over a limit
//! before anything is spent on them.
//!
//! The queue is first in, first out, and a peer's uid is known only once it is accepted, so a
//! connect/close flood from one uid sits in front of everyone else's connects. What keeps the
//! others' wait short is how little each accept costs: a batch of up to [`ACCEPT_BATCH`] is
//! drained with `accept4` per wakeup, a refused connection costs one `getsockopt`, one
//! non-blocking `send` of a ready-made frame and a `close` (no task, no registration with the
//! runtime, no log line). Admitted ones wait in a queue per uid ([`super::fair_queue`]) for
//! the rest of what accept learns and a task of their own, served a uid at a time, so the
//! backlog of a uid that connects in a loop delays another uid's connection by one start.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::LazyLock;

use interprocess::local_socket::tokio::Listener;
use secretd_proto::frame::encode_frame;
use secretd_proto::{ErrorCode, Response, WireError};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::admission::Refusal;

/// The most connections taken from the kernel's queue per wakeup before the loop lets the
/// runtime run the tasks it just made.
pub(super) const ACCEPT_BATCH: usize = 64;
/// The listen backlog: how many connects the kernel queues for the daemon. The queue is first
/// in, first out, so it is also how many connections an honest client may wait behind when
/// another uid connects in a loop: measured on 2 cores under two uids' connect/close flood, a
/// victim's connect+get p50 was 2.0 ms with 64, 2.8 ms with 128, 4.9 ms with 256 and 14 ms
/// with 1,024. A full queue fails no client: the blocking client waits in the kernel (up to
/// its timeout) and the async clients retry with backoff.
const LISTEN_BACKLOG: libc::c_int = 128;

/// The listening socket, owned outright so the loop can drain it with `accept4`.
pub(super) struct Acceptor {
    /// The listener, registered with the runtime for readiness.
    fd: AsyncFd<OwnedFd>,
}

impl Acceptor {
    /// Takes over `listener` with a queue of [`LISTEN_BACKLOG`] (calling `listen` again on a
    /// listening socket only resizes its queue, for a socket systemd made as for ours).
    pub(super) fn new(listener: Listener) -> io::Result<Acceptor> {
        let Listener::UdSocket(listener) = listener;
        let fd = OwnedFd::try_from(listener)?;
        // SAFETY: fd is an open, bound and listening socket.
        if unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
        // for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Acceptor { fd })
    }

    /// Waits until connections are queued, then moves up to [`ACCEPT_BATCH`] of them into
    /// `batch`. An error (out of descriptors, say) is returned only when nothing was taken;
    /// otherwise it comes back on the next call.
    pub(super) async fn next_batch(&self, batch: &mut Vec<OwnedFd>) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let drained = ready.try_io(|listener| {
                while batch.len() < ACCEPT_BATCH {
                    match accept(listener.get_ref().as_fd()) {
                        Ok(fd) => batch.push(fd),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock || batch.is_empty() => {
                            return Err(e);
                        }
                        // Keep what was taken; the error recurs on the next call.
                        Err(_) => break,
                    }
                }
                Ok(())
            });
            match drained {
                Ok(result) => return result,
                // The queue is empty (readiness is cleared); anything taken before is served.
                Err(_would_block) if !batch.is_empty() => return Ok(()),
                Err(_would_block) => {}
            }
        }
    }
}

impl Acceptor {
    /// Moves what is queued now, up to [`ACCEPT_BATCH`], into `batch` without waiting (for a
    /// loop that still has work of its own).
    pub(super) fn try_batch(&self, batch: &mut Vec<OwnedFd>) {
        while batch.len() < ACCEPT_BATCH {
            match accept(self.fd.get_ref().as_fd()) {
                Ok(fd) => batch.push(fd),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Empty (the next wait finds out and clears readiness), or an error the
                // next wait reports.
                Err(_) => return,
            }
        }
    }
}

/// Whether the peer of `connection` closed it before sending a byte (a connect/close loop):
/// such a connection is dropped before anything is spent on it.
pub(super) fn closed_unused(connection: BorrowedFd<'_>) -> bool {
    let mut byte = 0u8;
    // SAFETY: byte is valid for a write of one byte; the connection is an open socket.
    let n = unsafe {
        libc::recv(
            connection.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// One connection off the queue, non-blocking and close-on-exec.
fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address and length ask for no peer address; the flags are valid.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The frames that tell a refused client why, encoded once.
static BUSY_FRAMES: LazyLock<[Vec<u8>; 2]> = LazyLock::new(|| {
    [Refusal::Total, Refusal::PerUid].map(|refusal| {
        let mut frame = Vec::new();
        // A fixed, small error response: encoding it cannot fail.
        let _ = encode_frame(
            &Response::Error(WireError::new(ErrorCode::Busy, refusal.reply())),
            &mut frame,
        );
        frame
    })
});

/// Tells a refused client to come back later and closes its connection, without blocking:
/// the frame is small and a fresh socket's buffer is empty, so it fits; if it somehow does
/// not, the client sees the connection close, which it already treats as "busy, retry".
pub(super) fn refuse(connection: OwnedFd, refusal: Refusal) {
    let frame = match refusal {
        Refusal::Total => &BUSY_FRAMES[0],
        Refusal::PerUid => &BUSY_FRAMES[1],
    };
    // SAFETY: frame is valid for reads of its length; the connection is an open socket.
    let _ = unsafe {
        libc::send(
            connection.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    drop(connection);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_frames_decode_as_busy_errors() {
        for frame in BUSY_FRAMES.iter() {
            let (header, body) = frame.split_at(secretd_proto::frame::HEADER_LEN);
            let len = secretd_proto::frame::response_body_len(header.try_into().expect("header"))
                .expect("a valid prefix");
            assert_eq!(len, body.len());
            let response: Response =
                secretd_proto::frame::decode_response_body(body).expect("one whole frame");
            match response {
                Response::Error(e) => assert_eq!(e.code, ErrorCode::Busy),
                other => panic!("not an error frame: {other:?}"),
            }
        }
    }
}
