//! Admission: every seat a client can hold. Connections have a global cap and a per-uid cap,
//! so one local user cannot take every connection the daemon has and lock the others out;
//! threads of their own for busy connections (`super::thread`) have the same two caps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::util::lock::Recover;

/// Connection limits and the counts that enforce them.
#[derive(Debug)]
pub(super) struct Admission {
    /// All connections.
    total: Arc<Semaphore>,
    /// Open connections per uid; entries are removed at zero.
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    /// The most one uid may hold.
    max_per_uid: usize,
    /// Threads for busy connections, in all and per uid.
    threads: Arc<Seats>,
}

/// Threads for busy connections at once, daemon-wide (beyond the runtime's workers).
pub(super) const MAX_DEDICATED: usize = 32;
/// Threads one uid may hold at once.
pub(super) const MAX_DEDICATED_PER_UID: usize = MAX_DEDICATED / 2;

/// Places for threads, in all and per uid.
#[derive(Debug)]
struct Seats {
    /// Places in all.
    total: usize,
    /// Places one uid may hold.
    per_uid: usize,
    /// Places held, by uid (touched only when a connection moves, never per request).
    held: Mutex<Vec<(u32, usize)>>,
}

/// One place for a busy connection's thread; given back on drop.
#[derive(Debug)]
pub(crate) struct Seat {
    /// Where it was taken from.
    seats: Arc<Seats>,
    /// Whose it is.
    uid: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The daemon as a whole is full.
    Total,
    /// This uid holds its share.
    PerUid,
}

/// A held connection slot; frees both counts when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    /// The global permit.
    _permit: OwnedSemaphorePermit,
    /// The uid's count, to decrement.
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    /// Whose slot this is.
    uid: u32,
}

impl Admission {
    pub(super) fn new(max_total: usize, max_per_uid: usize) -> Admission {
        Admission {
            total: Arc::new(Semaphore::new(max_total)),
            per_uid: Arc::default(),
            max_per_uid,
            threads: Arc::new(Seats {
                total: MAX_DEDICATED,
                per_uid: MAX_DEDICATED_PER_UID,
                held: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A place for a thread of its own for a busy connection of `uid`, if both limits allow.
    pub(super) fn dedicated_seat(&self, uid: u32) -> Option<Seat> {
        let mut held = self.threads.held.lock().recover();
        let in_use: usize = held.iter().map(|(_, n)| n).sum();
        let at = held.iter().position(|(u, _)| *u == uid);
        let mine = at.map_or(0, |i| held[i].1);
        if in_use >= self.threads.total || mine >= self.threads.per_uid {
            return None;
        }
        match at {
            Some(i) => held[i].1 += 1,
            None => held.push((uid, 1)),
        }
        Some(Seat {
            seats: self.threads.clone(),
            uid,
        })
    }

    /// Takes a slot for `uid`, or says which limit is reached.
    pub(super) fn admit(&self, uid: u32) -> Result<Slot, Refusal> {
        let mut counts = self.per_uid.lock().recover();
        if counts.get(&uid).is_some_and(|n| *n >= self.max_per_uid) {
            return Err(Refusal::PerUid);
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        *counts.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            _permit: permit,
            per_uid: self.per_uid.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_uid.lock().recover();
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut held = self.seats.held.lock().recover();
        if let Some(i) = held.iter().position(|(u, _)| *u == self.uid) {
            held[i].1 -= 1;
            if held[i].1 == 0 {
                held.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_uid_and_total_caps() {
        let a = Admission::new(3, 2);
        let s1 = a.admit(1).expect("first");
        let _s2 = a.admit(1).expect("second");
        assert_eq!(a.admit(1).expect_err("third of uid 1"), Refusal::PerUid);
        let _s3 = a.admit(2).expect("uid 2");
        assert_eq!(a.admit(3).expect_err("full"), Refusal::Total);
        drop(s1);
        let _again = a.admit(1).expect("a freed slot is reusable");
        assert_eq!(a.per_uid.lock().expect("lock").get(&1), Some(&2));
        assert_eq!(
            a.per_uid.lock().expect("lock").get(&3),
            None,
            "refusals leave no entry"
        );
    }

    #[test]
    fn no_uid_takes_more_than_its_share_of_threads() {
        let a = Admission::new(64, 64);
        let mine: Vec<_> = (0..MAX_DEDICATED_PER_UID)
            .map(|_| a.dedicated_seat(1).expect("uid 1 within its share"))
            .collect();
        assert!(a.dedicated_seat(1).is_none(), "uid 1 holds its share");
        let theirs: Vec<_> = (0..MAX_DEDICATED - MAX_DEDICATED_PER_UID)
            .map(|_| a.dedicated_seat(2).expect("uid 2 still gets its own"))
            .collect();
        assert!(a.dedicated_seat(3).is_none(), "every place taken");
        drop(mine);
        let third = a
            .dedicated_seat(3)
            .expect("a place given back is free again");
        drop((theirs, third));
        assert!(a.threads.held.lock().expect("lock").is_empty());
    }
}
