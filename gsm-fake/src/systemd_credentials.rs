//! systemd's side of `LoadCredential=ID:/path/to/socket`, as systemd 252 does it
//! (`read_full_file_full` with `READ_FULL_FILE_CONNECT_SOCKET`): bind the abstract address
//! `\0<hex>/unit/UNIT/ID`, connect, shut the sending side, read to EOF, at most one byte over
//! its 1 MiB cap. For tests and the bench of secretd's credential provider, which cannot run
//! systemd on the host.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// systemd's `CREDENTIAL_SIZE_MAX`: a longer reply fails the unit's start.
pub const CREDENTIAL_SIZE_MAX: usize = 1024 * 1024;

/// Loads credential `id` for `unit` from the socket at `socket`; the reply, at most
/// [`CREDENTIAL_SIZE_MAX`] + 1 bytes (more means systemd would fail the start).
pub fn load_credential(socket: &Path, unit: &str, id: &str) -> std::io::Result<Vec<u8>> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd =
        sys(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = vec![0u8];
    name.extend_from_slice(format!("{:x}/unit/{unit}/{id}", fastrand::u64(..)).as_bytes());
    sys(address(&fd, &name, true))?;
    sys(address(&fd, socket.as_os_str().as_bytes(), false))?;
    // SAFETY: shutdown on an fd we own.
    sys(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(CREDENTIAL_SIZE_MAX as u64 + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

/// Binds (`bind`) or connects the fd to the Unix address `path` (abstract when it starts
/// with a NUL).
fn address(fd: &OwnedFd, path: &[u8], bind: bool) -> libc::c_int {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let len = path.len().min(addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(&path[..len]) {
        *dst = *src as libc::c_char;
    }
    let socklen = (std::mem::size_of::<libc::sa_family_t>() + len) as libc::socklen_t;
    let ptr = (&raw const addr).cast::<libc::sockaddr>();
    // SAFETY: addr is valid for socklen bytes; the fd is ours.
    unsafe {
        if bind {
            libc::bind(fd.as_raw_fd(), ptr, socklen)
        } else {
            libc::connect(fd.as_raw_fd(), ptr, socklen)
        }
    }
}

fn sys(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
