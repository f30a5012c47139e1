//! `secretd._native`: the compiled half of the `secretd` Python package. The public API is the
//! pure-Python package around it (python/python/secretd/__init__.py).
//!
//! Every call that touches the socket releases the GIL (`py.detach`), so other Python threads
//! run while one waits on the daemon. No lock of ours is ever held across a GIL release.

#![allow(unsafe_op_in_unsafe_fn)] // pyo3's macros

mod asyncio;
mod bridge;
mod loop_reads;
mod per_process;
mod runtime;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::secretd_client as rust;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rust::{Error as RustError, ErrorCode};

use crate::per_process::PerProcess;

create_exception!(
    secretd,
    Error,
    PyException,
    "Base class of every secretd error. `code` holds the daemon's stable error code, or None."
);
create_exception!(
    secretd,
    NotFound,
    Error,
    "The name is not in the daemon's catalog."
);
create_exception!(
    secretd,
    PermissionDenied,
    Error,
    "The daemon's policy does not let this process's uid/groups do this."
);
create_exception!(
    secretd,
    Unavailable,
    Error,
    "The secret has no servable value right now (not loaded, or stale past max_stale)."
);
create_exception!(
    secretd,
    Revoked,
    Unavailable,
    "The served version was withdrawn in GSM (disabled, destroyed, or the secret deleted)."
);
create_exception!(
    secretd,
    Timeout,
    Unavailable,
    "The daemon did not answer within the request timeout (5 s by default)."
);
create_exception!(
    secretd,
    ProtocolError,
    Error,
    "The daemon and this library do not understand each other."
);
create_exception!(
    secretd,
    ConnectError,
    Error,
    "No daemon answered at the socket path."
);

create_exception!(
    secretd,
    UntrustedServer,
    ConnectError,
    "The process behind the socket cannot be the real daemon; nothing was sent to it."
);

/// Converts a client error into the matching exception, with `.code` set.
fn to_py_err(py: Python<'_>, e: RustError) -> PyErr {
    let message = e.to_string();
    let err = match &e {
        RustError::Connect { .. } => ConnectError::new_err(message),
        RustError::Protocol(_) => ProtocolError::new_err(message),
        RustError::Daemon(w) => match w.code {
            ErrorCode::NotFound => NotFound::new_err(message),
            ErrorCode::PermissionDenied => PermissionDenied::new_err(message),
            ErrorCode::Unavailable => Unavailable::new_err(message),
            ErrorCode::Revoked => Revoked::new_err(message),
            ErrorCode::ProtocolViolation | ErrorCode::UnsupportedVersion => {
                ProtocolError::new_err(message)
            }
            _ => Error::new_err(message),
        },
        RustError::Timeout { .. } => Timeout::new_err(message),
        RustError::UntrustedServer { .. } => UntrustedServer::new_err(message),
        RustError::Io(_) | RustError::InvalidArgument(_) => Error::new_err(message),
    };
    let code = e.code().map(ErrorCode::as_u16);
    // Attaching the attribute can only fail on a broken interpreter; the error stands anyway.
    let _ = err.value(py).setattr("code", code);
    err
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn ms_to_seconds(ms: Option<i64>) -> Option<f64> {
    ms.map(|ms| ms as f64 / 1000.0)
}

/// A secret value. The bytes live in Rust memory that is wiped when this object is collected;
/// `expose()` hands Python a copy, which Python cannot wipe, so call it as late as possible.
#[pyclass(module = "secretd", frozen)]
struct Secret {
    /// The catalog name it was read under.
    name: String,
    /// The value and metadata.
    inner: rust::Secret,
}

#[pymethods]
impl Secret {
    /// The value as bytes (a copy).
    fn expose<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.expose())
    }

    /// The catalog name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The source's version: the GSM version number, or a local counter.
    #[getter]
    fn version(&self) -> &str {
        self.inner.version()
    }

    /// Where the value came from: "gsm", "break_glass", "env" or "file".
    #[getter]
    fn source(&self) -> &'static str {
        self.inner.source().as_str()
    }

    /// When the daemon fetched the value, Unix seconds.
    #[getter]
    fn fetched_at(&self) -> f64 {
        unix_seconds(self.inner.fetched_at())
    }

    /// When the daemon will refresh the value, Unix seconds.
    #[getter]
    fn expires_at(&self) -> f64 {
        unix_seconds(self.inner.expires_at())
    }

    fn __repr__(&self) -> String {
        format!(
            "Secret(name={:?}, version={:?}, source={:?}, value=<redacted {} bytes>)",
            self.name,
            self.inner.version(),
            self.inner.source().as_str(),
            self.inner.len()
        )
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }

    /// Refuses pickling (and copy.copy): a secret must not be serialized by accident.
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "secretd.Secret cannot be pickled or copied",
        ))
    }
}

