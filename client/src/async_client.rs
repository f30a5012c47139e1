//! The tokio client (`tokio` feature): [`AsyncClient`].
//!
//! Cancellation safety is the point of its design. Every request runs on a task of its own
//! that owns the connection it uses, from the request's first byte to its answer's last; the
//! caller only awaits that task's result. A caller's future dropped at any await point (a
//! `timeout`, a `select!`) leaves the task to finish the exchange and put the connection back
//! in the pool, in step: the next call never reads an answer meant for a cancelled one, and a
//! cancellation costs no reconnect (no hello, no audit record, no slot of the per-uid cap).
//!
//! Many tasks share one client: up to [`MAX_ASYNC_CONNECTIONS`] requests run at once, each on a
//! pooled connection; more wait their turn.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secretd_proto::frame::{HEADER_LEN, body_len, decode_body, encode_frame};
use secretd_proto::{
    ClientHello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, SecretStatus,
    validate_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use zeroize::Zeroize;

use crate::client::{DEFAULT_TIMEOUT, REFRESH_TIMEOUT, unexpected};
use crate::error::{Error, Result};
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
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
}

/// One greeted connection.
#[derive(Debug)]
struct AsyncConnection {
    /// The socket.
    stream: UnixStream,
    /// Frame scratch, wiped after every exchange (answers carry values).
    buf: Vec<u8>,
}

impl AsyncConnection {
    /// Connects, checks who answers (before a byte is sent), and says hello.
    async fn open(path: &Path, timeout: Duration) -> Result<AsyncConnection> {
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
            buf: Vec::new(),
        };
        match conn
            .exchange(
                &Request::Hello(ClientHello::new(CLIENT_LABEL)),
                path,
                timeout,
            )
            .await?
        {
            Response::Hello(h)
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) =>
            {
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

    /// Sends one request and reads its answer, within `timeout`.
    async fn exchange(
        &mut self,
        req: &Request,
        path: &Path,
        timeout: Duration,
    ) -> Result<Response<'static>> {
        let result = tokio::time::timeout(timeout, self.exchange_unbounded(req))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    path: path.to_owned(),
                    after: timeout,
                })
            });
        self.buf.zeroize();
        result
    }

    async fn exchange_unbounded(&mut self, req: &Request) -> Result<Response<'static>> {
        encode_frame(req, &mut self.buf)?;
        self.stream.write_all(&self.buf).await.map_err(Error::Io)?;
        let mut header = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(Error::Io)?;
        let len = body_len(header)?;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.stream
            .read_exact(&mut self.buf)
            .await
            .map_err(Error::Io)?;
        Ok(decode_body::<Response<'static>>(&self.buf)?)
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
        })
    }

    /// Connects to [`crate::default_socket_path`].
    pub async fn connect_default() -> Result<AsyncClient> {
        AsyncClient::connect(crate::default_socket_path()).await
    }

    /// Reads a secret.
    pub async fn get(&self, name: &str) -> Result<Secret> {
        validate_name(name).map_err(Error::InvalidArgument)?;
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

    /// Runs `req` on a task of its own (see the module docs) and returns its answer.
    async fn call(&self, req: Request, slow: Option<Duration>) -> Result<Response<'static>> {
        let permit = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Protocol("the client was shut down".into()))?;
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let answer = inner.run(req, slow, permit).await;
            // The caller may be gone (cancelled): the exchange still finished in step.
            let _ = tx.send(answer);
        });
        rx.await
            .unwrap_or_else(|_| Err(Error::Protocol("the request task ended early".into())))
    }
}

impl Inner {
    /// One request on a pooled connection (a fresh one when none is idle), retried once on a
    /// fresh connection when a pooled one turns out to be dead (the daemon restarted).
    async fn run(
        &self,
        req: Request,
        slow: Option<Duration>,
        _permit: OwnedSemaphorePermit,
    ) -> Result<Response<'static>> {
        let timeout = slow.unwrap_or(self.timeout);
        let pooled = self.take_idle();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => AsyncConnection::open(&self.path, self.timeout).await?,
        };
        let mut result = conn.exchange(&req, &self.path, timeout).await;
        if reused && result.as_ref().is_err_and(Error::worth_a_retry) {
            conn = AsyncConnection::open(&self.path, self.timeout).await?;
            result = conn.exchange(&req, &self.path, timeout).await;
        }
        match result {
            // An I/O error, a protocol error or a timeout leaves the connection out of step:
            // it is dropped, never pooled.
            Err(e) if e.breaks_connection() => Err(e),
            Ok(Response::Error(e)) => {
                self.put_idle(conn);
                Err(Error::Daemon(e))
            }
            other => {
                self.put_idle(conn);
                other
            }
        }
    }

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
