//! One connected, greeted socket to the daemon.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secretd_proto::frame::{HEADER_LEN, encode_frame, read_frame, read_reply};
use secretd_proto::legacy::decode_response;
use secretd_proto::{
    ClientHello, FrameError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response,
};
use zeroize::Zeroize;

use crate::error::{Error, ProtocolError, Result};

/// The label this library sends in its hello.
const CLIENT_LABEL: &str = concat!("secretd-client/", env!("CARGO_PKG_VERSION"));

/// A socket that has completed the hello exchange.
pub(crate) struct Connection {
    /// The stream, with read and write timeouts set.
    stream: UnixStream,
    /// The socket path, for error messages.
    path: PathBuf,
    /// The read timeout in force, for error messages.
    timeout: Duration,
    /// The protocol version agreed in the hello.
    pub(crate) protocol: u16,
    /// Frame scratch, reused between requests and wiped after each one, since responses
    /// carry secret values.
    buf: Vec<u8>,
}

impl Connection {
    /// Connects and says hello; once more on a new connection if a stopping daemon closed
    /// the first one unanswered ([`Error::closed_before_answer`]).
    pub(crate) fn open(path: &Path, timeout: Duration) -> Result<Connection> {
        Error::again_if_closed(|| {
            let mut conn = Connection::connect_checked(path, timeout)?;
            let hello = conn.hello()?;
            conn.accept_hello(hello)?;
            Ok(conn)
        })
    }

    /// Connects and sends the hello and `first` in one write, then reads both answers: a
    /// program that asks once pays one round trip, not two. `first` must be encoded alike by
    /// every protocol version the daemon may answer with (a get is). Sent once more on a new
    /// connection if a stopping daemon closed the first one before answering (every request
    /// is idempotent, and this one was never answered).
    pub(crate) fn open_with(
        path: &Path,
        timeout: Duration,
        first: &Request,
    ) -> Result<(Connection, Response<'static>)> {
        Error::again_if_closed(|| Connection::open_with_once(path, timeout, first))
    }

    fn open_with_once(
        path: &Path,
        timeout: Duration,
        first: &Request,
    ) -> Result<(Connection, Response<'static>)> {
        let mut conn = Connection::connect_checked(path, timeout)?;
        let mut second = Vec::new();
        encode_frame(
            &Request::Hello(ClientHello::new(CLIENT_LABEL)),
            &mut conn.buf,
        )?;
        let encoded = encode_frame(first, &mut second);
        conn.buf.extend_from_slice(&second);
        second.zeroize();
        encoded?;
        let written = conn.stream.write_all(&conn.buf);
        conn.buf.zeroize();
        if let Err(e) = written {
            // Refused at once (busy): the daemon closed without reading; its answer waits.
            return Err(conn.refusal_after(e));
        }
        // The hello's answer exactly (the next answer may already be in the same bytes).
        let hello = read_frame(&mut conn.stream, &mut conn.buf)
            .and_then(|()| decode_response(&conn.buf, conn.protocol));
        conn.buf.zeroize();
        conn.accept_hello(hello.map_err(|e| conn.frame_error(e))?)?;
        let answer = conn.read_answer();
        conn.buf.zeroize();
        Ok((conn, answer?))
    }

    /// Connects to `path` and checks who answers, before a byte is sent.
    fn connect_checked(path: &Path, timeout: Duration) -> Result<Connection> {
        let stream = connect_within(path, timeout).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        // Before a single byte goes out: is this the real daemon?
        crate::trust::check(&stream, path).map_err(|d| Error::UntrustedServer {
            path: path.to_owned(),
            why: d.0,
        })?;
        stream.set_read_timeout(Some(timeout)).map_err(Error::Io)?;
        stream.set_write_timeout(Some(timeout)).map_err(Error::Io)?;
        Ok(Connection {
            stream,
            path: path.to_owned(),
            timeout,
            protocol: PROTOCOL_VERSION,
            buf: Vec::new(),
        })
    }

