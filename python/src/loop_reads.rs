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
//! Many tasks share one client: up to [`rust::MAX_ASYNC_CONNECTIONS`] reads run at once per
//! event loop, each on a connection of its own; more queue in order. A client used from
//! several loops (threads each running one, or one `asyncio.run` after another) keeps
//! connections per loop; a closed loop's are dropped when the next loop arrives. Callbacks run
//! on their loop's thread under the GIL; the state sits behind a mutex so that two loops'
//! threads take turns.

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
    /// What the loops' callbacks share with the calls.
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

/// What changes.
#[derive(Default)]
struct State {
    /// [`FORKS`] when the connections were made: a forked child starts afresh.
    forks: u64,
    /// The connections and calls of each event loop that used this client.
    loops: Vec<LoopState>,
    /// What all loops share.
    counters: Counters,
}

/// What the loops of one client share.
#[derive(Default)]
struct Counters {
    /// The id the next connection gets (ids, unlike fds, are never reused, so a callback
    /// already scheduled for a closed connection finds nothing).
    next_id: u64,
    /// Connections opened so far (for tests and diagnostics: cancellations must not add any).
    opened: u64,
    /// Set by `close()`: no new calls; connections close once their calls are done.
    closed: bool,
}

/// One event loop's connections and queue.
struct LoopState {
    /// The loop the connections are registered with.
    event_loop: Py<PyAny>,
    /// The connections, greeted or greeting.
    conns: Vec<Slot>,
    /// Calls waiting for a connection, in order.
    queue: VecDeque<Call>,
    /// The watchdog's timer, while one is armed.
    watchdog: Option<Py<PyAny>>,
    /// Whether a connection closed unanswered at hello has been replaced once since the
    /// last greeting (a stopping daemon does that; a second time, the queue fails).
    reopened: bool,
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

    /// Hands `call` to an idle connection of `lp`, or queues it (opening a connection if the
    /// queue outgrows the ones being greeted).
    fn dispatch(
        self: &Arc<Self>,
        py: Python<'_>,
        lp: &mut LoopState,
        c: &mut Counters,
        mut call: Call,
    ) {
        if let Some(i) = lp.conns.iter().position(|s| s.greeted && s.call.is_none()) {
            match lp.conns[i].conn.start_get(&call.name) {
                Ok(()) => lp.conns[i].call = Some(call),
                Err(e) => {
                    // The connection broke under the write: drop it, and try once more.
                    lp.drop_slot(py, i);
                    if call.retried {
                        call.settle(py, Err(e));
                    } else {
                        call.retried = true;
                        self.dispatch(py, lp, c, call);
                    }
                }
            }
            return;
        }
        lp.queue.push_back(call);
        let greeting = lp.conns.iter().filter(|s| !s.greeted).count();
        if greeting < lp.queue.len() && lp.conns.len() < rust::MAX_ASYNC_CONNECTIONS {
            self.open(py, lp, c);
        }
    }

    /// Opens a connection and registers it with the loop; when that fails and no other
    /// connection could serve the queue, the queued calls fail with the reason.
    fn open(self: &Arc<Self>, py: Python<'_>, lp: &mut LoopState, c: &mut Counters) {
        let id = c.next_id;
        let opened = NonBlockingConnection::connect(&self.path).and_then(|conn| {
            self.watch_fd(py, lp, &conn, id)
                .map_err(|e| rust::ProtocolError::Register(e.to_string()))?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => {
                c.next_id += 1;
                c.opened += 1;
                lp.conns.push(Slot {
                    id,
                    conn,
                    greeted: false,
                    call: None,
                });
            }
            // The daemon's queue of new connections is full (a burst, a flood): the watchdog
            // connects again every half second while the calls are within their timeout.
            Err(rust::Error::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if lp.conns.is_empty() => lp.fail_queue(py, &e),
            // Others are greeted or greeting: the queue waits for them.
            Err(_) => {}
        }
    }

    /// `loop.add_reader(fd, callback)` for connection `id`.
    fn watch_fd(
        self: &Arc<Self>,
        py: Python<'_>,
        lp: &LoopState,
        conn: &NonBlockingConnection,
        id: u64,
    ) -> PyResult<()> {
        let shared = self.clone();
        let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
            shared.readable(args.py(), id);
        })?;
        lp.event_loop
            .bind(py)
            .call_method1(intern!(py, "add_reader"), (conn.fd(), callback))?;
        Ok(())
    }

