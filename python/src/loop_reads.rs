//! `secretd._native.LoopReads`: `await client.get(...)` driven by the asyncio event loop
//! itself. Each connection's socket is registered with `loop.add_reader`; a read writes its
//! request at once and its future is settled by the reader callback when the answer is in. No
//! thread is woken on either side of the call: the loop that was going to wait in `epoll`
//! anyway waits for the daemon's answer too. (The tokio bridge, [`crate::bridge`], costs two
//! cross-thread wake-ups a call; BENCHMARKS.md has both.)
//!
//! Cancellation: a cancelled call's future is done, so its answer, when it comes, is read and
//! discarded, and the connection takes the next call, in step, with no reconnect
//! ([`rust::nonblocking`] counts every byte). A call waits at most the client's timeout (a
//! watchdog checks twice a second); a timed-out connection is closed, since its late answer
//! must never be read as another call's.
//!
//! Many tasks share one client: up to [`rust::MAX_ASYNC_CONNECTIONS`] reads run at once, each
//! on a connection of its own; more queue in order. Everything here runs on the loop's thread
//! under the GIL; the state sits behind a mutex only so that a second thread (another loop)
//! is serialised rather than undefined.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::secretd_client as rust;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::PyCFunction;
use rust::nonblocking::{NonBlockingConnection, Progress};

use crate::bridge::running_loop;
use crate::{FORKS, Secret, to_py_err};

/// How often the watchdog looks for calls past their timeout, in seconds.
const WATCHDOG_PERIOD_S: f64 = 0.5;

/// Reads for asyncio on connections the event loop drives.
#[pyclass(module = "secretd._native", frozen)]
pub(crate) struct LoopReads {
    /// What the loop's callbacks share with the calls.
    shared: Arc<Shared>,
}

/// The connections and the calls, shared with the reader and watchdog callbacks.
struct Shared {
    /// Where to connect.
    path: PathBuf,
    /// How long a call may wait for its answer (queueing included).
    timeout: Duration,
    /// Everything that changes.
    state: Mutex<State>,
}

/// What changes, on the loop's thread.
#[derive(Default)]
struct State {
    /// The loop the connections are registered with (calls from another loop start afresh).
    event_loop: Option<Py<PyAny>>,
    /// [`FORKS`] when the connections were made: a forked child starts afresh.
    forks: u64,
    /// The connections, greeted or greeting.
    conns: Vec<Slot>,
    /// Calls waiting for a connection, in order.
    queue: VecDeque<Call>,
    /// The watchdog's timer, while one is armed.
    watchdog: Option<Py<PyAny>>,
    /// The id the next connection gets (ids, unlike fds, are never reused, so a callback
    /// already scheduled for a closed connection finds nothing).
    next_id: u64,
    /// Set by `close()`: no new calls; connections close once their calls are done.
    closed: bool,
    /// Connections opened so far (for tests and diagnostics: cancellations must not add any).
    opened: u64,
}

/// One connection and the call it serves.
struct Slot {
    /// Its id, which its reader callback carries.
    id: u64,
    /// The connection.
    conn: NonBlockingConnection,
    /// Whether the hello was answered.
    greeted: bool,
    /// The call whose answer it waits for (its future may be done: then the answer is
    /// discarded when it comes).
    call: Option<Call>,
}

/// One `get`.
struct Call {
    /// The catalog name.
    name: String,
    /// The asyncio future the caller awaits.
    future: Py<PyAny>,
    /// When the call was made.
    since: Instant,
    /// Whether it was sent again after its connection broke (once at most).
    retried: bool,
}

impl Call {
    /// Whether nobody waits for it any more (cancelled, or settled by the watchdog).
    fn abandoned(&self, py: Python<'_>) -> bool {
        self.future
            .bind(py)
            .call_method0(intern!(py, "done"))
            .and_then(|d| d.is_truthy())
            .unwrap_or(true)
    }

