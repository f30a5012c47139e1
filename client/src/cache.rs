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

/// Forks this process went through, counted in the child by a `pthread_atfork` handler. The
/// cache's pages are wiped in a forked child (`MADV_WIPEONFORK`) and its watch thread does not
/// exist there, so a cache made before a fork must never serve after it.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

/// Values and the state that decides whether they may be served.
pub(crate) struct ClientCache {
    /// Name → value.
    entries: RwLock<HashMap<String, Cached>>,
    /// Bumped (under the write lock) by every invalidation.
    generation: AtomicU64,
    /// Whether the watch is subscribed; nothing is cached or served while it is not.
    live: AtomicBool,
    /// [`FORKS`] when the cache was made: a different count means this is a forked child.
    born: u64,
}

impl Default for ClientCache {
    fn default() -> ClientCache {
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        // SAFETY: the handler only touches an atomic, which is async-signal-safe.
        AT_FORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(count_fork_in_child));
        });
        ClientCache {
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            born: FORKS.load(Ordering::SeqCst),
        }
    }
}

/// Proof that no invalidation happened since [`ClientCache::ticket`].
pub(crate) struct Ticket(u64);

impl ClientCache {
    /// A cache for a watch that has just subscribed.
    pub(crate) fn live() -> Arc<ClientCache> {
        let cache = ClientCache::default();
        cache.live.store(true, Ordering::SeqCst);
        Arc::new(cache)
    }

    /// Applies one item of the watch that keeps this cache honest: a change empties its name,
    /// `Lagged` (resubscribed) empties everything, and a break stops all serving until then.
    pub(crate) fn apply(&self, item: &crate::Result<ChangeEvent>) {
        match item {
            Ok(ChangeEvent::Changed(c)) => self.invalidate(Some(&c.name)),
            // Nothing served changed.
            Ok(ChangeEvent::RotationRequested(_)) => {}
            Ok(ChangeEvent::Lagged) => {
                self.invalidate(None);
                self.live.store(true, Ordering::SeqCst);
            }
            Err(_) => {
                self.live.store(false, Ordering::SeqCst);
                self.invalidate(None);
            }
        }
    }

    /// Applies an item that *another* watch of the same client is about to hand its caller: a
    /// change empties that name, anything else empties everything. So a `get` right after an
    /// event reads the new value, whichever of the two watches heard it first.
    pub(crate) fn observe(&self, item: &crate::Result<ChangeEvent>) {
        match item {
            Ok(ChangeEvent::Changed(c)) => self.invalidate(Some(&c.name)),
            Ok(ChangeEvent::RotationRequested(_)) => {}
            Ok(ChangeEvent::Lagged) | Err(_) => self.invalidate(None),
        }
    }

    /// A copy of the cached value of `name`, if it may be served.
    pub(crate) fn get(&self, name: &str) -> Option<Secret> {
        if !self.live.load(Ordering::Acquire) || FORKS.load(Ordering::Relaxed) != self.born {
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
        let serving = self.live.load(Ordering::SeqCst) && FORKS.load(Ordering::SeqCst) == self.born;
        serving.then_some(ticket)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cached_with(value: &[u8]) -> ClientCache {
        let cache = ClientCache::default();
        cache.live.store(true, Ordering::SeqCst);
        let ticket = cache.ticket().expect("live");
        let secret = Secret::from_parts(
            value,
            "1".into(),
            SourceKind::File,
            SystemTime::now(),
            SystemTime::now() + Duration::from_secs(300),
        );
        cache.insert(ticket, "k", &secret);
        cache
    }

    #[test]
    fn a_change_during_a_fetch_keeps_the_fetched_value_out() {
        let cache = cached_with(b"v1");
        assert_eq!(cache.get("k").expect("hit").expose(), b"v1");
        let ticket = cache.ticket().expect("live");
        cache.invalidate(Some("k"));
        let fetched_before_the_change = cached_with(b"old").get("k").expect("hit");
        cache.insert(ticket, "k", &fetched_before_the_change);
        assert!(cache.get("k").is_none(), "a stale fetch was cached");
        cache.live.store(false, Ordering::SeqCst);
        assert!(
            cache.ticket().is_none(),
            "nothing is cached while the watch is down"
        );
    }

    #[test]
    fn a_forked_child_never_serves_from_the_parents_cache() {
        let cache = cached_with(b"parent-value");
        // SAFETY: the child only reads atomics and a map (no allocation on the miss path),
        // then leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let code = if cache.get("k").is_none() && cache.ticket().is_none() {
                    0
                } else {
                    1
                };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            -1 => panic!("fork failed"),
            child => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
                assert!(cache.get("k").is_some(), "the parent still serves");
            }
        }
    }
}
