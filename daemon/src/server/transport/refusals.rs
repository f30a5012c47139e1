//! Refused connections, logged as a summary: one line per uid and reason per
//! [`REFUSAL_LOG_INTERVAL`] with a count, at most [`MAX_REFUSAL_LINES`] of them, so a flood of
//! connections costs the journal a few lines a minute, not one per connection.

use std::collections::HashMap;
use std::time::Duration;

use super::admission::Refusal;

/// How often refusals are summarised in the log.
pub(super) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The most uids named per summary; the rest are counted in one more line.
pub(super) const MAX_REFUSAL_LINES: usize = 16;

/// Refusals since the last summary.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// By uid and reason (bounded: see [`Refusals::note`]).
    counts: HashMap<(u32, Refusal), u64>,
    /// Refusals of uids beyond [`MAX_TRACKED`], in all.
    untracked: u64,
}

/// The most (uid, reason) pairs counted one by one between summaries.
const MAX_TRACKED: usize = 1024;

impl Refusals {
    /// Counts one refusal.
    pub(super) fn note(&mut self, uid: u32, why: Refusal) {
        let tracked = self.counts.len();
        match self.counts.get_mut(&(uid, why)) {
            Some(n) => *n += 1,
            None if tracked < MAX_TRACKED => {
                self.counts.insert((uid, why), 1);
            }
            None => self.untracked += 1,
        }
    }

    /// The summary lines since the last call, busiest uid first, and starts afresh.
    pub(super) fn take_summary(&mut self) -> Vec<SummaryLine> {
        let mut counts: Vec<((u32, Refusal), u64)> = self.counts.drain().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.0.cmp(&b.0.0)));
        let rest: u64 = counts
            .iter()
            .skip(MAX_REFUSAL_LINES)
            .map(|(_, n)| n)
            .sum::<u64>()
            + std::mem::take(&mut self.untracked);
        let others = counts.len().saturating_sub(MAX_REFUSAL_LINES);
        let mut lines: Vec<SummaryLine> = counts
            .into_iter()
            .take(MAX_REFUSAL_LINES)
            .map(|((uid, why), count)| SummaryLine::Uid { uid, why, count })
            .collect();
        if rest > 0 {
            lines.push(SummaryLine::Others {
                uids: others,
                count: rest,
            });
        }
        lines
    }
}

/// One line of a summary.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SummaryLine {
    /// `count` refusals of `uid` for `why`.
    Uid { uid: u32, why: Refusal, count: u64 },
    /// `count` refusals of `uids` more uids (or of uids past the tracking bound).
    Others { uids: usize, count: u64 },
}

impl SummaryLine {
    /// Logs the line.
    pub(super) fn log(&self, limits: super::admission::Limits) {
        match *self {
            SummaryLine::Uid { uid, why, count } => tracing::warn!(
                event = "connections.refused",
                uid,
                reason = why.label(),
                count,
                interval_seconds = REFUSAL_LOG_INTERVAL.as_secs(),
                max_connections = limits.total,
                max_per_uid = limits.per_uid,
                admin_reserved = limits.admin_reserved,
                "{}",
                why.message()
            ),
            SummaryLine::Others { uids, count } => tracing::warn!(
                event = "connections.refused",
                uids,
                count,
                interval_seconds = REFUSAL_LOG_INTERVAL.as_secs(),
                "connections of more uids refused"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_a_few_lines_with_counts() {
        let mut r = Refusals::default();
        for _ in 0..100_000 {
            r.note(1000, Refusal::PerUid);
        }
        r.note(1001, Refusal::Total);
        assert_eq!(
            r.take_summary(),
            vec![
                SummaryLine::Uid {
                    uid: 1000,
                    why: Refusal::PerUid,
                    count: 100_000
                },
                SummaryLine::Uid {
                    uid: 1001,
                    why: Refusal::Total,
                    count: 1
                },
            ]
        );
        assert!(r.take_summary().is_empty(), "each summary starts afresh");
    }

    #[test]
    fn many_uids_are_bounded_in_lines_and_memory() {
        let mut r = Refusals::default();
        for uid in 0..5000 {
            r.note(uid, Refusal::Total);
        }
        assert_eq!(r.counts.len(), MAX_TRACKED);
        let lines = r.take_summary();
        assert_eq!(lines.len(), MAX_REFUSAL_LINES + 1);
        assert_eq!(
            lines.last(),
            Some(&SummaryLine::Others {
                uids: MAX_TRACKED - MAX_REFUSAL_LINES,
                count: 5000 - MAX_REFUSAL_LINES as u64
            })
        );
    }
}
