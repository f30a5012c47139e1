//! Confirming a withdrawal before acting on it. A notification says a version was disabled or
//! destroyed, or the secret deleted; an access answers `NOT_FOUND` for a secret that was
//! served. Neither alone revokes: whoever can publish to the topic could black out the fleet,
//! and GSM's state converges eventually (a disabled version may still be readable for a
//! while, a deleted secret still found). So each is a doubt, checked with backoff for
//! `revocation_confirm_window`:
//!
//! - a version announced refused is asked for by number until GSM refuses it (revoked at
//!   once) or the host serves another version; if the window ends first, the doubt is
//!   reported unconfirmed (`omni.alert.revocation_unconfirmed`) and checked at the poll from
//!   then on;
//! - a deletion revokes only after [`DELETED_AFTER`] `NOT_FOUND` answers in a row, the first
//!   and last at least the window apart; any answer with a value clears it, other failures
//!   (a 403, an outage) neither count nor clear.
//!
//! The judging is here, free of I/O; the refresher makes the checks.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::lock::Recover;

/// `NOT_FOUND` answers in a row, spread over the window, that confirm a deletion.
pub(crate) const DELETED_AFTER: u32 = 3;
/// The first wait between checks of a doubt; it doubles per check, within the window.
pub(crate) const FIRST_CHECK: Duration = Duration::from_secs(1);

/// What is suspected of a slot's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Suspicion {
    /// This version (the one served) was disabled or destroyed.
    Refused(String),
    /// The secret was deleted.
    Deleted,
}

/// Why a served value was withdrawn, for clients, status, metrics and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// GSM refused the version by number: disabled or destroyed.
    Refused,
    /// GSM answered `NOT_FOUND` for the secret, repeatedly, over the window.
    Deleted,
}

impl Cause {
    /// The stable snake_case name (metrics label, audit detail).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Refused => "disabled",
            Cause::Deleted => "deleted",
        }
    }
}

/// A withdrawn version and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revoked {
    /// The version that was served.
    pub(crate) version: String,
    /// Why it was withdrawn.
    pub(crate) cause: Cause,
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// GSM served a value (the version asked for, or the secret's binding).
    Allowed,
    /// GSM refused the version: disabled or destroyed.
    Refused,
    /// GSM does not know the secret (or version).
    NotFound,
    /// The host serves another version now (or none): nothing left to confirm.
    Moved,
    /// The check failed otherwise (an outage, a 403): it says nothing.
    Unknown,
}

/// What follows a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Confirmed: withdraw the served value, for this cause.
    Revoke(Cause),
    /// Nothing to withdraw after all.
    Cleared,
    /// Check again after this long.
    CheckIn(Duration),
    /// The window just ended unconfirmed: alert once, then check at the poll.
    Unconfirmed,
    /// Still in doubt past the window: check at the poll.
    AtThePoll,
}

/// A slot's open doubt, if any.
#[derive(Debug, Default)]
pub(crate) struct Doubt(Mutex<Option<Confirming>>);

/// One doubt being checked.
#[derive(Debug)]
struct Confirming {
    /// What is suspected.
    suspicion: Suspicion,
    /// When the doubt began (the window runs from here).
    since: Instant,
    /// Checks made so far: the backoff's exponent.
    checks: u32,
    /// `NOT_FOUND` answers in a row, and when the first of them came.
    not_found: Option<(u32, Instant)>,
    /// Whether the window ended unconfirmed (reported once, and in the metrics until the
    /// doubt is settled).
    unconfirmed: bool,
}

impl Doubt {
    /// Opens a doubt, unless one about the same thing is open (its clock keeps running): a
    /// storm of messages cannot postpone a confirmation forever.
    pub(crate) fn begin(&self, suspicion: Suspicion, now: Instant) {
        let mut open = self.0.lock().recover();
        if open.as_ref().is_some_and(|c| c.suspicion == suspicion) {
            return;
        }
        *open = Some(Confirming {
            suspicion,
            since: now,
            checks: 0,
            not_found: None,
            unconfirmed: false,
        });
    }

    /// What is suspected now, if anything.
    pub(crate) fn suspicion(&self) -> Option<Suspicion> {
        self.0
            .lock()
            .recover()
            .as_ref()
            .map(|c| c.suspicion.clone())
    }

    /// Whether an announced revocation went unconfirmed through its window and is still
    /// open (`omni_secret_revocation_unconfirmed`).
    pub(crate) fn unconfirmed(&self) -> bool {
        self.0
            .lock()
            .recover()
            .as_ref()
            .is_some_and(|c| c.unconfirmed)
    }

    /// Records what a check found at `now` and says what follows.
    pub(crate) fn judge(&self, answer: Answer, window: Duration, now: Instant) -> Verdict {
        let mut open = self.0.lock().recover();
        let Some(c) = open.as_mut() else {
            return Verdict::Cleared;
        };
        let verdict = c.judge(answer, window, now);
        if matches!(verdict, Verdict::Revoke(_) | Verdict::Cleared) {
            *open = None;
        }
        verdict
    }
}

