//! The tokio client (`tokio` feature): [`AsyncClient`].
//!
//! Cancellation safety is the point of its design. A request runs in the caller's own future
//! on a pooled connection, and the connection records every byte it has written and read as it
//! goes (an [`Exchange`]; each step is a non-blocking `try_write`/`try_read` after a readiness
//! wait, so nothing is lost at an await point). When the caller's future is dropped mid-exchange (a `timeout`, a
//! `select!`), the guard holding the connection hands it to a task that finishes the exchange
//! from where it stopped, discards the answer and puts the connection back in the pool, in step:
//! the next call never reads an answer meant for a cancelled one, and a cancellation costs no
//! reconnect (no hello, no audit record, no slot of the per-uid cap). The common path, with no
//! cancellation, costs no task hop.
//!
//! Many tasks share one client: up to [`MAX_ASYNC_CONNECTIONS`] requests run at once, each on a
//! pooled connection; more wait their turn.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use secretd_proto::{Request, Response, SecretStatus, validate_name};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::async_connection::AsyncConnection;
use crate::async_watch::AsyncWatch;
use crate::cache::ClientCache;
use crate::client::{DEFAULT_TIMEOUT, REFRESH_TIMEOUT, unexpected};
use crate::error::{Error, ProtocolError, Result};
use crate::secret::Secret;

/// Requests one [`AsyncClient`] runs at once, each on a connection of its own; more wait.
pub const MAX_ASYNC_CONNECTIONS: usize = 8;

/// A tokio client of the daemon: `Send + Sync`, cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub struct AsyncClient {
    /// What the clones share.
    inner: Arc<Inner>,
    /// The client-side cache, when [`AsyncClient::with_cache`] turned it on (shared by the
    /// clones made after that).
    cache: Option<Arc<AsyncCache>>,
}

/// The client-side cache of an [`AsyncClient`] and the task that keeps it honest.
struct AsyncCache {
    /// The values (the same store as the blocking client's cache).
    values: Arc<ClientCache>,
    /// Applies the watch's items to `values`; aborted (closing the watch) when the last
    /// client sharing this cache is dropped.
    feeder: JoinHandle<()>,
}

impl Drop for AsyncCache {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

impl std::fmt::Debug for AsyncCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncCache")
            .field("entries", &self.values.len())
            .finish()
    }
}

/// The shared state.
#[derive(Debug)]
struct Inner {
    /// Where to connect.
    path: PathBuf,
    /// The per-request timeout.
    timeout: Duration,
    /// Idle connections, in step, ready for a request.
    idle: Mutex<Vec<AsyncConnection>>,
    /// One permit per request in flight (a cancelled request's finishing task keeps its own).
    slots: Arc<Semaphore>,
}

/// A connection lent to one request. Dropped with the exchange unfinished (the caller's
/// future was cancelled), it hands the connection to a task that finishes the exchange and
/// pools it.
struct Lent {
    /// The pool to return to.
    inner: Arc<Inner>,
    /// The connection; taken when the request settles it itself.
    conn: Option<AsyncConnection>,
    /// The request's slot, held until the connection is back.
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.in_step() {
            self.inner.put_idle(conn);
            return;
        }
        let (inner, permit) = (self.inner.clone(), self.permit.take());
        // Without a runtime (it is shutting down) the connection is simply closed.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _permit = permit;
                // The answer is discarded (and wiped); only a connection in step is pooled.
                if conn.finish(&inner.path, inner.timeout).await.is_ok() {
                    inner.put_idle(conn);
                }
            });
        }
    }
}

impl AsyncClient {
    /// Connects to the daemon at `path` (one connection, greeted; more open as tasks need).
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient> {
        let path = path.as_ref().to_owned();
        let first = AsyncConnection::open(&path, DEFAULT_TIMEOUT).await?;
        Ok(AsyncClient {
            inner: Arc::new(Inner {
                path,
                timeout: DEFAULT_TIMEOUT,
                idle: Mutex::new(vec![first]),
                slots: Arc::new(Semaphore::new(MAX_ASYNC_CONNECTIONS)),
            }),
            cache: None,
        })
    }

    /// Connects to [`crate::default_socket_path`].
    pub async fn connect_default() -> Result<AsyncClient> {
        AsyncClient::connect(crate::default_socket_path()).await
    }

    /// Turns on the client-side cache, as [`crate::Client::with_cache`] does: values this
    /// client (and its later clones) reads are kept in locked, no-dump memory and served
    /// without a round trip until a change event, a `Lagged` event, a disconnect or the
    /// value's expiry empties them. A watch on its own connection and task delivers the events.
    pub async fn with_cache(mut self) -> Result<AsyncClient> {
        if self.cache.is_none() {
            let mut watch = self.watch(Vec::<String>::new()).await?;
            let values = ClientCache::live();
            let target = values.clone();
            let feeder = tokio::spawn(async move {
                while let Some(item) =
                    std::future::poll_fn(|cx| Pin::new(&mut watch).poll_next(cx)).await
                {
                    target.apply(&item);
                }
                // The watch ended (refused on resubscription): never serve from the cache again.
                target.apply(&Err(ProtocolError::WatchEnded.into()));
            });
            self.cache = Some(Arc::new(AsyncCache { values, feeder }));
        }
        Ok(self)
    }

