use std::io;
use std::path::PathBuf;

use secretd_proto::{ErrorCode, FrameError, WireError};

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client call failed. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answered at the socket path.
    #[error("cannot connect to secretd at {}: {source}", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(#[from] WireError),
    /// The daemon's bytes did not follow the protocol, or it answered out of turn.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed while a request was in flight, and reconnecting did not help.
    #[error("connection to secretd failed: {0}")]
    Io(io::Error),
    /// The caller passed an argument no daemon would accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
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
        matches!(self, Error::Io(_) | Error::Protocol(_))
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
            other => Error::Protocol(other.to_string()),
        }
    }
}
