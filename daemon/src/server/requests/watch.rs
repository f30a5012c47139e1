//! Watch: the handler that grants a subscription to change events (audited per name, under
//! the peer's access). The subscription itself, and the batches of events it makes, are in
//! `subscription`; the transport writes them.

use secretd_proto::{ErrorCode, MAX_WATCH_NAMES, WireError, validate_name};

use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use super::subscription::Subscription;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};

impl Session {
    /// Answers a watch request: `Watching` plus a subscription, or an error (and no
    /// subscription; the connection stays usable for requests).
    pub(super) fn subscribe(&mut self, names: &[String]) -> Answer {
        if names.len() > MAX_WATCH_NAMES {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("a watch may list at most {MAX_WATCH_NAMES} names"),
            ));
        }
        let catalog = &self.shared.catalog;
        let visible = |i: usize| self.access.admin || self.access.can_read(i);
        let mut watched = vec![false; catalog.slots().len()];
        if names.is_empty() {
            for (i, w) in watched.iter_mut().enumerate() {
                *w = visible(i);
            }
        }
        for name in names {
            validate_name(name).map_err(|why| WireError::new(ErrorCode::InvalidRequest, why))?;
            match catalog.index_of(name) {
                Some(i) if visible(i) => watched[i] = true,
                None if self.shared.policy.would_allow(&self.access, name) => {
                    return Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("secret {name:?} is not in the catalog"),
                    ));
                }
                Some(_) | None => return Err(self.refuse_watch(name)),
            }
        }
        if !self.shared.audit.healthy() {
            return Err(audit_down());
        }
        let notices = catalog.subscribe();
        let actor = self.actor(ActorType::Client);
        let mut listed = Vec::new();
        for (i, _) in watched.iter().enumerate().filter(|(_, w)| **w) {
            let name = &catalog.slot(i).name;
            if !self
                .shared
                .audit
                .record(AuditEvent::new(Action::Watch, name, &actor, Outcome::Ok))
            {
                return Err(audit_down());
            }
            listed.push(name.to_string());
        }
        Ok(Reply::Watch(Subscription::new(listed, watched, notices)))
    }

    fn refuse_watch(&mut self, name: &str) -> WireError {
        let event = self.denied_event(Action::Watch, name);
        self.refuse(Action::Watch, name, false, "watch denied by policy", event);
        WireError::new(
            ErrorCode::PermissionDenied,
            format!("uid {} may not watch secret {name:?}", self.peer.uid),
        )
    }
}
