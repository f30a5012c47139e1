//! The flood part's daemon: one that serves the victim, the attackers and root, on a socket
//! group 65534 reaches, with the copy of the bench other uids run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretd_client::Client;

use super::helper::{FLOOD_ARG, Mode};
use super::{ATTACKERS, READ_WINDOW, VICTIM};
use crate::error::BenchError;
use crate::fixture::{self, NAME, VALUE};

/// The flood part's daemon and the copies of the bench other uids can run.
pub(super) struct Setup {
    /// The daemon.
    pub(super) child: Child,
    /// Its socket (reachable by group 65534).
    pub(super) socket: PathBuf,
    /// Its database.
    pub(super) db: PathBuf,
    /// Its log (warnings and worse, as the journal would get by default at info: see below).
    pub(super) log: PathBuf,
    /// This executable, copied where other uids can run it.
    pub(super) exe: PathBuf,
    /// The metrics port.
    pub(super) port: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn setup(secretd: &Path, dir: &Path) -> Result<Setup, BenchError> {
    let dir = dir.join("flood");
    std::fs::create_dir_all(&dir).map_err(BenchError::io("flood dir"))?;
    for d in [dir.as_path(), dir.parent().unwrap_or(&dir)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(BenchError::io("chmod flood dir"))?;
    }
    let exe = dir.join("secretd-bench");
    std::fs::copy(
        std::env::current_exe().map_err(BenchError::io("current exe"))?,
        &exe,
    )
    .map_err(BenchError::io("copy the bench for other uids"))?;
    let value = dir.join("value");
    std::fs::write(&value, VALUE).map_err(BenchError::io("write value"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BenchError::io("free port"))?
        .port();
    let socket = dir.join("run/secretd.sock");
    let db = dir.join("secretd.redb");
    let uids: Vec<String> = [0, VICTIM]
        .into_iter()
        .chain(ATTACKERS)
        .map(|u| u.to_string())
        .collect();
    // An older daemon (SECRETD_BENCH_DAEMON, for a before/after table) may not know
    // `audit_read_window`; it aggregates reads per connection, so it needs no window.
    let mut windows = [Some(READ_WINDOW), None].into_iter();
    loop {
        let window = windows.next().ok_or("the flood daemon did not start")?;
        let config = format!(
            "[daemon]\nsocket = \"{}\"\ndb = \"{}\"\nadmin_uids = [0]\nsocket_mode = \"0660\"\n\
             socket_group = \"65534\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\
             http_max_connections = 8\n{}\n\
             [[secret]]\nname = \"{NAME}\"\nsource = \"file\"\npath = \"{}\"\n\n\
             [[policy]]\nuids = [{}]\nallow = [\"*\"]\n",
            socket.display(),
            db.display(),
            window.map_or(String::new(), |w| format!(
                "audit_read_window = \"{}s\"\n",
                w.as_secs()
            )),
            value.display(),
            uids.join(", ")
        );
        let config_path = dir.join("secretd.toml");
        std::fs::write(&config_path, config).map_err(BenchError::io("write config"))?;
        let log = dir.join("secretd.log");
        let _ = std::fs::remove_file(&log);
        // At info, as a journal would get it: the rows count what a flood adds there.
        let child = fixture::spawn_logging(secretd, &config_path, &log, "info")?;
        let mut setup = Setup {
            child,
            socket: socket.clone(),
            db: db.clone(),
            log,
            exe: exe.clone(),
            port,
        };
        match setup.serving() {
            Ok(()) => return Ok(setup),
            Err(_) if window.is_some() && setup.log_text().contains("audit_read_window") => {}
            Err(e) => return Err(e),
        }
    }
}

impl Setup {
    /// Waits until the daemon serves, up to 20 s.
    pub(super) fn serving(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&self.socket)
            .and_then(|c| c.get(NAME))
            .is_err()
        {
            let exited = self.child.try_wait().ok().flatten().is_some();
            if Instant::now() > deadline || exited {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "the flood daemon did not start serving within 20 s; its log ends: {}",
                    tail.join(" / ")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The daemon's log so far.
    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sequence number of the newest audit record.
    pub(super) fn audit_head(&self) -> Result<u64, BenchError> {
        let tail = Client::connect(&self.socket)
            .and_then(|c| c.audit_tail(1, None))
            .map_err(BenchError::client("audit tail"))?;
        Ok(tail.last().map_or(0, |r| r.seq))
    }

    /// Starts a helper as `uid` doing `mode` with `threads` for `run`.
    pub(super) fn spawn(
        &self,
        uid: u32,
        mode: Mode,
        threads: usize,
        run: Duration,
    ) -> Result<Child, BenchError> {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .args(["--regid=65534", "--clear-groups"])
            .arg(&self.exe)
            .arg(FLOOD_ARG)
            .arg(mode.word())
            .arg(&self.socket)
            .arg(threads.to_string())
            .arg(run.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::io("setpriv"))
    }

    /// The reads of `get` the daemon answered so far.
    pub(super) fn answered(&self) -> Result<f64, BenchError> {
        let text = Client::connect(&self.socket)
            .and_then(|c| c.metrics())
            .map_err(BenchError::client("metrics"))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("omni_secretd_requests_total{op=\"get\",result=\"ok\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Lines in the daemon's log.
    pub(super) fn log_lines(&self) -> usize {
        self.log_text().lines().count()
    }
}
