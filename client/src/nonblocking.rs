//! [`NonBlockingConnection`]: reads driven by somebody else's event loop (the Python client's
//! asyncio loop), with no thread and no runtime of this crate's.
//!
//! The owner registers [`NonBlockingConnection::fd`] for readability with its loop, starts a
//! read with [`NonBlockingConnection::start_get`], and calls [`NonBlockingConnection::advance`]
//! whenever the socket is readable. Every byte moved is counted (the same `Exchange` the
//! tokio client drives), so an owner whose caller gave up simply keeps calling `advance` and
//! discards the answer: the connection stays in step and no reconnect is paid.
//!
//! Writes never wait: a request is at most a few hundred bytes, and it is only ever sent once
//! the answer to the previous one has been read, so the daemon has drained the socket and the
//! whole request fits its buffer. A write that would block means the daemon stopped reading,
//! and the connection is given up.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use secretd_proto::{
    ClientHello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, validate_name,
};

use crate::client::unexpected;
use crate::error::{Error, ProtocolError, Result};
use crate::exchange::Exchange;
use crate::secret::Secret;

/// The label this library sends in its hello.
const CLIENT_LABEL: &str = concat!("secretd-client-nonblocking/", env!("CARGO_PKG_VERSION"));

/// What a call to [`NonBlockingConnection::advance`] came to.
#[derive(Debug)]
pub enum Progress {
    /// The answer is not all here yet: wait for the socket to be readable again.
    Pending,
    /// The daemon answered the hello: the connection takes requests now.
    Greeted,
    /// The answer to the read that was started: the value, or the daemon's refusal (the
    /// connection stays usable either way).
    Secret(Result<Secret>),
}

/// One connection to the daemon on a non-blocking socket, driven by its owner's event loop.
#[derive(Debug)]
pub struct NonBlockingConnection {
    /// The socket (non-blocking).
    stream: UnixStream,
    /// Where it is connected, for errors.
    path: PathBuf,
    /// The exchange under way, every byte moved counted.
    exchange: Exchange,
    /// What the exchange under way is.
    awaiting: Awaiting,
    /// The protocol version both sides speak, once greeted.
    protocol: u16,
}

/// The answer the connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// The hello's.
    Hello,
    /// A read's.
    Get,
    /// None: greeted and idle.
    Nothing,
}

impl NonBlockingConnection {
    /// Connects without waiting (a daemon whose backlog is full is reported, not waited for),
    /// checks who answers before a byte is sent, and sends the hello. Call
    /// [`NonBlockingConnection::advance`] when the socket is readable until it says
    /// [`Progress::Greeted`].
    pub fn connect(path: &Path) -> Result<NonBlockingConnection> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = connect_nonblocking(path).map_err(connect_err)?;
        crate::trust::check_fd(stream.as_fd(), path).map_err(|d| Error::UntrustedServer {
            path: path.to_owned(),
            why: d.0,
        })?;
        let mut conn = NonBlockingConnection {
            stream,
            path: path.to_owned(),
            exchange: Exchange::default(),
            awaiting: Awaiting::Hello,
            protocol: PROTOCOL_VERSION,
        };
        conn.send(&Request::Hello(ClientHello::new(CLIENT_LABEL)))?;
        Ok(conn)
    }

    /// The socket, to register for readability.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the connection is greeted and no read is under way: it may take a request.
    pub fn is_idle(&self) -> bool {
        self.awaiting == Awaiting::Nothing
    }

    /// Sends a read of `name`. A bad name is refused before anything is sent; a connection
    /// that is not idle refuses too (one request at a time, as the protocol says).
    pub fn start_get(&mut self, name: &str) -> Result<()> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        if !self.is_idle() {
            return Err(ProtocolError::InFlight.into());
        }
        self.send(&Request::Get { name: name.into() })?;
        self.awaiting = Awaiting::Get;
        Ok(())
    }

    /// Reads what has arrived, without waiting. An error means the connection is unusable
    /// (closed, out of step or refused at hello): drop it.
    pub fn advance(&mut self) -> Result<Progress> {
        loop {
            if self.exchange.answered() {
                return self.conclude();
            }
            match self.stream.read(self.exchange.read_target()) {
                Ok(0) => {
                    return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => self.exchange.read(n)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// The answer is whole: decodes it as what was awaited.
    fn conclude(&mut self) -> Result<Progress> {
        let answer = self.exchange.finish(self.protocol);
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        match awaiting {
            Awaiting::Nothing => Err(ProtocolError::Unasked.into()),
            Awaiting::Hello => match answer? {
                Response::Hello(h)
                    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) =>
                {
                    self.protocol = h.protocol_version;
                    Ok(Progress::Greeted)
                }
                Response::Hello(h) => Err(ProtocolError::Version(h.protocol_version).into()),
                Response::Error(e) => Err(Error::Daemon(e)),
                other => Err(unexpected("hello", &other)),
            },
            Awaiting::Get => Ok(Progress::Secret(match answer? {
                Response::Secret(reply) => Ok(Secret::from_reply(reply)),
                Response::Error(e) => Err(Error::Daemon(e)),
                other => Err(unexpected("get", &other)),
            })),
        }
    }

    /// Starts `req` and writes it whole, at once.
    fn send(&mut self, req: &Request) -> Result<()> {
        if !self.exchange.in_step() {
            return Err(ProtocolError::InFlight.into());
        }
        self.exchange.start(req)?;
        while !self.exchange.unsent().is_empty() {
            match send_nosignal(&self.stream, self.exchange.unsent()) {
                Ok(n) => self.exchange.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(ProtocolError::NotReading.into());
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(())
    }
}

impl AsFd for NonBlockingConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// `send` without SIGPIPE: a daemon that went away is an error to report, not a signal that
/// kills a host program which never ignored it.
fn send_nosignal(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: bytes is valid for reads of its length; the fd is an open socket.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A non-blocking Unix stream socket connected to `path`. `connect` on a Unix socket either
/// completes at once or fails (`EAGAIN` when the daemon's backlog is full): it never waits.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    // socket2 opens it close-on-exec.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}
