//! One client connection: the hello exchange, then frames in and responses out, each step
//! under a deadline. Protocol violations get one error response and the connection closes
//! (after a bad frame the stream cannot be trusted to be in sync).

use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::Stream;
use secretd_proto::frame::{FrameError, HEADER_LEN, body_len, decode_body, encode_frame};
use secretd_proto::{
    ErrorCode, MAGIC, PROTOCOL_VERSION, Request, Response, ServerHello, WireError,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

use super::handler::Session;
use super::{
    AUDIT_FLUSH_INTERVAL, FRAME_READ_TIMEOUT, HELLO_TIMEOUT, IDLE_TIMEOUT, Shared, WRITE_TIMEOUT,
};
use crate::peer::Peer;

/// Requests are small; this buffer usually takes a whole frame in one read.
const READ_BUFFER: usize = 1024;
/// Scratch buffers above this size are released after use rather than kept per connection.
const KEEP_BUFFER: usize = 16 * 1024;

/// Why reading the next request stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no request within {0:?}")]
    Idle(Duration),
    #[error("frame not completed within {FRAME_READ_TIMEOUT:?}")]
    SlowFrame,
}

/// A connected, credential-checked client.
pub(super) struct Connection {
    /// The socket.
    stream: Stream,
    /// Who connected, per the kernel.
    peer: Peer,
    /// Cache and policy.
    shared: Arc<Shared>,
}

impl Connection {
    pub(super) fn new(stream: Stream, peer: Peer, shared: Arc<Shared>) -> Connection {
        Connection {
            stream,
            peer,
            shared,
        }
    }

    pub(super) async fn run(self, cancel: CancellationToken) {
        let mut reader = BufReader::with_capacity(READ_BUFFER, &self.stream);
        let mut writer = &self.stream;
        let mut inbuf = Vec::new();
        let mut outbuf = Vec::new();
        let peer = &self.peer;
        tracing::debug!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "client connected"
        );

        // Hello first, within its deadline.
        let hello = tokio::select! {
            _ = cancel.cancelled() => return,
            r = read_frame(&mut reader, &mut inbuf, HELLO_TIMEOUT) => r,
        };
        let reply = match hello.map(|()| decode_body::<Request>(&inbuf)) {
            Ok(Ok(Request::Hello(h))) if h.magic != MAGIC => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                "bad hello magic",
            )),
            Ok(Ok(Request::Hello(h))) if h.protocol_version != PROTOCOL_VERSION => {
                Err(WireError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "this daemon speaks protocol version {PROTOCOL_VERSION}, the client sent {}",
                        h.protocol_version
                    ),
                ))
            }
            Ok(Ok(Request::Hello(_))) => Ok(()),
            Ok(Ok(other)) => Err(WireError::new(
                ErrorCode::ProtocolViolation,
                format!("expected hello as the first request, got {}", other.op()),
            )),
            Ok(Err(e)) => Err(WireError::new(ErrorCode::ProtocolViolation, e.to_string())),
            Err(e) => {
                self.on_read_error(&e, &mut writer, &mut outbuf).await;
                return;
            }
        };
        let hello_reply = match &reply {
            Ok(()) => Response::Hello(ServerHello {
                protocol_version: PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").into(),
            }),
            Err(e) => Response::Error(e.clone()),
        };
        if write_response(&mut writer, &hello_reply, &mut outbuf)
            .await
            .is_err()
            || reply.is_err()
        {
            return;
        }

        let mut session = Session::new(&self.shared, peer);
        let start = tokio::time::Instant::now() + AUDIT_FLUSH_INTERVAL;
        let mut flush_timer = tokio::time::interval_at(start, AUDIT_FLUSH_INTERVAL);
        let mut idle_deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
        loop {
            // Waiting for a first byte is cancel-safe, so the flush timer and shutdown may
            // interrupt it; reading the rest of a frame is never interrupted.
            let ready = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = flush_timer.tick() => {
                    session.flush();
                    continue;
                }
                r = wait_for_data(&mut reader, idle_deadline) => r,
            };
            if let Err(e) = ready.and(read_frame_now(&mut reader, &mut inbuf).await) {
                self.on_read_error(&e, &mut writer, &mut outbuf).await;
                break;
            }
            idle_deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
            let request = decode_body::<Request>(&inbuf);
            wipe(&mut inbuf);
            let request = match request {
                Ok(Request::Hello(_)) => Err(WireError::new(
                    ErrorCode::ProtocolViolation,
                    "hello may only be sent once",
                )),
                Ok(r) => Ok(r),
                Err(e) => Err(WireError::new(ErrorCode::ProtocolViolation, e.to_string())),
            };
            if let Ok(Request::Watch { names }) = &request {
                let subscription = match session.subscribe(names, &mut outbuf) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode watch answer");
                        break;
                    }
                };
                self.shared.metrics.request("watch", outcome(&outbuf));
                if write_frame(&mut writer, &mut outbuf).await.is_err() {
                    break;
                }
                if let Some(subscription) = subscription {
                    // Reads counted so far are written now: a watch can last for days.
                    session.flush();
                    let lagged = &self.shared.metrics.watch_lagged;
                    subscription
                        .stream(&mut reader, &mut writer, &mut outbuf, &cancel, lagged)
                        .await;
                    break;
                }
                continue;
            }
            let written = match request {
                Ok(request) => match session.respond(&request, &mut outbuf).await {
                    Ok(()) => {
                        self.shared.metrics.request(request.op(), outcome(&outbuf));
                        write_frame(&mut writer, &mut outbuf).await
                    }
                    Err(e) => {
                        tracing::error!(error = %e, op = request.op(), "cannot encode response");
                        let internal = WireError::new(ErrorCode::Internal, "response too large");
                        write_response(&mut writer, &Response::Error(internal), &mut outbuf).await
                    }
                },
                Err(violation) => {
                    tracing::debug!(uid = peer.uid, pid = peer.pid, error = %violation, "protocol violation");
                    let _ =
                        write_response(&mut writer, &Response::Error(violation), &mut outbuf).await;
                    break;
                }
            };
            if written.is_err() {
                break;
            }
        }
        session.flush();
        tracing::debug!(uid = peer.uid, pid = peer.pid, "client disconnected");
    }

    async fn on_read_error(&self, e: &ReadError, writer: &mut &Stream, outbuf: &mut Vec<u8>) {
        let violation = match e {
            ReadError::Frame(FrameError::Empty | FrameError::TooLarge { .. }) => {
                Some(WireError::new(ErrorCode::ProtocolViolation, e.to_string()))
            }
            _ => None,
        };
        tracing::debug!(uid = self.peer.uid, pid = self.peer.pid, error = %e, "closing connection");
        if let Some(v) = violation {
            let _ = write_response(writer, &Response::Error(v), outbuf).await;
        }
    }
}

