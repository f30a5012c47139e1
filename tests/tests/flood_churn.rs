//! Fair under churn: connections opened and closed as fast as a local user can. A connect/close
//! flood from two uids leaves a third reading and the operator answered, without a log line
//! per connection; a bot that reconnects for every read costs the audit trail a few records
//! a window, not one per read, and what the read ledger still counts is written at shutdown;
//! a client's own churn (many tasks, cancellations) never fails a call. Each against the real
//! daemon, with other uids run through setpriv.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secretd_client::{AsyncClient, Client};
use support::{Daemon, TestEnv, can_run, euid, is_root, probe_bin, wait_until};

const KEY: &[u8] = b"Omni-Key-Churn-Test-0123456789!";

/// The daemon serving `trading_api_key` to this uid and uid 65534 (its socket shared with
/// group 65534), with `[daemon]` settings from `settings`.
fn start(env: &TestEnv, settings: &[(&str, &str)]) -> Daemon {
    let mut conf = env
        .conf()
        .shared_with_nobody()
        .file_secret("trading_api_key", KEY)
        .policy(&[euid(), 65534], &["*"], &[]);
    for (key, value) in settings {
        conf = conf.daemon(key, *value);
    }
    env.start(&conf.build())
}

/// The probe run as `uid` (group 65534, which the test socket admits) with `args`.
fn probe_as(env: &TestEnv, uid: u32, daemon: &Daemon, args: &[&str]) -> Child {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .args(["--regid=65534", "--clear-groups"])
        .arg(env.runnable_copy(&probe_bin()))
        .arg(&daemon.socket)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the probe as another uid")
}

/// The probe's output once it exits.
fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("probe");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two numbers after `word` on the probe's first line.
fn counts(out: &str, word: &str) -> (u64, u64) {
    let mut fields = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(word))
        .unwrap_or_else(|| panic!("probe said {out:?}"))
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("a count"));
    (
        fields.next().expect("first"),
        fields.next().expect("second"),
    )
}

#[test]
fn a_connect_close_flood_leaves_other_uids_and_the_operator_served() {
    if !can_run(
        is_root(),
        "a_connect_close_flood_leaves_other_uids_and_the_operator_served",
        "root to run clients as other uids",
    ) {
        return;
    }
    let env = TestEnv::new();
    let daemon = start(&env, &[]);
    // What the journal gets at the default level (test daemons log debug lines too).
    let journal_lines = || {
        daemon
            .log()
            .lines()
            .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            .count()
    };
    let log_before = journal_lines();
    // Two uids connect and close as fast as four threads each can, for 8 s...
    let floods = [65530, 65531].map(|uid| probe_as(&env, uid, &daemon, &["churn", "8", "4"]));
    std::thread::sleep(Duration::from_millis(500));
    // ...while a third reads on a new connection each time, and the operator asks for status.
    let victim = probe_as(&env, 65534, &daemon, &["reconnect", "6", "trading_api_key"]);
    for _ in 0..5 {
        let admin = Client::connect(&daemon.socket).expect("the operator connects");
        assert!(!admin.status().expect("status answers").is_empty());
        std::thread::sleep(Duration::from_millis(500));
    }
    let victim = finish(victim);
    let (ok, failed) = counts(&victim, "reconnect ");
    assert!(
        ok > 0 && failed == 0,
        "the victim under a connect flood: {victim}"
    );
    for flood in floods {
        let out = finish(flood);
        let (connects, _) = counts(&out, "churn ");
        assert!(connects > 0, "the flood never connected: {out}");
    }
    // Thousands of connections, and a handful of log lines at most.
    let added = journal_lines().saturating_sub(log_before);
    assert!(
        added < 300,
        "{added} log lines for a connect flood:\n{}",
        daemon.log()
    );
}

#[test]
fn reconnecting_for_every_read_costs_the_audit_trail_records_per_window_not_per_read() {
    if !can_run(
        is_root(),
        "reconnecting_for_every_read_costs_the_audit_trail_records_per_window_not_per_read",
        "root to run a client as another uid",
    ) {
        return;
    }
    let env = TestEnv::new();
    let daemon = start(&env, &[("audit_read_window", "2s")]);
    let out = finish(probe_as(
        &env,
        65534,
        &daemon,
        &["reconnect", "4", "trading_api_key"],
    ));
    let (reads, failed) = counts(&out, "reconnect ");
    assert!(
        reads >= 100 && failed == 0,
        "too few reads to show anything: {out}"
    );
    let admin = Client::connect(&daemon.socket).expect("connect");
    let records = wait_until(
        "every read of uid 65534 counted in the audit trail",
        Duration::from_secs(30),
        || {
            let records: Vec<_> = admin
                .audit_tail(10_000, Some("trading_api_key"))
                .expect("tail")
                .into_iter()
                .filter(|r| r.uid == 65534 && r.action == "read" && r.result == "ok")
                .collect();
            (records.iter().map(|r| r.count).sum::<u64>() == reads).then_some(records)
        },
    );
    // 4 s of reads in 2 s windows: the first read at once and a count per window (three or
    // four), with room for a slow machine; one per read would be thousands.
    assert!(
        records.len() <= 12,
        "{} records for {reads} reads on as many connections",
        records.len()
    );
}

#[test]
fn many_tasks_sharing_an_async_client_never_fail_through_their_own_cancellations() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let (calls, failures) = runtime.block_on(async {
        let client = AsyncClient::connect(&daemon.socket).await.expect("connect");
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let (mut calls, mut failures) = (0u32, Vec::new());
                    for _ in 0..300 {
                        // One call in four is cancelled after a random moment, mid-exchange or
                        // before it starts; the others must all succeed.
                        if fastrand::u8(..4) == 0 {
                            let cut = Duration::from_micros(fastrand::u64(..300));
                            let _ = tokio::time::timeout(cut, client.get("trading_api_key")).await;
                            continue;
                        }
                        calls += 1;
                        match client.get("trading_api_key").await {
                            Ok(secret) => assert_eq!(secret.expose(), KEY),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        let mut all = (0u32, Vec::new());
        for task in tasks {
            let (calls, failures) = task.await.expect("task");
            all.0 += calls;
            all.1.extend(failures);
        }
        all
    });
    assert!(calls > 10_000, "{calls}");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    drop(daemon);
}

#[test]
fn counted_reads_reach_the_audit_trail_at_shutdown_before_their_window_ends() {
    let env = TestEnv::new();
    // The default window (60 s): nothing counted is written by a window's end in this test.
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let mut daemon = env.start(&config);
    for _ in 0..25 {
        Client::get_once(&daemon.socket, "trading_api_key").expect("get_once");
    }
    assert!(daemon.stop().success());
    let daemon = env.start(&config);
    let admin = Client::connect(&daemon.socket).expect("admin");
    let reads: Vec<_> = admin
        .audit_tail(1000, Some("trading_api_key"))
        .expect("tail")
        .into_iter()
        .filter(|r| r.action == "read" && r.result == "ok")
        .collect();
    assert_eq!(
        reads.iter().map(|r| r.count).sum::<u64>(),
        25,
        "the first read at once, the other 24 written at shutdown: {reads:?}"
    );
    assert_eq!(reads.len(), 2, "{reads:?}");
}
