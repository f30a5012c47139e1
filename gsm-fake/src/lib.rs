//! A fake of Google Secret Manager's REST API (v1), close enough that the official Rust client
//! cannot tell the difference, with faults a test can switch on; and a fake of the GCE metadata
//! server and of Google's token endpoints (STS, OAuth, IAM Credentials), so every kind of
//! Google credentials can be exercised end to end. [`pubsub_emulator`] starts and drives
//! Google's own Pub/Sub emulator, for the notification tests and the propagation bench.
//! [`systemd_credentials`] is systemd's side of a `LoadCredential=` from a socket, for the
//! credential provider's tests and bench.
//!
//! It behaves as Google documents, not as is convenient:
//! - `GET /v1/projects/P/secrets/S/versions/V:access` answers
//!   `{"name": "projects/NUMBER/secrets/S/versions/N", "payload": {"data": BASE64,
//!   "dataCrc32c": "DECIMAL"}}`: names come back with the project *number*.
//! - `latest` is the newest created version whatever its state, so a disabled newest version
//!   answers 400 `FAILED_PRECONDITION` ("... is in DISABLED state"), a destroyed one says
//!   DESTROYED. Aliases (`prod`) resolve to the version they point at; destroying a version
//!   removes its aliases.
//! - With [`Handle::set_read_lag`], `latest` and aliases are eventually consistent: a version
//!   added or an alias moved shows only after the lag. Reads by number are always current.
//! - Regional secrets live at `projects/P/locations/L/secrets/S`.
//! - Errors are `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`; a 429 is
//!   `RESOURCE_EXHAUSTED` with a `google.rpc.ErrorInfo` detail.
//! - With [`Handle::require_auth`], a request without a valid bearer token answers 401
//!   `UNAUTHENTICATED`. Valid are tokens the [`FakeMetadata`] server issued and self-signed
//!   service-account JWTs (RS256, `kid`, `iss`, `scope`, `exp` checked) from a key registered
//!   with [`Handle::trust_service_account`]. The default stays permissive.
//!
//! Get-secret, get-version and list-versions are served too, so a test can prove the daemon
//! never calls them on its refresh path.
//!
//! Control, in process: [`FakeGsm`] methods. Over HTTP (for the binary and other languages):
//! `POST /fake/versions {"secret": "projects/p/secrets/s", "data": "text"}`,
//! `PUT /fake/fault {"fault": "unavailable"}` (or `null`), `GET /fake/requests`.

mod auth;
pub mod grpc_recorder;
mod metadata;
pub mod pubsub_emulator;
mod server;
pub mod systemd_credentials;
mod token_server;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

pub use metadata::{FakeMetadata, METADATA_ACCOUNT};
pub use server::serve;
pub use token_server::{FakeTokenServer, Grants};

/// Something to go wrong on access calls until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with an HTML body (a proxy in the way, say).
    Http500Html,
    /// HTTP 503 with a JSON `UNAVAILABLE` status.
    Unavailable,
    /// HTTP 504 `DEADLINE_EXCEEDED`: Google's front end gave up waiting for the backend.
    DeadlineExceeded,
    /// HTTP 403 `PERMISSION_DENIED` with an ErrorInfo of reason `SERVICE_DISABLED`: the
    /// Secret Manager API is not enabled in the project.
    ServiceDisabled,
    /// HTTP 404 `NOT_FOUND`, whatever exists.
    NotFound,
    /// HTTP 403 `PERMISSION_DENIED`.
    PermissionDenied,
    /// HTTP 401 `UNAUTHENTICATED`, whatever the token.
    Unauthenticated,
    /// HTTP 429 `RESOURCE_EXHAUSTED` (quota), with an ErrorInfo detail as GSM sends it.
    RateLimited,
    /// Accept the request and never answer.
    Hang,
    /// Answer correctly after this delay.
    Slow(Duration),
    /// A 200 whose payload data is not base64.
    BadBase64,
    /// A 200 whose `dataCrc32c` does not match the data.
    CrcMismatch,
    /// A 200 with a payload one byte over GSM's 64 KiB limit.
    Oversize,
    /// A 200 without `dataCrc32c` (some emulators send none).
    NoCrc,
}

