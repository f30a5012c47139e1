//! Watching secrets from tokio: [`AsyncWatch`], a `futures` [`Stream`] of [`ChangeEvent`]s
//! that resubscribes by itself when the daemon restarts, like the blocking [`crate::Watch`].
//!
//! A task of its own owns the subscribed connection and feeds a bounded channel; the stream
//! only receives from it. Dropping the stream ends the task (and closes the connection) at
//! once, whatever it was waiting for, so a watch is cancel-safe by construction.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use secretd_proto::{ChangeEvent, ErrorCode, Request, Response};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::async_connection::AsyncConnection;
use crate::cache::ClientCache;
use crate::error::{Error, ProtocolError, Result};
use crate::watch::{RESUBSCRIBE_MAX_BACKOFF, RESUBSCRIBE_MIN_BACKOFF};

/// Events buffered between the watch task and a slow consumer. The daemon coalesces changes
/// per name, so a full buffer only delays the task's reads; nothing is lost on this side.
const EVENT_BUFFER: usize = 64;

/// A stream of [`ChangeEvent`]s for some secrets, from [`crate::AsyncClient::watch`].
///
/// When the connection breaks (the daemon restarted), the stream yields that error once, then
/// resubscribes with backoff and yields [`ChangeEvent::Lagged`]: changes may have been missed,
/// so re-read what you hold. If the daemon refuses the resubscription (the policy changed),
/// that error is the last item. Drop the stream to stop watching.
pub struct AsyncWatch {
    /// The names the daemon confirmed on the first subscription.
    watching: Vec<String>,
    /// Items from the watch task.
    events: mpsc::Receiver<Result<ChangeEvent>>,
    /// The watch task, aborted when the stream is dropped.
    task: JoinHandle<()>,
}

impl AsyncWatch {
    /// Connects and subscribes; a refusal (unknown name, no access) is returned here.
    /// `observer` is the client's cache, emptied of what each item reports before the stream
    /// yields it (so a `get` after an event never reads the old value from the cache).
    pub(crate) async fn open(
        path: PathBuf,
        names: Vec<String>,
        timeout: Duration,
        observer: Option<Arc<ClientCache>>,
    ) -> Result<AsyncWatch> {
        let (conn, watching) = subscribe(&path, &names, timeout).await?;
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let out = Outbox { tx, observer };
        let task = tokio::spawn(run(path, names, timeout, conn, out));
        Ok(AsyncWatch {
            watching,
            events,
            task,
        })
    }

    /// The names the daemon confirmed it watches for this subscription.
    pub fn names(&self) -> &[String] {
        &self.watching
    }
}

impl Stream for AsyncWatch {
    type Item = Result<ChangeEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for AsyncWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for AsyncWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncWatch")
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

/// Opens a connection and turns it into a watch stream.
async fn subscribe(
    path: &Path,
    names: &[String],
    timeout: Duration,
) -> Result<(AsyncConnection, Vec<String>)> {
    let mut conn = AsyncConnection::open(path, timeout).await?;
    let request = Request::Watch {
        names: names.to_vec(),
    };
    let answer = tokio::time::timeout(timeout, conn.open_stream(&request))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                path: path.to_owned(),
                after: timeout,
            })
        })?;
    match answer {
        Response::Watching(watching) => Ok((conn, watching)),
        Response::Error(e) => Err(Error::Daemon(e)),
        other => Err(ProtocolError::unexpected("watch", &other)),
    }
}

/// Where the watch task puts items: the stream's channel, after the client's cache heard them.
struct Outbox {
    /// To the stream.
    tx: mpsc::Sender<Result<ChangeEvent>>,
    /// The client's cache, if it has one.
    observer: Option<Arc<ClientCache>>,
}

impl Outbox {
    /// Sends `item`; `Err` when the stream was dropped.
    async fn send(&self, item: Result<ChangeEvent>) -> std::result::Result<(), ()> {
        if let Some(cache) = &self.observer {
            cache.observe(&item);
        }
        self.tx.send(item).await.map_err(|_| ())
    }

    /// Resolves when the stream was dropped.
    async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// The watch task: forwards events, and after a break resubscribes with backoff. Ends when the
/// stream is dropped or the daemon refuses a resubscription.
async fn run(
    path: PathBuf,
    names: Vec<String>,
    timeout: Duration,
    mut conn: AsyncConnection,
    tx: Outbox,
) {
    loop {
        let broke = loop {
            match conn.receive().await {
                Ok(Response::Event(event)) => {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(Response::Error(e)) => break Error::Daemon(e),
                Ok(other) => {
                    break ProtocolError::unexpected("a watch stream", &other);
                }
                Err(e) => break e,
            }
        };
        if tx.send(Err(broke)).await.is_err() {
            return;
        }
        let mut backoff = RESUBSCRIBE_MIN_BACKOFF;
        conn = loop {
            match subscribe(&path, &names, timeout).await {
                Ok((fresh, _)) => break fresh,
                Err(e @ Error::Daemon(_)) if e.code() != Some(ErrorCode::Busy) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(_) => {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RESUBSCRIBE_MAX_BACKOFF);
                }
            }
        };
        if tx.send(Ok(ChangeEvent::Lagged)).await.is_err() {
            return;
        }
    }
}
