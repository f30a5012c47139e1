//! The measured cases. Each returns a [`Row`]; all run against the same daemon in one process
//! run, so their ratios are comparable even on a noisy machine.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secretd_client::{AsyncClient, Client};

use crate::error::BenchError;
use crate::fixture::{NAME, VALUE};
use crate::stats::Row;
use crate::wire::{read_frame, wire_frames};

/// Operations before measuring, so connections, caches and branch predictors are warm.
const WARMUP: usize = 1_000;

/// Runs `op` `n` times on each of `threads` threads (after `warmup` untimed calls) and times
/// every call.
fn measure<S, F>(case: &str, threads: usize, n: usize, warmup: usize, setup: S) -> Row
where
    S: Fn() -> F + Sync,
    F: FnMut(),
{
    let barrier = std::sync::Barrier::new(threads + 1);
    let (samples, wall) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, setup) = (&barrier, &setup);
                scope.spawn(move || {
                    let mut op = setup();
                    for _ in 0..warmup {
                        op();
                    }
                    let mut samples = Vec::with_capacity(n);
                    barrier.wait();
                    for _ in 0..n {
                        let t = Instant::now();
                        op();
                        samples.push(t.elapsed().as_nanos() as u64);
                    }
                    samples
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let samples: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        (samples, started.elapsed())
    });
    Row::new(case, samples, wall)
}

/// `raw-uds-pingpong` with `threads` clients, against the echo server (its own process) at
/// `echo`.
pub(crate) fn raw_pingpong(echo: &Path, threads: usize, n: usize) -> Row {
    let (request, _) = wire_frames();
    let case = if threads == 1 {
        "raw-uds-pingpong".to_string()
    } else {
        format!("raw-uds-pingpong x{threads}")
    };
    measure(&case, threads, n, WARMUP, || {
        let mut stream = UnixStream::connect(echo).unwrap_or_else(|e| panic!("connect echo: {e}"));
        let mut buf = Vec::new();
        let request = request.clone();
        move || {
            stream
                .write_all(&request)
                .unwrap_or_else(|e| panic!("echo write: {e}"));
            read_frame(&mut stream, &mut buf).unwrap_or_else(|e| panic!("echo read: {e}"));
        }
    })
}

/// `raw-connect+pingpong`: connect to the echo server, one request and its response, close.
/// The floor under `rust-connect+get`.
pub(crate) fn raw_connect_pingpong(echo: &Path, n: usize) -> Row {
    let (request, _) = wire_frames();
    measure("raw-connect+pingpong", 1, n, 100, || {
        let mut buf = Vec::new();
        let request = request.clone();
        move || {
            let mut stream =
                UnixStream::connect(echo).unwrap_or_else(|e| panic!("connect echo: {e}"));
            stream
                .write_all(&request)
                .unwrap_or_else(|e| panic!("echo write: {e}"));
            read_frame(&mut stream, &mut buf).unwrap_or_else(|e| panic!("echo read: {e}"));
        }
    })
}

/// `rust-client-get x4`: `threads` clients in threads of this process, each on its own
/// connection, against `raw-uds-pingpong x4` run the same way.
pub(crate) fn rust_get_threads(socket: &Path, threads: usize, n: usize) -> Row {
    let case = format!("rust-client-get x{threads}");
    rust_get_threads_of(&case, socket, NAME, threads, n)
}

/// `threads` blocking clients reading `name` from the daemon at `socket`, as `case`.
pub(crate) fn rust_get_threads_of(
    case: &str,
    socket: &Path,
    name: &str,
    threads: usize,
    n: usize,
) -> Row {
    measure(case, threads, n, WARMUP, || {
        let client = Client::connect(socket).unwrap_or_else(|e| panic!("connect: {e}"));
        move || {
            let secret = client.get(name).unwrap_or_else(|e| panic!("get: {e}"));
            assert!(!secret.is_empty());
        }
    })
}

