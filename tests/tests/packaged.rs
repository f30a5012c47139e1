//! The Debian packages under real systemd: each test boots a fresh container
//! (`scripts/container`), installs this build's packages with apt-get as a user would, and
//! checks what the packaging promises: socket activation for a non-root client, a C program
//! built with pkg-config and the wheel in a venv reading a secret, restarts and restart bursts
//! that lose nothing, the hardening score, attestation of another uid's program, data kept on
//! remove and upgrade and deleted on purge, and Prometheus scraping with the shipped rules.
//! `scripts/package` must have built the packages (scripts/test does, before cargo test).

mod support;

use std::path::Path;
use std::time::Duration;

use support::container::Container;
use support::wait_until;

/// The value the tests' file secret holds.
const API_KEY: &str = "Omni-Key-Packaged-0123456789";
/// The client user: uid 1500, in the `secretd` group the socket admits.
const BOT_UID: u32 = 1500;
/// How long systemd may take to change a unit's state.
const UNIT_TIMEOUT: Duration = Duration::from_secs(30);
/// CLI loops (a process and connection per read) running through the restarts.
const CLI_LOOPS: usize = 3;
/// The consumer in C: reads once, or in a loop until a stop file appears.
const READER_C: &str = include_str!("packaged/reader.c");

/// A daemon config: one file secret for the bot, one more bound to the C reader's path
/// (`exe` attestation of another uid), metrics on loopback; `daemon` adds `[daemon]` keys and
/// `rest` more tables.
fn config(daemon: &str, rest: &str) -> String {
    format!(
        r#"[daemon]
socket = "/run/secretd/secretd.sock"
db = "/var/lib/secretd/secretd.redb"
admin_uids = [0]
metrics_listen = "127.0.0.1:9477"
{daemon}

[[secret]]
name = "api_key"
source = "file"
path = "/etc/secretd/api_key"

[[secret]]
name = "c_only"
source = "file"
path = "/etc/secretd/api_key"

[[policy]]
uids = [{BOT_UID}]
allow = ["api_key", "gsm_*"]

[[policy]]
uids = [{BOT_UID}]
allow = ["c_only"]
exe = ["/usr/local/bin/secretd-reader"]
{rest}"#
    )
}

/// Writes `config` as the daemon's (it takes effect at the next start).
fn write_config(ct: &Container, config: &str) {
    let out = ct.run_with_input("cat > /etc/secretd/secretd.toml", config.as_bytes());
    assert!(out.status.success(), "writing the config failed");
}

/// A container with the packages installed, the bot user, the config above (in place before
/// the daemon first starts: installing starts only the socket) and the C reader built with
/// pkg-config from the -dev package.
fn installed(test: &str) -> Option<Container> {
    installed_binding(test, &[])
}

/// [`installed`], with host paths `binds` mounted read-only inside.
fn installed_binding(test: &str, binds: &[&Path]) -> Option<Container> {
    let ct = Container::boot_binding(test, binds)?;
    ct.install_packages();
    prepare(&ct);
    Some(ct)
}

