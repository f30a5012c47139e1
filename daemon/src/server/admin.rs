//! Admin operations: refresh, rotation, audit. Each needs an `admin_uids` caller, is refused
//! while the audit trail is failing, and is recorded durably before it is answered.

use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::{
    AuditEntry, AuditVerification, ErrorCode, RefreshOutcome, Response, RotationStep, WireError,
    validate_name,
};

use super::handler::{Session, audit_down, error};
use crate::break_glass::BreakGlassError;
use crate::refresh::REFRESH_WAIT;
use crate::store::audit::{Action, ActorType, AuditEvent, Outcome};
use crate::store::metadata::{Step, transition};
use crate::store::now_ms;

/// Most records one `audit tail` returns.
pub const MAX_AUDIT_TAIL: u32 = 10_000;

impl Session<'_> {
    /// Checks the caller is an admin and the audit trail works; answers the refusal if not.
    fn admin_gate(&self, op: &str, out: &mut Vec<u8>) -> Option<Result<(), FrameError>> {
        if !self.access.admin {
            tracing::warn!(
                event = "access.denied",
                op,
                uid = self.peer.uid,
                gid = self.peer.gid,
                pid = self.peer.pid,
                "admin operation denied"
            );
            let mut event = self.denied_event(action_of(op), "");
            event.detail = format!("{op} denied: not an admin");
            self.shared.audit.record(event);
            return Some(error(
                out,
                ErrorCode::PermissionDenied,
                format!(
                    "{op} is an admin operation; uid {} is not in admin_uids",
                    self.peer.uid
                ),
            ));
        }
        if !self.shared.audit.healthy() {
            return Some(audit_down(out));
        }
        None
    }

    /// Resolves a catalog name for an admin operation, answering the error if it is bad.
    fn slot_index(&self, name: &str, out: &mut Vec<u8>) -> Result<usize, Result<(), FrameError>> {
        if let Err(why) = validate_name(name) {
            return Err(error(out, ErrorCode::InvalidRequest, why));
        }
        self.shared.cache.index_of(name).ok_or_else(|| {
            error(
                out,
                ErrorCode::NotFound,
                format!("secret {name:?} is not in the catalog"),
            )
        })
    }

    /// Fetches slots now and waits for fetches that started after the request.
    async fn refresh_slots(&self, targets: &[usize]) -> Vec<RefreshOutcome> {
        let cache = &self.shared.cache;
        // Ask every refresher first so the fetches run side by side, then collect.
        let tickets: Vec<_> = targets
            .iter()
            .map(|&i| cache.slot(i).request_refresh())
            .collect();
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        let mut outcomes = Vec::with_capacity(targets.len());
        for (&idx, ticket) in targets.iter().zip(tickets) {
            let slot = cache.slot(idx);
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

    pub(super) async fn refresh(
        &mut self,
        name: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("refresh", out) {
            return refused;
        }
        let targets: Vec<usize> = match name {
            None => (0..self.shared.cache.slots().len()).collect(),
            Some(name) => match self.slot_index(name, out) {
                Ok(i) => vec![i],
                Err(answered) => return answered,
            },
        };
        tracing::info!(
            uid = self.peer.uid,
            pid = self.peer.pid,
            secret = name.unwrap_or("*"),
            "refresh requested"
        );
        let outcomes = self.refresh_slots(&targets).await;
        let mut event = AuditEvent::new(
            Action::Refresh,
            name.unwrap_or(""),
            self.actor(ActorType::Admin),
            if outcomes.iter().all(|o| o.error.is_none()) {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
        );
        event.detail = format!("on demand, {} secrets", outcomes.len());
        if let Err(e) = self.shared.audit.record_durable(event).await {
            tracing::error!(error = %e, "refresh could not be audited");
            return audit_down(out);
        }
        encode_frame(&Response::Refreshed(outcomes), out)
    }

    pub(super) async fn rotation(
        &mut self,
        name: &str,
        step: &RotationStep,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let (action, step) = match step {
            RotationStep::Begin { version } => {
                (Action::RotationBegin, Step::Begin(version.clone()))
            }
            RotationStep::Promote => (Action::RotationPromote, Step::Promote),
            RotationStep::Abort => (Action::RotationAbort, Step::Abort),
        };
        if let Some(refused) = self.admin_gate(action.as_str(), out) {
            return refused;
        }
        let idx = match self.slot_index(name, out) {
            Ok(i) => i,
            Err(answered) => return answered,
        };
        let store = &self.shared.store;
        let meta = match store.meta(name) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return error(
                    out,
                    ErrorCode::Internal,
                    format!("no metadata for {name:?}"),
                );
            }
            Err(e) => return error(out, ErrorCode::Internal, e.to_string()),
        };
        let mut event = AuditEvent::new(action, name, self.actor(ActorType::Admin), Outcome::Ok);
        let next = match transition(&meta, &step, now_ms()) {
            Ok(next) => next,
            Err(why) => {
                event.outcome = Outcome::Failed;
                event.error_code = Some(ErrorCode::InvalidRequest.as_u16());
                event.detail.clone_from(&why);
                let _ = self.shared.audit.record_durable(event).await;
                return error(out, ErrorCode::InvalidRequest, why);
            }
        };
        let source = &self.shared.sources[idx];
        if let Err(why) = source.pin_version(next.rotating_version.as_deref()) {
            return error(out, ErrorCode::InvalidRequest, why);
        }
        let fetched = self.refresh_slots(&[idx]).await.remove(0);
        if let (Step::Begin(version), Some(e)) = (&step, &fetched.error) {
            // The new version cannot be served: stay where we were.
            let _ = source.pin_version(meta.rotating_version.as_deref());
            self.refresh_slots(&[idx]).await;
            event.outcome = Outcome::Failed;
            event.version.clone_from(version);
            event.detail = format!("version {version} could not be fetched: {}", e.message);
            let _ = self.shared.audit.record_durable(event.clone()).await;
            return error(out, ErrorCode::Unavailable, event.detail);
        }
        if let Err(e) = store.put_meta(&next) {
            return error(out, ErrorCode::Internal, e.to_string());
        }
        if let Some(entry) = self.shared.cache.slot(idx).current() {
            event.version.clone_from(&entry.version);
            event.fingerprint.clone_from(&entry.fingerprint);
        }
        event.detail = format!(
            "status {} -> {}",
            meta.status.as_str(),
            next.status.as_str()
        );
        if let Err(e) = self.shared.audit.record_durable(event.clone()).await {
            tracing::error!(error = %e, "rotation could not be audited");
            return audit_down(out);
        }
        if action == Action::RotationPromote {
            tracing::info!(event = "secret.rotated", secret = name, version = %event.version, "rotation promoted");
        } else {
            tracing::info!(secret = name, step = action.as_str(), version = %event.version, "rotation step");
        }
        let Some(row) = self.status().into_iter().find(|r| r.name == name) else {
            return error(out, ErrorCode::Internal, "status row missing");
        };
        encode_frame(&Response::Rotated(row), out)
    }

    pub(super) fn audit_tail(
        &mut self,
        limit: u32,
        secret: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("audit_tail", out) {
            return refused;
        }
        let records = match self
            .shared
            .store
            .audit_tail(limit.min(MAX_AUDIT_TAIL) as usize, secret)
        {
            Ok(r) => r,
            Err(e) => return error(out, ErrorCode::Internal, e.to_string()),
        };
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
                detail: e.detail,
                hash: hex::encode(hash),
            })
            .collect();
        encode_frame(&Response::AuditRecords(entries), out)
    }

    pub(super) fn audit_verify(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("audit_verify", out) {
            return refused;
        }
        match self.shared.store.audit_verify() {
            Ok(v) => encode_frame(
                &Response::AuditVerified(AuditVerification {
                    checked: v.checked,
                    first_seq: v.first_seq,
                    last_seq: v.last_seq,
                    broken_seq: v.broken.as_ref().map(|b| b.0),
                    reason: v.broken.map(|b| b.1),
                }),
                out,
            ),
            Err(e) => error(out, ErrorCode::Internal, e.to_string()),
        }
    }
}

