//! Last-known-good: a sealed copy on disk of the values last fetched from GSM, so a daemon
//! restarted while GSM does not answer still serves them, for as long as an in-memory value
//! would be served (`fetched_at + ttl + max_stale`).
//!
//! Opt-in (`[daemon] last_known_good`). The key never sits beside the file: it is
//! `last_known_good_key`, or systemd's credential `secretd-lkg-key` (which
//! `LoadCredentialEncrypted=` can bind to the host's TPM). `seal` has the format.
//!
//! The writer is coalesced: a successful GSM fetch marks the catalog dirty, and the file is
//! rewritten at most once per [`WRITE_INTERVAL`] (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old file or the new one, never half of one. A graceful
//! stop writes what changed since the last write first.
//!
//! After each write the database records the fetch time sealed for each secret (`lkg_sealed`),
//! and a restore refuses any record older than that: an older sealed copy put back in place of
//! the file cannot serve a superseded version after a restart. A newer fetch of an older
//! version (an alias rolled back, a version unpinned) is newer, so it passes.

mod seal;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use secretd_proto::SourceKind;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::Catalog;
use super::fingerprint::FingerprintKey;
use super::secret_bytes::SecretBytes;
use crate::audit::{Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::config::{Config, LastKnownGoodConfig};
use crate::store::Store;
use crate::util::host::{MACHINE_ID, machine_id};
use crate::util::time::{from_unix_ms, millis, now_ms, unix_ms};
use seal::{KEY_LEN, MAX_FILE, Unsealable};

/// The least time between two writes of the file.
pub(crate) const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Why last-known-good cannot be used on this host (startup fails: the operator asked for it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// The key file could not be read.
    #[error("last-known-good key {}: {source}", path.display())]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The key file is not exactly 32 bytes.
    #[error("last-known-good key {} must hold exactly {KEY_LEN} bytes", .0.display())]
    KeyLength(PathBuf),
    /// The key file is readable by others, or owned by someone else.
    #[error(
        "last-known-good key {} must be mode 0600 or 0400 and owned by secretd's user or root (it is mode {mode:o}, owner uid {owner})",
        path.display()
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
    /// The host has no machine id to bind the file to.
    #[error("cannot read the host's machine id from {MACHINE_ID}: {0}")]
    MachineId(#[source] std::io::Error),
}

/// Why the file was not used.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is larger than any this build writes.
    #[error("larger than {MAX_FILE} bytes")]
    TooLarge,
    /// The file does not open.
    #[error(transparent)]
    Unsealable(#[from] Unsealable),
}

/// Why the file was not written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] seal::SealFailed),
    /// The filesystem refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path written.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Recording what was sealed failed (the file was written).
    #[error("recording what was sealed: {0}")]
    Record(#[from] crate::store::StoreError),
}

/// The host's sealed store of last-known-good values.
pub(crate) struct LastKnownGood {
    /// The sealed file.
    path: PathBuf,
    /// The AES-256-GCM key, wiped on drop.
    key: Zeroizing<[u8; KEY_LEN]>,
    /// This host's machine id, bound into every record.
    machine_id: String,
    /// Where the fetch times last sealed are recorded.
    store: Arc<Store>,
}

impl std::fmt::Debug for LastKnownGood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastKnownGood")
            .field("path", &self.path)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl LastKnownGood {
    /// Loads the key and the machine id.
    pub(crate) fn open(
        cfg: &LastKnownGoodConfig,
        store: Arc<Store>,
    ) -> Result<LastKnownGood, SetupError> {
        Ok(LastKnownGood {
            path: cfg.path.clone(),
            key: load_key(&cfg.key)?,
            machine_id: machine_id().map_err(SetupError::MachineId)?,
            store,
        })
    }

    /// Serves what the file holds for GSM secrets that have nothing yet, as `last_known_good`
    /// and stale, while `fetched_at + ttl + max_stale` is in the future. A file that does not
    /// open is refused whole (`omni.alert.last_known_good_rejected`); the daemon goes on.
    pub(crate) fn restore(
        &self,
        config: &Config,
        catalog: &Catalog,
        fingerprints: &FingerprintKey,
        audit: &AuditLog,
    ) {
        let records = match self.read() {
            Ok(Some(records)) => records,
            Ok(None) => {
                tracing::info!(path = %self.path.display(), "no last-known-good file yet");
                return;
            }
            Err(why) => {
                tracing::error!(
                    event = "omni.alert.last_known_good_rejected",
                    path = %self.path.display(),
                    reason = %why,
                    "the last-known-good file was refused; nothing is served from it"
                );
                return;
            }
        };
        let now = now_ms();
        let sealed = self.store.lkg_sealed().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read what was last sealed; trusting the file");
            Default::default()
        });
        for record in records {
            let Some(idx) = catalog.index_of(&record.name) else {
                continue;
            };
            if let Some(&last) = sealed.get(&record.name)
                && record.fetched_at_ms < last
            {
                tracing::error!(
                    event = "omni.alert.last_known_good_rollback",
                    secret = %record.name,
                    version = %record.version,
                    "the last-known-good file holds an older value of this secret than was \
                     last sealed (an older copy put back); not served"
                );
                continue;
            }
            let slot = catalog.slot(idx);
            if slot.configured != SourceKind::Gsm || slot.current().is_some() {
                continue;
            }
            let window = millis(slot.ttl + config.daemon.max_stale, i64::MAX);
            if record.fetched_at_ms.saturating_add(window) <= now {
                tracing::info!(secret = %record.name, "last-known-good value is past max_stale; not served");
                continue;
            }
            let fingerprint = fingerprints.fingerprint(&record.value);
            let version = record.version.clone();
            slot.restore(
                SecretBytes::from_zeroizing(record.value),
                record.version,
                fingerprint.clone(),
                from_unix_ms(record.fetched_at_ms),
            );
            let mut event =
                AuditEvent::new(Action::Refresh, &record.name, &Actor::daemon(), Outcome::Ok);
            event.version.clone_from(&version);
            event.fingerprint = fingerprint;
            event.detail = "restored from last_known_good".into();
            audit.record(event);
            tracing::warn!(
                event = "secret.last_known_good",
                secret = %record.name,
                version = %version,
                "serving the last-known-good value until the source answers"
            );
        }
    }

    /// The file's records, `None` when there is no file yet.
    fn read(&self) -> Result<Option<Vec<seal::Record>>, ReadError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > MAX_FILE {
            return Err(ReadError::TooLarge);
        }
        Ok(Some(seal::open(&self.key, &self.machine_id, &bytes)?))
    }

    /// Seals the GSM values the catalog holds now (fetched, or themselves restored) and
    /// replaces the file atomically.
    fn write(&self, catalog: &Catalog) -> Result<usize, WriteError> {
        let entries: Vec<_> = catalog
            .slots()
            .iter()
            .filter(|s| s.configured == SourceKind::Gsm)
            .filter_map(|s| Some((s.name.clone(), s.current()?)))
            .filter(|(_, e)| matches!(e.source, SourceKind::Gsm | SourceKind::LastKnownGood))
            .collect();
        let sealed = seal::seal(
            &self.key,
            &self.machine_id,
            entries.iter().map(|(name, e)| {
                (
                    &**name,
                    &*e.version,
                    unix_ms(e.fetched_at),
                    e.value.expose(),
                )
            }),
        )?;
        replace_file(&self.path, &sealed)?;
        // After the file: a crash in between leaves a file newer than the record, which passes.
        self.store.put_lkg_sealed(
            entries
                .iter()
                .map(|(name, e)| (&**name, unix_ms(e.fetched_at))),
        )?;
        Ok(entries.len())
    }
}

