//! Who is on the other end of a connection, as the kernel says (never as the client says):
//! what accept learns of the connecting process ([`Accepted`]), who wrote each read
//! ([`Sender`], from `SCM_CREDENTIALS`), and the identity requests are answered for ([`Peer`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Linux's `SO_PEERGROUPS` (since 4.13); not exported by every libc version.
const SO_PEERGROUPS: libc::c_int = 59;

/// The most supplementary groups read for a peer (the kernel's NGROUPS_MAX is 65536).
const MAX_PEER_GROUPS: usize = 65_536;

/// The process that wrote some bytes, as the kernel reports it with them (`SCM_CREDENTIALS`:
/// the writer's *real* uid and gid), or as `SO_PEERCRED` reports the connecting process (its
/// effective ones) in [`Accepted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender {
    /// Its process id, when the kernel reports one (not when it is in a pid namespace the
    /// daemon cannot see).
    pub(crate) pid: Option<i32>,
    /// Its uid.
    pub(crate) uid: u32,
    /// Its gid.
    pub(crate) gid: u32,
}

/// Whether reads are unattributed: only in a build with the bench's knobs (feature
/// `bench-knobs`, binary `secretd-bench-daemon`) run with `SECRETD_BENCH_ATTRIBUTION=off`, to
/// measure what attribution costs. Every other build is always attributed (a constant `false`,
/// so the plain path is compiled out).
#[cfg(feature = "bench-knobs")]
pub(crate) fn unattributed() -> bool {
    static OFF: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        BENCH_KNOBS.load(std::sync::atomic::Ordering::Relaxed)
            && std::env::var("SECRETD_BENCH_ATTRIBUTION").is_ok_and(|v| v == "off")
    });
    *OFF
}

/// Set only by `secretd-bench-daemon`'s `main`: a `secretd` built with every feature (say
/// `cargo build --all-features`) still ignores the bench's environment variable.
#[cfg(feature = "bench-knobs")]
pub(crate) static BENCH_KNOBS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether reads are unattributed: never, in this build.
#[cfg(not(feature = "bench-knobs"))]
pub(crate) const fn unattributed() -> bool {
    false
}

/// The writer an unattributed read names (bench builds only): identification takes it for
/// the process that connected.
pub(crate) const UNATTRIBUTED: Sender = Sender {
    pid: None,
    uid: u32::MAX,
    gid: u32::MAX,
};

/// What accept learns of the process that connected, before a byte is read: cheap socket
/// options only, so accepting never waits on anything a peer controls.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The connecting process's credentials (`SO_PEERCRED`).
    pub(crate) sender: Sender,
    /// Its supplementary groups at connect time (`SO_PEERGROUPS`).
    pub(crate) groups: Vec<u32>,
    /// A pidfd of it (`SO_PEERPIDFD`, Linux 6.5+), taken by its first identification.
    pub(crate) pidfd: Option<OwnedFd>,
    /// The inode of the daemon's end of the connection, to find the client's end among a
    /// process's descriptors.
    pub(crate) socket: u64,
}

impl Accepted {
    /// Reads what the kernel says about the peer of the accepted socket `fd`, whose
    /// credentials `cred` (from [`peer_cred`]) admission has already looked at.
    pub(crate) fn of(fd: BorrowedFd<'_>, cred: libc::ucred) -> io::Result<Accepted> {
        let socket = inode(fd)?;
        Ok(Accepted {
            sender: Sender {
                pid: (cred.pid > 0).then_some(cred.pid),
                uid: cred.uid,
                gid: cred.gid,
            },
            groups: peer_groups(fd)?,
            pidfd: peer_pidfd(fd),
            socket,
        })
    }
}

/// The identity requests on a connection are answered for: the process that wrote them,
/// its groups, and what was attested of its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Effective uid: what access decisions use.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The program behind the requests (`attest`).
    pub attested: super::attest::Attested,
    /// The credentials its requests arrive with: a frame with others is another writer's.
    pub written_as: Sender,
}

impl Peer {
    /// Whether the peer's primary or a supplementary group is `gid`.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// The credentials this identity's requests arrive with.
    pub(crate) fn sender(&self) -> Sender {
        self.written_as
    }

    /// Its process id, for logs and audit (decisions use the pidfd-checked attestation).
    pub(crate) fn pid(&self) -> Option<i32> {
        self.written_as.pid
    }
}

/// The inode of the socket `fd` (`fstat` on the descriptor itself: no copy of it is made).
fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: stat is valid for writes of a `struct stat`; fd is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { stat.assume_init() }.st_ino)
}

/// The credentials of the process on the other end of the socket `fd` (`SO_PEERCRED`).
pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given; fd is an open socket.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A pidfd of the peer, on kernels that give one.
fn peer_pidfd(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pidfd and len are valid for writes of the sizes given; fd is an open socket.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new fd that we now own.
    (rc == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
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

/// What `/proc/PID/status` says of a process's credentials.
#[derive(Debug)]
pub(crate) struct StatusCreds {
    /// Real uid and gid: what its writes carry (`SCM_CREDENTIALS`).
    pub(crate) real: (u32, u32),
    /// Effective uid: what decisions use.
    pub(crate) uid: u32,
    /// Effective gid.
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
}

/// A process's credentials from `/proc/PID/status`: for a writer other than the connecting
/// process, whose effective ids and groups no socket option reports.
pub(crate) fn status_creds(pid: i32) -> Option<StatusCreds> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    // `Uid:` and `Gid:` list real, effective, saved and filesystem ids.
    let nth = |line: &str, n: usize| line.split_whitespace().nth(n)?.parse::<u32>().ok();
    let (uids, gids) = (field("Uid:")?, field("Gid:")?);
    let groups = field("Groups:")?
        .split_whitespace()
        .take(MAX_PEER_GROUPS)
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    Some(StatusCreds {
        real: (nth(uids, 0)?, nth(gids, 0)?),
        uid: nth(uids, 1)?,
        gid: nth(gids, 1)?,
        groups,
    })
}