/// Reads one frame body into `buf`: waits up to `wait` for its first byte, then
/// [`FRAME_READ_TIMEOUT`] for the rest.
async fn read_frame(
    reader: &mut BufReader<&Stream>,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> Result<(), ReadError> {
    wait_for_data(reader, tokio::time::Instant::now() + wait).await?;
    read_frame_now(reader, buf).await
}

/// Waits until the next frame's first byte has arrived (cancel-safe: consumes nothing).
async fn wait_for_data(
    reader: &mut BufReader<&Stream>,
    deadline: tokio::time::Instant,
) -> Result<(), ReadError> {
    let available = tokio::time::timeout_at(deadline, reader.fill_buf())
        .await
        .map_err(|_| ReadError::Idle(IDLE_TIMEOUT))?
        .map_err(FrameError::Io)?;
    if available.is_empty() {
        return Err(FrameError::Closed.into());
    }
    Ok(())
}

/// Reads a whole frame whose first byte is buffered, within [`FRAME_READ_TIMEOUT`].
async fn read_frame_now(
    reader: &mut BufReader<&Stream>,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    tokio::time::timeout(FRAME_READ_TIMEOUT, async {
        let mut header = [0u8; HEADER_LEN];
        reader
            .read_exact(&mut header)
            .await
            .map_err(eof_is_truncation)?;
        let len = body_len(header)?;
        buf.clear();
        buf.resize(len, 0);
        reader.read_exact(buf).await.map_err(eof_is_truncation)?;
        Ok::<(), FrameError>(())
    })
    .await
    .map_err(|_| ReadError::SlowFrame)?
    .map_err(ReadError::from)
}

fn eof_is_truncation(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

pub(super) async fn write_response(
    writer: &mut &Stream,
    response: &Response<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode_frame(response, buf)?;
    write_frame(writer, buf).await
}

/// Writes the encoded frame in `buf` under [`WRITE_TIMEOUT`], then wipes `buf` (responses
/// carry secret values).
pub(super) async fn write_frame(writer: &mut &Stream, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let result = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(buf)).await;
    wipe(buf);
    match result {
        Ok(r) => r.map_err(FrameError::Io),
        Err(_) => Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client did not read its response in time",
        ))),
    }
}

/// The result label of an encoded response frame: "ok", or the error code's name. Read from
/// the frame's tag (`Response::Error` is variant 3) and code, so handlers need not report it.
fn outcome(frame: &[u8]) -> &'static str {
    let tag = frame
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let code = frame
        .get(8..10)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes);
    match (tag, code) {
        (Some(3), Some(code)) => ErrorCode::from_u16(code).as_str(),
        _ => "ok",
    }
}

/// Zeroes a scratch buffer; releases it when it grew large, so one big frame does not make
/// every later wipe expensive.
fn wipe(buf: &mut Vec<u8>) {
    buf.zeroize();
    if buf.capacity() > KEEP_BUFFER {
        *buf = Vec::new();
    }
}

/// Tells a client over a connection limit to come back later, then closes.
pub(super) async fn refuse_busy(stream: Stream, refusal: super::limits::Refusal) {
    let mut writer = &stream;
    let message = match refusal {
        super::limits::Refusal::Total => "secretd is at its connection limit; retry shortly",
        super::limits::Refusal::PerUid => {
            "this uid holds as many connections as secretd allows one uid; close some or retry"
        }
    };
    let busy = Response::Error(WireError::new(ErrorCode::Busy, message));
    let mut buf = Vec::new();
    let _ = write_response(&mut writer, &busy, &mut buf).await;
}
