//! `secretd serve`: wires config, store, sources, cache, refreshers and the server, and shuts
//! them down in order.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{housekeeping, process, systemd};
use crate::audit::{self, Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::catalog::Catalog;
use crate::catalog::break_glass::BreakGlass;
use crate::catalog::break_glass::keys::KeyError;
use crate::catalog::fingerprint::{self, FingerprintKey};
use crate::catalog::last_known_good::{self, LastKnownGood};
use crate::catalog::refresh;
use crate::catalog::source::{self, BuildError};
use crate::config::{AUDIT_KEY_CREDENTIAL, CREDENTIALS_DIRECTORY_ENV, Config};
use crate::metrics::Metrics;
use crate::server::identity::Policy;
use crate::server::requests::Denials;
use crate::server::transport::socket::{self, SocketError, SocketFile};
use crate::server::{self, Shared};
use crate::store::metadata::Status;
use crate::store::{Store, StoreError};
use crate::util::key_file;
use crate::util::time::now_ms;
use std::path::PathBuf;

/// How long shutdown waits for connections and refreshers to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the daemon checks that its socket file is still the one it bound.
pub(crate) const SOCKET_CHECK_INTERVAL: Duration = Duration::from_secs(2);

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
        /// [`process::FD_RESERVE`].
        reserve: u64,
        /// The open-files limit in force.
        limit: u64,
    },
    /// Memory protections were refused.
    #[error("cannot protect process memory (core dumps, ptrace): {0}")]
    Harden(std::io::Error),
}

/// Runs the daemon until `cancel` fires.
pub(crate) async fn run(
    mut config: Config,
    cancel: CancellationToken,
    activated: Option<std::os::fd::OwnedFd>,
) -> Result<(), ServeError> {
    process::harden().map_err(ServeError::Harden)?;
    fit_connections_to_fd_limit(&mut config)?;
    // Bind before anything else: a second daemon on the same socket must fail here, not after
    // it has loaded secrets and hit the source.
    let (listener, socket_file) = match activated {
        Some(fd) => socket::adopt(fd, &config.daemon.socket)?,
        None => socket::bind(&config.daemon)?,
    };
    let opened = open_store(&config);
    let (store, key, audit, audit_thread) = match opened {
        Ok(parts) => parts,
        Err(e) => {
            socket_file.remove();
            return Err(e);
        }
    };
    let store_for_anchor = store.clone();
    let watchdog = tokio::spawn(watch_socket(socket_file.clone(), cancel.clone()));
    let result = serve_bound(config, store, key, audit, listener, &socket_file, cancel).await;
    // Finished means it saw the socket lost (true) or the shutdown (false); a setup error
    // can return before either, so a running watchdog is stopped here.
    let lost = if watchdog.is_finished() {
        watchdog.await.unwrap_or(false)
    } else {
        watchdog.abort();
        false
    };
    let socket_path = socket_file.path().to_owned();
    socket_file.remove();
    // Every audit handle is gone now; the writer drains its queue and ends.
    let joined = tokio::task::spawn_blocking(move || audit_thread.join());
    if tokio::time::timeout(SHUTDOWN_GRACE, joined).await.is_err() {
        tracing::warn!("the audit writer did not finish within the shutdown grace period");
    }
    housekeeping::log_anchor(&store_for_anchor);
    if lost {
        return Err(ServeError::SocketLost(socket_path));
    }
    result
}

/// Raises the open-files limit to its hard limit and makes the connection limits fit under it:
/// a default `max_connections` is lowered (with a warning), an explicit one that does not fit
/// refuses startup.
fn fit_connections_to_fd_limit(config: &mut Config) -> Result<(), ServeError> {
    let limit = match process::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; connection limits unchecked");
            return Ok(());
        }
    };
    let d = &mut config.daemon;
    let http = if d.metrics_listen.is_some() {
        d.http_max_connections
    } else {
        0
    };
    let budget = limit.saturating_sub(process::FD_RESERVE + http as u64);
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if d.max_connections <= budget {
        return Ok(());
    }
    if d.max_connections_explicit || budget == 0 {
        return Err(ServeError::FdLimit {
            max_connections: d.max_connections,
            http,
            reserve: process::FD_RESERVE,
            limit,
        });
    }
    tracing::warn!(
        event = "limits.clamped",
        open_files = limit,
        max_connections = budget,
        "the default max_connections does not fit under the open-files limit; lowered (raise LimitNOFILE for more)"
    );
    d.max_connections = budget;
    d.max_connections_per_uid = d.max_connections_per_uid.min(budget);
    Ok(())
}