impl Session<'_> {
    fn status_row(&self, idx: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let name = self.shared.cache.slot(idx).name.to_string();
        match self.status().into_iter().find(|r| r.name == name) {
            Some(row) => encode_frame(&Response::BreakGlass(row), out),
            None => error(out, ErrorCode::Internal, "status row missing"),
        }
    }

    fn break_glass_error(
        &self,
        op: Action,
        e: BreakGlassError,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let code = match &e {
            BreakGlassError::NotConfigured
            | BreakGlassError::Rejected
            | BreakGlassError::NotActive(_) => ErrorCode::InvalidRequest,
            BreakGlassError::RateLimited => ErrorCode::Busy,
            BreakGlassError::Internal(_) => ErrorCode::Internal,
        };
        let mut event = AuditEvent::new(op, "", self.actor(ActorType::Admin), Outcome::Failed);
        event.error_code = Some(code.as_u16());
        event.detail = e.to_string();
        self.shared.audit.record(event);
        tracing::warn!(uid = self.peer.uid, pid = self.peer.pid, op = op.as_str(), error = %e, "break-glass request refused");
        error(out, code, e.to_string())
    }

    pub(super) async fn break_glass_apply(
        &mut self,
        envelope: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("break_glass_apply", out) {
            return refused;
        }
        let actor = self.actor(ActorType::Admin);
        match self.shared.break_glass.apply(envelope, actor).await {
            Ok(idx) => self.status_row(idx, out),
            Err(e) => self.break_glass_error(Action::BreakGlassApply, e, out),
        }
    }

    pub(super) async fn break_glass_clear(
        &mut self,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("break_glass_clear", out) {
            return refused;
        }
        let idx = match self.slot_index(name, out) {
            Ok(i) => i,
            Err(answered) => return answered,
        };
        let actor = self.actor(ActorType::Admin);
        match self.shared.break_glass.clear(idx, actor, "cleared").await {
            Ok(()) => self.status_row(idx, out),
            Err(e) => self.break_glass_error(Action::BreakGlassClear, e, out),
        }
    }
}

impl Session<'_> {
    pub(super) fn metrics(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if let Some(refused) = self.admin_gate("metrics", out) {
            return refused;
        }
        let s = self.shared;
        encode_frame(
            &Response::Metrics(s.metrics.render(&s.cache, &s.store, &s.audit)),
            out,
        )
    }
}

fn action_of(op: &str) -> Action {
    match op {
        "break_glass_apply" => Action::BreakGlassApply,
        "break_glass_clear" => Action::BreakGlassClear,
        "rotation_begin" => Action::RotationBegin,
        "rotation_promote" => Action::RotationPromote,
        "rotation_abort" => Action::RotationAbort,
        _ => Action::Refresh,
    }
}
