//! The in-memory catalog: one [`Slot`] per configured secret, where everything the daemon
//! knows about a secret's value lives, and everything that changes it.
//!
//! `secret_bytes` (locked memory) → `entry` (one immutable value) → `slot` (source value,
//! break-glass override, health) with `announce` (change events) and `trigger` (wake-ups) →
//! this `Catalog`. Beside it: `source` (where values come from), `refresh` (one task per slot
//! keeping it filled), `break_glass` (overrides that outrank the source), `fingerprint`
//! (keyed hashes for audit and status). Staleness is judged on the monotonic clock (tokio's,
//! so tests can pause time).

pub(crate) mod announce;
pub(crate) mod break_glass;
pub(crate) mod entry;
pub(crate) mod fingerprint;
pub(crate) mod last_known_good;
pub(crate) mod notifications;
pub(crate) mod refresh;
pub(crate) mod revocation;
pub(crate) mod rotation;
pub(crate) mod secret_bytes;
pub(crate) mod slot;
pub(crate) mod source;
pub(crate) mod trigger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secretd_proto::{EntryState, ErrorCode, SecretStatus, WireError};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::config::Config;
use crate::util::time::{millis, unix_ms};
use announce::{Announcer, Notice, WATCH_QUEUE};
use entry::{Entry, Unservable};
use slot::Slot;

/// All slots, indexed by name.
#[derive(Debug)]
pub(crate) struct Catalog {
    /// Slots in config order; a slot's index is its identity everywhere else (policy,
    /// metrics, watchers, audit tallies).
    slots: Box<[Slot]>,
    /// Name → index into `slots`.
    index: HashMap<Arc<str>, usize>,
    /// How long past expiry a value is still served.
    max_stale: Duration,
    /// How long a read of a secret that never loaded waits for its first fetch.
    first_fetch_wait: Duration,
    /// Change notices for watchers (each slot's announcer holds a sender).
    events: broadcast::Sender<Notice>,
    /// Signalled after every successful GSM fetch: the last-known-good writer (when enabled)
    /// seals the catalog again.
    pub(crate) dirty: Notify,
    /// The GSM notification channel's health, when `[gsm.notifications]` is configured.
    pub(crate) channel: Option<notifications::ChannelHealth>,
    /// How long an announced or suspected withdrawal is checked before it counts as
    /// unconfirmed (`[gsm] revocation_confirm_window`).
    pub(crate) revocation_window: Duration,
}

