//! The tokio runtime behind `secretd.AsyncClient`: one per process, made anew in a forked
//! child. A runtime's worker threads do not survive `os.fork()` (nor would pyo3-async-runtimes'
//! global one), so a child could never finish an await on the parent's; this one remembers the
//! fork generation it was built in, and the first async call in a child builds another.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use pyo3::PyResult;
use tokio::runtime::Runtime as Tokio;

use crate::{Error, FORKS};

/// Worker threads: the work is short, I/O-bound exchanges on a local socket.
const WORKER_THREADS: usize = 2;

/// The runtime of this process and the fork generation it was built in.
static RUNTIME: Mutex<Option<(u64, &'static Tokio)>> = Mutex::new(None);

/// This process's runtime, built on first use (and again after a fork).
pub(crate) fn runtime() -> PyResult<&'static Tokio> {
    let forks = FORKS.load(Ordering::Acquire);
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((born, rt)) = *slot
        && born == forks
    {
        return Ok(rt);
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("secretd-async")
        .enable_all()
        .build()
        .map_err(|e| Error::new_err(format!("cannot start the async runtime: {e}")))?;
    // Never dropped: in a child, dropping the parent's runtime would wait for worker threads
    // that do not exist here and tear down an epoll instance the parent still uses.
    let rt: &'static Tokio = Box::leak(Box::new(built));
    *slot = Some((forks, rt));
    Ok(rt)
}
