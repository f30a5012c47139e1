//! `secretd check`: a policy gate for deploy pipelines and consumers' CI.

use std::path::PathBuf;
use std::time::Duration;

use secretd_client::{Client, EntryState};

use super::error::CliError;
use crate::config::Config;
use crate::runtime::dev::DEMO_CATALOG;
use crate::util::time::now_ms;

/// The shortest acceptable value.
pub(super) const MIN_VALUE_LEN: usize = 16;

/// What a value lacks, as words for the violation line.
fn weaknesses(value: &[u8]) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !value.iter().any(u8::is_ascii_uppercase) {
        missing.push("an upper-case letter");
    }
    if !value.iter().any(u8::is_ascii_lowercase) {
        missing.push("a lower-case letter");
    }
    if !value.iter().any(u8::is_ascii_digit) {
        missing.push("a digit");
    }
    if !value.iter().any(|b| !b.is_ascii_alphanumeric()) {
        missing.push("a symbol");
    }
    missing
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0)))
        .to_string()
}

pub(super) fn run(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    mut required: Vec<String>,
    min_ttl: &str,
    min_rotation: &str,
) -> Result<(), CliError> {
    let parse = |flag: &'static str, v: &str| {
        humantime::parse_duration(v)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .map_err(|e| CliError::Argument {
                flag,
                value: v.to_owned(),
                why: e.to_string(),
            })
    };
    let min_ttl = parse("--min-ttl", min_ttl)?;
    let min_rotation = parse("--min-rotation", min_rotation)?;
    let mut violations = Vec::new();
    let loaded = match &config {
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                violations.push(format!("{}: {e}", path.display()));
                None
            }
        },
        None => None,
    };
    if let Some(c) = &loaded {
        for hint in uid_only_hints(c) {
            println!("hint: {hint}");
        }
        if required.is_empty() {
            required = c.secrets.iter().map(|s| s.name.clone()).collect();
        }
    }
    if required.is_empty() {
        required = DEMO_CATALOG.iter().map(|(n, _)| n.to_string()).collect();
    }
    // The daemon to check: --socket, else the one the config names, else the default.
    let path = socket
        .or_else(|| loaded.as_ref().map(|c| c.daemon.socket.clone()))
        .unwrap_or_else(secretd_client::default_socket_path);
    if let (Some(c), Some(daemon)) = (&loaded, daemon_process(&path)) {
        for warning in attestation_warnings(c, daemon) {
            println!("warning: {warning}");
        }
    }
    match Client::connect(&path) {
        Err(e) => violations.push(format!("cannot check the live catalog: {e}")),
        Ok(client) => check_live(&client, &required, min_ttl, min_rotation, &mut violations),
    }
    if violations.is_empty() {
        println!("check passed: {} secrets", required.len());
        return Ok(());
    }
    for v in &violations {
        println!("{v}");
    }
    Err(CliError::CheckFailed(violations.len()))
}

fn check_live(
    client: &Client,
    required: &[String],
    min_ttl: i64,
    min_rotation: i64,
    out: &mut Vec<String>,
) {
    let rows = match client.status() {
        Ok(rows) => rows,
        Err(e) => {
            out.push(format!("cannot read the daemon's status: {e}"));
            return;
        }
    };
    let now = now_ms();
    for name in required {
        let Some(row) = rows.iter().find(|r| &r.name == name) else {
            out.push(format!("{name}: missing from the catalog (or not readable by this uid); add it to the config"));
            continue;
        };
        match client.get(name) {
            Err(e) => out.push(format!("{name}: cannot be read: {e}")),
            Ok(secret) => {
                let value = secret.expose();
                if value.len() < MIN_VALUE_LEN {
                    out.push(format!(
                        "{name}: value is {} characters; needs at least {MIN_VALUE_LEN}: rotate it to a longer one",
                        value.len()
                    ));
                }
                let missing = weaknesses(value);
                if !missing.is_empty() {
                    out.push(format!(
                        "{name}: value lacks {}: rotate it to a stronger one",
                        missing.join(", ")
                    ));
                }
            }
        }
        if matches!(row.state, EntryState::Stale | EntryState::Expired) {
            out.push(format!(
                "{name}: {} (last refresh error: {}); check the source",
                row.state.as_str(),
                row.last_error
                    .as_ref()
                    .map_or("none", |e| e.message.as_str())
            ));
        } else if let Some(expires) = row.expires_at_ms
            && expires - now < min_ttl
        {
            out.push(format!(
                "{name}: due for refresh in {}, below --min-ttl {}",
                human(expires - now),
                human(min_ttl)
            ));
        }
        if let Some(due) = row.rotation_due_at_ms
            && due - now < min_rotation
        {
            let when = if due <= now {
                "overdue".to_string()
            } else {
                format!("due in {}", human(due - now))
            };
            out.push(format!(
                "{name}: rotation {when}; rotate it (`secretd rotation begin`)"
            ));
        }
    }
}

