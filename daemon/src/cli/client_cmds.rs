//! Subcommands that talk to a running daemon.

use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secretd_client::{ChangeEvent, ChannelState, Client, DaemonHealth, SecretStatus};
use serde_json::json;

use super::error::{CliError, connect, print_bytes};
use crate::server::http::status_json::{rfc3339, state_name, status_json};

pub(super) fn get(socket: Option<PathBuf>, name: &str) -> Result<(), CliError> {
    // One read and gone: the hello and the read in one round trip.
    let path = socket.unwrap_or_else(secretd_client::default_socket_path);
    let secret = Client::get_once(&path, name)?;
    // Write straight to fd 1: std's stdout keeps a buffer that would hold a copy of the
    // value until exit, and nothing wipes it.
    // SAFETY: fd 1 is open for the life of the process; ManuallyDrop keeps it open.
    let mut stdout = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    stdout.write_all(secret.expose()).map_err(CliError::Stdout)
}

pub(super) fn watch(socket: Option<PathBuf>, names: &[String]) -> Result<(), CliError> {
    let client = connect(socket)?;
    let watch = client.watch(names)?;
    eprintln!("secretd: watching {}", watch.names().join(", "));
    let mut stdout = std::io::stdout().lock();
    for item in watch {
        let line = match item {
            Ok(event) => change_json(&event),
            Err(e @ secretd_client::Error::Daemon(_)) => return Err(e.into()),
            Err(e) => {
                eprintln!("secretd: watch interrupted ({e}); resubscribing");
                continue;
            }
        };
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(CliError::Stdout)?;
    }
    Ok(())
}

/// One watch event as a JSON line. Never a value.
fn change_json(event: &ChangeEvent) -> serde_json::Value {
    match event {
        ChangeEvent::Changed(c) => json!({
            "event": "changed",
            "name": c.name,
            "version": c.version,
            "source": c.source.as_str(),
            "fingerprint": c.fingerprint,
            "at": rfc3339(Some(c.at_ms)),
        }),
        ChangeEvent::Lagged => json!({"event": "lagged"}),
        ChangeEvent::RotationRequested(r) => json!({
            "event": "rotation_requested",
            "name": r.name,
            "at": rfc3339(Some(r.at_ms)),
        }),
    }
}

pub(super) fn status(socket: Option<PathBuf>, as_json: bool) -> Result<(), CliError> {
    let client = connect(socket)?;
    let list = client.status()?;
    let out = if as_json {
        let rows: Vec<_> = list.iter().map(status_json).collect();
        serde_json::to_string_pretty(&rows).map_err(|e| CliError::Stdout(e.into()))? + "\n"
    } else {
        // A daemon older than protocol 5 cannot say; its table prints as it always did.
        let health = client.health().ok();
        health.as_ref().map(health_lines).unwrap_or_default() + &status_table(&list)
    };
    print_bytes(out.as_bytes())
}

pub(super) fn metrics(socket: Option<PathBuf>) -> Result<(), CliError> {
    let text = connect(socket)?.metrics()?;
    print_bytes(text.as_bytes())
}

