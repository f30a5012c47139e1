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

/// The socket unit the package ships for credentials (systemd names its fd after it).
const CREDENTIALS_SOCKET_UNIT: &str = "secretd-credentials.socket";
/// The socket unit of the client socket.
const CLIENT_SOCKET_UNIT: &str = "secretd.socket";

/// Sorts the sockets systemd passed into the client socket and the credentials socket, by name
/// (`LISTEN_FDNAMES`) or by the path each is bound to. A socket bound elsewhere and not named
/// for credentials is the client socket if there is none yet (a unit that names another path:
/// the daemon serves where systemd listens), else it is closed with a warning. The
/// credentials socket is never taken for the client socket.
pub(crate) fn sort_activated(
    fds: Vec<(OwnedFd, Option<String>)>,
    cfg: &DaemonConfig,
) -> (Option<OwnedFd>, Option<OwnedFd>) {
    let (mut client, mut credentials) = (None, None);
    let mut others = Vec::new();
    for (fd, name) in fds {
        let path = bound_path(fd.as_raw_fd()).ok().flatten();
        let named = |unit: &str| name.as_deref() == Some(unit);
        let is_credentials = named(CREDENTIALS_SOCKET_UNIT)
            || (path.is_some() && path.as_deref() == cfg.credentials_socket.as_deref());
        let is_client = named(CLIENT_SOCKET_UNIT) || path.as_deref() == Some(cfg.socket.as_path());
        if is_credentials && credentials.is_none() {
            credentials = Some(fd);
        } else if is_client && client.is_none() {
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
            "systemd passed a socket secretd has no use for; closing it"
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
