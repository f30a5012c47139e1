//! The systemd credential provider under real systemd (a container, as in packaged.rs): units
//! with `LoadCredential=ID:/run/secretd/credentials.sock` read their secret; a unit not granted
//! fails to start with 243/CREDENTIALS and secretd's journal names it and why; after a
//! rotation every granted unit is restarted through D-Bus and the polkit rule secretd
//! generates, within its stagger plus 5 s, at spread-out moments, and reads the new value,
//! also the units that loaded before secretd last restarted; the daemon's user may restart
//! nothing else.

mod support;

use std::time::{Duration, Instant};

use support::container::Container;
use support::wait_until;

/// How long systemd may take to change a unit's state.
const UNIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The grants' stagger, and what the issue allows beyond it for a restart to happen.
const STAGGER: Duration = Duration::from_secs(10);
const RESTART_SLACK: Duration = Duration::from_secs(5);
const OLD: &str = "cred-old-1c9e7a5b";
const NEW: &str = "cred-new-8d2f4b6e";
/// The granted units: one plain, four instances of a template.
const GRANTED: [&str; 5] = [
    "mm-bot.service",
    "fix-gw@1.service",
    "fix-gw@2.service",
    "fix-gw@3.service",
    "fix-gw@4.service",
];

const CONFIG: &str = r#"[daemon]
socket = "/run/secretd/secretd.sock"
db = "/var/lib/secretd/secretd.redb"
admin_uids = [0]
credentials_socket = "/run/secretd/credentials.sock"

[[secret]]
name = "trading_api_key"
source = "file"
path = "/etc/secretd/trading_api_key"

[[secret]]
name = "ops_key"
source = "file"
path = "/etc/secretd/trading_api_key"

[[credential]]
units = ["mm-bot.service", "fix-gw@*.service"]
allow = ["trading_*"]
on_change = "restart"
stagger = "10s"
"#;

/// A consumer with no secretd library: it copies its credential where the test can read it
/// and notes when it started.
fn unit(credential: &str) -> String {
    format!(
        "[Unit]\nAfter=secretd-credentials.socket\n\n[Service]\nType=exec\n\
         LoadCredential={credential}:/run/secretd/credentials.sock\n\
         ExecStart=/bin/sh -c 'cat \"$$CREDENTIALS_DIRECTORY/{credential}\" > /run/creds/%n.value; \
         date +%%s.%%N >> /run/creds/%n.starts; exec sleep infinity'\n"
    )
}

fn value_of(ct: &Container, unit: &str) -> String {
    ct.sh(&format!("cat /run/creds/{unit}.value 2>/dev/null || true"))
}

