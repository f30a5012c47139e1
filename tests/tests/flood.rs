//! Fair under flood: no local user can starve another. Two uids cannot take every seat, the
//! operator keeps a reserve, refusals are logged as counted summaries, a client trickling bytes
//! holds its seat no longer than the frame deadline, and silent clients cannot lock scrapers
//! out of the metrics port. Each against the real daemon, with clients of other uids run
//! through setpriv.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use secretd_client::Client;
use support::http::{free_port, try_http_get};
use support::{Daemon, RawConn, TestEnv, can_run, euid, is_root, probe_bin, wait_until};

const KEY: &[u8] = b"Omni-Key-Flood-Test-0123456789!";

/// The daemon serving `trading_api_key` to this uid and uid 65534 (its socket shared with
/// group 65534), with `[daemon]` limits from `limits`.
fn start(env: &TestEnv, limits: &[(&str, i64)]) -> Daemon {
    let mut conf = env
        .conf()
        .shared_with_nobody()
        .file_secret("trading_api_key", KEY)
        .policy(&[euid(), 65534], &["*"], &[]);
    for (key, value) in limits {
        conf = conf.daemon(key, *value);
    }
    env.start(&conf.build())
}

/// A process of `uid` (group 65534, which the test socket admits) holding connections until
/// dropped.
struct Holder {
    /// The probe (`secretd-probe SOCKET hold N`); it exits when its stdin closes.
    child: std::process::Child,
    /// How many connections the daemon admitted.
    admitted: usize,
}

impl Holder {
    fn start(env: &TestEnv, daemon: &Daemon, uid: u32, n: usize) -> Holder {
        use std::io::BufRead as _;
        let probe = env.runnable_copy(&probe_bin());
        let mut child = std::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .args(["--regid=65534", "--clear-groups"])
            .arg(probe)
            .arg(&daemon.socket)
            .args(["hold", &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the probe as another uid");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("the probe's answer");
        let admitted = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("probe said {line:?}"));
        Holder { child, admitted }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn two_uids_cannot_lock_out_a_third_and_admins_keep_a_reserve() {
    if !can_run(
        is_root(),
        "two_uids_cannot_lock_out_a_third_and_admins_keep_a_reserve",
        "root to run clients as other uids",
    ) {
        return;
    }
    let env = TestEnv::new();
    // 12 connections, 4 of them kept for admins; one uid may hold a quarter (3) by default.
    let daemon = start(
        &env,
        &[("max_connections", 12), ("admin_reserved_connections", 4)],
    );
    let a = Holder::start(&env, &daemon, 65533, 10);
    let b = Holder::start(&env, &daemon, 65532, 10);
    assert_eq!((a.admitted, b.admitted), (3, 3), "each uid gets a quarter");
    // A third uid still gets in.
    let socket = daemon.socket.to_str().expect("utf8");
    let out = env.run_as_nobody(&probe_bin(), &[socket, "get", "trading_api_key"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok get trading_api_key"), "{stdout}");
    // The shared seats fill up (3 + 3 + 2 of 8), and a fourth uid is refused over and over...
    let c = Holder::start(&env, &daemon, 65531, 10);
    assert_eq!(
        c.admitted, 2,
        "only the shared seats are left to non-admins"
    );
    let flood = Holder::start(&env, &daemon, 65530, 300);
    assert_eq!(flood.admitted, 0);
    // ...while the operator still gets in, from the reserve.
    let admin = Client::connect(&daemon.socket).expect("an admin connects from the reserve");
    admin.status().expect("status");
    let metrics = admin.metrics().expect("metrics");
    let refused = |reason: &str| -> f64 {
        let key = format!("omni_secretd_connections_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(refused("total") >= 300.0 + 8.0, "{metrics}");
    assert!(refused("per_uid") >= 14.0, "{metrics}");
    // Hundreds of refusals make a few summary lines, each with its count, not one per
    // connection.
    let log = wait_until("the refusal summary", Duration::from_secs(30), || {
        let log = daemon.log();
        log.contains("uid=65530").then_some(log)
    });
    let lines = log.matches("connections.refused").count();
    assert!(
        lines <= 8,
        "{lines} refusal lines for 300+ refusals:\n{log}"
    );
    assert!(log.contains("count=300"), "{log}");
    drop((a, b, c, flood));
}

#[test]
fn a_trickle_of_bytes_keeps_no_seat_past_the_frame_deadline() {
    let env = TestEnv::new();
    let conf = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .daemon("frame_deadline", "1s")
        .daemon("max_connections_per_uid", 1);
    let daemon = env.start(&conf.build());
    for in_hello in [true, false] {
        let what = if in_hello { "the hello" } else { "a request" };
        // The uid's only seat may still be held by the connection before (the daemon gives it
        // back when it sees the close): a connection made meanwhile is answered `Busy` and
        // closed. That is a refusal, not a cut-off, so the trickle starts again on a new one.
        let cut_off = wait_until(
            format!("a seated trickler of {what} to be seen out").as_str(),
            Duration::from_secs(60),
            || {
                let mut conn = if in_hello {
                    RawConn::try_connect(&daemon.socket)?
                } else {
                    RawConn::try_greeted(&daemon.socket).ok()?
                };
                let cut_off = trickle_frame(&mut conn.stream);
                // A deadline cut-off closes without a word; a refusal answers `Busy` first.
                (!cut_off || conn.recv().is_none()).then_some(cut_off)
            },
        );
        assert!(cut_off, "a client trickling {what} kept its connection");
        // Its seat (the uid's only one) is free again.
        wait_until(
            "the trickler's seat to be given back",
            Duration::from_secs(10),
            || Client::connect(&daemon.socket).ok(),
        );
    }
}

/// Sends a frame header promising 64 bytes, then one byte every 200 ms (13 s in all), and
/// whether the daemon closed the connection within 4.5 s: far above the test's 1 s frame
/// deadline, below the default of 5 s, so a cut-off shows the setting applies.
fn trickle_frame(stream: &mut UnixStream) -> bool {
    let started = Instant::now();
    if stream.write_all(&64u32.to_le_bytes()).is_err() {
        return true;
    }
    loop {
        if started.elapsed() > Duration::from_millis(4500) {
            return false;
        }
        if stream.write_all(&[1]).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_slow_client_flood_of_the_metrics_port_leaves_scrapes_working() {
    let env = TestEnv::new();
    let port = free_port();
    let config = env
        .conf()
        .daemon("metrics_listen", format!("127.0.0.1:{port}"))
        .daemon("http_max_connections", 8)
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    wait_until("/metrics to answer", Duration::from_secs(10), || {
        try_http_get(port, "/metrics")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    // Connections that never send a request, opened without pause for the whole test: the
    // eight slots are always full of them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    held.push(s);
                }
                if held.len() > 400 {
                    held.drain(..200);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            held.len()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let answered = (0..20)
        .filter(|_| {
            std::thread::sleep(Duration::from_millis(100));
            try_http_get(port, "/metrics").is_ok_and(|(code, _)| code == 200)
        })
        .count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = flood.join().expect("flood");
    eprintln!("{answered} of 20 scrapes answered while {held} silent connections were open");
    assert!(
        answered >= 19,
        "only {answered} of 20 scrapes answered under a slow-client flood"
    );
    drop(daemon);
}
