//! Hostile and broken clients against the real daemon: slow senders, readers that never read,
//! thousands of connections, random garbage, clients that vanish mid-response, per-uid caps,
//! admin operations racing each other, the socket pulled from under the daemon. After each,
//! the daemon is alive, serves a well-behaved client promptly, and its memory stays bounded.
//! (Malformed frames of every kind are in foundation.rs; a broken or hanging GSM in gsm.rs.)

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use secretd_client::{Client, ErrorCode};
use secretd_proto::Request;
use support::http::{free_port, try_http_get};
use support::{Daemon, RawConn, TestEnv, can_run, euid, is_root, probe_bin, wait_until};

const KEY: &[u8] = b"Omni-Key-Hostile-Test-0123456789!";
/// How much the daemon's memory may grow across one scenario.
const RSS_SLACK_KIB: u64 = 64 * 1024;

/// The daemon serving `trading_api_key` to this uid and uid 65534, with `[daemon]` limits
/// from `limits`.
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

fn rss_kib(daemon: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .expect("daemon RSS")
}

/// How long a fresh client's connect and read may take after an attack: far above a healthy
/// one (well under a millisecond) on a loaded 2-core machine, below the client's 5 s timeout,
/// and far below the stalls these attacks caused (35 s for a huge executable). How fast is
/// the bench's business.
const ANSWERS_AFTER_ATTACK: Duration = Duration::from_secs(3);

/// The daemon is alive, answers a fresh client within [`ANSWERS_AFTER_ATTACK`], and grew by
/// less than the slack since `baseline`.
fn assert_healthy(daemon: &Daemon, baseline_kib: u64, after: &str) {
    let t = Instant::now();
    let client = Client::connect(&daemon.socket).unwrap_or_else(|e| panic!("after {after}: {e}"));
    assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);
    assert!(
        t.elapsed() < ANSWERS_AFTER_ATTACK,
        "after {after}: a read took {:?}",
        t.elapsed()
    );
    let rss = rss_kib(daemon);
    assert!(
        rss < baseline_kib + RSS_SLACK_KIB,
        "after {after}: RSS grew from {baseline_kib} KiB to {rss} KiB"
    );
}

/// A framed `Get` of the test secret.
fn get_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    let get = Request::Get {
        name: "trading_api_key".into(),
    };
    secretd_proto::frame::encode_frame(&get, &mut frame).expect("encode");
    frame
}

fn greeted_raw(daemon: &Daemon) -> UnixStream {
    RawConn::greeted(&daemon.socket).stream
}

#[test]
fn slow_senders_and_short_frames_are_cut_off_without_delaying_others() {
    let env = TestEnv::new();
    let daemon = start(&env, &[]);
    let base = rss_kib(&daemon);
    // 200 slowloris connections: half send one header byte, half a header promising 1000
    // bytes and then 10.
    let mut slow: Vec<UnixStream> = (0..200)
        .map(|i| {
            let mut s = greeted_raw(&daemon);
            if i % 2 == 0 {
                s.write_all(&[9]).expect("write");
            } else {
                s.write_all(&1000u32.to_le_bytes()).expect("write");
                s.write_all(&[1; 10]).expect("write");
            }
            s
        })
        .collect();
    assert_healthy(&daemon, base, "200 slow senders");
    // The frame deadline (5 s) closes every one of them: each read ends at the daemon's close,
    // long before the generous bound here (a read that times out fails the test).
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)
            .expect("the daemon closed a slow sender");
    }
    assert_healthy(&daemon, base, "slow senders were cut off");
}

#[test]
fn a_client_that_never_reads_its_responses_is_closed() {
    let env = TestEnv::new();
    let daemon = start(&env, &[]);
    let base = rss_kib(&daemon);
    let mut greedy = greeted_raw(&daemon);
    let frame = get_frame();
    // Pipeline requests and never read: the daemon's writes back up, its write deadline
    // passes, and it closes the connection (our writes then fail).
    greedy
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(20) {
        if greedy.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            assert_healthy(&daemon, base, "a reader that stopped reading");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the daemon never gave up on it"
    );
    eprintln!("sent {sent} unread requests before the daemon closed the connection");
    assert_healthy(&daemon, base, "a reader that stopped reading");
}

