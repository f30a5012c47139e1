//! The foundation end to end: the real daemon binary on a temp socket, the real client and CLI.

use std::time::Duration;

use secretd_client::{ChannelState, Client, EntryState, ErrorCode, HealthStatus, SourceKind};
use secretd_proto::{ClientHello, Request, Response};
mod support;

use support::{
    RawConn, TestEnv, can_run, cli, cli_ok, euid, is_root, probe_bin, secretd_bin, wait_until,
};

const KEY: &[u8] = b"Omni-Key-1234567890-abcdef!";
const PASSPHRASE: &[u8] = b"Pass-phrase-Zyx-987#";

fn two_secret_env() -> (TestEnv, String) {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .file_secret("trading_api_passphrase", PASSPHRASE)
        .policy(&[euid()], &["trading_*"], &[])
        .build();
    (env, config)
}

fn expect_code<T: std::fmt::Debug>(r: secretd_client::Result<T>, code: ErrorCode) {
    match r {
        Err(e) => assert_eq!(e.code(), Some(code), "{e}"),
        Ok(v) => panic!("expected {code}, got {v:?}"),
    }
}

#[test]
fn get_and_status_round_trip() {
    let (env, config) = two_secret_env();
    let mut daemon = env.start(&config);
    let client = Client::connect(&daemon.socket).expect("connect");

    let secret = client.get("trading_api_key").expect("get");
    assert_eq!(secret.expose(), KEY);
    assert_eq!(secret.version(), "1");
    assert_eq!(secret.source(), SourceKind::File);
    assert!(secret.expires_at() > secret.fetched_at());
    assert!(!format!("{secret:?}").contains("Omni-Key"));

    let status = client.status().expect("status");
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["trading_api_key", "trading_api_passphrase"]);
    for s in &status {
        assert_eq!(s.state, EntryState::Fresh);
        assert_eq!(s.cache_source, Some(SourceKind::File));
        assert_eq!(s.version.as_deref(), Some("1"));
        assert!(s.age_ms.is_some() && s.expires_at_ms > s.fetched_at_ms);
    }

    expect_code(client.get("trading_unknown"), ErrorCode::NotFound);
    // Not matched by any allow pattern: denied, whether or not it exists.
    expect_code(
        client.get("webhook_shared_secret"),
        ErrorCode::PermissionDenied,
    );
    // The connection survived every error.
    assert_eq!(
        client.get("trading_api_passphrase").expect("get").expose(),
        PASSPHRASE
    );

    assert!(daemon.stop().success());
    assert!(!daemon.socket.exists(), "socket removed on shutdown");
    let log = daemon.log();
    assert!(log.contains("daemon.ready"));
    for value in [KEY, PASSPHRASE] {
        assert!(
            !log.contains(std::str::from_utf8(value).expect("utf8")),
            "value in log"
        );
    }
}

#[test]
fn other_uid_is_checked_by_kernel_credentials() {
    if !can_run(
        is_root(),
        "other_uid_is_checked_by_kernel_credentials",
        "root to run a client as uid 65534",
    ) {
        return;
    }
    let env = TestEnv::new();
    let config = env
        .conf()
        .shared_with_nobody()
        .file_secret("trading_api_key", KEY)
        .file_secret("public_banner", b"hello-public-value")
        .policy(&[0], &["*"], &[])
        .policy(&[65534], &["public_*"], &[])
        .build();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8 path");

    let out = env.run_as_nobody(
        &probe_bin(),
        &[
            socket,
            "get",
            "trading_api_key",
            "get",
            "public_banner",
            "get",
            "secret_nope",
            "status",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "err get trading_api_key permission_denied",
            "ok get public_banner 1 file 18",
            // Outside the caller's patterns: denied, so the catalog is not revealed.
            "err get secret_nope permission_denied",
            "ok status 1 public_banner",
        ]
    );
    let log = daemon.log();
    assert!(
        log.contains("access.denied") && log.contains("uid=65534"),
        "{log}"
    );
}

