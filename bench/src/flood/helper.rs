//! The flood part's helper process (`secretd-bench __flood MODE SOCKET THREADS MILLIS`): a
//! victim or an attacker, run as its own uid, that prints what it saw.

use std::path::Path;
use std::time::{Duration, Instant};

use secretd_client::Client;

use crate::error::BenchError;
use crate::fixture::NAME;

/// The helper-process argument: `__flood MODE SOCKET THREADS MILLIS`.
pub(crate) const FLOOD_ARG: &str = "__flood";
/// What a helper process does for its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
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

    pub(super) fn word(self) -> &'static str {
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