    /// Settles its future, unless nobody waits for it.
    fn settle(self, py: Python<'_>, result: rust::Result<rust::Secret>) {
        if self.abandoned(py) {
            return;
        }
        let future = self.future.bind(py);
        // A future cannot refuse either call once it is not done; nothing is left to tell.
        let _ = match result {
            Ok(inner) => Py::new(
                py,
                Secret {
                    name: self.name,
                    inner,
                },
            )
            .and_then(|s| future.call_method1(intern!(py, "set_result"), (s,))),
            Err(e) => {
                let err = to_py_err(py, e).into_value(py);
                future.call_method1(intern!(py, "set_exception"), (err,))
            }
        };
    }
}

impl Shared {
    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, State> {
        self.state
            .lock_py_attached(py)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `call` to an idle connection, or queues it (opening a connection if the queue
    /// outgrows the ones being greeted).
    fn dispatch(self: &Arc<Self>, py: Python<'_>, st: &mut State, mut call: Call) {
        if let Some(i) = st.conns.iter().position(|s| s.greeted && s.call.is_none()) {
            match st.conns[i].conn.start_get(&call.name) {
                Ok(()) => st.conns[i].call = Some(call),
                Err(e) => {
                    // The connection broke under the write: drop it, and try once more.
                    self.drop_slot(py, st, i);
                    if call.retried {
                        call.settle(py, Err(e));
                    } else {
                        call.retried = true;
                        self.dispatch(py, st, call);
                    }
                }
            }
            return;
        }
        st.queue.push_back(call);
        let greeting = st.conns.iter().filter(|s| !s.greeted).count();
        if greeting < st.queue.len() && st.conns.len() < rust::MAX_ASYNC_CONNECTIONS {
            self.open(py, st);
        }
    }

    /// Opens a connection and registers it with the loop; when that fails and no other
    /// connection could serve the queue, the queued calls fail with the reason.
    fn open(self: &Arc<Self>, py: Python<'_>, st: &mut State) {
        let opened = NonBlockingConnection::connect(&self.path).and_then(|conn| {
            let id = st.next_id;
            self.watch_fd(py, st, &conn, id)
                .map_err(|e| rust::Error::Protocol(format!("cannot register the socket: {e}")))?;
            Ok((id, conn))
        });
        match opened {
            Ok((id, conn)) => {
                st.next_id += 1;
                st.opened += 1;
                st.conns.push(Slot {
                    id,
                    conn,
                    greeted: false,
                    call: None,
                });
            }
            Err(e) if st.conns.is_empty() => fail_queue(py, st, &e),
            // Others are greeted or greeting: the queue waits for them.
            Err(_) => {}
        }
    }

    /// `loop.add_reader(fd, callback)` for connection `id`.
    fn watch_fd(
        self: &Arc<Self>,
        py: Python<'_>,
        st: &State,
        conn: &NonBlockingConnection,
        id: u64,
    ) -> PyResult<()> {
        let Some(event_loop) = &st.event_loop else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("no event loop"));
        };
        let shared = self.clone();
        let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
            shared.readable(args.py(), id);
        })?;
        event_loop
            .bind(py)
            .call_method1(intern!(py, "add_reader"), (conn.fd(), callback))?;
        Ok(())
    }

    /// The reader callback: connection `id` has something to read.
    fn readable(self: &Arc<Self>, py: Python<'_>, id: u64) {
        let mut st = self.lock(py);
        let Some(i) = st.conns.iter().position(|s| s.id == id) else {
            return; // closed since the loop scheduled this callback
        };
        match st.conns[i].conn.advance() {
            Ok(Progress::Pending) => {}
            Ok(Progress::Greeted) => {
                st.conns[i].greeted = true;
                self.feed(py, &mut st, i);
            }
            Ok(Progress::Secret(result)) => {
                if let Some(call) = st.conns[i].call.take() {
                    call.settle(py, result);
                }
                self.feed(py, &mut st, i);
            }
            Err(e) => {
                let slot = self.drop_slot(py, &mut st, i);
                if let Some(mut call) = slot.call {
                    if !call.retried && worth_a_retry(&e) {
                        // Closed under the call (an idle close crossing it): once more.
                        call.retried = true;
                        self.dispatch(py, &mut st, call);
                    } else {
                        call.settle(py, Err(e));
                    }
                } else if !slot.greeted && st.conns.is_empty() {
                    // Refused at hello (busy, say), with nobody else to serve the queue.
                    fail_queue(py, &mut st, &e);
                } else if !st.queue.is_empty() && st.conns.is_empty() {
                    self.open(py, &mut st);
                }
            }
        }
    }

    /// Gives idle connection `i` the next call still awaited, or closes it once the client is
    /// closed and nothing is left.
    fn feed(self: &Arc<Self>, py: Python<'_>, st: &mut State, i: usize) {
        while let Some(call) = st.queue.pop_front() {
            if call.abandoned(py) {
                continue;
            }
            match st.conns[i].conn.start_get(&call.name) {
                Ok(()) => st.conns[i].call = Some(call),
                Err(e) => {
                    self.drop_slot(py, st, i);
                    st.queue.push_front(call);
                    if st.conns.is_empty() {
                        fail_queue(py, st, &e);
                    }
                }
            }
            return;
        }
        if st.closed {
            self.drop_slot(py, st, i);
        }
    }

    /// Unregisters and closes connection `i`; returns it (with the call it served).
    fn drop_slot(&self, py: Python<'_>, st: &mut State, i: usize) -> Slot {
        let slot = st.conns.swap_remove(i);
        if let Some(event_loop) = &st.event_loop {
            // A closed loop has nothing registered any more.
            let _ = event_loop
                .bind(py)
                .call_method1(intern!(py, "remove_reader"), (slot.conn.fd(),));
        }
        slot
    }

    /// Arms the watchdog unless it is armed.
    fn arm_watchdog(self: &Arc<Self>, py: Python<'_>, st: &mut State) -> PyResult<()> {
        if st.watchdog.is_some() {
            return Ok(());
        }
        let Some(event_loop) = &st.event_loop else {
            return Ok(());
        };
        let shared = self.clone();
        let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
            shared.watchdog(args.py());
        })?;
        let handle = event_loop
            .bind(py)
            .call_method1(intern!(py, "call_later"), (WATCHDOG_PERIOD_S, callback))?;
        st.watchdog = Some(handle.unbind());
        Ok(())
    }

    /// Fails the calls past their timeout (closing their connections), and re-arms while
    /// calls remain.
    fn watchdog(self: &Arc<Self>, py: Python<'_>) {
        let mut st = self.lock(py);
        st.watchdog = None;
        let now = Instant::now();
        let late = |c: &Call| now.duration_since(c.since) >= self.timeout;
        let timed_out = || rust::Error::Timeout {
            path: self.path.clone(),
            after: self.timeout,
        };
        let mut i = 0;
        while i < st.conns.len() {
            let stuck = st.conns[i].call.as_ref().is_some_and(late)
                || (!st.conns[i].greeted && st.queue.front().is_some_and(late));
            if stuck {
                let slot = self.drop_slot(py, &mut st, i);
                if let Some(call) = slot.call {
                    call.settle(py, Err(timed_out()));
                }
            } else {
                i += 1;
            }
        }
        let (expired, waiting): (Vec<Call>, Vec<Call>) = st.queue.drain(..).partition(late);
        st.queue.extend(waiting);
        for call in expired {
            call.settle(py, Err(timed_out()));
        }
        if !st.queue.is_empty() && st.conns.is_empty() {
            self.open(py, &mut st);
        }
        let busy = !st.queue.is_empty() || st.conns.iter().any(|s| s.call.is_some());
        if busy {
            let _ = self.arm_watchdog(py, &mut st);
        }
    }

    /// Makes `event_loop` (in this process) the one the connections belong to, dropping
    /// connections made for another loop or in the parent of a fork.
    fn adopt(&self, py: Python<'_>, st: &mut State, event_loop: &Bound<'_, PyAny>) {
        let forks = FORKS.load(Ordering::Acquire);
        let same_loop = st.event_loop.as_ref().is_some_and(|l| l.is(event_loop));
        if same_loop && st.forks == forks {
            return;
        }
        if st.forks == forks {
            // Another loop of this process: unregister from the old one (a no-op if closed).
            while !st.conns.is_empty() {
                self.drop_slot(py, st, 0);
            }
        } else {
            // A forked child: the parent's loop shares its epoll instance with the parent, so
            // it is left alone; closing our copies of the sockets leaves the parent's open.
            st.conns.clear();
        }
        // Calls of the old loop can never be settled by it.
        st.queue.clear();
        if let Some(w) = st.watchdog.take()
            && st.forks == forks
        {
            let _ = w.bind(py).call_method0(intern!(py, "cancel"));
        }
        st.event_loop = Some(event_loop.clone().unbind());
        st.forks = forks;
    }
}

