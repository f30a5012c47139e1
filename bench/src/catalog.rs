//! A full catalog: [`SECRETS`] GSM secrets against the fake, as a host with a large catalog
//! runs. Measured: the time from start to serving every one of them (last-known-good off; on,
//! with GSM hanging, so only the sealed copy can serve), `status` latency with that many rows,
//! the daemon's memory, and [`WATCHERS`] watch connections held open while 4 readers read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use secretd_client::{AsyncClient, Client, EntryState};
use secretd_gsm_fake::{FakeGsm, Fault};

use crate::error::BenchError;
use crate::notes::Notes;
use crate::stats::Row;
use crate::{cases, fixture};

/// Secrets in the catalog.
pub(crate) const SECRETS: usize = 1024;
/// Watch connections held open in the last measurement.
pub(crate) const WATCHERS: usize = 1000;
/// Names each watcher watches (a bot follows the few keys it uses).
const NAMES_PER_WATCHER: usize = 8;
/// How long serving the whole catalog may take before the measurement counts as failed.
const SERVE_DEADLINE: Duration = Duration::from_secs(60);
/// `status` calls timed.
const STATUS_SAMPLES: usize = 50;

/// The catalog's figures.
#[derive(Debug, Default)]
pub(crate) struct CatalogReport {
    /// Start to every secret servable, last-known-good off.
    pub cold: Option<Duration>,
    /// Start to every secret servable from the sealed copy, GSM hanging.
    pub from_lkg: Option<Duration>,
    /// `status` over the socket, p50.
    pub status_p50: Option<Duration>,
    /// `secretd status --json`, process included, p50.
    pub cli_status_p50: Option<Duration>,
    /// RSS serving every secret, KiB.
    pub rss_kib: Option<u64>,
    /// RSS with the watchers connected too, KiB.
    pub rss_watchers_kib: Option<u64>,
    /// 4 readers while the watchers are connected.
    pub readers: Option<Row>,
}

/// The catalog name of secret `i`.
fn name(i: usize) -> String {
    format!("bench_{i:04}")
}

/// Its resource in the fake.
fn resource(i: usize) -> String {
    format!("projects/bench/secrets/catalog-{i:04}")
}

/// One daemon of the measurement; killed when dropped.
struct Running {
    /// The process.
    child: Child,
    /// Its socket.
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Running {
    fn rss_kib(&self) -> Option<u64> {
        fixture::rss_kib(&self.child)
    }
}

/// Writes the config (with the sealed last-known-good copy when `lkg`) and starts a daemon.
fn start(secretd: &Path, dir: &Path, fake: &FakeGsm, lkg: bool) -> Result<Running, BenchError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let socket = dir.join("run/secretd.sock");
    std::fs::create_dir_all(dir.join("run")).map_err(BenchError::io("catalog dir"))?;
    let mut daemon = format!(
        "socket = \"{}\"\ndb = \"{}\"\nadmin_uids = [{uid}]\n\
         max_connections = 2048\nmax_connections_per_uid = 2048\n",
        socket.display(),
        dir.join("secretd.redb").display()
    );
    if lkg {
        let key = dir.join("lkg.key");
        fixture::write_key(&key, 0x5a)?;
        daemon += &format!(
            "last_known_good = \"{}\"\nlast_known_good_key = \"{}\"\n",
            dir.join("lkg.sealed").display(),
            key.display()
        );
    }
    let mut config = format!(
        "[daemon]\n{daemon}\n[gsm]\nendpoint = \"{}\"\nanonymous = true\n\n",
        fake.endpoint()
    );
    for i in 0..SECRETS {
        config += &format!(
            "[[secret]]\nname = \"{}\"\nsource = \"gsm\"\ngcp_secret = \"{}\"\n\n",
            name(i),
            resource(i)
        );
    }
    config += &format!("[[policy]]\nuids = [{uid}]\nallow = [\"*\"]\n");
    let path = dir.join("secretd.toml");
    std::fs::write(&path, config).map_err(BenchError::io("catalog config"))?;
    let child = fixture::spawn(secretd, &path, &dir.join("secretd.log"))?;
    Ok(Running { child, socket })
}