/// Hints (never violations) for policies that grant `trading_*` names by uid alone while other
/// programs of that uid run on this host: any of them can read those keys.
fn uid_only_hints(config: &Config) -> Vec<String> {
    let mut hints = Vec::new();
    for (i, policy) in config.policies.iter().enumerate() {
        let selected = policy.selectors.exe.is_some()
            || policy.selectors.exe_sha256.is_some()
            || policy.selectors.systemd_unit.is_some()
            || policy.selectors.cgroup.is_some();
        let grants_trading = config
            .secrets
            .iter()
            .any(|s| s.name.starts_with("trading_") && policy.allow.is_match(&s.name));
        if selected || !grants_trading {
            continue;
        }
        for uid in &policy.uids {
            let programs = programs_of(*uid);
            if programs.len() > 1 {
                hints.push(format!(
                    "policy #{} grants trading_* secrets to uid {uid} alone, and {} programs of \
                     that uid run here ({}): bind it to the program with exe, systemd_unit or \
                     cgroup",
                    i + 1,
                    programs.len(),
                    programs
                        .iter()
                        .take(4)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    hints
}

/// `CAP_SYS_PTRACE`'s bit in a capability set.
const CAP_SYS_PTRACE: u32 = 19;

/// The daemon behind `socket`: its uid and whether it holds `CAP_SYS_PTRACE` (`None` when it
/// cannot be asked or its `/proc` entry cannot be read).
fn daemon_process(socket: &std::path::Path) -> Option<(u32, bool)> {
    use std::os::fd::AsFd;
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let cred = crate::server::identity::peer_cred(stream.as_fd()).ok()?;
    if cred.pid <= 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", cred.pid)).ok()?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(effective, 16).ok()?;
    Some((cred.uid, caps & (1 << CAP_SYS_PTRACE) != 0))
}

/// Warnings (never violations) for policies whose `exe` or `exe_sha256` selectors cannot
/// match clients of other uids: a daemon of `daemon.0`, not root and without `CAP_SYS_PTRACE`
/// (`daemon.1`), cannot read their executables or descriptors.
fn attestation_warnings(config: &Config, (uid, ptrace): (u32, bool)) -> Vec<String> {
    if uid == 0 || ptrace {
        return Vec::new();
    }
    config
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.selectors.exe.is_some() || p.selectors.exe_sha256.is_some())
        .filter(|(_, p)| !p.gids.is_empty() || p.uids.iter().any(|u| *u != uid))
        .map(|(i, _)| {
            format!(
                "policy #{} selects by exe or exe_sha256, but the daemon runs as uid {uid} \
                 without CAP_SYS_PTRACE: it cannot read the programs of other uids, so the \
                 policy matches none of their clients (the packaged unit grants it)",
                i + 1
            )
        })
        .collect()
}

/// The distinct executables of the processes of `uid` that this user can see.
fn programs_of(uid: u32) -> std::collections::BTreeSet<String> {
    use std::os::unix::fs::MetadataExt;
    let mut programs = std::collections::BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return programs;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let is_pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid || std::fs::metadata(&path).map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        if let Ok(exe) = std::fs::read_link(path.join("exe")) {
            programs.insert(exe.display().to_string());
        }
    }
    programs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_policies_warn_only_when_the_daemon_cannot_read_other_uids() {
        let config = Config::parse(
            r#"
[[secret]]
name = "trading_api_key"
source = "env"
env = "A"
[[policy]]
uids = [1001]
allow = ["trading_*"]
exe = ["/opt/bots/mm"]
[[policy]]
uids = [999]
allow = ["trading_*"]
exe = ["/opt/bots/own"]
[[policy]]
uids = [1001]
allow = ["trading_*"]
systemd_unit = ["mm.service"]
"#,
        )
        .expect("config");
        let warned = attestation_warnings(&config, (999, false));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].starts_with("policy #1 selects by exe"),
            "{warned:?}"
        );
        assert!(attestation_warnings(&config, (999, true)).is_empty());
        assert!(attestation_warnings(&config, (0, false)).is_empty());
    }

    #[test]
    fn classes() {
        assert!(weaknesses(b"Abcdefgh-12345678").is_empty());
        assert_eq!(
            weaknesses(b"abcdefgh12345678"),
            ["an upper-case letter", "a symbol"]
        );
        assert_eq!(
            weaknesses(b"ABC"),
            ["a lower-case letter", "a digit", "a symbol"]
        );
    }
}