/// Checks every [`SOCKET_CHECK_INTERVAL`] that the socket path still holds the socket this
/// daemon bound. If it was removed or replaced, new clients can no longer reach this daemon
/// (or reach an impostor), so it shuts down and exits with an error: a supervisor restarts it
/// and it binds afresh. Sockets systemd created are systemd's to watch. Returns whether the
/// socket was lost.
async fn watch_socket(socket: SocketFile, cancel: CancellationToken) -> bool {
    if !socket.is_ours_to_watch() {
        cancel.cancelled().await;
        return false;
    }
    let mut tick = tokio::time::interval(SOCKET_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tick.tick() => {}
        }
        if !socket.still_ours() {
            tracing::error!(
                event = "socket.lost",
                path = %socket.path().display(),
                "the socket was removed or replaced; shutting down so a supervisor restarts secretd"
            );
            cancel.cancel();
            return true;
        }
    }
}

/// The store, the fingerprint key, the audit writer and its thread.
type OpenedStore = (
    Arc<Store>,
    Arc<FingerprintKey>,
    AuditLog,
    std::thread::JoinHandle<()>,
);

/// Opens the database (exclusively: a second daemon on the same file fails here with a clear
/// message), the fingerprint key beside it, the audit chain's key, and the audit writer. A
/// database an earlier release wrote gets its keyed chain started here.
fn open_store(config: &Config) -> Result<OpenedStore, ServeError> {
    let store = Arc::new(Store::open(&config.daemon.db)?);
    let key = match &config.daemon.fingerprint_key {
        Some(shared) => FingerprintKey::load(shared).map_err(|source| ServeError::FingerprintKey {
            path: shared.clone(),
            source,
        }),
        None => {
            let key_path = fingerprint::key_path(&config.daemon.db);
            FingerprintKey::load_or_create(&key_path).map_err(|source| ServeError::FingerprintKey {
                path: key_path.clone(),
                source,
            })
        }
    };
    let key = Arc::new(key?);
    let (audit_key_path, create) = audit_key_path(config);
    let audit_key = if create {
        key_file::load_or_create(&audit_key_path)
    } else {
        key_file::load(&audit_key_path)
    }
    .map_err(|source| ServeError::AuditKey {
        path: audit_key_path.clone(),
        source,
    })?;
    let keying = audit::open_keyed(&store)?;
    let (audit, thread) =
        AuditLog::start(store.clone(), Arc::new(audit_key)).map_err(ServeError::AuditWriter)?;
    if let audit::Keying::Upgraded {
        head_seq,
        head_hash,
        legacy,
    } = keying
    {
        let verdict = match &legacy.broken {
            None => format!("unkeyed chain verified ({} records)", legacy.checked),
            Some((seq, why)) => {
                tracing::error!(
                    event = "omni.alert.audit_chain_broken",
                    seq,
                    reason = %why,
                    "the unkeyed audit chain of this database is broken; keyed chaining starts anyway"
                );
                format!("unkeyed chain broken at seq {seq}: {why}")
            }
        };
        let mut event = AuditEvent::new(Action::AuditUpgrade, "", &Actor::daemon(), Outcome::Ok);
        event.detail = format!(
            "keyed chain starts here; unkeyed head {head_seq}:{}; {verdict}",
            hex::encode(head_hash)
        );
        audit.record(event);
        tracing::warn!(
            event = "audit.upgraded",
            head_seq,
            "the audit chain is keyed from here on"
        );
    }
    Ok((store, key, audit, thread))
}

/// Where the audit chain's key is, and whether to create it: `audit_key`, else systemd's
/// credential `secretd-audit-key` when present, else a file beside the database (created on
/// first start).
fn audit_key_path(config: &Config) -> (PathBuf, bool) {
    if let Some(path) = &config.daemon.audit_key {
        return (path.clone(), false);
    }
    if let Some(dir) = std::env::var_os(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = PathBuf::from(dir).join(AUDIT_KEY_CREDENTIAL);
        if path.exists() {
            return (path, false);
        }
    }
    let mut beside = config.daemon.db.as_os_str().to_owned();
    beside.push(".audit-key");
    (PathBuf::from(beside), true)
}