impl Confirming {
    fn judge(&mut self, answer: Answer, window: Duration, now: Instant) -> Verdict {
        match (&self.suspicion, answer) {
            (_, Answer::Moved) => return Verdict::Cleared,
            (Suspicion::Refused(_), Answer::Refused) => return Verdict::Revoke(Cause::Refused),
            (Suspicion::Deleted, Answer::Allowed) => {
                self.not_found = None;
                // Within the window a value may be GSM's lag on a real deletion; after it,
                // the secret is there.
                if now.saturating_duration_since(self.since) >= window {
                    return Verdict::Cleared;
                }
            }
            (Suspicion::Deleted, Answer::NotFound) => {
                let (count, first) = self.not_found.map_or((1, now), |(n, t)| (n + 1, t));
                self.not_found = Some((count, first));
                if count >= DELETED_AFTER && now.saturating_duration_since(first) >= window {
                    return Verdict::Revoke(Cause::Deleted);
                }
            }
            _ => {}
        }
        self.checks = self.checks.saturating_add(1);
        // The window runs from the doubt's start, and for a deletion from the first of the
        // NOT_FOUND answers in a row, whichever ends later.
        let ends = match self.not_found {
            Some((_, first)) => (first + window).max(self.since + window),
            None => self.since + window,
        };
        let left = ends.saturating_duration_since(now);
        if !left.is_zero() {
            let exp = self.checks.saturating_sub(1).min(16);
            return Verdict::CheckIn(FIRST_CHECK.saturating_mul(1 << exp).min(left));
        }
        if matches!(self.suspicion, Suspicion::Refused(_)) && !self.unconfirmed {
            self.unconfirmed = true;
            return Verdict::Unconfirmed;
        }
        Verdict::AtThePoll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_refused_version_is_revoked_at_the_first_refusal() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Refused("3".into()), t0);
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, t0),
            Verdict::CheckIn(FIRST_CHECK)
        );
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 1)),
            Verdict::CheckIn(Duration::from_secs(2))
        );
        assert_eq!(
            d.judge(Answer::Refused, WINDOW, at(t0, 3)),
            Verdict::Revoke(Cause::Refused)
        );
        assert_eq!(d.suspicion(), None);
    }

    #[test]
    fn an_unconfirmed_refusal_alerts_once_then_waits_for_the_poll() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Refused("3".into()), t0);
        // The last check inside the window lands on its end.
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 29)),
            Verdict::CheckIn(FIRST_CHECK)
        );
        assert!(!d.unconfirmed());
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 30)),
            Verdict::Unconfirmed
        );
        assert!(d.unconfirmed());
        assert_eq!(
            d.judge(Answer::Unknown, WINDOW, at(t0, 300)),
            Verdict::AtThePoll
        );
        // The host moved on (or revoked at a later poll): settled, no longer unconfirmed.
        assert_eq!(
            d.judge(Answer::Moved, WINDOW, at(t0, 600)),
            Verdict::Cleared
        );
        assert!(!d.unconfirmed());
    }

    #[test]
    fn a_deletion_needs_repeated_not_found_spread_over_the_window() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Deleted, t0);
        for s in [0, 1, 3, 7, 15] {
            assert!(
                matches!(
                    d.judge(Answer::NotFound, WINDOW, at(t0, s)),
                    Verdict::CheckIn(_)
                ),
                "{s}"
            );
        }
        // A 403 or an outage neither counts nor clears.
        assert!(matches!(
            d.judge(Answer::Unknown, WINDOW, at(t0, 20)),
            Verdict::CheckIn(_)
        ));
        assert_eq!(
            d.judge(Answer::NotFound, WINDOW, at(t0, 30)),
            Verdict::Revoke(Cause::Deleted)
        );
    }

    #[test]
    fn many_not_found_in_a_moment_do_not_revoke_and_a_value_restarts_the_count() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Deleted, t0);
        for _ in 0..10 {
            assert!(matches!(
                d.judge(Answer::NotFound, WINDOW, t0),
                Verdict::CheckIn(_)
            ));
        }
        // GSM's lag: a value within the window restarts the count, not the doubt.
        assert!(matches!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 10)),
            Verdict::CheckIn(_)
        ));
        d.judge(Answer::NotFound, WINDOW, at(t0, 20));
        d.judge(Answer::NotFound, WINDOW, at(t0, 35));
        assert!(matches!(
            d.judge(Answer::NotFound, WINDOW, at(t0, 45)),
            Verdict::CheckIn(_)
        ));
        assert_eq!(
            d.judge(Answer::NotFound, WINDOW, at(t0, 50)),
            Verdict::Revoke(Cause::Deleted)
        );
    }

    #[test]
    fn a_value_after_the_window_clears_a_deletion_doubt() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Deleted, t0);
        d.judge(Answer::Allowed, WINDOW, t0);
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 31)),
            Verdict::Cleared
        );
        assert_eq!(d.suspicion(), None);
    }

    #[test]
    fn a_repeated_message_keeps_the_doubts_clock() {
        let t0 = Instant::now();
        let d = Doubt::default();
        d.begin(Suspicion::Refused("3".into()), t0);
        d.begin(Suspicion::Refused("3".into()), at(t0, 29));
        assert_eq!(
            d.judge(Answer::Allowed, WINDOW, at(t0, 30)),
            Verdict::Unconfirmed
        );
    }
}
