//! The public client: reconnects, request helpers.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use secretd_proto::{
    AuditEntry, AuditVerification, RefreshOutcome, Request, Response, RotationStep, SecretStatus,
    validate_name,
};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::secret::Secret;

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

    /// Connects with a per-request timeout other than [`DEFAULT_TIMEOUT`].
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        let path = path.as_ref().to_owned();
        let conn = Connection::open(&path, timeout)?;
        Ok(Client {
            path,
            conn: Mutex::new(Some(conn)),
            timeout,
        })
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
        match self.call(&Request::Get { name: name.into() })? {
            Response::Secret(reply) => Ok(Secret::from_reply(reply)),
            other => Err(unexpected("get", &other)),
        }
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

    /// Admin: a rotation step (`begin` pins a GSM version, `promote`, `abort`). Returns the
    /// secret's status afterwards.
    pub fn rotation(&self, name: &str, step: RotationStep) -> Result<SecretStatus> {
        validate_name(name).map_err(Error::InvalidArgument)?;
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

    /// Admin: the Prometheus text exposition, as `/metrics` serves it.
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
            Err(e) if e.breaks_connection() && had_connection => {
                self.call_on(&mut guard, req, slow)
            }
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

fn unexpected(op: &str, got: &Response<'_>) -> Error {
    Error::Protocol(format!(
        "daemon answered {op} with a {} message",
        got.kind()
    ))
}
