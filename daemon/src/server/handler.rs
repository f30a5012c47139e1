//! Answers requests from the cache under the connection's access rights, and keeps the
//! connection's read counts for the audit trail.

use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::{
    ErrorCode, Request, Response, SecretReply, SecretStatus, SecretValue, WireError, validate_name,
};

use super::Shared;
use crate::cache::Entry;
use crate::peer::Peer;
use crate::policy::Access;
use crate::store::audit::{Action, Actor, ActorType, AuditEvent, Outcome};
use crate::time::unix_ms;

/// Reads (or denials) of one secret on this connection. The first is recorded at once, the
/// rest are counted and written by [`Session::flush`], so a bot reading 100k times a second
/// costs the audit trail one record a minute.
#[derive(Debug, Default)]
struct Tally {
    /// Whether the first event was recorded.
    recorded_first: bool,
    /// Events since the last record.
    pending: u64,
    /// The version last read.
    version: String,
    /// Its fingerprint.
    fingerprint: String,
}

/// A connection's view of the daemon: its peer and what that peer may do.
pub(super) struct Session<'a> {
    /// Cache, policy, store, audit.
    pub(super) shared: &'a Shared,
    /// Who is asking.
    pub(super) peer: &'a Peer,
    /// Rights computed once at accept.
    pub(super) access: Access,
    /// Successful reads per slot.
    reads: Vec<Tally>,
    /// Denied reads per slot (a denial is logged once per connection and name, too).
    denials: Vec<Tally>,
}

