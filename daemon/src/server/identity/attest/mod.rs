//! Workload attestation: which program wrote a connection's requests, as the kernel tells it,
//! read once per writer and never per read.
//!
//! The writer's pid comes with its bytes (`SCM_CREDENTIALS`). The daemon takes a pidfd of it
//! (the one `SO_PEERPIDFD` gave at accept when the writer is the process that connected, else
//! `pidfd_open`) and reads, under `/proc/PID`, the executable, the cgroup and the systemd unit
//! the cgroup names (`process`). When a policy that could match the writer's uid and groups selects by
//! program, it also checks that the writer holds the connection close-on-exec (`holder`), and
//! hashes the executable (`exe`) if a selector asks for the hash. Afterwards the pidfd's process must
//! still be alive: while it is, its pid cannot have been reused, so what was read is its own.
//! Kernels without pidfds fall back to the process's start time, read before and after.
//!
//! None of it runs in the accept loop. Hashing and descriptor scans, whose cost a peer
//! controls (an 8 GiB executable, a million descriptors), run on the blocking pool, a few at a
//! time, one hash per file: a slow attestation delays only its own connection. Executables over
//! `attest_max_exe_bytes` are not hashed, and a file that changed while it was hashed is not
//! believed. Anything that cannot be read is `None`, and a selector that names it matches
//! nothing.

mod exe;
mod holder;
mod process;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use exe::{ExeKey, hash_file, open_exe};
use holder::Holding;
use process::{pidfd_open, read, start_time, still_same};

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
// Each uid gets some, and no three uids together can hold all of them (`util::shares`).
const _: () = assert!(
    MAX_ATTESTATIONS_PER_UID >= 1 && 3 * MAX_ATTESTATIONS_PER_UID < MAX_CONCURRENT_ATTESTATIONS
);
/// How long opening a peer's executable or scanning its descriptors may take (an executable on
/// a FUSE mount its owner controls could hang forever); past it the peer matches no program
/// selector.
const SCAN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection waits for its executable's hash (the hash goes on, and is cached,
/// for the next connection of that program).
const HASH_TIMEOUT: Duration = Duration::from_secs(10);
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
        Ok(if still_same(pidfd.as_ref(), pid, started) {
            attested
        } else {
            Attested::default()
        })
    }

    /// Runs `work` for `uid` on the blocking pool under one of the permits, giving up `limit`
    /// after it started (the thread finishes on its own, holding its permit; `None` then, or
    /// if the runtime is going away).
    async fn bounded<T: Send + 'static>(
        &self,
        uid: u32,
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // The limit is the work's, not the queue's: a burst of one uid's connections waits
        // its turn (behind itself only) instead of running out of time in the line. The
        // permit goes with the work, so work still running after the limit (a hung file
        // system) keeps holding it: the permits bound the threads, not just the waits.
        let permit = self.work.acquire(uid).await?;
        let run = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        tokio::time::timeout(limit, run).await.ok()?.ok()
    }

    /// Runs `work` for `uid` on the blocking pool under one of the permits, after `uid`'s
    /// earlier work (`None` if the runtime is going away).
    async fn blocking<T: Send + 'static>(
        &self,
        uid: u32,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = self.work.acquire(uid).await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
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

/// The system manager's unit whose cgroup holds process `pid`, read under a pidfd (or the
/// start time) so a pid reused meanwhile is noticed: `None` if the process is gone, changed,
/// or sits in no system unit. For callers the kernel vouches for otherwise (the credential
/// provider's root peers), so no descriptor or executable checks.
pub(crate) fn unit_of_process(pid: i32) -> Option<String> {
    let pidfd = pidfd_open(pid);
    let started = if pidfd.is_none() {
        Some(start_time(pid)?)
    } else {
        None
    };
    let unit = read(pid).unit;
    still_same(pidfd.as_ref(), pid, started)
        .then_some(unit)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
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

    /// `count` small files of distinct content under `dir`, opened, with their keys.
    fn files(dir: &std::path::Path, count: usize) -> Vec<(std::fs::File, ExeKey)> {
        (0..count)
            .map(|i| {
                let path = dir.join(format!("exe-{i}"));
                std::fs::write(&path, format!("program {i}")).expect("write");
                let file = std::fs::File::open(&path).expect("open");
                let key = ExeKey::of(&file.metadata().expect("stat"));
                (file, key)
            })
            .collect()
    }

    #[tokio::test]
    async fn an_executable_of_exactly_the_limit_is_hashed() {
        let dir = tempfile::tempdir().expect("dir");
        let (file, key) = files(dir.path(), 1).remove(0);
        let size = key.size;
        let at_limit = Attestor::new(size);
        let hashed = at_limit.hash(0, file.try_clone().expect("dup"), key).await;
        assert_eq!(hashed.as_ref().map(String::len), Some(64));
        let below = Attestor::new(size - 1);
        assert_eq!(below.hash(0, file, key).await, None);
    }

    #[tokio::test]
    async fn hashes_stay_cached_up_to_the_bound_and_no_further() {
        let dir = tempfile::tempdir().expect("dir");
        let attestor = Attestor::new(u64::MAX);
        let cached = || attestor.hashes.lock().recover().len();
        for (file, key) in files(dir.path(), MAX_CACHED_HASHES + 20) {
            let before = cached();
            assert!(attestor.hash(0, file, key).await.is_some());
            if before < MAX_CACHED_HASHES {
                assert_eq!(
                    cached(),
                    before + 1,
                    "a finished hash is kept while there is room"
                );
            }
            assert!(cached() <= MAX_CACHED_HASHES, "{} cached", cached());
        }
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
}
