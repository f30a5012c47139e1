//! Floods: what a good client of another uid sees while one or two local users flood the
//! daemon, quiet and flooded in the same run. Every party is a process of its own, run as its
//! own uid through `setpriv` (so the bench needs root): the victim is uid 65534, the attackers
//! 65530 and 65531, the operator root.
//!
//! Rows: two uids holding 600 connections each; two uids connecting and closing in a loop; two
//! uids hammering busy connections (the victim's share of the reads the daemon answered); a
//! reconnect-per-read bot (audit bytes and log lines per 20 s); a slow-client flood of the
//! metrics port (scrapes answered).

mod daemon;
mod helper;
mod report;

use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use secretd_client::Client;

use crate::error::BenchError;
use daemon::{Setup, setup};
use helper::Mode;
pub(crate) use helper::{FLOOD_ARG, helper};
pub(crate) use report::print;

/// The victim's uid.
const VICTIM: u32 = 65534;
/// The attackers' uids.
const ATTACKERS: [u32; 2] = [65530, 65531];
/// The flood daemon's `audit_read_window`: the reconnect-per-read row waits one out, so the
/// counts the read ledger holds are on disk when the database is measured.
const READ_WINDOW: Duration = Duration::from_secs(3);
/// How many scrapes the metrics row tries, each way.
const SCRAPES: usize = 20;

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