#[test]
fn thousands_of_connections_garbage_and_vanishing_clients() {
    let env = TestEnv::new();
    let daemon = start(
        &env,
        &[("max_connections", 4000), ("max_connections_per_uid", 4000)],
    );
    let base = rss_kib(&daemon);

    let many: Vec<UnixStream> = (0..3000).map(|_| greeted_raw(&daemon)).collect();
    let with_3000 = rss_kib(&daemon);
    eprintln!("RSS {base} KiB idle, {with_3000} KiB with 3000 connections");
    assert_healthy(&daemon, base, "3000 open connections");
    drop(many);

    // Random bytes, with and without a hello first.
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..500 {
        let mut s = if i % 2 == 0 {
            greeted_raw(&daemon)
        } else {
            UnixStream::connect(&daemon.socket).expect("connect")
        };
        let len = (next() % 300) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = s.write_all(&junk);
    }
    assert_healthy(&daemon, base, "500 clients sending garbage");

    // A Get whose name is not UTF-8: a protocol violation, answered and closed.
    let mut c = RawConn::greeted(&daemon.socket);
    let mut body = vec![1, 0, 0, 0];
    body.extend_from_slice(&2u64.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    c.send_body(&body);
    match c.recv() {
        Some(secretd_proto::Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::ProtocolViolation);
        }
        other => panic!("a non-UTF-8 name got {other:?}"),
    }

    // Clients that ask for a value and vanish before (or while) it is written.
    for _ in 0..500 {
        let mut s = greeted_raw(&daemon);
        let frame = get_frame();
        for _ in 0..20 {
            let _ = s.write_all(&frame);
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    assert_healthy(&daemon, base, "500 clients vanishing mid-response");
}

#[test]
fn one_uid_cannot_take_every_connection() {
    let env = TestEnv::new();
    let daemon = start(
        &env,
        &[("max_connections", 10), ("max_connections_per_uid", 3)],
    );
    let held: Vec<Client> = (0..3).map(|_| daemon.connect_admitted()).collect();
    match Client::connect(&daemon.socket) {
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
            assert!(e.to_string().contains("uid"), "{e}");
        }
        Ok(_) => panic!("a fourth connection of one uid was admitted"),
    }
    if can_run(
        is_root(),
        "the check as another uid",
        "root to run as uid 65534",
    ) {
        // Another uid still gets in.
        let socket = daemon.socket.to_str().expect("utf8");
        let out = env.run_as_nobody(&probe_bin(), &[socket, "get", "trading_api_key"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("ok get trading_api_key"), "{stdout}");
    }
    drop(held);
    wait_until("the slots to be given back", Duration::from_secs(5), || {
        Client::connect(&daemon.socket).ok()
    });
}

#[test]
fn admin_operations_racing_each_other_and_reads_keep_the_audit_chain_sound() {
    let env = TestEnv::new();
    let daemon = start(&env, &[]);
    let base = rss_kib(&daemon);
    let socket = daemon.socket.clone();
    let stop = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let socket = socket.clone();
            let env = &env;
            scope.spawn(move || {
                let client = Client::connect(&socket).expect("connect");
                let mut i = 0u64;
                while Instant::now() < stop {
                    i += 1;
                    match (t + i) % 6 {
                        0 => {
                            let value = format!("Omni-Key-Hostile-Test-{i:010}!");
                            env.write_value("trading_api_key", value.as_bytes());
                            client.refresh(Some("trading_api_key")).expect("refresh");
                        }
                        1 => drop(client.audit_tail(50, None).expect("tail")),
                        2 => assert!(client.audit_verify().expect("verify").broken_seq.is_none()),
                        3 => drop(client.status().expect("status")),
                        4 => drop(client.metrics().expect("metrics")),
                        _ => drop(client.get("trading_api_key").expect("get")),
                    }
                }
            });
        }
    });
    env.write_value("trading_api_key", KEY);
    let admin = Client::connect(&socket).expect("connect");
    admin.refresh(Some("trading_api_key")).expect("refresh");
    let verified = admin.audit_verify().expect("verify");
    assert!(verified.broken_seq.is_none(), "{verified:?}");
    assert!(verified.checked > 10, "{verified:?}");
    assert_healthy(&daemon, base, "racing admin operations");
}

#[test]
fn the_daemon_exits_when_its_socket_is_removed_or_replaced() {
    for replace in [false, true] {
        let env = TestEnv::new();
        let mut daemon = start(&env, &[]);
        std::fs::remove_file(&daemon.socket).expect("remove socket");
        if replace {
            let _impostor =
                std::os::unix::net::UnixListener::bind(&daemon.socket).expect("impostor");
            let status = daemon.wait_exit(Duration::from_secs(10));
            let status = status.expect("the daemon kept running with its socket replaced");
            assert!(!status.success());
            assert!(
                daemon.socket.exists(),
                "the daemon removed someone else's socket"
            );
        } else {
            let status = daemon.wait_exit(Duration::from_secs(10));
            let status = status.expect("the daemon kept running without its socket");
            assert!(!status.success());
        }
        assert!(daemon.log().contains("socket.lost"), "{}", daemon.log());
    }
}

#[test]
fn a_hello_from_a_slow_client_does_not_hold_a_slot_forever() {
    let env = TestEnv::new();
    let daemon = start(
        &env,
        &[("max_connections", 2), ("max_connections_per_uid", 2)],
    );
    // Let wait_ready's probe give its slot back (the connection count is not observable
    // without taking a slot).
    std::thread::sleep(Duration::from_millis(200));
    // Two connections that never say hello fill the daemon, until the hello deadline (5 s).
    let silent: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&daemon.socket).expect("connect"))
        .collect();
    // The daemon accepts them in its own time; a client is refused once it has.
    wait_until("the limit to apply", Duration::from_secs(2), || {
        Client::connect(&daemon.socket).is_err().then_some(())
    });
    wait_until(
        "the hello deadline to free the silent connections' slots",
        Duration::from_secs(10),
        || Client::connect(&daemon.socket).ok(),
    );
    drop(silent);
}

