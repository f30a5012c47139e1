//! The in-memory catalog: one slot per configured secret, each holding the current value.
//!
//! Readers take a short read lock to clone an `Arc` of the current entry and never wait on a
//! source; the refresher builds a whole new entry and swaps it in. Staleness is judged on the
//! monotonic clock (tokio's, so tests can pause time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use secretd_proto::frame::encode_frame;
use secretd_proto::{
    ChangeEvent, EntryState, ErrorCode, Response, SecretChange, SecretStatus, SourceKind, WireError,
};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::secret_bytes::SecretBytes;
use crate::source::{Fetched, SourceError};
use crate::time::unix_ms;

/// One cached value. Immutable: a refresh replaces the whole entry.
#[derive(Debug)]
pub struct Entry {
    /// The value.
    pub value: SecretBytes,
    /// The source's version (GSM's number, or a counter of changes for local sources).
    pub version: String,
    /// Where the value came from.
    pub source: SourceKind,
    /// When it was fetched (reported to clients).
    pub fetched_at: SystemTime,
    /// When it is due for refresh (reported to clients).
    pub expires_at: SystemTime,
    /// Keyed HMAC-SHA256 of the value (hex), for status and audit.
    pub fingerprint: String,
    /// When it was fetched, on the monotonic clock.
    fetched_mono: Instant,
    /// How long it is fresh.
    ttl: Duration,
}

impl Entry {
    /// How servable the entry is at `now`.
    pub fn state(&self, now: Instant, max_stale: Duration) -> EntryState {
        let age = now.saturating_duration_since(self.fetched_mono);
        if age < self.ttl {
            EntryState::Fresh
        } else if age < self.ttl + max_stale {
            EntryState::Stale
        } else {
            EntryState::Expired
        }
    }

    /// Age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_mono)
    }
}

/// How many change notices a watcher may fall behind before it is told it lagged.
pub const WATCH_QUEUE: usize = 256;

/// A change of the value a slot serves, as broadcast to watchers.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The slot's index (watchers filter on it without comparing names).
    pub slot: usize,
    /// The `Response::Event` frame, encoded once for every watcher. Holds no value.
    pub frame: Arc<[u8]>,
}

/// What a slot last announced: a new notice goes out only when this changes.
type Served = (String, String, SourceKind);

/// The refresh history of a slot.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The most recent failure, cleared by a success.
    pub last_error: Option<SourceError>,
}

/// A catalog entry's place in the cache.
#[derive(Debug)]
pub struct Slot {
    /// The catalog name.
    pub name: Arc<str>,
    /// The configured source kind.
    pub configured: SourceKind,
    /// How long a fetched value is fresh.
    pub ttl: Duration,
    /// The current value, if one was ever loaded.
    current: RwLock<Option<Arc<Entry>>>,
    /// Refresh outcomes, for status and alerts.
    health: Mutex<Health>,
    /// Wakes this slot's refresher for an immediate refresh.
    pub refresh_now: Notify,
    /// Fetch attempts started so far; an on-demand refresh waits for one that started after
    /// it asked, not for one already in flight.
    attempts_started: AtomicU64,
    /// The number of the last finished attempt.
    attempts_done: watch::Sender<u64>,
    /// A break-glass value that outranks `current` until it expires.
    overridden: RwLock<Option<Arc<Entry>>>,
    /// Whether `overridden` may hold something: lets reads skip its lock in the usual case.
    has_override: AtomicBool,
    /// This slot's index, carried by its notices.
    index: usize,
    /// Where changes of the served value are announced (shared by all slots).
    events: broadcast::Sender<Notice>,
    /// The version, fingerprint and source last announced; the lock also keeps
    /// announcements of one slot in order.
    announced: Mutex<Option<Served>>,
}

/// Why a read cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unservable {
    /// Nothing was ever loaded.
    NeverLoaded,
    /// The value is older than its TTL plus `max_stale`.
    TooStale,
}

impl Unservable {
    /// The error a client gets.
    pub fn to_wire(self, name: &str) -> WireError {
        let why = match self {
            Unservable::NeverLoaded => "has not been loaded from its source yet",
            Unservable::TooStale => "is stale past max_stale while its source is failing",
        };
        WireError::new(ErrorCode::Unavailable, format!("secret {name:?} {why}"))
    }
}

