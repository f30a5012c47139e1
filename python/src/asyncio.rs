//! `secretd._native.AsyncClient`: the tokio client ([`rust::AsyncClient`]) as asyncio
//! awaitables, through pyo3-async-runtimes. No executor thread: a call's future runs on this
//! process's tokio runtime ([`crate::runtime`]) and its result is handed to the event loop.
//!
//! Cancelling the asyncio task drops the Rust future; the tokio client finishes the exchange
//! it was in on its own and pools the connection again (see `secretd_client::AsyncClient`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use ::secretd_client as rust;
use futures::StreamExt;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;

use crate::bridge::awaitable;
use crate::runtime::runtime;
use crate::{ChangeEvent, Error as PyError, FORKS, Secret, refresh_dicts, status_dicts, to_py_err};

/// A client error as the matching Python exception (taking the GIL to build it).
fn py_err(e: rust::Error) -> PyErr {
    Python::attach(|py| to_py_err(py, e))
}

/// Connects, with the client-side cache when asked.
async fn connect(path: PathBuf, cache: bool) -> rust::Result<rust::AsyncClient> {
    let client = rust::AsyncClient::connect(path).await?;
    if cache {
        client.with_cache().await
    } else {
        Ok(client)
    }
}

/// The Rust client and the fork generation that made it: a child must not use the parent's
/// sockets (nor its runtime), so a fork since connecting means reconnect.
struct Live {
    /// [`FORKS`] when it connected.
    forks: u64,
    /// The tokio client (cheap to clone into each call's future).
    client: rust::AsyncClient,
}

/// A tokio client of the daemon whose calls are asyncio awaitables.
#[pyclass(module = "secretd._native", frozen)]
pub(crate) struct AsyncClient {
    /// Where to connect.
    path: PathBuf,
    /// Whether the client-side cache is on (kept so a forked child turns it on again).
    cache: bool,
    /// `None` once closed.
    live: Mutex<Option<Live>>,
}

impl AsyncClient {
    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Rust client for this process; after a fork, a new one on the child's runtime
    /// (connecting blocks briefly, with the GIL released, as the constructor does).
    fn client(&self, py: Python<'_>) -> PyResult<rust::AsyncClient> {
        let forks = FORKS.load(Ordering::Acquire);
        match self.lock().as_ref() {
            None => return Err(PyError::new_err("the client is closed")),
            Some(live) if live.forks == forks => return Ok(live.client.clone()),
            Some(_) => {}
        }
        let rt = runtime()?;
        let (path, cache) = (self.path.clone(), self.cache);
        let fresh = py
            .detach(move || rt.block_on(connect(path, cache)))
            .map_err(|e| to_py_err(py, e))?;
        let mut slot = self.lock();
        if slot.is_none() {
            return Err(PyError::new_err("the client is closed"));
        }
        let inherited = slot.replace(Live {
            forks,
            client: fresh.clone(),
        });
        // The parent's client is not ours to tear down: its sockets are registered with the
        // parent's epoll instance, which this process shares; dropping them here would
        // deregister them there.
        std::mem::forget(inherited);
        Ok(fresh)
    }
}

#[pymethods]
impl AsyncClient {
    /// Connects now (a local socket: quick), with the GIL released.
    #[new]
    #[pyo3(signature = (socket_path=None, cache=false))]
    fn new(py: Python<'_>, socket_path: Option<PathBuf>, cache: bool) -> PyResult<AsyncClient> {
        let path = socket_path.unwrap_or_else(rust::default_socket_path);
        let rt = runtime()?;
        let connect_path = path.clone();
        let client = py
            .detach(move || rt.block_on(connect(connect_path, cache)))
            .map_err(|e| to_py_err(py, e))?;
        Ok(AsyncClient {
            path,
            cache,
            live: Mutex::new(Some(Live {
                forks: FORKS.load(Ordering::Acquire),
                client,
            })),
        })
    }

    /// The socket path.
    #[getter]
    fn socket_path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Reads a secret: an awaitable of `Secret`.
    fn get<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client(py)?;
        awaitable(py, async move {
            let inner = client.get(&name).await.map_err(py_err)?;
            Ok(Secret { name, inner })
        })
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
        self.cache
    }

    /// Closes the client; later calls raise `secretd.Error`. Calls under way finish.
    fn close(&self) {
        self.lock().take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
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
        self.closed.notify_waiters();
        // Not awaited: when a pending `__anext__` holds the stream, it drops it on waking.
        if let Ok(mut slot) = self.inner.try_lock() {
            *slot = None;
        } else {
            self.closed.notify_one();
        }
    }
}
