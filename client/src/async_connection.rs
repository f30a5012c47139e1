//! One greeted connection to the daemon on tokio, and the exchange under way on it: what the
//! pooled [`crate::AsyncClient`] lends to each request and what an [`crate::AsyncWatch`]
//! subscribes on.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use secretd_proto::frame::{HEADER_LEN, response_body_len};
use secretd_proto::legacy::decode_response;
use secretd_proto::{ClientHello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use zeroize::Zeroize;

use crate::error::{Error, ProtocolError, Result};
use crate::exchange::Exchange;

/// How an async connection introduces itself in its hello (the daemon logs it).
const CLIENT_LABEL: &str = concat!("secretd-client-async/", env!("CARGO_PKG_VERSION"));

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
    /// Connects, checks who answers (before a byte is sent), and says hello; once more on a
    /// new connection if a stopping daemon closed the first one unanswered
    /// ([`Error::closed_before_answer`]).
    pub(crate) async fn open(path: &Path, timeout: Duration) -> Result<AsyncConnection> {
        match AsyncConnection::open_once(path, timeout).await {
            Err(e) if e.closed_before_answer() => AsyncConnection::open_once(path, timeout).await,
            other => other,
        }
    }

    async fn open_once(path: &Path, timeout: Duration) -> Result<AsyncConnection> {
        let stream = connect_within(path, timeout)
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
            Response::Hello(h) => Err(ProtocolError::Version(h.protocol_version).into()),
            Response::Error(e) => Err(Error::Daemon(e)),
            other => Err(ProtocolError::unexpected("hello", &other)),
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
    pub(crate) fn start(&mut self, req: &Request) -> Result<()> {
        self.exchange.start(req)
    }

    /// Whether no exchange is under way: the connection may go back to the pool.
    pub(crate) fn in_step(&self) -> bool {
        self.exchange.in_step()
    }

    /// Drives the exchange to its end within `timeout` and decodes the answer.
    pub(crate) async fn finish(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<Response<'static>> {
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

/// The first pause before connecting again to a daemon whose queue of new connections was
/// full; it doubles up to [`CONNECT_RETRY_MAX`].
pub(crate) const CONNECT_RETRY_MIN: Duration = Duration::from_millis(1);
/// The longest pause between such connects.
pub(crate) const CONNECT_RETRY_MAX: Duration = Duration::from_millis(50);

/// Connects to `path`. A non-blocking connect to a Unix socket whose queue is full fails at
/// once with `EAGAIN` (a burst of clients, a connect flood): it is tried again after a pause
/// that doubles, until `timeout` has passed (then `EAGAIN` is the error, reported as "busy").
async fn connect_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = CONNECT_RETRY_MIN;
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                tokio::time::sleep_until((now + pause).min(deadline)).await;
                pause = (pause * 2).min(CONNECT_RETRY_MAX);
            }
            other => return other,
        }
    }
}
