//! Watch: a connection that subscribed to change events.
//!
//! The catalog broadcasts one pre-encoded event frame per change of a served value
//! (`catalog::announce`); each watcher filters them by slot, coalesces what queued up per
//! name (only the newest event of a name is sent), and writes them in one go. The broadcast
//! never waits for a watcher: one that falls more than `WATCH_QUEUE` notices behind gets a
//! `Lagged` event, and one that stops reading is closed after [`super::WRITE_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;

use secretd_proto::frame::encode_frame;
use secretd_proto::{ChangeEvent, ErrorCode, MAX_WATCH_NAMES, Response, WireError, validate_name};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::framed::Framed;
use super::reply::{Answer, Reply, audit_down};
use super::session::Session;
use crate::audit::{Action, ActorType, AuditEvent, Outcome};
use crate::catalog::announce::{Notice, NoticeKind};

/// A granted subscription, before its stream starts.
#[derive(Debug)]
pub(super) struct Subscription {
    /// The names watched, as the `Watching` answer lists them.
    names: Vec<String>,
    /// Which slots this watcher may and wants to see, by slot index.
    watched: Vec<bool>,
    /// Change notices, subscribed before the `Watching` answer went out so none is missed.
    notices: broadcast::Receiver<Notice>,
}

impl Session<'_> {
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
        Ok(Reply::Watch(Subscription {
            names: listed,
            watched,
            notices,
        }))
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

impl Subscription {
    /// The names watched.
    pub(super) fn names(&self) -> &[String] {
        &self.names
    }

    /// Streams events until the client closes, sends anything, stops reading, or the daemon
    /// shuts down.
    pub(super) async fn stream(
        mut self,
        framed: &mut Framed,
        cancel: &CancellationToken,
        protocol: u16,
        lagged_total: &prometheus::IntCounter,
    ) {
        let mut pending: BTreeMap<(usize, NoticeKind), Arc<[u8]>> = BTreeMap::new();
        let mut lagged_frame = Vec::new();
        if encode_frame(&Response::Event(ChangeEvent::Lagged), &mut lagged_frame).is_err() {
            tracing::error!("cannot encode the lagged event");
            return;
        }
        loop {
            let mut lagged = false;
            tokio::select! {
                _ = cancel.cancelled() => return,
                spoke = framed.client_spoke() => {
                    if spoke {
                        let v = WireError::new(
                            ErrorCode::ProtocolViolation,
                            "a watching connection may not send requests",
                        );
                        let _ = framed.send_response(&Response::Error(v)).await;
                    }
                    return;
                }
                r = self.notices.recv() => match r {
                    Ok(n) => self.keep(&n, protocol, &mut pending),
                    Err(RecvError::Lagged(_)) => lagged = true,
                    Err(RecvError::Closed) => return,
                },
            }
            // Coalesce whatever else is queued: the newest event per name wins.
            loop {
                match self.notices.try_recv() {
                    Ok(n) => self.keep(&n, protocol, &mut pending),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if lagged {
                lagged_total.inc();
            }
            let batch = std::mem::take(&mut pending);
            let lag = lagged.then_some(lagged_frame.as_slice());
            let frames = lag.into_iter().chain(batch.values().map(|f| &f[..]));
            if framed.send_encoded(frames).await.is_err() {
                return;
            }
        }
    }

    /// Keeps the newest notice of each kind per watched name, in the form `protocol` reads.
    fn keep(
        &self,
        notice: &Notice,
        protocol: u16,
        pending: &mut BTreeMap<(usize, NoticeKind), Arc<[u8]>>,
    ) {
        if self.watched.get(notice.slot).copied().unwrap_or(false)
            && let Some(frame) = notice.frame_for(protocol)
        {
            pending.insert((notice.slot, notice.kind), frame.clone());
        }
    }
}
