//! Admission: every seat a client can hold. Connections have a global cap, a per-uid cap (a
//! quarter by default) and a reserve only admins may use, so no one or two local users can
//! take every connection and lock the others out, and the operator always gets in; threads of
//! their own for busy connections (`super::thread`) have a global and a per-uid cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::util::lock::Recover;

/// Connection limits and the counts that enforce them.
#[derive(Debug)]
pub(super) struct Admission {
    /// All connections.
    total: Arc<Semaphore>,
    /// Open connections per uid, and of non-admins in all.
    counts: Arc<Mutex<Counts>>,
    /// The most one uid may hold.
    max_per_uid: usize,
    /// The most non-admin uids may hold together: the total less the admins' reserve.
    max_non_admin: usize,
    /// Threads for busy connections, in all and per uid.
    threads: Arc<Seats>,
}

/// The caps [`Admission`] enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections in all (`max_connections`).
    pub total: usize,
    /// Connections of one uid.
    pub per_uid: usize,
    /// Connections only admins may use.
    pub admin_reserved: usize,
}

/// Who holds connections.
#[derive(Debug, Default)]
struct Counts {
    /// Open connections per uid; entries are removed at zero.
    per_uid: HashMap<u32, usize>,
    /// Open connections of uids that are not admins.
    non_admin: usize,
}

/// Threads for busy connections at once, daemon-wide (beyond the runtime's workers).
pub(super) const MAX_DEDICATED: usize = 32;
/// Threads one uid may hold at once: a quarter, so two busy uids leave half to the rest.
pub(super) const MAX_DEDICATED_PER_UID: usize = MAX_DEDICATED / 4;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Refusal {
    /// The daemon as a whole is full (for a non-admin: all but the admins' reserve).
    Total,
    /// This uid holds its share.
    PerUid,
}

impl Refusal {
    /// The metric label and log field.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerUid => "per_uid",
        }
    }

    /// What the refused client is told (a `Busy` error).
    pub(super) fn reply(self) -> &'static str {
        match self {
            Refusal::Total => "secretd is at its connection limit; retry shortly",
            Refusal::PerUid => {
                "this uid holds as many connections as secretd allows one uid; close some or retry"
            }
        }
    }

    /// The log line.
    pub(super) fn message(self) -> &'static str {
        match self {
            Refusal::Total => "connection limit reached; connections refused",
            Refusal::PerUid => "per-uid connection limit reached; connections refused",
        }
    }
}

/// A held connection slot; frees its counts when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    /// The global permit.
    _permit: OwnedSemaphorePermit,
    /// The counts to decrement.
    counts: Arc<Mutex<Counts>>,
    /// Whose slot this is.
    uid: u32,
    /// Whether it counts among the non-admins'.
    admin: bool,
}

impl Admission {
    pub(super) fn new(limits: Limits) -> Admission {
        Admission {
            total: Arc::new(Semaphore::new(limits.total)),
            counts: Arc::default(),
            max_per_uid: limits.per_uid,
            max_non_admin: limits.total.saturating_sub(limits.admin_reserved),
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

    /// Takes a slot for `uid` (an admin when `admin`), or says which limit is reached.
    pub(super) fn admit(&self, uid: u32, admin: bool) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock().recover();
        if counts
            .per_uid
            .get(&uid)
            .is_some_and(|n| *n >= self.max_per_uid)
        {
            return Err(Refusal::PerUid);
        }
        if !admin && counts.non_admin >= self.max_non_admin {
            return Err(Refusal::Total);
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        *counts.per_uid.entry(uid).or_insert(0) += 1;
        if !admin {
            counts.non_admin += 1;
        }
        Ok(Slot {
            _permit: permit,
            counts: self.counts.clone(),
            uid,
            admin,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().recover();
        if let Some(n) = counts.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_uid.remove(&self.uid);
            }
        }
        if !self.admin {
            counts.non_admin = counts.non_admin.saturating_sub(1);
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

    fn limits(total: usize, per_uid: usize, admin_reserved: usize) -> Limits {
        Limits {
            total,
            per_uid,
            admin_reserved,
        }
    }

    #[test]
    fn per_uid_and_total_caps() {
        let a = Admission::new(limits(3, 2, 0));
        let s1 = a.admit(1, false).expect("first");
        let _s2 = a.admit(1, false).expect("second");
        assert_eq!(
            a.admit(1, false).expect_err("third of uid 1"),
            Refusal::PerUid
        );
        let _s3 = a.admit(2, false).expect("uid 2");
        assert_eq!(a.admit(3, false).expect_err("full"), Refusal::Total);
        drop(s1);
        let _again = a.admit(1, false).expect("a freed slot is reusable");
        let counts = a.counts.lock().expect("lock");
        assert_eq!(counts.per_uid.get(&1), Some(&2));
        assert_eq!(counts.per_uid.get(&3), None, "refusals leave no entry");
        assert_eq!(counts.non_admin, 3);
    }

    #[test]
    fn the_reserve_is_for_admins_only() {
        let a = Admission::new(limits(4, 4, 2));
        let users: Vec<_> = (0..2)
            .map(|uid| a.admit(uid, false).expect("within the shared seats"))
            .collect();
        assert_eq!(
            a.admit(7, false).expect_err("shared seats full"),
            Refusal::Total
        );
        let admin: Vec<_> = (0..2)
            .map(|_| a.admit(0, true).expect("the reserve"))
            .collect();
        assert_eq!(a.admit(0, true).expect_err("all full"), Refusal::Total);
        drop(admin);
        assert_eq!(
            a.admit(7, false)
                .expect_err("a freed reserve seat stays the admins'"),
            Refusal::Total
        );
        drop(users);
        let _back = a
            .admit(7, false)
            .expect("a user's seat given back is free again");
        assert_eq!(a.counts.lock().expect("lock").non_admin, 1);
    }

    #[test]
    fn no_uid_takes_more_than_its_share_of_threads() {
        let a = Admission::new(limits(64, 64, 0));
        let mine: Vec<_> = (0..MAX_DEDICATED_PER_UID)
            .map(|_| a.dedicated_seat(1).expect("uid 1 within its share"))
            .collect();
        assert!(a.dedicated_seat(1).is_none(), "uid 1 holds its share");
        // Every other uid gets its share too, until all are taken.
        let others: Vec<_> = (2..)
            .take(MAX_DEDICATED / MAX_DEDICATED_PER_UID - 1)
            .flat_map(|uid| {
                (0..MAX_DEDICATED_PER_UID)
                    .map(|_| {
                        a.dedicated_seat(uid)
                            .expect("another uid gets its own share")
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(a.dedicated_seat(99).is_none(), "every place taken");
        drop(mine);
        let last = a
            .dedicated_seat(99)
            .expect("a place given back is free again");
        drop((others, last));
        assert!(a.threads.held.lock().expect("lock").is_empty());
    }
}
