//! Watching secrets for changes: a blocking iterator of events on a connection of its own,
//! which resubscribes by itself when the daemon restarts.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use secretd_proto::{ChangeEvent, Request, Response};

use crate::cache::ClientCache;
use crate::connection::Connection;
use crate::error::{Error, ProtocolError, Result};

/// The first pause before resubscribing after the connection broke.
pub const RESUBSCRIBE_MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between resubscription attempts.
pub const RESUBSCRIBE_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A stream of [`ChangeEvent`]s for some secrets, from [`crate::Client::watch`].
///
/// `next()` blocks until an event arrives. When the connection breaks (the daemon restarted),
/// `next()` yields that error once, then resubscribes with backoff and yields
/// [`ChangeEvent::Lagged`]: changes may have been missed, so re-read what you hold. If the
/// daemon refuses the resubscription (the policy changed), that error is the last item.
/// The iterator ends after [`WatchStopper::stop`].
pub struct Watch {
    /// The daemon's socket, for resubscribing.
    path: PathBuf,
    /// The names asked for (empty: every name the caller may read).
    requested: Vec<String>,
    /// Timeout of the connect and subscribe exchange.
    timeout: Duration,
    /// The subscribed connection; `None` while resubscribing.
    conn: Option<Connection>,
    /// The names the daemon confirmed on the last subscription.
    watching: Vec<String>,
    /// Current pause between resubscription attempts.
    backoff: Duration,
    /// Set when the daemon refused a resubscription: the iterator has ended.
    finished: bool,
    /// Shared with [`WatchStopper`]s.
    stop: Arc<StopSignal>,
    /// The cache of the client this watch came from, emptied of what an item reports before
    /// the caller sees it: a `get` after an event must not read the old value from the cache
    /// because the cache's own watch heard the event a moment later.
    observer: Option<Arc<ClientCache>>,
}

/// Ends a [`Watch`] from any thread, waking a blocked `next()`.
#[derive(Clone)]
pub struct WatchStopper(Arc<StopSignal>);

/// A watch running on its own thread, from [`crate::Client::watch_with`]. Stops (and waits
/// for the thread) when dropped.
pub struct WatchHandle {
    /// Stops the watch.
    stopper: WatchStopper,
    /// The thread calling the callback.
    thread: Option<JoinHandle<()>>,
}

/// How one resubscription attempt ended.
enum Attempt {
    /// With what `next()` returns: `Lagged` after success, the refusal, or `None` when stopped.
    Settled(Option<Result<ChangeEvent>>),
    /// A transient failure; the backoff pause is over.
    Retry,
}

#[derive(Default)]
struct StopSignal {
    /// Whether the watch was stopped.
    stopped: Mutex<bool>,
    /// Wakes a resubscription backoff early.
    wake: Condvar,
    /// A clone of the live socket, shut down on stop to wake a blocked read.
    socket: Mutex<Option<UnixStream>>,
}

impl StopSignal {
    fn stopped(&self) -> bool {
        *lock(&self.stopped)
    }

    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
        if let Some(s) = lock(&self.socket).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Sleeps `d` unless stopped first. Returns whether the watch is still running.
    fn pause(&self, d: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        !*guard
    }