async fn serve_bound(
    config: Config,
    store: Arc<Store>,
    key: Arc<FingerprintKey>,
    audit: AuditLog,
    listener: interprocess::local_socket::tokio::Listener,
    socket_file: &SocketFile,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    sync_catalog(&config, &store, &audit)?;
    let source::Built { sources, google } = source::build_all(&config).await?;
    restore_version_pins(&config, &store, &sources)?;
    let tracker = TaskTracker::new();
    let run = Running {
        tracker: tracker.clone(),
        cancel: cancel.clone(),
    };
    // The notification stream (if configured) shares GSM's credentials.
    let google_credentials = google.as_ref().map(|g| g.credentials());
    if let Some(google) = google {
        run.until_cancelled(source::gsm::probe(google));
    }
    let shared = start_values(&config, &store, key, &audit, sources, &run).await?;
    start_services(&config, &shared, google_credentials, &store, &run).await?;
    announce_ready(&audit, config.secrets.len(), socket_file);
    drop(audit);
    server::transport::serve(
        listener,
        shared,
        (
            config.daemon.max_connections,
            config.daemon.max_connections_per_uid,
        ),
        cancel.clone(),
        tracker.clone(),
    )
    .await;
    shut_down(tracker).await;
    Ok(())
}

/// What every phase spawns into: the tasks to wait for at shutdown, and the token that ends
/// them.
struct Running {
    /// Every task of the daemon's life.
    tracker: TaskTracker,
    /// Shutdown.
    cancel: CancellationToken,
}

