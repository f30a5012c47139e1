//! One catalog entry's place in memory: the value it serves and what outranks it.
//!
//! Readers take a short read lock to clone an `Arc` of the current entry and never wait on a
//! source; the refresher builds a whole new entry and swaps it in. Precedence: an unexpired
//! break-glass override, then the source's value (which a rotation in progress pins to the
//! version being validated, in the source itself).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use secretd_proto::SourceKind;
use tokio::time::Instant;

use super::announce::Announcer;
use super::entry::Entry;
use super::revocation::{Cause, Doubt, Revoked};
use super::secret_bytes::SecretBytes;
use super::source::{Fetched, SourceError};
use super::trigger::RefreshTrigger;
use crate::util::lock::Recover;

/// The version break-glass values are reported under.
pub(crate) const BREAK_GLASS_VERSION: &str = "break-glass";

/// The refresh history of a slot.
#[derive(Debug, Default, Clone)]
pub(crate) struct Health {
    /// Failures since the last success.
    pub(crate) consecutive_failures: u32,
    /// The most recent failure, cleared by a success.
    pub(crate) last_error: Option<SourceError>,
    /// The version withdrawn because GSM refused it or deleted the secret, until a value is
    /// installed again.
    pub(crate) revoked: Option<Revoked>,
}

/// The values a slot holds: the source's, and a break-glass override that outranks it.
#[derive(Debug, Default)]
struct Values {
    /// The source's value, if one was ever loaded.
    current: RwLock<Option<Arc<Entry>>>,
    /// A break-glass value that outranks `current` until it expires.
    overridden: RwLock<Option<Arc<Entry>>>,
    /// Whether `overridden` may hold something: lets reads skip its lock in the usual case.
    has_override: AtomicBool,
}

/// A catalog entry's place in the catalog.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The catalog name.
    pub(crate) name: Arc<str>,
    /// The configured source kind (status shows it beside where the value came from).
    pub(crate) configured: SourceKind,
    /// How long a fetched value is fresh.
    pub(crate) ttl: Duration,
    /// What it serves.
    values: Values,
    /// Refresh outcomes, for status and alerts.
    health: Mutex<Health>,
    /// Wakes this slot's refresher and lets on-demand refreshes wait for their fetch.
    pub(crate) trigger: RefreshTrigger,
    /// A withdrawal announced or suspected and not yet confirmed (see `revocation`).
    pub(crate) doubt: Doubt,
    /// Tells watchers when the served value changes.
    announcer: Announcer,
}

impl Slot {
    /// An empty slot.
    pub(crate) fn new(
        name: &str,
        configured: SourceKind,
        ttl: Duration,
        announcer: Announcer,
    ) -> Slot {
        Slot {
            name: Arc::from(name),
            configured,
            ttl,
            values: Values::default(),
            health: Mutex::new(Health::default()),
            trigger: RefreshTrigger::default(),
            doubt: Doubt::default(),
            announcer,
        }
    }

    /// The break-glass value, if one is active and unexpired.
    pub(crate) fn active_override(&self) -> Option<Arc<Entry>> {
        if !self.values.has_override.load(Ordering::Relaxed) {
            return None;
        }
        let o = self.values.overridden.read().recover().clone()?;
        o.is_fresh(Instant::now()).then_some(o)
    }

    /// The value served now: an active override, else the source's value (fresh or not).
    pub(crate) fn served(&self) -> Option<Arc<Entry>> {
        self.active_override().or_else(|| self.current())
    }

    /// Installs a break-glass value served until `expires_at` (wall clock), outranking the
    /// normal value; refreshes keep updating the normal value underneath.
    pub(crate) fn set_override(
        &self,
        value: SecretBytes,
        fingerprint: String,
        expires_at: SystemTime,
    ) {
        let entry = Arc::new(Entry::until(
            value,
            BREAK_GLASS_VERSION.into(),
            SourceKind::BreakGlass,
            fingerprint,
            expires_at,
        ));
        *self.values.overridden.write().recover() = Some(entry);
        self.values.has_override.store(true, Ordering::Relaxed);
        self.announce();
    }

