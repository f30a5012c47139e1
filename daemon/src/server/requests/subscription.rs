//! A granted watch: which slots it sees and the catalog's change notices.
//!
//! The catalog broadcasts one pre-encoded event frame per change of a served value
//! (`catalog::announce`); each watcher filters them by slot, coalesces what queued up per
//! name (only the newest event of a name is sent), and hands the transport one batch to write.
//! The broadcast never waits for a watcher: one that falls more than `WATCH_QUEUE` notices
//! behind gets a `Lagged` event, and one that stops reading is closed after the transport's
//! write deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use secretd_proto::frame::encode_frame;
use secretd_proto::{ChangeEvent, Response};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::catalog::announce::{Notice, NoticeKind};

/// A granted subscription, before its stream starts.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The names watched, as the `Watching` answer lists them.
    names: Vec<String>,
    /// Which slots this watcher may and wants to see, by slot index.
    watched: Vec<bool>,
    /// Change notices, subscribed before the `Watching` answer went out so none is missed.
    notices: broadcast::Receiver<Notice>,
}

impl Subscription {
    /// A subscription to `notices` for the slots marked in `watched`, listed as `names`.
    pub(super) fn new(
        names: Vec<String>,
        watched: Vec<bool>,
        notices: broadcast::Receiver<Notice>,
    ) -> Subscription {
        Subscription {
            names,
            watched,
            notices,
        }
    }

    /// The names watched.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The subscription's events, in the form a client speaking `protocol` reads.
    pub(crate) fn events(self, protocol: u16) -> Events {
        Events {
            subscription: self,
            protocol,
            lagged: false,
            pending: BTreeMap::new(),
        }
    }

    /// Keeps the newest notice of each kind per watched name, in the form `protocol` reads.
    fn keep_newest(
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

/// A granted watch's stream of events, batched: whatever queued up while the last batch was
/// written is coalesced (the newest event of each name and kind wins).
#[derive(Debug)]
pub(crate) struct Events {
    /// What is watched, and the notices.
    subscription: Subscription,
    /// The protocol version the client reads.
    protocol: u16,
    /// Whether the last batch began with `Lagged`.
    lagged: bool,
    /// Encoded events waiting for the next batch, by slot and kind.
    pending: BTreeMap<(usize, NoticeKind), Arc<[u8]>>,
}

impl Events {
    /// Waits for the next notices and puts their frames, coalesced, into `out` (a `Lagged`
    /// event first when notices were lost). False when no more can come (the daemon is
    /// stopping). Cancel-safe: the only wait is the broadcast's receive.
    pub(crate) async fn next_batch(&mut self, out: &mut Vec<u8>) -> bool {
        out.clear();
        self.lagged = false;
        match self.subscription.notices.recv().await {
            Ok(n) => self.keep(&n),
            Err(RecvError::Lagged(_)) => self.lagged = true,
            Err(RecvError::Closed) => return false,
        }
        loop {
            match self.subscription.notices.try_recv() {
                Ok(n) => self.keep(&n),
                Err(TryRecvError::Lagged(_)) => self.lagged = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if self.lagged && encode_frame(&Response::Event(ChangeEvent::Lagged), out).is_err() {
            tracing::error!("cannot encode the lagged event");
            out.clear();
        }
        for frame in std::mem::take(&mut self.pending).values() {
            out.extend_from_slice(frame);
        }
        true
    }

    /// Whether the batch [`Events::next_batch`] made last began with `Lagged`.
    pub(crate) fn lagged(&self) -> bool {
        self.lagged
    }

    fn keep(&mut self, notice: &Notice) {
        self.subscription
            .keep_newest(notice, self.protocol, &mut self.pending);
    }
}
