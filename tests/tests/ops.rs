//! Operations: Prometheus metrics over HTTP and the socket, /healthz and /status, JSON logs,
//! systemd socket activation and readiness, and `secretd check`.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use secretd_client::Client;
use secretd_gsm_fake::{FakeGsm, Fault};
use support::http::{free_port, http_get, try_http_get};
use support::{TestEnv, cli, secretd_bin, wait_until};

const API_KEY: &str = "projects/apex-test/secrets/omni-trading-api-key";

/// The value of the series `name{labels}` in Prometheus text, if present.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A daemon with a GSM secret and a file secret, its HTTP listener on a free port, JSON logs,
/// and a 1 s refresh and `max_stale` so an outage shows within seconds.
fn http_daemon(env: &TestEnv, fake: &FakeGsm) -> (support::Daemon, u16) {
    fake.add_version(API_KEY, b"Omni-Key-from-GSM-1111!");
    let port = free_port();
    let config = env
        .conf()
        .daemon("metrics_listen", format!("127.0.0.1:{port}"))
        .daemon("refresh_interval", "1s")
        .daemon("max_stale", "1s")
        .gsm_authenticated(fake)
        .gsm_set("attempt_timeout", "200ms")
        .gsm_set("retry_budget", "400ms")
        .gsm_secret("trading_api_key", API_KEY)
        .file_secret("webhook_shared_secret", b"Webhook-Secret-0000-XYZ!")
        .readable_by_me()
        .build();
    let daemon = env.start_with_env(&config, &[("SECRETD_LOG_FORMAT", "json")]);
    // The daemon serves before its first fetches finish; these scenarios start from a loaded
    // catalog (healthy), checked without a read, which would count in the metrics.
    wait_until("a healthy daemon", Duration::from_secs(10), || {
        (http_get(port, "/healthz").0 == 200).then_some(())
    });
    (daemon, port)
}

#[test]
fn metrics_over_http_and_the_socket_count_reads_requests_and_connections_never_values() {
    let fake = FakeGsm::start().expect("fake");
    let env = TestEnv::new();
    let (daemon, port) = http_daemon(&env, &fake);
    let client = Client::connect(&daemon.socket).expect("connect");
    for _ in 0..3 {
        client.get("trading_api_key").expect("get");
    }
    assert!(client.get("trading_nope").is_err());

    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let reads = series(
        &text,
        "omni_secret_reads_total",
        &[("secret_type", "trading_api_key"), ("source", "gsm")],
    );
    assert_eq!(reads, Some(3.0), "{text}");
    assert!(
        series(
            &text,
            "omni_secret_cache_age_seconds",
            &[("secret_type", "webhook_shared_secret"), ("source", "file")]
        )
        .is_some()
    );
    assert!(
        series(
            &text,
            "omni_secretd_requests_total",
            &[("op", "get"), ("result", "not_found")]
        ) == Some(1.0),
        "{text}"
    );
    // Only this client once wait_ready's probe connection has been noticed closing.
    wait_until(
        "omni_secretd_connections == 1",
        Duration::from_secs(5),
        || {
            let (_, text) = http_get(port, "/metrics");
            (series(&text, "omni_secretd_connections", &[]) == Some(1.0)).then_some(())
        },
    );
    assert!(text.contains("omni_secret_refresh_duration_seconds_bucket"));
    assert!(series(&text, "omni_secretd_audit_queue_depth", &[]).is_some());
    assert_eq!(
        series(
            &text,
            "omni_secret_break_glass_active",
            &[("secret_type", "trading_api_key")]
        ),
        Some(0.0)
    );
    assert_eq!(
        series(
            &text,
            "omni_secret_rotation_overdue",
            &[("secret_type", "trading_api_key")]
        ),
        Some(0.0)
    );
    assert!(
        !text.contains("Omni-Key") && !text.contains("Webhook-Secret"),
        "values in metrics"
    );
    // What fleet alerts compare: the version served, whether it is servable or stale.
    let served = client.get("trading_api_key").expect("get");
    let info_line = text
        .lines()
        .find(|l| l.starts_with("omni_secret_info{") && l.contains("trading_api_key"))
        .expect("omni_secret_info");
    assert!(
        info_line.contains(&format!("version=\"{}\"", served.version()))
            && info_line.contains("source=\"gsm\"")
            && info_line.ends_with(" 1"),
        "{info_line}"
    );
    for (name, value) in [("omni_secret_servable", 1.0), ("omni_secret_stale", 0.0)] {
        assert_eq!(
            series(&text, name, &[("secret_type", "trading_api_key")]),
            Some(value),
            "{name}"
        );
    }
    assert_eq!(series(&text, "omni_secretd_audit_writable", &[]), Some(1.0));
    // Every series the packaged alert rules use is one this daemon exports.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/prometheus/secretd-rules.yml"
    ))
    .expect("rules");
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("omni_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which is not exported"
        );
    }

    // The same text over the socket.
    let out = cli(
        &["metrics", "--socket", daemon.socket.to_str().expect("utf8")],
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("omni_secret_reads_total"));
}

