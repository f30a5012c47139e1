//! Who is on the other end of a connection, as the kernel says (never as the client says).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::StreamCommon as _;

/// Linux's `SO_PEERGROUPS` (since 4.13); not exported by every libc version.
const SO_PEERGROUPS: libc::c_int = 59;

/// The most supplementary groups read for a peer (the kernel's NGROUPS_MAX is 65536).
const MAX_PEER_GROUPS: usize = 65_536;

/// Credentials of a connected process, read at accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Effective uid: what access decisions use.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Vec<u32>,
    /// Process id, for logs and audit only: pids are reused, so never for decisions.
    pub pid: Option<i32>,
    /// The program behind the connection, attested at accept (`attest`).
    pub attested: super::attest::Attested,
}

impl Peer {
    /// Reads the peer's credentials from an accepted stream, and attests its program (hashing
    /// the executable only when `hash`: some policy selects by hash).
    pub(crate) fn of(stream: &Stream, hash: bool) -> io::Result<Peer> {
        let creds = stream.peer_creds()?;
        let (uid, gid) = match (creds.euid(), creds.egid()) {
            (Some(u), Some(g)) => (u, g),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the kernel did not report the peer's uid and gid",
                ));
            }
        };
        let fd = match stream {
            Stream::UdSocket(s) => std::os::fd::AsFd::as_fd(s),
        };
        let groups = peer_groups(fd)?;
        let pid = creds.pid();
        Ok(Peer {
            uid,
            gid,
            groups,
            pid,
            attested: super::attest::attest(fd, pid, hash),
        })
    }

    /// Whether the peer's primary or a supplementary group is `gid`.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("too many groups"))?;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that many,
        // updating `len` to the bytes written (or needed, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= MAX_PEER_GROUPS {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}
