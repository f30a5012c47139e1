//! Break-glass end to end: keys from `secretd keygen`, envelopes sealed by the CLI, the real
//! daemon serving GSM values from the fake.

mod support;

use std::time::{Duration, Instant};

use secretd_client::{Client, SourceKind};
use secretd_gsm_fake::{FakeGsm, Fault};
use support::{
    Daemon, TestEnv, break_glass_apply, can_run, cli, cli_ok, is_root, keygen, secretd_bin,
    wait_until,
};

const API_KEY: &str = "projects/apex-test/secrets/omni-trading-api-key";
const GSM_VALUE: &[u8] = b"Omni-Key-from-GSM-1111!";
const EMERGENCY: &[u8] = b"Emergency-Key-2222-XYZ!";

struct Setup {
    env: TestEnv,
    fake: FakeGsm,
    config: String,
}

fn setup() -> Setup {
    let fake = FakeGsm::start().expect("fake");
    fake.add_version(API_KEY, GSM_VALUE);
    let env = TestEnv::new();
    keygen(&env);
    let config = env
        .conf()
        .shared_with_nobody()
        .daemon("refresh_interval", "5m")
        .gsm_authenticated(&fake)
        .gsm_set("attempt_timeout", "300ms")
        .gsm_set("retry_budget", "600ms")
        .break_glass(&env.path("bg.pem"))
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .build();
    Setup { env, fake, config }
}

fn served(daemon: &Daemon) -> (Vec<u8>, SourceKind) {
    let s = Client::connect(&daemon.socket)
        .expect("connect")
        .get("trading_api_key")
        .expect("get");
    (s.expose().to_vec(), s.source())
}

