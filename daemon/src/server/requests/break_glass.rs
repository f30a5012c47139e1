//! Break-glass requests: apply an envelope, clear an override. Admin-only; the work itself
//! (opening, precedence, persistence, expiry) is `catalog::break_glass`'s.

use secretd_proto::{ErrorCode, Response, WireError};

use super::reply::{Answer, Reply};
use super::session::Session;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};
use crate::catalog::break_glass::BreakGlassError;

impl Session {
    pub(super) async fn break_glass_apply(&mut self, envelope: Vec<u8>) -> Answer {
        self.admin_gate(Action::BreakGlassApply)?;
        let actor = self.actor(ActorType::Admin);
        match self.shared.break_glass.apply(envelope, actor).await {
            Ok(idx) => Ok(Reply::plain(Response::BreakGlass(self.status_row(idx)?))),
            Err(e) => Err(self.refused(Action::BreakGlassApply, &e)),
        }
    }

    pub(super) async fn break_glass_clear(&mut self, name: &str) -> Answer {
        self.admin_gate(Action::BreakGlassClear)?;
        let idx = self.slot_index(name)?;
        let actor = self.actor(ActorType::Admin);
        match self.shared.break_glass.clear(idx, actor, "cleared").await {
            Ok(()) => Ok(Reply::plain(Response::BreakGlass(self.status_row(idx)?))),
            Err(e) => Err(self.refused(Action::BreakGlassClear, &e)),
        }
    }

    /// Audits and logs a refused apply or clear, and answers it.
    fn refused(&self, op: Action, e: &BreakGlassError) -> WireError {
        let code = match e {
            BreakGlassError::NotConfigured
            | BreakGlassError::Rejected
            | BreakGlassError::NotActive(_)
            | BreakGlassError::Replayed => ErrorCode::InvalidRequest,
            BreakGlassError::RateLimited => ErrorCode::Busy,
            BreakGlassError::Store(_)
            | BreakGlassError::NotAudited(_)
            | BreakGlassError::Decryption => ErrorCode::Internal,
        };
        let mut event = AuditEvent::new(op, "", &self.actor(ActorType::Admin), Outcome::Failed);
        event.error_code = Some(code.as_u16());
        event.detail = e.to_string();
        self.shared.audit.record(event);
        tracing::warn!(uid = self.peer.uid, pid = self.peer.pid(), op = op.as_str(), error = %e, "break-glass request refused");
        WireError::new(code, e.to_string())
    }
}
