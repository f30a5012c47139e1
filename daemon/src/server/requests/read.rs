//! Reading: `Get`, a value under the peer's access rights, audited before it is answered.

use secretd_proto::{ErrorCode, WireError, validate_name};

use super::read_ledger::{First, Read};
use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{Action, ActorType};
use crate::catalog::entry::Entry;

impl Session {
    pub(super) async fn get(&mut self, name: &str) -> Answer {
        validate_name(name).map_err(|why| WireError::new(ErrorCode::InvalidRequest, why))?;
        let catalog = &self.shared.catalog;
        let Some(idx) = catalog.index_of(name) else {
            return Err(if self.shared.policy.would_allow(&self.access, name) {
                WireError::new(
                    ErrorCode::NotFound,
                    format!("secret {name:?} is not in the catalog"),
                )
            } else {
                self.denied(None, name)
            });
        };
        if !self.access.can_read(idx) {
            return Err(self.denied(Some(idx), name));
        }
        let entry = catalog
            .read_or_wait(idx)
            .await
            .map_err(|unservable| unservable.to_wire(name))?;
        if !self.audit_read(idx, &entry) {
            return Err(audit_down());
        }
        self.shared.metrics.read(idx, entry.source);
        Ok(Reply::Secret(entry))
    }

    /// Counts a read; the daemon-wide ledger records it at once if it is the first of this
    /// uid and program at this version in the window. False means the audit trail cannot
    /// take it, and the read must be refused.
    fn audit_read(&mut self, idx: usize, entry: &Entry) -> bool {
        if !self.shared.audit.healthy() {
            return false;
        }
        let tally = self.reads.of(idx);
        if tally.version == entry.version && tally.fingerprint == entry.fingerprint && tally.noted {
            tally.pending += 1;
            return true;
        }
        let actor = self.actor(ActorType::Client);
        let name = &self.shared.catalog.slot(idx).name;
        let ledger = &self.shared.reads;
        let tally = self.reads.of(idx);
        if tally.version != entry.version || tally.fingerprint != entry.fingerprint {
            // The value changed under this connection: the reads counted so far were of the
            // old one, and an audit after a compromise must show who kept reading it.
            let old = Read {
                actor: &actor,
                slot: idx,
                name,
                version: &tally.version,
                fingerprint: &tally.fingerprint,
            };
            ledger.add(old, std::mem::take(&mut tally.pending));
            tally.version.clone_from(&entry.version);
            tally.fingerprint.clone_from(&entry.fingerprint);
            tally.noted = false;
        }
        let read = Read {
            actor: &actor,
            slot: idx,
            name,
            version: &entry.version,
            fingerprint: &entry.fingerprint,
        };
        match ledger.first(read) {
            First::Recorded => tally.noted = true,
            First::Counted => {
                tally.noted = true;
                tally.pending += 1;
            }
            First::Refused => return false,
        }
        true
    }

    /// Refuses a read by policy (see `denials` for how refusals are recorded and limited).
    /// Repeats of a catalog secret are counted by this connection and written when it
    /// flushes.
    fn denied(&mut self, idx: Option<usize>, name: &str) -> WireError {
        let event = self.denied_event(Action::Read, name);
        let count_here = self.refuse(
            Action::Read,
            name,
            idx.is_some(),
            "read denied by policy",
            event,
        );
        if let Some(i) = idx
            && count_here
        {
            self.denials.of(i).pending += 1;
        }
        WireError::new(
            ErrorCode::PermissionDenied,
            format!("uid {} may not read secret {name:?}", self.peer.uid),
        )
    }
}
