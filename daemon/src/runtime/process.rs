//! Process-wide protections applied before any secret is loaded.

use std::io;

/// Disables core dumps and makes the process non-dumpable, so neither a crash nor another
/// process of the same uid (ptrace, /proc/PID/mem) can copy secrets out of memory.
/// Refusal is fatal: a daemon that cannot protect its memory must not load secrets.
pub fn harden() -> io::Result<()> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
