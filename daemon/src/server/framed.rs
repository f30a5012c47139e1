//! A framed connection: it owns the socket's halves and the two scratch buffers, reads whole
//! request frames under their deadlines, and writes replies. Every buffer that held a request
//! or a reply is wiped after use (requests can carry envelopes, replies carry values).
//!
//! Nothing here assumes which runtime thread drives it: it is a plain value the connection
//! task owns.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use interprocess::local_socket::tokio::Stream;
use secretd_proto::frame::{FrameError, HEADER_LEN, body_len, decode_body, encode_frame};
use secretd_proto::{ErrorCode, Request, Response, WireError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf};
use zeroize::Zeroize;

use super::reply::Reply;
use super::{FRAME_READ_TIMEOUT, WRITE_TIMEOUT};

/// Requests are small; this buffer usually takes a whole frame in one read.
pub(super) const READ_BUFFER: usize = 1024;
/// Scratch buffers above this size are released after use rather than kept per connection.
const KEEP_BUFFER: usize = 16 * 1024;

/// Why reading the next request stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The frame layer failed: closed, truncated, oversize, or an I/O error.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// No request arrived in time.
    #[error("no request within {0:?}")]
    Idle(Duration),
    /// A frame started but did not finish in time.
    #[error("frame not completed within {FRAME_READ_TIMEOUT:?}")]
    SlowFrame,
}

impl ReadError {
    /// The error the client is told before the connection closes, when there is one to tell
    /// (a closed or idle connection has nobody listening).
    pub(super) fn violation(&self) -> Option<WireError> {
        match self {
            ReadError::Frame(FrameError::Empty | FrameError::TooLarge { .. }) => Some(
                WireError::new(ErrorCode::ProtocolViolation, self.to_string()),
            ),
            _ => None,
        }
    }
}

/// The reading side of a shared stream (`&Stream` reads and writes; interprocess recommends
/// sharing the stream over splitting it).
#[derive(Debug)]
struct ReadSide {
    /// Bytes a dedicated thread had read but not used when it handed the connection back
    /// (usually none); served before the socket. Wiped once read.
    carried: Vec<u8>,
    /// The socket.
    stream: Arc<Stream>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.carried.is_empty() {
            let n = this.carried.len().min(buf.remaining());
            buf.put_slice(&this.carried[..n]);
            this.carried[..n].zeroize();
            this.carried.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut &*this.stream).poll_read(cx, buf)
    }
}

/// A connection taken off the runtime for a dedicated thread: its socket in blocking-capable
/// form and the bytes already read from it but not yet used.
pub(super) struct Detached {
    /// The socket, no longer registered with the runtime.
    pub(super) stream: std::os::unix::net::UnixStream,
    /// Buffered request bytes (a pipelined request); the caller wipes them after use.
    pub(super) buffered: Vec<u8>,
}

/// One client connection's socket and buffers.
#[derive(Debug)]
pub(super) struct Framed {
    /// Buffered reads: `fill_buf` lets the loop wait for a first byte without consuming
    /// anything, which makes that wait safe to cancel.
    reader: BufReader<ReadSide>,
    /// The same stream, for writes.
    stream: Arc<Stream>,
    /// The body of the frame being read; wiped after decoding.
    inbuf: Vec<u8>,
    /// The frame being written; wiped after every write.
    outbuf: Vec<u8>,
}

impl Framed {
    /// Takes over an accepted stream.
    pub(super) fn new(stream: Stream) -> Framed {
        Framed::with_carried(stream, Vec::new())
    }

    fn with_carried(stream: Stream, carried: Vec<u8>) -> Framed {
        let stream = Arc::new(stream);
        let read_side = ReadSide {
            carried,
            stream: stream.clone(),
        };
        Framed {
            reader: BufReader::with_capacity(READ_BUFFER, read_side),
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        }
    }

    /// Takes the socket off the runtime (deregistered, so its readiness no longer wakes a
    /// worker) with whatever was read ahead of it.
    pub(super) fn detach(self) -> std::io::Result<Detached> {
        let Framed {
            reader,
            stream,
            mut inbuf,
            mut outbuf,
        } = self;
        wipe(&mut inbuf);
        wipe(&mut outbuf);
        let mut buffered = reader.buffer().to_vec();
        let ReadSide { mut carried, .. } = reader.into_inner();
        buffered.append(&mut carried);
        let stream = Arc::try_unwrap(stream)
            .map_err(|_| std::io::Error::other("the stream is still shared"))?;
        let Stream::UdSocket(stream) = stream;
        let fd = std::os::fd::OwnedFd::try_from(stream)?;
        Ok(Detached {
            stream: fd.into(),
            buffered,
        })
    }

