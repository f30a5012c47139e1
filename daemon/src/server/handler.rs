//! Answers requests from the cache under the connection's access rights.

use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::{
    ErrorCode, RefreshOutcome, Request, Response, SecretReply, SecretValue, WireError,
    validate_name,
};

use super::Shared;
use crate::peer::Peer;
use crate::policy::Access;
use crate::refresh::REFRESH_WAIT;
use crate::time::unix_ms;

/// A connection's view of the daemon: its peer and what that peer may do.
pub(super) struct Session<'a> {
    /// Cache and policy.
    shared: &'a Shared,
    /// Who is asking.
    peer: &'a Peer,
    /// Rights computed once at accept.
    access: Access,
    /// Slots whose denial was already logged on this connection (one line per name, not per
    /// request, so a misconfigured bot cannot flood the log).
    denial_logged: Vec<bool>,
}

impl<'a> Session<'a> {
    pub(super) fn new(shared: &'a Shared, peer: &'a Peer) -> Session<'a> {
        let access = shared.policy.access_for(peer, &shared.cache);
        Session {
            shared,
            peer,
            access,
            denial_logged: vec![false; shared.cache.slots().len()],
        }
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
        match cache.read(idx) {
            Ok(entry) => encode_frame(
                &Response::Secret(SecretReply {
                    version: entry.version.clone(),
                    source: entry.source,
                    fetched_at_ms: unix_ms(entry.fetched_at),
                    expires_at_ms: unix_ms(entry.expires_at),
                    value: SecretValue::Borrowed(entry.value.expose()),
                }),
                out,
            ),
            Err(unservable) => encode_frame(&Response::Error(unservable.to_wire(name)), out),
        }
    }

    fn denied(
        &mut self,
        idx: Option<usize>,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let first = match idx {
            Some(i) => !std::mem::replace(&mut self.denial_logged[i], true),
            None => false,
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
        }
        error(
            out,
            ErrorCode::PermissionDenied,
            format!("uid {} may not read secret {name:?}", self.peer.uid),
        )
    }

    /// Refuses an admin operation to a non-admin (always logged: admin attempts are rare).
    fn admin_only(&self, op: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
        tracing::warn!(
            event = "access.denied",
            op,
            uid = self.peer.uid,
            gid = self.peer.gid,
            pid = self.peer.pid,
            "admin operation denied"
        );
        error(
            out,
            ErrorCode::PermissionDenied,
            format!(
                "{op} is an admin operation; uid {} is not in admin_uids",
                self.peer.uid
            ),
        )
    }

    async fn refresh(&mut self, name: Option<&str>, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if !self.access.admin {
            return self.admin_only("refresh", out);
        }
        let cache = &self.shared.cache;
        let targets: Vec<usize> = match name {
            None => (0..cache.slots().len()).collect(),
            Some(name) => {
                if let Err(why) = validate_name(name) {
                    return error(out, ErrorCode::InvalidRequest, why);
                }
                match cache.index_of(name) {
                    Some(i) => vec![i],
                    None => {
                        return error(
                            out,
                            ErrorCode::NotFound,
                            format!("secret {name:?} is not in the catalog"),
                        );
                    }
                }
            }
        };
        tracing::info!(
            uid = self.peer.uid,
            pid = self.peer.pid,
            secret = name.unwrap_or("*"),
            "refresh requested"
        );
        // Ask every refresher first so the fetches run side by side, then collect.
        let tickets: Vec<_> = targets
            .iter()
            .map(|&i| cache.slot(i).request_refresh())
            .collect();
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        let mut outcomes = Vec::with_capacity(targets.len());
        for (idx, ticket) in targets.into_iter().zip(tickets) {
            let slot = cache.slot(idx);
            let finished = ticket.wait(deadline).await;
            let health = slot.health();
            let outcome = if !finished {
                RefreshOutcome {
                    name: slot.name.to_string(),
                    version: None,
                    error: Some(WireError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the fetch did not finish within {}s",
                            REFRESH_WAIT.as_secs()
                        ),
                    )),
                }
            } else if let Some(e) = health.last_error {
                RefreshOutcome {
                    name: slot.name.to_string(),
                    version: None,
                    error: Some(WireError::new(ErrorCode::Unavailable, e.message)),
                }
            } else {
                RefreshOutcome {
                    name: slot.name.to_string(),
                    version: slot.current().map(|e| e.version.clone()),
                    error: None,
                }
            };
            outcomes.push(outcome);
        }
        encode_frame(&Response::Refreshed(outcomes), out)
    }

    fn status(&self) -> Vec<secretd_proto::SecretStatus> {
        let cache = &self.shared.cache;
        (0..cache.slots().len())
            .filter(|&i| self.access.admin || self.access.can_read(i))
            .map(|i| cache.status(i))
            .collect()
    }
}

fn error(out: &mut Vec<u8>, code: ErrorCode, message: impl Into<String>) -> Result<(), FrameError> {
    encode_frame(&Response::Error(WireError::new(code, message)), out)
}
