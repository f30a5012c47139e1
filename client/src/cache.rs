//! The opt-in client-side cache ([`crate::Client::with_cache`]): values a client has read, kept in
//! its own locked, no-dump memory and served without a round trip while a watch on the same
//! daemon says nothing changed.
//!
//! Correctness rests on three rules. Every change event, `Lagged` and disconnect empties the
//! affected entries before anything else can be read. A value fetched from the daemon is cached
//! only if no invalidation happened while it was in flight (the generation check), so a fetch
//! that raced with a rotation cannot put the old value back. And an entry is never served past
//! the expiry the daemon gave it, so a refresh the daemon does not announce (same value) still
//! reaches the client once per TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use secretd_proto::{ChangeEvent, LockedBuf, SourceKind};

use crate::secret::Secret;
use crate::watch::{Watch, WatchHandle};

/// One cached value.
struct Cached {
    /// The value, in locked memory.
    value: LockedBuf,
    /// Its version.
    version: String,
    /// Where the daemon got it.
    source: SourceKind,
    /// When the daemon fetched it.
    fetched_at: SystemTime,
    /// When the daemon will refresh it; the entry is not served after this.
    expires_at: SystemTime,
}

/// Values and the state that decides whether they may be served.
#[derive(Default)]
pub(crate) struct ClientCache {
    /// Name → value.
    entries: RwLock<HashMap<String, Cached>>,
    /// Bumped (under the write lock) by every invalidation.
    generation: AtomicU64,
    /// Whether the watch is subscribed; nothing is cached or served while it is not.
    live: AtomicBool,
}

/// A cache and the watch that keeps it honest; dropping it stops the watch.
pub(crate) struct CachedReads {
    /// The values.
    pub(crate) cache: Arc<ClientCache>,
    /// Delivers invalidations to `cache`.
    _watch: WatchHandle,
}

impl CachedReads {
    /// Starts invalidating from `watch` (already subscribed).
    pub(crate) fn start(watch: Watch) -> crate::Result<CachedReads> {
        let cache = Arc::new(ClientCache::default());
        cache.live.store(true, Ordering::SeqCst);
        let target = cache.clone();
        let handle = watch.spawn(move |item| match item {
            Ok(ChangeEvent::Changed(c)) => target.invalidate(Some(&c.name)),
            Ok(ChangeEvent::Lagged) => {
                target.invalidate(None);
                target.live.store(true, Ordering::SeqCst);
            }
            Err(_) => {
                target.live.store(false, Ordering::SeqCst);
                target.invalidate(None);
            }
        })?;
        Ok(CachedReads {
            cache,
            _watch: handle,
        })
    }
}

/// Proof that no invalidation happened since [`ClientCache::ticket`].
pub(crate) struct Ticket(u64);

impl ClientCache {
    /// A copy of the cached value of `name`, if it may be served.
    pub(crate) fn get(&self, name: &str) -> Option<Secret> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let c = entries.get(name)?;
        (SystemTime::now() < c.expires_at).then(|| {
            Secret::from_parts(
                c.value.as_slice(),
                c.version.clone(),
                c.source,
                c.fetched_at,
                c.expires_at,
            )
        })
    }

    /// Taken before fetching from the daemon; see [`ClientCache::insert`].
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        let ticket = Ticket(self.generation.load(Ordering::SeqCst));
        self.live.load(Ordering::SeqCst).then_some(ticket)
    }

    /// Caches a value fetched after `ticket` was taken, unless something was invalidated since.
    pub(crate) fn insert(&self, ticket: Ticket, name: &str, secret: &Secret) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != ticket.0 || !self.live.load(Ordering::SeqCst) {
            return;
        }
        entries.insert(
            name.to_owned(),
            Cached {
                value: LockedBuf::copy_from(secret.expose()),
                version: secret.version().to_owned(),
                source: secret.source(),
                fetched_at: secret.fetched_at(),
                expires_at: secret.expires_at(),
            },
        );
    }

    /// Drops the entry of `name`, or every entry.
    fn invalidate(&self, name: Option<&str>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        match name {
            Some(n) => {
                entries.remove(n);
            }
            None => entries.clear(),
        }
    }

    /// How many values are cached (tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
