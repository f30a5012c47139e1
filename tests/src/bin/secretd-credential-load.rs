//! Loads a credential from secretd's credentials socket as systemd 252 does for
//! `LoadCredential=ID:SOCKET`: binds the abstract address `\0<hex>/unit/UNIT/ID`, connects,
//! shuts its sending side, reads to EOF, and fails when the reply is over systemd's 1 MiB cap.
//!
//! Usage: `secretd-credential-load SOCKET UNIT ID [CGROUP_PROCS]`. With CGROUP_PROCS (a
//! `cgroup.procs` file) it first moves itself there, as systemd runs its helper in the unit's
//! cgroup. Prints `ok LEN TEXT` (the value, which tests choose), `too-large LEN` (systemd would
//! fail the start: 243/CREDENTIALS), `empty`, or `error WHY`.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// systemd's `CREDENTIAL_SIZE_MAX`.
const CREDENTIAL_SIZE_MAX: usize = 1024 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, unit, id, rest @ ..] = args.as_slice() else {
        eprintln!("usage: secretd-credential-load SOCKET UNIT ID [CGROUP_PROCS]");
        return ExitCode::from(2);
    };
    if let Some(procs) = rest.first()
        && let Err(e) = std::fs::write(procs, std::process::id().to_string())
    {
        println!("error cannot join {procs}: {e}");
        return ExitCode::from(1);
    }
    match load(socket, &format!("{:x}/unit/{unit}/{id}", fastrand::u64(..))) {
        Ok(data) if data.len() > CREDENTIAL_SIZE_MAX => println!("too-large {}", data.len()),
        Ok(data) if data.is_empty() => println!("empty"),
        Ok(data) => println!("ok {} {}", data.len(), String::from_utf8_lossy(&data)),
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// One load, as systemd's `read_full_file_full` with `READ_FULL_FILE_CONNECT_SOCKET` does it.
fn load(socket: &str, abstract_name: &str) -> std::io::Result<Vec<u8>> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = vec![0u8];
    name.extend_from_slice(abstract_name.as_bytes());
    sys(bind_or_connect(&fd, &name, true))?;
    sys(bind_or_connect(
        &fd,
        std::ffi::OsStr::new(socket).as_bytes(),
        false,
    ))?;
    // SAFETY: shutdown on an fd we own.
    sys(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    let mut data = Vec::new();
    // systemd reads at most one byte more than it accepts.
    std::fs::File::from(fd)
        .take(CREDENTIAL_SIZE_MAX as u64 + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

fn bind_or_connect(fd: &OwnedFd, path: &[u8], bind: bool) -> libc::c_int {
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

fn sys(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
