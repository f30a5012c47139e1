//! Workload attestation: which program wrote a connection's requests, as the kernel tells it,
//! read once per writer and never per read.
//!
//! The writer's pid comes with its bytes (`SCM_CREDENTIALS`). The daemon takes a pidfd of it
//! (the one `SO_PEERPIDFD` gave at accept when the writer is the process that connected, else
//! `pidfd_open`) and reads, under `/proc/PID`, the executable, the cgroup and the systemd unit
//! the cgroup names. When a policy that could match the writer's uid and groups selects by
//! program, it also checks that the writer holds the connection close-on-exec (`holder`), and
//! hashes the executable if a selector asks for the hash. Afterwards the pidfd's process must
//! still be alive: while it is, its pid cannot have been reused, so what was read is its own.
//! Kernels without pidfds fall back to the process's start time, read before and after.
//!
//! None of it runs in the accept loop. Hashing and descriptor scans, whose cost a peer
//! controls (an 8 GiB executable, a million descriptors), run on the blocking pool, a few at a
//! time, one hash per file: a slow attestation delays only its own connection. Executables over
//! `attest_max_exe_bytes` are not hashed, and a file that changed while it was hashed is not
//! believed. Anything that cannot be read is `None`, and a selector that names it matches
//! nothing.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::holder::{self, Holding};
use crate::util::lock::Recover;
use crate::util::shares::Shares;

/// The most executables whose hashes are kept.
const MAX_CACHED_HASHES: usize = 256;
/// Attestation work in flight on the blocking pool at once (hashes, descriptor scans): a
/// flood of peers with huge executables holds these, never a runtime worker.
pub(crate) const MAX_CONCURRENT_ATTESTATIONS: usize = 8;
/// Attestation work of one uid at once: a quarter, so a uid's backlog (a connect flood, a
/// slow executable) queues behind itself and leaves the rest to others.
pub(crate) const MAX_ATTESTATIONS_PER_UID: usize = MAX_CONCURRENT_ATTESTATIONS / 4;
/// How long opening a peer's executable or scanning its descriptors may take (an executable on
/// a FUSE mount its owner controls could hang forever); past it the peer matches no program
/// selector.
const SCAN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection waits for its executable's hash (the hash goes on, and is cached,
/// for the next connection of that program).
const HASH_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an executable one read takes while hashing.
const HASH_CHUNK: usize = 64 * 1024;

/// An executable file's identity: device, inode, size, and modification and change times to
/// the nanosecond. `touch -r` can put a patched file's mtime back; nobody can set its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ExeKey {
    /// `st_dev`.
    dev: u64,
    /// `st_ino`.
    ino: u64,
    /// `st_size`.
    size: u64,
    /// `st_mtime`, seconds and nanoseconds.
    mtime: (i64, i64),
    /// `st_ctime`, seconds and nanoseconds.
    ctime: (i64, i64),
}

impl ExeKey {
    fn of(meta: &std::fs::Metadata) -> ExeKey {
        ExeKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// What the kernel says about the program behind some requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attested {
    /// The executable's path; `None` when unreadable, or replaced or deleted since it started.
    pub(crate) exe: Option<PathBuf>,
    /// The hex SHA-256 of the executable's content (computed only when a policy asks).
    pub(crate) exe_sha256: Option<String>,
    /// The cgroup path (the `name=systemd` v1 hierarchy's on hybrid hosts, else v2's); `None`
    /// outside the system manager's tree.
    pub(crate) cgroup: Option<String>,
    /// The systemd unit of the system manager whose cgroup holds the process, if any.
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

/// What the policies that could match a writer (by uid and groups) ask of its program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Some selector (exe, hash, unit, cgroup) is present: the writer must hold the
    /// connection close-on-exec.
    pub(crate) program: bool,
    /// Some selector names the executable's hash.
    pub(crate) hash: bool,
}

/// Why requests cannot be answered for the process that wrote them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unidentified {
    /// The writer holds the connection through a descriptor without close-on-exec.
    #[error(
        "pid {pid} ({exe}) holds this connection through a descriptor without close-on-exec, \
         as one carried across exec would be; receive passed connections with MSG_CMSG_CLOEXEC"
    )]
    Inherited {
        /// The writer.
        pid: i32,
        /// What it runs now.
        exe: String,
    },
    /// The writer no longer holds the connection.
    #[error("pid {pid} ({exe}) wrote on this connection but no longer holds it")]
    NotHeld {
        /// The writer.
        pid: i32,
        /// What it runs now.
        exe: String,
    },
    /// The writer's credentials no longer match what it wrote with, or it is gone.
    #[error("pid {pid} changed credentials or exited before it could be identified")]
    Gone {
        /// The writer.
        pid: i32,
    },
}

