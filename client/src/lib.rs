//! Client for `secretd`: blocking, and for tokio with the `tokio` feature.
//!
//! ```no_run
//! let client = secretd_client::Client::connect_default()?;
//! let key = client.get("trading_api_key")?;
//! use_key(key.expose());
//! # fn use_key(_: &[u8]) {}
//! # Ok::<(), secretd_client::Error>(())
//! ```
//!
//! A [`Client`] is `Send + Sync`: threads may share one (requests are serialized on its single
//! connection). It reconnects by itself when the daemon restarts. Values come back as
//! [`Secret`], which wipes its memory when dropped and never prints its value.
//!
//! Before it sends anything, every connection checks that the process behind the socket can
//! be the real daemon (root, the caller, or the daemon's uid: the `secretd` user, or
//! `SECRETD_DAEMON_UID`; never merely the socket file's owner), in a directory nobody else can
//! write; an impostor gets [`Error::UntrustedServer`] and not a byte.
//!
//! [`Client::watch`] streams [`ChangeEvent`]s (rotations, break-glass apply and clear) on a
//! connection of its own; [`Client::with_cache`] serves repeat reads from locked local memory
//! that those events keep current.
//!
//! With the `tokio` feature, `AsyncClient` does the same for async programs: `get`, `status`,
//! `refresh`, `watch` (a `futures` `Stream`) and `with_cache`, cancel-safe at every await point.
//! [`nonblocking::NonBlockingConnection`] lets another event loop (the Python client's asyncio
//! loop) drive reads itself, with no thread of this crate's.

#[cfg(feature = "tokio")]
mod async_client;
#[cfg(feature = "tokio")]
mod async_connection;
#[cfg(feature = "tokio")]
mod async_watch;
mod cache;
mod client;
mod connection;
mod error;
mod exchange;
pub mod nonblocking;
mod secret;
mod trust;
mod watch;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, MAX_ASYNC_CONNECTIONS};
#[cfg(feature = "tokio")]
pub use async_watch::AsyncWatch;
pub use client::{Client, DEFAULT_TIMEOUT, REFRESH_TIMEOUT};
pub use error::{Error, ProtocolError, Result};
pub use secret::Secret;
pub use secretd_proto::{
    AuditEntry, AuditVerification, ChangeEvent, ChannelState, ConnectionInfo, DaemonHealth,
    EntryState, ErrorCode, HealthStatus, MAX_WATCH_NAMES, RefreshOutcome, RotationRequest,
    RotationStep, SecretChange, SecretStatus, SourceKind, WireError, validate_name,
};
pub use watch::{
    RESUBSCRIBE_MAX_BACKOFF, RESUBSCRIBE_MIN_BACKOFF, Watch, WatchHandle, WatchStopper,
};

/// The socket path used when none is given: `$SECRETD_SOCKET`, the production socket if it
/// exists, this user's `serve --dev` socket if that exists, else the production path.
pub fn default_socket_path() -> std::path::PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    secretd_proto::paths::default_socket(euid)
}
