//! Lock-poison recovery, in one place.
//!
//! A poisoned lock means a thread panicked while holding it. Every critical section in the
//! daemon is a single read, swap or counter update, so the protected data is never left half
//! written: the right answer is to keep going with it rather than to spread the panic to every
//! connection and refresher that touches the same lock.

use std::sync::{LockResult, PoisonError};

/// Takes the guard whether or not the lock was poisoned (see the module docs for why).
pub(crate) trait Recover<G> {
    /// The guard, poisoned or not.
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Recover;

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let shared = Arc::new(Mutex::new(7));
        let clone = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock().recover();
            panic!("poison the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        assert_eq!(*shared.lock().recover(), 7);
    }
}
