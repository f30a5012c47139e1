//! The public client: reconnects, request helpers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use secretd_proto::{
    AuditEntry, AuditVerification, ChangeEvent, ConnectionInfo, DaemonHealth, MAX_WATCH_NAMES,
    RefreshOutcome, Request, Response, RotationStep, SecretStatus, validate_name,
};

use crate::cache::ClientCache;
use crate::connection::Connection;
use crate::error::{Error, ProtocolError, Result};
use crate::secret::Secret;
use crate::watch::{Watch, WatchHandle};

/// How long one request may wait on the daemon before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refresh may wait: the daemon allows a fetch 30 s and answers within 35 s.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(45);

/// A connection to the daemon, shared safely between threads.
#[derive(Debug)]
pub struct Client {
    /// Where to connect, and reconnect after the daemon restarts.
    path: PathBuf,
    /// The live connection; `None` after it broke, until the next request reconnects.
    conn: Mutex<Option<Connection>>,
    /// The per-request read and write timeout.
    timeout: Duration,
    /// The client-side cache, when [`Client::with_cache`] turned it on.
    cache: Option<CachedReads>,
}

/// A cache and the watch that keeps it honest; dropping it stops the watch.
pub(crate) struct CachedReads {
    /// The values.
    pub(crate) cache: Arc<ClientCache>,
    /// Delivers invalidations to `cache`.
    _watch: WatchHandle,
}

impl CachedReads {
    /// Starts invalidating from `watch` (already subscribed).
    pub(crate) fn start(watch: Watch) -> crate::Result<CachedReads> {
        let cache = ClientCache::live();
        let target = cache.clone();
        let handle = watch.spawn(move |item| target.apply(&item))?;
        Ok(CachedReads {
            cache,
            _watch: handle,
        })
    }
}

