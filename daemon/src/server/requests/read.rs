//! Reading: `Get`, a value under the peer's access rights, audited before it is answered.

use secretd_proto::{ErrorCode, WireError, validate_name};

use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};
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

    /// Counts a read; records it at once if it is this connection's first of the secret.
    /// False means the audit trail cannot take it, and the read must be refused.
    fn audit_read(&mut self, idx: usize, entry: &Entry) -> bool {
        let audit = &self.shared.audit;
        if !audit.healthy() {
            return false;
        }
        let actor = self.actor(ActorType::Client);
        let name = &self.shared.catalog.slot(idx).name;
        let tally = self.reads.of(idx);
        if tally.version != entry.version || tally.fingerprint != entry.fingerprint {
            // The value changed under this connection: the reads counted so far were of the
            // old one, and an audit after a compromise must show who kept reading it.
            if tally.pending > 0 {
                let mut event = AuditEvent::new(Action::Read, name, &actor, Outcome::Ok);
                event.count = std::mem::take(&mut tally.pending);
                event.version.clone_from(&tally.version);
                event.fingerprint.clone_from(&tally.fingerprint);
                event.detail = "aggregated".into();
                if !audit.record(event) {
                    return false;
                }
            }
            tally.version.clone_from(&entry.version);
            tally.fingerprint.clone_from(&entry.fingerprint);
        }
        if tally.recorded_first {
            tally.pending += 1;
            return true;
        }
        let mut event = AuditEvent::new(Action::Read, name, &actor, Outcome::Ok);
        event.version.clone_from(&tally.version);
        event.fingerprint.clone_from(&tally.fingerprint);
        tally.recorded_first = audit.record(event);
        tally.recorded_first
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
