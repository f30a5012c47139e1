//! Refusals, audited without letting a hostile local user fill the disk or the log.
//!
//! Every refused request (a read or watch denied by policy, a name outside the caller's
//! patterns, an admin request from a non-admin) passes through one daemon-wide ledger:
//!
//! - the first refusal per uid, name and action in a minute is recorded at once; the rest are
//!   counted, and each key's count is written as one aggregated record when the minute ends
//!   (refusals of catalog secrets are counted by their connection instead, and written when it
//!   flushes);
//! - the ledger holds at most [`MAX_DENIAL_KEYS`] keys: past that, a uid's new names share one
//!   key (`*`);
//! - a uid refused more than `max_denials_per_minute_per_uid` times in a minute has the
//!   connection closed, and its further refusals that minute are only counted (one record
//!   when the minute ends);
//! - at most [`MAX_DENIAL_LOGS`] refusals a minute are logged; the minute's summary says how
//!   many were not.
//!
//! Legitimate reads never pass through here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use secretd_proto::ErrorCode;
use tokio::time::Instant;

use crate::audit::{Action, Actor, ActorType, AuditEvent, AuditLog, Outcome};
use crate::server::identity::Peer;
use crate::util::lock::Recover;

/// The ledger's window.
pub(crate) const DENIAL_WINDOW: Duration = Duration::from_secs(60);
/// The most distinct (uid, action, name) keys the ledger holds in one window.
pub(crate) const MAX_DENIAL_KEYS: usize = 4096;
/// The most refusals logged in one window.
pub(crate) const MAX_DENIAL_LOGS: u32 = 20;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Record it now (the first of its key this minute).
    pub(crate) record: bool,
    /// Log it (within this minute's log budget).
    pub(crate) log: bool,
    /// The uid is past its limit: answer, then close the connection.
    pub(crate) close: bool,
}

/// A (uid, action, name) key.
type Key = (u32, Action, Box<str>);

/// One key's refusals this window.
#[derive(Debug, Clone)]
struct Count {
    /// Refusals beyond the first, to aggregate when the window ends (0 when a connection
    /// counts them).
    pending: u64,
    /// Who, for the aggregated record.
    actor: Actor,
}

/// The window's state.
#[derive(Debug)]
struct Ledger {
    /// When the window began.
    started: Instant,
    /// Refusals per uid this window.
    per_uid: HashMap<u32, u64>,
    /// Keys seen this window.
    keys: HashMap<Key, Count>,
    /// Refusals past a uid's limit, only counted, per uid.
    over_limit: HashMap<u32, (u64, Actor)>,
    /// Refusals logged this window.
    logged: u32,
    /// Refusals not logged this window (over the log budget).
    unlogged: u64,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            started: Instant::now(),
            per_uid: HashMap::new(),
            keys: HashMap::new(),
            over_limit: HashMap::new(),
            logged: 0,
            unlogged: 0,
        }
    }
}

/// The daemon-wide ledger of refusals.
#[derive(Debug)]
pub(crate) struct Denials {
    /// This window's counts.
    ledger: Mutex<Ledger>,
    /// `max_denials_per_minute_per_uid`.
    max_per_uid: u64,
}

impl Denials {
    pub(crate) fn new(max_per_uid: u64) -> Denials {
        Denials {
            ledger: Mutex::new(Ledger::new()),
            max_per_uid,
        }
    }