#[test]
fn status_and_healthz_over_http_follow_an_outage_and_json_logs_name_it() {
    let fake = FakeGsm::start().expect("fake");
    let env = TestEnv::new();
    let (daemon, port) = http_daemon(&env, &fake);

    let (code, body) = http_get(port, "/status");
    assert_eq!(code, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(rows[0]["name"], "trading_api_key");
    assert_eq!(rows[0]["cacheSource"], "gsm");
    assert!(!body.contains("Omni-Key"));
    assert_eq!(http_get(port, "/healthz").0, 200);

    // GSM fails past max_stale: failures counted by reason, /healthz 503 with a reason.
    fake.set_fault(Some(Fault::Unavailable));
    let body = wait_until("/healthz to turn 503", Duration::from_secs(8), || {
        let (code, body) = http_get(port, "/healthz");
        (code == 503).then_some(body)
    });
    let reason: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reason["status"], "unhealthy");
    assert!(
        reason["reasons"][0]
            .as_str()
            .expect("reason")
            .contains("trading_api_key")
    );
    let (_, text) = http_get(port, "/metrics");
    assert!(
        series(
            &text,
            "omni_secret_failures_total",
            &[
                ("secret_type", "trading_api_key"),
                ("reason", "unavailable")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    fake.set_fault(None);
    wait_until("/healthz to recover", Duration::from_secs(8), || {
        (http_get(port, "/healthz").0 == 200).then_some(())
    });

    // JSON logs with stable event fields, never a value.
    let log = daemon.log();
    let ready = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "daemon.ready")
        .expect("a JSON daemon.ready line");
    assert_eq!(ready["level"], "INFO");
    assert!(
        log.lines()
            .any(|l| l.contains("\"secret\":\"trading_api_key\"")
                && l.contains("\"reason\":\"unavailable\"")),
        "no structured refresh failure line"
    );
    assert!(!log.contains("Omni-Key"));
}

/// Makes `fd` the child's fd 3, as systemd passes a socket (`LISTEN_FDS=1`).
fn pass_as_fd_3(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec, so clear it explicitly.
            if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn socket_activation_and_readiness_notification() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", b"Omni-Key-1234567890-abcdef!")
        .readable_by_me()
        .build();
    let socket = env.path("activated.sock");
    let config_path = env.path("secretd.toml");
    // The config names another path: an activated daemon must use the socket it was given.
    std::fs::write(&config_path, config).expect("config");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let notify_path = env.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");

    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"", "sh"])
        .arg(secretd_bin())
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null());
    pass_as_fd_3(&mut cmd, fd);
    let mut child = cmd.spawn().expect("spawn");
    drop(listener);

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY notification");
    assert_eq!(&buf[..n], b"READY=1");
    let client = Client::connect(&socket).expect("connect to the activated socket");
    assert_eq!(
        client.get("trading_api_key").expect("get").expose(),
        b"Omni-Key-1234567890-abcdef!"
    );
    assert!(!env.socket().exists(), "the configured path was not bound");

    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().expect("wait").success());
    assert!(
        socket.exists(),
        "the activated socket belongs to systemd: left in place"
    );

    // LISTEN_PID naming another process is ignored: the daemon binds its own socket.
    let listener = std::os::unix::net::UnixListener::bind(env.path("other.sock")).expect("bind");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(secretd_bin());
    cmd.args(["serve", "--config"])
        .arg(&config_path)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .stderr(Stdio::null());
    pass_as_fd_3(&mut cmd, fd);
    let mut child = cmd.spawn().expect("spawn");
    wait_until(
        "the daemon to bind its own socket",
        Duration::from_secs(20),
        || Client::connect(env.socket()).ok(),
    );
    // SAFETY: kill with a valid pid and signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
}

#[test]
fn an_activated_socket_whose_file_is_gone_is_refused_at_startup() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", b"Omni-Key-1234567890-abcdef!")
        .readable_by_me()
        .build();
    let config_path = env.path("secretd.toml");
    std::fs::write(&config_path, config).expect("config");
    // What a unit without RuntimeDirectoryPreserve= does on a restart: the directory, and the
    // socket file in it, are removed while systemd keeps the listening socket.
    let socket = env.path("gone.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::remove_file(&socket).expect("remove the socket file");
    let log = env.path("gone.log");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"", "sh"])
        .arg(secretd_bin())
        .args(["serve", "--config"])
        .arg(&config_path)
        .stderr(std::fs::File::create(&log).expect("log"));
    pass_as_fd_3(&mut cmd, listener.as_raw_fd());
    let status = cmd.status().expect("run");
    drop(listener);
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("no longer exists"), "{log}");
    assert!(
        !env.socket().exists(),
        "it did not fall back to another socket"
    );
}

