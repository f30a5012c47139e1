use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secretd_proto::{ErrorCode, FrameError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, WireError};

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client call failed. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answered at the socket path: no socket file, nobody listening on it, or not
    /// allowed to reach it.
    #[error("{}", connect_message(path, source))]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The process behind the socket cannot be the real daemon (wrong user, or a socket in a
    /// directory others can write); nothing was sent to it.
    #[error("refusing to talk to the process at {}: {why}", path.display())]
    UntrustedServer {
        /// The socket path.
        path: PathBuf,
        /// What failed the check.
        why: String,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(#[from] WireError),
    /// The daemon's bytes did not follow the protocol, it answered out of turn, or the
    /// conversation could not go on (which of these: the [`ProtocolError`]).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection failed while a request was in flight, and reconnecting did not help.
    #[error("connection to secretd failed: {0}")]
    Io(io::Error),
    /// The daemon did not answer within the request timeout. The connection is dropped (a late
    /// answer must never be read as the answer to the next request); the next call reconnects.
    #[error("timed out after {} waiting for secretd at {}", seconds(*after), path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long the request waited.
        after: Duration,
    },
    /// The caller passed an argument no daemon would accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

/// How a conversation with the daemon broke, on the protocol's level. Cheap to clone (one
/// failure may answer several waiting calls).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame that does not decode, or is too large (the frame layer's error).
    #[error(transparent)]
    Frame(Arc<FrameError>),
    /// The daemon answered with a message that does not answer the request.
    #[error("daemon answered {request} with a {got} message")]
    Unexpected {
        /// The request (`"get"`, `"hello"`, `"watch"`, ...).
        request: &'static str,
        /// The kind of message that came back.
        got: &'static str,
    },
    /// The daemon's hello names a protocol version this client does not speak.
    #[error(
        "daemon answered hello with protocol version {0}, expected {MIN_PROTOCOL_VERSION} to \
         {PROTOCOL_VERSION}"
    )]
    Version(u16),
    /// The daemon is too old for the request.
    #[error("the daemon speaks protocol {speaks}; {what} needs {needs} (upgrade it)")]
    TooOld {
        /// The version the daemon speaks.
        speaks: u16,
        /// The request.
        what: &'static str,
        /// The version it needs.
        needs: u16,
    },
    /// More than one answer to one request.
    #[error("daemon sent more than one answer to one request")]
    ExtraAnswer,
    /// The answer ended before it was whole.
    #[error("the answer was cut off")]
    CutOff,
    /// A frame arrived that nobody asked for.
    #[error("the daemon sent a frame nobody asked for")]
    Unasked,
    /// A request was started while another was under way on the same connection.
    #[error("a request is already under way on this connection")]
    InFlight,
    /// The daemon does not read what is written to it.
    #[error("the daemon is not reading its socket")]
    NotReading,
    /// The client was shut down while the call waited.
    #[error("the client was shut down")]
    ShutDown,
    /// The call had no connection to send on.
    #[error("no connection to send on")]
    NoConnection,
    /// The watch that keeps a cache honest ended, so the cache serves nothing more.
    #[error("the cache's watch ended")]
    WatchEnded,
    /// The async runtime the call needs could not start.
    #[error("the async runtime could not start")]
    Runtime,
    /// A connection could not be handed to the event loop that drives it (the loop's own
    /// error, as it words it).
    #[error("cannot register the socket with the event loop: {0}")]
    Register(String),
}

impl ProtocolError {
    /// The answer `got` to `request` when it is not an answer to it.
    pub(crate) fn unexpected(request: &'static str, got: &secretd_proto::Response<'_>) -> Error {
        Error::Protocol(ProtocolError::Unexpected {
            request,
            got: got.kind(),
        })
    }
}

impl Error {
    /// The daemon's stable error code, when the daemon sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Daemon(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether the connection is unusable after this error (so the next call reconnects).
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Protocol(_) | Error::Timeout { .. }
        )
    }

    /// Whether retrying on a fresh connection may help: the connection broke, but the daemon
    /// did not simply fail to answer in time (a retry would only double the wait).
    pub(crate) fn worth_a_retry(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Protocol(_))
    }

    /// Whether the daemon closed a new connection before answering its hello: what a daemon
    /// that is stopping does to the connections it accepted last. A restart under socket
    /// activation leaves the listening socket with systemd, so a second connection waits for
    /// the next daemon. Not a refusal (`Busy` arrives as an answer) and not an untrusted
    /// server: those are final. This crate's clients retry such a connection once by
    /// themselves; an event loop driving [`crate::nonblocking::NonBlockingConnection`] should do the same.
    pub fn closed_before_answer(&self) -> bool {
        matches!(
            self,
            Error::Io(e) if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            )
        )
    }

    /// Runs `attempt`, and once more when the daemon closed its connection before answering
    /// ([`Error::closed_before_answer`]).
    pub(crate) fn again_if_closed<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
        match attempt() {
            Err(e) if e.closed_before_answer() => attempt(),
            other => other,
        }
    }

    /// The error for an I/O failure on the connection to `path` whose timeout is `after`:
    /// a timeout reads as one.
    pub(crate) fn from_io(e: io::Error, path: &Path, after: Duration) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                path: path.to_owned(),
                after,
            },
            _ => Error::Io(e),
        }
    }
}

/// A duration as people write it: whole seconds when it is whole ("5s"), else milliseconds.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What a failed connect means, in the operator's words.
fn connect_message(path: &Path, source: &io::Error) -> String {
    let path = path.display();
    match source.kind() {
        io::ErrorKind::NotFound => format!("secretd is not running at {path} (no socket)"),
        io::ErrorKind::ConnectionRefused => format!(
            "secretd refused the connection at {path} (the socket exists but no daemon is \
             listening: it stopped or is restarting)"
        ),
        io::ErrorKind::WouldBlock => format!(
            "secretd at {path} is busy: its queue of new connections stayed full for the whole \
             request timeout; retry later"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "cannot connect to secretd at {path}: permission denied (the socket's mode or group \
             does not let this user in)"
        ),
        _ => format!("cannot connect to secretd at {path}: {source}"),
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Error {
        match e {
            FrameError::Io(io) => Error::Io(io),
            FrameError::Closed => Error::Io(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "daemon closed the connection",
            )),
            FrameError::Truncated => Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "daemon closed the connection mid-frame",
            )),
            other => Error::Protocol(ProtocolError::Frame(Arc::new(other))),
        }
    }
}