/// Forks this process has been through (counted in the child by a `pthread_atfork` handler),
/// so a client notices it runs in a child without a `getpid` syscall on every call.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
}

/// A connection to the daemon, shared by threads.
#[pyclass(module = "secretd._native", frozen)]
struct Client {
    /// The Rust client of this process.
    inner: PerProcess<Arc<rust::Client>>,
}

/// Connects, with the client-side cache when asked.
fn connect(path: PathBuf, cache: bool) -> rust::Result<Arc<rust::Client>> {
    let client = rust::Client::connect(path)?;
    let client = if cache { client.with_cache()? } else { client };
    Ok(Arc::new(client))
}

/// How often a blocked `Watch.__next__` comes back to let Python handle signals (Ctrl-C).
const WATCH_SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// A change event from `Client.watch`. Never holds a value.
#[pyclass(module = "secretd", frozen)]
struct ChangeEvent {
    /// "changed" or "lagged".
    #[pyo3(get)]
    kind: &'static str,
    /// The secret, for "changed".
    #[pyo3(get)]
    name: Option<String>,
    /// The version now served, for "changed".
    #[pyo3(get)]
    version: Option<String>,
    /// Where the value now served came from, for "changed".
    #[pyo3(get)]
    source: Option<&'static str>,
    /// Keyed fingerprint of the value now served, for "changed".
    #[pyo3(get)]
    fingerprint: Option<String>,
    /// When the daemon started serving it, Unix seconds, for "changed".
    #[pyo3(get)]
    at: Option<f64>,
}

#[pymethods]
impl ChangeEvent {
    fn __repr__(&self) -> String {
        match (&self.name, self.kind) {
            (Some(name), "changed") => format!(
                "ChangeEvent(kind='changed', name={name:?}, version={:?}, source={:?})",
                self.version.as_deref().unwrap_or(""),
                self.source.unwrap_or("")
            ),
            (Some(name), kind) => format!("ChangeEvent(kind={kind:?}, name={name:?})"),
            (None, kind) => format!("ChangeEvent(kind={kind:?})"),
        }
    }
}

impl From<rust::ChangeEvent> for ChangeEvent {
    fn from(e: rust::ChangeEvent) -> ChangeEvent {
        match e {
            rust::ChangeEvent::Changed(c) => ChangeEvent {
                kind: "changed",
                name: Some(c.name),
                version: Some(c.version),
                source: Some(c.source.as_str()),
                fingerprint: Some(c.fingerprint),
                at: Some(c.at_ms as f64 / 1000.0),
            },
            rust::ChangeEvent::RotationRequested(r) => ChangeEvent {
                kind: "rotation_requested",
                name: Some(r.name),
                version: None,
                source: None,
                fingerprint: None,
                at: Some(r.at_ms as f64 / 1000.0),
            },
            rust::ChangeEvent::Lagged => ChangeEvent {
                kind: "lagged",
                name: None,
                version: None,
                source: None,
                fingerprint: None,
                at: None,
            },
        }
    }
}

/// A stream of change events; iterate it. Survives daemon restarts (yielding a "lagged"
/// event after resubscribing). `close()` ends it from any thread.
#[pyclass(module = "secretd._native", frozen)]
struct Watch {
    /// The Rust watch; locked only while the GIL is released in `__next__`.
    inner: Mutex<rust::Watch>,
    /// Ends the watch without taking `inner`.
    stopper: rust::WatchStopper,
    /// The names the daemon confirmed.
    names: Vec<String>,
}

#[pymethods]
impl Watch {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<ChangeEvent>> {
        loop {
            py.check_signals()?;
            let item = py.detach(|| {
                let mut watch = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                watch.next_timeout(WATCH_SIGNAL_CHECK)
            });
            match item {
                None => return Ok(None),
                Some(Ok(None)) => {}
                Some(Ok(Some(event))) => return Ok(Some(event.into())),
                Some(Err(e @ RustError::Daemon(_))) => return Err(to_py_err(py, e)),
                // The connection broke: the next round resubscribes and yields "lagged".
                Some(Err(_)) => {}
            }
        }
    }

    /// The names watched.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Ends the watch; a blocked iteration stops promptly.
    fn close(&self) {
        self.stopper.stop();
    }
}

