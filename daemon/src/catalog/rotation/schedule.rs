//! GSM's rotation schedule, the only witness a `SECRET_ROTATE` message is believed on.
//!
//! Anyone who can publish to the notification topic can send `SECRET_ROTATE`, and every
//! client watching the secret would hear "rotate now": automation would rotate keys nobody
//! asked to rotate. GSM itself advances the secret's `rotation.next_rotation_time` by its
//! period each time it sends the message, so the host reads the schedule (GetSecret, which
//! needs `secretmanager.secrets.get`) and announces the request only when the schedule moved
//! past the last value it saw. The reads are spread over `rotation_check_spread` so a fleet
//! told at once stays inside the metadata quota, and messages that arrive while a check is
//! pending coalesce into it: a flood of forged messages costs one read per secret and window.
//!
//! The host learns each schedule once at start (spread likewise). A message that arrives
//! before that first look cannot be judged and is not announced; nor is the first rotation of
//! a schedule created after the host's last look (both logged). GSM answers the period of a
//! schedule to no one (it is input only), so nothing better than "it moved" can be known.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalog::source::{FailureReason, Source};
use crate::util::lock::Recover;

/// What one look at a schedule says about the message that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// GSM's schedule moved past what this host saw: GSM sent the message. Announce it.
    Confirmed,
    /// The schedule is where this host last saw it: the message did not come from GSM's
    /// schedule (forged, or replayed). Nothing is announced.
    Unconfirmed,
    /// This host had not seen the schedule yet, so cannot judge; what GSM said is now known.
    FirstLook,
}

/// Judges a rotation message from the schedule `seen` before (`None`: never read; `Some(None)`:
/// the secret had no schedule) and the schedule `next` GSM reports now, at `now` (all in
/// nanoseconds since the Unix epoch).
pub(crate) fn judge(seen: Option<Option<i128>>, next: Option<i128>, now: i128) -> Verdict {
    match (seen, next) {
        (None, _) => Verdict::FirstLook,
        // A periodic schedule advances by its period when it fires.
        (Some(Some(before)), Some(after)) if after > before => Verdict::Confirmed,
        // A one-shot schedule is cleared when it fires, which it does only once it is due.
        (Some(Some(before)), None) if before <= now => Verdict::Confirmed,
        _ => Verdict::Unconfirmed,
    }
}

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Per catalog slot: the schedule last seen and whether a look is pending.
#[derive(Debug)]
pub(crate) struct Schedules {
    /// Per slot: the last `next_rotation_time` GSM reported (`None` until the first look).
    seen: Vec<Mutex<Option<Option<i128>>>>,
    /// Per slot: a look is scheduled; messages arriving meanwhile coalesce into it.
    pending: Vec<AtomicBool>,
    /// The longest random wait before a look (`rotation_check_spread`).
    pub(crate) spread: Duration,
    /// Whether a refused read (no `secretmanager.secrets.get`) was logged already.
    refusal_logged: AtomicBool,
}

/// What became of one look at a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// The schedule was read and the message judged.
    Judged(Verdict),
    /// GSM did not answer the read (the reason's category); nothing is announced.
    Failed(FailureReason),
    /// The source has no schedule to read (not GSM).
    NoSchedule,
}

impl Schedules {
    /// No schedule seen yet, for `slots` slots.
    pub(crate) fn new(slots: usize, spread: Duration) -> Schedules {
        Schedules {
            seen: (0..slots).map(|_| Mutex::new(None)).collect(),
            pending: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            spread,
            refusal_logged: AtomicBool::new(false),
        }
    }

    /// Claims the pending look of slot `idx`: false if one is scheduled already (coalesce).
    pub(crate) fn claim(&self, idx: usize) -> bool {
        !self.pending[idx].swap(true, Ordering::SeqCst)
    }

    /// A random wait within the spread, before a look.
    pub(crate) fn delay(&self) -> Duration {
        self.spread.mul_f64(fastrand::f64())
    }

    /// Reads slot `idx`'s schedule from `source` and judges the message against what was seen
    /// before; the pending claim is released first, so a message arriving during the read
    /// schedules a look of its own.
    pub(crate) async fn look(&self, idx: usize, name: &str, source: &dyn Source) -> Look {
        self.pending[idx].store(false, Ordering::SeqCst);
        let Some(read) = source.rotation_schedule() else {
            return Look::NoSchedule;
        };
        let next = match read.await {
            Ok(next) => next,
            Err(e) => {
                self.log_failure(name, e.reason, &e.message);
                return Look::Failed(e.reason);
            }
        };
        let mut seen = self.seen[idx].lock().recover();
        let verdict = judge(*seen, next, now_nanos());
        *seen = Some(next);
        Look::Judged(verdict)
    }

    /// A failed read is logged; a refusal (the permission is missing) once per daemon.
    fn log_failure(&self, name: &str, reason: FailureReason, message: &str) {
        let refused = matches!(
            reason,
            FailureReason::PermissionDenied | FailureReason::Unauthenticated
        );
        if refused && self.refusal_logged.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            event = "secret.rotation_schedule",
            secret = %name,
            reason = reason.as_str(),
            error = %message,
            "cannot read the secret's rotation schedule from GSM (GetSecret needs \
             secretmanager.secrets.get); rotation requests are announced only once it is read"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_moved_schedule_confirms() {
        let now = 1_000;
        assert_eq!(judge(None, Some(2_000), now), Verdict::FirstLook);
        assert_eq!(judge(None, None, now), Verdict::FirstLook);
        assert_eq!(judge(Some(Some(900)), Some(2_000), now), Verdict::Confirmed);
        assert_eq!(
            judge(Some(Some(2_000)), Some(2_000), now),
            Verdict::Unconfirmed
        );
        // An operator moving the schedule back is not a rotation.
        assert_eq!(
            judge(Some(Some(2_000)), Some(1_500), now),
            Verdict::Unconfirmed
        );
        // A one-shot schedule fired (due, then cleared); one not yet due cannot have.
        assert_eq!(judge(Some(Some(900)), None, now), Verdict::Confirmed);
        assert_eq!(judge(Some(Some(2_000)), None, now), Verdict::Unconfirmed);
        // No schedule before: a new one is learned, not announced.
        assert_eq!(judge(Some(None), Some(2_000), now), Verdict::Unconfirmed);
        assert_eq!(judge(Some(None), None, now), Verdict::Unconfirmed);
    }
}
