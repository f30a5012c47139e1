//! Process-wide protections applied before any secret is loaded.

use std::io;

/// Disables core dumps and makes the process non-dumpable, so neither a crash nor another
/// process of the same uid (ptrace, /proc/PID/mem) can copy secrets out of memory.
/// Refusal is fatal: a daemon that cannot protect its memory must not load secrets.
pub(crate) fn harden() -> io::Result<()> {
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

/// Descriptors kept free beside client and HTTP connections: the store, the GSM client's
/// connections, the log, the socket watchdog, the last-known-good writer, and slack.
pub(crate) const FD_RESERVE: u64 = 256;

/// Raises the soft limit on open files to the hard limit (a default soft limit of 1024 would
/// let a flood of idle connections starve the store and GSM of descriptors). Returns the
/// limit now in force.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a valid rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
