//! `cargo run --release -p secretd-bench -- [--quick] [--python PATH] [--no-build]
//! [--only reads,program,restart,propagation,catalog,flood,attribution,any-process]`
//!
//! Starts the real daemon with a 64-byte secret and measures a read from every client
//! language against a plain Unix-socket round trip of the same frame sizes, all in one run, then
//! prints a Markdown table (BENCHMARKS.md explains it) and the daemon's memory. `SECRETD_BENCH_DAEMON`
//! names another daemon binary to measure (a before/after table of two commits).

mod any_process;
mod attribution;
mod cases;
mod catalog;
mod error;
mod fixture;
mod flood;
mod notes;
mod options;
mod program;
mod propagation;
mod restart;
mod stats;
mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use error::BenchError;
use notes::Notes;
use options::parse_args;
use stats::Row;

/// How many operations each case runs.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Single-client latency cases.
    single: usize,
    /// Per thread, in the four-client cases.
    per_thread: usize,
    /// The cached case (cheap, so more samples).
    cached: usize,
    /// A new connection per read.
    connect: usize,
    /// Process spawns.
    cli: usize,
    /// Daemon restarts per restart-gap row.
    restarts: usize,
    /// New versions per fleet-propagation row.
    changes: usize,
    /// One round of the client program, each way.
    program_run: Duration,
    /// Each flood row, each way.
    flood_run: Duration,
}

const FULL: Sizes = Sizes {
    single: 50_000,
    per_thread: 25_000,
    cached: 500_000,
    connect: 5_000,
    cli: 200,
    restarts: 20,
    changes: 10,
    program_run: Duration::from_secs(3),
    flood_run: Duration::from_secs(5),
};

const QUICK: Sizes = Sizes {
    single: 2_000,
    per_thread: 1_000,
    cached: 20_000,
    connect: 300,
    cli: 20,
    restarts: 2,
    changes: 2,
    program_run: Duration::from_millis(300),
    flood_run: Duration::from_secs(1),
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// The directory holding this executable: target/<profile>, where cargo also puts `secretd`
/// and `libsecretd.so`.
fn profile_dir() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("cannot find myself"))?;
    exe.parent()
        .map(Path::to_owned)
        .ok_or_else(|| "executable has no directory".into())
}

/// Builds the daemon and the C library in this profile, so the comparison is like for like.
fn build_prerequisites(profile_dir: &Path) -> Result<(), BenchError> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(()); // not run by cargo: use what is there
    };
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "secretd", "-p", "secretd-ffi"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(BenchError::io("cargo build"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "cargo build of secretd and secretd-ffi failed".into())
}

