//! One cached value and what is known about it. Immutable: a refresh or an override builds a
//! whole new [`Entry`] and swaps it in, so a reader holding an `Arc<Entry>` encodes exactly
//! what it read, from locked memory, while the slot moves on.

use std::time::{Duration, SystemTime};

use secretd_proto::{EntryState, ErrorCode, SourceKind, WireError};
use tokio::time::Instant;

use super::revocation::{Cause, Revoked};
use super::secret_bytes::SecretBytes;

/// One cached value.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The value.
    pub(crate) value: SecretBytes,
    /// The source's version (GSM's number, or a counter of changes for local sources).
    pub(crate) version: String,
    /// Where the value came from.
    pub(crate) source: SourceKind,
    /// When it was fetched (reported to clients).
    pub(crate) fetched_at: SystemTime,
    /// When it is due for refresh (reported to clients).
    pub(crate) expires_at: SystemTime,
    /// Keyed HMAC-SHA256 of the value (hex), for status and audit.
    pub(crate) fingerprint: String,
    /// When it was fetched, on the monotonic clock: staleness never follows a wall-clock jump.
    fetched_mono: Instant,
    /// How long it is fresh.
    ttl: Duration,
}

impl Entry {
    /// A value fetched now, fresh for `ttl`.
    pub(crate) fn new(
        value: SecretBytes,
        version: String,
        source: SourceKind,
        fingerprint: String,
        ttl: Duration,
    ) -> Entry {
        let now = SystemTime::now();
        Entry::starting(value, version, source, fingerprint, now, now + ttl, ttl)
    }

    /// A value applied now that is fresh until the wall-clock time `expires_at` (a break-glass
    /// override: its expiry is what the envelope says, to the millisecond).
    pub(crate) fn until(
        value: SecretBytes,
        version: String,
        source: SourceKind,
        fingerprint: String,
        expires_at: SystemTime,
    ) -> Entry {
        let now = SystemTime::now();
        let ttl = expires_at.duration_since(now).unwrap_or_default();
        Entry::starting(value, version, source, fingerprint, now, expires_at, ttl)
    }

    /// A value fetched at `fetched_at` by an earlier run of the daemon, restored from the
    /// last-known-good file: served as stale from the start (it has no fresh period), and
    /// expired at `fetched_at + ttl + max_stale`, as an in-memory value whose source kept
    /// failing would be. The monotonic origin is placed where the value's TTL ran out.
    pub(crate) fn restored(
        value: SecretBytes,
        version: String,
        fingerprint: String,
        fetched_at: SystemTime,
        ttl: Duration,
    ) -> Entry {
        let fresh_until = fetched_at + ttl;
        let now = Instant::now();
        let stale_since = match SystemTime::now().duration_since(fresh_until) {
            Ok(past) => now.checked_sub(past).unwrap_or(now),
            Err(ahead) => now + ahead.duration(),
        };
        Entry {
            value,
            version,
            source: SourceKind::LastKnownGood,
            fetched_at,
            expires_at: fresh_until,
            fingerprint,
            fetched_mono: stale_since,
            ttl: Duration::ZERO,
        }
    }

    /// An entry fetched at `now` (wall clock; the monotonic clock is read here).
    fn starting(
        value: SecretBytes,
        version: String,
        source: SourceKind,
        fingerprint: String,
        now: SystemTime,
        expires_at: SystemTime,
        ttl: Duration,
    ) -> Entry {
        Entry {
            value,
            version,
            source,
            fetched_at: now,
            expires_at,
            fingerprint,
            fetched_mono: Instant::now(),
            ttl,
        }
    }

    /// How servable the entry is at `now`.
    pub(crate) fn state(&self, now: Instant, max_stale: Duration) -> EntryState {
        let age = self.age(now);
        if age < self.ttl {
            EntryState::Fresh
        } else if age < self.ttl + max_stale {
            EntryState::Stale
        } else {
            EntryState::Expired
        }
    }

    /// Whether it is still within its TTL (break-glass overrides end there, with no stale
    /// period).
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.ttl
    }

    /// Age at `now`.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_mono)
    }
}

/// Why a read cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unservable {
    /// Nothing was ever loaded; the first fetch failed, with this reason.
    NeverLoaded(String),
    /// Nothing was ever loaded and the first fetch is still running.
    Loading,
    /// The value is older than its TTL plus `max_stale`.
    TooStale,
    /// GSM refused the version that was served (disabled or destroyed), or deleted the
    /// secret: it was withdrawn.
    Revoked(Revoked),
}

impl Unservable {
    /// The error a client gets.
    pub(crate) fn to_wire(&self, name: &str) -> WireError {
        let message = match self {
            Unservable::NeverLoaded(why) => {
                format!("secret {name:?} has not been loaded from its source yet: {why}")
            }
            Unservable::Loading => format!(
                "secret {name:?} has not been loaded from its source yet: its first fetch is still running"
            ),
            Unservable::Revoked(Revoked {
                version,
                cause: Cause::Refused,
            }) => {
                let message = format!(
                    "secret {name:?}: version {version} was revoked in GSM (disabled or \
                     destroyed) and is served no more; enable a version or move the alias"
                );
                return WireError::new(ErrorCode::Revoked, message);
            }
            Unservable::Revoked(Revoked {
                version,
                cause: Cause::Deleted,
            }) => {
                let message = format!(
                    "secret {name:?}: the secret was deleted in GSM, so version {version} is \
                     served no more; re-create it (the next refresh picks it up)"
                );
                return WireError::new(ErrorCode::Revoked, message);
            }
            Unservable::TooStale => {
                format!("secret {name:?} is stale past max_stale while its source is failing")
            }
        };
        WireError::new(ErrorCode::Unavailable, message)
    }
}