/// The open-files limits of `pid` (soft, hard), from /proc.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn idle_floods_of_the_metrics_port_and_the_socket_leave_reads_and_scrapes_working() {
    let env = TestEnv::new();
    let port = free_port();
    let config = env
        .conf()
        .shared_with_nobody()
        .daemon("metrics_listen", format!("127.0.0.1:{port}"))
        .file_secret("trading_api_key", KEY)
        .policy(&[euid(), 65534], &["*"], &[])
        .build();
    // A soft limit of 1024, as many distributions set it: the daemon raises it to the hard one.
    let daemon = env.spawn_wrapped(
        &config,
        "secretd.toml",
        &[],
        &["prlimit", "--nofile=1024:8192"],
    );
    daemon.wait_ready();
    assert_eq!(open_files_limit(daemon.pid()), (8192, 8192));

    // 1,100 idle TCP connections: the first 64 hold HTTP slots until the header deadline, the
    // rest are closed at once; none costs the daemon a descriptor it needs.
    let tcp: Vec<_> = (0..1100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let client = daemon.connect_admitted();
    assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);
    wait_until("/metrics to answer again", Duration::from_secs(20), || {
        try_http_get(port, "/metrics")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    drop(tcp);

    // 1,100 idle socket connections from one uid: its cap (a quarter) holds, and the daemon still
    // has descriptors for everyone else.
    let uds: Vec<_> = (0..1100)
        .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
        .collect();
    assert!(uds.len() >= 512);
    if can_run(
        is_root(),
        "the check as another uid",
        "root to run as uid 65534",
    ) {
        let socket = daemon.socket.to_str().expect("utf8");
        let out = env.run_as_nobody(&probe_bin(), &[socket, "get", "trading_api_key"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("ok get trading_api_key"), "{stdout}");
    }
    assert!(
        try_http_get(port, "/healthz").is_ok_and(|(code, _)| code == 200),
        "the HTTP listener still answers"
    );
    assert!(
        !daemon.log().contains("Too many open files"),
        "{}",
        daemon.log()
    );
}

#[test]
fn connection_limits_must_fit_under_the_open_files_limit() {
    let env = TestEnv::new();
    let conf = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me();
    // The default max_connections (1024) does not fit under 512 open files: lowered, logged.
    let wrapper = ["prlimit", "--nofile=512:512"];
    let daemon = env.spawn_wrapped(&conf.build(), "default.toml", &[], &wrapper);
    daemon.wait_ready();
    let log = daemon.wait_for_log("limits.clamped");
    assert!(log.contains("max_connections=256"), "{log}");
    drop(daemon);

    // An explicit one that does not fit refuses startup with one clear line.
    let explicit = conf.daemon("max_connections", 1024).build();
    let mut daemon = env.spawn_wrapped(&explicit, "explicit.toml", &[], &wrapper);
    let status = daemon.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        daemon
            .log()
            .contains("does not fit under the open-files limit of 512"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_denial_flood_from_another_uid_grows_the_database_and_the_log_only_a_little() {
    if !can_run(is_root(), "a_denial_flood", "root to flood as another uid") {
        return;
    }
    let env = TestEnv::new();
    // uid 65534 has no policy at all: every read it asks for is refused.
    let config = env
        .conf()
        .shared_with_nobody()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let db = env.path("secretd.redb");
    let db_before = std::fs::metadata(&db).expect("db").len();
    // The daemon under test logs at debug; production logs at info, and that is what counts.
    let info_lines = || {
        daemon
            .log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .count()
    };
    let log_before = info_lines();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let (socket, stop) = (daemon.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = Client::connect(&socket).expect("connect");
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(
                    client.get("trading_api_key").expect("a good read").expose(),
                    KEY
                );
                reads += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            reads
        })
    };
    let socket = daemon.socket.to_str().expect("utf8");
    let out = env.run_as_nobody(&probe_bin(), &[socket, "flood", "20"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = good.join().expect("the good client never failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let requests: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("flood output: {stdout}"));
    assert!(
        requests > 600,
        "the flood was too slow to test anything: {stdout}"
    );
    assert!(reads > 100, "the good client was starved: {reads} reads");

    let db_growth = std::fs::metadata(&db)
        .expect("db")
        .len()
        .saturating_sub(db_before);
    let log_growth = info_lines() - log_before;
    eprintln!(
        "{}: database +{db_growth} bytes, log +{log_growth} lines, {reads} good reads",
        stdout.trim()
    );
    assert!(
        db_growth < 2 * 1024 * 1024,
        "database grew {db_growth} bytes"
    );
    assert!(log_growth < 200, "log grew {log_growth} lines");
}
