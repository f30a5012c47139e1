//! Reading: `Get` (a value, under the peer's access rights, audited before it is answered)
//! `Status` (what the caller may see, never values) and `Health`.

use secretd_proto::{ErrorCode, Response, SecretStatus, WireError, validate_name};

use super::health;
use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};
use crate::catalog::entry::Entry;
use crate::store::metadata::SecretMeta;

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

    /// The host's health; reasons name only secrets this caller may see.
    pub(super) fn health(&self) -> Reply {
        let access = &self.access;
        let health = health::assess(&self.shared, |i| access.admin || access.can_read(i));
        Reply::plain(Response::Health(health))
    }

    pub(super) fn status(&self) -> Reply {
        Reply::plain(Response::Status(self.status_rows()))
    }

    /// Status rows the caller may see, with metadata merged in.
    pub(super) fn status_rows(&self) -> Vec<SecretStatus> {
        let catalog = &self.shared.catalog;
        let metas = self.shared.store.all_meta().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read secret metadata for status");
            Default::default()
        });
        (0..catalog.slots().len())
            .filter(|&i| self.access.admin || self.access.can_read(i))
            .map(|i| {
                let mut row = catalog.status(i);
                if let Some(meta) = metas.get(&row.name) {
                    merge_meta(&mut row, meta);
                }
                row
            })
            .collect()
    }

    /// The status row of slot `idx`, as the answer to an admin operation on it.
    pub(super) fn status_row(&self, idx: usize) -> Result<SecretStatus, WireError> {
        let name = &self.shared.catalog.slot(idx).name;
        self.status_rows()
            .into_iter()
            .find(|r| *r.name == **name)
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "status row missing"))
    }
}

/// Adds what the store knows of a secret to its status row.
pub(crate) fn merge_meta(row: &mut SecretStatus, meta: &SecretMeta) {
    row.metadata_status = Some(meta.status.as_str().into());
    row.rotation_due_at_ms = Some(meta.rotation_due_at_ms);
    row.break_glass_expires_at_ms = meta.break_glass_enabled_until_ms;
    row.version_alias.clone_from(&meta.gcp_version_alias);
    row.gcp_secret.clone_from(&meta.gcp_secret_id);
    row.owner.clone_from(&meta.owner);
    row.last_rotated_at_ms = meta.last_rotated_at_ms;
    row.last_validated_at_ms = meta.last_validated_at_ms;
    row.active_version.clone_from(&meta.active_version);
}