/// The bot user, the secret file, the config and the C reader, on installed packages.
fn prepare(ct: &Container) {
    ct.sh(&format!(
        "useradd --uid {BOT_UID} --groups secretd --create-home bot"
    ));
    ct.run_with_input(
        "install -m 0400 -o secretd -g secretd /dev/stdin /etc/secretd/api_key",
        API_KEY.as_bytes(),
    );
    write_config(ct, &config("", ""));
    let out = ct.run_with_input(
        "cat > /tmp/reader.c && cc -Wall -Wextra -Werror -o /usr/local/bin/secretd-reader \
         /tmp/reader.c $(pkg-config --cflags --libs secretd)",
        READER_C.as_bytes(),
    );
    assert!(
        out.status.success(),
        "building the C reader with pkg-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` as the bot user.
fn as_bot(cmd: &str) -> String {
    format!("setpriv --reuid=bot --regid=bot --init-groups -- {cmd}")
}

/// Clients reading without pause, as the bot: the C reader on one connection it keeps
/// (reconnecting), and [`CLI_LOOPS`] loops of the CLI, a new process and connection per read
/// (the case that lost requests: a stopping daemon closing new connections unanswered).
struct ClientLoops<'a> {
    /// Where they run.
    ct: &'a Container,
}

impl<'a> ClientLoops<'a> {
    fn start(ct: &'a Container) -> ClientLoops<'a> {
        ct.sh(&format!(
            "rm -f /tmp/stop /tmp/c.out /tmp/cli-*.out; {} > /tmp/c.out 2> /tmp/c.err &",
            as_bot("/usr/local/bin/secretd-reader api_key /tmp/stop")
        ));
        for n in 0..CLI_LOOPS {
            ct.sh(&format!(
                "(ok=0; failed=0; while :; do stop=0; [ -e /tmp/stop ] && stop=1; \
                   if {} > /dev/null 2>> /tmp/cli.err; then ok=$((ok+1)); else failed=$((failed+1)); fi; \
                   [ $stop = 1 ] && break; done; echo ok=$ok failed=$failed > /tmp/cli-{n}.out) \
                 > /dev/null 2>&1 &",
                as_bot("secretd get api_key")
            ));
        }
        ClientLoops { ct }
    }

    /// Stops the loops and asserts that every read they made was answered.
    fn finish_losing_nothing(self, during: &str) {
        let ct = self.ct;
        ct.sh("touch /tmp/stop");
        let results = wait_until("every client loop to finish", UNIT_TIMEOUT, || {
            let out = ct.run("cat /tmp/c.out /tmp/cli-*.out");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.lines().count() == 1 + CLI_LOOPS).then_some(text)
        });
        let errors = ct.sh("cat /tmp/c.err; cat /tmp/cli.err 2>/dev/null || true");
        eprintln!(
            "client loops across {during}: {}",
            results.replace('\n', "; ")
        );
        for line in results.lines() {
            assert!(
                line.contains(" failed=0"),
                "requests were lost during {during}: {results}\n{errors}"
            );
            let ok: u64 = line["ok=".len()..line.find(' ').expect("a space")]
                .parse()
                .expect("a count");
            assert!(ok > 5, "a loop barely ran: {results}");
        }
    }
}

#[test]
fn packages_install_and_serve_c_and_python_through_socket_activation() {
    let Some(ct) = installed("packages_install_and_serve_c_and_python_through_socket_activation")
    else {
        return;
    };
    // Installed: the socket listens, the daemon has not started, /run/secretd is traversable.
    assert_eq!(ct.sh("systemctl is-active secretd.socket"), "active");
    assert_eq!(
        ct.sh("systemctl show -p ActiveState --value secretd"),
        "inactive"
    );
    assert_eq!(ct.sh("stat -c '%a %U' /run/secretd"), "755 secretd");

    // The first read by a non-root client starts the daemon.
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    assert_eq!(ct.sh("systemctl is-active secretd"), "active");

    // It runs as secretd, with its secrets in locked memory, and told systemd it was ready only
    // once serving (Type=notify: the ready log line comes before systemd's "Started").
    let pid = ct.sh("systemctl show -p MainPID --value secretd");
    let status = ct.sh(&format!("cat /proc/{pid}/status"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .next()
            .expect("a value")
            .to_owned()
    };
    assert_eq!(field("Uid:"), ct.sh("id -u secretd"));
    let locked_kib: u64 = field("VmLck:").parse().expect("VmLck in kB");
    assert!(locked_kib > 0, "the daemon locks no memory: {status}");
    assert_eq!(ct.sh("systemctl show -p Type --value secretd"), "notify");
    // The daemon recorded its start in the audit trail (after its socket is served, before
    // it sends READY=1) no later than systemd saw the unit become active: active means
    // serving. Both are wall-clock times, compared in milliseconds.
    let millis = |script: &str| -> u64 {
        let out = ct.sh(script);
        out.parse()
            .unwrap_or_else(|_| panic!("`{script}` gave {out:?}, not milliseconds"))
    };
    let started = millis(
        r#"date -d "$(secretd audit tail --json -n 1000 | grep -m1 '"action":"daemon_start"' | sed 's/.*"recordedAt":"\([^"]*\)".*/\1/')" +%s%3N"#,
    );
    let active = millis(
        r#"date -d "$(systemctl show -p ActiveEnterTimestamp --value --timestamp=us+utc secretd)" +%s%3N"#,
    );
    assert!(
        started <= active,
        "systemd called the daemon active {} ms before it served",
        started - active
    );

    // A C program built with pkg-config against libsecretd-dev, run by the bot: its `exe`
    // policy matches (attestation of another uid's program, which needs CAP_SYS_PTRACE in the
    // unit); the same uid through another program is refused that secret.
    assert_eq!(
        ct.sh(&as_bot("/usr/local/bin/secretd-reader api_key")),
        API_KEY
    );
    assert_eq!(
        ct.sh(&as_bot("/usr/local/bin/secretd-reader c_only")),
        API_KEY
    );
    let denied = ct.run(&as_bot("secretd get c_only"));
    assert!(!denied.status.success(), "c_only was served to the CLI");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // The wheel in a venv (no Rust in the container), by the bot.
    ct.sh(&format!(
        "python3 -m venv /opt/venv && /opt/venv/bin/pip install --quiet --no-index {}/*.whl",
        ct.wheels.display()
    ));
    let py = "import secretd; c = secretd.Client(); print(c.get('api_key').expose().decode())";
    assert_eq!(
        ct.sh(&as_bot(&format!("/opt/venv/bin/python -c \"{py}\""))),
        API_KEY
    );

    // The hardening holds with CAP_SYS_PTRACE granted: exposure 2.0 or lower.
    let security = ct.sh("systemd-analyze security --no-pager secretd.service | tail -1");
    let score: f64 = security
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no score in {security}"));
    eprintln!("systemd-analyze security secretd.service: {security}");
    assert!(score <= 2.0, "{security}");
}

#[test]
fn restarts_under_a_client_loop_lose_no_request() {
    let Some(ct) = installed("restarts_under_a_client_loop_lose_no_request") else {
        return;
    };
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    // Clients read without pause while the daemon restarts five times.
    let loops = ClientLoops::start(&ct);
    for _ in 0..5 {
        let before = ct.sh("systemctl show -p MainPID --value secretd");
        ct.sh("systemctl restart secretd");
        ct.wait_for_state("secretd", "active", UNIT_TIMEOUT);
        let after = ct.sh("systemctl show -p MainPID --value secretd");
        assert_ne!(before, after, "the daemon did not restart");
    }
    loops.finish_losing_nothing("five restarts");
}

#[test]
fn a_burst_of_restarts_and_a_crash_leave_the_socket_serving() {
    let Some(ct) = installed("a_burst_of_restarts_and_a_crash_leave_the_socket_serving") else {
        return;
    };
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    // Eight restarts in a row, well past systemd's default start limit (5 in 10 s).
    for _ in 0..8 {
        ct.sh("systemctl restart secretd");
    }
    assert_eq!(ct.sh("systemctl is-active secretd.socket"), "active");
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    // A crash: systemd restarts it (Restart=on-failure) and the socket queues clients meanwhile.
    ct.sh("systemctl kill --signal=SIGKILL secretd");
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    assert_eq!(ct.sh("systemctl is-active secretd.socket"), "active");
    assert_eq!(
        ct.sh("test -S /run/secretd/secretd.sock && echo socket"),
        "socket"
    );
}

#[test]
fn an_upgrade_from_the_previous_commit_keeps_data_and_loses_no_request_and_purge_deletes() {
    let test =
        "an_upgrade_from_the_previous_commit_keeps_data_and_loses_no_request_and_purge_deletes";
    let previous = support::container::target_dir().join("previous/debian");
    if !support::can_run(
        previous.is_dir(),
        test,
        &format!(
            "{} (scripts/package --previous; scripts/test builds it first)",
            previous.display()
        ),
    ) {
        return;
    }
    let Some(ct) = Container::boot_binding(test, &[&previous]) else {
        return;
    };
    ct.install_packages_from(&previous);
    prepare(&ct);
    let old_version = ct.sh("dpkg-query -W -f='${Version}' secretd");
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    ct.sh("systemctl stop secretd");
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    let verify = ct.sh("secretd audit verify");
    eprintln!("audit verify after stop and start: {verify}");
    let records: u64 = ct
        .sh("secretd audit tail -n 1000 --json | wc -l")
        .parse()
        .expect("count");

    // The upgrade, under client loops: the new binary takes over (postinst try-restart) while
    // the socket keeps listening; the config and the data stay.
    let pid = ct.sh("systemctl show -p MainPID --value secretd");
    let loops = ClientLoops::start(&ct);
    ct.install_packages();
    loops.finish_losing_nothing("the upgrade");
    let new_version = ct.sh("dpkg-query -W -f='${Version}' secretd");
    eprintln!("upgraded {old_version} -> {new_version}");
    assert_ne!(
        old_version, new_version,
        "apt-get installed the same version"
    );
    assert_ne!(
        pid,
        ct.sh("systemctl show -p MainPID --value secretd"),
        "the upgrade did not restart the daemon"
    );
    assert!(
        ct.sh("cat /etc/secretd/secretd.toml").contains("c_only"),
        "the upgrade replaced the admin's config"
    );
    ct.sh("secretd audit verify");
    let after: u64 = ct
        .sh("secretd audit tail -n 1000 --json | wc -l")
        .parse()
        .expect("count");
    assert!(
        after > records,
        "audit records were lost: {records} then {after}"
    );

    // Remove keeps the data and the config and stops serving; purge deletes them.
    ct.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q secretd");
    assert_eq!(
        ct.sh("systemctl show -p ActiveState --value secretd.socket"),
        "inactive"
    );
    ct.sh("test -f /var/lib/secretd/secretd.redb && test -f /etc/secretd/secretd.toml");
    ct.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q secretd");
    ct.sh("! test -e /var/lib/secretd && ! test -e /etc/secretd");
}

#[test]
fn prometheus_scrapes_the_daemon_with_the_shipped_rules() {
    let Some(ct) = installed("prometheus_scrapes_the_daemon_with_the_shipped_rules") else {
        return;
    };
    // A secret whose file is missing: never loaded, so not servable (SecretdSecretUnavailable).
    ct.run_with_input(
        "cat >> /etc/secretd/secretd.toml",
        b"\n[[secret]]\nname = \"missing\"\nsource = \"file\"\npath = \"/etc/secretd/missing\"\n",
    );
    assert_eq!(ct.sh(&as_bot("secretd get api_key")), API_KEY);
    // The shipped rules, with each `for:` cut to 0s so a rule fires within the test; scrape
    // and evaluate every second.
    ct.sh(
        "sed 's/^\\( *\\)for: .*/\\1for: 0s/' /usr/share/secretd/prometheus/secretd-rules.yml \
           > /etc/prometheus/secretd-rules.yml",
    );
    ct.run_with_input(
        "cat > /etc/prometheus/prometheus.yml && systemctl restart prometheus",
        b"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - secretd-rules.yml\n\
scrape_configs:\n  - job_name: secretd\n    static_configs:\n      - targets: ['127.0.0.1:9477']\n",
    );
    // A query's result, or "" while Prometheus is not answering yet.
    let query = |q: &str| {
        let out = ct.run(&format!(
            "curl -fsS --get --data-urlencode 'query={q}' http://127.0.0.1:9090/api/v1/query"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("Prometheus to scrape secretd", UNIT_TIMEOUT, || {
        query("up{job=\"secretd\"} == 1")
            .contains("\"value\"")
            .then_some(())
    });
    // Every metric a rule or a dashboard query names is in the scrape.
    let rules = ct.sh("cat /usr/share/secretd/prometheus/secretd-rules.yml");
    let dashboard = ct.sh("cat /usr/share/secretd/grafana/secretd-dashboard.json");
    let mut names: Vec<String> = format!("{rules}\n{dashboard}")
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("omni_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "too few metric names found: {names:?}");
    for name in &names {
        wait_until(
            || format!("{name} in Prometheus (named by a rule or the dashboard)"),
            UNIT_TIMEOUT,
            || {
                query(&format!("count({{__name__=\"{name}\"}})"))
                    .contains("\"value\"")
                    .then_some(())
            },
        );
    }
    // The unavailable secret's alert fires.
    let alerts = wait_until("SecretdSecretUnavailable to fire", UNIT_TIMEOUT, || {
        let alerts = ct.sh("curl -fsS http://127.0.0.1:9090/api/v1/alerts");
        (alerts.contains("SecretdSecretUnavailable") && alerts.contains("\"firing\""))
            .then_some(alerts)
    });
    assert!(alerts.contains("\"secret_type\":\"missing\""), "{alerts}");
}

#[test]
fn the_last_known_good_key_as_an_encrypted_credential_serves_through_a_gsm_outage() {
    let test = "the_last_known_good_key_as_an_encrypted_credential_serves_through_a_gsm_outage";
    // The in-repo GSM fake, run inside the container on loopback (it has no network).
    let fake = support::container::target_dir()
        .join(if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        })
        .join("secretd-fake-gsm");
    if !support::can_run(
        fake.exists(),
        test,
        &format!("{} (cargo build -p secretd-gsm-fake)", fake.display()),
    ) {
        return;
    }
    let Some(ct) = installed_binding(test, &[&fake]) else {
        return;
    };
    const GSM_VALUE: &str = "Omni-Gsm-Sealed-Value-0123456789";
    ct.sh(&format!(
        "systemd-run --unit=fake-gsm {} --listen 127.0.0.1:8085 --secret projects/apex-test/secrets/gsm-key={GSM_VALUE}",
        fake.display()
    ));
    // The sealing key as a credential encrypted with this host's key (no TPM here), made in
    // this boot, and handed to the unit with LoadCredentialEncrypted= in a drop-in.
    ct.sh(
        "head -c 32 /dev/urandom | systemd-creds encrypt --with-key=host --name=secretd-lkg-key \
           - /etc/secretd/lkg-key.cred \
         && mkdir -p /etc/systemd/system/secretd.service.d \
         && printf '[Service]\\nLoadCredentialEncrypted=secretd-lkg-key:/etc/secretd/lkg-key.cred\\n' \
           > /etc/systemd/system/secretd.service.d/lkg.conf \
         && systemctl daemon-reload",
    );
    write_config(
        &ct,
        &config(
            "last_known_good = \"/var/lib/secretd/last-known-good.sealed\"",
            "\n[gsm]\nproject = \"apex-test\"\nendpoint = \"http://127.0.0.1:8085\"\nanonymous = true\n\n\
             [[secret]]\nname = \"gsm_key\"\nsource = \"gsm\"\ngcp_secret = \"gsm-key\"\nttl = \"1h\"\n",
        ),
    );
    wait_until("the fake GSM to listen", UNIT_TIMEOUT, || {
        ct.run("curl -s -o /dev/null http://127.0.0.1:8085/")
            .status
            .success()
            .then_some(())
    });
    assert_eq!(ct.sh(&as_bot("secretd get gsm_key")), GSM_VALUE);
    wait_until("the sealed last-known-good file", UNIT_TIMEOUT, || {
        ct.run("test -s /var/lib/secretd/last-known-good.sealed")
            .status
            .success()
            .then_some(())
    });
    let plaintext = ct.run(&format!(
        "grep -c {GSM_VALUE} /var/lib/secretd/last-known-good.sealed"
    ));
    assert!(
        !plaintext.status.success(),
        "the sealed file holds the value in plaintext"
    );

    // GSM goes away; the restarted daemon serves the sealed value, unsealed with the key
    // systemd decrypted for it.
    ct.sh("systemctl stop fake-gsm && systemctl restart secretd");
    assert_eq!(ct.sh(&as_bot("secretd get gsm_key")), GSM_VALUE);
    let cache_source = ct.sh(
        "secretd status --json | python3 -c \
           'import json, sys; print(next(r[\"cacheSource\"] for r in json.load(sys.stdin) if r[\"name\"] == \"gsm_key\"))'",
    );
    assert_eq!(
        cache_source, "last_known_good",
        "gsm_key is not served from the sealed copy"
    );
}
