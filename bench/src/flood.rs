//! Floods: what a good client of another uid sees while one or two local users flood the
//! daemon, quiet and flooded in the same run. Every party is a process of its own, run as its
//! own uid through `setpriv` (so the bench needs root): the victim is uid 65534, the attackers
//! 65530 and 65531, the operator root.
//!
//! Rows: two uids holding 600 connections each; two uids connecting and closing in a loop; two
//! uids hammering busy connections (the victim's share of the reads the daemon answered); a
//! reconnect-per-read bot (audit bytes and log lines per 20 s); a slow-client flood of the
//! metrics port (scrapes answered).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretd_client::Client;

use crate::error::BenchError;
use crate::fixture::{self, NAME, VALUE};

/// The helper-process argument: `__flood MODE SOCKET THREADS MILLIS`.
pub(crate) const FLOOD_ARG: &str = "__flood";
/// The victim's uid.
const VICTIM: u32 = 65534;
/// The attackers' uids.
const ATTACKERS: [u32; 2] = [65530, 65531];
/// The flood daemon's `audit_read_window`: the reconnect-per-read row waits one out, so the
/// counts the read ledger holds are on disk when the database is measured.
const READ_WINDOW: Duration = Duration::from_secs(3);
/// How many scrapes the metrics row tries, each way.
const SCRAPES: usize = 20;

/// What a helper process does for its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reads on one connection per thread.
    Get,
    /// Reads on a new connection each time.
    ConnectGet,
    /// Connects and closes at once.
    Churn,
    /// Opens as many connections as it can (THREADS of them) and holds them.
    Hold,
}

impl Mode {
    fn parse(word: &str) -> Option<Mode> {
        Some(match word {
            "get" => Mode::Get,
            "connect-get" => Mode::ConnectGet,
            "churn" => Mode::Churn,
            "hold" => Mode::Hold,
            _ => return None,
        })
    }

    fn word(self) -> &'static str {
        match self {
            Mode::Get => "get",
            Mode::ConnectGet => "connect-get",
            Mode::Churn => "churn",
            Mode::Hold => "hold",
        }
    }
}

