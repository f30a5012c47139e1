//! `secretd break-glass ...`: sealing happens here, on the operator's side; the daemon only
//! ever receives the envelope.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use secretd_client::{Client, SecretStatus};

use crate::catalog::break_glass::{envelope, keys};
use crate::catalog::source::{MAX_SECRET_LEN, read_bounded};

fn connect(socket: Option<PathBuf>) -> Result<Client, String> {
    let path = socket.unwrap_or_else(secretd_client::default_socket_path);
    Client::connect(&path).map_err(|e| e.to_string())
}

fn report(row: &SecretStatus) {
    let until = row
        .break_glass_expires_at_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        });
    match until {
        Some(t) => println!("{}: serving the break-glass value until {t}", row.name),
        None => println!(
            "{}: serving {} version {}",
            row.name,
            row.cache_source.map_or("-", |s| s.as_str()),
            row.version.as_deref().unwrap_or("-")
        ),
    }
}

pub(super) fn apply(
    socket: Option<PathBuf>,
    name: &str,
    value_file: &Path,
    ttl: &str,
    public_key: &Path,
    host: Option<&str>,
    out: Option<&Path>,
) -> Result<(), String> {
    secretd_proto::validate_name(name).map_err(str::to_owned)?;
    let ttl = humantime::parse_duration(ttl).map_err(|e| format!("--ttl {ttl:?}: {e}"))?;
    if ttl.is_zero() {
        return Err("--ttl must be positive".into());
    }
    let public = keys::load_public(public_key).map_err(|e| e.to_string())?;
    let (value, oversize) = if value_file == Path::new("-") {
        read_bounded(&mut std::io::stdin().lock())
    } else {
        std::fs::File::open(value_file).and_then(|mut f| read_bounded(&mut f))
    }
    .map_err(|e| format!("cannot read the value: {e}"))?;
    if oversize || value.is_empty() {
        return Err(format!("the value must be 1 to {MAX_SECRET_LEN} bytes"));
    }
    let expires = SystemTime::now() + ttl;
    let sealed = envelope::seal(
        &public,
        name,
        crate::util::time::unix_ms(expires),
        host,
        value.expose(),
    )
    .map_err(|e| e.to_string())?;
    drop(value);
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            f.write_all(envelope::armor(&sealed).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!(
                "sealed {name} until {} into {}; apply it on the host with `secretd break-glass submit {}`",
                humantime::format_rfc3339_seconds(expires),
                path.display(),
                path.display()
            );
            Ok(())
        }
        None => {
            let row = connect(socket)?
                .break_glass_apply(sealed)
                .map_err(|e| e.to_string())?;
            report(&row);
            Ok(())
        }
    }
}

pub(super) fn submit(socket: Option<PathBuf>, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sealed = envelope::dearmor(&text)
        .ok_or_else(|| format!("{} is not a break-glass envelope", path.display()))?;
    let row = connect(socket)?
        .break_glass_apply(sealed)
        .map_err(|e| e.to_string())?;
    report(&row);
    Ok(())
}

pub(super) fn clear(socket: Option<PathBuf>, name: &str) -> Result<(), String> {
    let row = connect(socket)?
        .break_glass_clear(name)
        .map_err(|e| e.to_string())?;
    report(&row);
    Ok(())
}
