//! A rotation step an admin asks for (`secretd rotation begin|validate|promote|abort|unpin`):
//! checked against the state machine (`catalog::rotation`), audited before it takes effect,
//! the served version moved, the metadata written, the outcome audited.

use secretd_proto::{ErrorCode, Response, RotationStep, WireError};

use super::admin::internal;
use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};
use crate::catalog::refresh::REFRESH_WAIT;
use crate::catalog::rotation::{Step, transition};
use crate::store::metadata::SecretMeta;
use crate::util::time::now_ms;

impl Session {
    pub(super) async fn rotation(&mut self, name: &str, step: &RotationStep) -> Answer {
        let (action, step) = match step {
            RotationStep::Begin { version } => {
                (Action::RotationBegin, Step::Begin(version.clone()))
            }
            RotationStep::Promote => (Action::RotationPromote, Step::Promote),
            RotationStep::Abort => (Action::RotationAbort, Step::Abort),
            RotationStep::Validate => (Action::RotationValidate, Step::Validate),
            RotationStep::Unpin => (Action::RotationUnpin, Step::Unpin),
        };
        self.admin_gate(action)?;
        let idx = self.slot_index(name)?;
        let meta = self
            .shared
            .store
            .meta(name)
            .map_err(|e| internal(&e))?
            .ok_or_else(|| internal(&format_args!("no metadata for {name:?}")))?;
        let event = AuditEvent::new(action, name, &self.actor(ActorType::Admin), Outcome::Ok);
        let next = match transition(&meta, &step, now_ms()) {
            Ok(next) => next,
            Err(why) => {
                return Err(self
                    .step_failed(event, ErrorCode::InvalidRequest, why)
                    .await);
            }
        };
        if step == Step::Promote
            && let Err(why) = self.promote_serves_the_validated_version(idx, &meta).await
        {
            return Err(self.step_failed(event, why.code, why.message).await);
        }
        self.take_step(idx, &step, (&meta, &next), event).await?;
        Ok(Reply::plain(Response::Rotated(self.status_row(idx)?)))
    }

    /// Records a rotation step that failed (its `event`, marked failed with `why`) and returns
    /// the refusal to answer with.
    async fn step_failed(
        &self,
        mut event: AuditEvent,
        code: ErrorCode,
        why: impl std::fmt::Display,
    ) -> WireError {
        event.outcome = Outcome::Failed;
        event.error_code = Some(code.as_u16());
        event.detail = why.to_string();
        let _ = self.shared.audit.record_durable(event.clone()).await;
        WireError::new(code, event.detail)
    }

    /// Takes an allowed rotation step of slot `idx` from `meta` to `next`: audited before it
    /// takes effect (a failed begin adds a second, failed record), the served version moved
    /// (every step but validate), the metadata written, the outcome audited.
    async fn take_step(
        &self,
        idx: usize,
        step: &Step,
        (meta, next): (&SecretMeta, &SecretMeta),
        mut event: AuditEvent,
    ) -> Result<(), WireError> {
        let name = &self.shared.catalog.slot(idx).name;
        let source = &self.shared.sources[idx];
        let mut intent = event.clone();
        if let Step::Begin(version) = step {
            intent.version.clone_from(version);
        }
        let change = format!(
            "status {} -> {}",
            meta.status.as_str(),
            next.status.as_str()
        );
        intent.detail = format!("{change} requested");
        if let Err(e) = self.shared.audit.record_durable(intent).await {
            tracing::error!(error = %e, "rotation could not be audited");
            return Err(audit_down());
        }
        let moves = *step != Step::Validate;
        if moves && let Err(why) = source.pin_version(next.pinned_version()) {
            return Err(self
                .step_failed(event, ErrorCode::InvalidRequest, why)
                .await);
        }
        let fetched = if moves {
            self.refresh_slots(&[idx]).await.remove(0).error
        } else {
            None
        };
        if let (Step::Begin(version), Some(e)) = (step, &fetched) {
            // The new version cannot be served: stay where we were.
            if let Err(e) = source.pin_version(meta.pinned_version()) {
                tracing::error!(secret = %name, error = %e, "cannot restore the previous pin");
            }
            self.refresh_slots(&[idx]).await;
            event.version.clone_from(version);
            let why = format!("version {version} could not be fetched: {}", e.message);
            return Err(self.step_failed(event, ErrorCode::Unavailable, why).await);
        }
        self.shared.store.put_meta(next).map_err(|e| internal(&e))?;
        if let Some(entry) = self.shared.catalog.slot(idx).current() {
            event.version.clone_from(&entry.version);
            event.fingerprint.clone_from(&entry.fingerprint);
        }
        event.detail = change;
        if let Err(e) = self.shared.audit.record_durable(event.clone()).await {
            tracing::error!(error = %e, "rotation could not be audited");
            return Err(audit_down());
        }
        if event.action == Action::RotationPromote {
            tracing::info!(event = "secret.rotated", secret = %name, version = %event.version, "rotation promoted");
        } else {
            tracing::info!(secret = %name, step = event.action.as_str(), version = %event.version, "rotation step");
        }
        Ok(())
    }

    /// A promote over `latest` or an alias returns the host to that alias, so it may go ahead
    /// only if GSM resolves the alias to the validated version now (one access). Over a version
    /// number the validated version stays pinned: nothing to check.
    async fn promote_serves_the_validated_version(
        &self,
        idx: usize,
        meta: &SecretMeta,
    ) -> Result<(), WireError> {
        let (Some(validated), Some(alias)) = (&meta.rotating_version, &meta.gcp_version_alias)
        else {
            return Ok(());
        };
        if meta.config_pins_a_number() {
            return Ok(());
        }
        let Some(check) = self.shared.sources[idx].fetch_version(alias) else {
            return Ok(());
        };
        match tokio::time::timeout(REFRESH_WAIT, check).await {
            Ok(Ok(fetched)) if fetched.version.as_deref() == Some(validated.as_str()) => Ok(()),
            Ok(Ok(fetched)) => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "GSM resolves {alias:?} to version {}, not the validated version \
                     {validated}: point {alias:?} at {validated} in GSM and promote again, or \
                     abort",
                    fetched.version.as_deref().unwrap_or("?")
                ),
            )),
            Ok(Err(e)) => Err(WireError::new(
                ErrorCode::Unavailable,
                format!("cannot confirm that {alias:?} resolves to version {validated}: {e}"),
            )),
            Err(_) => Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot confirm that {alias:?} resolves to version {validated}: GSM did not answer"
                ),
            )),
        }
    }
}