    /// Registers the live socket; shuts it at once if a stop raced with the subscription.
    fn register(&self, conn: &Connection) -> Result<()> {
        let clone = conn.try_clone_stream()?;
        *lock(&self.socket) = Some(clone);
        if self.stopped() {
            self.stop();
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watch {
    /// Connects and subscribes; a refusal (unknown name, no access) is returned here.
    pub(crate) fn open(path: PathBuf, names: Vec<String>, timeout: Duration) -> Result<Watch> {
        let stop = Arc::new(StopSignal::default());
        let (conn, watching) = subscribe(&path, &names, timeout, &stop)?;
        Ok(Watch {
            path,
            requested: names,
            timeout,
            conn: Some(conn),
            watching,
            backoff: RESUBSCRIBE_MIN_BACKOFF,
            finished: false,
            stop,
            observer: None,
        })
    }

    /// The names the daemon confirmed it watches for this subscription.
    pub fn names(&self) -> &[String] {
        &self.watching
    }

    /// A handle that ends this watch from another thread.
    pub fn stopper(&self) -> WatchStopper {
        WatchStopper(self.stop.clone())
    }

    /// Runs this watch on a new thread, calling `callback` for every item.
    pub(crate) fn spawn<F>(mut self, mut callback: F) -> Result<WatchHandle>
    where
        F: FnMut(Result<ChangeEvent>) + Send + 'static,
    {
        let stopper = self.stopper();
        let thread = std::thread::Builder::new()
            .name("secretd-watch".into())
            .spawn(move || {
                for item in self.by_ref() {
                    callback(item);
                }
            })
            .map_err(Error::Io)?;
        Ok(WatchHandle {
            stopper,
            thread: Some(thread),
        })
    }

    /// Resubscribes, waiting out failures with backoff until it works, is refused or stopped.
    fn resubscribe(&mut self) -> Option<Result<ChangeEvent>> {
        loop {
            match self.attempt(None) {
                Attempt::Settled(item) => return item,
                Attempt::Retry => {}
            }
        }
    }

    /// One resubscription attempt; after a transient failure it pauses (at most `max_pause`)
    /// before saying [`Attempt::Retry`].
    fn attempt(&mut self, max_pause: Option<Duration>) -> Attempt {
        if self.stop.stopped() {
            return Attempt::Settled(None);
        }
        match subscribe(&self.path, &self.requested, self.timeout, &self.stop) {
            Ok((conn, watching)) => {
                self.conn = Some(conn);
                self.watching = watching;
                self.backoff = RESUBSCRIBE_MIN_BACKOFF;
                Attempt::Settled(Some(Ok(ChangeEvent::Lagged)))
            }
            Err(e @ Error::Daemon(_)) if e.code() != Some(secretd_proto::ErrorCode::Busy) => {
                self.finished = true;
                Attempt::Settled(Some(Err(e)))
            }
            Err(_) => {
                let pause = max_pause.map_or(self.backoff, |m| m.min(self.backoff));
                if !self.stop.pause(pause) {
                    return Attempt::Settled(None);
                }
                self.backoff = (self.backoff * 2).min(RESUBSCRIBE_MAX_BACKOFF);
                Attempt::Retry
            }
        }
    }
}

impl Watch {
    /// Makes this watch empty `cache` of what it reports, before its caller sees it.
    pub(crate) fn observed_by(mut self, cache: Option<Arc<ClientCache>>) -> Watch {
        self.observer = cache;
        self
    }

    /// Hands `item` to the caller, after the client's cache has forgotten what it reports.
    fn deliver(&self, item: Option<Result<ChangeEvent>>) -> Option<Result<ChangeEvent>> {
        if let (Some(cache), Some(item)) = (&self.observer, &item) {
            cache.observe(item);
        }
        item
    }

    /// Like `next()`, but gives up after `timeout` with `Some(Ok(None))` when nothing arrived
    /// (so a caller can check for signals or shutdown between waits). `None` means ended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Option<ChangeEvent>>> {
        if self.finished || self.stop.stopped() {
            return None;
        }
        let Some(conn) = self.conn.as_ref() else {
            return match self.attempt(Some(timeout)) {
                Attempt::Settled(item) => self.deliver(item).map(|r| r.map(Some)),
                Attempt::Retry => Some(Ok(None)),
            };
        };
        match conn.readable_within(timeout) {
            Ok(false) => Some(Ok(None)),
            Ok(true) => self.next().map(|r| r.map(Some)),
            Err(e) => {
                self.conn = None;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for Watch {
    type Item = Result<ChangeEvent>;

    fn next(&mut self) -> Option<Result<ChangeEvent>> {
        let item = self.next_item();
        self.deliver(item)
    }
}

impl Watch {
    /// The next item, before the client's cache hears of it.
    fn next_item(&mut self) -> Option<Result<ChangeEvent>> {
        if self.finished || self.stop.stopped() {
            return None;
        }
        let Some(conn) = self.conn.as_mut() else {
            return self.resubscribe();
        };
        let received = conn.receive();
        if self.stop.stopped() {
            return None;
        }
        match received {
            Ok(Response::Event(event)) => Some(Ok(event)),
            Ok(Response::Error(e)) => {
                self.conn = None;
                Some(Err(Error::Daemon(e)))
            }
            Ok(other) => {
                self.conn = None;
                Some(Err(ProtocolError::unexpected("a watch stream", &other)))
            }
            Err(e) => {
                self.conn = None;
                Some(Err(e))
            }
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("path", &self.path)
            .field("watching", &self.watching)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl WatchStopper {
    /// Ends the watch: a blocked `next()` returns `None` promptly, as do all later calls.
    pub fn stop(&self) {
        self.0.stop();
    }
}

impl std::fmt::Debug for WatchStopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchStopper")
    }
}

impl WatchHandle {
    /// Stops the watch and waits for its thread (unless called from the callback itself).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.shut();
    }
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchHandle")
    }
}

/// Opens a connection and turns it into a watch stream for `names`.
fn subscribe(
    path: &std::path::Path,
    names: &[String],
    timeout: Duration,
    stop: &StopSignal,
) -> Result<(Connection, Vec<String>)> {
    let mut conn = Connection::open(path, timeout)?;
    let request = Request::Watch {
        names: names.to_vec(),
    };
    match conn.call_opening_stream(&request)? {
        Response::Watching(watching) => {
            conn.wait_forever()?;
            stop.register(&conn)?;
            Ok((conn, watching))
        }
        Response::Error(e) => Err(Error::Daemon(e)),
        other => Err(ProtocolError::unexpected("watch", &other)),
    }
}