/// `rust-async-get` (x`tasks`): one `AsyncClient` shared by `tasks` tokio tasks on a
/// two-thread runtime, each timing its own `await`s. Set beside `rust-client-get` (x4), it
/// shows what the task hop and the connection pool cost over a blocking client per thread.
pub(crate) fn rust_async_get(socket: &Path, tasks: usize, n: usize) -> Row {
    let case = if tasks == 1 {
        "rust-async-get".to_string()
    } else {
        format!("rust-async-get x{tasks}")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let (samples, wall) = runtime.block_on(async {
        let client = AsyncClient::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("async connect: {e}"));
        for _ in 0..WARMUP {
            client
                .get(NAME)
                .await
                .unwrap_or_else(|e| panic!("get: {e}"));
        }
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = Instant::now();
                        let secret = client
                            .get(NAME)
                            .await
                            .unwrap_or_else(|e| panic!("get: {e}"));
                        samples.push(t.elapsed().as_nanos() as u64);
                        assert_eq!(secret.len(), VALUE.len());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(n * tasks);
        for handle in handles {
            samples.extend(handle.await.unwrap_or_default());
        }
        (samples, started.elapsed())
    });
    Row::new(case, samples, wall)
}

/// `rust-client-get` (or `cached`) in a child process of its own, like the C and Python
/// harnesses, so the three languages are compared like for like.
pub(crate) fn rust_get_external(socket: &Path, n: usize, cached: bool) -> Result<Row, BenchError> {
    let case = if cached {
        "rust-client-get cached"
    } else {
        "rust-client-get"
    };
    let exe = std::env::current_exe().map_err(|e| BenchError::from(format!("{case}: {e}")))?;
    external(
        case,
        Command::new(exe)
            .arg(HARNESS_ARG)
            .arg(if cached { "cached" } else { "plain" })
            .arg(socket)
            .arg(n.to_string())
            .arg(WARMUP.to_string()),
    )
}

/// The argument that makes this binary a Rust client harness (see [`harness`]).
pub(crate) const HARNESS_ARG: &str = "__rust-harness";

/// Harness mode: `__rust-harness plain|cached SOCKET N WARMUP` prints one get latency in
/// nanoseconds per line, like bench/c/bench_get.c.
pub(crate) fn harness(args: &[String]) -> Result<(), BenchError> {
    let [mode, socket, n, warmup] = args else {
        return Err("usage: __rust-harness plain|cached SOCKET N WARMUP".into());
    };
    let n: usize = n.parse().map_err(|_| "N must be a number")?;
    let warmup: usize = warmup.parse().map_err(|_| "WARMUP must be a number")?;
    let client = Client::connect(socket).map_err(BenchError::client("secretd"))?;
    let client = if mode == "cached" {
        client.with_cache().map_err(BenchError::client("secretd"))?
    } else {
        client
    };
    for _ in 0..warmup {
        client.get(NAME).map_err(BenchError::client("secretd"))?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let secret = client.get(NAME).map_err(BenchError::client("secretd"))?;
        drop(secret);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let mut out = String::with_capacity(n * 8);
    for s in samples {
        out.push_str(&s.to_string());
        out.push('\n');
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(BenchError::io("stdout"))
}

/// A new connection for every read: hello, get, close. Every read is then a connection's first
/// and is audited as its own record (steady-state reads are aggregated), so this row shows
/// what an unaggregated audit trail would cost.
pub(crate) fn connect_get(socket: &Path, n: usize) -> Row {
    connect_get_as("rust-connect+get (new connection each read)", socket, n)
}

/// `Client::get_once`: connect, hello and get in one write, close: one round trip.
pub(crate) fn get_once(socket: &Path, n: usize) -> Row {
    measure("rust-connect+get once (hello pipelined)", 1, n, 100, || {
        move || {
            let secret = Client::get_once(socket, NAME).unwrap_or_else(|e| panic!("get_once: {e}"));
            assert_eq!(secret.len(), VALUE.len());
        }
    })
}

/// [`connect_get`] under a `case` name (the attested variant runs against another daemon).
pub(crate) fn connect_get_as(case: &str, socket: &Path, n: usize) -> Row {
    measure(case, 1, n, 100, || {
        move || {
            let client = Client::connect(socket).unwrap_or_else(|e| panic!("connect: {e}"));
            client.get(NAME).unwrap_or_else(|e| panic!("get: {e}"));
        }
    })
}

/// Runs an external harness that prints one latency in nanoseconds per line.
fn external(case: &str, cmd: &mut Command) -> Result<Row, BenchError> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BenchError::from(format!("{case}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::from(format!(
            "{case}: harness failed ({})",
            out.status
        )));
    }
    let samples: Vec<u64> = out
        .stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if samples.is_empty() {
        return Err(BenchError::from(format!(
            "{case}: harness printed no samples"
        )));
    }
    // Throughput from the samples themselves: process start-up is not part of a get.
    let busy: u64 = samples.iter().sum();
    Ok(Row::new(case, samples, Duration::from_nanos(busy)))
}

