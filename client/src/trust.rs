//! Who is allowed to answer: before a client sends a byte, it checks that the process on the
//! other end of the socket can be the real daemon. Anyone can create a socket; a forged
//! `webhook_shared_secret` served from one lets its author forge webhooks.
//!
//! The rules:
//! - the server (the kernel's `SO_PEERCRED`, never what it says) runs as root, as the caller,
//!   or as the daemon's uid this installation names: `SECRETD_DAEMON_UID`, else the `secretd`
//!   system user (resolved once per process). Never as whoever owns the socket file: anyone
//!   who gets a client to use a path they own (a stale `SECRETD_SOCKET`, a config they can
//!   write) owns that file. Under socket activation systemd created the listener, so the peer
//!   is root;
//! - the socket's directory is not writable by group or others, so nobody else could have put
//!   the socket there or can swap it;
//! - the derived development socket (`$XDG_RUNTIME_DIR/secretd-dev/` or `/tmp/secretd-dev-UID/`,
//!   used when neither `SECRETD_SOCKET` nor the production socket exists) must sit in a
//!   directory owned by the caller and be served by the caller or root: another local user
//!   could create that directory first.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::OnceLock;

/// The environment variable that names the daemon's uid where it is not the `secretd` user.
pub(crate) const DAEMON_UID_ENV: &str = "SECRETD_DAEMON_UID";
/// The system user the packages create for the daemon.
const DAEMON_USER: &std::ffi::CStr = c"secretd";

/// The daemon's uid this installation names, if any: read once per process.
fn daemon_uid() -> Option<u32> {
    static DAEMON_UID: OnceLock<Option<u32>> = OnceLock::new();
    *DAEMON_UID.get_or_init(|| match std::env::var(DAEMON_UID_ENV) {
        Ok(text) => text.trim().parse().ok(),
        Err(_) => uid_of_user(DAEMON_USER),
    })
}

/// The uid of the user called `name` (`getpwnam_r`).
fn uid_of_user(name: &std::ffi::CStr) -> Option<u32> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data the call fills; buf is valid for its length.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `found` points at `pwd` or is null.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &raw mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(pwd.pw_uid);
    }
}

/// Why a server is not trusted (the caller turns it into `Error::UntrustedServer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Distrust(pub(crate) String);

/// The uid of the process on the other end of the socket `fd`.
fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Checks the server behind `stream`, connected at `path`, as described in the module docs.
pub(crate) fn check(stream: &UnixStream, path: &Path) -> Result<(), Distrust> {
    check_fd(stream.as_fd(), path)
}

/// [`check`] for any connected socket.
pub(crate) fn check_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<(), Distrust> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let server = peer_uid(fd).map_err(|e| Distrust(format!("cannot read its credentials: {e}")))?;
    let socket = std::fs::symlink_metadata(path)
        .map_err(|e| Distrust(format!("cannot inspect the socket file: {e}")))?;
    if !socket.file_type().is_socket() {
        return Err(Distrust("the path is not a socket".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir)
        .map_err(|e| Distrust(format!("cannot inspect {}: {e}", dir.display())))?;
    let dir_mode = dir_meta.mode() & 0o7777;
    if dir_mode & 0o022 != 0 {
        return Err(Distrust(format!(
            "its directory {} is writable by others (mode {dir_mode:o}), so anyone could have \
             put a socket there",
            dir.display()
        )));
    }
    if is_derived_dev_socket(path, me) {
        if dir_meta.uid() != me {
            return Err(Distrust(format!(
                "the development directory {} belongs to uid {}, not to you (uid {me})",
                dir.display(),
                dir_meta.uid()
            )));
        }
        if server != me && server != 0 {
            return Err(Distrust(format!(
                "the development socket is served by uid {server}, not by you (uid {me}) or root"
            )));
        }
        return Ok(());
    }
    let daemon = daemon_uid();
    if server == 0 || server == me || Some(server) == daemon {
        return Ok(());
    }
    let expected = match daemon {
        Some(uid) => format!("root, you (uid {me}) or the daemon's uid {uid}"),
        None => format!(
            "root or you (uid {me}); this host has no `secretd` user, so set {DAEMON_UID_ENV} \
             if the daemon runs as another uid"
        ),
    };
    Err(Distrust(format!(
        "it is served by uid {server} (the socket file belongs to uid {}), expected {expected}",
        socket.uid()
    )))
}

/// Whether `path` is the development socket a client derives by itself for `euid`.
fn is_derived_dev_socket(path: &Path, euid: u32) -> bool {
    path == secretd_proto::paths::dev_socket(euid)
        || path
            == Path::new(&format!("/tmp/secretd-dev-{euid}"))
                .join(secretd_proto::paths::SOCKET_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_and_a_missing_one_is_none() {
        // Every Debian system has both, with these uids (base-passwd).
        assert_eq!(uid_of_user(c"root"), Some(0));
        assert_eq!(uid_of_user(c"nobody"), Some(65534));
        assert_eq!(uid_of_user(c"secretd-no-such-user"), None);
    }
}