impl std::fmt::Debug for CachedReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CachedReads")
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Client {
    /// Connects to the daemon at `path` and completes the hello exchange.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects, reads `name` and closes, in one round trip: the hello and the read go out in
    /// one write, where [`Client::connect`] then [`Client::get`] wait for two answers. For a
    /// program that reads once (a CLI, a cron job, a hook); one that reads again should keep a
    /// `Client`. Errors are those of `connect` and `get`.
    pub fn get_once(path: impl AsRef<Path>, name: &str) -> Result<Secret> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        let req = Request::Get { name: name.into() };
        match Connection::open_with(path.as_ref(), DEFAULT_TIMEOUT, &req)?.1 {
            Response::Secret(reply) => Ok(Secret::from_reply(reply)),
            Response::Error(e) => Err(Error::Daemon(e)),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Connects with a per-request timeout other than [`DEFAULT_TIMEOUT`].
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        let path = path.as_ref().to_owned();
        let conn = Connection::open(&path, timeout)?;
        Ok(Client {
            path,
            conn: Mutex::new(Some(conn)),
            timeout,
            cache: None,
        })
    }

    /// Turns on the client-side cache: values this client reads are kept in its own locked,
    /// no-dump memory and served without a round trip (well under a microsecond), until a
    /// change event, a `Lagged` event, a disconnect or the value's expiry empties them. A watch
    /// on its own connection and thread delivers the events; the daemon audits the subscription
    /// and each value's first read.
    pub fn with_cache(mut self) -> Result<Client> {
        if self.cache.is_none() {
            let watch = Watch::open(self.path.clone(), Vec::new(), self.timeout)?;
            self.cache = Some(CachedReads::start(watch)?);
        }
        Ok(self)
    }

    /// Whether the client-side cache is on.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// How many values the client-side cache holds (0 when it is off).
    pub fn cached_len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.cache.len())
    }

    /// Connects to [`crate::default_socket_path`].
    pub fn connect_default() -> Result<Client> {
        Client::connect(crate::default_socket_path())
    }

    /// The socket path this client uses.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Reads a secret.
    pub fn get(&self, name: &str) -> Result<Secret> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        let Some(reads) = &self.cache else {
            return self.fetch(name);
        };
        if let Some(hit) = reads.cache.get(name) {
            return Ok(hit);
        }
        let ticket = reads.cache.ticket();
        let secret = self.fetch(name)?;
        if let Some(ticket) = ticket {
            reads.cache.insert(ticket, name, &secret);
        }
        Ok(secret)
    }

    fn fetch(&self, name: &str) -> Result<Secret> {
        match self.call(&Request::Get { name: name.into() })? {
            Response::Secret(reply) => Ok(Secret::from_reply(reply)),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Watches secrets for changes on a connection of its own: a blocking iterator of
    /// [`ChangeEvent`]s (never values: read the new value with [`Client::get`]). An empty list
    /// watches every secret the caller may read. Names the caller may not read are refused
    /// here, as is a name not in the catalog. See [`Watch`] for reconnection.
    pub fn watch<I, S>(&self, names: I) -> Result<Watch>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let watch = Watch::open(self.path.clone(), watch_names(names)?, self.timeout)?;
        Ok(watch.observed_by(self.cache.as_ref().map(|reads| reads.cache.clone())))
    }

    /// [`Client::watch`] on a thread of its own, calling `callback` for every item until the
    /// returned handle is stopped or dropped.
    pub fn watch_with<I, S, F>(&self, names: I, callback: F) -> Result<WatchHandle>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        F: FnMut(Result<ChangeEvent>) + Send + 'static,
    {
        self.watch(names)?.spawn(callback)
    }

    /// Describes every secret the caller may read (never values).
    pub fn status(&self) -> Result<Vec<SecretStatus>> {
        match self.call(&Request::Status)? {
            Response::Status(list) => Ok(list),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Admin: fetches one secret (or every secret, with `None`) from its source now and
    /// reports each outcome. A failed fetch is an outcome with `error` set, not an `Err`.
    pub fn refresh(&self, name: Option<&str>) -> Result<Vec<RefreshOutcome>> {
        if let Some(name) = name {
            validate_name(name).map_err(Error::InvalidArgument)?;
        }
        let req = Request::Refresh {
            name: name.map(str::to_owned),
        };
        match self.call_with(&req, Some(REFRESH_TIMEOUT))? {
            Response::Refreshed(list) => Ok(list),
            other => Err(unexpected("refresh", &other)),
        }
    }

    /// Admin: a rotation step (`begin` pins a GSM version, `promote`, `abort`; `validate` and
    /// `unpin` need a daemon that speaks protocol 4). Returns the secret's status afterwards.
    pub fn rotation(&self, name: &str, step: RotationStep) -> Result<SecretStatus> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        if matches!(step, RotationStep::Validate | RotationStep::Unpin) {
            self.require_protocol(4, "rotation validate and unpin")?;
        }
        let req = Request::Rotation {
            name: name.into(),
            step,
        };
        match self.call_with(&req, Some(REFRESH_TIMEOUT))? {
            Response::Rotated(status) => Ok(status),
            other => Err(unexpected("rotation", &other)),
        }
    }

    /// Admin: the newest `limit` audit records (of one secret, optionally), oldest first.
    pub fn audit_tail(&self, limit: u32, secret: Option<&str>) -> Result<Vec<AuditEntry>> {
        let req = Request::AuditTail {
            limit,
            secret: secret.map(str::to_owned),
        };
        match self.call(&req)? {
            Response::AuditRecords(list) => Ok(list),
            other => Err(unexpected("audit tail", &other)),
        }
    }

    /// Admin: walks the audit hash chain.
    pub fn audit_verify(&self) -> Result<AuditVerification> {
        match self.call_with(&Request::AuditVerify, Some(REFRESH_TIMEOUT))? {
            Response::AuditVerified(v) => Ok(v),
            other => Err(unexpected("audit verify", &other)),
        }
    }

    /// Admin: applies a break-glass override from a sealed envelope.
    pub fn break_glass_apply(&self, envelope: Vec<u8>) -> Result<SecretStatus> {
        match self.call_with(
            &Request::BreakGlassApply { envelope },
            Some(REFRESH_TIMEOUT),
        )? {
            Response::BreakGlass(status) => Ok(status),
            other => Err(unexpected("break-glass apply", &other)),
        }
    }

    /// Admin: ends a break-glass override now.
    pub fn break_glass_clear(&self, name: &str) -> Result<SecretStatus> {
        validate_name(name).map_err(Error::InvalidArgument)?;
        let req = Request::BreakGlassClear { name: name.into() };
        match self.call_with(&req, Some(REFRESH_TIMEOUT))? {
            Response::BreakGlass(status) => Ok(status),
            other => Err(unexpected("break-glass clear", &other)),
        }
    }

    /// Admin: every open connection and what the daemon attested of its peer (the program,
    /// its hash when a policy selects by it, its systemd unit and cgroup). Needs a daemon that
    /// speaks protocol 3.
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>> {
        self.require_protocol(3, "listing connections")?;
        match self.call(&Request::Connections)? {
            Response::Connections(list) => Ok(list),
            other => Err(unexpected("connections", &other)),
        }
    }

    /// The host's health as `/healthz` judges it, with the notification channel's state.
    /// Anyone may ask; the reasons name only secrets the caller may see. Needs a daemon that
    /// speaks protocol 5.
    pub fn health(&self) -> Result<DaemonHealth> {
        self.require_protocol(5, "asking for health")?;
        match self.call(&Request::Health)? {
            Response::Health(health) => Ok(health),
            other => Err(unexpected("health", &other)),
        }
    }

    /// Refuses `what` up front when the daemon speaks a protocol older than `needed` (it
    /// could not decode the request).
    fn require_protocol(&self, needed: u16, what: &'static str) -> Result<()> {
        let protocol = {
            let mut guard = self.lock();
            let conn = match guard.as_mut() {
                Some(conn) => conn,
                None => guard.insert(Connection::open(&self.path, self.timeout)?),
            };
            conn.protocol
        };
        if protocol < needed {
            return Err(ProtocolError::TooOld {
                speaks: protocol,
                what,
                needs: needed,
            }
            .into());
        }
        Ok(())
    }

    /// Admin: the Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        match self.call(&Request::Metrics)? {
            Response::Metrics(text) => Ok(text),
            other => Err(unexpected("metrics", &other)),
        }
    }

    /// Sends a request, reconnecting once if the connection turns out to be dead (the daemon
    /// restarted, or an earlier request broke it). Every request is idempotent, so a retry
    /// cannot do anything twice that matters.
    fn call(&self, req: &Request) -> Result<Response<'static>> {
        self.call_with(req, None)
    }

    /// [`Client::call`] with an optional longer response timeout.
    fn call_with(&self, req: &Request, slow: Option<Duration>) -> Result<Response<'static>> {
        let mut guard = self.lock();
        let had_connection = guard.is_some();
        match self.call_on(&mut guard, req, slow) {
            Err(e) if e.worth_a_retry() && had_connection => self.call_on(&mut guard, req, slow),
            other => other,
        }
    }

    fn call_on(
        &self,
        slot: &mut MutexGuard<'_, Option<Connection>>,
        req: &Request,
        slow: Option<Duration>,
    ) -> Result<Response<'static>> {
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(Connection::open(&self.path, self.timeout)?),
        };
        let result = match slow {
            Some(t) => conn.call_slow(req, t, self.timeout),
            None => conn.call(req),
        };
        match result {
            Err(e) if e.breaks_connection() => {
                **slot = None;
                Err(e)
            }
            Ok(Response::Error(e)) => Err(Error::Daemon(e)),
            other => other,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        // A panic while holding the lock leaves at worst a half-used connection; drop it.
        self.conn.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }
}

/// The names of a watch request, checked: at most [`MAX_WATCH_NAMES`], each a valid name.
pub(crate) fn watch_names<I, S>(names: I) -> Result<Vec<String>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
    if names.len() > MAX_WATCH_NAMES {
        return Err(Error::InvalidArgument(
            "a watch may list at most 1024 names",
        ));
    }
    for name in &names {
        validate_name(name).map_err(Error::InvalidArgument)?;
    }
    Ok(names)
}

pub(crate) fn unexpected(op: &'static str, got: &Response<'_>) -> Error {
    ProtocolError::unexpected(op, got)
}
