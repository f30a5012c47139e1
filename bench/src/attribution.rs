//! What attributing every read costs, and what attesting a huge executable costs everyone
//! else (`--only attribution`).
//!
//! Attribution on and off run the same binary, `secretd-bench-daemon` (the daemon built with
//! the `bench-knobs` feature, never packaged), as two daemons side by side; the one started
//! with `SECRETD_BENCH_ATTRIBUTION=off` sets no `SO_PASSCRED` and reads with a plain `recv`,
//! crediting every byte to the process that connected. Rounds alternate which goes first.
//!
//! The huge-executable rows (root: the huge program runs as uid 65534): a daemon whose
//! policies name an `exe_sha256` for the reader's uid and for uid 65534, so whatever either
//! runs is hashed, with `attest_max_exe_bytes` above the size of a 4 GiB (sparse) copy of this
//! program. The reader's latency alone, then while that copy, run as uid 65534, connects in a
//! loop and is hashed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cases;
use crate::error::BenchError;
use crate::fixture::{Custom, Daemon};
use crate::flood::FLOOD_ARG;
use crate::stats::Row;

/// How large the huge executable is (a sparse copy of this program).
const HUGE_BYTES: u64 = 4 << 30;
/// The uid the huge program runs as: another uid than the reader's, as an attacker's would be.
const HUGE_UID: u32 = 65534;
/// Rounds, each running every case once.
const ROUNDS: usize = 4;

/// The rows, pooled over the rounds.
#[derive(Debug)]
pub(crate) struct Attribution {
    /// `rust-client-get` and `x4`, on and off.
    pub rows: Vec<Row>,
    /// The second client, alone and while the huge executable is hashed.
    pub huge: Vec<Row>,
}

/// Builds `secretd-bench-daemon` in this profile (when run by cargo) and returns it.
fn bench_daemon(profile_dir: &Path) -> Result<PathBuf, BenchError> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "secretd",
            "--features",
            "bench-knobs",
            "--bin",
            "secretd-bench-daemon",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .map_err(BenchError::io("cargo build secretd-bench-daemon"))?;
        if !status.success() {
            return Err("cargo build of secretd-bench-daemon failed".into());
        }
    }
    let bin = profile_dir.join("secretd-bench-daemon");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(BenchError::CannotRun)
    }
}

/// Measures both parts with `single` reads per single-client case and `per_thread` per thread.
pub(crate) fn measure(
    profile_dir: &Path,
    dir: &Path,
    single: usize,
    per_thread: usize,
) -> Result<Attribution, BenchError> {
    let bin = bench_daemon(profile_dir)?;
    let on = Daemon::start_custom(&bin, &dir.join("attribution-on"), &Custom::default())?;
    let off = Daemon::start_custom(
        &bin,
        &dir.join("attribution-off"),
        &Custom {
            env: &[("SECRETD_BENCH_ATTRIBUTION", "off")],
            ..Custom::default()
        },
    )?;
    let mut rows: Vec<Option<Row>> = (0..4).map(|_| None).collect();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [(&on, "on", 0), (&off, "off", 1)]
        } else {
            [(&off, "off", 1), (&on, "on", 0)]
        };
        for (daemon, label, k) in order {
            let mut get = cases::rust_get_external(&daemon.socket, single / ROUNDS, false)
                .map_err(|e| failed(e, daemon))?;
            get.case = format!("rust-client-get (attribution {label})");
            pool(&mut rows[k], get);
            let mut x4 = cases::rust_get_threads(&daemon.socket, 4, per_thread / ROUNDS);
            x4.case = format!("rust-client-get x4 (attribution {label})");
            pool(&mut rows[2 + k], x4);
        }
    }
    drop((on, off));
    let huge = huge_rows(&bin, dir, single)?;
    Ok(Attribution {
        rows: rows.into_iter().flatten().collect(),
        huge,
    })
}

/// `e`, with what `daemon` logged last.
fn failed(e: BenchError, daemon: &Daemon) -> BenchError {
    format!("{e}; the daemon's log ends: {}", daemon.log_tail()).into()
}

fn pool(slot: &mut Option<Row>, row: Row) {
    match slot {
        Some(pooled) => pooled.merge(row),
        None => *slot = Some(row),
    }
}

