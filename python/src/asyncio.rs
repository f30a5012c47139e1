//! `secretd._native.AsyncClient`: the tokio client ([`rust::AsyncClient`]) as asyncio
//! awaitables. No executor thread: a call's future runs on this process's tokio runtime
//! ([`crate::runtime`]) and its result is handed to the event loop ([`crate::bridge`]). The
//! Python `AsyncClient` reads through [`crate::loop_reads`] instead (on the event loop itself,
//! no thread hop), except with `cache=True`; `status`, `refresh` and `watch` come here.
//!
//! Cancelling the asyncio task drops the Rust future; the tokio client finishes the exchange
//! it was in on its own and pools the connection again (see `secretd_client::AsyncClient`).

use std::path::PathBuf;
use std::sync::Arc;

use ::secretd_client as rust;
use futures::StreamExt;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;

use crate::bridge::awaitable;
use crate::per_process::PerProcess;
use crate::runtime::runtime;
use crate::{ChangeEvent, Secret, refresh_dicts, status_dicts, to_py_err};

/// A client error as the matching Python exception (taking the GIL to build it).
fn py_err(e: rust::Error) -> PyErr {
    Python::attach(|py| to_py_err(py, e))
}

/// Connects on this process's runtime, with the client-side cache when asked.
fn connect(path: PathBuf, cache: bool) -> rust::Result<rust::AsyncClient> {
    let rt = runtime().map_err(|_| rust::ProtocolError::Runtime)?;
    rt.block_on(async {
        let client = rust::AsyncClient::connect(path).await?;
        if cache {
            client.with_cache().await
        } else {
            Ok(client)
        }
    })
}

/// A tokio client of the daemon whose calls are asyncio awaitables.
#[pyclass(module = "secretd._native", frozen)]
pub(crate) struct AsyncClient {
    /// The Rust client of this process (remade, on the child's runtime, after a fork).
    inner: PerProcess<rust::AsyncClient>,
}

impl AsyncClient {
    /// The Rust client for this process (reconnecting after a fork; connecting blocks briefly,
    /// with the GIL released, as the constructor does).
    fn client(&self, py: Python<'_>) -> PyResult<rust::AsyncClient> {
        runtime()?;
        self.inner.client(py, connect)
    }
}

#[pymethods]
impl AsyncClient {
    /// Connects now (a local socket: quick), with the GIL released.
    #[new]
    #[pyo3(signature = (socket_path=None, cache=false))]
    fn new(py: Python<'_>, socket_path: Option<PathBuf>, cache: bool) -> PyResult<AsyncClient> {
        let path = socket_path.unwrap_or_else(rust::default_socket_path);
        runtime()?;
        Ok(AsyncClient {
            inner: PerProcess::connect(py, path, cache, connect)?,
        })
    }

    /// The socket path.
    #[getter]
    fn socket_path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// Reads a secret: an awaitable of `Secret`.
    fn get<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client(py)?;
        awaitable(py, async move {
            let inner = client.get(&name).await.map_err(py_err)?;
            Ok(Secret { name, inner })
        })
    }

    /// The client-side cache's value for `name`, if the cache is on and holds it (no await:
    /// a hit costs what the blocking client's does).
    fn cached_get(&self, py: Python<'_>, name: String) -> PyResult<Option<Secret>> {
        let client = self.client(py)?;
        Ok(client.cached_get(&name).map(|inner| Secret { name, inner }))
    }

    /// Every secret the caller may read, as dicts; never values.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client(py)?;
        awaitable(py, async move {
            let list = client.status().await.map_err(py_err)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let rows = status_dicts(py, list)?;
                Ok(rows.into_pyobject(py)?.into_any().unbind())
            })
        })
    }

    /// Admin: fetches one secret (or all) from its source now; one dict per secret.
    #[pyo3(signature = (name=None))]
    fn refresh<'py>(&self, py: Python<'py>, name: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client(py)?;
        awaitable(py, async move {
            let list = client.refresh(name.as_deref()).await.map_err(py_err)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let rows = refresh_dicts(py, list)?;
                Ok(rows.into_pyobject(py)?.into_any().unbind())
            })
        })
    }

    /// Watches secrets for changes on a connection of its own: an awaitable of `AsyncWatch`.
    #[pyo3(signature = (names=None))]
    fn watch<'py>(
        &self,
        py: Python<'py>,
        names: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client(py)?;
        let names = names.unwrap_or_default();
        awaitable(py, async move {
            let watch = client.watch(&names).await.map_err(py_err)?;
            Ok(AsyncWatch {
                names: watch.names().to_vec(),
                inner: Arc::new(tokio::sync::Mutex::new(Some(watch))),
                closed: Arc::new(tokio::sync::Notify::new()),
            })
        })
    }

    /// Whether the client-side cache is on.
    #[getter]
    fn cached(&self) -> bool {
        self.inner.cache
    }

    /// Closes the client; later calls raise `secretd.Error`. Calls under way finish.
    fn close(&self) {
        self.inner.close();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.closed()
    }
}

/// A stream of change events for `async for`. Survives daemon restarts (yielding a "lagged"
/// event after resubscribing); `close()` ends it, waking a pending `__anext__`.
#[pyclass(module = "secretd._native", frozen)]
pub(crate) struct AsyncWatch {
    /// The names the daemon confirmed.
    names: Vec<String>,
    /// The Rust stream; `None` once closed (which closes its connection).
    inner: Arc<tokio::sync::Mutex<Option<rust::AsyncWatch>>>,
    /// Wakes a pending `__anext__` when `close()` is called.
    closed: Arc<tokio::sync::Notify>,
}

/// What a wait for the next event ended with.
enum Next {
    /// An event.
    Event(rust::ChangeEvent),
    /// The daemon refused to resubscribe: the stream's last item.
    Refused(rust::Error),
    /// Closed, or the stream ended.
    End,
}

#[pymethods]
impl AsyncWatch {
    fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (inner, closed) = (self.inner.clone(), self.closed.clone());
        awaitable(py, async move {
            let next = {
                let mut slot = inner.lock().await;
                loop {
                    let Some(watch) = slot.as_mut() else {
                        break Next::End;
                    };
                    let item = tokio::select! {
                        item = watch.next() => item,
                        () = closed.notified() => None,
                    };
                    match item {
                        Some(Ok(event)) => break Next::Event(event),
                        Some(Err(e @ rust::Error::Daemon(_))) => break Next::Refused(e),
                        // The connection broke: the stream resubscribes and yields "lagged".
                        Some(Err(_)) => {}
                        None => {
                            *slot = None;
                            break Next::End;
                        }
                    }
                }
            };
            match next {
                Next::Event(event) => Ok(ChangeEvent::from(event)),
                Next::Refused(e) => Err(py_err(e)),
                Next::End => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }

    /// The names watched.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Ends the watch and closes its connection; a pending `__anext__` stops promptly.
    fn close(&self) {
        match self.inner.try_lock() {
            Ok(mut slot) => *slot = None,
            // A pending `__anext__` holds the stream: wake it (or, if it has not started
            // waiting yet, leave it a permit) and it drops the stream itself.
            Err(_) => self.closed.notify_one(),
        }
    }
}
