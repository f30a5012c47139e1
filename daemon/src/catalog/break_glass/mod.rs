//! Break-glass: emergency values, sealed for the daemon's RSA key on an operator's machine,
//! that outrank the normal source until their TTL ends.
//!
//! Only the sealed envelope is persisted (never the plaintext), so a daemon restarted during a
//! GSM outage comes back with the override still active. Decryption is admin-only, off the
//! read path, and failures are rate-limited: the `rsa` crate's RUSTSEC-2023-0071 (a timing
//! side channel) needs many observed decryptions to matter.

pub(crate) mod envelope;
pub(crate) mod keys;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rsa::RsaPrivateKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Catalog;
use super::fingerprint::FingerprintKey;
use super::secret_bytes::SecretBytes;
use super::slot::BREAK_GLASS_VERSION;
use super::source::check_value;
use crate::audit::{self, Action, Actor, AuditError, AuditEvent, AuditLog, Outcome};
use crate::config::BreakGlassConfig;
use crate::store::{Store, StoreError};
use crate::util::lock::Recover;
use crate::util::time::{Precision, from_unix_ms, millis, now_ms, rfc3339, unix_ms};
use envelope::{MAX_ENVELOPE, Opened, Rejected};
use keys::KeyError;

/// Failed envelopes accepted per [`FAILURE_WINDOW`]; beyond that, attempts are refused
/// without decrypting.
pub(crate) const MAX_FAILURES: u32 = 5;
/// The rate-limit window for failed envelopes.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Allowance for the clock of the machine that sealed an envelope running ahead of ours.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The reason an override ended by itself.
const EXPIRED: &str = "expired";

/// How apply and clear records name the envelope in their detail: `...; envelope ID`.
const ENVELOPE_TAG: &str = "envelope ";

/// An envelope's id: the hex SHA-256 of its bytes.
fn envelope_id(envelope: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(envelope))
}

/// Why an apply or clear did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BreakGlassError {
    /// No `[break_glass]` section.
    #[error("break-glass is not configured on this host ([break_glass] private_key)")]
    NotConfigured,
    /// The envelope did not open or its bindings are wrong; deliberately uninformative.
    #[error("break-glass envelope rejected")]
    Rejected,
    /// Too many rejected envelopes lately.
    #[error("too many rejected break-glass envelopes; try again in a minute")]
    RateLimited,
    /// Nothing to clear.
    #[error("no break-glass override is active for {0:?}")]
    NotActive(String),
    /// The store failed before the override took effect.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The apply could not be audited, so it was rolled back.
    #[error("not applied: {0}")]
    NotAudited(#[source] AuditError),
    /// The envelope was applied before (a replay of a cleared or still active override).
    #[error("this envelope was applied before; seal a new one")]
    Replayed,
    /// The decryption task died (a panic in the crypto library).
    #[error("break-glass decryption failed unexpectedly")]
    Decryption,
}

impl From<Rejected> for BreakGlassError {
    fn from(_: Rejected) -> Self {
        BreakGlassError::Rejected
    }
}

/// Break-glass state and operations.
#[derive(Debug)]
pub(crate) struct BreakGlass {
    /// The private key that opens envelopes, if configured.
    key: Option<Arc<RsaPrivateKey>>,
    /// The longest override accepted.
    max_ttl: Duration,
    /// Where overrides are served from.
    catalog: Arc<Catalog>,
    /// Where envelopes and metadata persist.
    store: Arc<Store>,
    /// Where applies, clears and expiries are recorded.
    audit: AuditLog,
    /// Fingerprints emergency values for audit and status.
    fingerprints: Arc<FingerprintKey>,
    /// Start of the current rate-limit window and failures in it.
    failures: Mutex<(Instant, u32)>,
    /// This host's machine id, which a host-bound envelope must name (`None` when unreadable:
    /// then every host-bound envelope is refused).
    machine_id: Option<String>,
    /// Held while an envelope is opened: decryptions happen one at a time.
    opening: tokio::sync::Mutex<()>,
    /// Expiry timers run here.
    tracker: TaskTracker,
    /// Stops expiry timers at shutdown.
    cancel: CancellationToken,
}

