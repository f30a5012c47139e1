//! `secretd break-glass ...`: sealing happens here, on the operator's side; the daemon only
//! ever receives the envelope.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use secretd_client::SecretStatus;

use super::error::{CliError, connect};
use crate::catalog::break_glass::{envelope, keys};
use crate::catalog::source::{MAX_SECRET_LEN, read_bounded};
use crate::util::time::{Precision, rfc3339, unix_ms};

fn report(row: &SecretStatus) {
    let until = row
        .break_glass_expires_at_ms
        .map(|ms| rfc3339(ms, Precision::Seconds));
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
) -> Result<(), CliError> {
    secretd_proto::validate_name(name).map_err(|why| CliError::Argument {
        flag: "NAME",
        value: name.to_owned(),
        why: why.to_owned(),
    })?;
    let ttl_arg = |why: String| CliError::Argument {
        flag: "--ttl",
        value: ttl.to_owned(),
        why,
    };
    let ttl = humantime::parse_duration(ttl).map_err(|e| ttl_arg(e.to_string()))?;
    if ttl.is_zero() {
        return Err(ttl_arg("must be positive".into()));
    }
    let public = keys::load_public(public_key)?;
    let (value, oversize) = if value_file == Path::new("-") {
        read_bounded(&mut std::io::stdin().lock())
    } else {
        std::fs::File::open(value_file).and_then(|mut f| read_bounded(&mut f))
    }
    .map_err(|source| CliError::File {
        what: "cannot read the value from",
        path: value_file.to_owned(),
        source,
    })?;
    if oversize || value.is_empty() {
        return Err(CliError::ValueSize(MAX_SECRET_LEN));
    }
    let expires = SystemTime::now() + ttl;
    let sealed = envelope::seal(
        &public,
        name,
        crate::util::time::unix_ms(expires),
        host,
        value.expose(),
    )?;
    drop(value);
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| CliError::File {
                    what: "cannot create",
                    path: path.to_owned(),
                    source,
                })?;
            f.write_all(envelope::armor(&sealed).as_bytes())
                .map_err(|source| CliError::File {
                    what: "cannot write",
                    path: path.to_owned(),
                    source,
                })?;
            println!(
                "sealed {name} until {} into {}; apply it on the host with `secretd break-glass submit {}`",
                rfc3339(unix_ms(expires), Precision::Seconds),
                path.display(),
                path.display()
            );
            Ok(())
        }
        None => {
            let row = connect(socket)?.break_glass_apply(sealed)?;
            report(&row);
            Ok(())
        }
    }
}

pub(super) fn submit(socket: Option<PathBuf>, path: &Path) -> Result<(), CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
        what: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    let sealed =
        envelope::dearmor(&text).ok_or_else(|| CliError::NotAnEnvelope(path.to_owned()))?;
    let row = connect(socket)?.break_glass_apply(sealed)?;
    report(&row);
    Ok(())
}

pub(super) fn clear(socket: Option<PathBuf>, name: &str) -> Result<(), CliError> {
    let row = connect(socket)?.break_glass_clear(name)?;
    report(&row);
    Ok(())
}