    /// Notes a refusal of `action` on `name` for `peer`. `counted_by_connection`: the caller
    /// counts repeats itself (a catalog secret's per-connection tally), so the ledger must not.
    pub(crate) fn note(
        &self,
        peer: &Peer,
        action: Action,
        name: &str,
        counted_by_connection: bool,
    ) -> Verdict {
        let actor = Actor {
            kind: ActorType::Client,
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid(),
            program: Some(peer.attested.describe().into()),
        };
        let mut l = self.ledger.lock().recover();
        let total = l.per_uid.entry(peer.uid).or_insert(0);
        *total += 1;
        if *total > self.max_per_uid {
            let over = l.over_limit.entry(peer.uid).or_insert((0, actor));
            over.0 += 1;
            return Verdict {
                record: false,
                log: false,
                close: true,
            };
        }
        let mut key: Key = (peer.uid, action, name.into());
        if !l.keys.contains_key(&key) && l.keys.len() >= MAX_DENIAL_KEYS {
            key.2 = "*".into();
        }
        let first = match l.keys.get_mut(&key) {
            Some(count) => {
                if !counted_by_connection {
                    count.pending += 1;
                }
                false
            }
            None => {
                l.keys.insert(key, Count { pending: 0, actor });
                true
            }
        };
        let log = first && l.logged < MAX_DENIAL_LOGS;
        if log {
            l.logged += 1;
        } else {
            l.unlogged += 1;
        }
        Verdict {
            record: first,
            log,
            close: false,
        }
    }

    /// Ends the window if it is over: writes one aggregated record per key with repeats and
    /// per uid past its limit, logs a summary of what was not logged, and starts afresh.
    pub(crate) fn roll(&self, audit: &AuditLog, force: bool) {
        let ended = {
            let mut l = self.ledger.lock().recover();
            if !force && l.started.elapsed() < DENIAL_WINDOW {
                return;
            }
            std::mem::replace(&mut *l, Ledger::new())
        };
        for ((_, action, name), count) in &ended.keys {
            if count.pending == 0 {
                continue;
            }
            let mut event = AuditEvent::new(*action, name, &count.actor, Outcome::Denied);
            event.count = count.pending;
            event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
            event.detail = "aggregated".into();
            audit.record(event);
        }
        for (uid, (n, actor)) in &ended.over_limit {
            let mut event = AuditEvent::new(Action::Read, "", actor, Outcome::Denied);
            event.count = *n;
            event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
            event.detail = "past max_denials_per_minute_per_uid; connections closed".into();
            audit.record(event);
            tracing::warn!(
                event = "access.denied_flood",
                uid,
                refused = n,
                "a uid was refused past its per-minute limit; its connections were closed"
            );
        }
        if ended.unlogged > 0 {
            tracing::warn!(
                event = "access.denied_suppressed",
                suppressed = ended.unlogged,
                "refusals not logged one by one in the last minute (see the audit trail)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            groups: Vec::new(),
            attested: Default::default(),
            written_as: crate::server::identity::Sender {
                pid: None,
                uid,
                gid: uid,
            },
        }
    }

    #[test]
    fn first_per_key_recorded_logs_budgeted_and_a_flood_cut_off() {
        let d = Denials::new(600);
        let v = d.note(&peer(7), Action::Read, "a", false);
        assert!(v.record && v.log && !v.close);
        let again = d.note(&peer(7), Action::Read, "a", false);
        assert!(!again.record && !again.log && !again.close);
        // Another uid, another name: first of their keys.
        assert!(d.note(&peer(8), Action::Read, "a", false).record);
        assert!(d.note(&peer(7), Action::Watch, "a", false).record);
        // Distinct names: recorded, but only the first MAX_DENIAL_LOGS are logged.
        let logged = (0..100)
            .filter(|i| d.note(&peer(9), Action::Read, &format!("n{i}"), false).log)
            .count();
        assert_eq!(logged, MAX_DENIAL_LOGS as usize - 3);
        // Past 600 in the window, a uid's refusals close the connection and are only counted.
        let closed = (0..600)
            .map(|i| d.note(&peer(9), Action::Read, &format!("m{i}"), false))
            .filter(|v| v.close)
            .count();
        assert_eq!(closed, 100);
        // The map of keys stays bounded whatever the names.
        let l = d.ledger.lock().recover();
        assert!(l.keys.len() <= MAX_DENIAL_KEYS);
        assert_eq!(l.over_limit.get(&9).map(|o| o.0), Some(100));
    }
}