impl Catalog {
    /// An empty slot for every configured secret.
    pub(crate) fn new(config: &Config) -> Catalog {
        let events = broadcast::Sender::new(WATCH_QUEUE);
        let slots: Box<[Slot]> = config
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Slot::new(
                    &s.name,
                    s.source.kind(),
                    s.ttl,
                    Announcer::new(i, events.clone()),
                )
            })
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Catalog {
            slots,
            index,
            max_stale: config.daemon.max_stale,
            first_fetch_wait: config.daemon.first_fetch_wait,
            events,
            dirty: Notify::new(),
            channel: config
                .gsm
                .as_ref()
                .and_then(|g| g.notifications.as_ref())
                .map(|n| notifications::ChannelHealth::new(n.fallback_interval)),
            revocation_window: config
                .gsm
                .as_ref()
                .map_or(crate::config::DEFAULT_REVOCATION_CONFIRM_WINDOW, |g| {
                    g.revocation_confirm_window
                }),
        }
    }

    /// A receiver of every change notice from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }

    /// How many watchers are subscribed.
    pub(crate) fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Every slot, in config order.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The index of a name, if it is in the catalog.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The slot at `idx`.
    pub(crate) fn slot(&self, idx: usize) -> &Slot {
        &self.slots[idx]
    }

    /// The servable value of slot `idx`, or why there is none. An unexpired break-glass
    /// override wins over the normal value.
    pub(crate) fn read(&self, idx: usize) -> Result<Arc<Entry>, Unservable> {
        let slot = &self.slots[idx];
        if let Some(o) = slot.active_override() {
            return Ok(o);
        }
        let Some(entry) = slot.current() else {
            let health = slot.health();
            return Err(match (health.revoked, health.last_error) {
                (Some(revoked), _) => Unservable::Revoked(revoked),
                (None, Some(e)) => Unservable::NeverLoaded(e.message),
                (None, None) => Unservable::Loading,
            });
        };
        match entry.state(Instant::now(), self.max_stale) {
            EntryState::Fresh | EntryState::Stale => Ok(entry),
            EntryState::Expired | EntryState::Missing => Err(Unservable::TooStale),
        }
    }

    /// [`Catalog::read`], except that a secret whose first fetch is still running is waited
    /// for, up to `first_fetch_wait`: a daemon serves from the moment its socket is ready, and
    /// a read that arrives a moment early should not fail for it. No read waits on another
    /// secret.
    pub(crate) async fn read_or_wait(&self, idx: usize) -> Result<Arc<Entry>, Unservable> {
        match self.read(idx) {
            Err(Unservable::Loading) => {
                let deadline = Instant::now() + self.first_fetch_wait;
                self.slots[idx].trigger.first_attempt(deadline).await;
                self.read(idx)
            }
            other => other,
        }
    }

    /// Status of slot `idx`, never its value.
    pub(crate) fn status(&self, idx: usize) -> SecretStatus {
        let slot = &self.slots[idx];
        let now = Instant::now();
        let overridden = slot.active_override();
        let entry = overridden.clone().or_else(|| slot.current());
        let health = slot.health();
        SecretStatus {
            name: slot.name.to_string(),
            configured_source: slot.configured,
            cache_source: entry.as_ref().map(|e| e.source),
            state: entry
                .as_ref()
                .map_or(EntryState::Missing, |e| e.state(now, self.max_stale)),
            version: entry.as_ref().map(|e| e.version.clone()),
            fetched_at_ms: entry.as_ref().map(|e| unix_ms(e.fetched_at)),
            expires_at_ms: entry.as_ref().map(|e| unix_ms(e.expires_at)),
            age_ms: entry.as_ref().map(|e| millis(e.age(now), u64::MAX)),
            last_error_reason: health
                .last_error
                .as_ref()
                .map(|e| e.reason.as_str().to_owned()),
            last_error: health
                .last_error
                .map(|e| WireError::new(ErrorCode::Unavailable, e.message)),
            metadata_status: None,
            rotation_due_at_ms: None,
            break_glass_expires_at_ms: overridden.map(|o| unix_ms(o.expires_at)),
            fingerprint: entry.as_ref().map(|e| e.fingerprint.clone()),
            // The store's fields are merged in by the server (`merge_meta`).
            version_alias: None,
            gcp_secret: None,
            owner: None,
            last_rotated_at_ms: None,
            last_validated_at_ms: None,
            active_version: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::secret_bytes::SecretBytes;
    use crate::catalog::source::FailureReason;
    use crate::catalog::source::{Fetched, SourceError};
    use crate::config::Config;
    use secretd_proto::{ChangeEvent, Response, SourceKind};
    use std::time::SystemTime;

    fn cache(ttl: &str, max_stale: &str) -> Catalog {
        let text = format!(
            "[daemon]\nmax_stale = \"{max_stale}\"\n[[secret]]\nname = \"k\"\nsource = \"env\"\nenv = \"K\"\nttl = \"{ttl}\"\n"
        );
        Catalog::new(&Config::parse(&text).expect("config"))
    }

    fn fetched(v: &[u8]) -> Fetched {
        Fetched {
            value: SecretBytes::copy_from(v),
            version: None,
            unverified: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_stale_expired_on_the_monotonic_clock() {
        let c = cache("5m", "1h");
        assert_eq!(c.read(0).expect_err("empty"), Unservable::Loading);
        assert_eq!(c.status(0).state, EntryState::Missing);
        c.slot(0)
            .install(fetched(b"v1"), SourceKind::Env, String::new());
        assert_eq!(c.status(0).state, EntryState::Fresh);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(c.status(0).state, EntryState::Stale);
        assert!(c.read(0).is_ok(), "stale values are still served");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(c.status(0).state, EntryState::Expired);
        assert_eq!(c.read(0).expect_err("expired"), Unservable::TooStale);
        c.slot(0)
            .install(fetched(b"v1"), SourceKind::Env, String::new());
        assert!(c.read(0).is_ok(), "a later success heals it");
    }

    #[tokio::test]
    async fn watchers_hear_each_change_of_the_served_value_once() {
        let c = cache("5m", "1h");
        let mut rx = c.subscribe();
        let s = c.slot(0);
        s.install(fetched(b"v1"), SourceKind::Env, "fp1".into());
        s.install(fetched(b"v1"), SourceKind::Env, "fp1".into());
        s.install(fetched(b"v2"), SourceKind::Env, "fp2".into());
        s.set_override(
            SecretBytes::copy_from(b"bg"),
            "fp3".into(),
            SystemTime::now() + Duration::from_secs(60),
        );
        s.install(fetched(b"v3"), SourceKind::Env, "fp4".into());
        s.clear_override();
        let mut seen = Vec::new();
        while let Ok(n) = rx.try_recv() {
            assert_eq!(n.slot, 0);
            let body = &n.frame[secretd_proto::frame::HEADER_LEN..];
            match secretd_proto::frame::decode_body::<Response<'static>>(body) {
                Ok(Response::Event(ChangeEvent::Changed(c))) => {
                    seen.push((c.version, c.source, c.fingerprint));
                }
                other => panic!("unexpected notice {other:?}"),
            }
        }
        let fp = |v: &str, s, f: &str| (v.to_string(), s, f.to_string());
        assert_eq!(
            seen,
            [
                fp("1", SourceKind::Env, "fp1"),
                fp("2", SourceKind::Env, "fp2"),
                fp(slot::BREAK_GLASS_VERSION, SourceKind::BreakGlass, "fp3"),
                fp("3", SourceKind::Env, "fp4"),
            ],
            "a same-value refresh and a change hidden by an override announce nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_break_glass_override_wins_until_it_expires() {
        let c = cache("5m", "1h");
        let s = c.slot(0);
        s.install(fetched(b"normal"), SourceKind::Env, String::new());
        s.set_override(
            SecretBytes::copy_from(b"emergency"),
            "fp".into(),
            SystemTime::now() + Duration::from_secs(60),
        );
        let e = c.read(0).expect("override");
        assert_eq!(
            (e.value.expose(), e.source),
            (&b"emergency"[..], SourceKind::BreakGlass)
        );
        assert_eq!(c.status(0).cache_source, Some(SourceKind::BreakGlass));
        // Refreshes keep updating the normal value underneath.
        s.install(fetched(b"normal-2"), SourceKind::Env, String::new());
        assert_eq!(c.read(0).expect("override").value.expose(), b"emergency");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(c.read(0).expect("normal").value.expose(), b"normal-2");
        assert!(s.clear_override());
        assert!(!s.clear_override());
    }

    #[tokio::test]
    async fn local_versions_count_changes() {
        let c = cache("5m", "1h");
        let s = c.slot(0);
        assert_eq!(
            s.install(fetched(b"a"), SourceKind::Env, String::new()),
            "1"
        );
        assert_eq!(
            s.install(fetched(b"a"), SourceKind::Env, String::new()),
            "1"
        );
        assert_eq!(
            s.install(fetched(b"b"), SourceKind::Env, String::new()),
            "2"
        );
        assert_eq!(
            s.record_failure(SourceError::new(FailureReason::Timeout, "t")),
            1
        );
        assert_eq!(
            s.record_failure(SourceError::new(FailureReason::Timeout, "t")),
            2
        );
        assert!(c.status(0).last_error.is_some());
        s.install(fetched(b"b"), SourceKind::Env, String::new());
        assert_eq!(s.health().consecutive_failures, 0);
    }
}
