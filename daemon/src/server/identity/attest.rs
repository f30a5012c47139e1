//! Workload attestation: which program is on the other end of a connection, as the kernel
//! tells it, read once per connection and never per read.
//!
//! At accept the daemon takes a pidfd of the peer (`SO_PEERPIDFD`, Linux 6.5+) and reads, under
//! `/proc/PID`, the executable (path, and the SHA-256 of its content), the cgroup, and the
//! systemd unit the cgroup names. After reading, it checks that the pidfd's process is still
//! alive: while it is, its pid cannot have been reused, so what was read is that process's.
//! Kernels without `SO_PEERPIDFD` fall back to the pid from `SO_PEERCRED`, with the process's
//! start time read before and after instead (logged once). Anything that cannot be read, or an
//! executable replaced or deleted since the process started, is `None`: a selector that names
//! it then matches nothing.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::util::lock::Recover;

/// An executable file's identity: device, inode, size, mtime.
type ExeKey = (u64, u64, u64, i64);

/// The hashes of executables, by [`ExeKey`]: a bot that reconnects often costs one hash per
/// binary, not one per connection.
static HASHES: Mutex<Option<HashMap<ExeKey, String>>> = Mutex::new(None);
/// The most executables whose hashes are kept.
const MAX_CACHED_HASHES: usize = 256;
/// Whether the fallback without pidfds was reported.
static REPORTED_NO_PIDFD: AtomicBool = AtomicBool::new(false);

/// What the kernel says about the program behind a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attested {
    /// The executable's path; `None` when unreadable, or replaced or deleted since it started.
    pub(crate) exe: Option<PathBuf>,
    /// The hex SHA-256 of the executable's content (computed only when a policy asks).
    pub(crate) exe_sha256: Option<String>,
    /// The cgroup path (the `name=systemd` v1 hierarchy's on hybrid hosts, else v2's).
    pub(crate) cgroup: Option<String>,
    /// The systemd unit the cgroup names (`mm-bot.service`), if any.
    pub(crate) unit: Option<String>,
}

impl Attested {
    /// One line for logs and audit records: `exe=/opt/bots/mm sha256=0123abcd unit=mm.service`.
    pub(crate) fn describe(&self) -> String {
        let mut out = match &self.exe {
            Some(p) => format!("exe={}", p.display()),
            None => "exe=?".to_owned(),
        };
        if let Some(h) = &self.exe_sha256 {
            out.push_str(&format!(" sha256={}", &h[..h.len().min(16)]));
        }
        if let Some(u) = &self.unit {
            out.push_str(&format!(" unit={u}"));
        }
        out
    }
}

/// Attests the peer of the connected socket `fd` (pid from `SO_PEERCRED`: `pid`).
pub(crate) fn attest(fd: BorrowedFd<'_>, pid: Option<i32>, hash: bool) -> Attested {
    match peer_pidfd(fd.as_raw_fd()) {
        Some(pidfd) => {
            let Some(pid) = pid_of(&pidfd) else {
                return Attested::default();
            };
            let attested = read(pid, hash);
            // Still alive: the pid was not reused while we read.
            if alive(&pidfd) {
                attested
            } else {
                Attested::default()
            }
        }
        None => {
            if !REPORTED_NO_PIDFD.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    event = "attest.no_pidfd",
                    "the kernel gives no pidfd of a peer (SO_PEERPIDFD, Linux 6.5+); attesting by pid with a start-time check"
                );
            }
            let Some(pid) = pid else {
                return Attested::default();
            };
            let before = start_time(pid);
            let attested = read(pid, hash);
            if before.is_some() && before == start_time(pid) {
                attested
            } else {
                Attested::default()
            }
        }
    }
}

/// A pidfd of the peer, on kernels that give one.
fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pidfd and len are valid for writes of the sizes given; fd is an open socket.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new fd that we now own.
    (rc == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The pid a pidfd refers to (`Pid:` in its fdinfo; -1 once the process has exited).
fn pid_of(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// Whether the pidfd's process is still alive (signal 0 delivers nothing).
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is open.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// A process's start time (field 22 of /proc/PID/stat), to notice a reused pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Reads the attributes of `pid`.
fn read(pid: i32, hash: bool) -> Attested {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
    let exe_sha256 = if hash && exe.is_some() {
        hash_exe(pid)
    } else {
        None
    };
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| cgroup_path(&text));
    let unit = cgroup.as_deref().and_then(unit_of);
    Attested {
        exe,
        exe_sha256,
        cgroup,
        unit,
    }
}

/// The SHA-256 of the running executable, through /proc/PID/exe (the file the process runs,
/// whatever is at its path now), cached by device, inode, size and mtime.
fn hash_exe(pid: i32) -> Option<String> {
    let mut file = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    let meta = file.metadata().ok()?;
    let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
    if let Some(h) = HASHES.lock().recover().as_ref().and_then(|m| m.get(&key)) {
        return Some(h.clone());
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
    let hex = hex::encode(hasher.finalize());
    let mut cache = HASHES.lock().recover();
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_CACHED_HASHES {
        map.clear();
    }
    map.insert(key, hex.clone());
    Some(hex)
}

/// The cgroup path from /proc/PID/cgroup: the `name=systemd` v1 hierarchy's when it places
/// the process somewhere (hybrid hosts), else the v2 one (`0::PATH`).
fn cgroup_path(text: &str) -> Option<String> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers == "name=systemd" && path != "/" {
            return Some(path.to_owned());
        }
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    v2.filter(|p| p != "/")
}

/// The innermost systemd unit a cgroup path names (`*.service` or `*.scope`).
fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_and_units_on_hybrid_and_unified_hosts() {
        let hybrid = "9:name=systemd:/system.slice/mm-bot.service\n4:memory:/x\n0::/\n";
        assert_eq!(
            cgroup_path(hybrid).as_deref(),
            Some("/system.slice/mm-bot.service")
        );
        let unified = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/bot.scope\n";
        assert_eq!(
            cgroup_path(unified).and_then(|c| unit_of(&c)).as_deref(),
            Some("bot.scope")
        );
        assert_eq!(cgroup_path("9:name=systemd:/\n0::/\n"), None);
        assert_eq!(unit_of("/system.slice"), None);
    }

    #[test]
    fn this_process_attests_itself() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let pid = i32::try_from(std::process::id()).ok();
        // SAFETY: the fd of `a` is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(a.as_raw_fd()) };
        let attested = attest(fd, pid, true);
        let me = std::env::current_exe().expect("exe");
        assert_eq!(attested.exe.as_deref(), Some(me.as_path()));
        assert_eq!(attested.exe_sha256.as_ref().map(String::len), Some(64));
        assert!(attested.describe().starts_with("exe="));
        drop(b);
    }

    #[test]
    fn a_peer_gone_before_attestation_attests_nothing_whatever_now_holds_its_pid() {
        // A client connects and exits before the daemon attests it: its pid may by then belong
        // to another program, so nothing may be read by pid; the pidfd knows it is gone.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])")
            .arg(&path)
            .status()
            .expect("python3");
        assert!(status.success());
        let (conn, _) = listener.accept().expect("accept");
        // SAFETY: the fd of `conn` is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(conn.as_raw_fd()) };
        assert_eq!(attest(fd, None, true), Attested::default());
        // And this kernel gives pidfds at all (CI's does): the pidfd path is what ran above.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(
            peer_pidfd(a.as_raw_fd()).is_some() || std::env::var_os("CI").is_none(),
            "CI's kernel must give pidfds of peers (SO_PEERPIDFD)"
        );
    }
}