    /// Puts a detached socket back on the runtime (call within it), with the bytes read
    /// ahead of it.
    pub(super) fn reattach(detached: Detached) -> std::io::Result<Framed> {
        let Detached { stream, buffered } = detached;
        stream.set_nonblocking(true)?;
        let fd = std::os::fd::OwnedFd::from(stream);
        let stream = interprocess::os::unix::uds_local_socket::tokio::Stream::try_from(fd)?;
        Ok(Framed::with_carried(Stream::from(stream), buffered))
    }

    /// Waits until the next frame's first byte has arrived (the caller bounds the wait).
    /// Cancel-safe: consumes nothing.
    pub(super) async fn wait_for_data(&mut self) -> Result<(), ReadError> {
        let available = self.reader.fill_buf().await.map_err(FrameError::Io)?;
        if available.is_empty() {
            return Err(FrameError::Closed.into());
        }
        Ok(())
    }

    /// Reads the frame whose first byte is buffered, within [`FRAME_READ_TIMEOUT`], and
    /// decodes it. A frame that reads but does not decode is the inner `Err`: the client gets
    /// a protocol violation. Not cancel-safe: never race it against anything.
    pub(super) async fn read_request(&mut self) -> Result<Result<Request, WireError>, ReadError> {
        let (reader, buf) = (&mut self.reader, &mut self.inbuf);
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
        .map_err(|_| ReadError::SlowFrame)??;
        let request = decode_body::<Request>(&self.inbuf)
            .map_err(|e| WireError::new(ErrorCode::ProtocolViolation, e.to_string()));
        wipe(&mut self.inbuf);
        Ok(request)
    }

    /// Waits up to `wait` for a frame, then reads it.
    pub(super) async fn read_request_within(
        &mut self,
        wait: Duration,
    ) -> Result<Result<Request, WireError>, ReadError> {
        tokio::time::timeout(wait, self.wait_for_data())
            .await
            .map_err(|_| ReadError::Idle(wait))??;
        self.read_request().await
    }

    /// Encodes and writes `reply` for a client speaking `protocol`. A reply too large to encode becomes an `Internal` error
    /// (logged), so the client is never left waiting.
    pub(super) async fn send(&mut self, reply: &Reply, protocol: u16) -> Result<(), FrameError> {
        encode_reply(reply, protocol, &mut self.outbuf)?;
        self.flush_out().await
    }

    /// Encodes and writes a protocol-level response (hello, violations, `Busy`).
    pub(super) async fn send_response(
        &mut self,
        response: &Response<'_>,
    ) -> Result<(), FrameError> {
        encode_frame(response, &mut self.outbuf)?;
        self.flush_out().await
    }

    /// Writes already encoded frames in one go (a watcher's batch of events).
    pub(super) async fn send_encoded<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), FrameError> {
        self.outbuf.clear();
        for frame in frames {
            self.outbuf.extend_from_slice(frame);
        }
        if self.outbuf.is_empty() {
            return Ok(());
        }
        self.flush_out().await
    }

    /// Resolves when the client sends anything or closes: true if it sent bytes. Cancel-safe.
    pub(super) async fn client_spoke(&mut self) -> bool {
        matches!(self.reader.fill_buf().await, Ok(b) if !b.is_empty())
    }

    /// Writes `outbuf` under [`WRITE_TIMEOUT`], then wipes it.
    async fn flush_out(&mut self) -> Result<(), FrameError> {
        let mut writer = &*self.stream;
        let result = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&self.outbuf)).await;
        wipe(&mut self.outbuf);
        match result {
            Ok(r) => r.map_err(FrameError::Io),
            Err(_) => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client did not read its response in time",
            ))),
        }
    }
}

/// Encodes `reply` into `out`; a reply too large to encode becomes an `Internal` error
/// (logged), so the client is never left waiting.
pub(super) fn encode_reply(
    reply: &Reply,
    protocol: u16,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if let Err(e) = reply.encode(out, protocol) {
        wipe(out);
        tracing::error!(error = %e, "cannot encode a response");
        let internal = WireError::new(ErrorCode::Internal, "response too large");
        return encode_frame(&Response::Error(internal), out);
    }
    Ok(())
}

pub(super) fn eof_is_truncation(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Zeroes a scratch buffer; releases it when it grew large, so one big frame does not make
/// every later wipe expensive.
pub(super) fn wipe(buf: &mut Vec<u8>) {
    buf.zeroize();
    if buf.capacity() > KEEP_BUFFER {
        *buf = Vec::new();
    }
}