/// Waits until every secret is servable (fresh, or stale within `max_stale`), polling
/// `status`; returns how long that took from `since`.
fn serving_all(socket: &Path, since: Instant, what: &str) -> Result<Duration, BenchError> {
    let deadline = since + SERVE_DEADLINE;
    loop {
        let all = Client::connect(socket)
            .and_then(|c| c.status())
            .is_ok_and(|rows| {
                rows.len() == SECRETS
                    && rows
                        .iter()
                        .all(|r| matches!(r.state, EntryState::Fresh | EntryState::Stale))
            });
        if all {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            let servable = Client::connect(socket)
                .and_then(|c| c.status())
                .map(|rows| {
                    let n = rows
                        .iter()
                        .filter(|r| matches!(r.state, EntryState::Fresh | EntryState::Stale))
                        .count();
                    format!("{n} of {} servable", rows.len())
                })
                .unwrap_or_else(|e| format!("status failed: {e}"));
            return Err(BenchError::from(format!(
                "{what}: not every one of {SECRETS} secrets was servable within {}s ({servable})",
                SERVE_DEADLINE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(mut samples: Vec<Duration>) -> Option<Duration> {
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

/// Runs the whole measurement in `root`; what fails is reported in `notes` and left out.
pub(crate) fn measure(
    secretd: &Path,
    root: &Path,
    reads: usize,
    notes: &mut Notes,
) -> CatalogReport {
    let mut report = CatalogReport::default();
    if let Err(e) = run(secretd, root, reads, &mut report) {
        notes.fail(format!("catalog: {e}"));
    }
    report
}

fn run(
    secretd: &Path,
    root: &Path,
    reads: usize,
    report: &mut CatalogReport,
) -> Result<(), BenchError> {
    let fake = FakeGsm::start().map_err(BenchError::io("fake gsm"))?;
    for i in 0..SECRETS {
        let value = format!("Omni-Catalog-{i:04}-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ!");
        fake.add_version(&resource(i), value.as_bytes());
    }

    // Cold: nothing sealed, every secret fetched from GSM.
    let cold_dir = root.join("catalog-cold");
    let started = Instant::now();
    let daemon = start(secretd, &cold_dir, &fake, false)?;
    report.cold = Some(serving_all(&daemon.socket, started, "cold start")?);
    drop(daemon);

    // Last-known-good: a first run seals the catalog; the second starts with GSM hanging.
    let lkg_dir = root.join("catalog-lkg");
    let first = start(secretd, &lkg_dir, &fake, true)?;
    serving_all(&first.socket, Instant::now(), "sealing run")?;
    let sealed = lkg_dir.join("lkg.sealed");
    let deadline = Instant::now() + SERVE_DEADLINE;
    while !sealed.exists() {
        if Instant::now() > deadline {
            return Err("the last-known-good file was never written".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Sealed after every fetch: give the last ones a moment to be written.
    std::thread::sleep(Duration::from_millis(500));
    drop(first);
    fake.set_fault(Some(Fault::Hang));
    let started = Instant::now();
    let daemon = start(secretd, &lkg_dir, &fake, true)?;
    let from_lkg = serving_all(&daemon.socket, started, "start from last-known-good");
    drop(daemon);
    fake.set_fault(None);
    report.from_lkg = Some(from_lkg?);

    // Status, memory, watchers and readers, on the cold daemon started again.
    let daemon = start(secretd, &cold_dir, &fake, false)?;
    serving_all(&daemon.socket, Instant::now(), "restart")?;
    let client = Client::connect(&daemon.socket).map_err(BenchError::client("secretd"))?;
    let mut samples = Vec::with_capacity(STATUS_SAMPLES);
    for _ in 0..STATUS_SAMPLES {
        let t = Instant::now();
        let rows = client.status().map_err(BenchError::client("secretd"))?;
        samples.push(t.elapsed());
        if rows.len() != SECRETS {
            return Err(BenchError::from(format!(
                "status listed {} rows",
                rows.len()
            )));
        }
    }
    report.status_p50 = median(samples);
    let mut samples = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = Command::new(secretd)
            .args(["status", "--json", "--socket"])
            .arg(&daemon.socket)
            .output()
            .map_err(BenchError::io("secretd status"))?;
        samples.push(t.elapsed());
        if !out.status.success() {
            return Err("secretd status --json failed".into());
        }
    }
    report.cli_status_p50 = median(samples);
    cases::settle();
    report.rss_kib = daemon.rss_kib();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    let watches = runtime.block_on(async {
        let client = AsyncClient::connect(&daemon.socket)
            .await
            .map_err(BenchError::client("secretd"))?;
        let mut watches = Vec::with_capacity(WATCHERS);
        for w in 0..WATCHERS {
            let names: Vec<String> = (0..NAMES_PER_WATCHER)
                .map(|k| name((w * NAMES_PER_WATCHER + k) % SECRETS))
                .collect();
            watches.push(
                client
                    .watch(names)
                    .await
                    .map_err(BenchError::client("secretd"))?,
            );
        }
        Ok::<_, BenchError>(watches)
    })?;
    cases::settle();
    report.rss_watchers_kib = daemon.rss_kib();
    report.readers = Some(cases::rust_get_threads_of(
        "rust-client-get x4, 1,000 watchers open",
        &daemon.socket,
        &name(0),
        4,
        reads,
    ));
    drop(watches);
    drop(runtime);
    Ok(())
}

/// Prints the catalog table and its targets.
pub(crate) fn print_table(report: &CatalogReport, raw_x4: Option<&Row>) {
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!("catalog: {SECRETS} GSM secrets (the fake), {WATCHERS} watchers\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| start to serving all {SECRETS}, last-known-good off | {} |",
        ms(report.cold)
    );
    println!(
        "| start to serving all {SECRETS} from last-known-good, GSM hanging | {} |",
        ms(report.from_lkg)
    );
    println!(
        "| status over the socket ({SECRETS} rows), p50 | {} |",
        ms(report.status_p50)
    );
    println!(
        "| `secretd status --json` (process included), p50 | {} |",
        ms(report.cli_status_p50)
    );
    println!("| RSS, {SECRETS} secrets | {} |", mib(report.rss_kib));
    println!(
        "| RSS, {SECRETS} secrets and {WATCHERS} watchers | {} |",
        mib(report.rss_watchers_kib)
    );
    if let Some(r) = &report.readers {
        let vs = raw_x4.map_or(String::new(), |raw| {
            format!(" ({:.2}× raw x4)", r.ops_per_sec / raw.ops_per_sec)
        });
        println!(
            "| 4 readers with {WATCHERS} watchers open: ops/s, p99.9 | {:.0}{vs}, {:.1} µs |",
            r.ops_per_sec,
            r.quantile_us(0.999)
        );
    }
    println!();
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    for (what, d) in [
        ("last-known-good off", report.cold),
        ("from last-known-good", report.from_lkg),
    ] {
        if let Some(d) = d {
            println!(
                "- {SECRETS} secrets serving, {what} = {:.2} s (≤ 2: {})",
                d.as_secs_f64(),
                check(d <= Duration::from_secs(2))
            );
        }
    }
    if let Some(k) = report.rss_watchers_kib {
        let mib = k as f64 / 1024.0;
        println!(
            "- RSS with {SECRETS} secrets and {WATCHERS} watchers = {mib:.1} MiB (≤ 40: {})",
            check(mib <= 40.0)
        );
    }
    println!();
}
