//! Creating the listening socket safely.
//!
//! The socket lives in a directory the daemon owns and nobody else can write, so no other
//! user can swap the socket or the directory under it. An existing socket file is probed: if a
//! daemon answers, we refuse to start (never steal a live daemon's socket); if nothing answers
//! it is stale and removed. Symlinks and non-socket files at the path are refused outright.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;

use crate::config::{DaemonConfig, GroupRef};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// A daemon already answers on the socket.
    #[error("another secretd is already serving on {}; stop it first", .0.display())]
    Live(PathBuf),
    /// The path or its directory is not safe to use.
    #[error("refusing to use {}: {why}", path.display())]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The operating system refused.
    #[error("cannot set up socket {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(super) fn unsafe_path(path: &Path, why: impl Into<String>) -> SocketError {
    SocketError::Unsafe {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// The socket file this daemon created; removed at shutdown only if it is still ours.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    /// Where it is.
    path: PathBuf,
    /// Device and inode right after bind, to recognise it later; `None` for a socket systemd
    /// created (systemd removes it).
    identity: Option<(u64, u64)>,
}

impl SocketFile {
    /// A socket file this daemon bound, with its device and inode right after the bind.
    pub(crate) fn bound(path: &Path, identity: (u64, u64)) -> SocketFile {
        SocketFile {
            path: path.to_owned(),
            identity: Some(identity),
        }
    }

    /// The socket path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this daemon created the file (so watches it); false for systemd's sockets.
    pub(crate) fn is_ours_to_watch(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether the path still holds the socket this daemon bound (not removed, not replaced).
    pub(crate) fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.identity)
            .unwrap_or(false)
    }

    /// Removes the socket file, unless someone else's socket has taken its place.
    pub(crate) fn remove(self) {
        if self.still_ours()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
        }
    }
}

/// Prepares the directory, clears a stale socket, binds, and applies mode and group.
pub(crate) fn bind(cfg: &DaemonConfig) -> Result<(Listener, SocketFile), SocketError> {
    let path = cfg.socket.as_path();
    let gid = cfg.socket_group.as_ref().map(resolve_group).transpose()?;
    let dir = path
        .parent()
        .ok_or_else(|| unsafe_path(path, "the socket path has no directory"))?;
    prepare_dir(dir, cfg.socket_mode, gid)?;
    clear_stale(path)?;

    let name = path.to_fs_name::<GenericFilePath>().map_err(io_err(path))?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(cfg.socket_mode)
        .reclaim_name(false)
        .create_tokio()
        .map_err(|e| match e.kind() {
            // Another daemon bound between our probe and our bind.
            io::ErrorKind::AddrInUse => SocketError::Live(path.to_owned()),
            _ => SocketError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    let Listener::UdSocket(bound) = &listener;
    super::recv::pass_credentials(std::os::fd::AsFd::as_fd(bound)).map_err(io_err(path))?;
    // bind() applies the umask on top of the mode; set the exact mode now. Until this line the
    // file was at most as permissive as asked.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .map_err(io_err(path))?;
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err(path))?;
    }
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity: Some((meta.dev(), meta.ino())),
        },
    ))
}

/// Adopts a listening socket passed by systemd socket activation. A socket whose file no
/// longer exists is refused: no client can reach it (a unit whose `RuntimeDirectory=` was
/// removed on a restart took the socket file with it), so serving on it would black the host
/// out while looking healthy.
pub(crate) fn adopt(
    fd: std::os::fd::OwnedFd,
    path: &Path,
) -> Result<(Listener, SocketFile), SocketError> {
    use std::os::fd::AsRawFd;
    let bound = bound_path(fd.as_raw_fd()).map_err(io_err(path))?;
    if let Some(bound) = &bound {
        match std::fs::symlink_metadata(bound) {
            Ok(meta) if meta.file_type().is_socket() => {}
            _ => {
                return Err(unsafe_path(
                    bound,
                    "systemd passed a socket whose file no longer exists, so no client can \
                     reach it (keep the runtime directory across restarts: \
                     RuntimeDirectoryPreserve=yes)",
                ));
            }
        }
    }
    // systemd sets it with `PassCredentials=yes`; an older unit file may lack the line.
    super::recv::pass_credentials(std::os::fd::AsFd::as_fd(&fd)).map_err(io_err(path))?;
    let listener = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(fd)
        .map_err(|e| SocketError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("the socket systemd passed is unusable: {e}")),
        })?;
    Ok((
        Listener::from(listener),
        SocketFile {
            path: bound.unwrap_or_else(|| path.to_owned()),
            identity: None,
        },
    ))
}

