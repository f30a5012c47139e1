//! `secretd serve`: wires config, store, sources, cache, refreshers and the server, and shuts
//! them down in order.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{housekeeping, open_store, process, systemd};
use crate::audit::{self, Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::catalog::Catalog;
use crate::catalog::break_glass::BreakGlass;
use crate::catalog::fingerprint::FingerprintKey;
use crate::catalog::last_known_good::{self, LastKnownGood};
use crate::catalog::refresh;
use crate::catalog::source;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::credentials;
use crate::server::identity::{Attestor, Policy};
use crate::server::requests::{Denials, ReadLedger};
use crate::server::transport::credentials_socket;
use crate::server::transport::socket::{self, SocketFile};
use crate::server::{self, Shared};
use crate::store::Store;
use crate::store::metadata::Status;
use crate::util::time::now_ms;

/// How long shutdown waits for connections and refreshers to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the daemon checks that its socket file is still the one it bound.
pub(crate) const SOCKET_CHECK_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) use super::error::ServeError;

/// Runs the daemon until `cancel` fires.
pub(crate) async fn run(
    mut config: Config,
    cancel: CancellationToken,
    activated: Vec<(std::os::fd::OwnedFd, Option<String>)>,
) -> Result<(), ServeError> {
    process::harden().map_err(ServeError::Harden)?;
    fit_connections_to_fd_limit(&mut config)?;
    let (client_fd, credentials_fd) = credentials_socket::sort_activated(activated, &config.daemon);
    // Bind before anything else: a second daemon on the same socket must fail here, not after
    // it has loaded secrets and hit the source.
    let (listener, socket_file) = match client_fd {
        Some(fd) => socket::adopt(fd, &config.daemon.socket)?,
        None => socket::bind(&config.daemon)?,
    };
    let credentials = match (config.daemon.credentials_socket.as_deref(), credentials_fd) {
        (Some(path), fd) => Some(credentials_socket::listen(path, fd)),
        // Enabled in systemd but not in the config: refuse every request (a unit then fails
        // to start at once instead of waiting on a socket nobody answers).
        (None, Some(fd)) => {
            tracing::error!(
                event = "credential.unconfigured",
                "systemd passed secretd-credentials.socket but daemon.credentials_socket is \
                 not set: every credential request is refused"
            );
            Some(credentials_socket::listen(
                std::path::Path::new("secretd-credentials.socket"),
                Some(fd),
            ))
        }
        (None, None) => None,
    }
    .transpose();
    let opened = credentials
        .map_err(ServeError::from)
        .and_then(|credentials| open_store::open_store(&config).map(|parts| (parts, credentials)));
    let ((store, key, audit, audit_thread), credentials) = match opened {
        Ok(parts) => parts,
        Err(e) => {
            socket_file.remove();
            return Err(e);
        }
    };
    let (credentials, credentials_file) = match credentials {
        Some((listener, file)) => (Some(listener), file),
        None => (None, None),
    };
    let store_for_anchor = store.clone();
    let watchdog = tokio::spawn(watch_socket(socket_file.clone(), cancel.clone()));
    let sockets = Listeners {
        client: listener,
        credentials,
    };
    let result = serve_bound(config, store, key, audit, sockets, &socket_file, cancel).await;
    if let Some(file) = credentials_file {
        file.remove();
    }
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
    // The per-uid cap and the admin reserve follow (see DaemonConfig's accessors).
    d.max_connections = budget;
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

/// The sockets the daemon serves on.
struct Listeners {
    /// Clients.
    client: interprocess::local_socket::tokio::Listener,
    /// systemd's credential requests, when `credentials_socket` is set.
    credentials: Option<tokio::net::UnixListener>,
}

async fn serve_bound(
    config: Config,
    store: Arc<Store>,
    key: Arc<FingerprintKey>,
    audit: AuditLog,
    sockets: Listeners,
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
    if let Some(listener) = sockets.credentials {
        start_credentials(&config, &shared, listener, &run);
    }
    announce_ready(&audit, config.secrets.len(), socket_file);
    drop(audit);
    // Kept to write the read ledger's last counts once every connection has flushed into it.
    let ledger = shared.clone();
    server::transport::serve(
        sockets.client,
        shared,
        server::transport::Limits {
            total: config.daemon.max_connections,
            per_uid: config.daemon.per_uid_connections(),
            admin_reserved: config.daemon.admin_reserved(),
        },
        cancel.clone(),
        tracker.clone(),
    )
    .await;
    shut_down(tracker).await;
    // Now, not when the last handle on `Shared` goes: a connection stuck past the grace
    // period would otherwise hold every other connection's counts back with its own.
    ledger.reads.roll();
    drop(ledger);
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
        let lkg =
            Arc::new(LastKnownGood::open(cfg, store.clone()).map_err(ServeError::LastKnownGood)?);
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
        attestor: Attestor::new(config.daemon.attest_max_exe_bytes),
        store: store.clone(),
        audit: audit.clone(),
        sources,
        break_glass,
        metrics,
        denials: Denials::new(config.daemon.max_denials_per_minute_per_uid),
        reads: ReadLedger::new(audit.clone()),
        audit_read_window: config.daemon.audit_read_window,
        connections: Default::default(),
        write_timeout: config.daemon.write_timeout,
        frame_deadline: config.daemon.frame_deadline,
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
    run.until_cancelled(roll_reads(shared.clone()));
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

/// Phase 4b: the systemd credential provider, and the restarts of units after a rotation.
fn start_credentials(
    config: &Config,
    shared: &Arc<Shared>,
    listener: tokio::net::UnixListener,
    run: &Running,
) {
    let grants: Arc<[crate::config::CredentialGrant]> = config.credentials.clone().into();
    let socket = config
        .daemon
        .credentials_socket
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let restarts = credentials::Restarts::new(grants.clone(), socket);
    run.tracker.spawn(restarts.clone().run(
        shared.catalog.clone(),
        run.cancel.clone(),
        run.tracker.clone(),
    ));
    run.tracker.spawn(credentials::serve(
        listener,
        shared.clone(),
        grants,
        restarts,
        run.cancel.clone(),
        run.tracker.clone(),
    ));
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
/// Writes the read ledger's counts every `audit_read_window` (what is left at shutdown is
/// written when the ledger is dropped, after the last connection has flushed into it).
async fn roll_reads(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.audit_read_window);
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.reads.roll();
    }
}

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
