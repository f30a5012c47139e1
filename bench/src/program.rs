//! The honest baseline and what a user's program sees.
//!
//! The raw echo server runs in a process of its own (`__echo-server`), a thread per connection
//! answering each request frame with a response frame of the daemon's size: the physical floor
//! of a local request/response, sharing nothing with the clients that measure it.
//!
//! The client program (`__client-program`) is what a user would write: in its own process,
//! `THREADS` threads, each with its own blocking `Client` calling `get` in a loop (or sending
//! the same frames raw to the echo server), for a fixed time, counting calls and timing none of
//! them. Its rows are ratios of the two, from rounds interleaved in one run.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretd_client::Client;

use crate::error::BenchError;
use crate::fixture::NAME;
use crate::wire::{read_frame, wire_frames};

/// The argument that makes this binary the echo server.
pub(crate) const ECHO_ARG: &str = "__echo-server";
/// The argument that makes this binary the client program.
pub(crate) const PROGRAM_ARG: &str = "__client-program";

/// The echo server in its own process; killed when dropped.
#[derive(Debug)]
pub(crate) struct EchoServer {
    /// The process.
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl EchoServer {
    /// Starts the echo server on `dir/echo.sock` and waits until it accepts.
    pub(crate) fn start(dir: &Path) -> Result<EchoServer, BenchError> {
        let socket = dir.join("echo.sock");
        let exe = std::env::current_exe().map_err(BenchError::io("echo server"))?;
        let child = Command::new(exe)
            .arg(ECHO_ARG)
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .map_err(BenchError::io("echo server"))?;
        let server = EchoServer { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&server.socket).is_err() {
            if Instant::now() > deadline {
                return Err("the echo server did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Echo-server mode: `__echo-server SOCKET`; serves until killed.
pub(crate) fn echo_server(args: &[String]) -> Result<(), BenchError> {
    let [socket] = args else {
        return Err(BenchError::from(format!("usage: {ECHO_ARG} SOCKET")));
    };
    let (_, response) = wire_frames();
    let listener =
        UnixListener::bind(socket).map_err(|e| BenchError::from(format!("bind {socket}: {e}")))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let response = response.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while read_frame(&mut stream, &mut buf).is_ok() {
                if stream.write_all(&response).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// What the client program calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// `Client::get` on the daemon.
    Get,
    /// The same frames, raw, on the echo server.
    Raw,
}

/// Runs the client program once: `threads` threads calling for `run`; returns calls per second.
pub(crate) fn run_program(
    target: Target,
    socket: &Path,
    threads: usize,
    run: Duration,
) -> Result<f64, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("client program"))?;
    let out = Command::new(exe)
        .arg(PROGRAM_ARG)
        .arg(match target {
            Target::Get => "get",
            Target::Raw => "raw",
        })
        .arg(socket)
        .arg(threads.to_string())
        .arg(run.as_millis().to_string())
        .stderr(Stdio::inherit())
        .output()
        .map_err(BenchError::io("client program: cannot run"))?;
    if !out.status.success() {
        return Err(BenchError::from(format!(
            "client program failed ({})",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let (Some(calls), Some(seconds)) = (fields.next(), fields.next()) else {
        return Err(BenchError::from(format!("client program printed {text:?}")));
    };
    let calls: f64 = calls
        .parse()
        .map_err(|_| BenchError::from(format!("calls: {calls:?}")))?;
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| BenchError::from(format!("seconds: {seconds:?}")))?;
    Ok(calls / seconds.max(1e-9))
}

/// Client-program mode: `__client-program get|raw SOCKET THREADS MILLIS`; prints the calls
/// made and the seconds they took.
pub(crate) fn client_program(args: &[String]) -> Result<(), BenchError> {
    let [mode, socket, threads, millis] = args else {
        return Err(BenchError::from(format!(
            "usage: {PROGRAM_ARG} get|raw SOCKET THREADS MILLIS"
        )));
    };
    let target = match mode.as_str() {
        "get" => Target::Get,
        "raw" => Target::Raw,
        other => return Err(BenchError::from(format!("unknown mode {other:?}"))),
    };
    let threads: usize = threads.parse().map_err(|_| "THREADS must be a number")?;
    let run = Duration::from_millis(millis.parse().map_err(|_| "MILLIS must be a number")?);
    let barrier = std::sync::Barrier::new(threads + 1);
    let (calls, took) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<u64, BenchError> {
                    let mut call = caller(target, Path::new(socket))?;
                    for _ in 0..100 {
                        call()?;
                    }
                    barrier.wait();
                    let end = Instant::now() + run;
                    let mut calls = 0u64;
                    while Instant::now() < end {
                        call()?;
                        calls += 1;
                    }
                    Ok(calls)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| "a client thread panicked".to_string())??;
        }
        Ok::<_, BenchError>((total, started.elapsed()))
    })?;
    println!("{calls} {}", took.as_secs_f64());
    Ok(())
}

/// One call of the client program, as `target` makes it.
type Call = Box<dyn FnMut() -> Result<(), BenchError>>;

fn caller(target: Target, socket: &Path) -> Result<Call, BenchError> {
    match target {
        Target::Get => {
            let client = Client::connect(socket).map_err(BenchError::client("secretd"))?;
            Ok(Box::new(move || {
                client
                    .get(NAME)
                    .map(drop)
                    .map_err(BenchError::client("secretd"))
            }))
        }
        Target::Raw => {
            let (request, _) = wire_frames();
            let mut stream = UnixStream::connect(socket)
                .map_err(BenchError::io("connect to the echo server"))?;
            let mut buf = Vec::new();
            Ok(Box::new(move || {
                stream.write_all(&request).map_err(BenchError::io("echo"))?;
                read_frame(&mut stream, &mut buf).map_err(BenchError::io("echo"))
            }))
        }
    }
}

/// The client program's calls per second against the daemon and the echo server, `rounds`
/// rounds interleaved, for each client count.
#[derive(Debug)]
pub(crate) struct ProgramRow {
    /// Threads in the program.
    pub threads: usize,
    /// Calls per second against the echo server, per round.
    pub raw: Vec<f64>,
    /// Calls per second against the daemon, per round.
    pub get: Vec<f64>,
}

/// Measures the client program with each of `thread_counts`, `rounds` interleaved rounds of
/// `run` each way.
pub(crate) fn measure(
    daemon: &Path,
    echo: &Path,
    thread_counts: &[usize],
    rounds: usize,
    run: Duration,
) -> Result<Vec<ProgramRow>, BenchError> {
    let mut rows: Vec<ProgramRow> = thread_counts
        .iter()
        .map(|&threads| ProgramRow {
            threads,
            raw: Vec::new(),
            get: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for row in &mut rows {
            // Alternate which side goes first, so neither always runs on a cooler machine.
            let order = if round % 2 == 0 {
                [Target::Raw, Target::Get]
            } else {
                [Target::Get, Target::Raw]
            };
            for target in order {
                match target {
                    Target::Raw => row.raw.push(run_program(target, echo, row.threads, run)?),
                    Target::Get => row.get.push(run_program(target, daemon, row.threads, run)?),
                }
            }
        }
    }
    Ok(rows)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Prints the client program's table and its targets.
pub(crate) fn print_table(rows: &[ProgramRow], run: Duration) {
    println!(
        "client program (its own process, a blocking Client per thread, {:.1} s per round; \
         medians of {} interleaved rounds against the echo server in its own process):",
        run.as_secs_f64(),
        rows.first().map_or(0, |r| r.raw.len())
    );
    println!("| threads | raw calls/s | secretd get calls/s | get / raw | target |");
    println!("|--------:|------------:|--------------------:|----------:|-------:|");
    for row in rows {
        let (raw, get) = (median(&row.raw), median(&row.get));
        let ratio = get / raw;
        let target = match row.threads {
            4 => Some(0.9),
            16 => Some(0.85),
            _ => None,
        };
        let verdict = target.map_or(String::from("—"), |t| {
            format!("≥ {t}: {}", if ratio >= t { "ok" } else { "MISSED" })
        });
        println!(
            "| {} | {raw:.0} | {get:.0} | {ratio:.2}× | {verdict} |",
            row.threads
        );
    }
    println!();
}
