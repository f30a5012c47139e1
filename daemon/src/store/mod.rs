//! The embedded redb database: secret metadata and the hash-chained audit trail.
//! Values are never stored, only keyed fingerprints.

pub mod audit;
pub mod metadata;
pub mod tables;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable};

use crate::config::Config;
use audit::{AuditEvent, HASH_LEN, Hash, Verification};
use metadata::{SecretMeta, Status};
use tables::{
    AUDIT, BREAK_GLASS, KEY_AUDIT_CHECKPOINT, KEY_SCHEMA_VERSION, META, SCHEMA_VERSION, SECRETS,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the database open.
    #[error("database {} is in use by another secretd; only one daemon may use it", .0.display())]
    AlreadyOpen(PathBuf),
    /// The database was written by an incompatible schema.
    #[error("database {} has schema version {found}; this build understands {SCHEMA_VERSION}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// What it says.
        found: u32,
    },
    /// Filesystem trouble around the database.
    #[error("database {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// redb failed.
    #[error("database error: {0}")]
    Db(String),
    /// A stored record does not parse.
    #[error("corrupt record in the database: {0}")]
    Corrupt(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// An open database.
#[derive(Debug)]
pub struct Store {
    /// The redb handle (exclusive to this process). `None` between a failed reopen and the
    /// next successful one: redb refuses writes after a failed commit until reopened.
    db: RwLock<Option<Database>>,
    /// The file, for reopening.
    path: PathBuf,
}

/// A read lock on the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match self.0.as_ref() {
            Some(db) => db,
            // Constructed only after checking for Some.
            None => unreachable!("DbGuard over a closed database"),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    crate::time::unix_ms(std::time::SystemTime::now())
}

