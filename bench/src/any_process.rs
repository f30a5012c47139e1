//! Programs that link nothing (`--only any-process`): what a systemd credential load costs
//! against a plain `get` on a new connection, and what `secretd run -- /bin/true` adds to
//! starting `/bin/true`.
//!
//! The credential rows run in a helper process of their own (`__credential-load`), placed in a
//! unit's cgroup as systemd places its helper, loading as systemd 252 does (an abstract address
//! naming the unit and the id, connect, shut the sending side, read to EOF); the baseline
//! helper (`__get-once`) reads with `Client::get_once`, a new connection each. Both time each
//! operation inside their own process. The start-up rows time a process from spawn to exit,
//! interleaved. Needs root (the unit's cgroup).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use secretd_gsm_fake::systemd_credentials::{CREDENTIAL_SIZE_MAX, load_credential};

use crate::error::BenchError;
use crate::fixture::{Custom, Daemon, NAME};
use crate::stats::Row;

/// The argument that makes this binary the credential-loading helper.
pub(crate) const LOAD_ARG: &str = "__credential-load";
/// The argument that makes this binary the `get_once` helper.
pub(crate) const GET_ONCE_ARG: &str = "__get-once";
/// Rounds of each pair of cases, alternating which goes first.
const ROUNDS: usize = 4;

/// The rows.
#[derive(Debug)]
pub(crate) struct AnyProcess {
    /// Credential load, then its baseline.
    pub loads: [Row; 2],
    /// `secretd run -- /bin/true`, `/bin/true`, and `secretd --version` (what loading the
    /// 30 MB binary costs, before `run` does anything).
    pub starts: [Row; 3],
}

/// Runs both pairs of rows: `loads` operations per helper, `spawns` processes per start row.
pub(crate) fn measure(
    secretd: &Path,
    dir: &Path,
    loads: usize,
    spawns: usize,
) -> Result<AnyProcess, BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::CannotRun);
    }
    let dir = dir.join("any-process");
    let creds = dir.join("run/credentials.sock");
    let daemon_lines = format!("credentials_socket = \"{}\"", creds.display());
    // Appended after the policy: a table of its own.
    let tables = "\n[[credential]]\nunits = [\"secretd-bench-*.service\"]\nallow = [\"*\"]\n\
                  on_change = \"none\"\n";
    let daemon = Daemon::start_custom(
        secretd,
        &dir,
        &Custom {
            selectors: tables,
            daemon_lines: &daemon_lines,
            env: &[],
        },
    )?;
    let unit = format!("secretd-bench-{}.service", std::process::id());
    let cgroup = UnitCgroup::new(&unit)?;
    let me = std::env::current_exe().map_err(BenchError::io("current exe"))?;
    let per_round = (loads / ROUNDS).max(1);
    let mut load_rows: [Option<Row>; 2] = [None, None];
    let mut start_rows: [Option<Row>; 3] = [None, None, None];
    let true_bin = which("true")?;
    for round in 0..ROUNDS {
        for k in 0..2 {
            let i = (k + round) % 2;
            let args: Vec<String> = if i == 0 {
                vec![
                    LOAD_ARG.into(),
                    creds.display().to_string(),
                    unit.clone(),
                    NAME.into(),
                    cgroup.procs().display().to_string(),
                    per_round.to_string(),
                ]
            } else {
                vec![
                    GET_ONCE_ARG.into(),
                    daemon.socket.display().to_string(),
                    NAME.into(),
                    per_round.to_string(),
                ]
            };
            let label = [
                "credential load (systemd's connect + read to EOF)",
                "get_once (plain get, new connection)",
            ][i];
            merge(&mut load_rows[i], helper_row(&me, &args, label)?);
        }
        for k in 0..3 {
            let i = (k + round) % 3;
            let label = [
                "secretd run -- /bin/true",
                "/bin/true alone",
                "secretd --version (loading the binary)",
            ][i];
            let mut cmd = match i {
                0 => {
                    let mut run = Command::new(secretd);
                    run.arg("--socket")
                        .arg(&daemon.socket)
                        .args(["run", "--env", &format!("K={NAME}"), "--"])
                        .arg(&true_bin);
                    run
                }
                1 => Command::new(&true_bin),
                _ => {
                    let mut version = Command::new(secretd);
                    version.arg("--version");
                    version
                }
            };
            merge(
                &mut start_rows[i],
                spawn_row(&mut cmd, (spawns / ROUNDS).max(1), label)?,
            );
        }
    }
    let [load, get_once] = load_rows;
    let [run, alone, version] = start_rows;
    Ok(AnyProcess {
        loads: [load.ok_or("no rows")?, get_once.ok_or("no rows")?],
        starts: [
            run.ok_or("no rows")?,
            alone.ok_or("no rows")?,
            version.ok_or("no rows")?,
        ],
    })
}