/// Attests writers: the hash cache and the bound on blocking work.
#[derive(Debug)]
pub(crate) struct Attestor {
    /// The largest executable hashed (`daemon.attest_max_exe_bytes`).
    max_exe_bytes: u64,
    /// Hashes by file identity; one being computed is shared by everyone waiting for it, so a
    /// file is hashed once however many of its processes connect at the same moment.
    hashes: Mutex<HashMap<ExeKey, Arc<OnceCell<Option<String>>>>>,
    /// Permits for attestation work on the blocking pool, in all and per uid.
    work: Shares,
    /// Whether the fallback without pidfds was logged.
    reported_no_pidfd: AtomicBool,
    /// Whether a peer whose descriptors the daemon cannot read was logged.
    reported_unreadable: AtomicBool,
}

impl Attestor {
    /// An attestor that hashes executables of at most `max_exe_bytes`.
    pub(crate) fn new(max_exe_bytes: u64) -> Attestor {
        Attestor {
            max_exe_bytes,
            hashes: Mutex::new(HashMap::new()),
            work: Shares::new(MAX_CONCURRENT_ATTESTATIONS, MAX_ATTESTATIONS_PER_UID),
            reported_no_pidfd: AtomicBool::new(false),
            reported_unreadable: AtomicBool::new(false),
        }
    }

    /// Attests process `pid` of `uid`, which wrote on the connection whose daemon end has
    /// inode `socket`; `pidfd` is one already held for it (from accept), if any.
    ///
    /// When a policy selects by program, the executable is opened once, first: the
    /// descriptors and the hash then answer for that file, and opening `/proc/PID/exe` again at
    /// the end shows whether the process exec'd another program meanwhile (then it matches no
    /// program selector).
    pub(crate) async fn attest(
        &self,
        (pid, uid): (i32, u32),
        pidfd: Option<OwnedFd>,
        socket: u64,
        needs: Needs,
    ) -> Result<Attested, Unidentified> {
        let pidfd = pidfd.or_else(|| pidfd_open(pid));
        let started = match pidfd {
            Some(_) => None,
            None => {
                self.report_no_pidfd();
                start_time(pid)
            }
        };
        let opened = if needs.program {
            self.bounded(uid, SCAN_TIMEOUT, move || open_exe(pid))
                .await
                .flatten()
        } else {
            None
        };
        let mut attested = read(pid);
        if needs.program && attested.exe.is_some() {
            let exe = attested.describe();
            let holding = match opened {
                Some(_) => {
                    self.bounded(uid, SCAN_TIMEOUT, move || holder::holding(pid, socket))
                        .await
                }
                None => None,
            };
            match holding {
                Some(Holding::CloseOnExec) => {}
                Some(Holding::Inherited) => return Err(Unidentified::Inherited { pid, exe }),
                Some(Holding::NotHeld) => return Err(Unidentified::NotHeld { pid, exe }),
                Some(Holding::Unknown) | None => {
                    self.report_unreadable(pid);
                    attested.exe = None;
                }
            }
        }
        if let Some((file, key)) = opened
            && attested.exe.is_some()
        {
            if needs.hash {
                attested.exe_sha256 = self.hash(uid, file, key).await;
            }
            let now = self
                .bounded(uid, SCAN_TIMEOUT, move || {
                    open_exe(pid).map(|(_, k)| (k.dev, k.ino))
                })
                .await
                .flatten();
            if now != Some((key.dev, key.ino)) {
                attested.exe = None;
                attested.exe_sha256 = None;
            }
        }
        let same = match &pidfd {
            Some(fd) => alive(fd),
            None => started.is_some() && started == start_time(pid),
        };
        Ok(if same { attested } else { Attested::default() })
    }

