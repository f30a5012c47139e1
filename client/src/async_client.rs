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

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use secretd_proto::frame::{HEADER_LEN, response_body_len};
use secretd_proto::legacy::decode_response;
use secretd_proto::{
    ClientHello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, SecretStatus,
    validate_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use zeroize::Zeroize;

use crate::async_watch::AsyncWatch;
use crate::cache::ClientCache;
use crate::client::{DEFAULT_TIMEOUT, REFRESH_TIMEOUT, unexpected};
use crate::error::{Error, Result};
use crate::exchange::Exchange;
use crate::secret::Secret;

/// Requests one [`AsyncClient`] runs at once, each on a connection of its own; more wait.
pub const MAX_ASYNC_CONNECTIONS: usize = 8;

/// The label this library sends in its hello.
const CLIENT_LABEL: &str = concat!("secretd-client-async/", env!("CARGO_PKG_VERSION"));

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

/// One greeted connection and the progress of the exchange on it.
#[derive(Debug)]
pub(crate) struct AsyncConnection {
    /// The socket.
    stream: UnixStream,
    /// The exchange under way, if any, with every byte moved counted.
    exchange: Exchange,
    /// The request timeout: one timer for the connection's life, moved to a later deadline
    /// for each exchange, which tokio does without the timer driver's lock (a timer per call
    /// would take it twice, and the runtime's workers share it).
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Frames that arrive unasked (a watch's events), read whole; wiped after each.
    input: Vec<u8>,
    /// The protocol version both sides speak, once the hello is answered (decides how status
    /// rows are laid out).
    protocol: u16,
}

impl AsyncConnection {
    /// Connects, checks who answers (before a byte is sent), and says hello.
    pub(crate) async fn open(path: &Path, timeout: Duration) -> Result<AsyncConnection> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect {
                path: path.to_owned(),
                source,
            })?;
        crate::trust::check_fd(stream.as_fd(), path).map_err(|d| Error::UntrustedServer {
            path: path.to_owned(),
            why: d.0,
        })?;
        let mut conn = AsyncConnection {
            stream,
            exchange: Exchange::default(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            input: Vec::new(),
            protocol: PROTOCOL_VERSION,
        };
        conn.start(&Request::Hello(ClientHello::new(CLIENT_LABEL)))?;
        match conn.finish(path, timeout).await? {
            Response::Hello(h)
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) =>
            {
                conn.protocol = h.protocol_version;
                Ok(conn)
            }
            Response::Hello(h) => Err(Error::Protocol(format!(
                "daemon answered hello with protocol version {}",
                h.protocol_version
            ))),
            Response::Error(e) => Err(Error::Daemon(e)),
            other => Err(Error::Protocol(format!(
                "daemon answered hello with a {} message",
                other.kind()
            ))),
        }
    }

    /// Sends a request that turns the connection into a stream (a watch) and reads its first
    /// answer; the rest come from [`AsyncConnection::receive`]. Only for a connection that is
    /// never pooled again.
    pub(crate) async fn open_stream(&mut self, req: &Request) -> Result<Response<'static>> {
        self.start(req)?;
        let written = self.stream.write_all(self.exchange.unsent()).await;
        // The answers are read as unasked frames: this exchange ends here.
        let _ = self.exchange.finish(self.protocol);
        written.map_err(Error::Io)?;
        self.receive().await
    }

    /// Reads one whole frame (on a stream, where frames come unasked).
    pub(crate) async fn receive(&mut self) -> Result<Response<'static>> {
        let mut header = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(Error::Io)?;
        let len = response_body_len(header)?;
        self.input.clear();
        self.input.resize(len, 0);
        let read = self
            .stream
            .read_exact(&mut self.input)
            .await
            .map_err(Error::Io);
        let answer = read.and_then(|_| Ok(decode_response(&self.input, self.protocol)?));
        self.input.zeroize();
        answer
    }

    /// Queues `req` as the exchange to drive.
    fn start(&mut self, req: &Request) -> Result<()> {
        self.exchange.start(req)
    }

    /// Whether no exchange is under way: the connection may go back to the pool.
    fn in_step(&self) -> bool {
        self.exchange.in_step()
    }

    /// Drives the exchange to its end within `timeout` and decodes the answer.
    async fn finish(&mut self, path: &Path, timeout: Duration) -> Result<Response<'static>> {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        let driven = tokio::select! {
            biased;
            r = Self::drive(&self.stream, &mut self.exchange) => r,
            () = self.timer.as_mut() => Err(Error::Timeout {
                path: path.to_owned(),
                after: timeout,
            }),
        };
        // Ends the exchange either way, wiping what was read.
        let answer = self.exchange.finish(self.protocol);
        driven.and(answer)
    }

    /// Writes the rest of the request and reads the rest of the answer. Cancel-safe: every
    /// byte moved is counted before the next await, so a later call resumes where this stopped.
    async fn drive(stream: &UnixStream, exchange: &mut Exchange) -> Result<()> {
        while !exchange.unsent().is_empty() {
            stream.writable().await.map_err(Error::Io)?;
            match stream.try_write(exchange.unsent()) {
                Ok(n) => exchange.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        while !exchange.answered() {
            stream.readable().await.map_err(Error::Io)?;
            match stream.try_read(exchange.read_target()) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => exchange.read(n)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        // The whole answer is in, and the daemon sends nothing unasked on this connection, so
        // the socket is empty: forget the readiness the answer left, without a syscall, so the
        // next exchange parks at once instead of first trying a `recv` that fails with EAGAIN.
        // (A close still wakes it: tokio never clears the read-closed state.)
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        Ok(())
    }
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
                target.apply(&Err(Error::Protocol("the cache's watch ended".into())));
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
            .map_err(|_| Error::Protocol("the client was shut down".into()))?;
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
            return Err(Error::Protocol("no connection to send on".into()));
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