/// The second client alone and while a huge executable is hashed, `ROUNDS` rounds each.
fn huge_rows(bin: &Path, dir: &Path, single: usize) -> Result<Vec<Row>, BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::CannotRun);
    }
    let me = std::env::current_exe().map_err(BenchError::io("current exe"))?;
    // The reader's policy names its hash; another for uid 65534 (the huge program's) names a
    // hash too, so the daemon must hash whatever that uid runs.
    let selectors = format!(
        "exe_sha256 = [{:?}]\n\n[[policy]]\nuids = [{HUGE_UID}]\nallow = [\"nothing_*\"]\n\
         exe_sha256 = [{:?}]\n",
        cases::sha256_file(&me)?,
        "0".repeat(64)
    );
    let daemon_lines = format!(
        "attest_max_exe_bytes = {}\nsocket_mode = \"0660\"\nsocket_group = \"{HUGE_UID}\"\n",
        HUGE_BYTES * 2
    );
    // Uid 65534 must reach the socket and run the copy: the directories on the way open up.
    let huge_dir = dir.join("attribution-huge");
    std::fs::create_dir_all(&huge_dir).map_err(BenchError::io("huge dir"))?;
    for d in [dir, huge_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(BenchError::io("chmod huge dir"))?;
    }
    let daemon = Daemon::start_custom(
        bin,
        &huge_dir,
        &Custom {
            selectors: &selectors,
            daemon_lines: &daemon_lines,
            env: &[],
        },
    )?;
    let (mut quiet, mut loaded) = (None, None);
    // Alone first: a huge file's hash goes on after its program is gone (the daemon finishes
    // what it started), so a quiet round after a loaded one would not be quiet.
    for _ in 0..ROUNDS {
        let mut alone = cases::rust_get_external(&daemon.socket, single / ROUNDS, false)
            .map_err(|e| failed(e, &daemon))?;
        alone.case = "second client get, alone".into();
        pool(&mut quiet, alone);
    }
    for round in 0..ROUNDS {
        // A fresh file each round: a new inode is hashed afresh (the hash cache is by file).
        let huge = huge_dir.join(format!("huge-{round}"));
        std::fs::copy(&me, &huge).map_err(BenchError::io("copy the huge executable"))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&huge)
            .map_err(BenchError::io("open the huge executable"))?;
        file.set_len(HUGE_BYTES)
            .map_err(BenchError::io("grow the huge executable"))?;
        drop(file);
        std::fs::set_permissions(&huge, std::fs::Permissions::from_mode(0o755))
            .map_err(BenchError::io("chmod the huge executable"))?;
        let mut bot = Command::new("setpriv")
            .arg(format!("--reuid={HUGE_UID}"))
            .arg(format!("--regid={HUGE_UID}"))
            .arg("--clear-groups")
            .arg(&huge)
            .arg(FLOOD_ARG)
            .args(["get"])
            .arg(&daemon.socket)
            .args(["1", "5000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::io("run the huge executable"))?;
        // Give it time to connect and the daemon time to start hashing (about a second per
        // GiB here), then read while it goes on.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut during = cases::rust_get_external(&daemon.socket, single / ROUNDS, false)
            .map_err(|e| failed(e, &daemon))?;
        during.case = format!(
            "second client get, while a {} GiB executable is hashed",
            HUGE_BYTES >> 30
        );
        pool(&mut loaded, during);
        let _ = bot.kill();
        let _ = bot.wait();
        let _ = std::fs::remove_file(&huge);
    }
    Ok([quiet, loaded].into_iter().flatten().collect())
}

/// Prints the table and the targets.
pub(crate) fn print(a: &Attribution) {
    println!(
        "Attribution: the same daemon binary with attribution on and off, and a huge executable\n"
    );
    println!("| case | p50 µs | p99 µs | p99.9 µs | ops/s |");
    println!("|------|-------:|-------:|---------:|------:|");
    for row in a.rows.iter().chain(&a.huge) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            row.case,
            row.quantile_us(0.5),
            row.quantile_us(0.99),
            row.quantile_us(0.999),
            row.ops_per_sec
        );
    }
    let find = |case: &str| a.rows.iter().find(|r| r.case == case);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(on), Some(off), Some(on4), Some(off4)) = (
        find("rust-client-get (attribution on)"),
        find("rust-client-get (attribution off)"),
        find("rust-client-get x4 (attribution on)"),
        find("rust-client-get x4 (attribution off)"),
    ) {
        let p50 = on.quantile_us(0.5) / off.quantile_us(0.5);
        let x4 = on4.ops_per_sec / off4.ops_per_sec;
        println!("\nAttribution targets (issue 29, ratios from this run):");
        println!(
            "- get p50 on / off = {p50:.2} (≤ 1.10: {})",
            mark(p50 <= 1.10)
        );
        println!(
            "- x4 throughput on / off = {x4:.2} (≥ 0.95: {})",
            mark(x4 >= 0.95)
        );
    }
    if let [alone, during] = &a.huge[..] {
        println!(
            "- second client p99 while a huge executable is hashed: {:.1} µs (alone {:.1} µs)",
            during.quantile_us(0.99),
            alone.quantile_us(0.99)
        );
    }
    println!();
}