    /// Whether the client-side cache is on.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// How many values the client-side cache holds (0 when it is off).
    pub fn cached_len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.values.len())
    }

    /// The value the client-side cache holds for `name`, if it is on and holds one: no I/O,
    /// no await (for callers that can skip a future when it hits, such as the Python client).
    pub fn cached_get(&self, name: &str) -> Option<Secret> {
        self.cache.as_ref()?.values.get(name)
    }

    /// Reads a secret (from the client-side cache when it is on and holds it).
    pub async fn get(&self, name: &str) -> Result<Secret> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        let Some(cache) = &self.cache else {
            return self.fetch(name).await;
        };
        if let Some(hit) = cache.values.get(name) {
            return Ok(hit);
        }
        let ticket = cache.values.ticket();
        let secret = self.fetch(name).await?;
        if let Some(ticket) = ticket {
            cache.values.insert(ticket, name, &secret);
        }
        Ok(secret)
    }

    /// Reads a secret from the daemon.
    async fn fetch(&self, name: &str) -> Result<Secret> {
        match self.call(Request::Get { name: name.into() }, None).await? {
            Response::Secret(reply) => Ok(Secret::from_reply(reply)),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Every catalog entry this caller may see (never values).
    pub async fn status(&self) -> Result<Vec<SecretStatus>> {
        match self.call(Request::Status, None).await? {
            Response::Status(rows) => Ok(rows),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Admin: fetches one secret (or all) from its source now.
    pub async fn refresh(&self, name: Option<&str>) -> Result<Vec<secretd_proto::RefreshOutcome>> {
        if let Some(n) = name {
            validate_name(n).map_err(Error::InvalidArgument)?;
        }
        let req = Request::Refresh {
            name: name.map(str::to_owned),
        };
        match self.call(req, Some(REFRESH_TIMEOUT)).await? {
            Response::Refreshed(list) => Ok(list),
            other => Err(unexpected("refresh", &other)),
        }
    }

    /// Watches secrets for changes on a connection of its own: a `futures` `Stream` of
    /// [`ChangeEvent`](crate::ChangeEvent)s (never values: read the new value with [`AsyncClient::get`]). An empty
    /// list watches every secret the caller may read. Names the caller may not read are refused
    /// here, as is a name not in the catalog. See [`AsyncWatch`] for reconnection.
    pub async fn watch<I, S>(&self, names: I) -> Result<AsyncWatch>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = crate::client::watch_names(names)?;
        let observer = self.cache.as_ref().map(|c| c.values.clone());
        AsyncWatch::open(self.inner.path.clone(), names, self.inner.timeout, observer).await
    }

    /// Runs `req` on a pooled connection (a fresh one when none is idle), retried once on a
    /// fresh connection when a pooled one turns out to be dead (the daemon restarted).
    async fn call(&self, req: Request, slow: Option<Duration>) -> Result<Response<'static>> {
        let inner = &self.inner;
        let permit = inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProtocolError::ShutDown)?;
        let timeout = slow.unwrap_or(inner.timeout);
        let pooled = inner.take_idle();
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => AsyncConnection::open(&inner.path, inner.timeout).await?,
        };
        let mut lent = Lent {
            inner: inner.clone(),
            conn: Some(conn),
            permit: Some(permit),
        };
        let mut result = lent.exchange(&req, timeout).await;
        if reused && result.as_ref().is_err_and(Error::worth_a_retry) {
            lent.conn = Some(AsyncConnection::open(&inner.path, inner.timeout).await?);
            result = lent.exchange(&req, timeout).await;
        }
        match result {
            Ok(Response::Error(e)) => Err(Error::Daemon(e)),
            other => other,
        }
    }
}

impl Lent {
    /// One exchange; the connection goes back to the pool when this returns (dropped instead
    /// when the exchange failed: an I/O error, a protocol error or a timeout leaves it out of
    /// step). Cancelled, the [`Drop`] of `self` finishes it.
    async fn exchange(&mut self, req: &Request, timeout: Duration) -> Result<Response<'static>> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ProtocolError::NoConnection.into());
        };
        conn.start(req)?;
        let result = conn.finish(&self.inner.path, timeout).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Inner {
    fn take_idle(&self) -> Option<AsyncConnection> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_idle(&self, conn: AsyncConnection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_ASYNC_CONNECTIONS {
            idle.push(conn);
        }
    }
}