    /// The reader callback: connection `id` has something to read.
    fn readable(self: &Arc<Self>, py: Python<'_>, id: u64) {
        let mut guard = self.lock(py);
        let State {
            loops, counters, ..
        } = &mut *guard;
        let found = loops.iter_mut().find_map(|lp| {
            let i = lp.conns.iter().position(|s| s.id == id)?;
            Some((lp, i))
        });
        let Some((lp, i)) = found else {
            return; // closed since the loop scheduled this callback
        };
        match lp.conns[i].conn.advance() {
            Ok(Progress::Pending) => {}
            Ok(Progress::Greeted) => {
                lp.conns[i].greeted = true;
                lp.reopened = false;
                self.feed(py, lp, counters, i);
            }
            Ok(Progress::Secret(result)) => {
                if let Some(call) = lp.conns[i].call.take() {
                    call.settle(py, result);
                }
                self.feed(py, lp, counters, i);
            }
            Err(e) => {
                let slot = lp.drop_slot(py, i);
                if let Some(mut call) = slot.call {
                    if !call.retried && worth_a_retry(&e) {
                        // Closed under the call (an idle close crossing it): once more.
                        call.retried = true;
                        self.dispatch(py, lp, counters, call);
                    } else {
                        call.settle(py, Err(e));
                    }
                } else if !slot.greeted
                    && lp.conns.is_empty()
                    && e.closed_before_answer()
                    && !lp.reopened
                {
                    // Closed unanswered by a daemon on its way out: the next one answers.
                    lp.reopened = true;
                    self.open(py, lp, counters);
                } else if !slot.greeted && lp.conns.is_empty() {
                    // Refused at hello (busy, say), with nobody else to serve the queue.
                    lp.fail_queue(py, &e);
                } else if !lp.queue.is_empty() && lp.conns.is_empty() {
                    self.open(py, lp, counters);
                }
            }
        }
    }

    /// Gives idle connection `i` the next call still awaited, or closes it once the client is
    /// closed and nothing is left.
    fn feed(self: &Arc<Self>, py: Python<'_>, lp: &mut LoopState, c: &Counters, i: usize) {
        while let Some(call) = lp.queue.pop_front() {
            if call.abandoned(py) {
                continue;
            }
            match lp.conns[i].conn.start_get(&call.name) {
                Ok(()) => lp.conns[i].call = Some(call),
                Err(e) => {
                    lp.drop_slot(py, i);
                    lp.queue.push_front(call);
                    if lp.conns.is_empty() {
                        lp.fail_queue(py, &e);
                    }
                }
            }
            return;
        }
        if c.closed {
            lp.drop_slot(py, i);
        }
    }

    /// Arms `lp`'s watchdog unless it is armed.
    fn arm_watchdog(self: &Arc<Self>, py: Python<'_>, lp: &mut LoopState) -> PyResult<()> {
        if lp.watchdog.is_some() {
            return Ok(());
        }
        let shared = self.clone();
        let event_loop = lp.event_loop.clone_ref(py);
        let callback = PyCFunction::new_closure(py, None, None, move |args, _| {
            shared.watchdog(args.py(), &event_loop);
        })?;
        let handle = lp
            .event_loop
            .bind(py)
            .call_method1(intern!(py, "call_later"), (WATCHDOG_PERIOD_S, callback))?;
        lp.watchdog = Some(handle.unbind());
        Ok(())
    }

    /// Fails `event_loop`'s calls past their timeout (closing their connections), and re-arms
    /// while calls remain.
    fn watchdog(self: &Arc<Self>, py: Python<'_>, event_loop: &Py<PyAny>) {
        let mut guard = self.lock(py);
        let State {
            loops, counters, ..
        } = &mut *guard;
        let Some(lp) = loops.iter_mut().find(|lp| lp.event_loop.is(event_loop)) else {
            return;
        };
        lp.watchdog = None;
        let now = Instant::now();
        let late = |c: &Call| now.duration_since(c.since) >= self.timeout;
        let timed_out = || rust::Error::Timeout {
            path: self.path.clone(),
            after: self.timeout,
        };
        let mut i = 0;
        while i < lp.conns.len() {
            let stuck = lp.conns[i].call.as_ref().is_some_and(late)
                || (!lp.conns[i].greeted && lp.queue.front().is_some_and(late));
            if stuck {
                let slot = lp.drop_slot(py, i);
                if let Some(call) = slot.call {
                    call.settle(py, Err(timed_out()));
                }
            } else {
                i += 1;
            }
        }
        let (expired, waiting): (Vec<Call>, Vec<Call>) = lp.queue.drain(..).partition(late);
        lp.queue.extend(waiting);
        for call in expired {
            call.settle(py, Err(timed_out()));
        }
        if !lp.queue.is_empty() && lp.conns.is_empty() {
            self.open(py, lp, counters);
        }
        let busy = !lp.queue.is_empty() || lp.conns.iter().any(|s| s.call.is_some());
        if busy {
            let _ = self.arm_watchdog(py, lp);
        }
    }
}