impl Store {
    /// Opens (or creates) the database, exclusively, and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            db: RwLock::new(Some(open_db(path)?)),
            path: path.to_owned(),
        })
    }

    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Db(
                "the database is closed after a failed reopen".into(),
            ));
        }
        Ok(DbGuard(guard))
    }

    /// Closes and reopens the database (after a failed commit redb refuses writes until then).
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Drop the old handle first: it holds the file lock.
        drop(slot.take());
        *slot = Some(open_db(&self.path)?);
        Ok(())
    }

    /// Creates metadata rows for new catalog secrets and updates the config-derived fields of
    /// existing ones. Returns the rows written (to be audited as metadata writes).
    pub fn sync_catalog(&self, config: &Config) -> Result<Vec<SecretMeta>, StoreError> {
        let now = now_ms();
        let txn = self.db()?.begin_write().map_err(db_err)?;
        let mut written = Vec::new();
        {
            let mut table = txn.open_table(SECRETS).map_err(db_err)?;
            for s in &config.secrets {
                let (gcp_secret_id, gcp_version_alias) = match &s.source {
                    crate::config::SourceConfig::Gsm { resource, version } => {
                        (Some(resource.clone()), Some(version.clone()))
                    }
                    _ => (None, None),
                };
                let existing = match table.get(s.name.as_str()).map_err(db_err)? {
                    Some(v) => Some(parse_meta(v.value())?),
                    None => None,
                };
                let next = match &existing {
                    Some(m) => SecretMeta {
                        environment: s.environment.clone(),
                        gcp_secret_id,
                        gcp_version_alias,
                        owner: s.owner.clone(),
                        ..m.clone()
                    },
                    None => SecretMeta {
                        id: new_uuid()?,
                        name: s.name.clone(),
                        environment: s.environment.clone(),
                        gcp_secret_id,
                        gcp_version_alias,
                        status: Status::Active,
                        rotating_version: None,
                        rotation_due_at_ms: now + metadata::ROTATION_PERIOD_MS,
                        last_rotated_at_ms: None,
                        last_validated_at_ms: None,
                        owner: s.owner.clone(),
                        break_glass_enabled_until_ms: None,
                    },
                };
                if existing.as_ref() != Some(&next) {
                    table
                        .insert(s.name.as_str(), encode_meta(&next)?.as_slice())
                        .map_err(db_err)?;
                    written.push(next);
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(written)
    }

    /// Every metadata row, by name.
    pub fn all_meta(&self) -> Result<BTreeMap<String, SecretMeta>, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(SECRETS).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.insert(k.value().to_owned(), parse_meta(v.value())?);
        }
        Ok(out)
    }

    /// One metadata row.
    pub fn meta(&self, name: &str) -> Result<Option<SecretMeta>, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(SECRETS).map_err(db_err)?;
        table
            .get(name)
            .map_err(db_err)?
            .map(|v| parse_meta(v.value()))
            .transpose()
    }

    /// Writes one metadata row.
    pub fn put_meta(&self, meta: &SecretMeta) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SECRETS).map_err(db_err)?;
            table
                .insert(meta.name.as_str(), encode_meta(meta)?.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Stores (or replaces) the sealed envelope of an active override.
    pub fn put_envelope(&self, name: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(db_err)?;
        txn.open_table(BREAK_GLASS)
            .map_err(db_err)?
            .insert(name, envelope)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Forgets the envelope of `name`.
    pub fn delete_envelope(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(db_err)?;
        txn.open_table(BREAK_GLASS)
            .map_err(db_err)?
            .remove(name)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Every stored envelope.
    pub fn envelopes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(BREAK_GLASS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Appends events to the chain in one durable transaction (group commit).
    pub fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut txn = self.db()?.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let meta = txn.open_table(META).map_err(db_err)?;
            let mut table = txn.open_table(AUDIT).map_err(db_err)?;
            let (mut seq, mut prev) = match table.last().map_err(db_err)? {
                Some((k, v)) => {
                    let (_, hash, _) = audit::split_stored(v.value()).ok_or_else(|| {
                        StoreError::Corrupt(format!("audit record {}", k.value()))
                    })?;
                    (k.value(), hash)
                }
                None => {
                    let (first, prev) = checkpoint(&meta)?;
                    (first - 1, prev)
                }
            };
            for event in events {
                seq += 1;
                let (stored, hash) = audit::encode_stored(&prev, seq, &audit::encode_body(event));
                table.insert(seq, stored.as_slice()).map_err(db_err)?;
                prev = hash;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// The last `limit` records (optionally of one secret), oldest first.
    pub fn audit_tail(
        &self,
        limit: usize,
        secret: Option<&str>,
    ) -> Result<Vec<(u64, AuditEvent, Hash)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(db_err)?;
            let seq = k.value();
            let (_, hash, body) = audit::split_stored(v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("audit record {seq}")))?;
            let event = audit::decode_body(body)
                .ok_or_else(|| StoreError::Corrupt(format!("audit record {seq}")))?;
            if secret.is_none_or(|s| s == event.secret) {
                out.push((seq, event, hash));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain from its checkpoint.
    pub fn audit_verify(&self) -> Result<Verification, StoreError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let (first, prev) = checkpoint(&meta)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            rows.push((k.value(), v.value().to_vec()));
        }
        Ok(audit::verify(
            first,
            prev,
            rows.iter().map(|(s, v)| (*s, v.as_slice())),
        ))
    }

    /// Removes records older than `cutoff_ms` from the start of the chain, moving the
    /// checkpoint so the rest still verifies. Returns how many were removed.
    pub fn prune(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut table = txn.open_table(AUDIT).map_err(db_err)?;
            let mut last: Option<(u64, Hash)> = None;
            let mut doomed = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (_, hash, body) = audit::split_stored(v.value())
                    .ok_or_else(|| StoreError::Corrupt(format!("audit record {}", k.value())))?;
                let at = audit::decode_body(body).map_or(i64::MAX, |e| e.recorded_at_ms);
                if at >= cutoff_ms {
                    break;
                }
                doomed.push(k.value());
                last = Some((k.value(), hash));
            }
            if let Some((seq, hash)) = last {
                for s in &doomed {
                    table.remove(*s).map_err(db_err)?;
                }
                let mut cp = (seq + 1).to_le_bytes().to_vec();
                cp.extend_from_slice(&hash);
                meta.insert(KEY_AUDIT_CHECKPOINT, cp.as_slice())
                    .map_err(db_err)?;
                removed = doomed.len() as u64;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }
}

/// Opens the file exclusively and checks or writes its schema version.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let db = Database::create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen(path.to_owned()),
        other => db_err(other),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let found = meta
            .get(KEY_SCHEMA_VERSION)
            .map_err(db_err)?
            .map(|v| v.value().try_into().map(u32::from_le_bytes));
        match found {
            None => {
                meta.insert(KEY_SCHEMA_VERSION, &SCHEMA_VERSION.to_le_bytes()[..])
                    .map_err(db_err)?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(found)) => {
                return Err(StoreError::Schema {
                    path: path.to_owned(),
                    found,
                });
            }
            Some(Err(_)) => return Err(StoreError::Corrupt("schema_version".into())),
        }
        txn.open_table(SECRETS).map_err(db_err)?;
        txn.open_table(AUDIT).map_err(db_err)?;
        txn.open_table(BREAK_GLASS).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

/// The chain's starting point: (first_seq, prev_hash); (1, zeros) before any pruning.
fn checkpoint(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(u64, Hash), StoreError> {
    match meta.get(KEY_AUDIT_CHECKPOINT).map_err(db_err)? {
        None => Ok((1, [0; HASH_LEN])),
        Some(v) => {
            let bytes = v.value();
            if bytes.len() != 8 + HASH_LEN {
                return Err(StoreError::Corrupt("audit_checkpoint".into()));
            }
            let first = u64::from_le_bytes(bytes[..8].try_into().map_err(db_err)?);
            let prev = bytes[8..].try_into().map_err(db_err)?;
            Ok((first, prev))
        }
    }
}

fn parse_meta(bytes: &[u8]) -> Result<SecretMeta, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("secret metadata: {e}")))
}

fn encode_meta(meta: &SecretMeta) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(meta).map_err(db_err)
}

fn new_uuid() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(db_err)?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string())
}