impl Client {
    /// The Rust client for this process (reconnecting after a fork).
    fn client(&self, py: Python<'_>) -> PyResult<Arc<rust::Client>> {
        self.inner.client(py, connect)
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (socket_path=None, cache=false))]
    fn new(py: Python<'_>, socket_path: Option<PathBuf>, cache: bool) -> PyResult<Client> {
        let path = socket_path.unwrap_or_else(rust::default_socket_path);
        Ok(Client {
            inner: PerProcess::connect(py, path, cache, connect)?,
        })
    }

    /// The socket path.
    #[getter]
    fn socket_path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// Reads a secret.
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<Secret> {
        let client = self.client(py)?;
        let secret = py
            .detach(|| client.get(name))
            .map_err(|e| to_py_err(py, e))?;
        Ok(Secret {
            name: name.to_owned(),
            inner: secret,
        })
    }

    /// Every secret the caller may read, as dicts; never values.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let client = self.client(py)?;
        let list = py
            .detach(|| client.status())
            .map_err(|e| to_py_err(py, e))?;
        status_dicts(py, list)
    }

    /// Admin: fetches one secret (or all) from its source now; one dict per secret with
    /// `name`, `version` (on success) and `error` (on failure).
    #[pyo3(signature = (name=None))]
    fn refresh<'py>(
        &self,
        py: Python<'py>,
        name: Option<&str>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let client = self.client(py)?;
        let list = py
            .detach(|| client.refresh(name))
            .map_err(|e| to_py_err(py, e))?;
        refresh_dicts(py, list)
    }

    /// Watches secrets for changes (every secret the caller may read, when `names` is empty)
    /// on a connection of its own.
    #[pyo3(signature = (names=None))]
    fn watch(&self, py: Python<'_>, names: Option<Vec<String>>) -> PyResult<Watch> {
        let client = self.client(py)?;
        let names = names.unwrap_or_default();
        let watch = py
            .detach(|| client.watch(&names))
            .map_err(|e| to_py_err(py, e))?;
        Ok(Watch {
            stopper: watch.stopper(),
            names: watch.names().to_vec(),
            inner: Mutex::new(watch),
        })
    }

    /// Whether the client-side cache is on.
    #[getter]
    fn cached(&self) -> bool {
        self.inner.cache
    }

    /// Closes the connection; later calls raise `secretd.Error`.
    fn close(&self) {
        self.inner.close();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.closed()
    }
}

/// `status` rows as dicts; never values.
fn status_dicts(py: Python<'_>, list: Vec<rust::SecretStatus>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    list.into_iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("name", s.name)?;
            d.set_item("source", s.configured_source.as_str())?;
            d.set_item("cache_source", s.cache_source.map(|k| k.as_str()))?;
            d.set_item("state", s.state.as_str())?;
            d.set_item("version", s.version)?;
            d.set_item("fetched_at", ms_to_seconds(s.fetched_at_ms))?;
            d.set_item("expires_at", ms_to_seconds(s.expires_at_ms))?;
            d.set_item("age_seconds", s.age_ms.map(|ms| ms as f64 / 1000.0))?;
            d.set_item("last_error", s.last_error.map(|e| e.message))?;
            d.set_item("metadata_status", s.metadata_status)?;
            d.set_item("rotation_due_at", ms_to_seconds(s.rotation_due_at_ms))?;
            d.set_item(
                "break_glass_expires_at",
                ms_to_seconds(s.break_glass_expires_at_ms),
            )?;
            d.set_item("fingerprint", s.fingerprint)?;
            d.set_item("last_error_reason", s.last_error_reason)?;
            d.set_item("version_alias", s.version_alias)?;
            d.set_item("gcp_secret", s.gcp_secret)?;
            d.set_item("owner", s.owner)?;
            d.set_item("last_rotated_at", ms_to_seconds(s.last_rotated_at_ms))?;
            d.set_item("last_validated_at", ms_to_seconds(s.last_validated_at_ms))?;
            Ok(d)
        })
        .collect()
}

/// `refresh` outcomes as dicts: `name`, `version` (on success), `error` (on failure).
fn refresh_dicts(
    py: Python<'_>,
    list: Vec<rust::RefreshOutcome>,
) -> PyResult<Vec<Bound<'_, PyDict>>> {
    list.into_iter()
        .map(|o| {
            let d = PyDict::new(py);
            d.set_item("name", o.name)?;
            d.set_item("version", o.version)?;
            d.set_item("error", o.error.map(|e| e.message))?;
            Ok(d)
        })
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    static AT_FORK: Once = Once::new();
    // SAFETY: registers a handler that only touches an atomic, which is async-signal-safe.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(count_fork_in_child));
    });
    m.add_class::<Client>()?;
    m.add_class::<asyncio::AsyncClient>()?;
    m.add_class::<asyncio::AsyncWatch>()?;
    m.add_class::<loop_reads::LoopReads>()?;
    m.add_class::<Secret>()?;
    m.add_class::<Watch>()?;
    m.add_class::<ChangeEvent>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("Revoked", py.get_type::<Revoked>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("UntrustedServer", py.get_type::<UntrustedServer>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