/// `--python`, else `$SECRETD_VENV`'s, else python/.venv's interpreter, if it imports secretd.
fn find_python(given: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = given.into_iter().chain(
        std::env::var_os("SECRETD_VENV")
            .map(|v| PathBuf::from(v).join("bin/python"))
            .into_iter()
            .chain(std::iter::once(workspace().join("python/.venv/bin/python"))),
    );
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import secretd"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("secretd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench (or one of its helper processes); `Ok(false)` when a case failed or, under
/// `CI=true`, could not run.
fn run() -> Result<bool, BenchError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(cases::HARNESS_ARG) => return cases::harness(&args[1..]).map(|()| true),
        Some(flood::FLOOD_ARG) => return flood::helper(&args[1..]).map(|()| true),
        Some(program::ECHO_ARG) => return program::echo_server(&args[1..]).map(|()| true),
        Some(any_process::LOAD_ARG) => return any_process::load_helper(&args[1..]).map(|()| true),
        Some(any_process::GET_ONCE_ARG) => {
            return any_process::get_once_helper(&args[1..]).map(|()| true);
        }
        Some(program::PROGRAM_ARG) => {
            return program::client_program(&args[1..]).map(|()| true);
        }
        _ => {}
    }
    let options = parse_args()?;
    let sizes = if options.quick { QUICK } else { FULL };
    let profile_dir = profile_dir()?;
    if !options.no_build {
        build_prerequisites(&profile_dir)?;
    }
    // `SECRETD_BENCH_DAEMON` measures another build of the daemon (an earlier commit's, for a
    // before/after table) with this bench and its baselines.
    let secretd = std::env::var_os("SECRETD_BENCH_DAEMON")
        .map_or_else(|| profile_dir.join("secretd"), PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("secretd-bench-")
        .tempdir()
        .map_err(BenchError::io("temp dir"))?;
    let daemon = fixture::Daemon::start(&secretd, dir.path())?;
    // The same, with the policy bound to this program (path and content hash): every connect
    // pays for attestation.
    let attested_dir = dir.path().join("attested");
    std::fs::create_dir_all(&attested_dir).map_err(BenchError::io("attested dir"))?;
    let me = std::env::current_exe().map_err(BenchError::io("current exe"))?;
    let selectors = format!(
        "exe = [{:?}]\nexe_sha256 = [{:?}]\n",
        me.display().to_string(),
        cases::sha256_file(&me)?
    );
    let attested = fixture::Daemon::start_with(&secretd, &attested_dir, &selectors)?;
    let attested_socket = attested.socket.clone();
    cases::settle();
    let rss_idle = daemon.rss_kib();
    let socket = daemon.socket.clone();
    let mut notes = Notes::default();
    let echo = program::EchoServer::start(dir.path())?;
    let e = &echo.socket;

    let c_source = workspace().join("bench/c/bench_get.c");
    let include = workspace().join("include");
    let have_c = profile_dir.join("libsecretd.so").exists();
    if !have_c {
        notes.skip("c-ffi-get: libsecretd.so not built");
    }
    let python = find_python(options.python.clone());
    if python.is_none() {
        notes.skip(
            "python rows: no interpreter with secretd installed (pass --python, or run \
             scripts/test once to create python/.venv)",
        );
    }
    let py_script = workspace().join("bench/python/bench_get.py");
    let d = dir.path();
    let s = &socket;
    // Every case runs a share of its samples in each round, and each round starts one case
    // later, so a slow minute of a noisy machine and the after-effects of one case on the next
    // (a busy daemon's threads, warm or cold caches) hit every row alike.
    type Case<'a> = Box<dyn Fn(usize) -> Result<Row, BenchError> + 'a>;
    let cases: Vec<(usize, Case)> = vec![
        (sizes.single, Box::new(|n| Ok(cases::raw_pingpong(e, 1, n)))),
        (
            sizes.single,
            Box::new(|n| cases::rust_get_external(s, n, false)),
        ),
        (
            sizes.per_thread,
            Box::new(|n| Ok(cases::raw_pingpong(e, 4, n))),
        ),
        (
            sizes.per_thread,
            Box::new(|n| Ok(cases::rust_get_threads(s, 4, n))),
        ),
        (
            sizes.per_thread / 4,
            Box::new(|n| Ok(cases::raw_pingpong(e, 16, n))),
        ),
        (
            sizes.per_thread / 4,
            Box::new(|n| Ok(cases::rust_get_threads(s, 16, n))),
        ),
        (
            sizes.single,
            Box::new(|n| Ok(cases::rust_async_get(s, 1, n))),
        ),
        (
            sizes.per_thread,
            Box::new(|n| Ok(cases::rust_async_get(s, 4, n))),
        ),
        (
            sizes.single,
            Box::new(|n| {
                if !have_c {
                    return Err(BenchError::CannotRun);
                }
                cases::c_get(d, &c_source, &include, &profile_dir, s, n)
            }),
        ),
        (
            sizes.single,
            Box::new(|n| match &python {
                Some(py) => cases::python_get("python-get", py, &py_script, s, n, "sync"),
                None => Err(BenchError::CannotRun),
            }),
        ),
        (
            sizes.single,
            Box::new(|n| match &python {
                Some(py) => cases::python_get("python-async-get", py, &py_script, s, n, "async"),
                None => Err(BenchError::CannotRun),
            }),
        ),
        (
            sizes.single,
            Box::new(|n| match &python {
                Some(py) => cases::python_get(
                    "python-async-get (executor, before)",
                    py,
                    &py_script,
                    s,
                    n,
                    "executor",
                ),
                None => Err(BenchError::CannotRun),
            }),
        ),
        (sizes.cli, Box::new(|n| Ok(cases::cli_get(&secretd, s, n)))),
        (
            sizes.cached,
            Box::new(|n| cases::rust_get_external(s, n, true)),
        ),
        (
            sizes.connect,
            Box::new(|n| Ok(cases::raw_connect_pingpong(e, n))),
        ),
        (sizes.connect, Box::new(|n| Ok(cases::connect_get(s, n)))),
        (sizes.connect, Box::new(|n| Ok(cases::get_once(s, n)))),
        (
            sizes.connect,
            Box::new(|n| {
                Ok(cases::connect_get_as(
                    "rust-connect+get attested (exe + sha256)",
                    &attested_socket,
                    n,
                ))
            }),
        ),
    ];
    let mut all: Vec<Option<Row>> = cases.iter().map(|_| None).collect();
    // As many rounds as there are cases, so each case runs once in every position of the order.
    let rounds = if options.runs("reads") {
        cases.len()
    } else {
        0
    };
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let ((n, case), slot) = (&cases[i], &mut all[i]);
            match case((*n / rounds).max(1)) {
                Ok(row) => match slot {
                    Some(pooled) => pooled.merge(row),
                    None => *slot = Some(row),
                },
                // Said once, up front (the missing library or interpreter).
                Err(BenchError::CannotRun) => {}
                Err(e) => notes.fail(e.to_string()),
            }
        }
    }
    let all: Vec<Row> = all.into_iter().flatten().collect();

    // Restarts last: each scenario runs its own daemon and fake GSM in a directory of its own.
    let mut gaps = Vec::new();
    let scenarios: &[restart::Scenario] = if options.runs("restart") {
        &restart::Scenario::ALL
    } else {
        &[]
    };
    for &scenario in scenarios {
        for held in [true, false] {
            match restart::measure(&secretd, dir.path(), scenario, held, sizes.restarts) {
                Ok(row) => gaps.push(row),
                Err(e) => notes.fail(format!("restart gap: {e}")),
            }
        }
    }

    // Then the fleets, each its own daemons, fake GSM and topic.
    let propagation = if options.runs("propagation") {
        propagation::measure(&secretd, dir.path(), sizes.changes, &mut notes)
    } else {
        Vec::new()
    };
    let catalog = options
        .runs("catalog")
        .then(|| catalog::measure(&secretd, dir.path(), sizes.per_thread, &mut notes));

    let programs = if options.runs("program") {
        match program::measure(&socket, e, &[4, 16], 3, sizes.program_run) {
            Ok(rows) => rows,
            Err(why) => {
                notes.fail(format!("client program: {why}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };

    let floods = if options.runs("flood") {
        match flood::measure(&secretd, dir.path(), sizes.flood_run) {
            Ok(floods) => Some(floods),
            Err(BenchError::CannotRun) => {
                notes.skip("flood rows: need root, to run clients as other uids");
                None
            }
            Err(e) => {
                notes.fail(format!("floods: {e}"));
                None
            }
        }
    } else {
        None
    };

    let attributed = if options.runs("attribution") {
        match attribution::measure(&profile_dir, dir.path(), sizes.single, sizes.per_thread) {
            Ok(a) => Some(a),
            Err(BenchError::CannotRun) => {
                notes.skip("attribution rows: secretd-bench-daemon is not built");
                None
            }
            Err(e) => {
                notes.fail(format!("attribution: {e}"));
                None
            }
        }
    } else {
        None
    };

    let any_process = if options.runs("any-process") {
        match any_process::measure(&secretd, dir.path(), sizes.connect, sizes.cli) {
            Ok(rows) => Some(rows),
            Err(BenchError::CannotRun) => {
                notes.skip("any-process rows: need root, for a unit's cgroup");
                None
            }
            Err(e) => {
                notes.fail(format!("any-process: {e}"));
                None
            }
        }
    } else {
        None
    };

    let clients = cases::idle_clients(&socket, 100);
    cases::settle();
    let rss_100 = daemon.rss_kib();
    drop(clients);

    let profile = profile_dir
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned());
    println!(
        "secretd-bench ({} run, {profile} build) on {}\n",
        if options.quick { "quick" } else { "full" },
        machine()
    );
    if options.runs("reads") {
        let Some(raw) = find(&all, "raw-uds-pingpong") else {
            return Err("the raw-uds-pingpong baseline did not run".into());
        };
        stats::print_table(&all, raw);
        println!();
        let mib =
            |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "daemon RSS: {} idle, {} with 100 connected clients",
            mib(rss_idle),
            mib(rss_100)
        );
        println!();
        print_targets(&all);
    }
    if !programs.is_empty() {
        program::print_table(&programs, sizes.program_run);
    }
    if let Some(floods) = &floods {
        flood::print(floods);
    }
    if let Some(attributed) = &attributed {
        attribution::print(attributed);
    }
    if let Some(any_process) = &any_process {
        any_process::print(any_process);
    }
    if !gaps.is_empty() {
        restart::print_table(&gaps);
    }
    propagation::print_table(&propagation);
    if let Some(catalog) = &catalog {
        catalog::print_table(catalog, find(&all, "raw-uds-pingpong x4"));
    }
    let ci = std::env::var_os("CI").is_some_and(|v| v == "true");
    Ok(!notes.report(ci))
}

fn find<'a>(rows: &'a [Row], case: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.case == case)
}

