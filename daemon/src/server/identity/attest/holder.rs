//! Whether a process holds the client's end of a connection, and only close-on-exec.
//!
//! A request is credited to the process that wrote it, and that process's program is what
//! `exe` and `exe_sha256` selectors judge. Exec changes a process's program but not its
//! descriptors, so a program could write a request and exec an allowed binary before the
//! daemon reads `/proc/PID/exe`, then read the answer through a copy it kept. Requiring the
//! writer to still hold the connection, with close-on-exec set on every descriptor it has for
//! it, closes that: a descriptor carried across exec never has the flag, and one that had it is
//! gone after the exec. The exe is read before the descriptors, so an exec in between is seen.
//!
//! The client's end is found by inode: sock_diag (`NETLINK_SOCK_DIAG`, `UNIX_DIAG_PEER`) names
//! the peer of the daemon's end, and each of the process's `/proc/PID/fdinfo/N` files names
//! its descriptor's mount and inode (`mnt_id:`, `ino:`) next to its flags. fdinfo, not the
//! `/proc/PID/fd` links: the kernel lets a holder of `CAP_SYS_PTRACE` (all the packaged unit
//! grants) read another uid's fdinfo, while `/proc/PID/fd` is a directory only its owner (or
//! `CAP_DAC_READ_SEARCH`) may search. On kernels whose fdinfo has no `ino:` line the link is
//! read instead, which works for the daemon's own uid.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// The most descriptors looked at in one process: a peer with more is not scanned (its
/// requests match no program selector), so a process cannot make a check take seconds.
pub(crate) const MAX_SCANNED_FDS: usize = 65_536;

/// What a process's descriptors say about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// It holds the client's end, close-on-exec everywhere.
    CloseOnExec,
    /// It holds it through a descriptor without close-on-exec (one carried across an exec).
    Inherited,
    /// It does not hold it (it passed it on, or its copy closed at exec).
    NotHeld,
    /// The daemon cannot tell (no permission to read the process's descriptors, no sock_diag,
    /// or too many descriptors).
    Unknown,
}

/// How `pid` holds the client's end of the connection whose daemon end has inode `ours`.
pub(crate) fn holding(pid: i32, ours: u64) -> Holding {
    let Ok(theirs) = peer_inode(ours) else {
        return Holding::Unknown;
    };
    let Some(sockfs) = sockfs_mount_id() else {
        return Holding::Unknown;
    };
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Holding::Unknown;
    };
    let wanted_link = format!("socket:[{theirs}]");
    let mut held = false;
    for (seen, entry) in entries.enumerate() {
        if seen >= MAX_SCANNED_FDS {
            return Holding::Unknown;
        }
        let Ok(entry) = entry else {
            return Holding::Unknown;
        };
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            // Closed while we looked.
            continue;
        };
        let Some(fd) = Descriptor::parse(&info) else {
            return Holding::Unknown;
        };
        let is_theirs = match fd.inode {
            Some((mount, inode)) => mount == sockfs && inode == theirs,
            None => match link_is(pid, &entry.file_name(), &wanted_link) {
                Some(is) => is,
                None => return Holding::Unknown,
            },
        };
        if !is_theirs {
            continue;
        }
        if fd.close_on_exec {
            held = true;
        } else {
            return Holding::Inherited;
        }
    }
    if held {
        Holding::CloseOnExec
    } else {
        Holding::NotHeld
    }
}