    /// Runs `work` on the blocking pool under one of the permits, giving up after `limit`
    /// (the thread finishes on its own; `None` then, or if the runtime is going away).
    async fn bounded<T: Send + 'static>(
        &self,
        uid: u32,
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        tokio::time::timeout(limit, self.blocking(uid, work))
            .await
            .ok()
            .flatten()
    }

    /// Runs `work` for `uid` on the blocking pool under one of the permits, after `uid`'s
    /// earlier work (`None` if the runtime is going away).
    async fn blocking<T: Send + 'static>(
        &self,
        uid: u32,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.work.acquire(uid).await?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// The SHA-256 of the opened executable `file` (identity `key`); `None` when too large,
    /// unreadable, changed meanwhile, or not done within [`HASH_TIMEOUT`].
    async fn hash(&self, uid: u32, file: std::fs::File, key: ExeKey) -> Option<String> {
        if key.size > self.max_exe_bytes {
            tracing::debug!(
                bytes = key.size,
                max = self.max_exe_bytes,
                "executable not hashed: larger than daemon.attest_max_exe_bytes"
            );
            return None;
        }
        let cell = {
            let mut hashes = self.hashes.lock().recover();
            if hashes.len() >= MAX_CACHED_HASHES && !hashes.contains_key(&key) {
                // Keep only hashes still being computed (someone waits on them).
                hashes.retain(|_, cell| !cell.initialized());
            }
            hashes.entry(key).or_default().clone()
        };
        let max = self.max_exe_bytes;
        // A timeout drops this wait but never caches a miss: the next connection retries.
        let computed = cell.get_or_init(|| async move {
            self.blocking(uid, move || hash_file(file, key, max))
                .await
                .flatten()
        });
        tokio::time::timeout(HASH_TIMEOUT, computed)
            .await
            .ok()
            .cloned()
            .flatten()
    }

    fn report_no_pidfd(&self) {
        if !self.reported_no_pidfd.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "attest.no_pidfd",
                "the kernel gives no pidfds (pidfd_open, Linux 5.3+); attesting by pid with a start-time check"
            );
        }
    }

    fn report_unreadable(&self, pid: i32) {
        if !self.reported_unreadable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "attest.unreadable",
                pid,
                "cannot read a peer's descriptors or executable (the daemon needs CAP_SYS_PTRACE \
                 for other uids); exe and exe_sha256 selectors match no such peer (logged once)"
            );
        }
    }
}

/// Hashes `file` (at most `max` bytes), believing the result only if the file is still what
/// `key` describes afterwards.
fn hash_file(mut file: std::fs::File, key: ExeKey, max: u64) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut total: u64 = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if total > max {
                    return None;
                }
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let after = ExeKey::of(&file.metadata().ok()?);
    (after == key && total == key.size).then(|| hex::encode(hasher.finalize()))
}

/// Opens the executable `pid` runs (the file itself, whatever is at its path now) and stats it.
fn open_exe(pid: i32) -> Option<(std::fs::File, ExeKey)> {
    let file = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    let key = ExeKey::of(&file.metadata().ok()?);
    Some((file, key))
}

/// A pidfd of `pid` (`pidfd_open`, Linux 5.3+).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel installed this fd for us.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the pidfd's process is still alive (signal 0 delivers nothing). Only `ESRCH` means
/// gone: a daemon without `CAP_KILL` gets `EPERM` for another uid's live process.
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A process's start time (field 22 of /proc/PID/stat), to notice a reused pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Reads the attributes of `pid` that cost a few small reads: the executable's path, the
/// cgroup, the unit.
fn read(pid: i32) -> Attested {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| cgroup_path(&text));
    let unit = cgroup.as_deref().and_then(unit_of);
    Attested {
        exe,
        exe_sha256: None,
        cgroup,
        unit,
    }
}

/// The cgroup path from /proc/PID/cgroup: the `name=systemd` v1 hierarchy's when it places
/// the process somewhere (hybrid hosts), else the v2 one (`0::PATH`). Only paths in the system
/// manager's tree count: inside a `user@UID.service` the user's own manager (or the user, by
/// hand) names the cgroups, so any user could make one named like a unit.
fn cgroup_path(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers == "name=systemd" && path != "/" {
            v1 = Some(path.to_owned());
        }
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    v1.or(v2).filter(|p| p != "/").filter(|p| in_system_tree(p))
}

/// Whether a cgroup path lies outside every user manager's delegated subtree.
fn in_system_tree(path: &str) -> bool {
    !path
        .split('/')
        .any(|c| c.starts_with("user@") && c.ends_with(".service"))
}