impl Running {
    /// Runs `task` until it finishes or the daemon shuts down.
    fn until_cancelled(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

/// Phase 1: the metadata rows follow the config (each change audited), and records past
/// retention go.
fn sync_catalog(config: &Config, store: &Store, audit: &AuditLog) -> Result<(), ServeError> {
    for meta in store.sync_catalog(config)? {
        let mut event = AuditEvent::new(
            Action::MetadataWrite,
            &meta.name,
            &Actor::daemon(),
            Outcome::Ok,
        );
        event.detail = format!("status {}", meta.status.as_str());
        audit.record(event);
    }
    audit::prune(store, audit, config.daemon.audit_retention);
    Ok(())
}

/// Phase 2: a rotation in progress, and a version promoted over a number in the config,
/// survive restarts: pin the version before the first fetch.
fn restore_version_pins(
    config: &Config,
    store: &Store,
    sources: &[Arc<dyn source::Source>],
) -> Result<(), ServeError> {
    let metas = store.all_meta()?;
    for (secret, source) in config.secrets.iter().zip(sources) {
        let Some(meta) = metas.get(&secret.name) else {
            continue;
        };
        if let Some(active) = &meta.active_version
            && meta.status == Status::Active
        {
            tracing::warn!(
                event = "secret.active_version",
                secret = %secret.name,
                active = %active,
                configured = meta.gcp_version_alias.as_deref().unwrap_or(""),
                "serving the promoted version, which outranks the config's: update the config \
                 to it, or run `secretd rotation unpin`"
            );
        }
        if let Some(version) = meta.pinned_version()
            && let Err(e) = source.pin_version(Some(version))
        {
            tracing::warn!(secret = %secret.name, error = %e, "cannot restore the version pin");
        }
    }
    Ok(())
}

/// Phase 3: the values. Break-glass overrides and last-known-good values are restored before
/// serving (even with the source down), then every secret's refresher starts; a read of a
/// secret still loading waits for that secret alone (`first_fetch_wait`).
async fn start_values(
    config: &Config,
    store: &Arc<Store>,
    key: Arc<FingerprintKey>,
    audit: &AuditLog,
    sources: Vec<Arc<dyn source::Source>>,
    run: &Running,
) -> Result<Arc<Shared>, ServeError> {
    let catalog = Arc::new(Catalog::new(config));
    let break_glass = BreakGlass::new(
        config.break_glass.as_ref(),
        catalog.clone(),
        store.clone(),
        audit.clone(),
        key.clone(),
        run.tracker.clone(),
        run.cancel.clone(),
    )
    .map_err(ServeError::BreakGlassKey)?;
    let metrics = Arc::new(
        Metrics::new(catalog.slots().iter().map(|s| &*s.name)).map_err(ServeError::Metrics)?,
    );
    break_glass.restore().await;
    if let Some(cfg) = &config.daemon.last_known_good {
        let lkg = Arc::new(LastKnownGood::open(cfg).map_err(ServeError::LastKnownGood)?);
        lkg.restore(config, &catalog, &key, audit);
        run.tracker.spawn(last_known_good::run_writer(
            lkg,
            catalog.clone(),
            run.cancel.clone(),
        ));
    }
    let first_fetches = refresh::spawn_all(
        catalog.clone(),
        sources.clone(),
        audit.clone(),
        key,
        metrics.clone(),
        &run.tracker,
        run.cancel.clone(),
    );
    run.tracker.spawn(report_first_fetches(
        catalog.clone(),
        first_fetches,
        run.cancel.clone(),
    ));
    Ok(Arc::new(Shared {
        catalog,
        policy: Policy::new(config.daemon.admin_uids.clone(), config.policies.clone()),
        store: store.clone(),
        audit: audit.clone(),
        sources,
        break_glass,
        metrics,
        denials: Denials::new(config.daemon.max_denials_per_minute_per_uid),
        connections: Default::default(),
        write_timeout: config.daemon.write_timeout,
    }))
}

/// Phase 4: what runs beside the socket: fleet notifications, the refusal ledger's minute,
/// the HTTP endpoints, housekeeping.
async fn start_services(
    config: &Config,
    shared: &Arc<Shared>,
    google_credentials: Option<google_cloud_auth::credentials::Credentials>,
    store: &Arc<Store>,
    run: &Running,
) -> Result<(), ServeError> {
    if let (Some(notifications), Some(credentials)) = (
        config.gsm.as_ref().and_then(|g| g.notifications.clone()),
        google_credentials,
    ) {
        run.tracker.spawn(crate::catalog::notifications::run(
            notifications,
            credentials,
            shared.catalog.clone(),
            shared.sources.clone(),
            shared.metrics.clone(),
            run.tracker.clone(),
            run.cancel.clone(),
        ));
    }
    run.tracker
        .spawn(roll_denials(shared.clone(), run.cancel.clone()));
    if let Some(addr) = config.daemon.metrics_listen {
        server::http::start(
            addr,
            config.daemon.http_max_connections,
            shared.clone(),
            run.cancel.clone(),
            &run.tracker,
        )
        .await
        .map_err(|source| ServeError::MetricsListen { addr, source })?;
    }
    run.tracker.spawn(housekeeping::run(
        store.clone(),
        shared.audit.clone(),
        config.daemon.clone(),
        run.cancel.clone(),
    ));
    Ok(())
}

/// Phase 5: the start is audited, systemd told, and the log says so.
fn announce_ready(audit: &AuditLog, secrets: usize, socket_file: &SocketFile) {
    let mut started = AuditEvent::new(Action::DaemonStart, "", &Actor::daemon(), Outcome::Ok);
    started.detail = format!(
        "secretd {} serving {secrets} secrets",
        env!("CARGO_PKG_VERSION")
    );
    started.recorded_at_ms = now_ms();
    audit.record(started);
    systemd::notify("READY=1");
    tracing::info!(
        event = "daemon.ready",
        socket = %socket_file.path().display(),
        secrets,
        "secretd is serving"
    );
}

/// Phase 6, once the socket is closed: every task is told and given [`SHUTDOWN_GRACE`].
async fn shut_down(tracker: TaskTracker) {
    systemd::notify("STOPPING=1");
    tracing::info!("shutting down");
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within the shutdown grace period");
    }
}

/// Logs once every secret's first fetch has finished: how many loaded, and which did not
/// (those answer `Unavailable` until their refresher succeeds).
async fn report_first_fetches(
    catalog: Arc<Catalog>,
    mut first_fetches: tokio::sync::mpsc::Receiver<()>,
    cancel: CancellationToken,
) {
    let all = async {
        for _ in 0..catalog.slots().len() {
            if first_fetches.recv().await.is_none() {
                break;
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        () = all => {}
    }
    let missing: Vec<&str> = catalog
        .slots()
        .iter()
        .filter(|s| s.current().is_none())
        .map(|s| &*s.name)
        .collect();
    if missing.is_empty() {
        tracing::info!(
            event = "catalog.loaded",
            secrets = catalog.slots().len(),
            "every secret loaded"
        );
    } else {
        tracing::warn!(
            event = "catalog.loaded",
            ?missing,
            "secrets not loaded yet; reads answer Unavailable until they are"
        );
    }
}

/// How often the refusal ledger checks whether its minute is over.
const DENIAL_ROLL_TICK: Duration = Duration::from_secs(5);

/// Writes the refusal ledger's aggregated records as each minute ends, and at shutdown.
async fn roll_denials(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(DENIAL_ROLL_TICK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                shared.denials.roll(&shared.audit, true);
                return;
            }
            _ = tick.tick() => shared.denials.roll(&shared.audit, false),
        }
    }
}