    /// Takes the daemon's answer to the hello: the protocol both speak, or why not.
    fn accept_hello(&mut self, answer: Response<'static>) -> Result<()> {
        match answer {
            Response::Hello(h)
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) =>
            {
                self.protocol = h.protocol_version;
                Ok(())
            }
            Response::Hello(h) => Err(ProtocolError::Version(h.protocol_version).into()),
            Response::Error(e) => Err(Error::Daemon(e)),
            other => Err(ProtocolError::unexpected("hello", &other)),
        }
    }

    /// The hello exchange. A daemon that refuses a connection (`Busy`) answers at once and
    /// closes without reading, so sending the hello can fail with a broken pipe while the
    /// refusal waits in the receive buffer: read it, so the caller learns why.
    fn hello(&mut self) -> Result<Response<'static>> {
        match self.call(&Request::Hello(ClientHello::new(CLIENT_LABEL))) {
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(self.refusal_after(e))
            }
            other => other,
        }
    }

    /// The daemon's refusal waiting in the receive buffer after a write failed with `e`, or
    /// `e` when there is none.
    fn refusal_after(&mut self, e: std::io::Error) -> Error {
        let refusal = read_reply(&mut self.stream, &mut self.buf)
            .and_then(|()| decode_response(&self.buf[HEADER_LEN..], self.protocol));
        self.buf.zeroize();
        match refusal {
            Ok(Response::Error(w)) => Error::Daemon(w),
            Ok(other) => ProtocolError::unexpected("hello", &other),
            Err(_) => Error::Io(e),
        }
    }

    /// Sends one request and reads its response.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Response<'static>> {
        let result = self.exchange(req);
        self.buf.zeroize();
        result
    }

    /// Sends a request whose answer starts a stream (watch), reading exactly the answer's
    /// frame and nothing of what follows it.
    pub(crate) fn call_opening_stream(&mut self, req: &Request) -> Result<Response<'static>> {
        encode_frame(req, &mut self.buf)?;
        let written = self.stream.write_all(&self.buf).map_err(Error::Io);
        self.buf.zeroize();
        written?;
        self.receive()
    }

    /// Like [`Connection::call`], waiting up to `timeout` for the response instead of the
    /// connection's usual timeout (for operations that do slow work, like a refresh).
    pub(crate) fn call_slow(
        &mut self,
        req: &Request,
        timeout: Duration,
        usual: Duration,
    ) -> Result<Response<'static>> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(Error::Io)?;
        self.timeout = timeout;
        let result = self.call(req);
        self.timeout = usual;
        self.stream
            .set_read_timeout(Some(usual))
            .map_err(Error::Io)?;
        result
    }

    /// Reads the next frame the daemon sends unasked (watch events), waiting as long as the
    /// stream's read timeout allows.
    pub(crate) fn receive(&mut self) -> Result<Response<'static>> {
        let result = read_frame(&mut self.stream, &mut self.buf)
            .and_then(|()| decode_response(&self.buf, self.protocol));
        self.buf.zeroize();
        Ok(result?)
    }

    /// Waits for frames without a deadline (a watch stream may be quiet for days).
    pub(crate) fn wait_forever(&mut self) -> Result<()> {
        self.stream.set_read_timeout(None).map_err(Error::Io)
    }

    /// Waits up to `timeout` for the daemon to send something (or close). Never consumes.
    pub(crate) fn readable_within(&self, timeout: Duration) -> Result<bool> {
        let mut fds = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut fds, 1, ms) } {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(Error::Io(e))
                }
            }
        }
    }

    /// A second handle to the socket, so another thread can shut it down.
    pub(crate) fn try_clone_stream(&self) -> Result<UnixStream> {
        self.stream.try_clone().map_err(Error::Io)
    }

    fn exchange(&mut self, req: &Request) -> Result<Response<'static>> {
        encode_frame(req, &mut self.buf)?;
        let written = self.stream.write_all(&self.buf);
        written.map_err(|e| Error::from_io(e, &self.path, self.timeout))?;
        self.read_answer()
    }

    /// Reads and decodes the answer to the request just sent.
    fn read_answer(&mut self) -> Result<Response<'static>> {
        let read = read_reply(&mut self.stream, &mut self.buf);
        read.map_err(|e| self.frame_error(e))?;
        Ok(decode_response(&self.buf[HEADER_LEN..], self.protocol)?)
    }

    /// A frame-layer failure as the caller's error (a timeout reads as one).
    fn frame_error(&self, e: FrameError) -> Error {
        match e {
            FrameError::Io(io) => Error::from_io(io, &self.path, self.timeout),
            other => other.into(),
        }
    }
}

/// Connects to `path`, waiting at most `timeout` when the daemon's queue of new connections
/// is full: the kernel wakes a blocking connect as soon as the daemon accepts (no polling),
/// and the send timeout bounds that wait (`EAGAIN` after it, reported as "busy").
fn connect_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    // socket2 opens it close-on-exec.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // A send timeout of zero means none at all: never wait unbounded.
    socket.set_write_timeout(Some(timeout.max(MIN_CONNECT_WAIT)))?;
    let addr = SockAddr::unix(path)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match socket.connect(&addr) {
            // A signal handler (Python's, say) interrupted the wait: the socket is still
            // unconnected, so ask again while there is time.
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    && std::time::Instant::now() < deadline => {}
            Err(e) => return Err(e),
            Ok(()) => return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket))),
        }
    }
}

/// The shortest wait for a full connection queue, whatever the timeout says (a zero send
/// timeout would mean no limit at all).
const MIN_CONNECT_WAIT: Duration = Duration::from_millis(1);
