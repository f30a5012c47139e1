//! Opening what the daemon keeps on disk, before anything serves: the database (exclusively),
//! the fingerprint key, the audit chain's key and the audit writer.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::ServeError;
use crate::audit::{self, Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::catalog::fingerprint::{self, FingerprintKey};
use crate::config::{AUDIT_KEY_CREDENTIAL, CREDENTIALS_DIRECTORY_ENV, Config};
use crate::store::Store;
use crate::util::key_file;

/// The store, the fingerprint key, the audit writer and its thread.
pub(super) type OpenedStore = (
    Arc<Store>,
    Arc<FingerprintKey>,
    AuditLog,
    std::thread::JoinHandle<()>,
);

/// Opens the database (exclusively: a second daemon on the same file fails here with a clear
/// message), the fingerprint key beside it, the audit chain's key, and the audit writer. A
/// database an earlier release wrote gets its keyed chain started here.
pub(super) fn open_store(config: &Config) -> Result<OpenedStore, ServeError> {
    let store = Arc::new(Store::open(&config.daemon.db)?);
    let key = match &config.daemon.fingerprint_key {
        Some(shared) => FingerprintKey::load(shared).map_err(|source| ServeError::FingerprintKey {
            path: shared.clone(),
            source,
        }),
        None => {
            let key_path = fingerprint::key_path(&config.daemon.db);
            FingerprintKey::load_or_create(&key_path).map_err(|source| ServeError::FingerprintKey {
                path: key_path.clone(),
                source,
            })
        }
    };
    let key = Arc::new(key?);
    let (audit_key_path, create) = audit_key_path(config);
    let audit_key = if create {
        key_file::load_or_create(&audit_key_path)
    } else {
        key_file::load(&audit_key_path)
    }
    .map_err(|source| ServeError::AuditKey {
        path: audit_key_path.clone(),
        source,
    })?;
    let keying = audit::open_keyed(&store)?;
    if let audit::Keying::Upgraded {
        head_seq,
        head_hash,
        legacy,
    } = keying
    {
        let verdict = match &legacy.broken {
            None => format!("unkeyed chain verified ({} records)", legacy.checked),
            Some((seq, why)) => {
                tracing::error!(
                    event = "omni.alert.audit_chain_broken",
                    seq,
                    reason = %why,
                    "the unkeyed audit chain of this database is broken; keyed chaining starts anyway"
                );
                format!("unkeyed chain broken at seq {seq}: {why}")
            }
        };
        let mut event = AuditEvent::new(Action::AuditUpgrade, "", &Actor::daemon(), Outcome::Ok);
        event.detail = format!(
            "keyed chain starts here; unkeyed head {head_seq}:{}; {verdict}",
            hex::encode(head_hash)
        );
        // Written here, durably, before the writer starts and before anything else (a prune)
        // can append: the upgrade record must be the first keyed one, since `audit verify`
        // finds the keyed part's start by it.
        audit::append(&store, &audit_key, &[event])?;
        tracing::warn!(
            event = "audit.upgraded",
            head_seq,
            "the audit chain is keyed from here on"
        );
    }
    let (audit, thread) =
        AuditLog::start(store.clone(), Arc::new(audit_key)).map_err(ServeError::AuditWriter)?;
    Ok((store, key, audit, thread))
}

/// Where the audit chain's key is, and whether to create it: `audit_key`, else systemd's
/// credential `secretd-audit-key` when present, else a file beside the database (created on
/// first start).
fn audit_key_path(config: &Config) -> (PathBuf, bool) {
    if let Some(path) = &config.daemon.audit_key {
        return (path.clone(), false);
    }
    if let Some(dir) = std::env::var_os(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = PathBuf::from(dir).join(AUDIT_KEY_CREDENTIAL);
        if path.exists() {
            return (path, false);
        }
    }
    let mut beside = config.daemon.db.as_os_str().to_owned();
    beside.push(".audit-key");
    (PathBuf::from(beside), true)
}