/// A pending on-demand refresh of one slot.
#[derive(Debug)]
pub struct RefreshTicket {
    /// The first attempt number that started after the request.
    target: u64,
    /// Finished attempt numbers.
    done: watch::Receiver<u64>,
}

impl RefreshTicket {
    /// Waits until the requested fetch finished; false if `deadline` passed first.
    pub async fn wait(mut self, deadline: Instant) -> bool {
        let target = self.target;
        tokio::time::timeout_at(deadline, self.done.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// All slots, indexed by name.
#[derive(Debug)]
pub struct Cache {
    /// Slots in config order.
    slots: Box<[Slot]>,
    /// Name → index into `slots`.
    index: HashMap<Arc<str>, usize>,
    /// How long past expiry a value is still served.
    max_stale: Duration,
    /// Change notices for watchers.
    events: broadcast::Sender<Notice>,
}

impl Cache {
    /// An empty slot for every configured secret.
    pub fn new(config: &Config) -> Cache {
        let events = broadcast::Sender::new(WATCH_QUEUE);
        let slots: Box<[Slot]> = config
            .secrets
            .iter()
            .enumerate()
            .map(|(index, s)| Slot {
                name: Arc::from(s.name.as_str()),
                configured: s.source.kind(),
                ttl: s.ttl,
                current: RwLock::new(None),
                health: Mutex::new(Health::default()),
                refresh_now: Notify::new(),
                attempts_started: AtomicU64::new(0),
                attempts_done: watch::Sender::new(0),
                overridden: RwLock::new(None),
                has_override: AtomicBool::new(false),
                index,
                events: events.clone(),
                announced: Mutex::new(None),
            })
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Cache {
            slots,
            index,
            max_stale: config.daemon.max_stale,
            events,
        }
    }

    /// A receiver of every change notice from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }

    /// How many watchers are subscribed.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Every slot, in config order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The index of a name, if it is in the catalog.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The slot at `idx`.
    pub fn slot(&self, idx: usize) -> &Slot {
        &self.slots[idx]
    }

    /// How long past expiry values are still served.
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// The servable value of slot `idx`, or why there is none. An unexpired break-glass
    /// override wins over the normal value.
    pub fn read(&self, idx: usize) -> Result<Arc<Entry>, Unservable> {
        let slot = &self.slots[idx];
        if let Some(o) = slot.active_override() {
            return Ok(o);
        }
        let entry = slot.current().ok_or(Unservable::NeverLoaded)?;
        match entry.state(Instant::now(), self.max_stale) {
            EntryState::Fresh | EntryState::Stale => Ok(entry),
            EntryState::Expired | EntryState::Missing => Err(Unservable::TooStale),
        }
    }

    /// Status of slot `idx`, never its value.
    pub fn status(&self, idx: usize) -> SecretStatus {
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
            age_ms: entry
                .as_ref()
                .map(|e| u64::try_from(e.age(now).as_millis()).unwrap_or(u64::MAX)),
            last_error: health
                .last_error
                .map(|e| WireError::new(ErrorCode::Unavailable, e.message)),
            metadata_status: None,
            rotation_due_at_ms: None,
            break_glass_expires_at_ms: overridden.map(|o| unix_ms(o.expires_at)),
            fingerprint: entry.as_ref().map(|e| e.fingerprint.clone()),
        }
    }
}

impl Slot {
    /// The break-glass value, if one is active and unexpired.
    pub fn active_override(&self) -> Option<Arc<Entry>> {
        if !self.has_override.load(Ordering::Relaxed) {
            return None;
        }
        let o = self
            .overridden
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        (Instant::now() < o.fetched_mono + o.ttl).then_some(o)
    }

    /// Installs a break-glass value served until `expires_at` (wall clock), outranking the
    /// normal value; refreshes keep updating the normal value underneath.
    pub fn set_override(&self, value: SecretBytes, fingerprint: String, expires_at: SystemTime) {
        let now = SystemTime::now();
        let ttl = expires_at.duration_since(now).unwrap_or_default();
        let entry = Arc::new(Entry {
            value,
            version: "break-glass".into(),
            source: SourceKind::BreakGlass,
            fetched_at: now,
            expires_at,
            fingerprint,
            fetched_mono: Instant::now(),
            ttl,
        });
        *self.overridden.write().unwrap_or_else(|p| p.into_inner()) = Some(entry);
        self.has_override.store(true, Ordering::Relaxed);
        self.announce();
    }

    /// When the stored override (active or just expired) ends, if there is one.
    pub fn override_expiry(&self) -> Option<SystemTime> {
        self.overridden
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|o| o.expires_at)
    }

    /// Removes the break-glass value; the normal value is served again at once.
    pub fn clear_override(&self) -> bool {
        self.has_override.store(false, Ordering::Relaxed);
        let had = self
            .overridden
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        self.announce();
        had
    }

    /// Tells watchers about the value now served, if it differs from the one last announced.
    /// Called after every change to `current` or `overridden`; never blocks on watchers.
    fn announce(&self) {
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let Some(served) = self.active_override().or_else(|| self.current()) else {
            return;
        };
        let key = (
            served.version.clone(),
            served.fingerprint.clone(),
            served.source,
        );
        if announced.as_ref() == Some(&key) {
            return;
        }
        *announced = Some(key);
        let change = SecretChange {
            name: self.name.to_string(),
            version: served.version.clone(),
            source: served.source,
            fingerprint: served.fingerprint.clone(),
            at_ms: unix_ms(SystemTime::now()),
        };
        let mut frame = Vec::new();
        let event = Response::Event(ChangeEvent::Changed(change));
        if let Err(e) = encode_frame(&event, &mut frame) {
            tracing::error!(secret = %self.name, error = %e, "cannot encode a change event");
            return;
        }
        // An error only means nobody is watching.
        let _ = self.events.send(Notice {
            slot: self.index,
            frame: frame.into(),
        });
    }

    /// Marks the start of a fetch attempt and returns its number.
    pub fn begin_attempt(&self) -> u64 {
        self.attempts_started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Marks attempt `n` finished (after its outcome was installed or recorded).
    pub fn end_attempt(&self, n: u64) {
        self.attempts_done.send_replace(n);
    }

    /// Asks the refresher for a fetch now. The ticket resolves when a fetch that started
    /// after this call has finished (not one that was already in flight).
    pub fn request_refresh(&self) -> RefreshTicket {
        let ticket = RefreshTicket {
            target: self.attempts_started.load(Ordering::SeqCst) + 1,
            done: self.attempts_done.subscribe(),
        };
        self.refresh_now.notify_one();
        ticket
    }

    /// The current entry, fresh or not.
    pub fn current(&self) -> Option<Arc<Entry>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A copy of the refresh history.
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a freshly fetched value and clears the failure history. Returns the version
    /// now served.
    pub fn install(&self, fetched: Fetched, source: SourceKind, fingerprint: String) -> String {
        let previous = self.current();
        let version = match fetched.version {
            Some(v) => v,
            None => next_local_version(previous.as_deref(), &fetched.value),
        };
        let now = SystemTime::now();
        let entry = Arc::new(Entry {
            value: fetched.value,
            version: version.clone(),
            source,
            fetched_at: now,
            expires_at: now + self.ttl,
            fingerprint,
            fetched_mono: Instant::now(),
            ttl: self.ttl,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(entry);
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Health::default();
        self.announce();
        version
    }

    /// Records a failed refresh; the old value stays. Returns the consecutive failure count.
    pub fn record_failure(&self, error: SourceError) -> u32 {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FailureReason;

    fn cache(ttl: &str, max_stale: &str) -> Cache {
        let text = format!(
            "[daemon]\nmax_stale = \"{max_stale}\"\n[[secret]]\nname = \"k\"\nsource = \"env\"\nenv = \"K\"\nttl = \"{ttl}\"\n"
        );
        Cache::new(&Config::parse(&text).expect("config"))
    }

    fn fetched(v: &[u8]) -> Fetched {
        Fetched {
            value: SecretBytes::copy_from(v),
            version: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_stale_expired_on_the_monotonic_clock() {
        let c = cache("5m", "1h");
        assert_eq!(c.read(0).expect_err("empty"), Unservable::NeverLoaded);
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
                fp("break-glass", SourceKind::BreakGlass, "fp3"),
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
