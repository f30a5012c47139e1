//! The daemon under measurement: the real `secretd` binary on a socket in a temp directory,
//! serving one 64-byte file secret.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// The secret every case reads.
pub(crate) const NAME: &str = "bench_key";
/// Its value: 64 bytes, the size of a typical exchange API secret.
pub(crate) const VALUE: &[u8; 64] =
    b"Omni-Bench-Key-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL!";

/// What a daemon of the bench may have beyond the plain one: TOML lines for its policy
/// (`selectors`) and its `[daemon]` table, and environment variables.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Custom<'a> {
    /// Lines added to the policy.
    pub selectors: &'a str,
    /// Lines added to `[daemon]`.
    pub daemon_lines: &'a str,
    /// Environment variables for the daemon.
    pub env: &'a [(&'a str, &'a str)],
}

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The process.
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its log (warnings and worse).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `secretd` with a config in `dir` and waits until it answers.
    pub(crate) fn start(secretd: &Path, dir: &Path) -> Result<Daemon, BenchError> {
        Daemon::start_with(secretd, dir, "")
    }

    /// [`Daemon::start`], with `selectors` (TOML lines) added to the policy: the bench's own
    /// program, attested at every connect.
    pub(crate) fn start_with(
        secretd: &Path,
        dir: &Path,
        selectors: &str,
    ) -> Result<Daemon, BenchError> {
        Daemon::start_custom(
            secretd,
            dir,
            &Custom {
                selectors,
                ..Custom::default()
            },
        )
    }

    /// [`Daemon::start`] with `custom`'s additions.
    pub(crate) fn start_custom(
        secretd: &Path,
        dir: &Path,
        custom: &Custom<'_>,
    ) -> Result<Daemon, BenchError> {
        let Custom {
            selectors,
            daemon_lines,
            env,
        } = *custom;
        std::fs::create_dir_all(dir).map_err(BenchError::io("daemon dir"))?;
        let value = dir.join("bench_key.value");
        std::fs::write(&value, VALUE).map_err(BenchError::io("write value"))?;
        std::fs::set_permissions(&value, std::fs::Permissions::from_mode(0o600))
            .map_err(BenchError::io("chmod value"))?;
        let socket = dir.join("run/secretd.sock");
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let config = format!(
            "[daemon]\nsocket = \"{}\"\ndb = \"{}\"\nadmin_uids = [{uid}]\n{daemon_lines}\n\
             [[secret]]\nname = \"{NAME}\"\nsource = \"file\"\npath = \"{}\"\n\n\
             [[policy]]\nuids = [{uid}]\nallow = [\"*\"]\n{selectors}",
            socket.display(),
            dir.join("secretd.redb").display(),
            value.display()
        );
        let config_path = dir.join("secretd.toml");
        std::fs::write(&config_path, config).map_err(BenchError::io("write config"))?;
        let log = dir.join("secretd.log");
        let child = spawn_with(secretd, &config_path, &log, "warn", env)?;
        let daemon = Daemon { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while secretd_client::Client::connect(&daemon.socket)
            .and_then(|c| c.get(NAME))
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not start serving within 20 s; its log ends: {}",
                    daemon.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// The last lines of the daemon's log, for a failure's report.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(3).collect();
        tail.reverse();
        tail.join(" / ")
    }

    /// The daemon's resident set size in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(&self.child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `secretd serve --config config`, its log appended to `log` (warnings and worse).
pub(crate) fn spawn(secretd: &Path, config: &Path, log: &Path) -> Result<Child, BenchError> {
    spawn_logging(secretd, config, log, "warn")
}

/// [`spawn`], logging at `level`.
pub(crate) fn spawn_logging(
    secretd: &Path,
    config: &Path,
    log: &Path,
    level: &str,
) -> Result<Child, BenchError> {
    spawn_with(secretd, config, log, level, &[])
}

/// [`spawn`], logging at `level`, with `env` set.
fn spawn_with(
    secretd: &Path,
    config: &Path,
    log: &Path,
    level: &str,
    env: &[(&str, &str)],
) -> Result<Child, BenchError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(BenchError::io("log file"))?;
    Command::new(secretd)
        .args(["serve", "--config"])
        .arg(config)
        .env("SECRETD_LOG", level)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::from(format!("cannot start {}: {e}", secretd.display())))
}

/// A process's resident set size in KiB (`VmRSS`).
pub(crate) fn rss_kib(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes a 32-byte key file of `byte`s, mode 0600 (a last-known-good key), unless it exists.
pub(crate) fn write_key(path: &Path, byte: u8) -> Result<(), BenchError> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(path, [byte; 32])
        .map_err(|e| BenchError::from(format!("key {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BenchError::from(format!("chmod key {}: {e}", path.display())))
}
