//! Permits for work done on behalf of local users: a few at once in all, and at most a share
//! of them per uid, so one uid's backlog waits behind itself and never in front of another's.
//!
//! A uid first waits for one of its own permits, then for one of the shared ones. While the
//! per-uid share is below the total, no one uid (and no three, with a quarter each) can hold
//! every shared permit, so another uid's work starts as soon as one of its own is free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::lock::Recover;

/// How many uids' permit counts are kept before idle ones are dropped.
const MAX_TRACKED_UIDS: usize = 256;

/// Permits in all and per uid.
#[derive(Debug)]
pub(crate) struct Shares {
    /// The permits in all.
    total: Arc<Semaphore>,
    /// How many one uid may hold.
    per_uid: usize,
    /// Each uid's own permits (dropped when idle and the map is large).
    uids: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

/// Held while the work runs; both permits go back on drop.
#[derive(Debug)]
pub(crate) struct Share {
    /// The uid's own permit, taken first.
    _own: OwnedSemaphorePermit,
    /// The shared permit.
    _shared: OwnedSemaphorePermit,
}

impl Shares {
    /// `total` permits, at most `per_uid` (at least 1) of them for one uid.
    pub(crate) fn new(total: usize, per_uid: usize) -> Shares {
        Shares {
            total: Arc::new(Semaphore::new(total)),
            per_uid: per_uid.max(1),
            uids: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a permit for work of `uid`; `None` only if the permits were closed.
    pub(crate) async fn acquire(&self, uid: u32) -> Option<Share> {
        let own = self.own(uid).acquire_owned().await.ok()?;
        let shared = self.total.clone().acquire_owned().await.ok()?;
        Some(Share {
            _own: own,
            _shared: shared,
        })
    }

    /// `uid`'s own permits, made on first use.
    fn own(&self, uid: u32) -> Arc<Semaphore> {
        let mut uids = self.uids.lock().recover();
        if uids.len() >= MAX_TRACKED_UIDS && !uids.contains_key(&uid) {
            // Only uids with work in flight or waiting need their count kept.
            uids.retain(|_, own| {
                Arc::strong_count(own) > 1 || own.available_permits() < self.per_uid
            });
        }
        uids.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_uid)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_uid_backlog_leaves_room_for_another() {
        let shares = Shares::new(4, 1);
        let busy = shares.acquire(7).await.expect("first of uid 7");
        // uid 7's next waits behind its own share, not in front of uid 8.
        let mut queued = Box::pin(shares.acquire(7));
        assert!(futures::poll!(&mut queued).is_pending());
        let other = shares.acquire(8).await.expect("uid 8 is not behind uid 7");
        drop(busy);
        let again = queued.await.expect("uid 7's next, once its first is done");
        drop((other, again));
    }

    #[tokio::test]
    async fn the_total_bounds_every_uid_together() {
        let shares = Shares::new(2, 2);
        let a = shares.acquire(1).await.expect("1");
        let b = shares.acquire(2).await.expect("2");
        let mut third = Box::pin(shares.acquire(3));
        assert!(futures::poll!(&mut third).is_pending());
        drop(a);
        drop((third.await.expect("3 after one is back"), b));
    }

    #[tokio::test]
    async fn idle_uids_are_forgotten_when_many() {
        let shares = Shares::new(4, 1);
        for uid in 0..(MAX_TRACKED_UIDS as u32 + 10) {
            drop(shares.acquire(uid).await.expect("permit"));
        }
        assert!(shares.uids.lock().recover().len() <= MAX_TRACKED_UIDS);
    }
}
