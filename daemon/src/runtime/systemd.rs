//! systemd integration without a dependency: socket activation (`LISTEN_FDS`) and readiness
//! notification (`NOTIFY_SOCKET`), both small, documented protocols.

use std::os::fd::{FromRawFd, OwnedFd};

/// The first file descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// Takes the activated listening socket, if systemd passed one to *this* process: honoured
/// only when `LISTEN_PID` is our pid (a variable inherited from a parent is ignored). Clears the
/// variables so nothing we start inherits them. Call before any other thread exists.
pub(crate) fn take_activated_socket() -> Option<OwnedFd> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    // SAFETY: called while the process is single-threaded (documented precondition).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !ours || count < 1 {
        return None;
    }
    if count > 1 {
        tracing::warn!(count, "systemd passed several sockets; using the first");
    }
    // SAFETY: systemd hands fd 3 to this process for it to own; nothing else in the process
    // knows about it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    // The socket must not leak into anything we exec.
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(SD_LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// Sends a state line (`READY=1`, `STOPPING=1`) to systemd if it asked for notifications.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}
