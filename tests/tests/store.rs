//! The redb store end to end: metadata and rotation across restarts, the audit trail's
//! contents, tamper detection on the real database file, pruning, crashes, exclusivity.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use secretd_client::{Client, RotationStep};
use secretd_gsm_fake::FakeGsm;
use support::{TestEnv, can_run, cli, euid, is_root, probe_bin, wait_until};

const API_KEY: &str = "projects/apex-test/secrets/omni-trading-api-key";
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const KEY: &[u8] = b"Omni-Key-1234567890-abcdef!";

fn gsm_env(fake: &FakeGsm) -> (TestEnv, String) {
    let env = TestEnv::new();
    let config = env
        .conf()
        .shared_with_nobody()
        .gsm_authenticated(fake)
        .gsm_secret("trading_api_key", API_KEY)
        .with("owner", "trading-platform")
        .file_secret("webhook_shared_secret", b"Webhook-Secret-0000-XYZ!")
        .readable_by_me()
        .build();
    (env, config)
}

/// A config serving only `trading_api_key` (a file, value [`KEY`]) to this uid.
fn key_only(env: &TestEnv) -> String {
    env.conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build()
}

fn run_cli(socket: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--socket", socket]);
    let out = cli(&all, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fake with versions 1 and 2 of the API key, and a daemon serving it from `latest`.
fn two_versions() -> (FakeGsm, TestEnv, String) {
    let fake = FakeGsm::start().expect("fake");
    fake.add_version(API_KEY, b"Omni-Key-v1-AAAA-1111!");
    fake.add_version(API_KEY, b"Omni-Key-v2-BBBB-2222!");
    let (env, config) = gsm_env(&fake);
    (fake, env, config)
}

#[test]
fn invalid_rotation_steps_are_refused_with_a_clear_line_and_audited() {
    let (_fake, env, config) = two_versions();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "2");
    for (args, expect) in [
        (
            vec!["rotation", "promote", "trading_api_key"],
            "not rotating",
        ),
        (vec!["rotation", "abort", "trading_api_key"], "not rotating"),
        (
            vec![
                "rotation",
                "begin",
                "webhook_shared_secret",
                "--version",
                "1",
            ],
            "only gsm",
        ),
        (
            vec!["rotation", "begin", "trading_api_key", "--version", "99"],
            "could not be fetched",
        ),
        (
            vec!["rotation", "begin", "trading_api_key", "--version", "x"],
            "not a GSM version",
        ),
    ] {
        let (code, _, err) = run_cli(&socket, &args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert_eq!(
        client.get("trading_api_key").expect("get").version(),
        "2",
        "unchanged"
    );
    // Refused transitions are audited (committed with the next batch: wait for it).
    wait_until(
        "refused transitions audited",
        Duration::from_secs(10),
        || {
            let (code, tail, _) = run_cli(
                &socket,
                &["audit", "tail", "-n", "200", "--secret", "trading_api_key"],
            );
            (code == 0 && tail.contains("failed")).then_some(())
        },
    );
}

#[test]
fn a_rotation_and_its_pin_survive_a_restart_and_promote_serves_only_the_validated_version() {
    let (_fake, env, config) = two_versions();
    let mut daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let client = Client::connect(&daemon.socket).expect("connect");
    let row = &client.status().expect("status")[0];
    assert_eq!(row.metadata_status.as_deref(), Some("active"));
    let due = row.rotation_due_at_ms.expect("due");

    let (code, out, err) = run_cli(
        &socket,
        &["rotation", "begin", "trading_api_key", "--version", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status rotating, version 1"), "{out}");
    assert_eq!(
        client.get("trading_api_key").expect("get").expose(),
        b"Omni-Key-v1-AAAA-1111!"
    );
    let (code, _, err) = run_cli(
        &socket,
        &["rotation", "begin", "trading_api_key", "--version", "2"],
    );
    assert!(code == 1 && err.contains("already rotating"), "{err}");

    // The rotation, its pin and the metadata survive a restart.
    assert!(daemon.stop().success());
    let _daemon = env.start(&config);
    // A read waits for the first fetch; status does not.
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    let row = client.status().expect("status").remove(0);
    assert_eq!(row.metadata_status.as_deref(), Some("rotating"));
    assert_eq!(row.version.as_deref(), Some("1"));
    assert_eq!(row.rotation_due_at_ms, Some(due));

    // Promoting would return to `latest`, which GSM resolves to 2, not the validated 1: refused,
    // naming both, and nothing moves.
    let refused = client
        .rotation("trading_api_key", RotationStep::Promote)
        .expect_err("latest is not the validated version");
    let why = refused.to_string();
    assert!(
        why.contains("version 2") && why.contains("validated version 1"),
        "{why}"
    );
    let row = client.status().expect("status").remove(0);
    assert_eq!(row.metadata_status.as_deref(), Some("rotating"));
    assert_eq!(row.version.as_deref(), Some("1"));
    let aborted = client
        .rotation("trading_api_key", RotationStep::Abort)
        .expect("abort");
    assert_eq!(aborted.version.as_deref(), Some("2"), "back on latest");

    // Validating what `latest` resolves to promotes.
    client
        .rotation(
            "trading_api_key",
            RotationStep::Begin {
                version: "2".into(),
            },
        )
        .expect("begin 2");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let promoted = client
        .rotation("trading_api_key", RotationStep::Promote)
        .expect("promote");
    assert_eq!(promoted.metadata_status.as_deref(), Some("active"));
    assert_eq!(promoted.version.as_deref(), Some("2"));
    assert_eq!(promoted.active_version, None, "latest needs no pin");
    let rotated = promoted.last_rotated_at_ms.expect("last rotated");
    assert!(rotated >= before);
    assert_eq!(
        promoted.rotation_due_at_ms,
        Some(rotated + 365 * 86_400_000),
        "due 365 days after the promote"
    );
    assert!(due > 0);
    let err = client
        .rotation("trading_api_key", RotationStep::Abort)
        .expect_err("not rotating");
    assert!(err.to_string().contains("not rotating"));

    if can_run(
        is_root(),
        "the check as another uid",
        "root to run as uid 65534",
    ) {
        let out = env.run_as_nobody(&probe_bin(), &[&socket, "refresh", "trading_api_key"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("permission_denied"));
    }

    // Records nobody waited for (the first read, a refusal) come with the next batch.
    let actions = [
        "rotation_begin",
        "rotation_promote",
        "rotation_abort",
        "metadata_write",
        "refresh",
        "read",
    ];
    wait_until("every action audited", Duration::from_secs(10), || {
        let (code, tail, _) = run_cli(
            &socket,
            &["audit", "tail", "-n", "200", "--secret", "trading_api_key"],
        );
        (code == 0 && actions.iter().all(|a| tail.contains(a))).then_some(())
    });
}

#[test]
fn audit_records_aggregated_reads_denials_and_refreshes_and_never_values() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .file_secret("blocked_secret", b"Blocked-Value-7777-QQQ!")
        .policy(&[euid()], &["*"], &["blocked_*"])
        // Counted reads reach the trail each window: a short one, so the test need not wait
        // a minute.
        .daemon("audit_read_window", "1s")
        .build();
    let mut daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    {
        let client = Client::connect(&daemon.socket).expect("connect");
        for _ in 0..1000 {
            client.get("trading_api_key").expect("get");
        }
        for _ in 0..5 {
            assert!(client.get("blocked_secret").is_err());
        }
        client.refresh(Some("trading_api_key")).expect("refresh");
        // Dropping the client disconnects: its counts are flushed.
    }
    let client = Client::connect(&daemon.socket).expect("connect");
    let fingerprint = client.status().expect("status")[0]
        .fingerprint
        .clone()
        .expect("fingerprint");
    assert_eq!(fingerprint.len(), 64);

    // The disconnect flushes the refusal tally, and hands the read count to the daemon's
    // read ledger, which writes it when its window ends; wait for all of them.
    let is_read = |r: &&secretd_client::AuditEntry| {
        r.action == "read" && r.secret == "trading_api_key" && r.result == "ok"
    };
    let records = wait_until(
        "the records of 1000 reads and 5 refusals",
        Duration::from_secs(20),
        || {
            let records = client.audit_tail(1000, None).expect("tail");
            let read: u64 = records.iter().filter(is_read).map(|r| r.count).sum();
            let refused: u64 = records
                .iter()
                .filter(|r| r.result == "denied")
                .map(|r| r.count)
                .sum();
            (read == 1000 && refused == 5).then_some(records)
        },
    );
    let reads: Vec<_> = records.iter().filter(is_read).collect();
    // The first read at once (with the reader's pid), then a count per window that had reads
    // (the reads take well under the test's 20 s, so a handful at most), without a pid: a
    // count spans every process of the uid and program.
    assert!(reads[0].count == 1 && reads[0].pid.is_some(), "{reads:?}");
    assert!(
        (2..=8).contains(&reads.len()) && reads[1..].iter().all(|r| r.pid.is_none()),
        "{reads:?}"
    );
    assert!(
        reads
            .iter()
            .all(|r| r.fingerprint == fingerprint && r.uid == euid())
    );
    let denied: Vec<_> = records.iter().filter(|r| r.result == "denied").collect();
    assert_eq!(denied.iter().map(|r| r.count).sum::<u64>(), 5);
    assert!(denied.iter().all(|r| r.error_code == Some(2)));
    assert!(
        records
            .iter()
            .any(|r| r.action == "refresh" && r.actor_type == "admin")
    );
    assert!(
        records
            .iter()
            .any(|r| r.action == "refresh" && r.actor_type == "daemon")
    );
    assert!(records.iter().any(|r| r.action == "daemon_start"));

    let (code, out, _) = run_cli(&socket, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit chain ok"));
    let (_, json, _) = run_cli(&socket, &["audit", "tail", "-n", "3", "--json"]);
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert!(v["seq"].as_u64().is_some() && v["hash"].as_str().expect("hash").len() == 64);
    }

    assert!(daemon.stop().success());
    let db = std::fs::read(env.path("secretd.redb")).expect("db");
    for value in [KEY, b"Blocked-Value-7777-QQQ!"] {
        assert!(
            !db.windows(value.len()).any(|w| w == value),
            "a value is in the database file"
        );
    }
    let key_file = env.path("secretd.redb.fingerprint-key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

fn with_audit_table(env: &TestEnv, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = redb::Database::open(env.path("secretd.redb")).expect("open db");
    let txn = db.begin_write().expect("txn");
    {
        let mut table = txn.open_table(AUDIT).expect("table");
        f(&mut table);
    }
    txn.commit().expect("commit");
}

fn audit_rows(env: &TestEnv) -> Vec<(u64, Vec<u8>)> {
    let db = redb::Database::open(env.path("secretd.redb")).expect("open db");
    let txn = db.begin_read().expect("txn");
    let table = txn.open_table(AUDIT).expect("table");
    table
        .iter()
        .expect("iter")
        .map(|r| {
            let (k, v) = r.expect("row");
            (k.value(), v.value().to_vec())
        })
        .collect()
}

#[test]
fn tampering_deleting_or_reordering_records_breaks_verify_and_pruning_does_not() {
    let env = TestEnv::new();
    // The tampering checks keep every record however slow the machine (a retention they
    // cannot outrun); the pruning check at the end starts the daemon with a short one.
    let with_retention = |retention: &str| {
        env.conf()
            .daemon("audit_retention", retention)
            .file_secret("trading_api_key", KEY)
            .readable_by_me()
            .build()
    };
    let keep = with_retention("1d");
    let prune = with_retention("1s");
    let verify = |env: &TestEnv, config: &str| {
        let mut daemon = env.start(config);
        for _ in 0..3 {
            Client::connect(&daemon.socket)
                .expect("connect")
                .get("trading_api_key")
                .expect("get");
        }
        let (code, out, err) = run_cli(daemon.socket.to_str().expect("utf8"), &["audit", "verify"]);
        assert!(daemon.stop().success());
        (code, out + &err)
    };
    let (code, out) = verify(&env, &keep);
    assert_eq!(code, 0, "{out}");
    let rows = audit_rows(&env);
    assert!(rows.len() >= 5, "{}", rows.len());

    // Alter one byte of record 3's body.
    let pristine = rows.clone();
    with_audit_table(&env, |t| {
        let mut v = pristine[2].1.clone();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        t.insert(pristine[2].0, v.as_slice()).expect("insert");
    });
    let (code, out) = verify(&env, &keep);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("broken at seq {}", pristine[2].0)),
        "{out}"
    );
    with_audit_table(&env, |t| {
        t.insert(pristine[2].0, pristine[2].1.as_slice())
            .expect("restore");
    });

    // Delete record 2.
    with_audit_table(&env, |t| {
        t.remove(pristine[1].0).expect("remove");
    });
    let (code, out) = verify(&env, &keep);
    assert!(
        code == 1 && out.contains(&format!("broken at seq {}", pristine[1].0)),
        "{out}"
    );
    with_audit_table(&env, |t| {
        t.insert(pristine[1].0, pristine[1].1.as_slice())
            .expect("restore");
    });

    // Swap records 2 and 3.
    with_audit_table(&env, |t| {
        t.insert(pristine[1].0, pristine[2].1.as_slice())
            .expect("swap");
        t.insert(pristine[2].0, pristine[1].1.as_slice())
            .expect("swap");
    });
    let (code, out) = verify(&env, &keep);
    assert!(
        code == 1 && out.contains(&format!("broken at seq {}", pristine[1].0)),
        "{out}"
    );
    with_audit_table(&env, |t| {
        t.insert(pristine[1].0, pristine[1].1.as_slice())
            .expect("restore");
        t.insert(pristine[2].0, pristine[2].1.as_slice())
            .expect("restore");
    });

    // Past a 1 s retention (time itself is under test here), startup prunes the old records
    // and the chain still verifies.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out) = verify(&env, &prune);
    assert_eq!(code, 0, "{out}");
    let first_left = audit_rows(&env)[0].0;
    assert!(
        first_left > pristine.last().expect("rows").0,
        "old records pruned"
    );
    let mut daemon = env.start(&prune);
    let tail = Client::connect(&daemon.socket)
        .expect("c")
        .audit_tail(100, None)
        .expect("tail");
    assert!(
        tail.iter()
            .any(|r| r.action == "audit_prune" && r.count > 0)
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_chain_rewritten_unkeyed_with_its_meta_row_flipped_fails_verify() {
    // Someone who can write the database but has no key rewrites every record with the
    // unkeyed hash an earlier release used, and sets `audit_keyed_from` past the head, as if
    // keyed chaining had never started. The daemon decides from the chain, not the row.
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    use sha2::{Digest, Sha256};
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let mut daemon = env.start(&config);
    Client::connect(&daemon.socket)
        .expect("connect")
        .get("trading_api_key")
        .expect("get");
    let (code, out, _) = run_cli(daemon.socket.to_str().expect("utf8"), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(daemon.stop().success());

    let rows = audit_rows(&env);
    let db = redb::Database::open(env.path("secretd.redb")).expect("open db");
    let txn = db.begin_write().expect("txn");
    {
        let mut meta = txn.open_table(META).expect("meta");
        meta.insert("audit_keyed_from", &u64::MAX.to_le_bytes()[..])
            .expect("flip");
        let mut table = txn.open_table(AUDIT).expect("audit");
        let mut prev = [0u8; 32];
        for (seq, stored) in &rows {
            let body = &stored[64..];
            let hash: [u8; 32] = Sha256::new()
                .chain_update(prev)
                .chain_update(seq.to_le_bytes())
                .chain_update(body)
                .finalize()
                .into();
            let rewritten = [&prev[..], &hash[..], body].concat();
            table.insert(*seq, rewritten.as_slice()).expect("rewrite");
            prev = hash;
        }
    }
    txn.commit().expect("commit");
    drop(db);

    let daemon = env.start(&config);
    let (code, out, err) = run_cli(daemon.socket.to_str().expect("utf8"), &["audit", "verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        (out.clone() + &err).contains(&format!("broken at seq {}", rows[0].0)),
        "{out}{err}"
    );
}

#[test]
fn an_audit_key_owned_by_another_user_is_refused_at_startup() {
    if !support::can_run(
        support::is_root(),
        "an_audit_key_owned_by_another_user",
        "root, to give a file to uid 65534",
    ) {
        return;
    }
    let env = TestEnv::new();
    let key = env.path("audit.key");
    std::fs::write(&key, [7u8; 32]).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Its owner could have chosen the key, or swap it later.
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).expect("chown");
    let config = env
        .conf()
        .daemon("audit_key", key.to_str().expect("utf8"))
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let mut daemon = env.spawn(&config, "owned.toml");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon refuses to start");
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains("belongs to uid 65534") && log.contains("root or the daemon's uid"),
        "{log}"
    );
}

#[test]
fn kill_9_during_a_burst_of_audited_reads_leaves_a_verifiable_chain() {
    let env = TestEnv::new();
    let config = key_only(&env);
    let daemon = env.start(&config);
    let socket = daemon.socket.clone();
    let burst = std::thread::spawn(move || {
        // Each refresh is an admin operation, recorded durably before it is answered: a
        // stream of commits (reads would be counted, and written once a window).
        for _ in 0..2000 {
            match Client::connect(&socket) {
                Ok(c) => {
                    let _ = c.get("trading_api_key");
                    if c.refresh(Some("trading_api_key")).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGKILL) };
    burst.join().expect("burst");
    drop(daemon);
    assert!(
        audit_rows(&env).len() > 10,
        "the burst was audited before the kill"
    );
    let mut daemon = env.start(&config);
    let (code, out, _) = run_cli(daemon.socket.to_str().expect("utf8"), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(daemon.stop().success());
}

#[test]
fn a_second_daemon_on_the_same_database_exits_with_a_clear_message() {
    let env = TestEnv::new();
    let conf = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me();
    let _first = env.start(&conf.build());
    let other_socket = env.path("other/secretd.sock");
    let second_config = conf
        .daemon("socket", other_socket.to_str().expect("utf8"))
        .build();
    let mut second = env.spawn(&second_config, "second.toml");
    let status = second.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        second.log().contains("in use by another secretd"),
        "{}",
        second.log()
    );
    assert!(
        !other_socket.exists(),
        "the refused daemon removed its socket"
    );
}

fn mount_namespaces_work() -> bool {
    std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_full_disk_makes_reads_fail_closed_until_the_audit_trail_recovers() {
    if !can_run(
        is_root() && mount_namespaces_work(),
        "a_full_disk_makes_reads_fail_closed",
        "root and mount namespaces for a small tmpfs",
    ) {
        return;
    }
    let env = TestEnv::new();
    let dbdir = env.path("dbfs");
    std::fs::create_dir(&dbdir).expect("db dir");
    let config = env
        .conf()
        .daemon("db", format!("{}/secretd.redb", dbdir.display()))
        // Counted reads are written every second: commits keep coming while the test reads.
        .daemon("audit_read_window", "1s")
        .file_secret("trading_api_key", KEY)
        .policy(&[0], &["*"], &[])
        .build();
    // The database lives on an 8 MiB tmpfs mounted in the daemon's own mount namespace.
    let script = "mount -t tmpfs -o size=8m secretd-test \"$0\" && exec \"$@\"";
    let dir = dbdir.to_str().expect("utf8");
    let daemon = env.spawn_wrapped(
        &config,
        "secretd.toml",
        &[],
        &["unshare", "-m", "sh", "-c", script, dir],
    );
    daemon.wait_ready();

    // Fill that filesystem, seen through the daemon's mount namespace.
    let filler = format!("/proc/{}/root{}/filler", daemon.pid(), dir);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }

    // Reads are counted, and the counts written every second; once a commit fails, reads
    // are refused instead of served unaudited.
    let mut refused = None;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        if std::time::Instant::now() > until {
            break;
        }
        let client = Client::connect(&daemon.socket).expect("connect");
        match client.get("trading_api_key") {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (after, err) = refused.expect("reads were never refused on a full disk");
    assert_eq!(
        err.code(),
        Some(secretd_client::ErrorCode::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("audit"), "{err}");
    daemon.wait_for_log("omni.alert.audit_failure");
    let admin = Client::connect(&daemon.socket).expect("connect");
    let again = admin.get("trading_api_key");
    assert!(again.is_err(), "still refused while the disk is full");
    // Audit before effect: an admin operation whose record cannot be written is refused, not
    // carried out unrecorded.
    let refresh = admin
        .refresh(Some("trading_api_key"))
        .expect_err("a refresh nobody can audit");
    assert_eq!(
        refresh.code(),
        Some(secretd_client::ErrorCode::Unavailable),
        "{refresh}"
    );
    assert!(refresh.to_string().contains("audit"), "{refresh}");

    // Space comes back: the writer reopens the store, commits what it held, and reads resume.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_until(
        "reads to resume after space came back",
        Duration::from_secs(10),
        || {
            let client = Client::connect(&daemon.socket).expect("connect");
            client.get("trading_api_key").ok()
        },
    );
    daemon.wait_for_log("omni.alert.audit_recovered");
    let (code, out, _) = run_cli(daemon.socket.to_str().expect("utf8"), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    eprintln!("refused after {after} reads on a full disk");
}

#[test]
fn the_rotation_monitor_logs_near_expiry_and_overdue_secrets() {
    const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
    let env = TestEnv::new();
    // Due in 12 months, warned 400 days ahead: near expiry at once.
    let config = env
        .conf()
        .daemon("rotation_warning", "400d")
        .file_secret("trading_api_key", KEY)
        .file_secret("webhook_shared_secret", b"Webhook-Secret-0000-XYZ!")
        .readable_by_me()
        .build();
    let mut daemon = env.start(&config);
    let log = daemon.wait_for_log("secret.near_expiry");
    assert!(!log.contains("omni.rotation_overdue"), "{log}");
    assert!(daemon.stop().success());

    // Make one secret a year overdue, straight in the database.
    let db = redb::Database::open(env.path("secretd.redb")).expect("open");
    let txn = db.begin_write().expect("txn");
    {
        let mut table = txn.open_table(SECRETS).expect("table");
        let mut meta: serde_json::Value = serde_json::from_slice(
            table
                .get("trading_api_key")
                .expect("get")
                .expect("row")
                .value(),
        )
        .expect("json");
        meta["rotation_due_at_ms"] = serde_json::json!(1_600_000_000_000_i64);
        table
            .insert("trading_api_key", meta.to_string().as_bytes())
            .expect("insert");
    }
    txn.commit().expect("commit");
    drop(db);

    let daemon = env.start(&config);
    let log = daemon.wait_for_log("omni.rotation_overdue");
    let overdue: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("omni.rotation_overdue"))
        .collect();
    assert_eq!(overdue.len(), 1, "{log}");
    assert!(overdue[0].contains("trading_api_key"));
}

#[test]
fn a_version_change_mid_connection_flushes_the_reads_of_the_old_version() {
    let env = TestEnv::new();
    // The new version's count is written when the read window ends: a short one.
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .daemon("audit_read_window", "1s")
        .build();
    let daemon = env.start(&config);
    let admin = Client::connect(&daemon.socket).expect("admin");
    let reader = Client::connect(&daemon.socket).expect("reader");
    for _ in 0..5 {
        assert_eq!(reader.get("trading_api_key").expect("get").version(), "1");
    }
    env.write_value("trading_api_key", b"Omni-Key-Rotated-0987654321!");
    admin.refresh(Some("trading_api_key")).expect("refresh");
    for _ in 0..3 {
        assert_eq!(reader.get("trading_api_key").expect("get").version(), "2");
    }
    drop(reader);
    // Per version, the reads of that version: the old count is written when the version
    // changes, not merged into the new one at disconnect.
    let per_version = wait_until("the reader's records", Duration::from_secs(10), || {
        let records = admin
            .audit_tail(100, Some("trading_api_key"))
            .expect("tail");
        let count = |v: &str| -> u64 {
            records
                .iter()
                .filter(|r| r.action == "read" && r.result == "ok" && r.version == v)
                .map(|r| r.count)
                .sum()
        };
        let counts = (count("1"), count("2"));
        (counts.1 == 3).then_some(counts)
    });
    assert_eq!(per_version, (5, 3));
}

/// The last `audit.anchor` the daemon logged: `SEQ:HASH`.
fn last_anchor(log: &str) -> String {
    log.lines()
        .rev()
        .filter(|l| l.contains("audit.anchor"))
        .filter_map(|l| {
            let seq = l.split("seq=").nth(1)?.split_whitespace().next()?;
            let hash = l.split("hash=").nth(1)?.split_whitespace().next()?;
            Some(format!("{seq}:{}", hash.trim_matches('"')))
        })
        .next()
        .unwrap_or_else(|| panic!("no audit.anchor in:\n{log}"))
}

#[test]
fn truncation_and_rollback_are_caught_by_an_anchor_and_a_copy_verifies_offline() {
    let env = TestEnv::new();
    let config = key_only(&env);
    let read_a_few = |daemon: &support::Daemon| {
        for _ in 0..3 {
            Client::connect(&daemon.socket)
                .expect("connect")
                .get("trading_api_key")
                .expect("get");
        }
    };
    // First run: its state is what a rollback will restore.
    let mut daemon = env.start(&config);
    read_a_few(&daemon);
    assert!(daemon.stop().success());
    let old_db = std::fs::read(env.path("secretd.redb")).expect("db");
    // Second run: more records; the anchor logged at shutdown is what the journal keeps.
    let mut daemon = env.start(&config);
    read_a_few(&daemon);
    assert!(daemon.stop().success());
    let anchor = last_anchor(&daemon.log());
    std::fs::copy(env.path("secretd.redb"), env.path("copy.redb")).expect("copy");
    std::fs::copy(
        env.path("secretd.redb.audit-key"),
        env.path("copy.redb.audit-key"),
    )
    .expect("copy key");
    let verify_head = |anchor: &str| {
        let mut daemon = env.start(&config);
        let socket = daemon.socket.to_str().expect("utf8").to_owned();
        let result = run_cli(&socket, &["audit", "verify", "--head", anchor]);
        assert!(daemon.stop().success());
        result
    };

    let (code, out, err) = verify_head(&anchor);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok: ") && l.contains(" records, head ")),
        "{out}"
    );

    // Rolled back to the first run's database: the chain verifies, the anchor does not.
    std::fs::write(env.path("secretd.redb"), &old_db).expect("roll back");
    let (code, _, err) = verify_head(&anchor);
    assert_eq!(code, 1);
    assert!(err.contains("truncated or rolled back"), "{err}");

    // Truncated: the newest records deleted.
    std::fs::copy(env.path("copy.redb"), env.path("secretd.redb")).expect("restore");
    let rows = audit_rows(&env);
    with_audit_table(&env, |t| {
        for (seq, _) in rows.iter().rev().take(4) {
            t.remove(*seq).expect("remove");
        }
    });
    let (code, _, err) = verify_head(&anchor);
    assert_eq!(code, 1);
    assert!(err.contains("truncated or rolled back"), "{err}");

    // The copy, offline, with its key.
    let copy = env.path("copy.redb");
    let out = cli(
        &[
            "audit",
            "verify",
            "--db",
            copy.to_str().expect("utf8"),
            "--head",
            &anchor,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("head {anchor} is in the chain"))
    );
    // And with another key it does not verify.
    std::fs::write(env.path("other.key"), [7u8; 32]).expect("key");
    std::fs::set_permissions(
        env.path("other.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let out = cli(
        &[
            "audit",
            "verify",
            "--db",
            copy.to_str().expect("utf8"),
            "--key",
            env.path("other.key").to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken at seq"));
}