/// The targets, as ratios measured in this run.
fn print_targets(rows: &[Row]) {
    let (Some(raw), Some(raw4), Some(get), Some(get4)) = (
        find(rows, "raw-uds-pingpong"),
        find(rows, "raw-uds-pingpong x4"),
        find(rows, "rust-client-get"),
        find(rows, "rust-client-get x4"),
    ) else {
        return;
    };
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    let p50 = get.quantile_us(0.5) / raw.quantile_us(0.5);
    let p99 = get.quantile_us(0.99) / raw.quantile_us(0.99);
    let tput = get4.ops_per_sec / raw4.ops_per_sec;
    println!("targets (ratios from this run):");
    println!(
        "- rust-client-get p50 / raw p50 = {p50:.2} (≤ 1.5: {})",
        check(p50 <= 1.5)
    );
    println!(
        "- rust-client-get p99 / raw p99 = {p99:.2} (≤ 3: {})",
        check(p99 <= 3.0)
    );
    println!(
        "- x4 throughput / raw x4 = {tput:.2} (≥ 0.7: {})",
        check(tput >= 0.7)
    );
    if let Some(c) = find(rows, "c-ffi-get") {
        let d = c.quantile_us(0.5) - get.quantile_us(0.5);
        println!(
            "- c-ffi-get p50 − rust p50 = {d:+.2} µs (≤ 1: {})",
            check(d <= 1.0)
        );
    }
    if let Some(a) = find(rows, "rust-async-get") {
        let d = a.quantile_us(0.5) - get.quantile_us(0.5);
        println!(
            "- rust-async-get p50 − rust p50 = {d:+.2} µs (≤ 3: {})",
            check(d <= 3.0)
        );
    }
    if let Some(py) = find(rows, "python-get") {
        let d = py.quantile_us(0.5) - get.quantile_us(0.5);
        println!(
            "- python-get p50 − rust p50 = {d:+.2} µs (≤ 5: {})",
            check(d <= 5.0)
        );
    }
    if let (Some(py), Some(pa)) = (find(rows, "python-get"), find(rows, "python-async-get")) {
        let d = pa.quantile_us(0.5) - py.quantile_us(0.5);
        println!(
            "- python-async-get p50 − python-get p50 = {d:+.2} µs (≤ 15: {})",
            check(d <= 15.0)
        );
    }
    if let (Some(plain), Some(attested)) = (
        find(rows, "rust-connect+get (new connection each read)"),
        find(rows, "rust-connect+get attested (exe + sha256)"),
    ) {
        let r = attested.quantile_us(0.5) / plain.quantile_us(0.5);
        println!(
            "- connect+get attested p50 / connect+get p50 = {r:.2} (≤ 1.5: {})",
            check(r <= 1.5)
        );
    }
    if let Some(cached) = find(rows, "rust-client-get cached") {
        let p = cached.quantile_us(0.5);
        println!("- cached get p50 = {p:.3} µs (< 1: {})", check(p < 1.0));
    }
    // Many clients and first reads (the performance II targets).
    for (clients, at_least) in [(4, 0.9), (16, 0.85)] {
        if let (Some(raw), Some(get)) = (
            find(rows, &format!("raw-uds-pingpong x{clients}")),
            find(rows, &format!("rust-client-get x{clients}")),
        ) {
            let r = get.ops_per_sec / raw.ops_per_sec;
            println!(
                "- x{clients} throughput / raw x{clients} = {r:.2} (≥ {at_least}: {})",
                check(r >= at_least)
            );
        }
    }
    if let (Some(raw4), Some(get4)) = (
        find(rows, "raw-uds-pingpong x4"),
        find(rows, "rust-client-get x4"),
    ) {
        let r = get4.quantile_us(0.999) / raw4.quantile_us(0.999);
        println!(
            "- x4 p99.9 / raw x4 p99.9 = {r:.2} (≤ 3: {})",
            check(r <= 3.0)
        );
    }
    if let Some(raw) = find(rows, "raw-connect+pingpong") {
        for case in [
            "rust-connect+get (new connection each read)",
            "rust-connect+get once (hello pipelined)",
        ] {
            if let Some(row) = find(rows, case) {
                let r = row.quantile_us(0.5) / raw.quantile_us(0.5);
                let tail = row.quantile_us(0.999);
                println!(
                    "- {case}: p50 / raw-connect+pingpong p50 = {r:.2} (≤ 2: {}), p99.9 = {tail:.0} µs (< 1000: {})",
                    check(r <= 2.0),
                    check(tail < 1000.0)
                );
            }
        }
    }
    println!();
}
