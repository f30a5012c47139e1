//! Change announcements: each slot tells watchers when the value it serves changes (a new
//! version or value, an override applied, cleared or expired). One pre-encoded event frame per
//! change goes to every watcher through one broadcast channel; it never carries a value, and
//! sending never waits for a watcher (a slow one lags, see `server::requests::watch`).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use secretd_proto::frame::encode_frame;
use secretd_proto::{ChangeEvent, Response, RotationRequest, SecretChange, SourceKind};
use tokio::sync::broadcast;

use super::entry::Entry;
use crate::util::lock::Recover;
use crate::util::time::unix_ms;

/// How many change notices a watcher may fall behind before it is told it lagged.
pub(crate) const WATCH_QUEUE: usize = 256;

/// A change of the value a slot serves, as broadcast to watchers.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    /// The slot's index (watchers filter on it without comparing names).
    pub(crate) slot: usize,
    /// The `Response::Event` frame, encoded once for every watcher. Holds no value.
    pub(crate) frame: Arc<[u8]>,
    /// The same event for watchers speaking protocol version 1, when it differs (a source kind
    /// that version does not know).
    pub(crate) legacy: Option<Arc<[u8]>>,
    /// What kind of event it is: a watcher keeps the newest of each kind per name.
    pub(crate) kind: NoticeKind,
}

/// The kinds of notice, which coalesce separately (a rotation request must not hide a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NoticeKind {
    /// The served value changed.
    Changed,
    /// GSM's rotation schedule asks for a new version (protocol 4 and later).
    RotationRequested,
}

/// The first protocol version that knows `ChangeEvent::RotationRequested`.
const ROTATION_REQUESTED_SINCE: u16 = 4;

impl Notice {
    /// The frame for a watcher speaking `protocol`, or `None` when that version does not
    /// know the event.
    pub(crate) fn frame_for(&self, protocol: u16) -> Option<&Arc<[u8]>> {
        match (&self.legacy, self.kind) {
            (_, NoticeKind::RotationRequested) if protocol < ROTATION_REQUESTED_SINCE => None,
            (Some(legacy), _) if protocol < 2 => Some(legacy),
            _ => Some(&self.frame),
        }
    }
}

/// What a slot last announced: a new notice goes out only when this changes.
type Served = (String, String, SourceKind);

/// One slot's announcer.
#[derive(Debug)]
pub(crate) struct Announcer {
    /// The slot's index, carried by its notices.
    index: usize,
    /// Where changes are announced (shared by all slots).
    events: broadcast::Sender<Notice>,
    /// The version, fingerprint and source last announced; the lock also keeps
    /// announcements of one slot in order.
    announced: Mutex<Option<Served>>,
}

impl Announcer {
    /// The announcer of slot `index`.
    pub(crate) fn new(index: usize, events: broadcast::Sender<Notice>) -> Announcer {
        Announcer {
            index,
            events,
            announced: Mutex::new(None),
        }
    }

    /// Announces what `served` returns (read under the announcer's lock, so two changes of one
    /// slot are announced in the order they happened), if it differs from the last
    /// announcement. A value withdrawn (revoked) after one was announced is announced as a
    /// change to an empty version and fingerprint: nothing is served. Never blocks on
    /// watchers.
    pub(crate) fn announce(&self, name: &str, served: impl FnOnce() -> Option<Arc<Entry>>) {
        let mut announced = self.announced.lock().recover();
        let key = match served() {
            Some(served) => (
                served.version.clone(),
                served.fingerprint.clone(),
                served.source,
            ),
            None => match announced.as_ref() {
                Some((version, _, source)) if !version.is_empty() => {
                    (String::new(), String::new(), *source)
                }
                _ => return,
            },
        };
        if announced.as_ref() == Some(&key) {
            return;
        }
        *announced = Some(key.clone());
        let (version, fingerprint, source) = key;
        let change = SecretChange {
            name: name.to_owned(),
            version,
            source,
            fingerprint,
            at_ms: unix_ms(SystemTime::now()),
        };
        let legacy_source = source.for_protocol(1);
        let legacy = (legacy_source != source).then(|| SecretChange {
            source: legacy_source,
            ..change.clone()
        });
        let encode = |change: SecretChange| -> Option<Arc<[u8]>> {
            let mut frame = Vec::new();
            let event = Response::Event(ChangeEvent::Changed(change));
            match encode_frame(&event, &mut frame) {
                Ok(()) => Some(frame.into()),
                Err(e) => {
                    tracing::error!(secret = name, error = %e, "cannot encode a change event");
                    None
                }
            }
        };
        let Some(frame) = encode(change) else {
            return;
        };
        // An error only means nobody is watching.
        let _ = self.events.send(Notice {
            slot: self.index,
            frame,
            legacy: legacy.and_then(encode),
            kind: NoticeKind::Changed,
        });
    }

    /// Tells watchers that GSM's rotation schedule asks for a new version of `name`.
    pub(crate) fn rotation_requested(&self, name: &str) {
        let event = Response::Event(ChangeEvent::RotationRequested(RotationRequest {
            name: name.to_owned(),
            at_ms: unix_ms(SystemTime::now()),
        }));
        let mut frame = Vec::new();
        if let Err(e) = encode_frame(&event, &mut frame) {
            tracing::error!(secret = name, error = %e, "cannot encode a rotation request");
            return;
        }
        let _ = self.events.send(Notice {
            slot: self.index,
            frame: frame.into(),
            legacy: None,
            kind: NoticeKind::RotationRequested,
        });
    }
}