impl BreakGlass {
    /// Loads the private key (if configured).
    pub(crate) fn new(
        cfg: Option<&BreakGlassConfig>,
        catalog: Arc<Catalog>,
        store: Arc<Store>,
        audit: AuditLog,
        fingerprints: Arc<FingerprintKey>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Arc<BreakGlass>, KeyError> {
        let key = cfg
            .map(|c| keys::load_private(&c.private_key).map(Arc::new))
            .transpose()?;
        Ok(Arc::new(BreakGlass {
            key,
            max_ttl: cfg.map_or(Duration::ZERO, |c| c.max_ttl),
            catalog,
            store,
            audit,
            fingerprints,
            failures: Mutex::new((Instant::now(), 0)),
            opening: tokio::sync::Mutex::new(()),
            machine_id: crate::util::host::machine_id().ok(),
            tracker,
            cancel,
        }))
    }

    fn rate_limited(&self) -> bool {
        let mut f = self.failures.lock().recover();
        if f.0.elapsed() > FAILURE_WINDOW {
            *f = (Instant::now(), 0);
        }
        f.1 >= MAX_FAILURES
    }

    fn count_failure(&self) {
        let mut f = self.failures.lock().recover();
        f.1 = f.1.saturating_add(1);
    }

    fn uncount_failure(&self) {
        let mut f = self.failures.lock().recover();
        f.1 = f.1.saturating_sub(1);
    }

    /// Opens an envelope and checks what it binds: a catalog name, an expiry in the future
    /// and no further than `max_ttl` away, an acceptable value.
    ///
    /// Envelopes are opened one at a time, and each counts as a failure until it opened: so
    /// admins racing each other cannot get more than [`MAX_FAILURES`] decryptions a window.
    async fn verify(&self, envelope: Vec<u8>) -> Result<(usize, Opened), BreakGlassError> {
        let key = self.key.clone().ok_or(BreakGlassError::NotConfigured)?;
        let _one_at_a_time = self.opening.lock().await;
        if self.rate_limited() {
            return Err(BreakGlassError::RateLimited);
        }
        self.count_failure();
        let opened = if envelope.len() > MAX_ENVELOPE {
            Err(Rejected)
        } else {
            tokio::task::spawn_blocking(move || envelope::open(&key, &envelope))
                .await
                .map_err(|_| BreakGlassError::Decryption)?
        };
        let checked = opened.and_then(|o| {
            let idx = self.catalog.index_of(&o.name).ok_or(Rejected)?;
            let now = now_ms();
            let limit = now.saturating_add(millis(self.max_ttl + CLOCK_SKEW, i64::MAX));
            let foreign = o
                .host
                .as_deref()
                .is_some_and(|h| self.machine_id.as_deref() != Some(h));
            if foreign
                || o.expires_at_ms <= now
                || o.expires_at_ms > limit
                || check_value(o.value.len()).is_err()
            {
                return Err(Rejected);
            }
            Ok((idx, o))
        });
        if checked.is_ok() {
            self.uncount_failure();
        }
        Ok(checked?)
    }

    /// Applies an override from `envelope` for `actor`. Returns the slot index.
    ///
    /// Audit before effect: the override is persisted and served only once its audit record is
    /// durable. An envelope is applied at most once: its id (a hash of its bytes) is remembered
    /// until it expires, so a cleared override cannot be replayed.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        envelope: Vec<u8>,
        actor: Actor,
    ) -> Result<usize, BreakGlassError> {
        let id = envelope_id(&envelope);
        let sealed = envelope.clone();
        let (idx, opened) = self.verify(envelope).await?;
        let now = now_ms();
        if self.store.envelope_used(&id, now)? {
            return Err(BreakGlassError::Replayed);
        }
        let name = opened.name.clone();
        let expires_at_ms = opened.expires_at_ms;
        let mut event = AuditEvent::new(Action::BreakGlassApply, &name, &actor, Outcome::Ok);
        event.version = BREAK_GLASS_VERSION.into();
        event.fingerprint = self.fingerprints.fingerprint(&opened.value);
        event.detail = format!(
            "until {}; {ENVELOPE_TAG}{id}",
            rfc3339(expires_at_ms, Precision::Seconds)
        );
        self.audit
            .record_durable(event)
            .await
            .map_err(BreakGlassError::NotAudited)?;
        self.store.remember_envelope(&id, expires_at_ms, now)?;
        self.store.put_envelope(&name, &sealed)?;
        self.set_metadata(&name, Some(expires_at_ms))?;
        self.install(idx, opened);
        tracing::error!(
            event = "omni.alert.break_glass_applied",
            secret = %name,
            uid = actor.uid,
            pid = actor.pid,
            expires_at = %rfc3339(expires_at_ms, Precision::Seconds),
            "break-glass value applied; it outranks the normal source until it expires"
        );
        Ok(idx)
    }