#[test]
fn check_passes_a_good_catalog_and_names_each_violation_of_a_weak_one() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", b"Omni-Key-1234567890-abcdef!")
        .file_secret("trading_client_secret", b"short")
        .file_secret("trading_api_passphrase", b"alllowercaseandlongenough")
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8");

    let out = cli(
        &["check", "--require", "trading_api_key", "--socket", socket],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("check passed: 1 secrets"));

    std::fs::write(env.path("check.toml"), &config).expect("config");
    let out = cli(
        &[
            "check",
            "--config",
            env.path("check.toml").to_str().expect("utf8"),
            "--require",
            "trading_api_key",
            "--require",
            "trading_client_secret",
            "--require",
            "trading_api_passphrase",
            "--require",
            "webhook_shared_secret",
            "--min-ttl",
            "10m",
            "--socket",
            socket,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = report.lines().collect();
    let expect = [
        "trading_client_secret: value is 5 characters; needs at least 16",
        "trading_client_secret: value lacks an upper-case letter, a digit, a symbol",
        "trading_api_passphrase: value lacks an upper-case letter, a digit, a symbol",
        "webhook_shared_secret: missing from the catalog",
        "trading_api_key: due for refresh in",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "no line starting {e:?} in:\n{report}"
        );
    }
    assert!(
        !report.contains("short") && !report.contains("alllowercase"),
        "values in the report"
    );

    // Without --socket, the check talks to the daemon the config names.
    let out = cli(
        &[
            "check",
            "--config",
            env.path("check.toml").to_str().expect("utf8"),
            "--require",
            "trading_api_key",
        ],
        &[("SECRETD_SOCKET", "/nonexistent/secretd.sock")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A bad config is a violation too.
    std::fs::write(env.path("bad.toml"), "[daemon]\nsokcet = 1\n").expect("bad");
    let out = cli(
        &[
            "check",
            "--config",
            env.path("bad.toml").to_str().expect("utf8"),
            "--socket",
            socket,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sokcet"));
}

#[test]
fn a_shared_fingerprint_key_makes_fingerprints_compare_across_hosts() {
    const VALUE: &[u8] = b"Omni-Key-Fleet-FFFF-0101!";
    let fingerprint_on = |env: &TestEnv, key: Option<&std::path::Path>| {
        let mut conf = env
            .conf()
            .file_secret("trading_api_key", VALUE)
            .readable_by_me();
        if let Some(k) = key {
            conf = conf.daemon("fingerprint_key", k.to_str().expect("utf8"));
        }
        let daemon = env.start(&conf.build());
        let client = Client::connect(&daemon.socket).expect("connect");
        client.get("trading_api_key").expect("get");
        client.status().expect("status")[0]
            .fingerprint
            .clone()
            .expect("fingerprint")
    };
    // Per-host keys (the default): the same value fingerprints differently on each host.
    let (a, b) = (TestEnv::new(), TestEnv::new());
    assert_ne!(fingerprint_on(&a, None), fingerprint_on(&b, None));

    // One key file for the fleet: the same value, the same fingerprint.
    let shared = TestEnv::new();
    let key = shared.path("fleet-fingerprint.key");
    std::fs::write(&key, [0x42u8; 32]).expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (c, d) = (TestEnv::new(), TestEnv::new());
    assert_eq!(
        fingerprint_on(&c, Some(&key)),
        fingerprint_on(&d, Some(&key))
    );

    // A shared key others can read is refused, as is one that does not exist (never made up).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    for path in [key.clone(), shared.path("missing.key")] {
        let env = TestEnv::new();
        let conf = env
            .conf()
            .file_secret("trading_api_key", VALUE)
            .daemon("fingerprint_key", path.to_str().expect("utf8"))
            .build();
        let mut daemon = env.spawn(&conf, "refused.toml");
        let status = daemon.wait_exit(Duration::from_secs(20)).expect("exits");
        assert!(!status.success(), "{path:?}");
        assert!(daemon.log().contains("fingerprint"), "{}", daemon.log());
    }
}

#[test]
fn metrics_off_loopback_need_metrics_listen_public() {
    let env = TestEnv::new();
    let port = free_port();
    let everywhere = |public: bool| {
        let mut conf = env
            .conf()
            .daemon("metrics_listen", format!("0.0.0.0:{port}"))
            .file_secret("trading_api_key", b"Omni-Key-Public-Metrics-01!")
            .readable_by_me();
        if public {
            conf = conf.daemon("metrics_listen_public", true);
        }
        conf.build()
    };
    // Every address of the host, unasked for: the endpoints name every secret, so the daemon
    // refuses to start and says which key allows it.
    let mut refused = env.spawn(&everywhere(false), "everywhere.toml");
    let status = refused
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon refuses to start");
    assert!(!status.success());
    let log = refused.log();
    assert!(log.contains("metrics_listen_public"), "{log}");
    // Asked for: it serves on every address, loopback among them.
    let daemon = env.start(&everywhere(true));
    let (code, body) = wait_until("/metrics on 0.0.0.0", Duration::from_secs(10), || {
        try_http_get(port, "/metrics").ok()
    });
    assert_eq!(code, 200);
    assert!(body.contains("trading_api_key"), "{body}");
    drop(daemon);
}
