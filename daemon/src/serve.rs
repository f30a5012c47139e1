//! `secretd serve`: wires config, sources, cache, refreshers and the server, and shuts them
//! down in order.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::Config;
use crate::policy::Policy;
use crate::server::{self, Shared};
use crate::socket::{self, SocketError};
use crate::source::{self, BuildError};
use crate::{process, refresh};

/// How long startup waits for every secret's first fetch before serving anyway (secrets still
/// missing answer `Unavailable` until their refresher succeeds).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections and refreshers to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A catalog entry cannot be served by this build.
    #[error(transparent)]
    Source(#[from] BuildError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Memory protections were refused.
    #[error("cannot protect process memory (core dumps, ptrace): {0}")]
    Harden(std::io::Error),
}

/// Runs the daemon until `cancel` fires.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), ServeError> {
    process::harden().map_err(ServeError::Harden)?;
    // Bind before fetching anything: a second daemon must fail here, not after it has
    // loaded secrets and hit the source.
    let (listener, socket_file) = socket::bind(&config.daemon)?;
    let sources = match source::build_all(&config).await {
        Ok(s) => s,
        Err(e) => {
            socket_file.remove();
            return Err(e.into());
        }
    };

    let cache = Arc::new(Cache::new(&config));
    let tracker = TaskTracker::new();
    let mut first_fetches = refresh::spawn_all(cache.clone(), sources, &tracker, cancel.clone());
    let expected = config.secrets.len();
    let waited = tokio::time::timeout(STARTUP_DEADLINE, async {
        for _ in 0..expected {
            if first_fetches.recv().await.is_none() {
                break;
            }
        }
    });
    tokio::select! {
        _ = cancel.cancelled() => {}
        r = waited => if r.is_err() {
            tracing::warn!("startup deadline passed before every secret loaded; serving what is loaded");
        }
    }
    let missing: Vec<&str> = cache
        .slots()
        .iter()
        .filter(|s| s.current().is_none())
        .map(|s| &*s.name)
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "secrets not loaded yet; reads answer Unavailable until they are"
        );
    }

    let shared = Arc::new(Shared {
        cache,
        policy: Policy::new(config.daemon.admin_uids.clone(), config.policies.clone()),
    });
    tracing::info!(
        event = "daemon.ready",
        socket = %socket_file.path().display(),
        secrets = expected,
        "secretd is serving"
    );
    server::serve(
        listener,
        shared,
        config.daemon.max_connections,
        cancel.clone(),
        tracker.clone(),
    )
    .await;

    tracing::info!("shutting down");
    socket_file.remove();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within the shutdown grace period");
    }
    Ok(())
}
