//! The systemd credential provider on the host, with a program that loads a credential exactly
//! as systemd 252 does (`secretd-credential-load`: abstract address naming the unit and the
//! id, run inside the unit's cgroup): a granted unit gets the value and the read is audited
//! with the unit; a unit not granted, an unknown secret, a process outside the unit's cgroup
//! and a peer that is not systemd all get the reply that fails a unit's start, and the daemon
//! logs the unit and the reason. Real systemd (and the restarts after a rotation) is in
//! `packaged_credentials.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{TestEnv, can_run, cgroup_root, cli_ok, is_root, wait_until};

const VALUE: &str = "cred-value-5f1e2d3c";
/// One byte over systemd's 1 MiB credential cap: the reply that fails a start.
const REFUSAL_LEN: usize = 1024 * 1024 + 1;

fn loader() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secretd-credential-load"))
}

/// A unit's cgroup under system.slice, removed on drop.
struct UnitCgroup(PathBuf);

impl UnitCgroup {
    fn new(root: &Path, unit: &str) -> UnitCgroup {
        let dir = root.join("system.slice").join(unit);
        std::fs::create_dir_all(&dir).expect("make the unit's cgroup");
        UnitCgroup(dir)
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

/// Loads `id` for `unit` from inside `cgroup`; the loader's one line.
fn load(socket: &Path, unit: &str, id: &str, cgroup: Option<&UnitCgroup>) -> String {
    let mut cmd = Command::new(loader());
    cmd.arg(socket).arg(unit).arg(id);
    if let Some(cg) = cgroup {
        cmd.arg(cg.procs());
    }
    let out = cmd.output().expect("run the loader");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn units_get_what_credential_grants_and_a_refusal_fails_their_start() {
    let root = cgroup_root();
    if !can_run(
        is_root() && root.is_some(),
        "units_get_what_credential_grants_and_a_refusal_fails_their_start",
        "root and a writable cgroup hierarchy",
    ) {
        return;
    }
    let root = root.expect("checked");
    let env = TestEnv::new();
    let pid = std::process::id();
    let (bot, other) = (
        format!("mm-bot-{pid}.service"),
        format!("other-{pid}.service"),
    );
    let creds = env.path("run/credentials.sock");
    let conf = env
        .conf()
        .daemon("credentials_socket", creds.to_str().expect("utf-8"))
        .file_secret("trading_api_key", VALUE.as_bytes())
        .file_secret("trading_spare", b"spare")
        .file_secret("ops_key", b"ops")
        .readable_by_me()
        .build()
        + "\n[[credential]]\nunits = [\"mm-bot-*.service\"]\nallow = [\"trading_*\"]\n\
           on_change = \"none\"\n";
    let daemon = env.start(&conf);
    let bot_cg = UnitCgroup::new(&root, &bot);
    let other_cg = UnitCgroup::new(&root, &other);

    // Granted: the value, byte for byte; then the read is in the audit trail with the unit.
    assert_eq!(
        load(&creds, &bot, "trading_api_key", Some(&bot_cg)),
        format!("ok {} {VALUE}", VALUE.len())
    );
    // The record is queued before the value is sent; the audit writer commits in groups, so
    // the listing may take a moment to show it.
    let env_socket = [("SECRETD_SOCKET", daemon.socket.to_str().expect("utf-8"))];
    let read_by_unit = format!("unit={bot} (credential)");
    let audit = wait_until(
        "the credential read in the audit trail",
        Duration::from_secs(10),
        || {
            let out = cli_ok(&["audit", "tail", "--json", "-n", "50"], &env_socket);
            let audit = String::from_utf8_lossy(&out.stdout).into_owned();
            audit.contains(&read_by_unit).then_some(audit)
        },
    );
    assert!(!audit.contains(VALUE), "the audit holds the value");

    // Refused, each with the reply that fails the start, and a log line naming the unit and
    // why (systemd itself says only "Protocol error").
    let refused = format!("too-large {REFUSAL_LEN}");
    let cases = [
        (
            load(&creds, &bot, "ops_key", Some(&bot_cg)),
            bot.as_str(),
            "no [[credential]] grants",
        ),
        (
            load(&creds, &other, "trading_api_key", Some(&other_cg)),
            other.as_str(),
            "no [[credential]] grants",
        ),
        (
            load(&creds, &bot, "trading_nope", Some(&bot_cg)),
            bot.as_str(),
            "not in the catalog",
        ),
        // The address names the bot, the process is in another unit.
        (
            load(&creds, &bot, "trading_api_key", Some(&other_cg)),
            bot.as_str(),
            "not in",
        ),
    ];
    for (said, unit, why) in &cases {
        assert_eq!(said, &refused, "{unit}: {why}");
        let log = daemon.wait_for_log(why);
        assert!(
            log.lines()
                .any(|l| l.contains("credential.refused") && l.contains(unit) && l.contains(why)),
            "no refusal line for {unit} ({why}):\n{log}"
        );
    }
    // [[policy]] grants this uid everything; it does not apply to credentials.
    assert_eq!(
        load(&creds, &other, "trading_spare", Some(&other_cg)),
        refused
    );
    // Not systemd's address at all.
    let plain = Command::new("sh")
        .arg("-c")
        .arg("python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
              s.shutdown(socket.SHUT_WR); n=0\nwhile True:\n  b=s.recv(65536)\n  if not b: break\n  n+=len(b)\nprint(n)' \"$0\"")
        .arg(&creds)
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout).trim(),
        REFUSAL_LEN.to_string()
    );
    daemon.wait_for_log("not a systemd credential request");
    // The socket is 0600: another uid cannot even connect.
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env.runnable_copy(&loader()))
        .arg(&creds)
        .arg(&bot)
        .arg("trading_api_key")
        .output()
        .expect("setpriv");
    let said = String::from_utf8_lossy(&nobody.stdout);
    assert!(
        said.contains("error") && said.contains("ermission denied"),
        "{said}"
    );
    assert!(!daemon.log().contains(VALUE), "the log holds the value");
}

#[test]
fn a_credential_table_needs_the_socket_and_valid_units() {
    let env = TestEnv::new();
    let base = env.conf().file_secret("k", b"v").readable_by_me().build();
    let check = |extra: &str| check_config(&env, &format!("{base}\n{extra}"));
    // One socket cannot be both.
    let both = env
        .conf()
        .daemon("credentials_socket", env.socket().to_str().expect("utf-8"))
        .file_secret("k", b"v")
        .build();
    assert!(
        check_config(&env, &both).contains("another path than daemon.socket"),
        "{}",
        check_config(&env, &both)
    );
    let table = "[[credential]]\nunits = [\"mm-bot.service\"]\nallow = [\"k\"]\n";
    assert!(
        check(table).contains("credentials_socket is not"),
        "{}",
        check(table)
    );
    let bad_unit = "[[credential]]\nunits = [\"/etc/passwd\"]\nallow = [\"k\"]\n";
    assert!(
        check(bad_unit).contains("is not a service unit name"),
        "{}",
        check(bad_unit)
    );
    let escaped = "[[credential]]\nunits = [\"a\\\\x2d*.service\"]\nallow = [\"k\"]\n";
    assert!(
        check(escaped).contains("is not a service unit name"),
        "{}",
        check(escaped)
    );
    let bad_change =
        "[[credential]]\nunits = [\"a.service\"]\nallow = [\"k\"]\non_change = \"reload\"\n";
    assert!(
        check(bad_change).contains("on_change"),
        "{}",
        check(bad_change)
    );
}

/// `secretd check` of `config`: what it says (the config's error is one of the violations).
fn check_config(env: &TestEnv, config: &str) -> String {
    let path = env.path("c.toml");
    std::fs::write(&path, config).expect("config");
    let out = Command::new(support::secretd_bin())
        .args(["check", "--config"])
        .arg(&path)
        .args(["--require", "k"])
        .env("SECRETD_SOCKET", env.path("none.sock"))
        .output()
        .expect("secretd check");
    // The config's error is one of the violations, on stdout.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
