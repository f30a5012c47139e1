//! Watch: a connection that subscribed to change events.
//!
//! The cache broadcasts one pre-encoded event frame per change of a served value
//! ([`crate::cache::Notice`]); each watcher filters them by slot, coalesces what queued up per
//! name (only the newest event of a name is sent), and writes them in one go. The broadcast
//! never waits for a watcher: one that falls more than [`crate::cache::WATCH_QUEUE`] notices
//! behind gets a `Lagged` event, and one that stops reading is closed after
//! [`super::WRITE_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;

use interprocess::local_socket::tokio::Stream;
use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::{ChangeEvent, ErrorCode, MAX_WATCH_NAMES, Response, WireError, validate_name};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::connection::{write_frame, write_response};
use super::handler::{Session, audit_down, error};
use crate::cache::Notice;
use crate::store::audit::{Action, ActorType, AuditEvent, Outcome};

/// A granted subscription, before its stream starts.
pub(super) struct Subscription {
    /// Which slots this watcher may and wants to see, by slot index.
    watched: Vec<bool>,
    /// Change notices, subscribed before the `Watching` answer went out so none is missed.
    notices: broadcast::Receiver<Notice>,
}

impl Session<'_> {
    /// Answers a watch request into `out`: `Watching` plus a subscription, or an error (and no
    /// subscription; the connection stays usable for requests).
    pub(super) fn subscribe(
        &mut self,
        names: &[String],
        out: &mut Vec<u8>,
    ) -> Result<Option<Subscription>, FrameError> {
        if names.len() > MAX_WATCH_NAMES {
            error(
                out,
                ErrorCode::InvalidRequest,
                format!("a watch may list at most {MAX_WATCH_NAMES} names"),
            )?;
            return Ok(None);
        }
        let cache = &self.shared.cache;
        let visible = |i: usize| self.access.admin || self.access.can_read(i);
        let mut watched = vec![false; cache.slots().len()];
        if names.is_empty() {
            for (i, w) in watched.iter_mut().enumerate() {
                *w = visible(i);
            }
        }
        for name in names {
            if let Err(why) = validate_name(name) {
                error(out, ErrorCode::InvalidRequest, why)?;
                return Ok(None);
            }
            match cache.index_of(name) {
                Some(i) if visible(i) => watched[i] = true,
                Some(_) => {
                    self.refuse_watch(name, out)?;
                    return Ok(None);
                }
                None if self.shared.policy.would_allow(&self.access, name) => {
                    let why = format!("secret {name:?} is not in the catalog");
                    error(out, ErrorCode::NotFound, why)?;
                    return Ok(None);
                }
                None => {
                    self.refuse_watch(name, out)?;
                    return Ok(None);
                }
            }
        }
        if !self.shared.audit.healthy() {
            audit_down(out)?;
            return Ok(None);
        }
        let notices = cache.subscribe();
        let actor = self.actor(ActorType::Client);
        let mut listed = Vec::new();
        for (i, _) in watched.iter().enumerate().filter(|(_, w)| **w) {
            let name = &cache.slot(i).name;
            if !self
                .shared
                .audit
                .record(AuditEvent::new(Action::Watch, name, actor, Outcome::Ok))
            {
                audit_down(out)?;
                return Ok(None);
            }
            listed.push(name.to_string());
        }
        encode_frame(&Response::Watching(listed), out)?;
        Ok(Some(Subscription { watched, notices }))
    }

    fn refuse_watch(&mut self, name: &str, out: &mut Vec<u8>) -> Result<(), FrameError> {
        tracing::warn!(
            event = "access.denied",
            secret = name,
            uid = self.peer.uid,
            pid = self.peer.pid,
            "watch denied by policy"
        );
        self.shared
            .audit
            .record(self.denied_event(Action::Watch, name));
        error(
            out,
            ErrorCode::PermissionDenied,
            format!("uid {} may not watch secret {name:?}", self.peer.uid),
        )
    }
}

impl Subscription {
    /// Streams events until the client closes, sends anything, stops reading, or the daemon
    /// shuts down.
    pub(super) async fn stream(
        mut self,
        reader: &mut BufReader<&Stream>,
        writer: &mut &Stream,
        out: &mut Vec<u8>,
        cancel: &CancellationToken,
        lagged_total: &prometheus::IntCounter,
    ) {
        let mut pending: BTreeMap<usize, Arc<[u8]>> = BTreeMap::new();
        loop {
            let mut lagged = false;
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = reader.fill_buf() => {
                    if matches!(r, Ok(b) if !b.is_empty()) {
                        let v = WireError::new(
                            ErrorCode::ProtocolViolation,
                            "a watching connection may not send requests",
                        );
                        let _ = write_response(writer, &Response::Error(v), out).await;
                    }
                    return;
                }
                r = self.notices.recv() => match r {
                    Ok(n) => self.keep(n, &mut pending),
                    Err(RecvError::Lagged(_)) => lagged = true,
                    Err(RecvError::Closed) => return,
                },
            }
            // Coalesce whatever else is queued: the newest event per name wins.
            loop {
                match self.notices.try_recv() {
                    Ok(n) => self.keep(n, &mut pending),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            out.clear();
            if lagged {
                lagged_total.inc();
                let mut frame = Vec::new();
                if encode_frame(&Response::Event(ChangeEvent::Lagged), &mut frame).is_ok() {
                    out.extend_from_slice(&frame);
                }
            }
            for frame in std::mem::take(&mut pending).into_values() {
                out.extend_from_slice(&frame);
            }
            if !out.is_empty() && write_frame(writer, out).await.is_err() {
                return;
            }
        }
    }

    fn keep(&self, notice: Notice, pending: &mut BTreeMap<usize, Arc<[u8]>>) {
        if self.watched.get(notice.slot).copied().unwrap_or(false) {
            pending.insert(notice.slot, notice.frame);
        }
    }
}
