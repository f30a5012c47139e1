//! The credentials socket (`[daemon] credentials_socket`): systemd's, passed beside the client
//! socket by `secretd-credentials.socket`, or bound here (mode 0600: systemd connects as root,
//! and nobody else has a reason to).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::socket::{
    SocketError, SocketFile, bound_path, clear_stale, io_err, prepare_dir, unsafe_path,
};
use crate::config::DaemonConfig;

/// The credentials socket file's mode.
pub(crate) const CREDENTIALS_SOCKET_MODE: u32 = 0o600;

/// Sorts the sockets systemd passed into the client socket and the credentials socket, by the
/// paths they are bound to. A socket bound elsewhere is the client socket if there is none
/// yet (a unit that names another path: the daemon serves where systemd listens), else it is
/// closed with a warning.
pub(crate) fn sort_activated(
    fds: Vec<OwnedFd>,
    cfg: &DaemonConfig,
) -> (Option<OwnedFd>, Option<OwnedFd>) {
    let (mut client, mut credentials) = (None, None);
    let mut others = Vec::new();
    for fd in fds {
        let path = bound_path(fd.as_raw_fd()).ok().flatten();
        let is_credentials = path.is_some() && path.as_deref() == cfg.credentials_socket.as_deref();
        if is_credentials && credentials.is_none() {
            credentials = Some(fd);
        } else if path.as_deref() == Some(cfg.socket.as_path()) && client.is_none() {
            client = Some(fd);
        } else {
            others.push((fd, path));
        }
    }
    for (fd, path) in others {
        if client.is_none() {
            client = Some(fd);
            continue;
        }
        tracing::warn!(
            path = %path.as_deref().unwrap_or(Path::new("?")).display(),
            "systemd passed a socket secretd has no use for (is daemon.credentials_socket \
             set to its path?); closing it"
        );
    }
    (client, credentials)
}

/// The credentials listener: systemd's `fd` if it passed one, else bound at `path`.
pub(crate) fn listen(
    path: &Path,
    fd: Option<OwnedFd>,
) -> Result<(tokio::net::UnixListener, Option<SocketFile>), SocketError> {
    let (listener, file) = match fd {
        Some(fd) => (std::os::unix::net::UnixListener::from(fd), None),
        None => {
            let dir = path
                .parent()
                .ok_or_else(|| unsafe_path(path, "the socket path has no directory"))?;
            prepare_dir(dir, CREDENTIALS_SOCKET_MODE, None)?;
            clear_stale(path)?;
            let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err(path))?;
            std::fs::set_permissions(
                path,
                std::fs::Permissions::from_mode(CREDENTIALS_SOCKET_MODE),
            )
            .map_err(io_err(path))?;
            let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
            let file = SocketFile::bound(path, (meta.dev(), meta.ino()));
            (listener, Some(file))
        }
    };
    listener.set_nonblocking(true).map_err(io_err(path))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io_err(path))?;
    Ok((listener, file))
}
