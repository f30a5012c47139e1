//! Connection admission: a global cap and a per-uid cap, so one local user cannot take every
//! connection the daemon has and lock the others out.

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
        }
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
}