#[test]
fn status_prints_the_hosts_health_naming_only_secrets_the_caller_may_see() {
    if !can_run(
        is_root(),
        "status_prints_the_hosts_health_naming_only_secrets_the_caller_may_see",
        "root to run the CLI as uid 65534",
    ) {
        return;
    }
    let env = TestEnv::new();
    // The variable is never set: the secret never loads, and the host is unhealthy.
    let config = env
        .conf()
        .shared_with_nobody()
        .env_secret("trading_api_key", "SECRETD_TEST_NEVER_SET")
        .file_secret("public_banner", b"hello-public-value")
        .policy(&[0], &["*"], &[])
        .policy(&[65534], &["public_*"], &[])
        .build();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8 path");

    let mine =
        String::from_utf8(cli_ok(&["status", "--socket", socket], &[]).stdout).expect("utf-8");
    assert!(
        mine.starts_with("health: unhealthy\n  trading_api_key: never loaded\n\nNAME"),
        "{mine}"
    );
    let health = Client::connect(&daemon.socket)
        .expect("connect")
        .health()
        .expect("health");
    assert_eq!(health.status, HealthStatus::Unhealthy);
    assert_eq!(health.notifications, ChannelState::Off);

    // Another uid learns the verdict, not the name of a secret it may not read.
    let out = env.run_as_nobody(&secretd_bin(), &["status", "--socket", socket]);
    let theirs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        theirs.starts_with("health: unhealthy\n  1 secret(s) you may not see: not servable\n"),
        "{theirs}"
    );
    assert!(!theirs.contains("trading_api_key"), "{theirs}");
    assert!(theirs.contains("public_banner"), "{theirs}");
}

#[test]
fn malformed_input_gets_an_error_or_a_close_and_others_keep_being_served() {
    let (env, config) = two_secret_env();
    let daemon = env.start(&config);
    let socket = daemon.socket.clone();
    let protocol_error = |r: Option<Response<'static>>| match r {
        Some(Response::Error(e)) => e.code,
        other => panic!("expected an error response, got {other:?}"),
    };

    // A length prefix over MAX_FRAME: rejected before any allocation.
    let mut c = RawConn::greeted(&socket);
    c.send_bytes(&u32::MAX.to_le_bytes());
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);
    assert!(c.is_closed());

    // A zero length.
    let mut c = RawConn::greeted(&socket);
    c.send_bytes(&[0, 0, 0, 0]);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // Garbage body.
    let mut c = RawConn::greeted(&socket);
    c.send_body(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);
    assert!(c.is_closed());

    // An unknown request tag.
    let mut c = RawConn::greeted(&socket);
    c.send_body(&[200, 0, 0, 0]);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // A string length claiming 2^40 bytes inside a valid-looking Get.
    let mut c = RawConn::greeted(&socket);
    let mut body = vec![1, 0, 0, 0];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    c.send_body(&body);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // Valid request followed by trailing bytes in the same frame.
    let mut c = RawConn::greeted(&socket);
    let mut frame = Vec::new();
    secretd_proto::frame::encode_frame(&Request::Status, &mut frame).expect("encode");
    let mut body = frame[4..].to_vec();
    body.push(7);
    c.send_body(&body);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // A truncated frame, then the client vanishes.
    let mut c = RawConn::greeted(&socket);
    c.send_bytes(&[100, 0, 0, 0, 1, 2, 3]);
    drop(c);

    // A request before the hello.
    let mut c = RawConn::connect(&socket);
    c.send(&Request::Status);
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);
    assert!(c.is_closed());

    // A hello from a client older than the daemon still serves, one from a newer client is
    // answered with the version both speak, and one with the wrong magic is refused.
    let mut c = RawConn::connect(&socket);
    c.send(&Request::Hello(ClientHello {
        protocol_version: 0,
        ..ClientHello::new("ancient")
    }));
    assert_eq!(protocol_error(c.recv()), ErrorCode::UnsupportedVersion);
    let mut c = RawConn::connect(&socket);
    c.send(&Request::Hello(ClientHello {
        protocol_version: 999,
        ..ClientHello::new("future")
    }));
    match c.recv() {
        Some(Response::Hello(h)) => {
            assert_eq!(h.protocol_version, secretd_proto::PROTOCOL_VERSION);
        }
        other => panic!("expected a negotiated hello, got {other:?}"),
    }
    let mut c = RawConn::connect(&socket);
    c.send(&Request::Hello(ClientHello {
        magic: *b"HTTP",
        ..ClientHello::new("stray")
    }));
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // A second hello on a greeted connection.
    let mut c = RawConn::greeted(&socket);
    c.send(&Request::Hello(ClientHello::new("again")));
    assert_eq!(protocol_error(c.recv()), ErrorCode::ProtocolViolation);

    // Names no catalog could hold: NUL, non-ASCII, too long.
    let mut c = RawConn::greeted(&socket);
    for name in ["a\0b", "clé", &"x".repeat(200)] {
        c.send(&Request::Get { name: name.into() });
        assert_eq!(protocol_error(c.recv()), ErrorCode::InvalidRequest);
    }

    // After all that, a well-behaved client is served.
    let client = Client::connect(&socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);
}