/// The system manager's unit whose cgroup holds `cgroup`: the first component below PID 1's
/// slices. A unit with `Delegate=yes` may make cgroups below its own; they are its subtree and
/// name it, never a unit of their own.
fn unit_of(cgroup: &str) -> Option<String> {
    let first = cgroup
        .split('/')
        .filter(|c| !c.is_empty())
        .find(|c| !c.ends_with(".slice"))?;
    (first.ends_with(".service") || first.ends_with(".scope")).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    const ALL: Needs = Needs {
        program: true,
        hash: true,
    };

    fn ino(s: &UnixStream) -> u64 {
        std::fs::File::from(std::os::fd::OwnedFd::from(s.try_clone().expect("dup")))
            .metadata()
            .expect("stat")
            .ino()
    }

    fn me() -> (i32, u32) {
        // SAFETY: geteuid has no preconditions.
        (i32::try_from(std::process::id()).expect("pid"), unsafe {
            libc::geteuid()
        })
    }

    #[test]
    fn cgroups_and_units_on_hybrid_and_unified_hosts() {
        let hybrid = "9:name=systemd:/system.slice/mm-bot.service\n4:memory:/x\n0::/\n";
        assert_eq!(
            cgroup_path(hybrid).as_deref(),
            Some("/system.slice/mm-bot.service")
        );
        let unit = |text: &str| cgroup_path(text).and_then(|c| unit_of(&c));
        assert_eq!(
            unit("0::/system.slice/mm-bot.service\n").as_deref(),
            Some("mm-bot.service")
        );
        assert_eq!(
            unit("0::/trading.slice/mm.slice/mm-bot.service\n").as_deref(),
            Some("mm-bot.service")
        );
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(cgroup_path("9:name=systemd:/\n0::/\n"), None);
        assert_eq!(unit_of("/system.slice"), None);
    }

    #[test]
    fn a_users_own_manager_names_no_unit_and_no_cgroup() {
        // Anyone can make these under their own delegated manager.
        for path in [
            "/user.slice/user-1000.slice/user@1000.service/app.slice/mm-bot.service",
            "/user.slice/user-1000.slice/user@1000.service/mm-bot.service",
            "/system.slice/user@1000.service/x",
        ] {
            assert_eq!(cgroup_path(&format!("0::{path}\n")), None, "{path}");
        }
        // A delegated unit's subtree names the unit, never a unit of its own.
        assert_eq!(
            unit_of("/system.slice/runner.service/payload/mm-bot.service").as_deref(),
            Some("runner.service")
        );
        assert_eq!(unit_of("/mm-bot.service.d/x"), None);
    }

    #[tokio::test]
    async fn this_process_attests_itself() {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let attestor = Attestor::new(u64::MAX);
        let attested = attestor
            .attest(me(), None, ino(&ours), ALL)
            .await
            .expect("holds its end close-on-exec");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(attested.exe.as_deref(), Some(exe.as_path()));
        assert_eq!(attested.exe_sha256.as_ref().map(String::len), Some(64));
        assert!(attested.describe().starts_with("exe="));
        // Over the size limit: no hash, whatever a selector asks.
        let small = Attestor::new(1024);
        let attested = small.attest(me(), None, ino(&ours), ALL).await.expect("ok");
        assert_eq!(attested.exe_sha256, None);
    }

    #[tokio::test]
    async fn a_writer_that_does_not_hold_the_connection_is_refused() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        drop(theirs);
        let attestor = Attestor::new(u64::MAX);
        let refused = attestor.attest(me(), None, ino(&ours), ALL).await;
        assert!(
            matches!(refused, Err(Unidentified::NotHeld { .. }))
                || refused.is_ok_and(|a| a.exe.is_none()),
            "a writer without the connection is never attested as its program"
        );
        // Without program selectors nobody looks at descriptors.
        let (ours, theirs) = UnixStream::pair().expect("pair");
        drop(theirs);
        let plain = attestor
            .attest(me(), None, ino(&ours), Needs::default())
            .await
            .expect("uid-only policies need no descriptors");
        assert!(plain.exe.is_some() && plain.exe_sha256.is_none());
    }

    #[tokio::test]
    async fn a_process_gone_before_attestation_attests_nothing() {
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = i32::try_from(child.id()).expect("pid");
        child.wait().expect("wait");
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let attestor = Attestor::new(u64::MAX);
        let attested = attestor
            .attest((pid, 0), None, ino(&ours), Needs::default())
            .await
            .expect("nothing to refuse");
        assert_eq!(attested, Attested::default());
    }

    #[test]
    fn a_file_patched_with_its_mtime_put_back_is_hashed_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bot");
        std::fs::write(&path, b"original program").expect("write");
        let before = ExeKey::of(&std::fs::metadata(&path).expect("stat"));
        let mtime = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.write_all(b"patched program!").expect("patch");
        f.set_modified(mtime).expect("touch -r");
        drop(f);
        let after = ExeKey::of(&std::fs::metadata(&path).expect("stat"));
        assert_eq!((before.size, before.mtime), (after.size, after.mtime));
        assert_ne!(before, after, "the ctime tells them apart");
        // A file that changes while it is hashed is not believed.
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(hash_file(file, before, u64::MAX), None);
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(hash_file(file, after, u64::MAX).map(|h| h.len()), Some(64));
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(
            hash_file(file, after, 4),
            None,
            "over the limit while reading"
        );
    }
}
