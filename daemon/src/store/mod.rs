//! The embedded redb database: one exclusively opened file holding secret metadata,
//! persisted break-glass envelopes and the audit chain. Values are never stored, only keyed
//! fingerprints. This module owns the file (open, schema, reopen after a failed commit) and
//! the rows it alone interprets; the audit table's operations live with the chain in `audit`.

pub(crate) mod metadata;
pub(crate) mod tables;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};

use crate::config::{Config, SourceConfig};
use crate::util::lock::Recover;
use crate::util::time::now_ms;
use metadata::{SecretMeta, Status};
use tables::{
    AUDIT, BREAK_GLASS, BREAK_GLASS_USED, KEY_SCHEMA_VERSION, LKG_SEALED, META, SCHEMA_VERSION,
    SECRETS,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
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
    /// A reopen failed earlier; the next successful reopen lifts this.
    #[error("the database is closed after a failed reopen")]
    Closed,
    /// redb failed (storage, transaction, table or commit), kept as the source.
    #[error("database error: {0}")]
    Db(#[source] redb::Error),
    /// A stored record does not parse.
    #[error("corrupt record in the database: {what}")]
    Corrupt {
        /// Which record.
        what: String,
    },
    /// A metadata row could not be encoded.
    #[error("cannot encode secret metadata: {0}")]
    Encode(#[source] serde_json::Error),
    /// The operating system's random number generator failed (new row ids).
    #[error("cannot draw a random row id: {0}")]
    Random(#[source] getrandom::Error),
}

impl StoreError {
    /// A record that does not parse.
    pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt { what: what.into() }
    }
}

/// redb's operation errors each convert into `redb::Error`; `?` takes one `From` step, so each
/// gets its own conversion into [`StoreError::Db`] here, once, instead of a `map_err` per call.
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> StoreError {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// An open database.
#[derive(Debug)]
pub(crate) struct Store {
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

impl Store {
    /// Opens (or creates) the database, exclusively, and checks its schema version.
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            db: RwLock::new(Some(open_db(path)?)),
            path: path.to_owned(),
        })
    }

    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        let guard = self.db.read().recover();
        if guard.is_none() {
            return Err(StoreError::Closed);
        }
        Ok(DbGuard(guard))
    }

    /// A read transaction (a consistent snapshot).
    pub(crate) fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db()?.begin_read()?)
    }

    /// A write transaction; nothing is visible or durable until it commits.
    pub(crate) fn write(&self) -> Result<WriteTransaction, StoreError> {
        Ok(self.db()?.begin_write()?)
    }

    /// Closes and reopens the database (after a failed commit redb refuses writes until then).
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().recover();
        // Drop the old handle first: it holds the file lock.
        drop(slot.take());
        *slot = Some(open_db(&self.path)?);
        Ok(())
    }

    /// Creates metadata rows for new catalog secrets and updates the config-derived fields of
    /// existing ones. Returns the rows written (to be audited as metadata writes).
    pub(crate) fn sync_catalog(&self, config: &Config) -> Result<Vec<SecretMeta>, StoreError> {
        let now = now_ms();
        let txn = self.write()?;
        let mut written = Vec::new();
        {
            let mut table = txn.open_table(SECRETS)?;
            for s in &config.secrets {
                let (gcp_secret_id, gcp_version_alias) = match &s.source {
                    SourceConfig::Gsm { resource, version } => {
                        (Some(resource.clone()), Some(version.clone()))
                    }
                    _ => (None, None),
                };
                let existing = match table.get(s.name.as_str())? {
                    Some(v) => Some(parse_meta(v.value())?),
                    None => None,
                };
                let next = match &existing {
                    Some(m) => SecretMeta {
                        environment: s.environment.clone(),
                        // A promoted active version outranks a number in the config only until
                        // the config names it, or stops naming a number at all.
                        active_version: m.active_version.clone().filter(|v| {
                            gcp_version_alias
                                .as_deref()
                                .is_some_and(|c| c != v && crate::config::is_version_number(c))
                        }),
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
                        active_version: None,
                    },
                };
                if existing.as_ref() != Some(&next) {
                    table.insert(s.name.as_str(), encode_meta(&next)?.as_slice())?;
                    written.push(next);
                }
            }
        }
        txn.commit()?;
        Ok(written)
    }

    /// Every metadata row, by name.
    pub(crate) fn all_meta(&self) -> Result<BTreeMap<String, SecretMeta>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SECRETS)?;
        let mut out = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_owned(), parse_meta(v.value())?);
        }
        Ok(out)
    }

    /// One metadata row.
    pub(crate) fn meta(&self, name: &str) -> Result<Option<SecretMeta>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SECRETS)?;
        table.get(name)?.map(|v| parse_meta(v.value())).transpose()
    }

    /// Writes one metadata row.
    pub(crate) fn put_meta(&self, meta: &SecretMeta) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(SECRETS)?
            .insert(meta.name.as_str(), encode_meta(meta)?.as_slice())?;
        Ok(txn.commit()?)
    }

    /// Stores (or replaces) the sealed envelope of an active override.
    pub(crate) fn put_envelope(&self, name: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(BREAK_GLASS)?.insert(name, envelope)?;
        Ok(txn.commit()?)
    }

    /// Forgets the envelope of `name`.
    pub(crate) fn delete_envelope(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(BREAK_GLASS)?.remove(name)?;
        Ok(txn.commit()?)
    }

    /// Whether the envelope with `id` was applied before (and has not expired by `now_ms`).
    pub(crate) fn envelope_used(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(BREAK_GLASS_USED)?;
        let Some(v) = table.get(id)? else {
            return Ok(false);
        };
        let until = v
            .value()
            .try_into()
            .map(i64::from_le_bytes)
            .map_err(|_| StoreError::corrupt(format!("break_glass_used {id}")))?;
        Ok(until > now_ms)
    }

    /// Remembers that the envelope with `id` was applied, until `expires_at_ms`, and forgets
    /// ids that expired before `now_ms`.
    pub(crate) fn remember_envelope(
        &self,
        id: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut table = txn.open_table(BREAK_GLASS_USED)?;
            let mut expired = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                let until = v.value().try_into().map(i64::from_le_bytes).unwrap_or(0);
                if until <= now_ms {
                    expired.push(k.value().to_owned());
                }
            }
            for k in &expired {
                table.remove(k.as_str())?;
            }
            table.insert(id, &expires_at_ms.to_le_bytes()[..])?;
        }
        Ok(txn.commit()?)
    }

    /// The fetch time of each value last sealed into the last-known-good file, by name.
    pub(crate) fn lkg_sealed(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let txn = self.read()?;
        let table = match txn.open_table(LKG_SEALED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// Records what was just sealed into the last-known-good file (replacing the record).
    pub(crate) fn put_lkg_sealed<'a>(
        &self,
        sealed: impl IntoIterator<Item = (&'a str, i64)>,
    ) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut table = txn.open_table(LKG_SEALED)?;
            table.retain(|_, _| false)?;
            for (name, fetched_at_ms) in sealed {
                table.insert(name, fetched_at_ms)?;
            }
        }
        Ok(txn.commit()?)
    }

    /// Every stored envelope.
    pub(crate) fn envelopes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(BREAK_GLASS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
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
        other => StoreError::Db(other.into()),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let found = meta
            .get(KEY_SCHEMA_VERSION)?
            .map(|v| v.value().try_into().map(u32::from_le_bytes));
        match found {
            None => {
                meta.insert(KEY_SCHEMA_VERSION, &SCHEMA_VERSION.to_le_bytes()[..])?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(found)) => {
                return Err(StoreError::Schema {
                    path: path.to_owned(),
                    found,
                });
            }
            Some(Err(_)) => return Err(StoreError::corrupt("schema_version")),
        }
        txn.open_table(SECRETS)?;
        txn.open_table(AUDIT)?;
        txn.open_table(BREAK_GLASS)?;
        txn.open_table(BREAK_GLASS_USED)?;
    }
    txn.commit()?;
    Ok(db)
}

fn parse_meta(bytes: &[u8]) -> Result<SecretMeta, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(format!("secret metadata: {e}")))
}

fn encode_meta(meta: &SecretMeta) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(meta).map_err(StoreError::Encode)
}

fn new_uuid() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(StoreError::Random)?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string())
}
