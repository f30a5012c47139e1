//! A fake of Google Secret Manager's REST API (v1), close enough that the official Rust client
//! cannot tell the difference, with faults a test can switch on.
//!
//! Paths and JSON follow the real service: `GET /v1/projects/P/secrets/S/versions/V:access`
//! answers `{"name": ".../versions/N", "payload": {"data": BASE64, "dataCrc32c": "DECIMAL"}}`;
//! errors are `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`. `latest`
//! resolves to the newest enabled version. Get-secret, get-version and list-versions are served
//! too, so a test can prove the daemon never calls them on its refresh path.
//!
//! Control, in process: [`FakeGsm`] methods. Over HTTP (for the binary and other languages):
//! `POST /fake/versions {"secret": "projects/p/secrets/s", "data": "text"}`,
//! `PUT /fake/fault {"fault": "unavailable"}` (or `null`), `GET /fake/requests`.

mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use server::serve;

/// Something to go wrong on every access call until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with an HTML body (a proxy in the way, say).
    Http500Html,
    /// HTTP 503 with a JSON `UNAVAILABLE` status.
    Unavailable,
    /// HTTP 404 `NOT_FOUND`, whatever exists.
    NotFound,
    /// HTTP 403 `PERMISSION_DENIED`.
    PermissionDenied,
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
            "not_found" => Fault::NotFound,
            "permission_denied" => Fault::PermissionDenied,
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
    /// Access fails with FAILED_PRECONDITION.
    Disabled,
    /// Access fails with FAILED_PRECONDITION; the data is gone.
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
}

#[derive(Debug, Default)]
pub(crate) struct Version {
    pub(crate) data: Vec<u8>,
    pub(crate) state: Option<VersionState>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// `projects/P/secrets/S` → versions; version N is at index N-1.
    pub(crate) secrets: HashMap<String, Vec<Version>>,
    pub(crate) fault: Option<Fault>,
    pub(crate) requests: Vec<Recorded>,
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
        let versions = state.secrets.entry(secret.to_owned()).or_default();
        versions.push(Version {
            data: data.to_vec(),
            state: Some(VersionState::Enabled),
        });
        versions.len() as u64
    }

    /// Changes a version's state.
    pub fn set_version_state(&self, secret: &str, version: u64, new: VersionState) {
        let mut state = self.lock();
        if let Some(v) = state
            .secrets
            .get_mut(secret)
            .and_then(|vs| vs.get_mut(version.saturating_sub(1) as usize))
        {
            v.state = Some(new);
            if new == VersionState::Destroyed {
                v.data.clear();
            }
        }
    }

    /// Sets or clears the fault applied to every access call.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many access calls named `secret` (any version).
    pub fn access_count(&self, secret: &str) -> usize {
        let prefix = format!("/v1/{secret}/versions/");
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(&prefix) && r.path.ends_with(":access"))
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

/// A fake running on a loopback port in a background thread; stops on drop.
#[derive(Debug)]
pub struct FakeGsm {
    /// Where it listens.
    addr: SocketAddr,
    /// Its state.
    handle: Handle,
    /// Stops the server.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeGsm {
    /// Starts a fake on 127.0.0.1 with an ephemeral port.
    pub fn start() -> std::io::Result<FakeGsm> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let handle = Handle::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let served = handle.clone();
        let thread = std::thread::Builder::new()
            .name("fake-gsm".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = serve(listener, served) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(FakeGsm {
            addr,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The endpoint to configure as `[gsm] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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

impl Drop for FakeGsm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