/// The filesystem path a Unix socket is bound to, if it is bound to one (not abstract, not
/// unnamed).
pub(crate) fn bound_path(fd: std::os::fd::RawFd) -> io::Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = unix_address(fd, Side::Ours)?;
    match raw.first() {
        // Unnamed, or an abstract address: no file to check.
        None | Some(0) => Ok(None),
        Some(_) => {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(
                &raw[..end],
            ))))
        }
    }
}

/// Which end of a connection [`unix_address`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// Ours (`getsockname`).
    Ours,
    /// The peer's (`getpeername`).
    Peer,
}

/// The raw `sun_path` bytes of one end of a Unix socket (empty: unnamed; a leading NUL:
/// abstract).
pub(crate) fn unix_address(fd: std::os::fd::RawFd, side: Side) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len are valid for writes of the sizes given.
    let rc = unsafe {
        match side {
            Side::Ours => libc::getsockname(fd, (&raw mut addr).cast(), &mut len),
            Side::Peer => libc::getpeername(fd, (&raw mut addr).cast(), &mut len),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return Err(io::Error::other("not a Unix socket"));
    }
    let offset = std::mem::size_of::<libc::sa_family_t>();
    let path_len = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    Ok(addr.sun_path[..path_len].iter().map(|c| *c as u8).collect())
}

/// The directory mode that lets exactly the socket's audience reach it.
fn dir_mode_for(socket_mode: u32) -> u32 {
    let mut mode = 0o700;
    if socket_mode & 0o070 != 0 {
        mode |= 0o050;
    }
    if socket_mode & 0o007 != 0 {
        mode |= 0o005;
    }
    mode
}

pub(super) fn prepare_dir(
    dir: &Path,
    socket_mode: u32,
    gid: Option<u32>,
) -> Result<(), SocketError> {
    let wanted = dir_mode_for(socket_mode);
    match std::fs::DirBuilder::new().mode(wanted).create(dir) {
        Ok(()) => {
            // The umask may have narrowed the mode; set it exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted))
                .map_err(io_err(dir))?;
            if let Some(gid) = gid {
                std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(io_err(dir))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(dir, "the socket directory is a symlink"));
    }
    if !meta.is_dir() {
        return Err(unsafe_path(dir, "the socket directory is not a directory"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(unsafe_path(
            dir,
            format!(
                "the socket directory belongs to uid {}, not to the daemon's uid {euid}",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_path(
            dir,
            format!("the socket directory is writable by others (mode {mode:o}); use 0700 or 0750"),
        ));
    }
    if mode & wanted != wanted {
        tracing::warn!(
            dir = %dir.display(),
            mode = format_args!("{mode:o}"),
            wanted = format_args!("{wanted:o}"),
            "the socket directory does not let every client allowed by socket_mode reach the socket"
        );
    }
    Ok(())
}

pub(super) fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(path, "the socket path is a symlink"));
    }
    if !meta.file_type().is_socket() {
        return Err(unsafe_path(
            path,
            "a file that is not a socket is in the way",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::Live(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err(path))
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

fn resolve_group(group: &GroupRef) -> Result<u32, SocketError> {
    let name = match group {
        GroupRef::Id(id) => return Ok(*id),
        GroupRef::Name(name) => name,
    };
    let not_found = || SocketError::Unsafe {
        path: PathBuf::from(name),
        why: "daemon.socket_group names no group on this host".into(),
    };
    let cname = std::ffi::CString::new(name.as_str()).map_err(|_| not_found())?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid `libc::group` (pointers null, ids zero).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and `grp` is only read
    // when `result` says the call filled it.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(not_found());
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_modes() {
        assert_eq!(dir_mode_for(0o600), 0o700);
        assert_eq!(dir_mode_for(0o660), 0o750);
        assert_eq!(dir_mode_for(0o666), 0o755);
    }

    #[test]
    fn refuses_unsafe_dirs_and_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(
            prepare_dir(&open, 0o600, None)
                .expect_err("world-writable")
                .to_string()
                .contains("writable by others")
        );

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).expect("symlink");
        assert!(
            prepare_dir(&link, 0o600, None)
                .expect_err("symlink")
                .to_string()
                .contains("symlink")
        );

        let fresh = tmp.path().join("fresh");
        prepare_dir(&fresh, 0o600, None).expect("create");
        let mode = std::fs::metadata(&fresh).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700);

        let plain = fresh.join("not-a-socket");
        std::fs::write(&plain, b"x").expect("write");
        assert!(
            clear_stale(&plain)
                .expect_err("plain file")
                .to_string()
                .contains("not a socket")
        );
        let sym = fresh.join("sym.sock");
        std::os::unix::fs::symlink(&plain, &sym).expect("symlink");
        assert!(
            clear_stale(&sym)
                .expect_err("symlink")
                .to_string()
                .contains("symlink")
        );
    }
}
