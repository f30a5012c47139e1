//! The audit writer: one thread that group-commits events to the store.
//!
//! Producers never wait for the disk on the read path: they enqueue and go on. Admin operations
//! wait for their record to be durable (`record_durable`). When a commit fails the log turns
//! unhealthy and the daemon refuses audited requests (fail closed) until a commit succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::chain::{Hash, Verification};
use super::event::AuditEvent;
use super::table;
use crate::store::{Store, StoreError};
use crate::util::key_file::Key;

/// Events waiting for the writer at most; beyond it producers are refused (fail closed).
pub(super) const AUDIT_QUEUE: usize = 65_536;
/// How long an admin operation waits for its record to be durable before it is refused.
pub(super) const AUDIT_DURABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Events committed in one transaction at most.
pub(super) const AUDIT_BATCH: usize = 1024;
/// How long a batch nobody waits for may wait for more events before it is committed, when
/// events are streaming in (the previous commit ended less than this before). A batch with a
/// waiter (an admin operation that needs its record durable) commits at once, and so does a
/// lone event after a quiet spell.
pub(super) const AUDIT_LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// After a failed commit: how long between attempts to reopen the store and retry the batch.
pub(super) const AUDIT_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an event is not durable.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AuditError {
    /// An earlier commit failed and none has succeeded since: audited requests are refused.
    #[error("the audit store is failing")]
    Failing,
    /// The writer thread has ended (shutdown).
    #[error("the audit writer has stopped")]
    Stopped,
    /// The record was not durable within [`AUDIT_DURABLE_TIMEOUT`].
    #[error("the audit record was not durable within {}s", AUDIT_DURABLE_TIMEOUT.as_secs())]
    Timeout,
    /// The commit of this event's batch failed (shared by every waiter of the batch).
    #[error("cannot write the audit trail: {0}")]
    Commit(#[source] Arc<StoreError>),
}

/// A queued event, with an optional waiter for its commit.
struct Job {
    /// What to record.
    event: AuditEvent,
    /// Told the outcome of the commit, for admin operations that wait for durability.
    done: Option<oneshot::Sender<Result<(), AuditError>>>,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    /// The queue to the writer.
    tx: mpsc::Sender<Job>,
    /// False after a failed commit, until the next success.
    healthy: Arc<AtomicBool>,
    /// Events queued and not yet committed (for metrics and tests).
    depth: Arc<AtomicUsize>,
    /// The key the chain is hashed under (never in the database).
    key: Arc<Key>,
}

impl AuditLog {
    /// Starts the writer thread over `store`. It ends once every handle is dropped and the
    /// queue is drained.
    pub(crate) fn start(
        store: Arc<Store>,
        key: Arc<Key>,
    ) -> std::io::Result<(AuditLog, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let log = AuditLog {
            tx,
            healthy: Arc::new(AtomicBool::new(true)),
            depth: Arc::new(AtomicUsize::new(0)),
            key,
        };
        let writer = log.clone_state();
        let handle = std::thread::Builder::new()
            .name("secretd-audit".into())
            .spawn(move || writer.run(store, rx))?;
        Ok((log, handle))
    }

    fn clone_state(&self) -> WriterState {
        WriterState {
            healthy: self.healthy.clone(),
            depth: self.depth.clone(),
            key: self.key.clone(),
        }
    }

    /// Walks the whole chain under the key.
    pub(crate) fn verify(&self, store: &Store) -> Result<Verification, StoreError> {
        table::verify(store, &self.key)
    }

    /// Prunes records older than `cutoff_ms` and appends `record` (an `audit_prune`, completed
    /// with the count and the new checkpoint) in the same transaction. Returns how many went.
    pub(crate) fn prune(
        &self,
        store: &Store,
        cutoff_ms: i64,
        record: AuditEvent,
        older_than: &str,
    ) -> Result<u64, StoreError> {
        table::prune(store, &self.key, cutoff_ms, record, older_than)
    }

    /// The chain's last record, (seq, hash).
    pub(crate) fn head(store: &Store) -> Result<Option<(u64, Hash)>, StoreError> {
        table::head(store)
    }

    /// Whether audited requests may proceed.
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Events queued and not yet committed.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Enqueues an event without waiting. False when the log cannot take it (unhealthy, full
    /// or stopped): the caller must then refuse the request it was auditing.
    pub(crate) fn record(&self, event: AuditEvent) -> bool {
        if !self.healthy() {
            return false;
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        let ok = self.tx.try_send(Job { event, done: None }).is_ok();
        if !ok {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    }

    /// Enqueues an event and waits until it is durable, at most [`AUDIT_DURABLE_TIMEOUT`]: an
    /// admin operation is refused rather than left hanging on a failing disk.
    pub(crate) async fn record_durable(&self, event: AuditEvent) -> Result<(), AuditError> {
        tokio::time::timeout(AUDIT_DURABLE_TIMEOUT, self.record_durable_unbounded(event))
            .await
            .unwrap_or(Err(AuditError::Timeout))
    }

    async fn record_durable_unbounded(&self, event: AuditEvent) -> Result<(), AuditError> {
        if !self.healthy() {
            return Err(AuditError::Failing);
        }
        let (done, wait) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .send(Job {
                event,
                done: Some(done),
            })
            .await
            .is_err()
        {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(AuditError::Stopped);
        }
        wait.await.unwrap_or(Err(AuditError::Stopped))
    }
}

/// What the writer thread shares with the handles.
struct WriterState {
    /// Cleared by a failed commit, set again by the next successful one.
    healthy: Arc<AtomicBool>,
    /// Decremented as batches finish.
    depth: Arc<AtomicUsize>,
    /// The chain key.
    key: Arc<Key>,
}

impl WriterState {
    /// Commits `events`. After a failure the log turns unhealthy (requests are refused) and
    /// the same events are retried, reopening the store first, until they commit; they are
    /// given up only when the daemon is stopping and the store still fails.
    fn commit(
        &self,
        store: &Store,
        events: &[AuditEvent],
        rx: &mpsc::Receiver<Job>,
    ) -> Result<(), AuditError> {
        let mut result = table::append(store, &self.key, events);
        if let Err(e) = &result {
            self.healthy.store(false, Ordering::Relaxed);
            tracing::error!(
                event = "omni.alert.audit_failure",
                error = %e,
                pending = events.len(),
                "cannot write the audit trail; refusing audited requests until it recovers"
            );
        }
        while result.is_err() {
            std::thread::sleep(AUDIT_RETRY_INTERVAL);
            let stopping = rx.is_closed();
            result = store
                .reopen()
                .and_then(|()| table::append(store, &self.key, events));
            if let Err(e) = &result
                && stopping
            {
                tracing::error!(error = %e, lost = events.len(), "audit events lost at shutdown");
                break;
            }
        }
        if result.is_ok() && !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "omni.alert.audit_recovered",
                "audit trail writable again"
            );
        }
        result.map_err(|e| AuditError::Commit(Arc::new(e)))
    }

    fn run(self, store: Arc<Store>, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        // When the last commit ended: events that follow it closely are a stream.
        let mut last_commit: Option<std::time::Instant> = None;
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            drain_into(&mut rx, &mut batch);
            let streaming = last_commit.is_some_and(|t| t.elapsed() < AUDIT_LINGER);
            if streaming && batch.iter().all(|j| j.done.is_none()) && batch.len() < AUDIT_BATCH {
                // Events keep coming and nobody waits for this batch: let more join it, so a
                // stream of connections costs one commit (and one fsync) per linger, not one
                // each. A lone event after a quiet spell commits at once.
                std::thread::sleep(AUDIT_LINGER);
                drain_into(&mut rx, &mut batch);
            }
            let events: Vec<AuditEvent> = batch.iter().map(|j| j.event.clone()).collect();
            let result = self.commit(&store, &events, &rx);
            last_commit = Some(std::time::Instant::now());
            self.depth.fetch_sub(batch.len(), Ordering::Relaxed);
            for job in batch.drain(..) {
                if let Some(done) = job.done {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

/// Moves what is queued now into `batch`, up to [`AUDIT_BATCH`].
fn drain_into(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < AUDIT_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}
