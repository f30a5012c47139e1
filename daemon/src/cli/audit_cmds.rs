//! `secretd audit verify`: the chain, its head, and an expected head (an anchor from the log
//! shipped off the host), online through the daemon or offline on a copy of the database.

use std::path::{Path, PathBuf};

use super::error::{AuditCheckError, CliError, connect};
use crate::audit;
use crate::server::requests::admin::MAX_AUDIT_TAIL;
use crate::store::Store;
use crate::util::key_file;

/// An expected head, `SEQ:HASH`.
fn parse_head(text: &str) -> Result<(u64, String), AuditCheckError> {
    let bad = || AuditCheckError::BadHead(text.to_owned());
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

/// What the chain says about an expected head, given its first and last record and a way to
/// find a record's hash.
fn check_head(
    expected: (u64, String),
    first: u64,
    last: u64,
    hash_of: impl FnOnce(u64) -> Result<Option<String>, CliError>,
) -> Result<(), CliError> {
    let (seq, hash) = expected;
    if seq > last {
        return Err(AuditCheckError::Truncated { seq, last }.into());
    }
    if seq < first {
        return Err(AuditCheckError::Pruned { seq, first }.into());
    }
    match hash_of(seq)? {
        Some(found) if found == hash => Ok(()),
        Some(found) => Err(AuditCheckError::Rewritten {
            seq,
            found,
            expected: hash,
        }
        .into()),
        None => Err(AuditCheckError::Missing(seq).into()),
    }
}

/// Prints the verdict of a walk; an error when the chain is broken.
fn report(
    v: &secretd_client::AuditVerification,
    head: Option<(u64, String)>,
) -> Result<(), AuditCheckError> {
    if let Some(seq) = v.broken_seq {
        return Err(AuditCheckError::Broken {
            seq,
            reason: v.reason.clone().unwrap_or_default(),
            checked: v.checked,
        });
    }
    println!(
        "audit chain ok: {} records verified (seq {}..={})",
        v.checked, v.first_seq, v.last_seq
    );
    match head {
        Some((seq, hash)) => println!("ok: {} records, head {seq}:{hash}", v.checked),
        None => println!("ok: {} records, head none", v.checked),
    }
    Ok(())
}

/// Through the daemon.
pub(super) fn verify_online(
    socket: Option<PathBuf>,
    expected: Option<&str>,
) -> Result<(), CliError> {
    let expected = expected.map(parse_head).transpose()?;
    let client = connect(socket)?;
    // The head first: the walk that follows covers it.
    let head = client.audit_tail(1, None)?.pop().map(|r| (r.seq, r.hash));
    let v = client.audit_verify()?;
    report(&v, head)?;
    if let Some(expected) = expected {
        let distance = v.last_seq.saturating_sub(expected.0) + 1;
        let lookup = |seq: u64| -> Result<Option<String>, CliError> {
            if distance > u64::from(MAX_AUDIT_TAIL) {
                return Err(AuditCheckError::TooFarBack {
                    seq,
                    limit: MAX_AUDIT_TAIL,
                }
                .into());
            }
            let records = client.audit_tail(distance as u32, None)?;
            Ok(records.into_iter().find(|r| r.seq == seq).map(|r| r.hash))
        };
        let text = format!("{}:{}", expected.0, expected.1);
        check_head(expected, v.first_seq, v.last_seq, lookup)?;
        println!("head {text} is in the chain");
    }
    Ok(())
}

/// On a copy of the database, with the audit key.
pub(super) fn verify_offline(
    db: &Path,
    key: Option<&Path>,
    expected: Option<&str>,
) -> Result<(), CliError> {
    let expected = expected.map(parse_head).transpose()?;
    let key_path = key.map_or_else(
        || {
            let mut p = db.as_os_str().to_owned();
            p.push(".audit-key");
            PathBuf::from(p)
        },
        Path::to_owned,
    );
    let key = key_file::load(&key_path).map_err(|source| CliError::File {
        what: "cannot read the audit key",
        path: key_path.clone(),
        source,
    })?;
    let store = Store::open(db)?;
    let v = audit::verify_with(&store, &key)?;
    let head = v.head.map(|h| (v.last_seq, hex::encode(h)));
    let wire = secretd_client::AuditVerification {
        checked: v.checked,
        first_seq: v.first_seq,
        last_seq: v.last_seq,
        broken_seq: v.broken.as_ref().map(|b| b.0),
        reason: v.broken.as_ref().map(|b| b.1.clone()),
    };
    report(&wire, head)?;
    if let Some(expected) = expected {
        let text = format!("{}:{}", expected.0, expected.1);
        check_head(expected, v.first_seq, v.last_seq, |seq| {
            audit::record_hash(&store, seq)
                .map(|h| h.map(hex::encode))
                .map_err(CliError::from)
        })?;
        println!("head {text} is in the chain");
    }
    Ok(())
}