fn merge(slot: &mut Option<Row>, row: Row) {
    match slot {
        Some(pooled) => pooled.merge(row),
        None => *slot = Some(row),
    }
}

/// Runs a helper and turns its line of nanoseconds into a row.
fn helper_row(me: &Path, args: &[String], label: &str) -> Result<Row, BenchError> {
    let started = Instant::now();
    let out = Command::new(me)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(BenchError::io("run a helper"))?;
    let wall = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{label}: the helper failed: {text}").into());
    }
    let samples: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if samples.is_empty() {
        return Err(format!("{label}: the helper measured nothing: {text}").into());
    }
    Ok(Row::new(label, samples, wall))
}

/// Spawns `cmd` `n` times, timing each from spawn to exit; each must succeed.
fn spawn_row(cmd: &mut Command, n: usize, label: &str) -> Result<Row, BenchError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = cmd.output().map_err(BenchError::io("spawn"))?;
        samples.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if !out.status.success() {
            return Err(format!("{label} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
    }
    Ok(Row::new(label, samples, started.elapsed()))
}

fn which(program: &str) -> Result<PathBuf, BenchError> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no {program} in /usr/bin or /bin").into())
}

/// `__credential-load SOCKET UNIT ID PROCS N`: joins the unit's cgroup, loads N times, prints
/// each load's nanoseconds.
pub(crate) fn load_helper(args: &[String]) -> Result<(), BenchError> {
    let [socket, unit, id, procs, n] = args else {
        return Err("usage: __credential-load SOCKET UNIT ID PROCS N".into());
    };
    std::fs::write(procs, std::process::id().to_string())
        .map_err(BenchError::io("join the unit's cgroup"))?;
    let n: usize = n.parse().map_err(|_| "N is not a number")?;
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let len = load_credential(Path::new(socket), unit, id)
            .map_err(BenchError::io("load the credential"))?
            .len();
        let ns = t.elapsed().as_nanos();
        if len == 0 || len > CREDENTIAL_SIZE_MAX {
            return Err(format!("the credential load was refused ({len} bytes)").into());
        }
        out.push_str(&format!("{ns} "));
    }
    println!("{out}");
    Ok(())
}

/// `__get-once SOCKET NAME N`: N reads, each on a new connection, each timed.
pub(crate) fn get_once_helper(args: &[String]) -> Result<(), BenchError> {
    let [socket, name, n] = args else {
        return Err("usage: __get-once SOCKET NAME N".into());
    };
    let n: usize = n.parse().map_err(|_| "N is not a number")?;
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        secretd_client::Client::get_once(socket, name).map_err(|e| e.to_string())?;
        out.push_str(&format!("{} ", t.elapsed().as_nanos()));
    }
    println!("{out}");
    Ok(())
}

/// A unit's cgroup under system.slice (the `name=systemd` v1 hierarchy on hybrid hosts, else
/// v2), removed on drop.
struct UnitCgroup(PathBuf);

impl UnitCgroup {
    fn new(unit: &str) -> Result<UnitCgroup, BenchError> {
        let v1 = Path::new("/sys/fs/cgroup/systemd");
        let root = if v1.join("cgroup.procs").exists() {
            v1
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let dir = root.join("system.slice").join(unit);
        std::fs::create_dir_all(&dir).map_err(BenchError::io("make the unit's cgroup"))?;
        Ok(UnitCgroup(dir))
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The two tables.
pub(crate) fn print(r: &AnyProcess) {
    println!("Programs that link nothing (each in a process of its own)\n");
    println!("| case | p50 | p99 | p50 vs baseline |");
    println!("|---|---:|---:|---:|");
    let [load, get_once] = &r.loads;
    let [run, alone, version] = &r.starts;
    for (row, base) in [(load, get_once), (run, alone), (version, alone)] {
        for (x, ratio) in [
            (row, Some(row.quantile_us(0.5) / base.quantile_us(0.5))),
            (base, None),
        ] {
            if ratio.is_none() && std::ptr::eq(row, version) {
                continue;
            }
            println!(
                "| {} | {:.0} µs | {:.0} µs | {} |",
                x.case,
                x.quantile_us(0.5),
                x.quantile_us(0.99),
                ratio.map_or("baseline".into(), |r| format!("{r:.2}")),
            );
        }
    }
    println!();
}