    /// When the stored override (active or just expired) ends, if there is one.
    pub(crate) fn override_expiry(&self) -> Option<SystemTime> {
        self.values
            .overridden
            .read()
            .recover()
            .as_ref()
            .map(|o| o.expires_at)
    }

    /// Removes the break-glass value; the normal value is served again at once.
    pub(crate) fn clear_override(&self) -> bool {
        self.values.has_override.store(false, Ordering::Relaxed);
        let had = self.values.overridden.write().recover().take().is_some();
        self.announce();
        had
    }

    /// Tells watchers that GSM's rotation schedule asks for a new version of this secret.
    pub(crate) fn rotation_requested(&self) {
        self.announcer.rotation_requested(&self.name);
    }

    /// Tells watchers about the value now served, if it differs from the one last announced.
    /// Called after every change to either value.
    fn announce(&self) {
        self.announcer.announce(&self.name, || self.served());
    }

    /// The source's entry, fresh or not.
    pub(crate) fn current(&self) -> Option<Arc<Entry>> {
        self.values.current.read().recover().clone()
    }

    /// A copy of the refresh history.
    pub(crate) fn health(&self) -> Health {
        self.health.lock().recover().clone()
    }

    /// Installs a freshly fetched value and clears the failure history. Returns the version
    /// now served.
    pub(crate) fn install(
        &self,
        fetched: Fetched,
        source: SourceKind,
        fingerprint: String,
    ) -> String {
        let previous = self.current();
        let version = match fetched.version {
            Some(v) => v,
            None => next_local_version(previous.as_deref(), &fetched.value),
        };
        let entry = Entry::new(
            fetched.value,
            version.clone(),
            source,
            fingerprint,
            self.ttl,
        );
        *self.values.current.write().recover() = Some(Arc::new(entry));
        *self.health.lock().recover() = Health::default();
        self.announce();
        version
    }

    /// Serves a value restored from the last-known-good file until the source answers.
    pub(crate) fn restore(
        &self,
        value: SecretBytes,
        version: String,
        fingerprint: String,
        fetched_at: SystemTime,
    ) {
        let entry = Entry::restored(value, version, fingerprint, fetched_at, self.ttl);
        *self.values.current.write().recover() = Some(Arc::new(entry));
        self.announce();
    }

    /// Withdraws the source's value because its source revoked `version` (an active override
    /// still outranks it), and tells watchers and cached clients. Returns whether a value was
    /// withdrawn.
    pub(crate) fn revoke(&self, version: &str, cause: Cause) -> bool {
        let withdrawn = {
            let mut current = self.values.current.write().recover();
            match current.as_ref() {
                Some(e) if e.version == version => current.take().is_some(),
                _ => false,
            }
        };
        if withdrawn {
            self.health.lock().recover().revoked = Some(Revoked {
                version: version.to_owned(),
                cause,
            });
            self.announce();
        }
        withdrawn
    }

    /// Records a failed refresh; the old value stays. Returns the consecutive failure count.
    pub(crate) fn record_failure(&self, error: SourceError) -> u32 {
        let mut health = self.health.lock().recover();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        health.last_error = Some(error);
        health.consecutive_failures
    }
}

/// Local sources have no versions: count changes instead ("1", "2", ...), keeping the version
/// when a refresh finds the same value.
fn next_local_version(previous: Option<&Entry>, value: &SecretBytes) -> String {
    match previous {
        None => "1".into(),
        Some(p) if p.value.ct_eq(value) => p.version.clone(),
        Some(p) => p
            .version
            .parse::<u64>()
            .map_or_else(|_| "1".into(), |v| (v + 1).to_string()),
    }
}