impl Fault {
    /// Parses the names the HTTP control API uses.
    pub fn parse(name: &str, delay_ms: Option<u64>) -> Option<Fault> {
        Some(match name {
            "http500_html" => Fault::Http500Html,
            "unavailable" => Fault::Unavailable,
            "deadline_exceeded" => Fault::DeadlineExceeded,
            "service_disabled" => Fault::ServiceDisabled,
            "not_found" => Fault::NotFound,
            "permission_denied" => Fault::PermissionDenied,
            "unauthenticated" => Fault::Unauthenticated,
            "rate_limited" => Fault::RateLimited,
            "hang" => Fault::Hang,
            "slow" => Fault::Slow(Duration::from_millis(delay_ms.unwrap_or(1000))),
            "bad_base64" => Fault::BadBase64,
            "crc_mismatch" => Fault::CrcMismatch,
            "oversize" => Fault::Oversize,
            "no_crc" => Fault::NoCrc,
            _ => return None,
        })
    }
}

/// A version's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Accessible.
    Enabled,
    /// Access fails with FAILED_PRECONDITION ("is in DISABLED state").
    Disabled,
    /// Access fails with FAILED_PRECONDITION ("is in DESTROYED state"); the data is gone.
    Destroyed,
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `x-goog-user-project` header: the quota project the call is billed to.
    pub user_project: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) data: Vec<u8>,
    pub(crate) state: Option<VersionState>,
    /// When it was added: `latest` shows it only once the read lag has passed.
    pub(crate) added: std::time::Instant,
    /// Its state before the last change, and when it changed: access shows the old state
    /// until the state lag has passed.
    pub(crate) changed: Option<(Option<VersionState>, std::time::Instant)>,
}

impl Version {
    /// The state an access sees, `lag` being the state lag.
    pub(crate) fn seen_state(&self, lag: Duration) -> Option<VersionState> {
        match self.changed {
            Some((before, at)) if at.elapsed() < lag => before,
            _ => self.state,
        }
    }
}

/// An alias's previous target, shown until the read lag has passed since it moved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AliasMove {
    /// Where it pointed before (`None`: it did not exist).
    pub(crate) previous: Option<usize>,
    /// When it moved.
    pub(crate) at: std::time::Instant,
}

/// A secret's rotation schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rotation {
    /// When GSM next publishes `SECRET_ROTATE` (`None` once a one-shot schedule fired).
    pub(crate) next: Option<SystemTime>,
    /// How far `next` advances each time it fires (`None`: a one-shot schedule).
    pub(crate) period: Option<Duration>,
}

/// A fault limited to one secret, optionally for its next `remaining` access calls only.
#[derive(Debug, Clone)]
pub(crate) struct SecretFault {
    pub(crate) fault: Fault,
    pub(crate) remaining: Option<u32>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// `projects/P[/locations/L]/secrets/S` (project id) → versions; N is at index N-1.
    pub(crate) secrets: HashMap<String, Vec<Version>>,
    /// Secret → alias → version number.
    pub(crate) aliases: HashMap<String, HashMap<String, usize>>,
    /// Secret → alias → its last move, for the read lag.
    pub(crate) alias_moves: HashMap<String, HashMap<String, AliasMove>>,
    /// How long `latest` and aliases take to show a change (Secret Manager's eventual
    /// consistency: "typically within minutes"); reads by version number are immediate.
    pub(crate) read_lag: Duration,
    /// How long a version's state change (disable, enable, destroy) and a secret's deletion
    /// take to show in access calls.
    pub(crate) state_lag: Duration,
    /// Secrets deleted, and when: access finds them until the state lag has passed.
    pub(crate) deleted: HashMap<String, std::time::Instant>,
    /// The location of the regional endpoint this fake plays (`None`: the global endpoint);
    /// each serves its own resources only.
    pub(crate) location: Option<String>,
    /// Secret → its rotation schedule, as GetSecret reports it (`rotation.nextRotationTime`;
    /// `rotationPeriod` is input only in Google's API, so it is never answered).
    pub(crate) rotations: HashMap<String, Rotation>,
    /// The fault applied to every access call.
    pub(crate) fault: Option<Fault>,
    /// Faults applied to one secret's access calls.
    pub(crate) secret_faults: HashMap<String, SecretFault>,
    pub(crate) requests: Vec<Recorded>,
    /// Whether requests need a valid bearer token.
    pub(crate) require_auth: bool,
    /// Access tokens the fake metadata server issued.
    pub(crate) tokens: HashSet<String>,
    /// Service-account keys whose self-signed JWTs are accepted, by `kid`.
    pub(crate) service_accounts: HashMap<String, auth::TrustedKey>,
    /// Requests refused for want of valid credentials.
    pub(crate) unauthenticated: usize,
    /// Requests accepted, by kind of token: `fake` (metadata server), `sts`, `user`, `iam`
    /// (token server), `jwt` (a self-signed service-account JWT).
    pub(crate) accepted: HashMap<String, usize>,
}