pub(super) fn refresh(socket: Option<PathBuf>, name: Option<&str>) -> Result<(), CliError> {
    let client = connect(socket)?;
    let outcomes = client.refresh(name)?;
    let mut out = String::new();
    let mut failed = 0;
    for o in &outcomes {
        match (&o.version, &o.error) {
            (_, Some(e)) => {
                failed += 1;
                out.push_str(&format!("{}: failed: {}\n", o.name, e.message));
            }
            (Some(v), None) => out.push_str(&format!("{}: ok, version {v}\n", o.name)),
            (None, None) => out.push_str(&format!("{}: ok\n", o.name)),
        }
    }
    print_bytes(out.as_bytes())?;
    if failed > 0 {
        Err(CliError::RefreshFailed {
            failed,
            total: outcomes.len(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn rotation(
    socket: Option<PathBuf>,
    name: &str,
    step: secretd_client::RotationStep,
) -> Result<(), CliError> {
    let client = connect(socket)?;
    let row = client.rotation(name, step)?;
    print!(
        "{}: status {}, version {}, rotation due {}",
        row.name,
        row.metadata_status.as_deref().unwrap_or("-"),
        row.version.as_deref().unwrap_or("-"),
        rfc3339(row.rotation_due_at_ms).unwrap_or_else(|| "-".into())
    );
    match (&row.active_version, &row.version_alias) {
        (Some(active), Some(configured)) => println!(
            ", active version {active} (outranks the config's {configured}: update the config, \
             or `secretd rotation unpin {}`)",
            row.name
        ),
        _ => println!(),
    }
    Ok(())
}

pub(super) fn audit_tail(
    socket: Option<PathBuf>,
    n: u32,
    secret: Option<&str>,
    as_json: bool,
) -> Result<(), CliError> {
    let client = connect(socket)?;
    let records = client.audit_tail(n, secret)?;
    let mut out = String::new();
    for r in &records {
        if as_json {
            let line = json!({
                "seq": r.seq,
                "recordedAt": rfc3339(Some(r.recorded_at_ms)),
                "action": r.action,
                "secret": r.secret,
                "actorType": r.actor_type,
                "uid": r.uid,
                "gid": r.gid,
                "pid": r.pid,
                "result": r.result,
                "errorCode": r.error_code,
                "version": r.version,
                "fingerprint": r.fingerprint,
                "durationMs": r.duration_ms,
                "count": r.count,
                "detail": r.detail,
                "hash": r.hash,
            });
            out.push_str(&line.to_string());
        } else {
            out.push_str(&format!(
                "{:>6} {} {:<17} {:<24} {:<6} uid={} pid={} {:<7} v={} n={}{}",
                r.seq,
                rfc3339(Some(r.recorded_at_ms)).unwrap_or_default(),
                r.action,
                if r.secret.is_empty() { "-" } else { &r.secret },
                r.actor_type,
                r.uid,
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.result,
                if r.version.is_empty() {
                    "-"
                } else {
                    &r.version
                },
                r.count,
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.detail)
                },
            ));
        }
        out.push('\n');
    }
    print_bytes(out.as_bytes())
}

pub(super) fn connections(socket: Option<PathBuf>, as_json: bool) -> Result<(), CliError> {
    let list = connect(socket)?.connections()?;
    if as_json {
        let rows: Vec<_> = list
            .iter()
            .map(|c| {
                json!({
                    "uid": c.uid, "gid": c.gid, "pid": c.pid, "exe": c.exe,
                    "exeSha256": c.exe_sha256, "systemdUnit": c.systemd_unit,
                    "cgroup": c.cgroup, "connectedAt": rfc3339(Some(c.connected_at_ms)),
                    "protocolVersion": c.protocol_version,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("PID\tUID\tEXE\tSHA256\tUNIT\tCGROUP");
    for c in &list {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            c.pid.map_or("-".into(), |p| p.to_string()),
            c.uid,
            or_dash(&c.exe),
            c.exe_sha256
                .as_deref()
                .map_or("-", |h| &h[..h.len().min(16)]),
            or_dash(&c.systemd_unit),
            or_dash(&c.cgroup),
        );
    }
    Ok(())
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The lines above the status table: the verdict with its reasons, and the notification
/// channel when one is configured.
fn health_lines(h: &DaemonHealth) -> String {
    let mut out = format!("health: {}\n", h.status.as_str());
    for why in &h.reasons {
        out.push_str(&format!("  {why}\n"));
    }
    match &h.notifications {
        ChannelState::Off => {}
        ChannelState::Up => out.push_str("notifications: up\n"),
        ChannelState::Down(why) => out.push_str(&format!(
            "notifications: down ({why}); polling at notification_fallback_interval\n"
        )),
    }
    out.push('\n');
    out
}

fn status_table(list: &[SecretStatus]) -> String {
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let mut rows = vec![[
        "NAME".to_string(),
        "SOURCE".into(),
        "CACHE".into(),
        "STATE".into(),
        "VERSION".into(),
        "AGE".into(),
        "REFRESH IN".into(),
    ]];
    for s in list {
        let refresh_in = s.expires_at_ms.map(|e| {
            let left = e.saturating_sub(now_ms);
            if left > 0 {
                human(Duration::from_millis(left.unsigned_abs()))
            } else {
                "overdue".into()
            }
        });
        rows.push([
            s.name.clone(),
            s.configured_source.to_string(),
            s.cache_source.map_or("-".into(), |k| k.to_string()),
            state_name(s).into(),
            s.version.clone().unwrap_or_else(|| "-".into()),
            s.age_ms
                .map_or("-".into(), |ms| human(Duration::from_millis(ms))),
            refresh_in.unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for s in list.iter().filter(|s| s.last_error.is_some()) {
        if let Some(e) = &s.last_error {
            out.push_str(&format!("{}: last refresh failed: {}\n", s.name, e.message));
        }
    }
    out
}