    fn install(self: &Arc<Self>, idx: usize, opened: Opened) {
        let fingerprint = self.fingerprints.fingerprint(&opened.value);
        let expires_at_ms = opened.expires_at_ms;
        self.catalog.slot(idx).set_override(
            SecretBytes::from_zeroizing(opened.value),
            fingerprint,
            from_unix_ms(expires_at_ms),
        );
        let me = self.clone();
        self.tracker.spawn(async move {
            let wait = from_unix_ms(expires_at_ms)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = me.cancel.cancelled() => {}
                _ = tokio::time::sleep(wait) => me.expire(idx, expires_at_ms).await,
            }
        });
    }

    async fn expire(self: &Arc<Self>, idx: usize, expires_at_ms: i64) {
        let slot = self.catalog.slot(idx);
        let still_this = slot
            .override_expiry()
            .is_some_and(|e| unix_ms(e) == expires_at_ms);
        if still_this {
            let _ = self.clear(idx, Actor::daemon(), EXPIRED).await;
        }
    }

    fn set_metadata(&self, name: &str, until: Option<i64>) -> Result<(), StoreError> {
        if let Some(mut meta) = self.store.meta(name)? {
            meta.break_glass_enabled_until_ms = until;
            self.store.put_meta(&meta)?;
        }
        Ok(())
    }

    /// Drops the override and its persisted envelope; the normal value is served at once and
    /// refreshed from its source.
    fn remove(&self, idx: usize, name: &str) -> bool {
        let slot = self.catalog.slot(idx);
        let had = slot.clear_override();
        if let Err(e) = self
            .store
            .delete_envelope(name)
            .and_then(|()| self.set_metadata(name, None))
        {
            tracing::error!(secret = name, error = %e, "cannot forget the break-glass envelope");
        }
        // Dropping the request's ticket is fine: the refresh runs anyway.
        let _ = slot.trigger.request();
        had
    }

    /// Clears the override of slot `idx` (`reason`: "cleared" by an operator, or "expired").
    /// Audit before effect: the override ends once the record is durable (an expiry ends it
    /// regardless: serving it longer than its envelope allows is not an option).
    pub(crate) async fn clear(
        self: &Arc<Self>,
        idx: usize,
        actor: Actor,
        reason: &str,
    ) -> Result<(), BreakGlassError> {
        let name = self.catalog.slot(idx).name.to_string();
        if self.catalog.slot(idx).override_expiry().is_none() {
            return Err(BreakGlassError::NotActive(name));
        }
        let mut event = AuditEvent::new(Action::BreakGlassClear, &name, &actor, Outcome::Ok);
        event.detail = match self.stored_id(&name) {
            Some(id) => format!("{reason}; {ENVELOPE_TAG}{id}"),
            None => reason.into(),
        };
        let audited = self.audit.record_durable(event).await;
        if let Err(e) = &audited {
            if reason != EXPIRED {
                return Err(BreakGlassError::NotAudited(e.clone()));
            }
            tracing::error!(secret = %name, error = %e, "break-glass expiry could not be audited");
        }
        self.remove(idx, &name);
        tracing::warn!(
            event = "omni.alert.break_glass_cleared",
            secret = %name,
            reason,
            uid = actor.uid,
            "break-glass value cleared; serving the normal source again"
        );
        Ok(())
    }

    /// The id of the envelope stored for `name`, if any.
    fn stored_id(&self, name: &str) -> Option<String> {
        let envelopes = self.store.envelopes().ok()?;
        let (_, sealed) = envelopes.iter().find(|(n, _)| n == name)?;
        Some(envelope_id(sealed))
    }

    /// Whether the audit trail records that envelope `id` of `name` was cleared: a row put
    /// back into the database from a copy must not bring it back. (Removing that record from
    /// the keyed chain breaks it, which `audit verify` reports.)
    fn was_cleared(&self, name: &str, id: &str) -> bool {
        let tag = format!("{ENVELOPE_TAG}{id}");
        audit::any(&self.store, |e| {
            e.action == Action::BreakGlassClear && e.secret == name && e.detail.ends_with(&tag)
        })
        .unwrap_or_else(|e| {
            tracing::error!(secret = name, error = %e, "cannot read the audit trail; not restoring the override");
            true
        })
    }

    /// Reinstates persisted overrides after a restart (dropping expired or unreadable ones,
    /// and ones the audit trail says were cleared).
    pub(crate) async fn restore(self: &Arc<Self>) {
        let envelopes = match self.store.envelopes() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read persisted break-glass envelopes");
                return;
            }
        };
        for (name, sealed) in envelopes {
            if self.was_cleared(&name, &envelope_id(&sealed)) {
                tracing::error!(
                    event = "omni.alert.break_glass_restored_row",
                    secret = %name,
                    "a break-glass envelope the audit trail records as cleared is back in the \
                     database (restored from a copy?); dropping it"
                );
                self.forget(&name);
                continue;
            }
            let Some(key) = self.key.clone() else {
                tracing::warn!(secret = %name, "break-glass envelope kept but not applied: break-glass is not configured");
                continue;
            };
            let opened = tokio::task::spawn_blocking(move || envelope::open(&key, &sealed)).await;
            match opened {
                Ok(Ok(o)) if o.expires_at_ms > now_ms() && o.name == name => {
                    if let Some(idx) = self.catalog.index_of(&name) {
                        let until = o.expires_at_ms;
                        self.install(idx, o);
                        tracing::warn!(
                            event = "omni.alert.break_glass_applied",
                            secret = %name,
                            expires_at = %rfc3339(until, Precision::Seconds),
                            "break-glass override restored after restart"
                        );
                        continue;
                    }
                }
                _ => {}
            }
            tracing::info!(secret = %name, "dropping an expired or unusable break-glass envelope");
            self.forget(&name);
        }
    }

    /// Deletes the stored envelope of `name` and its metadata mark.
    fn forget(&self, name: &str) {
        if let Err(e) = self
            .store
            .delete_envelope(name)
            .and_then(|()| self.set_metadata(name, None))
        {
            tracing::error!(secret = %name, error = %e, "cannot forget the break-glass envelope");
        }
    }
}