/// Helper mode: runs `MODE` on `SOCKET` with `THREADS` threads (or connections, for `hold`)
/// for `MILLIS`, then prints `CALLS ERRORS P50_NS P99_NS SECONDS`.
pub(crate) fn helper(args: &[String]) -> Result<(), BenchError> {
    let [mode, socket, threads, millis] = args else {
        return Err(format!("usage: {FLOOD_ARG} MODE SOCKET THREADS MILLIS").into());
    };
    let mode = Mode::parse(mode).ok_or("unknown flood mode")?;
    let threads: usize = threads.parse().map_err(|_| "THREADS must be a number")?;
    let run = Duration::from_millis(millis.parse().map_err(|_| "MILLIS must be a number")?);
    let socket = Path::new(socket);
    if mode == Mode::Hold {
        let held: Vec<Client> = (0..threads)
            .filter_map(|_| Client::connect(socket).ok())
            .collect();
        std::thread::sleep(run);
        println!(
            "{} {} 0 0 {}",
            held.len(),
            threads - held.len(),
            run.as_secs_f64()
        );
        return Ok(());
    }
    let started = Instant::now();
    let end = started + run;
    let results: Vec<(Vec<u64>, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(move || work(mode, socket, end)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let took = started.elapsed().as_secs_f64();
    let errors: u64 = results.iter().map(|(_, e)| e).sum();
    let mut samples: Vec<u64> = results.into_iter().flat_map(|(s, _)| s).collect();
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("{} {errors} {} {} {took}", samples.len(), at(0.5), at(0.99));
    Ok(())
}

/// One thread's loop until `end`: latencies of the calls that succeeded, and the failures.
fn work(mode: Mode, socket: &Path, end: Instant) -> (Vec<u64>, u64) {
    let (mut samples, mut errors) = (Vec::new(), 0u64);
    let mut client = None;
    while Instant::now() < end {
        let t = Instant::now();
        let ok = match mode {
            Mode::Get => {
                if client.is_none() {
                    client = Client::connect(socket).ok();
                }
                match client.as_ref().map(|c| c.get(NAME)) {
                    Some(Ok(_)) => true,
                    _ => {
                        client = None;
                        false
                    }
                }
            }
            Mode::ConnectGet => Client::connect(socket).and_then(|c| c.get(NAME)).is_ok(),
            Mode::Churn => std::os::unix::net::UnixStream::connect(socket).is_ok(),
            Mode::Hold => unreachable!("hold does not loop"),
        };
        if ok {
            samples.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        } else {
            errors += 1;
        }
    }
    (samples, errors)
}

/// What one helper run measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    /// Calls that succeeded.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Calls per second.
    pub per_sec: f64,
}

/// One flood row: the victim quiet and flooded.
#[derive(Debug)]
pub(crate) struct FloodRow {
    /// What the attackers did.
    pub flood: &'static str,
    /// What the victim did.
    pub victim: String,
    /// The victim alone.
    pub quiet: Seen,
    /// The victim under the flood.
    pub flooded: Seen,
    /// The victim's share of the reads the daemon answered under the flood, when measured.
    pub share: Option<f64>,
    /// The operator's `status` calls answered under the flood, of those tried.
    pub status: (usize, usize),
    /// Lines the flooded run added to the daemon's log (at info), per 20 s.
    pub log_lines_per_20s: f64,
}

/// The flood part's daemon and the copies of the bench other uids can run.
struct Setup {
    /// The daemon.
    child: Child,
    /// Its socket (reachable by group 65534).
    socket: PathBuf,
    /// Its database.
    db: PathBuf,
    /// Its log (warnings and worse, as the journal would get by default at info: see below).
    log: PathBuf,
    /// This executable, copied where other uids can run it.
    exe: PathBuf,
    /// The metrics port.
    port: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup(secretd: &Path, dir: &Path) -> Result<Setup, BenchError> {
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
        let setup = Setup {
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
    fn serving(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&self.socket)
            .and_then(|c| c.get(NAME))
            .is_err()
        {
            if Instant::now() > deadline || self.exited() {
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

    /// Whether the daemon has exited.
    fn exited(&self) -> bool {
        // SAFETY: waitpid on our own child with WNOHANG only peeks; WNOWAIT leaves it waitable.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set when waitid reports a child.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// The daemon's log so far.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sequence number of the newest audit record.
    fn audit_head(&self) -> Result<u64, BenchError> {
        let tail = Client::connect(&self.socket)
            .and_then(|c| c.audit_tail(1, None))
            .map_err(BenchError::client("audit tail"))?;
        Ok(tail.last().map_or(0, |r| r.seq))
    }

    /// Starts a helper as `uid` doing `mode` with `threads` for `run`.
    fn spawn(
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
    fn answered(&self) -> Result<f64, BenchError> {
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
    fn log_lines(&self) -> usize {
        self.log_text().lines().count()
    }
}

/// What a helper printed.
fn seen(child: Child) -> Result<Seen, BenchError> {
    let out = child
        .wait_with_output()
        .map_err(BenchError::io("flood helper"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [calls, errors, p50, p99, seconds] = f[..] else {
        return Err(format!("a flood helper printed {text:?} ({})", out.status).into());
    };
    Ok(Seen {
        calls: calls as u64,
        errors: errors as u64,
        p50_us: p50 / 1000.0,
        p99_us: p99 / 1000.0,
        per_sec: calls / seconds.max(1e-9),
    })
}

/// The victim doing `victim` with `threads` for `run`, alone and then while both attackers do
/// `attack` with `attack_threads`; the operator asks for status meanwhile.
fn row(
    s: &Setup,
    flood: &'static str,
    (victim, threads): (Mode, usize),
    (attack, attack_threads): (Mode, usize),
    run: Duration,
) -> Result<FloodRow, BenchError> {
    let quiet = seen(s.spawn(VICTIM, victim, threads, run)?)?;
    let (log_before, started) = (s.log_lines(), Instant::now());
    let attackers = ATTACKERS
        .iter()
        .map(|uid| s.spawn(*uid, attack, attack_threads, run + Duration::from_secs(2)))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(Duration::from_millis(700));
    let before = s.answered()?;
    let victim_run = s.spawn(VICTIM, victim, threads, run)?;
    let mut status = (0, 0);
    let until = Instant::now() + run;
    while Instant::now() < until {
        status.1 += 1;
        if Client::connect(&s.socket).and_then(|c| c.status()).is_ok() {
            status.0 += 1;
        }
        std::thread::sleep(run / 8);
    }
    let flooded = seen(victim_run)?;
    let after = s.answered()?;
    for attacker in attackers {
        let _ = attacker.wait_with_output();
    }
    // The refusal summaries come every 10 s: wait for the one that covers this flood.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let log_lines = s.log_lines().saturating_sub(log_before) as f64;
    let log_lines_per_20s = log_lines * 20.0 / started.elapsed().as_secs_f64();
    let share = (victim == Mode::Get && attack == Mode::Get && after > before)
        .then(|| flooded.calls as f64 / (after - before));
    Ok(FloodRow {
        flood,
        victim: format!("{} x{threads}", victim.word()),
        quiet,
        flooded,
        share,
        status,
        log_lines_per_20s,
    })
}

/// The reconnect-per-read bot: database bytes and log lines it adds in `run`, scaled to 20 s.
#[derive(Debug)]
pub(crate) struct Churned {
    /// Reads it made.
    pub reads: u64,
    /// Seconds it ran.
    pub seconds: f64,
    /// Database growth, bytes per 20 s.
    pub db_bytes_per_20s: f64,
    /// Audit records written, per 20 s.
    pub records_per_20s: f64,
    /// Log lines per 20 s.
    pub log_lines_per_20s: f64,
}

/// Scrapes answered, quiet and under a slow-client flood of the metrics port.
#[derive(Debug)]
pub(crate) struct Scrapes {
    /// Quiet.
    pub quiet: usize,
    /// Flooded.
    pub flooded: usize,
}

/// Everything the flood part measured.
#[derive(Debug)]
pub(crate) struct Floods {
    /// The victim rows.
    pub rows: Vec<FloodRow>,
    /// The reconnect-per-read bot.
    pub churned: Churned,
    /// The metrics port.
    pub scrapes: Scrapes,
}

/// Runs every flood for `run` each.
pub(crate) fn measure(secretd: &Path, dir: &Path, run: Duration) -> Result<Floods, BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::CannotRun);
    }
    let s = setup(secretd, dir)?;
    let rows = vec![
        row(
            &s,
            "2 uids x 600 held connections",
            (Mode::Get, 4),
            (Mode::Hold, 600),
            run,
        )?,
        row(
            &s,
            "2 uids connect/close, 4 threads each",
            (Mode::ConnectGet, 1),
            (Mode::Churn, 4),
            run,
        )?,
        row(
            &s,
            "2 uids hammering, 16 threads each",
            (Mode::Get, 16),
            (Mode::Get, 16),
            run,
        )?,
    ];
    let churned = churn(&s, run)?;
    let scrapes = scrapes(&s)?;
    Ok(Floods {
        rows,
        churned,
        scrapes,
    })
}

fn churn(s: &Setup, run: Duration) -> Result<Churned, BenchError> {
    let size = || std::fs::metadata(&s.db).map_or(0, |m| m.len());
    let (db_before, log_before, head_before) = (size(), s.log_lines(), s.audit_head()?);
    let bot = seen(s.spawn(VICTIM, Mode::ConnectGet, 1, run)?)?;
    // Every count the read ledger holds is written within two windows.
    std::thread::sleep(READ_WINDOW * 2 + Duration::from_millis(500));
    let seconds = run.as_secs_f64();
    let per_20s = |x: f64| x * 20.0 / seconds;
    Ok(Churned {
        reads: bot.calls,
        seconds,
        db_bytes_per_20s: per_20s(size().saturating_sub(db_before) as f64),
        records_per_20s: per_20s(s.audit_head()?.saturating_sub(head_before) as f64),
        log_lines_per_20s: per_20s(s.log_lines().saturating_sub(log_before) as f64),
    })
}

fn scrapes(s: &Setup) -> Result<Scrapes, BenchError> {
    let scrape = |port: u16| -> bool {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        if c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut c, &mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    };
    let tries = |port| {
        (0..SCRAPES)
            .filter(|_| {
                std::thread::sleep(Duration::from_millis(50));
                scrape(port)
            })
            .count()
    };
    let quiet = tries(s.port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = s.port;
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    held.push(c);
                }
                if held.len() > 400 {
                    held.drain(..200);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let flooded = tries(port);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    Ok(Scrapes { quiet, flooded })
}

/// Prints the flood tables.
pub(crate) fn print(f: &Floods) {
    println!(
        "Floods: a good client of another uid, quiet and flooded (each a process of its own)\n"
    );
    println!(
        "| flood | victim | p50 quiet | p50 flooded | p99 quiet | p99 flooded | reads/s quiet | reads/s flooded | victim errors | victim share | status answered | log lines / 20 s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &f.rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} | {:.0} | {} | {} | {}/{} | {:.0} |",
            r.flood,
            r.victim,
            r.quiet.p50_us,
            r.flooded.p50_us,
            r.quiet.p99_us,
            r.flooded.p99_us,
            r.quiet.per_sec,
            r.flooded.per_sec,
            r.flooded.errors,
            r.share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            r.status.0,
            r.status.1,
            r.log_lines_per_20s,
        );
    }
    let c = &f.churned;
    println!(
        "\nreconnect-per-read bot: {} reads in {:.0} s; per 20 s: {:.0} audit records, database +{:.2} MB, {:.0} log lines",
        c.reads,
        c.seconds,
        c.records_per_20s,
        c.db_bytes_per_20s / 1e6,
        c.log_lines_per_20s
    );
    println!(
        "metrics port: {}/{SCRAPES} scrapes answered quiet, {}/{SCRAPES} under a slow-client flood\n",
        f.scrapes.quiet, f.scrapes.flooded
    );
    let mark = |met: bool| if met { "met" } else { "MISSED" };
    let row = |flood: &str| f.rows.iter().find(|r| r.flood.starts_with(flood));
    let share = row("2 uids hammering").and_then(|r| r.share);
    let connect = row("2 uids connect/close").map(|r| r.flooded.p50_us);
    println!("Flood goals (issue 30):");
    println!(
        "- victim share with three active uids >= 25%: {} ({})",
        share.map_or("?".into(), |s| format!("{:.0}%", s * 100.0)),
        mark(share.is_some_and(|s| s >= 0.25))
    );
    println!(
        "- victim connect+get p50 under a connect/close flood < 5 ms: {} ({})",
        connect.map_or("?".into(), |us| format!("{:.2} ms", us / 1000.0)),
        mark(connect.is_some_and(|us| us < 5000.0))
    );
    let status = f.rows.iter().all(|r| r.status.0 == r.status.1);
    println!(
        "- the operator's status answers under every flood: {}",
        mark(status)
    );
    println!(
        "- a 20 s reconnect-per-read loop grows the database < 2 MB: {:.2} MB ({})",
        c.db_bytes_per_20s / 1e6,
        mark(c.db_bytes_per_20s < 2e6)
    );
    let lines = f
        .rows
        .iter()
        .map(|r| r.log_lines_per_20s)
        .fold(c.log_lines_per_20s, f64::max);
    println!(
        "- a 20 s flood of any kind adds < 300 log lines: at most {lines:.0} ({})",
        mark(lines < 300.0)
    );
    println!(
        "- 19 of 20 scrapes under a slow-client flood: {}/{SCRAPES} ({})\n",
        f.scrapes.flooded,
        mark(f.scrapes.flooded >= 19)
    );
}
