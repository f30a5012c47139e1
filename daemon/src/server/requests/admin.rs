//! Admin operations: refresh, audit, metrics (rotation steps: `rotation`). Each needs an `admin_uids` caller, is
//! refused while the audit trail is failing, and is recorded durably before it is answered.

use secretd_proto::{
    AuditEntry, AuditVerification, ErrorCode, RefreshOutcome, Response, WireError, validate_name,
};

use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{self, Action, ActorType, AuditEvent, Outcome};
use crate::catalog::refresh::REFRESH_WAIT;

/// Most records one `audit tail` returns.
pub(crate) const MAX_AUDIT_TAIL: u32 = 10_000;

impl Session {
    /// Lets the request through if the caller is an admin and the audit trail works; the
    /// refusal otherwise. A refusal is audited under the operation's own action, with the
    /// operation named in the record's detail.
    pub(super) fn admin_gate(&mut self, action: Action) -> Result<(), WireError> {
        let op = action.as_str();
        if !self.access.admin {
            let mut event = self.denied_event(action, "");
            event.detail = format!("{op} denied: not an admin");
            self.refuse(action, op, false, "admin operation denied", event);
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{op} is an admin operation; uid {} is not in admin_uids",
                    self.peer.uid
                ),
            ));
        }
        if !self.shared.audit.healthy() {
            return Err(audit_down());
        }
        Ok(())
    }

    /// Resolves a catalog name for an admin operation.
    pub(super) fn slot_index(&self, name: &str) -> Result<usize, WireError> {
        validate_name(name).map_err(|why| WireError::new(ErrorCode::InvalidRequest, why))?;
        self.shared.catalog.index_of(name).ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!("secret {name:?} is not in the catalog"),
            )
        })
    }

    /// Fetches slots now and waits for fetches that started after the request.
    pub(super) async fn refresh_slots(&self, targets: &[usize]) -> Vec<RefreshOutcome> {
        let catalog = &self.shared.catalog;
        // Ask every refresher first so the fetches run side by side, then collect.
        let tickets: Vec<_> = targets
            .iter()
            .map(|&i| catalog.slot(i).trigger.request())
            .collect();
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        let mut outcomes = Vec::with_capacity(targets.len());
        for (&idx, ticket) in targets.iter().zip(tickets) {
            let slot = catalog.slot(idx);
            let finished = ticket.wait(deadline).await;
            let error = if !finished {
                Some(format!(
                    "the fetch did not finish within {}s",
                    REFRESH_WAIT.as_secs()
                ))
            } else {
                slot.health().last_error.map(|e| e.message)
            };
            outcomes.push(RefreshOutcome {
                name: slot.name.to_string(),
                version: match error {
                    None => slot.current().map(|e| e.version.clone()),
                    Some(_) => None,
                },
                error: error.map(|m| WireError::new(ErrorCode::Unavailable, m)),
            });
        }
        outcomes
    }

    pub(super) async fn refresh(&mut self, name: Option<&str>) -> Answer {
        self.admin_gate(Action::Refresh)?;
        let targets: Vec<usize> = match name {
            None => (0..self.shared.catalog.slots().len()).collect(),
            Some(name) => vec![self.slot_index(name)?],
        };
        tracing::info!(
            uid = self.peer.uid,
            pid = self.peer.pid(),
            secret = name.unwrap_or("*"),
            "refresh requested"
        );
        let outcomes = self.refresh_slots(&targets).await;
        let mut event = AuditEvent::new(
            Action::Refresh,
            name.unwrap_or(""),
            &self.actor(ActorType::Admin),
            if outcomes.iter().all(|o| o.error.is_none()) {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
        );
        event.detail = format!("on demand, {} secrets", outcomes.len());
        if let Err(e) = self.shared.audit.record_durable(event).await {
            tracing::error!(error = %e, "refresh could not be audited");
            return Err(audit_down());
        }
        Ok(Reply::plain(Response::Refreshed(outcomes)))
    }

    pub(super) fn audit_tail(&mut self, limit: u32, secret: Option<&str>) -> Answer {
        self.admin_gate(Action::AuditTail)?;
        let records = audit::tail(
            &self.shared.store,
            limit.min(MAX_AUDIT_TAIL) as usize,
            secret,
        )
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        let entries = records
            .into_iter()
            .map(|(seq, e, hash)| AuditEntry {
                seq,
                recorded_at_ms: e.recorded_at_ms,
                action: e.action.as_str().into(),
                secret: e.secret,
                actor_type: e.actor_type.as_str().into(),
                uid: e.uid,
                gid: e.gid,
                pid: e.pid,
                result: e.outcome.as_str().into(),
                error_code: e.error_code,
                version: e.version,
                fingerprint: e.fingerprint,
                duration_ms: e.duration_ms,
                count: e.count,
                // The wire's audit entry has no program field: the attested
                // program rides in the detail.
                detail: match (e.detail.is_empty(), e.program.is_empty()) {
                    (_, true) => e.detail,
                    (true, false) => format!("program {}", e.program),
                    (false, false) => format!("{}; program {}", e.detail, e.program),
                },
                hash: hex::encode(hash),
            })
            .collect();
        Ok(Reply::plain(Response::AuditRecords(entries)))
    }

    pub(super) fn audit_verify(&mut self) -> Answer {
        self.admin_gate(Action::AuditVerify)?;
        let v = self
            .shared
            .audit
            .verify(&self.shared.store)
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Reply::plain(Response::AuditVerified(AuditVerification {
            checked: v.checked,
            first_seq: v.first_seq,
            last_seq: v.last_seq,
            broken_seq: v.broken.as_ref().map(|b| b.0),
            reason: v.broken.map(|b| b.1),
        })))
    }

    pub(super) fn connections(&mut self) -> Answer {
        self.admin_gate(Action::Connections)?;
        Ok(Reply::plain(Response::Connections(
            self.shared.connections.list(),
        )))
    }

    pub(super) fn metrics(&mut self) -> Answer {
        self.admin_gate(Action::Metrics)?;
        Ok(Reply::plain(Response::Metrics(self.shared.scrape())))
    }
}

/// A refusal for a failure inside the daemon (a store error, missing metadata).
pub(super) fn internal(e: &dyn std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}