/// Rewrites the file whenever the catalog is marked dirty, at most once per
/// [`WRITE_INTERVAL`], until `cancel` fires; then once more if anything changed since the last
/// write, so a daemon stopped right after fetching (a restart, a deploy) leaves every value it
/// fetched sealed for the next start, which may come during an outage.
pub(crate) async fn run_writer(
    lkg: Arc<LastKnownGood>,
    catalog: Arc<Catalog>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            () = catalog.dirty.notified() => {}
        }
        write_now(&lkg, &catalog).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            () = tokio::time::sleep(WRITE_INTERVAL) => {}
        }
    }
    // `notify_one` leaves a permit when nobody waits: one here means a change not yet written.
    if catalog.dirty.notified().now_or_never().is_some() {
        write_now(&lkg, &catalog).await;
    }
}

/// Seals the catalog now, off the runtime's workers, logging the outcome.
async fn write_now(lkg: &Arc<LastKnownGood>, catalog: &Arc<Catalog>) {
    let (lkg, catalog) = (lkg.clone(), catalog.clone());
    match tokio::task::spawn_blocking(move || lkg.write(&catalog)).await {
        Ok(Ok(n)) => tracing::debug!(secrets = n, "last-known-good file written"),
        Ok(Err(e)) => tracing::error!(
            event = "omni.alert.last_known_good_write_failed",
            error = %e,
            "cannot write the last-known-good file"
        ),
        Err(_) => tracing::error!("the last-known-good writer task failed"),
    }
}

/// Writes `bytes` to a temp file beside `path` (mode 0600), fsyncs it, renames it over `path`
/// and fsyncs the directory.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| WriteError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Reads the key: exactly 32 bytes, mode 0600 or 0400, owned by this process's user or root.
fn load_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, SetupError> {
    let read = |source| SetupError::KeyRead {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if mode & 0o177 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(SetupError::KeyExposed {
            path: path.to_owned(),
            mode,
            owner: meta.uid(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let mut extra = [0u8; 1];
    file.read_exact(&mut key[..])
        .map_err(|_| SetupError::KeyLength(path.to_owned()))?;
    if file.read(&mut extra).map_err(read)? != 0 {
        return Err(SetupError::KeyLength(path.to_owned()));
    }
    Ok(key)
}