/// The project number GSM reports for a project id: stable, twelve digits, as real ones are.
pub fn project_number(project_id: &str) -> String {
    if project_id.bytes().all(|b| b.is_ascii_digit()) {
        return project_id.to_owned();
    }
    (100_000_000_000u64 + u64::from(crc32c::crc32c(project_id.as_bytes()))).to_string()
}

/// Shared state of a running fake.
#[derive(Debug, Clone, Default)]
pub struct Handle(pub(crate) Arc<Mutex<State>>);

impl Handle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a new enabled version and returns its number (1, 2, ...).
    pub fn add_version(&self, secret: &str, data: &[u8]) -> u64 {
        let mut state = self.lock();
        if state.deleted.remove(secret).is_some() {
            // Created anew: a re-created secret numbers its versions from 1 again.
            state.secrets.remove(secret);
        }
        let versions = state.secrets.entry(secret.to_owned()).or_default();
        versions.push(Version {
            data: data.to_vec(),
            state: Some(VersionState::Enabled),
            added: std::time::Instant::now(),
            changed: None,
        });
        versions.len() as u64
    }

    /// Changes a version's state (disable, enable, destroy), as an operator would in GSM.
    pub fn set_version_state(&self, secret: &str, version: u64, new: VersionState) {
        let mut state = self.lock();
        let lagging = state.state_lag;
        if let Some(v) = state
            .secrets
            .get_mut(secret)
            .and_then(|vs| vs.get_mut(version.saturating_sub(1) as usize))
        {
            v.changed = Some((v.state, std::time::Instant::now()));
            v.state = Some(new);
            if new == VersionState::Destroyed {
                // The data stays only while the state lag shows the version as it was.
                if lagging.is_zero() {
                    v.data.clear();
                }
                // Google removes the aliases of a destroyed version.
                if let Some(aliases) = state.aliases.get_mut(secret) {
                    aliases.retain(|_, n| *n as u64 != version);
                }
            }
        }
    }

    /// Makes `latest` and aliases show a change only after `lag`, as Secret Manager's
    /// eventual consistency may ("typically within minutes"); reads by version number stay
    /// immediate, as Google guarantees. Zero (the default) shows everything at once.
    pub fn set_read_lag(&self, lag: Duration) {
        self.lock().read_lag = lag;
    }

    /// Makes a version's state change and a secret's deletion show in access calls only after
    /// `lag`, as Secret Manager's eventual consistency may. Zero (the default) shows them at
    /// once.
    pub fn set_state_lag(&self, lag: Duration) {
        self.lock().state_lag = lag;
    }

    /// Deletes `secret` with its versions and aliases, as `gcloud secrets delete` does (shown
    /// after the state lag). Adding a version afterwards creates it anew, from version 1.
    pub fn delete_secret(&self, secret: &str) {
        let mut state = self.lock();
        if state.secrets.contains_key(secret) {
            state
                .deleted
                .insert(secret.to_owned(), std::time::Instant::now());
            state.aliases.remove(secret);
        }
    }

    /// Points `alias` of `secret` at `version` (or removes it with `None`).
    pub fn set_alias(&self, secret: &str, alias: &str, version: Option<u64>) {
        let mut state = self.lock();
        let aliases = state.aliases.entry(secret.to_owned()).or_default();
        let previous = match version {
            Some(v) => aliases.insert(alias.to_owned(), v as usize),
            None => aliases.remove(alias),
        };
        let moved = AliasMove {
            previous,
            at: std::time::Instant::now(),
        };
        state
            .alias_moves
            .entry(secret.to_owned())
            .or_default()
            .insert(alias.to_owned(), moved);
    }

    /// Sets `secret`'s rotation schedule, as `gcloud secrets update --next-rotation-time
    /// --rotation-period` would.
    pub fn set_rotation(&self, secret: &str, next: SystemTime, period: Option<Duration>) {
        let rotation = Rotation {
            next: Some(next),
            period,
        };
        self.lock().rotations.insert(secret.to_owned(), rotation);
    }

    /// Does what GSM does when a rotation comes due: advances the schedule by its period (or
    /// clears a one-shot one). The caller publishes the `SECRET_ROTATE` message.
    pub fn fire_rotation(&self, secret: &str) {
        if let Some(r) = self.lock().rotations.get_mut(secret) {
            r.next = match (r.next, r.period) {
                (Some(next), Some(period)) => Some(next + period),
                _ => None,
            };
        }
    }

    /// Sets or clears the fault applied to every access call.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Applies `fault` to `secret`'s access calls: the next `times` of them, or all until
    /// cleared with `None` (then the fault is ignored).
    pub fn set_secret_fault(&self, secret: &str, fault: Option<Fault>, times: Option<u32>) {
        let mut state = self.lock();
        match fault {
            Some(fault) => state.secret_faults.insert(
                secret.to_owned(),
                SecretFault {
                    fault,
                    remaining: times,
                },
            ),
            None => state.secret_faults.remove(secret),
        };
    }

    /// From now on, requests without a valid bearer token answer 401 UNAUTHENTICATED.
    pub fn require_auth(&self) {
        self.lock().require_auth = true;
    }

    /// Accepts self-signed JWTs of this service account: `kid` is the key file's
    /// `private_key_id`, `public_key_pem` its public half (SPKI PEM).
    pub fn trust_service_account(
        &self,
        email: &str,
        kid: &str,
        public_key_pem: &str,
    ) -> Result<(), rsa::pkcs8::spki::Error> {
        let key = auth::TrustedKey::new(email, public_key_pem)?;
        self.lock().service_accounts.insert(kid.to_owned(), key);
        Ok(())
    }

    /// How many requests carrying a token of `kind` were accepted (see [`FakeTokenServer`] and
    /// [`FakeMetadata`] for the kinds; `jwt` for service-account keys).
    pub fn accepted(&self, kind: &str) -> usize {
        self.lock().accepted.get(kind).copied().unwrap_or(0)
    }

    /// How many requests were refused for want of valid credentials.
    pub fn unauthenticated_count(&self) -> usize {
        self.lock().unauthenticated
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many access calls named `secret` (any version; by project id or number).
    pub fn access_count(&self, secret: &str) -> usize {
        let wanted = server::canonical(secret);
        self.lock()
            .requests
            .iter()
            .filter_map(|r| r.path.strip_prefix("/v1/")?.strip_suffix(":access"))
            .filter_map(|name| name.rsplit_once("/versions/"))
            .filter(|(s, _)| server::canonical(s) == wanted)
            .count()
    }

    /// Calls that were not AccessSecretVersion (metadata reads the refresh path must avoid).
    pub fn non_access_calls(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/v1/") && !r.path.ends_with(":access"))
            .count()
    }
}

