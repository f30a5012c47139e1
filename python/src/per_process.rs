//! A Rust client owned by the process that made it. After `os.fork()` the child must not use
//! the parent's connections (frames from two processes would interleave on one socket), so
//! the first call in a child makes a new client, and the inherited one is left alone.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;

use ::secretd_client as rust;

use crate::{Error, FORKS, to_py_err};

/// A client `C` and where it came from, remade after a fork.
pub(crate) struct PerProcess<C> {
    /// Where to connect.
    pub(crate) path: PathBuf,
    /// Whether the client-side cache is on (kept so a forked child turns it on again).
    pub(crate) cache: bool,
    /// `None` once closed.
    live: Mutex<Option<Live<C>>>,
}

/// The client and the fork generation that made it.
struct Live<C> {
    /// [`FORKS`] when it connected.
    forks: u64,
    /// The client (cheap to clone into each call).
    client: C,
}

impl<C: Clone> PerProcess<C> {
    /// Connects with `connect` (the GIL released).
    pub(crate) fn connect<F>(
        py: Python<'_>,
        path: PathBuf,
        cache: bool,
        connect: F,
    ) -> PyResult<Self>
    where
        F: FnOnce(PathBuf, bool) -> rust::Result<C> + Send,
        C: Send,
    {
        let forks = FORKS.load(Ordering::Acquire);
        let connect_path = path.clone();
        let client = py
            .detach(move || connect(connect_path, cache))
            .map_err(|e| to_py_err(py, e))?;
        Ok(PerProcess {
            path,
            cache,
            live: Mutex::new(Some(Live { forks, client })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Live<C>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client for this process: after a fork, a new one made with `connect` (the GIL
    /// released). The lock is never held while the GIL is released.
    pub(crate) fn client<F>(&self, py: Python<'_>, connect: F) -> PyResult<C>
    where
        F: FnOnce(PathBuf, bool) -> rust::Result<C> + Send,
        C: Send,
    {
        let forks = FORKS.load(Ordering::Acquire);
        match self.lock().as_ref() {
            None => return Err(Error::new_err("the client is closed")),
            Some(live) if live.forks == forks => return Ok(live.client.clone()),
            Some(_) => {}
        }
        let (path, cache) = (self.path.clone(), self.cache);
        let fresh = py
            .detach(move || connect(path, cache))
            .map_err(|e| to_py_err(py, e))?;
        let mut slot = self.lock();
        if slot.is_none() {
            return Err(Error::new_err("the client is closed"));
        }
        let inherited = slot.replace(Live {
            forks,
            client: fresh.clone(),
        });
        // The parent's client is not ours to tear down: dropping it here would shut sockets
        // the parent still uses (or, for the tokio client, deregister them from an epoll
        // instance the parent shares) and wait for threads this process does not have. Its
        // cached values were zeroed by the kernel at fork (MADV_WIPEONFORK).
        std::mem::forget(inherited);
        Ok(fresh)
    }

    /// Closes: later calls fail with "the client is closed".
    pub(crate) fn close(&self) {
        self.lock().take();
    }

    /// Whether [`PerProcess::close`] was called.
    pub(crate) fn closed(&self) -> bool {
        self.lock().is_none()
    }
}