impl State {
    /// The state of `event_loop` in this process, made on its first call. Connections made in
    /// the parent of a fork are forgotten; a closed loop's are dropped when a new loop comes.
    fn loop_state(&mut self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> usize {
        let forks = FORKS.load(Ordering::Acquire);
        if self.forks != forks {
            // A forked child: the parent's loops share their epoll instances with the parent,
            // so they are left alone; closing our copies of the sockets leaves the parent's
            // open. Their calls belong to the parent.
            self.loops.clear();
            self.forks = forks;
        }
        if let Some(i) = self
            .loops
            .iter()
            .position(|lp| lp.event_loop.is(event_loop))
        {
            return i;
        }
        // A new loop: drop the state of loops that closed (their calls can never be settled;
        // unregistering from a closed loop is a no-op).
        self.loops.retain_mut(|lp| {
            let closed = lp
                .event_loop
                .bind(py)
                .call_method0(intern!(py, "is_closed"))
                .and_then(|c| c.is_truthy())
                .unwrap_or(true);
            if closed {
                while !lp.conns.is_empty() {
                    lp.drop_slot(py, 0);
                }
            }
            !closed
        });
        self.loops.push(LoopState {
            event_loop: event_loop.clone().unbind(),
            conns: Vec::new(),
            queue: VecDeque::new(),
            watchdog: None,
            reopened: false,
        });
        self.loops.len() - 1
    }
}

impl LoopState {
    /// Unregisters and closes connection `i`; returns it (with the call it served).
    fn drop_slot(&mut self, py: Python<'_>, i: usize) -> Slot {
        let slot = self.conns.swap_remove(i);
        // A closed loop has nothing registered any more.
        let _ = self
            .event_loop
            .bind(py)
            .call_method1(intern!(py, "remove_reader"), (slot.conn.fd(),));
        slot
    }

    /// Fails every queued call with `e` (each gets its own copy of the reason).
    fn fail_queue(&mut self, py: Python<'_>, e: &rust::Error) {
        for call in self.queue.drain(..) {
            call.settle(py, Err(copy_error(e)));
        }
    }

    /// Unregisters everything from this (live) loop: its connections and its watchdog.
    fn unregister(&mut self, py: Python<'_>) {
        while !self.conns.is_empty() {
            self.drop_slot(py, 0);
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.bind(py).call_method0(intern!(py, "cancel"));
        }
    }
}

/// Whether a failed connection's call may go to a fresh connection.
fn worth_a_retry(e: &rust::Error) -> bool {
    matches!(e, rust::Error::Io(_) | rust::Error::Protocol(_))
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
        rust::Error::Protocol(p) => rust::Error::Protocol(p.clone()),
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
        let mut guard = shared.lock(py);
        if guard.counters.closed {
            return Err(crate::Error::new_err("the client is closed"));
        }
        let li = guard.loop_state(py, &event_loop);
        let State {
            loops, counters, ..
        } = &mut *guard;
        let lp = &mut loops[li];
        let call = Call {
            name,
            future: future.clone().unbind(),
            since: Instant::now(),
            retried: false,
        };
        shared.dispatch(py, lp, counters, call);
        shared.arm_watchdog(py, lp)?;
        Ok(future)
    }

    /// How many connections this client has opened (a cancelled call must not cost one).
    #[getter]
    fn opened(&self, py: Python<'_>) -> u64 {
        self.shared.lock(py).counters.opened
    }

    /// Takes no new calls; idle connections close now, busy ones once their calls are done.
    fn close(&self, py: Python<'_>) {
        let mut guard = self.shared.lock(py);
        guard.counters.closed = true;
        for lp in &mut guard.loops {
            let mut i = 0;
            while i < lp.conns.len() {
                let slot = &lp.conns[i];
                if slot.call.is_none() && slot.greeted && lp.queue.is_empty() {
                    lp.drop_slot(py, i);
                } else {
                    i += 1;
                }
            }
        }
    }
}

impl Drop for LoopReads {
    fn drop(&mut self) {
        // The loops' callbacks hold the shared state: unregister them, or the connections
        // would live as long as the loops.
        Python::attach(|py| {
            let mut guard = self.shared.lock(py);
            if guard.forks != FORKS.load(Ordering::Acquire) {
                // The parent's loops are not ours to touch (see `State::loop_state`).
                guard.loops.clear();
                return;
            }
            for lp in &mut guard.loops {
                lp.unregister(py);
            }
        });
    }
}