#[test]
fn an_override_outranks_gsm_survives_a_restart_during_an_outage_and_expires() {
    let Setup { env, fake, config } = setup();
    let mut daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    assert_eq!(served(&daemon), (GSM_VALUE.to_vec(), SourceKind::Gsm));

    let (code, out) = break_glass_apply(&socket, "trading_api_key", EMERGENCY, "6s", &public, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("serving the break-glass value until"), "{out}");
    let applied = Instant::now();
    assert_eq!(
        served(&daemon),
        (EMERGENCY.to_vec(), SourceKind::BreakGlass)
    );
    let row = Client::connect(&daemon.socket)
        .expect("c")
        .status()
        .expect("status")
        .remove(0);
    assert_eq!(row.cache_source, Some(SourceKind::BreakGlass));
    assert!(row.break_glass_expires_at_ms.is_some());

    // A GSM refresh (even with a new version) does not override it.
    fake.add_version(API_KEY, b"Omni-Key-from-GSM-v2-3333!");
    let refreshed = cli(&["refresh", "trading_api_key", "--socket", &socket], &[]);
    let (code, out) = (
        refreshed.status.code(),
        String::from_utf8_lossy(&refreshed.stdout).into_owned(),
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(served(&daemon).1, SourceKind::BreakGlass);

    // GSM goes down and the daemon restarts: the persisted envelope brings the override back.
    fake.set_fault(Some(Fault::Unavailable));
    assert!(daemon.stop().success());
    let daemon = env.start(&config);
    assert_eq!(
        served(&daemon),
        (EMERGENCY.to_vec(), SourceKind::BreakGlass)
    );
    fake.set_fault(None);

    // After the TTL the normal source is back without anyone asking. One connection polls,
    // so its reads are aggregated into one audit record instead of one per poll.
    let left = (applied + Duration::from_secs(15)).saturating_duration_since(Instant::now());
    let poller = Client::connect(&daemon.socket).expect("connect");
    wait_until("the override to expire", left, || {
        let source = poller.get("trading_api_key").expect("get").source();
        (source != SourceKind::BreakGlass).then_some(())
    });
    drop(poller);
    let (value, source) = served(&daemon);
    assert_eq!(source, SourceKind::Gsm);
    assert_eq!(value, b"Omni-Key-from-GSM-v2-3333!");
    let log = daemon.wait_for_log("omni.alert.break_glass_cleared");
    assert!(log.contains("omni.alert.break_glass_applied"), "{log}");
    assert!(
        !log.contains("Emergency-Key"),
        "the value leaked into the log"
    );
    let tail = Client::connect(&daemon.socket)
        .expect("c")
        .audit_tail(100, Some("trading_api_key"))
        .expect("tail");
    let apply_rec = tail
        .iter()
        .find(|r| r.action == "break_glass_apply")
        .expect("apply audited");
    assert_eq!(apply_rec.actor_type, "admin");
    assert_eq!(apply_rec.fingerprint.len(), 64);
    assert!(tail.iter().any(|r| r.action == "break_glass_clear"
        && r.detail.starts_with("expired; envelope ")
        && r.actor_type == "daemon"));
    assert!(
        Client::connect(&daemon.socket)
            .expect("c")
            .status()
            .expect("s")[0]
            .break_glass_expires_at_ms
            .is_none()
    );
}

#[test]
fn sealed_elsewhere_submitted_then_cleared_at_once() {
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    let envelope = env.path("emergency.sbg");
    let (code, out) = break_glass_apply(
        &socket,
        "trading_api_key",
        EMERGENCY,
        "25m",
        &public,
        &["--out", envelope.to_str().expect("utf8")],
    );
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&envelope).expect("envelope");
    assert!(text.starts_with("-----BEGIN SECRETD BREAK-GLASS-----"));
    assert!(!text.contains("Emergency"), "the envelope is sealed");
    assert_eq!(served(&daemon).1, SourceKind::Gsm, "--out does not apply");

    cli_ok(
        &[
            "break-glass",
            "submit",
            envelope.to_str().expect("utf8"),
            "--socket",
            &socket,
        ],
        &[],
    );
    assert_eq!(
        served(&daemon),
        (EMERGENCY.to_vec(), SourceKind::BreakGlass)
    );

    cli_ok(
        &[
            "break-glass",
            "clear",
            "trading_api_key",
            "--socket",
            &socket,
        ],
        &[],
    );
    assert_eq!(
        served(&daemon),
        (GSM_VALUE.to_vec(), SourceKind::Gsm),
        "back at once"
    );
    let out = cli(
        &[
            "break-glass",
            "clear",
            "trading_api_key",
            "--socket",
            &socket,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no break-glass override is active"));

    // The database never held the plaintext.
    drop(daemon);
    let db = std::fs::read(env.path("secretd.redb")).expect("db");
    assert!(!db.windows(EMERGENCY.len()).any(|w| w == EMERGENCY));
}

#[test]
fn every_bad_envelope_is_refused_alike_changes_nothing_and_is_rate_limited() {
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    let seal = |name: &str, ttl: &str, key: &str, file: &str| {
        let path = env.path(file);
        let (code, out) = break_glass_apply(
            &socket,
            name,
            EMERGENCY,
            ttl,
            key,
            &["--out", path.to_str().expect("utf8")],
        );
        assert_eq!(code, 0, "{out}");
        path
    };
    let submit = |path: &std::path::Path| {
        let out = cli(
            &[
                "break-glass",
                "submit",
                path.to_str().expect("utf8"),
                "--socket",
                &socket,
            ],
            &[],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let rewrite = |path: &std::path::Path, f: &dyn Fn(&mut Vec<u8>)| {
        use base64::Engine as _;
        let text = std::fs::read_to_string(path).expect("read");
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64");
        f(&mut bytes);
        let out = env.path(&format!(
            "{}.bad",
            path.file_name().expect("name").to_string_lossy()
        ));
        std::fs::write(
            &out,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )
        .expect("write");
        out
    };

    // A non-admin is refused before anything is opened.
    if can_run(
        is_root(),
        "the check as another uid",
        "root to run as uid 65534",
    ) {
        let good = seal("trading_api_key", "25m", &public, "good.sbg");
        std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let out = env.run_as_nobody(
            &secretd_bin(),
            &[
                "break-glass",
                "submit",
                good.to_str().expect("utf8"),
                "--socket",
                &socket,
            ],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("admin operation"));
    }

    // Five different bad envelopes, one identical answer each.
    let other = TestEnv::new();
    keygen(&other);
    let base = seal("trading_api_key", "25m", &public, "base.sbg");
    let bad = [
        seal(
            "trading_api_key",
            "25m",
            other.path("bg.pub.pem").to_str().expect("u"),
            "wrong-key.sbg",
        ),
        rewrite(&base, &|b| {
            let last = b.len() - 1;
            b[last] ^= 1;
        }),
        rewrite(&base, &|b| b[6] ^= 0x20), // the name's first byte: 't' -> 'T'
        seal("trading_api_key", "2h", &public, "too-long.sbg"),
        rewrite(&base, &|b| b.truncate(b.len() / 2)),
    ];
    let expired = seal("trading_api_key", "1s", &public, "expired.sbg");
    // Time itself is under test: the envelope must be past its 1 s validity (a submission
    // meanwhile would spend one of the five rejections a minute the test counts on).
    std::thread::sleep(Duration::from_millis(1500));
    let mut answers = Vec::new();
    for path in bad.iter().take(4).chain(std::iter::once(&expired)) {
        let (code, err) = submit(path);
        assert_eq!(code, Some(1), "{path:?}");
        answers.push(err);
        assert_eq!(
            served(&daemon),
            (GSM_VALUE.to_vec(), SourceKind::Gsm),
            "{path:?} changed something"
        );
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "answers differ: {answers:?}"
    );
    assert!(
        answers[0].contains("break-glass envelope rejected"),
        "{}",
        answers[0]
    );

    // Past 5 rejections a minute, even a good envelope is refused without being opened.
    let (code, err) = submit(&bad[4]);
    assert_eq!(code, Some(1));
    assert!(err.contains("too many rejected"), "{err}");
    let (code, err) = submit(&base);
    assert_eq!(code, Some(1));
    assert!(err.contains("too many rejected"), "{err}");
    assert_eq!(served(&daemon).1, SourceKind::Gsm);

    // Refusals are not waited for: they are committed with the next batch.
    let admin = Client::connect(&daemon.socket).expect("c");
    wait_until("7 failed applies audited", Duration::from_secs(10), || {
        let tail = admin.audit_tail(100, None).expect("tail");
        let failed = tail
            .iter()
            .filter(|r| r.action == "break_glass_apply" && r.result != "ok")
            .count();
        (failed >= 7).then_some(())
    });
}

/// Seals `value` for `name` into `file` with the CLI (no daemon involved) and returns the path.
fn seal_to_file(
    env: &TestEnv,
    socket: &str,
    name: &str,
    public: &str,
    file: &str,
) -> std::path::PathBuf {
    let path = env.path(file);
    let (code, out) = break_glass_apply(
        socket,
        name,
        EMERGENCY,
        "20m",
        public,
        &["--out", path.to_str().expect("utf8")],
    );
    assert_eq!(code, 0, "{out}");
    path
}

/// `secretd break-glass submit FILE`: (exit code, stderr).
fn submit(socket: &str, path: &std::path::Path) -> (Option<i32>, String) {
    let out = cli(
        &[
            "break-glass",
            "submit",
            path.to_str().expect("utf8"),
            "--socket",
            socket,
        ],
        &[],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_envelope_is_applied_at_most_once() {
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    let envelope = seal_to_file(&env, &socket, "trading_api_key", &public, "once.sbg");
    assert_eq!(submit(&socket, &envelope).0, Some(0));
    cli_ok(
        &[
            "break-glass",
            "clear",
            "trading_api_key",
            "--socket",
            &socket,
        ],
        &[],
    );
    // Replaying the cleared override's envelope: refused, and the normal value stays.
    let (code, err) = submit(&socket, &envelope);
    assert_eq!(code, Some(1));
    assert!(err.contains("applied before"), "{err}");
    assert_eq!(served(&daemon).1, SourceKind::Gsm);
    let tail = Client::connect(&daemon.socket)
        .expect("c")
        .audit_tail(100, Some("trading_api_key"))
        .expect("tail");
    assert_eq!(
        tail.iter()
            .filter(|r| r.action == "break_glass_apply" && r.result == "ok")
            .count(),
        1
    );
}

#[test]
fn racing_admins_get_no_more_than_five_decryptions_a_minute() {
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    // Sealed for another key: every one fails to open.
    let out = cli(
        &[
            "keygen",
            "--out-private",
            env.path("other.pem").to_str().expect("utf8"),
            "--out-public",
            env.path("other.pub.pem").to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(out.status.success());
    let other = env.path("other.pub.pem").to_str().expect("utf8").to_owned();
    let bad = seal_to_file(&env, &socket, "trading_api_key", &other, "bad.sbg");
    let outcomes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| submit(&socket, &bad).1))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("submit"))
            .collect()
    });
    let rejected = outcomes
        .iter()
        .filter(|e| e.contains("envelope rejected"))
        .count();
    let limited = outcomes.iter().filter(|e| e.contains("too many")).count();
    assert_eq!((rejected, limited), (5, 3), "{outcomes:?}");
}

#[test]
fn a_host_bound_envelope_is_applied_only_on_its_host() {
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    let this_host = std::fs::read_to_string("/etc/machine-id")
        .expect("machine id")
        .trim()
        .to_owned();
    let sealed_for = |host: &str, file: &str| {
        let path = env.path(file);
        let (code, out) = break_glass_apply(
            &socket,
            "trading_api_key",
            EMERGENCY,
            "20m",
            &public,
            &["--host", host, "--out", path.to_str().expect("utf8")],
        );
        assert_eq!(code, 0, "{out}");
        path
    };
    let elsewhere = sealed_for("ffffffffffffffffffffffffffffffff", "elsewhere.sbg");
    let (code, err) = submit(&socket, &elsewhere);
    assert_eq!(code, Some(1));
    assert!(err.contains("envelope rejected"), "{err}");
    assert_eq!(served(&daemon).1, SourceKind::Gsm);

    let here = sealed_for(&this_host, "here.sbg");
    assert_eq!(submit(&socket, &here).0, Some(0));
    assert_eq!(
        served(&daemon),
        (EMERGENCY.to_vec(), SourceKind::BreakGlass)
    );
}

#[test]
fn a_revocation_under_an_override_keeps_the_override_and_withdraws_the_value_beneath() {
    let Setup { env, fake, config } = setup();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    assert_eq!(served(&daemon), (GSM_VALUE.to_vec(), SourceKind::Gsm));
    let (code, out) = break_glass_apply(&socket, "trading_api_key", EMERGENCY, "10m", &public, &[]);
    assert_eq!(code, 0, "{out}");

    // The leaked GSM version is disabled: revoked beneath the override, which still serves.
    fake.set_version_state(API_KEY, 1, secretd_gsm_fake::VersionState::Disabled);
    let client = Client::connect(&daemon.socket).expect("connect");
    let outcome = client.refresh(Some("trading_api_key")).expect("refresh");
    assert!(outcome[0].error.is_some(), "{outcome:?}");
    assert_eq!(
        served(&daemon),
        (EMERGENCY.to_vec(), SourceKind::BreakGlass)
    );
    let log = daemon.wait_for_log("omni.alert.version_revoked");
    let line = log
        .lines()
        .find(|l| l.contains("omni.alert.version_revoked"))
        .expect("line");
    assert!(line.contains("break_glass_active"), "{line}");

    // Once the override is cleared nothing is served: the revoked version does not come back.
    client.break_glass_clear("trading_api_key").expect("clear");
    let refused = client.get("trading_api_key").expect_err("revoked");
    assert!(refused.to_string().contains("revoked"), "{refused}");
}

#[test]
fn a_cleared_envelope_put_back_into_the_database_is_never_served_again() {
    use redb::ReadableDatabase;
    const ENVELOPES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("break_glass");
    let Setup {
        env,
        fake: _fake,
        config,
    } = setup();
    let mut daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let public = env.path("bg.pub.pem").to_str().expect("utf8").to_owned();
    let (code, out) = break_glass_apply(&socket, "trading_api_key", EMERGENCY, "25m", &public, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(daemon.stop().success());
    // A copy of the database taken while the override was active: its envelope row.
    let row = {
        let db = redb::Database::open(env.path("secretd.redb")).expect("db");
        let txn = db.begin_read().expect("txn");
        let table = txn.open_table(ENVELOPES).expect("table");
        let row = table.get("trading_api_key").expect("get").expect("row");
        row.value().to_vec()
    };

    let mut daemon = env.start(&config);
    cli_ok(
        &[
            "break-glass",
            "clear",
            "trading_api_key",
            "--socket",
            &socket,
        ],
        &[],
    );
    assert!(daemon.stop().success());
    {
        let db = redb::Database::open(env.path("secretd.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        txn.open_table(ENVELOPES)
            .expect("table")
            .insert("trading_api_key", row.as_slice())
            .expect("put the row back");
        txn.commit().expect("commit");
    }
    let daemon = env.start(&config);
    daemon.wait_for_log("omni.alert.break_glass_restored_row");
    assert_eq!(served(&daemon), (GSM_VALUE.to_vec(), SourceKind::Gsm));
}