impl<'a> Session<'a> {
    pub(super) fn new(shared: &'a Shared, peer: &'a Peer) -> Session<'a> {
        let access = shared.policy.access_for(peer, &shared.cache);
        let n = shared.cache.slots().len();
        Session {
            shared,
            peer,
            access,
            reads: (0..n).map(|_| Tally::default()).collect(),
            denials: (0..n).map(|_| Tally::default()).collect(),
        }
    }

    /// The peer as an audit actor.
    pub(super) fn actor(&self, kind: ActorType) -> Actor {
        Actor {
            kind,
            uid: self.peer.uid,
            gid: self.peer.gid,
            pid: self.peer.pid,
        }
    }

    /// The audit record of a request refused by policy or the admin list.
    pub(super) fn denied_event(&self, action: Action, name: &str) -> AuditEvent {
        let mut event =
            AuditEvent::new(action, name, self.actor(ActorType::Client), Outcome::Denied);
        event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
        event
    }

    /// Encodes the response to `request` as a frame into `out`.
    pub(super) async fn respond(
        &mut self,
        request: &Request,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        match request {
            Request::Get { name } => self.get(name, out),
            Request::Status => encode_frame(&Response::Status(self.status()), out),
            Request::Refresh { name } => self.refresh(name.as_deref(), out).await,
            Request::Rotation { name, step } => self.rotation(name, step, out).await,
            Request::AuditTail { limit, secret } => self.audit_tail(*limit, secret.as_deref(), out),
            Request::AuditVerify => self.audit_verify(out),
            Request::BreakGlassApply { envelope } => {
                self.break_glass_apply(envelope.clone(), out).await
            }
            Request::BreakGlassClear { name } => self.break_glass_clear(name, out).await,
            Request::Metrics => self.metrics(out),
            // The connection layer turns the connection into a stream for these.
            Request::Watch { .. } => error(out, ErrorCode::Internal, "unexpected watch"),
            // The connection layer answers hellos; one here is a bug in that layer.
            Request::Hello(_) => error(out, ErrorCode::Internal, "unexpected hello"),
        }
    }

    fn get(&mut self, name: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if let Err(why) = validate_name(name) {
            return error(out, ErrorCode::InvalidRequest, why);
        }
        let cache = &self.shared.cache;
        let Some(idx) = cache.index_of(name) else {
            return if self.shared.policy.would_allow(&self.access, name) {
                error(
                    out,
                    ErrorCode::NotFound,
                    format!("secret {name:?} is not in the catalog"),
                )
            } else {
                self.denied(None, name, out)
            };
        };
        if !self.access.can_read(idx) {
            return self.denied(Some(idx), name, out);
        }
        let entry = match cache.read(idx) {
            Ok(entry) => entry,
            Err(unservable) => {
                return encode_frame(&Response::Error(unservable.to_wire(name)), out);
            }
        };
        if !self.audit_read(idx, &entry) {
            return audit_down(out);
        }
        self.shared.metrics.read(idx, entry.source);
        encode_frame(
            &Response::Secret(SecretReply {
                version: entry.version.clone(),
                source: entry.source,
                fetched_at_ms: unix_ms(entry.fetched_at),
                expires_at_ms: unix_ms(entry.expires_at),
                value: SecretValue::Borrowed(entry.value.expose()),
            }),
            out,
        )
    }

    /// Counts a read; records it at once if it is this connection's first of the secret.
    /// False means the audit trail cannot take it, and the read must be refused.
    fn audit_read(&mut self, idx: usize, entry: &Entry) -> bool {
        let audit = &self.shared.audit;
        if !audit.healthy() {
            return false;
        }
        let actor = self.actor(ActorType::Client);
        let tally = &mut self.reads[idx];
        if tally.version != entry.version {
            tally.version.clone_from(&entry.version);
            tally.fingerprint.clone_from(&entry.fingerprint);
        }
        if tally.recorded_first {
            tally.pending += 1;
            return true;
        }
        let mut event = AuditEvent::new(
            Action::Read,
            &self.shared.cache.slot(idx).name,
            actor,
            Outcome::Ok,
        );
        event.version.clone_from(&tally.version);
        event.fingerprint.clone_from(&tally.fingerprint);
        tally.recorded_first = audit.record(event);
        tally.recorded_first
    }

    fn denied(
        &mut self,
        idx: Option<usize>,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let first = match idx {
            Some(i) => {
                let tally = &mut self.denials[i];
                if tally.recorded_first {
                    tally.pending += 1;
                }
                !tally.recorded_first
            }
            // Names outside the catalog: recorded every time, since there is no slot to
            // count them against (they are rare unless someone is probing).
            None => true,
        };
        if first {
            tracing::warn!(
                event = "access.denied",
                secret = name,
                uid = self.peer.uid,
                gid = self.peer.gid,
                pid = self.peer.pid,
                "read denied by policy"
            );
            let recorded = self
                .shared
                .audit
                .record(self.denied_event(Action::Read, name));
            if let Some(i) = idx {
                self.denials[i].recorded_first = recorded;
            }
        }
        error(
            out,
            ErrorCode::PermissionDenied,
            format!("uid {} may not read secret {name:?}", self.peer.uid),
        )
    }

    /// Writes the counts gathered since the last flush as aggregated records.
    pub(super) fn flush(&mut self) {
        let actor = self.actor(ActorType::Client);
        for (tallies, outcome) in [
            (&mut self.reads, Outcome::Ok),
            (&mut self.denials, Outcome::Denied),
        ] {
            for (idx, tally) in tallies.iter_mut().enumerate() {
                if tally.pending == 0 {
                    continue;
                }
                let name = &self.shared.cache.slot(idx).name;
                let mut event = AuditEvent::new(Action::Read, name, actor, outcome);
                event.count = std::mem::take(&mut tally.pending);
                event.version.clone_from(&tally.version);
                event.fingerprint.clone_from(&tally.fingerprint);
                event.detail = "aggregated".into();
                if outcome == Outcome::Denied {
                    event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
                }
                if !self.shared.audit.record(event) {
                    tracing::error!(secret = %name, "aggregated reads could not be audited");
                }
            }
        }
    }

    /// Status rows the caller may see, with metadata merged in.
    pub(super) fn status(&self) -> Vec<SecretStatus> {
        let cache = &self.shared.cache;
        let metas = self.shared.store.all_meta().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read secret metadata for status");
            Default::default()
        });
        (0..cache.slots().len())
            .filter(|&i| self.access.admin || self.access.can_read(i))
            .map(|i| {
                let mut row = cache.status(i);
                if let Some(meta) = metas.get(&row.name) {
                    row.metadata_status = Some(meta.status.as_str().into());
                    row.rotation_due_at_ms = Some(meta.rotation_due_at_ms);
                    row.break_glass_expires_at_ms = meta.break_glass_enabled_until_ms;
                }
                row
            })
            .collect()
    }
}

/// The answer when the audit trail cannot record a request: refuse it (fail closed).
pub(super) fn audit_down(out: &mut Vec<u8>) -> Result<(), FrameError> {
    error(
        out,
        ErrorCode::Unavailable,
        "the audit trail cannot be written; requests are refused until it recovers",
    )
}

pub(super) fn error(
    out: &mut Vec<u8>,
    code: ErrorCode,
    message: impl Into<String>,
) -> Result<(), FrameError> {
    encode_frame(&Response::Error(WireError::new(code, message)), out)
}
