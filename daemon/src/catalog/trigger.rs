//! How a slot's refresher is woken early and how an admin's on-demand refresh waits for its
//! fetch. Kept beside the refresher (`refresh`) and below the slot that owns it.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How a slot's refresher is woken early, and how an on-demand refresh waits for a fetch that
/// started after it asked (not for one already in flight, which may predate the change the
/// operator wants picked up).
#[derive(Debug)]
pub(crate) struct RefreshTrigger {
    /// Wakes the refresher for an immediate fetch.
    pub(super) now: Notify,
    /// Fetch attempts started so far.
    attempts_started: AtomicU64,
    /// The number of the last finished attempt.
    attempts_done: watch::Sender<u64>,
    /// The newest version number a notification announced (`SECRET_VERSION_ADD`'s
    /// `versionId`) that the next fetch has not looked at yet; 0 for none. GSM reads by
    /// number are strongly consistent where `latest` lags.
    announced: AtomicU64,
    /// Where a notification said the configured alias points now (`SECRET_UPDATE`'s
    /// `versionAliases`), while the alias read has not agreed yet; 0 for none. A hint to
    /// re-read, never a value to serve: only the alias read itself is believed.
    alias_target: AtomicU64,
}

impl Default for RefreshTrigger {
    fn default() -> Self {
        RefreshTrigger {
            now: Notify::new(),
            attempts_started: AtomicU64::new(0),
            attempts_done: watch::Sender::new(0),
            announced: AtomicU64::new(0),
            alias_target: AtomicU64::new(0),
        }
    }
}

impl RefreshTrigger {
    /// Marks the start of a fetch attempt and returns its number.
    pub(super) fn begin_attempt(&self) -> u64 {
        self.attempts_started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Marks attempt `n` finished (after its outcome was installed or recorded).
    pub(super) fn end_attempt(&self, n: u64) {
        self.attempts_done.send_replace(n);
    }

    /// Waits until the first fetch attempt has finished or `deadline` passes; true if it
    /// finished.
    pub(crate) async fn first_attempt(&self, deadline: Instant) -> bool {
        let mut done = self.attempts_done.subscribe();
        tokio::time::timeout_at(deadline, done.wait_for(|n| *n >= 1))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Notes that a notification announced version `n` (the newest announced is kept).
    pub(crate) fn announce_version(&self, n: u64) {
        self.announced.fetch_max(n, Ordering::SeqCst);
    }

    /// The newest version announced since the last call, if any.
    pub(super) fn take_announced(&self) -> Option<u64> {
        Some(self.announced.swap(0, Ordering::SeqCst)).filter(|n| *n > 0)
    }

    /// Notes that a notification says the alias points at version `n` now.
    pub(crate) fn expect_alias(&self, n: u64) {
        self.alias_target.store(n, Ordering::SeqCst);
    }

    /// The version the alias should point at, if a notification said so and the alias read
    /// has not agreed yet.
    pub(super) fn alias_target(&self) -> Option<u64> {
        Some(self.alias_target.load(Ordering::SeqCst)).filter(|n| *n > 0)
    }

    /// Stops waiting for the alias to agree (it did, or the poll took over).
    pub(super) fn alias_settled(&self) {
        self.alias_target.store(0, Ordering::SeqCst);
    }

    /// Asks the refresher for a fetch now. The ticket resolves when a fetch that started
    /// after this call has finished.
    pub(crate) fn request(&self) -> RefreshTicket {
        let ticket = RefreshTicket {
            target: self.attempts_started.load(Ordering::SeqCst) + 1,
            done: self.attempts_done.subscribe(),
        };
        self.now.notify_one();
        ticket
    }
}

/// A pending on-demand refresh of one slot.
#[derive(Debug)]
pub(crate) struct RefreshTicket {
    /// The first attempt number that started after the request.
    target: u64,
    /// Finished attempt numbers.
    done: watch::Receiver<u64>,
}

impl RefreshTicket {
    /// Waits until the requested fetch finished; false if `deadline` passed first.
    pub(crate) async fn wait(mut self, deadline: Instant) -> bool {
        let target = self.target;
        tokio::time::timeout_at(deadline, self.done.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