/// Whether descriptor `fd` of `pid` is `wanted` (`socket:[INODE]`), by its `/proc/PID/fd`
/// link, for kernels whose fdinfo names no inode; `None` when the link cannot be read.
fn link_is(pid: i32, fd: &std::ffi::OsStr, wanted: &str) -> Option<bool> {
    match std::fs::read_link(format!("/proc/{pid}/fd/{}", fd.to_string_lossy())) {
        Ok(link) => Some(link.as_os_str() == wanted),
        // Closed while we looked.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// What one `/proc/PID/fdinfo/N` file says.
#[derive(Debug, PartialEq, Eq)]
struct Descriptor {
    /// `flags:` (octal) has `O_CLOEXEC`.
    close_on_exec: bool,
    /// `mnt_id:` and `ino:`: which file it is (`None` on kernels that print no `ino:`).
    inode: Option<(u64, u64)>,
}

impl Descriptor {
    fn parse(info: &str) -> Option<Descriptor> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let flags = u32::from_str_radix(field("flags:")?, 8).ok()?;
        let inode = match (field("mnt_id:"), field("ino:")) {
            (Some(mount), Some(inode)) => Some((mount.parse().ok()?, inode.parse().ok()?)),
            _ => None,
        };
        Some(Descriptor {
            close_on_exec: flags & libc::O_CLOEXEC as u32 != 0,
            inode,
        })
    }
}

/// The mount id every socket's fdinfo shows (sockfs's), read once from a socket of our own.
fn sockfs_mount_id() -> Option<u64> {
    static SOCKFS: OnceLock<Option<u64>> = OnceLock::new();
    *SOCKFS.get_or_init(|| {
        let (probe, _other) = std::os::unix::net::UnixStream::pair().ok()?;
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", probe.as_raw_fd())).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))?
            .trim()
            .parse()
            .ok()
    })
}

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_PEER`: ask for the peer's inode.
const UDIAG_SHOW_PEER: u32 = 0x4;
/// `UNIX_DIAG_PEER`: the attribute carrying it.
const UNIX_DIAG_PEER: u16 = 2;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;

/// A sock_diag request for one Unix socket: `nlmsghdr` then `unix_diag_req`.
#[repr(C)]
struct DiagRequest {
    /// `nlmsghdr.nlmsg_len`.
    len: u32,
    /// `nlmsghdr.nlmsg_type`.
    kind: u16,
    /// `nlmsghdr.nlmsg_flags`.
    flags: u16,
    /// `nlmsghdr.nlmsg_seq`.
    seq: u32,
    /// `nlmsghdr.nlmsg_pid`.
    port: u32,
    /// `unix_diag_req.sdiag_family`.
    family: u8,
    /// `unix_diag_req.sdiag_protocol`.
    protocol: u8,
    /// `unix_diag_req.pad`.
    pad: u16,
    /// `unix_diag_req.udiag_states`: every state.
    states: u32,
    /// `unix_diag_req.udiag_ino`: the socket asked about.
    ino: u32,
    /// `unix_diag_req.udiag_show`.
    show: u32,
    /// `unix_diag_req.udiag_cookie`: "no cookie" (all ones) for a lookup by inode.
    cookie: [u32; 2],
}

/// The inode of the peer of the Unix socket with inode `ours`.
fn peer_inode(ours: u64) -> io::Result<u64> {
    let ino = u32::try_from(ours).map_err(|_| io::Error::other("socket inode above 32 bits"))?;
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = DiagRequest {
        len: size_of::<DiagRequest>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        port: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino,
        show: UDIAG_SHOW_PEER,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: the request is a plain repr(C) struct of the length given.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<DiagRequest>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 512];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    parse_peer(&reply[..n])
}

/// The `UNIX_DIAG_PEER` attribute of a sock_diag reply (`nlmsghdr`, `unix_diag_msg`, attributes).
fn parse_peer(reply: &[u8]) -> io::Result<u64> {
    /// `sizeof(struct nlmsghdr)`.
    const NLMSG_HEADER: usize = 16;
    /// `sizeof(struct unix_diag_msg)`.
    const DIAG_MSG: usize = 16;
    let u16_at = |at: usize| {
        reply
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        reply
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let bad = || io::Error::other("malformed sock_diag reply");
    let len = u32_at(0).ok_or_else(bad)? as usize;
    let reply = reply.get(..len.min(reply.len())).ok_or_else(bad)?;
    if u16_at(4).ok_or_else(bad)? == NLMSG_ERROR {
        let errno = u32_at(NLMSG_HEADER).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let mut at = NLMSG_HEADER + DIAG_MSG;
    while at + 4 <= reply.len() {
        let attr_len = u16_at(at).ok_or_else(bad)? as usize;
        let kind = u16_at(at + 2).ok_or_else(bad)?;
        if attr_len < 4 {
            return Err(bad());
        }
        if kind == UNIX_DIAG_PEER {
            return u32_at(at + 4).map(u64::from).ok_or_else(bad);
        }
        at += (attr_len + 3) & !3;
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "the connection has no peer (it closed)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    fn ino(s: &UnixStream) -> u64 {
        std::fs::File::from(std::os::fd::OwnedFd::from(s.try_clone().expect("dup")))
            .metadata()
            .expect("stat")
            .ino()
    }

    #[test]
    fn fdinfo_gives_flags_and_the_file_when_the_kernel_names_it() {
        let modern = "pos:\t0\nflags:\t02000002\nmnt_id:\t9\nino:\t4242\n";
        assert_eq!(
            Descriptor::parse(modern),
            Some(Descriptor {
                close_on_exec: true,
                inode: Some((9, 4242))
            })
        );
        let old = "pos:\t0\nflags:\t0100002\nmnt_id:\t9\n";
        assert_eq!(
            Descriptor::parse(old),
            Some(Descriptor {
                close_on_exec: false,
                inode: None
            })
        );
        assert_eq!(Descriptor::parse("pos:\t0\n"), None);
        assert_eq!(Descriptor::parse("flags:\tzz\n"), None);
    }

    #[test]
    fn a_descriptor_is_told_by_its_link_where_fdinfo_names_no_inode() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let wanted = format!("socket:[{}]", ino(&theirs));
        let fd = |s: &UnixStream| std::ffi::OsString::from(s.as_raw_fd().to_string());
        assert_eq!(link_is(me, &fd(&theirs), &wanted), Some(true));
        assert_eq!(link_is(me, &fd(&ours), &wanted), Some(false));
        // A descriptor closed while the scan looked is not the connection.
        assert_eq!(
            link_is(me, std::ffi::OsStr::new("999999"), &wanted),
            Some(false)
        );
    }

    /// A sock_diag reply: a header of `kind`, a zeroed `unix_diag_msg`, then `attrs` as
    /// (type, payload) with the kernel's 4-byte alignment.
    fn reply(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        for (attr, payload) in attrs {
            let len = u16::try_from(4 + payload.len()).expect("small");
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&attr.to_ne_bytes());
            body.extend_from_slice(payload);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut msg = u32::try_from(16 + body.len())
            .expect("small")
            .to_ne_bytes()
            .to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn sock_diag_replies_are_read_whatever_comes_before_the_peer() {
        const NAME: u16 = 0; // UNIX_DIAG_NAME
        let peer = 4242u32.to_ne_bytes();
        let answer = |attrs: &[(u16, &[u8])]| parse_peer(&reply(20, attrs));
        assert_eq!(answer(&[(UNIX_DIAG_PEER, &peer)]).expect("peer"), 4242);
        // An attribute with no payload, and one padded to the next 4 bytes, come first.
        let after = answer(&[(NAME, b""), (NAME, b"\0abcde"), (UNIX_DIAG_PEER, &peer)]);
        assert_eq!(after.expect("peer after others"), 4242);
        // No peer attribute: the connection closed.
        let closed = answer(&[(NAME, b"abcd")]).expect_err("no peer");
        assert_eq!(closed.kind(), io::ErrorKind::NotFound);
        // An attribute whose length cannot be is refused, not looped on.
        let mut bad = reply(20, &[(NAME, b"abcd")]);
        bad[32..34].copy_from_slice(&0u16.to_ne_bytes());
        assert_ne!(
            parse_peer(&bad).expect_err("malformed").kind(),
            io::ErrorKind::NotFound
        );
        // The kernel's error: its errno, negated back.
        let mut error = reply(NLMSG_ERROR, &[]);
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_peer(&error).expect_err("errno").raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn sock_diag_names_the_other_end() {
        let (a, b) = UnixStream::pair().expect("pair");
        assert_eq!(peer_inode(ino(&a)).expect("sock_diag"), ino(&b));
        assert_eq!(peer_inode(ino(&b)).expect("sock_diag"), ino(&a));
    }

    #[test]
    fn this_process_holds_its_end_close_on_exec_and_not_once_inherited() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let (ours, theirs) = UnixStream::pair().expect("pair");
        assert_eq!(holding(me, ino(&ours)), Holding::CloseOnExec);
        // A copy without close-on-exec, as one carried across exec would be.
        // SAFETY: dup(2) of an open descriptor; the copy is closed below.
        let copy = unsafe { libc::dup(theirs.as_raw_fd()) };
        assert!(copy >= 0);
        assert_eq!(holding(me, ino(&ours)), Holding::Inherited);
        // SAFETY: closing the copy made above.
        unsafe { libc::close(copy) };
        drop(theirs);
        // Closed: nobody holds it (the kernel may no longer name a peer at all).
        assert!(matches!(
            holding(me, ino(&ours)),
            Holding::NotHeld | Holding::Unknown
        ));
        // Another process that never had it (std's Command closes everything but stdio).
        let (lone, _keep) = UnixStream::pair().expect("pair");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        // spawn() returns once exec has begun closing the close-on-exec descriptors (its
        // error pipe is among the first), and the kernel clears their flags before it closes
        // them one by one: a scan in that window sees inherited copies. It settles at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while holding(pid, ino(&lone)) != Holding::NotHeld {
            assert!(
                std::time::Instant::now() < deadline,
                "a process that never had the connection is said to hold it"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
