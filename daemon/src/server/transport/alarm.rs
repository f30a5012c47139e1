//! A connection's one timer for its deadlines (the idle timeout, the audit flush, the rest of a
//! frame). It is armed for the earliest deadline asked for and re-armed only when it fires
//! before the deadline now asked for, or when a nearer one comes: a request then costs a clock
//! read, not a timer registration, which takes a lock the runtime's workers share.

use std::pin::Pin;
use std::time::Instant;

use tokio::time::Sleep;

/// Fires at the deadline asked for.
#[derive(Debug)]
pub(super) struct Alarm {
    /// The timer, armed for `armed`.
    sleep: Pin<Box<Sleep>>,
    /// When the timer is set to fire.
    armed: Instant,
}

impl Alarm {
    /// An alarm not yet set (armed for a distant moment).
    pub(super) fn new() -> Alarm {
        let armed = far_future();
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(armed.into())),
            armed,
        }
    }

    /// Resolves once `until` has passed. Cancel-safe.
    pub(super) async fn at(&mut self, until: Instant) {
        if until < self.armed {
            self.rearm(until);
        }
        loop {
            self.sleep.as_mut().await;
            // The runtime's clock, which tests may pause (the same as `Instant::now` otherwise).
            if tokio::time::Instant::now() >= until.into() {
                return;
            }
            // Fired for an earlier deadline than the one asked for now.
            self.rearm(until);
        }
    }

    fn rearm(&mut self, until: Instant) {
        self.armed = until;
        self.sleep.as_mut().reset(until.into());
    }
}

/// A moment no connection lives to see (a day from now: tokio's timer wheel reaches years).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(24 * 3600)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `at(until)` resolves without time moving.
    async fn fired(alarm: &mut Alarm, until: Instant) -> bool {
        tokio::select! {
            biased;
            () = alarm.at(until) => true,
            () = tokio::task::yield_now() => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_asked_for_and_no_earlier() {
        let mut alarm = Alarm::new();
        let start = tokio::time::Instant::now().into_std();
        let first = start + Duration::from_secs(600);
        assert!(!fired(&mut alarm, first).await);
        tokio::time::advance(Duration::from_secs(599)).await;
        // The deadline moved later (the connection was active): not fired at the old one.
        let later = start + Duration::from_secs(1_198);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!fired(&mut alarm, later).await);
        tokio::time::advance(Duration::from_secs(598)).await;
        assert!(fired(&mut alarm, later).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_nearer_deadline_rearms_it() {
        let mut alarm = Alarm::new();
        let start = tokio::time::Instant::now();
        alarm.at(start.into_std() + Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
