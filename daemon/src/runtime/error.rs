//! Why the daemon could not start, or stopped on an error.

use std::path::PathBuf;

use crate::catalog::break_glass::keys::KeyError;
use crate::catalog::last_known_good;
use crate::catalog::source::BuildError;
use crate::server::transport::socket::SocketError;
use crate::store::StoreError;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// A catalog entry cannot be served by this build.
    #[error(transparent)]
    Source(#[from] BuildError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The database could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The fingerprint key beside the database could not be read or created.
    #[error("fingerprint key {}: {source}", path.display())]
    FingerprintKey {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit chain's key could not be read or created.
    #[error("audit key {}: {source}", path.display())]
    AuditKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit writer thread could not be started.
    #[error("cannot start the audit writer: {0}")]
    AuditWriter(#[source] std::io::Error),
    /// The break-glass private key could not be loaded.
    #[error("break_glass.private_key: {0}")]
    BreakGlassKey(#[source] KeyError),
    /// The metrics could not be registered (a duplicate series: a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// Last-known-good is configured but its key or the host's machine id is unusable.
    #[error(transparent)]
    LastKnownGood(#[from] last_known_good::SetupError),
    /// The HTTP listener could not bind.
    #[error("daemon.metrics_listen {addr}: {source}")]
    MetricsListen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The socket file was removed or replaced while serving.
    #[error("the socket {} was removed or replaced while serving", .0.display())]
    SocketLost(std::path::PathBuf),
    /// The connection limits do not fit under the open-files limit.
    #[error(
        "daemon.max_connections = {max_connections} (plus {http} HTTP connections and {reserve} \
         descriptors for the store and GSM) does not fit under the open-files limit of {limit}; \
         lower it or raise LimitNOFILE"
    )]
    FdLimit {
        /// The configured limit.
        max_connections: usize,
        /// `http_max_connections`, when the HTTP listener is on.
        http: usize,
        /// `runtime::process::FD_RESERVE`.
        reserve: u64,
        /// The open-files limit in force.
        limit: u64,
    },
    /// Memory protections were refused.
    #[error("cannot protect process memory (core dumps, ptrace): {0}")]
    Harden(std::io::Error),
}