#[test]
fn units_load_credentials_are_refused_without_starting_and_restart_on_rotation() {
    let test = "units_load_credentials_are_refused_without_starting_and_restart_on_rotation";
    let Some(ct) = Container::boot(test) else {
        return;
    };
    ct.install_packages();
    ct.run_with_input("cat > /etc/secretd/secretd.toml", CONFIG.as_bytes());
    ct.run_with_input(
        "install -m 0400 -o secretd -g secretd /dev/stdin /etc/secretd/trading_api_key",
        OLD.as_bytes(),
    );
    ct.run_with_input(
        "cat > /etc/systemd/system/mm-bot.service",
        unit("trading_api_key").as_bytes(),
    );
    ct.run_with_input(
        "cat > /etc/systemd/system/fix-gw@.service",
        unit("trading_api_key").as_bytes(),
    );
    ct.run_with_input(
        "cat > /etc/systemd/system/ops-tool.service",
        unit("ops_key").as_bytes(),
    );
    ct.run_with_input(
        "cat > /etc/systemd/system/other.service",
        unit("trading_api_key").as_bytes(),
    );
    ct.sh("mkdir -p /run/creds && systemctl daemon-reload");
    // The daemon is not running yet: the first credential request starts it, with both sockets.
    ct.sh("systemctl enable --now secretd-credentials.socket");
    assert_eq!(
        ct.sh("stat -c '%a %U' /run/secretd/credentials.sock"),
        "600 root"
    );

    ct.sh(&format!("systemctl start {}", GRANTED.join(" ")));
    for unit in GRANTED {
        assert_eq!(value_of(&ct, unit), OLD, "{unit}");
    }

    // Not granted (a secret outside `allow`, a unit outside `units`): the start fails, the
    // unit never runs, and secretd's journal says which unit and why.
    for (unit, why) in [
        ("ops-tool.service", "no [[credential]] grants"),
        ("other.service", "no [[credential]] grants"),
    ] {
        let started = ct.run(&format!("systemctl start {unit}"));
        assert!(!started.status.success(), "{unit} started");
        assert_eq!(
            ct.sh(&format!("systemctl show -p ExecMainStatus --value {unit}")),
            "243"
        );
        assert_eq!(value_of(&ct, unit), "", "{unit} ran");
        let journal = ct.sh("journalctl -u secretd --no-pager -o cat");
        assert!(
            journal
                .lines()
                .any(|l| l.contains("credential.refused") && l.contains(unit) && l.contains(why)),
            "secretd's journal does not name {unit} and why:\n{journal}"
        );
    }
    let audit = wait_until("the reads in the audit trail", UNIT_TIMEOUT, || {
        let audit = ct.sh("secretd audit tail --json -n 100");
        audit
            .contains("unit=mm-bot.service (credential)")
            .then_some(audit)
    });
    assert!(!audit.contains(OLD), "the audit holds a value");

    // A restart of secretd forgets who loaded what: it asks systemd instead, so the units that
    // loaded before it started are restarted on the rotation below too.
    ct.sh("systemctl restart secretd");
    ct.wait_for_state("secretd", "active", UNIT_TIMEOUT);

    // The polkit rule secretd wrote lets its user try-restart the granted units and nothing
    // else: not another unit, not another verb. fix-gw@4 then loads from the new daemon.
    let as_secretd =
        "setpriv --reuid=secretd --regid=secretd --clear-groups systemctl --no-ask-password";
    ct.sh(&format!("{as_secretd} try-restart fix-gw@4.service"));
    for forbidden in [
        "try-restart other.service",
        "stop mm-bot.service",
        "restart ssh.service",
    ] {
        let out = ct.run(&format!("{as_secretd} {forbidden}"));
        assert!(!out.status.success(), "secretd's user may {forbidden}");
    }
    wait_until("fix-gw@4 to run again", UNIT_TIMEOUT, || {
        (ct.sh("wc -l < /run/creds/fix-gw@4.service.starts") == "2").then_some(())
    });

    // A rotation: every granted unit restarts, within the stagger and 5 s, not all at once,
    // and reads the new value.
    let starts_before: Vec<usize> = GRANTED
        .iter()
        .map(|u| {
            ct.sh(&format!("wc -l < /run/creds/{u}.starts"))
                .parse()
                .expect("count")
        })
        .collect();
    // secretd's restart (its first values are no change) restarted nothing and scheduled no
    // restart: each unit started once, fix-gw@4 twice. (A daemon that took its first values for
    // a change scheduled five restarts within milliseconds of starting, and then passed the
    // rotation below with them.)
    assert_eq!(
        starts_before,
        [1, 1, 1, 1, 2],
        "starts of {GRANTED:?} before the rotation"
    );
    let journal = ct.sh("journalctl -u secretd --no-pager -o cat");
    assert!(
        !journal.contains("credential.restart_scheduled"),
        "restarts scheduled before any change:\n{journal}"
    );
    ct.run_with_input("cat > /etc/secretd/trading_api_key", NEW.as_bytes());
    let rotated_at = ct.sh("date +%s.%N").parse::<f64>().expect("now");
    let asked = Instant::now();
    ct.sh("secretd refresh trading_api_key");
    wait_until(
        "every granted unit to read the new value",
        STAGGER + RESTART_SLACK,
        || {
            GRANTED
                .iter()
                .all(|u| value_of(&ct, u) == NEW)
                .then_some(())
        },
    );
    eprintln!(
        "all {} units had the new value {:?} after the refresh",
        GRANTED.len(),
        asked.elapsed()
    );
    let restarted_at: Vec<f64> = GRANTED
        .iter()
        .zip(&starts_before)
        .map(|(u, before)| {
            let starts = ct.sh(&format!("cat /run/creds/{u}.starts"));
            let lines: Vec<&str> = starts.lines().collect();
            assert_eq!(lines.len(), before + 1, "{u} restarted once: {starts}");
            lines[*before].parse::<f64>().expect("a time") - rotated_at
        })
        .collect();
    eprintln!("restarts after the change (s): {restarted_at:.2?}");
    let spread = restarted_at.iter().copied().fold(f64::MIN, f64::max)
        - restarted_at.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        spread > 1.0,
        "the restarts were not staggered: {restarted_at:?}"
    );
    let journal = ct.sh("journalctl -u secretd --no-pager -o cat");
    assert_eq!(
        journal.matches("credential.restarted").count(),
        GRANTED.len(),
        "{journal}"
    );
    assert!(
        !journal.contains(NEW) && !journal.contains(OLD),
        "the journal holds a value"
    );
}
