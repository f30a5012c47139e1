//! The restart gap: from SIGTERM of a serving daemon to the first read served by the daemon
//! started in its place, as a client that keeps reading sees it. Measured with the listening
//! socket held across the restart (as systemd's socket activation holds it: clients wait in
//! the backlog) and without (the daemon binds its own socket; clients retry until it exists),
//! for three states of the world: GSM up; GSM hanging with a break-glass override; GSM hanging
//! with last-known-good.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secretd_client::{Client, SourceKind};
use secretd_gsm_fake::{FakeGsm, Fault};

use crate::error::BenchError;

/// The GSM secret every scenario reads.
const NAME: &str = "bench_gsm";
/// Its resource in the fake.
const RESOURCE: &str = "projects/bench/secrets/bench-gsm";
/// Its value in GSM.
const GSM_VALUE: &[u8] = b"Omni-Bench-GSM-Value-0123456789abcdef!";
/// The break-glass value.
const EMERGENCY: &[u8] = b"Omni-Bench-Emergency-0123456789abcdef!";
/// How long one restart may take before the sample counts as failed.
const GAP_DEADLINE: Duration = Duration::from_secs(20);
/// How often a reader retries after a failed read.
const RETRY: Duration = Duration::from_millis(1);

/// What the world looks like while the daemon restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// GSM answers.
    GsmUp,
    /// GSM accepts requests and never answers; a break-glass override is active.
    HangingBreakGlass,
    /// GSM accepts requests and never answers; last-known-good is on.
    HangingLastKnownGood,
}

impl Scenario {
    /// Every scenario, in table order.
    pub(crate) const ALL: [Scenario; 3] = [
        Scenario::GsmUp,
        Scenario::HangingBreakGlass,
        Scenario::HangingLastKnownGood,
    ];

    /// The row label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Scenario::GsmUp => "gsm up",
            Scenario::HangingBreakGlass => "gsm hanging, break-glass",
            Scenario::HangingLastKnownGood => "gsm hanging, last-known-good",
        }
    }
}

/// One row of the restart table.
#[derive(Debug)]
pub(crate) struct GapRow {
    /// The scenario.
    pub scenario: Scenario,
    /// Whether the listening socket was held across the restart.
    pub held: bool,
    /// The gaps measured, sorted.
    pub gaps: Vec<Duration>,
}

