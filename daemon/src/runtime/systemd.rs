//! systemd integration without a dependency: socket activation (`LISTEN_FDS`) and readiness
//! notification (`NOTIFY_SOCKET`), both small, documented protocols.

use std::os::fd::{FromRawFd, OwnedFd};

/// The first file descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// The most sockets taken from systemd: the client socket and the credentials socket, with
/// room to spare. More are a unit file's mistake.
const MAX_ACTIVATED: i32 = 8;

/// Takes the activated listening sockets, if systemd passed any to *this* process: honoured
/// only when `LISTEN_PID` is our pid (a variable inherited from a parent is ignored). Clears the
/// variables so nothing we start inherits them. Call before any other thread exists. Each
/// comes with its name (`LISTEN_FDNAMES`: `FileDescriptorName=`, by default the socket unit's
/// name); the caller tells the sockets apart by name and by the paths they are bound to.
pub(crate) fn take_activated_sockets() -> Vec<(OwnedFd, Option<String>)> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // SAFETY: called while the process is single-threaded (documented precondition).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !ours || count < 1 {
        return Vec::new();
    }
    if count > MAX_ACTIVATED {
        tracing::warn!(
            count,
            "systemd passed more sockets than secretd uses; taking the first {MAX_ACTIVATED}"
        );
    }
    (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count.min(MAX_ACTIVATED))
        .map(|fd| {
            // The socket must not leak into anything we exec.
            // SAFETY: fcntl on an fd systemd handed to this process.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let name = usize::try_from(fd - SD_LISTEN_FDS_START)
                .ok()
                .and_then(|i| names.get(i).cloned());
            // SAFETY: systemd hands these fds to this process for it to own; nothing else in
            // the process knows about them.
            (unsafe { OwnedFd::from_raw_fd(fd) }, name)
        })
        .collect()
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