#[test]
fn client_reconnects_after_daemon_restart() {
    let (env, config) = two_secret_env();
    let mut daemon = env.start(&config);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);

    assert!(daemon.stop().success());
    let rotated = b"Omni-Key-rotated-0000-ZZZ!";
    env.write_value("trading_api_key", rotated);
    let _daemon = env.start(&config);

    let secret = client.get("trading_api_key").expect("get after restart");
    assert_eq!(secret.expose(), rotated);
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let (env, config) = two_secret_env();
    let _first = env.start(&config);
    let mut second = env.spawn(&config, "second.toml");
    let status = second
        .wait_exit(Duration::from_secs(15))
        .expect("second daemon should exit by itself");
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    assert!(log.contains("another secretd is already serving"), "{log}");
    // The first one is untouched.
    let client = Client::connect(env.socket()).expect("first still serving");
    assert!(client.get("trading_api_key").is_ok());
}

#[test]
fn stale_socket_is_replaced_and_unsafe_paths_refused() {
    let (env, config) = two_secret_env();
    std::fs::create_dir(env.path("run")).expect("run dir");
    std::fs::set_permissions(
        env.path("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(env.socket()).expect("bind"));
    assert!(env.socket().exists());
    let mut daemon = env.start(&config);
    assert!(daemon.stop().success());

    // A regular file in the way is not deleted.
    std::fs::write(env.socket(), b"precious").expect("write");
    let mut refused = env.spawn(&config, "refused.toml");
    let status = refused.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(refused.log().contains("not a socket"), "{}", refused.log());
    assert_eq!(
        std::fs::read(env.socket()).expect("still there"),
        b"precious"
    );
}

#[test]
fn get_once_reads_in_one_round_trip_with_the_same_answers_as_a_client() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .policy(&[euid()], &["trading_*"], &[])
        .daemon("audit_read_window", "1s")
        .build();
    let daemon = env.start(&config);
    for _ in 0..200 {
        let key = Client::get_once(&daemon.socket, "trading_api_key").expect("get_once");
        assert_eq!(key.expose(), KEY);
        assert_eq!(key.source(), SourceKind::File);
    }
    expect_code(
        Client::get_once(&daemon.socket, "trading_nope"),
        ErrorCode::NotFound,
    );
    assert!(matches!(
        Client::get_once(&daemon.socket, "bad name!"),
        Err(secretd_client::Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Client::get_once(env.path("absent.sock"), "trading_api_key"),
        Err(secretd_client::Error::Connect { .. })
    ));
    // Each read is audited like any other: the first at once, the rest counted across
    // connections and written when the read window ends (`audit_read_window`, 1 s here).
    let admin = Client::connect(&daemon.socket).expect("admin");
    wait_until(
        "200 reads in the audit trail",
        Duration::from_secs(20),
        || {
            let reads: u64 = admin
                .audit_tail(1000, Some("trading_api_key"))
                .expect("tail")
                .iter()
                .filter(|r| r.action == "read" && r.result == "ok")
                .map(|r| r.count)
                .sum();
            (reads == 200).then_some(())
        },
    );
}

#[test]
fn connection_limit_answers_busy() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .daemon("max_connections", 2)
        // One uid may hold only a quarter by default: let it hold both, to reach the total.
        .daemon("max_connections_per_uid", 2)
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let a = daemon.connect_admitted();
    let b = daemon.connect_admitted();
    expect_code(Client::connect(&daemon.socket), ErrorCode::Busy);
    // The one-round-trip read is refused alike (the daemon answers before reading anything).
    expect_code(
        Client::get_once(&daemon.socket, "trading_api_key"),
        ErrorCode::Busy,
    );
    drop(a);
    // The freed slot is usable again once the daemon notices the close.
    let c = daemon.connect_admitted();
    assert!(c.get("trading_api_key").is_ok() && b.get("trading_api_key").is_ok());
}

#[test]
fn unloadable_secret_answers_unavailable_without_blocking_others() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .env_secret("trading_missing", "SECRETD_TEST_SURELY_UNSET_VAR")
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let client = Client::connect(&daemon.socket).expect("connect");
    expect_code(client.get("trading_missing"), ErrorCode::Unavailable);
    assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);
    let status = client.status().expect("status");
    let missing = status
        .iter()
        .find(|s| s.name == "trading_missing")
        .expect("listed");
    assert_eq!(missing.state, EntryState::Missing);
    assert!(
        missing
            .last_error
            .as_ref()
            .expect("error")
            .message
            .contains("not set")
    );
}