/// Serves HTTP/1.1 on `listener` until dropped, each request answered by `route`.
pub(crate) async fn serve_http<F, Fut>(listener: tokio::net::TcpListener, route: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<hyper::body::Bytes>>>
        + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = route(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An HTTP server on a loopback port in a background thread; stops on drop.
#[derive(Debug)]
pub(crate) struct Running {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Stops the server.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Binds 127.0.0.1 on an ephemeral port and runs `serve` on it in a thread of its own.
    pub(crate) fn start<F, Fut>(name: &str, serve: F) -> std::io::Result<Running>
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Running {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A GSM fake running on a loopback port in a background thread; stops on drop.
#[derive(Debug)]
pub struct FakeGsm {
    /// Its state.
    handle: Handle,
    /// The server.
    running: Running,
}

impl FakeGsm {
    /// Starts a fake on 127.0.0.1 with an ephemeral port.
    pub fn start() -> std::io::Result<FakeGsm> {
        let handle = Handle::default();
        let served = handle.clone();
        let running = Running::start("fake-gsm", move |listener| serve(listener, served))?;
        Ok(FakeGsm { handle, running })
    }

    /// Starts a fake of the regional endpoint of `location`
    /// (`secretmanager.LOCATION.rep.googleapis.com`), which serves secrets in that location
    /// only; [`FakeGsm::start`]'s serves global secrets only.
    pub fn start_regional(location: &str) -> std::io::Result<FakeGsm> {
        let handle = Handle::default();
        handle.lock().location = Some(location.to_owned());
        let served = handle.clone();
        let running = Running::start("fake-gsm-regional", move |listener| serve(listener, served))?;
        Ok(FakeGsm { handle, running })
    }

    /// The endpoint to configure as `[gsm] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The state, to add versions, inject faults and read the request log.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl std::ops::Deref for FakeGsm {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}