impl GapRow {
    fn quantile_ms(&self, q: f64) -> f64 {
        let i = ((self.gaps.len() as f64 - 1.0) * q).round() as usize;
        self.gaps
            .get(i)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// The daemon's files for one scenario.
struct Setup {
    /// The fake GSM.
    fake: FakeGsm,
    /// The config file.
    config: PathBuf,
    /// The socket clients use.
    socket: PathBuf,
    /// The listening socket held across restarts, when holding.
    held: Option<UnixListener>,
    /// The daemon binary.
    secretd: PathBuf,
    /// The scenario's directory.
    dir: PathBuf,
}

/// Makes `fd` the child's fd 3, as systemd passes a socket (`LISTEN_FDS=1`).
fn pass_as_fd_3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        cmd.pre_exec(move || {
            if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Setup {
    fn new(
        secretd: &Path,
        root: &Path,
        scenario: Scenario,
        held: bool,
    ) -> Result<Setup, BenchError> {
        let dir = root.join(format!(
            "restart-{}-{}",
            scenario as u8,
            if held { "held" } else { "bound" }
        ));
        std::fs::create_dir_all(dir.join("run")).map_err(BenchError::io("restart dir"))?;
        let fake = FakeGsm::start().map_err(BenchError::io("fake gsm"))?;
        fake.add_version(RESOURCE, GSM_VALUE);
        let socket = dir.join("run/secretd.sock");
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let mut daemon = format!(
            "socket = \"{}\"\ndb = \"{}\"\nadmin_uids = [{uid}]\n",
            socket.display(),
            dir.join("secretd.redb").display()
        );
        let mut extra = String::new();
        if scenario == Scenario::HangingLastKnownGood {
            let key = dir.join("lkg.key");
            crate::fixture::write_key(&key, 0x42)?;
            daemon += &format!(
                "last_known_good = \"{}\"\nlast_known_good_key = \"{}\"\n",
                dir.join("lkg.sealed").display(),
                key.display()
            );
        }
        if scenario == Scenario::HangingBreakGlass {
            let out = Command::new(secretd)
                .arg("keygen")
                .arg("--out-private")
                .arg(dir.join("bg.pem"))
                .arg("--out-public")
                .arg(dir.join("bg.pub.pem"))
                .output()
                .map_err(BenchError::io("keygen"))?;
            if !out.status.success() {
                return Err(BenchError::from(format!(
                    "keygen: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            extra += &format!(
                "[break_glass]\nprivate_key = \"{}\"\n\n",
                dir.join("bg.pem").display()
            );
        }
        let config = format!(
            "[daemon]\n{daemon}\n[gsm]\nendpoint = \"{}\"\nanonymous = true\n\
             attempt_timeout = \"10s\"\nretry_budget = \"12s\"\n\n{extra}\
             [[secret]]\nname = \"{NAME}\"\nsource = \"gsm\"\ngcp_secret = \"{RESOURCE}\"\n\n\
             [[policy]]\nuids = [{uid}]\nallow = [\"*\"]\n",
            fake.endpoint()
        );
        let config_path = dir.join("secretd.toml");
        std::fs::write(&config_path, config).map_err(BenchError::io("config"))?;
        let held = if held {
            Some(UnixListener::bind(&socket).map_err(BenchError::io("bind held socket"))?)
        } else {
            None
        };
        Ok(Setup {
            fake,
            config: config_path,
            socket,
            held,
            secretd: secretd.to_owned(),
            dir,
        })
    }

    /// Starts a daemon: on the held socket (as systemd would pass it), or binding its own.
    fn spawn(&self) -> Result<Child, BenchError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("secretd.log"))
            .map_err(BenchError::io("log"))?;
        let mut cmd = match &self.held {
            Some(listener) => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"", "sh"])
                    .arg(&self.secretd);
                pass_as_fd_3(&mut cmd, listener.as_raw_fd());
                cmd
            }
            None => Command::new(&self.secretd),
        };
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("SECRETD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.spawn()
            .map_err(|e| BenchError::from(format!("cannot start {}: {e}", self.secretd.display())))
    }

    /// Waits until the daemon serves `NAME` from `source`.
    fn wait_for(&self, source: SourceKind) -> Result<(), BenchError> {
        let deadline = Instant::now() + GAP_DEADLINE;
        loop {
            let served = Client::connect(&self.socket)
                .and_then(|c| c.get(NAME))
                .is_ok_and(|s| s.source() == source);
            if served {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::from(format!(
                    "the daemon never served {NAME} from {source}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Puts the scenario's state in place on a first daemon.
    fn prepare(&self, scenario: Scenario) -> Result<(), BenchError> {
        self.wait_for(SourceKind::Gsm)?;
        match scenario {
            Scenario::GsmUp => {}
            Scenario::HangingBreakGlass => {
                let mut child = Command::new(&self.secretd)
                    .args([
                        "break-glass",
                        "apply",
                        NAME,
                        "--value-file",
                        "-",
                        "--ttl",
                        "1h",
                    ])
                    .arg("--public-key")
                    .arg(self.dir.join("bg.pub.pem"))
                    .arg("--socket")
                    .arg(&self.socket)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(BenchError::io("break-glass apply"))?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin
                        .write_all(EMERGENCY)
                        .map_err(BenchError::io("break-glass value"))?;
                }
                let out = child
                    .wait_with_output()
                    .map_err(BenchError::io("break-glass apply"))?;
                if !out.status.success() {
                    return Err(BenchError::from(format!(
                        "break-glass apply: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                self.fake.set_fault(Some(Fault::Hang));
            }
            Scenario::HangingLastKnownGood => {
                let sealed = self.dir.join("lkg.sealed");
                let deadline = Instant::now() + GAP_DEADLINE;
                while !sealed.exists() {
                    if Instant::now() > deadline {
                        return Err("the last-known-good file was never written".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.fake.set_fault(Some(Fault::Hang));
            }
        }
        Ok(())
    }
}

/// Reads `NAME` in a loop on one reconnecting client, sending the time of every success.
fn reader(socket: PathBuf, stop: Arc<AtomicBool>, successes: mpsc::Sender<Instant>) {
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = Client::connect(&socket).ok();
        }
        match client.as_ref().map(|c| c.get(NAME)) {
            Some(Ok(_)) => {
                if successes.send(Instant::now()).is_err() {
                    return;
                }
            }
            Some(Err(_)) | None => {
                client = None;
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Sends SIGTERM to `child` and waits for it to exit.
fn terminate(child: &mut Child) -> Result<(), BenchError> {
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().map_err(BenchError::io("wait"))?;
    Ok(())
}

/// Measures `samples` restarts in one scenario.
pub(crate) fn measure(
    secretd: &Path,
    root: &Path,
    scenario: Scenario,
    held: bool,
    samples: usize,
) -> Result<GapRow, BenchError> {
    let setup = Setup::new(secretd, root, scenario, held)?;
    let mut child = setup.spawn()?;
    let result = (|| {
        setup.prepare(scenario)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (socket, stop) = (setup.socket.clone(), stop.clone());
            std::thread::spawn(move || reader(socket, stop, tx))
        };
        let mut gaps = Vec::with_capacity(samples);
        let mut outcome = Ok(());
        for _ in 0..samples {
            // Wait for the reader to be served, so each restart begins from a serving daemon.
            if rx.recv_timeout(GAP_DEADLINE).is_err() {
                outcome = Err(BenchError::from(format!(
                    "{}: the reader was never served",
                    scenario.label()
                )));
                break;
            }
            let sigterm = Instant::now();
            terminate(&mut child)?;
            let exited = Instant::now();
            child = setup.spawn()?;
            let served = loop {
                match rx.recv_timeout(GAP_DEADLINE) {
                    Ok(at) if at > exited => break Some(at),
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            match served {
                Some(at) => gaps.push(at - sigterm),
                None => {
                    outcome = Err(BenchError::from(format!(
                        "{}: no read was served within {}s of a restart",
                        scenario.label(),
                        GAP_DEADLINE.as_secs()
                    )));
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        let _ = thread.join();
        outcome?;
        gaps.sort();
        Ok(GapRow {
            scenario,
            held,
            gaps,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Prints the restart table and the target.
pub(crate) fn print_table(rows: &[GapRow]) {
    println!("restart gap: SIGTERM to the first read served by the restarted daemon (ms)\n");
    println!("| scenario | listening socket | restarts | p50 | p90 | max |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.scenario.label(),
            if r.held {
                "held (socket activation)"
            } else {
                "bound by the daemon"
            },
            r.gaps.len(),
            r.quantile_ms(0.5),
            r.quantile_ms(0.9),
            r.quantile_ms(1.0),
        );
    }
    println!();
    for r in rows.iter().filter(|r| r.held) {
        let p50 = r.quantile_ms(0.5);
        println!(
            "- restart gap p50, socket held, {} = {p50:.1} ms (< 100: {})",
            r.scenario.label(),
            if p50 < 100.0 { "ok" } else { "MISSED" }
        );
    }
    println!();
}