#[test]
fn cli_get_status_and_exit_codes() {
    let (env, config) = two_secret_env();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8");

    // --socket after the subcommand, raw bytes, no newline.
    let out = cli(&["get", "trading_api_key", "--socket", socket], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, KEY);

    // SECRETD_SOCKET.
    let out = cli(
        &["get", "trading_api_passphrase"],
        &[("SECRETD_SOCKET", socket)],
    );
    assert_eq!(out.stdout, PASSPHRASE);

    let out = cli(&["get", "trading_nope", "--socket", socket], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("not in the catalog"));

    let out = cli(&["status", "--json", "--socket", socket], &[]);
    assert_eq!(out.status.code(), Some(0));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "trading_api_key");
    assert_eq!(rows[0]["cacheSource"], "file");
    assert_eq!(rows[0]["state"], "fresh");
    assert!(rows[0]["fetchedAt"].as_str().expect("time").ends_with('Z'));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Omni-Key"), "status never shows values");

    let out = cli(&["status", "--socket", socket], &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("health: ok\n\nNAME") && table.contains("trading_api_passphrase"),
        "{table}"
    );

    // Usage errors exit 2; a missing daemon exits 1 with the path in the message.
    assert_eq!(cli(&["get"], &[]).status.code(), Some(2));
    assert_eq!(cli(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(cli(&["serve"], &[]).status.code(), Some(2));
    let out = cli(&["status", "--socket", "/nonexistent/secretd.sock"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/secretd.sock"));

    // A bad config is one line naming the key, exit 1.
    std::fs::write(env.path("bad.toml"), "[daemon]\nsocket_mod = \"0600\"\n").expect("write");
    let out = cli(
        &[
            "serve",
            "--config",
            env.path("bad.toml").to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket_mod"));
}

#[test]
fn dev_mode_serves_the_omni_catalog_to_a_bare_secretd_get() {
    let env = TestEnv::new();
    let runtime = env.path("xdg");
    std::fs::create_dir(&runtime).expect("xdg dir");
    let xdg = runtime.to_str().expect("utf8");
    let mut daemon = std::process::Command::new(support::secretd_bin())
        .args(["serve", "--dev"])
        .env("XDG_RUNTIME_DIR", xdg)
        .env_remove("TRADING_API_KEY")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dev daemon");
    let socket = runtime.join("secretd-dev/secretd.sock");
    wait_until("the dev daemon to start", Duration::from_secs(20), || {
        Client::connect(&socket).ok()
    });
    // No --socket and no SECRETD_SOCKET: the CLI finds the dev socket by itself (unless a
    // production daemon runs on this machine, in which case that one wins).
    if can_run(
        !std::path::Path::new(secretd_proto::paths::DEFAULT_SOCKET).exists(),
        "dev_mode_serves_the_omni_catalog_to_a_bare_secretd_get (the bare get)",
        "no production daemon at /run/secretd/secretd.sock (the CLI would ask that one)",
    ) {
        let out = cli(&["get", "trading_api_key"], &[("XDG_RUNTIME_DIR", xdg)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"demo-Omni-ApiKey-7f3a9c2e41b8");
    }
    let names: Vec<String> = Client::connect(&socket)
        .expect("connect")
        .status()
        .expect("status")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        [
            "trading_api_key",
            "trading_client_secret",
            "trading_api_passphrase",
            "webhook_shared_secret"
        ]
    );
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGINT) };
    assert!(daemon.wait().expect("wait").success());
    assert!(!socket.exists());
}