/// Whether a failed connection's call may go to a fresh connection.
fn worth_a_retry(e: &rust::Error) -> bool {
    matches!(e, rust::Error::Io(_) | rust::Error::Protocol(_))
}

/// Fails every queued call with `e` (each gets its own copy of the reason).
fn fail_queue(py: Python<'_>, st: &mut State, e: &rust::Error) {
    for call in st.queue.drain(..) {
        call.settle(py, Err(copy_error(e)));
    }
}

/// The same failure again, for another call (`rust::Error` holds an `io::Error`, which does
/// not clone).
fn copy_error(e: &rust::Error) -> rust::Error {
    match e {
        rust::Error::Connect { path, source } => rust::Error::Connect {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        rust::Error::UntrustedServer { path, why } => rust::Error::UntrustedServer {
            path: path.clone(),
            why: why.clone(),
        },
        rust::Error::Daemon(w) => rust::Error::Daemon(w.clone()),
        rust::Error::Io(io) => rust::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        rust::Error::Timeout { path, after } => rust::Error::Timeout {
            path: path.clone(),
            after: *after,
        },
        rust::Error::InvalidArgument(why) => rust::Error::InvalidArgument(why),
        other => rust::Error::Protocol(other.to_string()),
    }
}

#[pymethods]
impl LoopReads {
    #[new]
    fn new(socket_path: PathBuf) -> LoopReads {
        LoopReads {
            shared: Arc::new(Shared {
                path: socket_path,
                timeout: rust::DEFAULT_TIMEOUT,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Reads a secret: an asyncio future of `Secret`. Must be called from a coroutine.
    fn get<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        if let Err(why) = rust::validate_name(&name) {
            return Err(to_py_err(py, rust::Error::InvalidArgument(why)));
        }
        let event_loop = running_loop(py)?;
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        let shared = &self.shared;
        let mut st = shared.lock(py);
        if st.closed {
            return Err(crate::Error::new_err("the client is closed"));
        }
        shared.adopt(py, &mut st, &event_loop);
        let call = Call {
            name,
            future: future.clone().unbind(),
            since: Instant::now(),
            retried: false,
        };
        shared.dispatch(py, &mut st, call);
        shared.arm_watchdog(py, &mut st)?;
        Ok(future)
    }

    /// How many connections this client has opened (a cancelled call must not cost one).
    #[getter]
    fn opened(&self, py: Python<'_>) -> u64 {
        self.shared.lock(py).opened
    }

    /// Takes no new calls; idle connections close now, busy ones once their calls are done.
    fn close(&self, py: Python<'_>) {
        let shared = &self.shared;
        let mut st = shared.lock(py);
        st.closed = true;
        let mut i = 0;
        while i < st.conns.len() {
            if st.conns[i].call.is_none() && st.conns[i].greeted && st.queue.is_empty() {
                shared.drop_slot(py, &mut st, i);
            } else {
                i += 1;
            }
        }
    }
}

impl Drop for LoopReads {
    fn drop(&mut self) {
        // The loop's callbacks hold the shared state: unregister them, or the connections
        // would live as long as the loop.
        Python::attach(|py| {
            let shared = &self.shared;
            let mut st = shared.lock(py);
            if st.forks != FORKS.load(Ordering::Acquire) {
                st.conns.clear();
                return;
            }
            while !st.conns.is_empty() {
                shared.drop_slot(py, &mut st, 0);
            }
            if let Some(w) = st.watchdog.take() {
                let _ = w.bind(py).call_method0(intern!(py, "cancel"));
            }
        });
    }
}
