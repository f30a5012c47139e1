//! asyncio awaitables for futures that run on this process's tokio runtime, with one thread
//! hop each way: the call spawns the future on a tokio worker and returns an asyncio future;
//! the worker that finishes it hands the result to the event loop with
//! `call_soon_threadsafe`. Cancelling the asyncio future aborts the tokio task, which drops
//! the Rust future at its next await (the tokio client finishes a cut-off exchange on its own).
//!
//! pyo3-async-runtimes' `future_into_py` does the same with two spawns, a `spawn_blocking`
//! and a Python-side check per call; in one bench run on the 2-core VM that put
//! `await client.get()` at 144 µs p50, and this bridge at 131 µs (BENCHMARKS.md). The worker
//! takes the GIL to build the result: while the event loop thread runs Python code that
//! worker waits for it, and the runtime's other worker carries on.

use std::future::Future;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use pyo3::{IntoPyObjectExt, intern};

use crate::runtime::runtime;

/// `asyncio.get_running_loop`, looked up once.
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Runs `fut` on the tokio runtime; returns an asyncio future of its result. Must be called
/// from a coroutine (a running event loop).
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let rt = runtime()?;
    let event_loop = running_loop(py)?;
    let py_fut = event_loop.call_method0(intern!(py, "create_future"))?;
    let (target, event_loop) = (py_fut.clone().unbind(), event_loop.unbind());
    let task = rt.spawn(async move {
        let result = fut.await;
        Python::attach(|py| {
            let value = result.and_then(|v| v.into_py_any(py));
            // A loop closed meanwhile has nobody left to tell.
            let _ = settle_later(py, &event_loop, target, value);
        });
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(py, None, None, move |args, _| -> PyResult<()> {
        if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
            abort.abort();
        }
        Ok(())
    })?;
    py_fut.call_method1(intern!(py, "add_done_callback"), (on_done,))?;
    Ok(py_fut)
}

/// The running asyncio loop (an error outside a coroutine).
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let get_running_loop = GET_RUNNING_LOOP.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("get_running_loop")?.unbind())
    })?;
    get_running_loop.bind(py).call0()
}

/// Has the event loop settle `target` with `value` on its own thread, unless it was
/// cancelled (done) by then.
fn settle_later(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    target: Py<PyAny>,
    value: PyResult<Py<PyAny>>,
) -> PyResult<()> {
    let slot = Mutex::new(Some((target, value)));
    let settle = PyCFunction::new_closure(py, None, None, move |args, _| -> PyResult<()> {
        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((target, value)) = taken else {
            return Ok(());
        };
        let py = args.py();
        let target = target.bind(py);
        if target.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        match value {
            Ok(v) => target.call_method1(intern!(py, "set_result"), (v,))?,
            Err(e) => target.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    })?;
    event_loop.call_method1(py, intern!(py, "call_soon_threadsafe"), (settle,))?;
    Ok(())
}