/// `c-ffi-get`: a C program compiled with gcc -O2 against libsecretd.so.
pub(crate) fn c_get(
    dir: &Path,
    source: &Path,
    include: &Path,
    lib_dir: &Path,
    socket: &Path,
    n: usize,
) -> Result<Row, BenchError> {
    let exe = dir.join("bench_get_c");
    // Installed as a system would: the file under its SONAME, the link name beside it.
    let lib = dir.join("lib");
    if !lib.exists() {
        std::fs::create_dir(&lib).map_err(BenchError::io("c-ffi-get"))?;
        std::fs::copy(lib_dir.join("libsecretd.so"), lib.join("libsecretd.so.0"))
            .map_err(BenchError::io("c-ffi-get: copy libsecretd.so"))?;
        std::os::unix::fs::symlink("libsecretd.so.0", lib.join("libsecretd.so"))
            .map_err(BenchError::io("c-ffi-get"))?;
    }
    let lib_dir = lib.as_path();
    if !exe.exists() {
        let status = Command::new("gcc")
            .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"])
            .arg(format!("-I{}", include.display()))
            .arg(source)
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", lib_dir.display()))
            .arg("-lsecretd")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .status()
            .map_err(BenchError::io("c-ffi-get: gcc"))?;
        if !status.success() {
            return Err("c-ffi-get: gcc failed".into());
        }
    }
    external(
        "c-ffi-get",
        Command::new(&exe)
            .arg(socket)
            .arg(NAME)
            .arg(n.to_string())
            .arg(WARMUP.to_string()),
    )
}

/// `python-get`: the real extension module, timed in Python with `perf_counter_ns`.
pub(crate) fn python_get(
    case: &str,
    python: &Path,
    script: &Path,
    socket: &Path,
    n: usize,
    mode: &str,
) -> Result<Row, BenchError> {
    external(
        case,
        Command::new(python)
            .arg(script)
            .arg(socket)
            .arg(NAME)
            .arg(n.to_string())
            .arg(WARMUP.to_string())
            .arg(mode),
    )
}

/// `cli-get`: `secretd get NAME`, process spawn included.
pub(crate) fn cli_get(secretd: &Path, socket: &Path, n: usize) -> Row {
    measure("cli-get", 1, n, 5, || {
        move || {
            let status = Command::new(secretd)
                .args(["get", NAME, "--socket"])
                .arg(socket)
                .stdout(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("run secretd get: {e}"));
            assert!(status.success(), "secretd get failed");
        }
    })
}

/// Opens `count` clients that each read once and stay connected; returns them.
pub(crate) fn idle_clients(socket: &Path, count: usize) -> Vec<Client> {
    (0..count)
        .map(|_| {
            let c = Client::connect(socket).unwrap_or_else(|e| panic!("connect: {e}"));
            c.get(NAME).unwrap_or_else(|e| panic!("get: {e}"));
            c
        })
        .collect()
}

/// Gives a freshly started process a moment to settle before its memory is read.
pub(crate) fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The hex SHA-256 of a file (`sha256sum`, so the bench needs no hashing crate).
pub(crate) fn sha256_file(path: &Path) -> Result<String, BenchError> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(BenchError::io("sha256sum"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum printed nothing".into())
}
