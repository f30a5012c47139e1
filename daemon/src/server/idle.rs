//! The idle timeout of a connection: one timer for the connection's life, re-armed only when it
//! fires early (the connection was active since it was set). A request then costs a clock read,
//! not a timer registration, which takes a lock the runtime's workers share.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires once the connection has been quiet for its timeout.
#[derive(Debug)]
pub(super) struct IdleTimer {
    /// How long a connection may stay quiet.
    timeout: Duration,
    /// When the connection was last active.
    last: Instant,
    /// The timer, set for `last + timeout` as it was when it was last armed.
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    /// A timer for a connection active now.
    pub(super) fn new(timeout: Duration) -> IdleTimer {
        let last = Instant::now();
        IdleTimer {
            timeout,
            last,
            sleep: Box::pin(tokio::time::sleep_until(last + timeout)),
        }
    }

    /// The connection was active now.
    pub(super) fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Resolves once the connection has been quiet for the timeout. Cancel-safe.
    pub(super) async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `expired` resolves without time moving.
    async fn fired(timer: &mut IdleTimer) -> bool {
        tokio::select! {
            biased;
            () = timer.expired() => true,
            () = tokio::task::yield_now() => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_whole_quiet_timeout() {
        let mut timer = IdleTimer::new(Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(!fired(&mut timer).await);
        timer.touch();
        // Past the first deadline, but active since: re-armed, not fired.
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(!fired(&mut timer).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(fired(&mut timer).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_expires_at_its_timeout() {
        let mut timer = IdleTimer::new(Duration::from_secs(5));
        let started = Instant::now();
        timer.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
