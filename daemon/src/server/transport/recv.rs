//! Reading with the writer's credentials: every read of a connection goes through `recvmsg`
//! and comes back with the process that wrote those bytes.
//!
//! With `SO_PASSCRED` set on the listening socket (accepted sockets inherit it) the kernel
//! records the writer's pid, uid and gid with every write, hands them over as an
//! `SCM_CREDENTIALS` message with every read, and never joins bytes from two writers in one
//! read. So a connection shared with, or stolen by, another process cannot slip a request in
//! under the identity that was checked: its bytes arrive with its own credentials.
//!
//! Descriptors a client attaches (`SCM_RIGHTS`) do not fit the control buffer, which holds one
//! credentials message: the kernel drops them instead of installing them in the daemon.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::frame_buf::Sender;
use crate::server::identity::{UNATTRIBUTED, unattributed};

/// The control buffer: room for one `SCM_CREDENTIALS` message, 8-byte aligned as `cmsghdr`s
/// must be. `CMSG_SPACE(sizeof(struct ucred))` is 32 on every 64- and 32-bit Linux ABI.
#[repr(C, align(8))]
struct CredsBuf([u8; 32]);

/// Asks the kernel to pass the writer's credentials with every read of `fd` (a listening
/// socket: the sockets it accepts inherit the flag, and bytes sent before the accept carry
/// credentials too).
pub(crate) fn pass_credentials(fd: BorrowedFd<'_>) -> io::Result<()> {
    if unattributed() {
        return Ok(());
    }
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the length given; fd is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// `n` bytes, all written by one process.
    Bytes(usize, Sender),
    /// The writer closed its end.
    Closed,
}

/// Reads into `buf` once, with the writer's credentials. Nonblocking sockets give
/// `WouldBlock`; blocking ones with a receive timeout give `WouldBlock` when it passes.
/// Bytes that arrived without credentials (the flag was not set on the listener) are an
/// error: they cannot be attributed.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Read> {
    if unattributed() {
        return recv_plain(fd, buf);
    }
    let mut control = CredsBuf([0; 32]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: msg points at a valid iovec over `buf` and a control buffer of the given length.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    if n == 0 {
        return Ok(Read::Closed);
    }
    // SAFETY: msg was filled by recvmsg; the CMSG_* walk stays inside msg_controllen.
    let creds = unsafe { credentials(&msg) };
    match creds {
        Some(sender) => Ok(Read::Bytes(n, sender)),
        None => Err(io::Error::other(
            "bytes arrived without the writer's credentials (SO_PASSCRED is not set)",
        )),
    }
}

/// A read without credentials (bench builds with attribution off).
fn recv_plain(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Read> {
    // SAFETY: buf is valid for writes of its length; fd is an open socket.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    match usize::try_from(n) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(0) => Ok(Read::Closed),
        Ok(n) => Ok(Read::Bytes(n, UNATTRIBUTED)),
    }
}

/// The `SCM_CREDENTIALS` message in `msg`'s control data, if any.
///
/// # Safety
/// `msg` must have been filled by a successful `recvmsg` whose control buffer is still alive.
unsafe fn credentials(msg: &libc::msghdr) -> Option<Sender> {
    // SAFETY: guaranteed by the caller; CMSG_FIRSTHDR/NXTHDR bound the walk by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let wanted = libc::CMSG_LEN(size_of::<libc::ucred>() as u32) as usize;
            if header.cmsg_level == libc::SOL_SOCKET
                && header.cmsg_type == libc::SCM_CREDENTIALS
                && header.cmsg_len as usize >= wanted
            {
                let ucred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(Sender {
                    // 0: the writer's pid is not visible in the daemon's pid namespace.
                    pid: (ucred.pid > 0).then_some(ucred.pid),
                    uid: ucred.uid,
                    gid: ucred.gid,
                });
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn every_read_names_its_writer_and_never_joins_two() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        pass_credentials(listener.as_fd()).expect("SO_PASSCRED");
        let mut ours = UnixStream::connect(&path).expect("connect");
        // Written before the accept: credentials are recorded all the same.
        ours.write_all(b"abc").expect("write");
        let (conn, _) = listener.accept().expect("accept");
        // Another process writes on a copy of the same connection.
        let copy = ours.try_clone().expect("dup");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf xyz >&3")
            .fd_3(copy.as_raw_fd())
            .status()
            .expect("sh");
        assert!(status.success());
        drop(copy);
        ours.write_all(b"def").expect("write");

        let me = i32::try_from(std::process::id()).expect("pid");
        let mut buf = [0u8; 64];
        let first = recv(conn.as_fd(), &mut buf).expect("recv");
        let Read::Bytes(n, sender) = first else {
            panic!("{first:?}")
        };
        assert_eq!((&buf[..n], sender.pid), (&b"abc"[..], Some(me)));
        let Read::Bytes(n, sender) = recv(conn.as_fd(), &mut buf).expect("recv") else {
            panic!("closed")
        };
        assert_eq!(&buf[..n], b"xyz");
        assert!(sender.pid.is_some() && sender.pid != Some(me), "{sender:?}");
        let Read::Bytes(n, sender) = recv(conn.as_fd(), &mut buf).expect("recv") else {
            panic!("closed")
        };
        assert_eq!((&buf[..n], sender.pid), (&b"def"[..], Some(me)));
        drop(ours);
        assert_eq!(recv(conn.as_fd(), &mut buf).expect("recv"), Read::Closed);
    }

    #[test]
    fn bytes_without_credentials_are_refused() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(b"x").expect("write");
        let mut buf = [0u8; 8];
        assert!(recv(b.as_fd(), &mut buf).is_err());
    }

    /// `Command` has no way to hand a descriptor to a child at a chosen number; this does,
    /// through `pre_exec` and `dup2` (the copy is not close-on-exec in the child).
    trait Fd3 {
        fn fd_3(&mut self, raw: std::os::fd::RawFd) -> &mut Self;
    }

    impl Fd3 for std::process::Command {
        fn fd_3(&mut self, raw: std::os::fd::RawFd) -> &mut Self {
            use std::os::unix::process::CommandExt;
            // SAFETY: dup2 is async-signal-safe; the caller keeps `raw` open over the spawn.
            unsafe {
                self.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            self
        }
    }
}
