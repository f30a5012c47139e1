//! Prometheus metrics. Counters on the read path are registered per secret and source at
//! startup, so counting a read is one atomic add: no label lookup, no lock. Point-in-time
//! values (cache age, break-glass, rotation overdue, audit queue) are filled in at scrape time.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use secretd_proto::SourceKind;

use crate::audit_log::AuditLog;
use crate::cache::Cache;
use crate::store::{Store, now_ms};

/// Every source kind, in label order.
const SOURCES: [SourceKind; 4] = [
    SourceKind::Gsm,
    SourceKind::BreakGlass,
    SourceKind::Env,
    SourceKind::File,
];

fn source_index(kind: SourceKind) -> usize {
    match kind {
        SourceKind::Gsm => 0,
        SourceKind::BreakGlass => 1,
        SourceKind::Env => 2,
        SourceKind::File => 3,
    }
}

/// All of secretd's series.
#[derive(Debug)]
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// `omni_secret_reads_total{secret_type,source}`, pre-resolved per slot and source.
    reads: Vec<[IntCounter; 4]>,
    /// `omni_secret_failures_total{secret_type,reason}`: failed fetches by reason.
    failures: IntCounterVec,
    /// `omni_secret_cache_age_seconds{secret_type,source}`.
    cache_age: GaugeVec,
    /// `omni_secret_refresh_duration_seconds{secret_type}`.
    refresh_latency: HistogramVec,
    /// `omni_secret_break_glass_active{secret_type}`: 1 while an override is served.
    break_glass_active: IntGaugeVec,
    /// `omni_secret_rotation_overdue{secret_type}`: 1 past rotation_due_at.
    rotation_overdue: IntGaugeVec,
    /// `omni_secretd_connections`: open client connections.
    pub connections: IntGauge,
    /// `omni_secretd_requests_total{op,result}`.
    requests: IntCounterVec,
    /// `omni_secretd_audit_queue_depth`: audit events not yet committed.
    audit_queue: IntGauge,
    /// `omni_secretd_watchers`: open watch subscriptions.
    watchers: IntGauge,
    /// `omni_secretd_watch_lagged_total`: times a watcher fell behind and was told to re-read.
    pub watch_lagged: IntCounter,
    /// `omni_secretd_unlocked_buffers`: value buffers that could not be locked into RAM.
    unlocked_buffers: IntGauge,
}

impl Metrics {
    /// Registers every series for the catalog in `cache`.
    pub fn new(cache: &Cache) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reads_vec = IntCounterVec::new(
            Opts::new(
                "omni_secret_reads_total",
                "Secret values served, by secret and source",
            ),
            &["secret_type", "source"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "omni_secret_failures_total",
                "Failed fetches from a source, by reason",
            ),
            &["secret_type", "reason"],
        )?;
        let cache_age = GaugeVec::new(
            Opts::new("omni_secret_cache_age_seconds", "Age of the cached value"),
            &["secret_type", "source"],
        )?;
        let refresh_latency = HistogramVec::new(
            HistogramOpts::new(
                "omni_secret_refresh_duration_seconds",
                "Time one fetch from the source took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["secret_type"],
        )?;
        let break_glass_active = IntGaugeVec::new(
            Opts::new(
                "omni_secret_break_glass_active",
                "1 while a break-glass override is served",
            ),
            &["secret_type"],
        )?;
        let rotation_overdue = IntGaugeVec::new(
            Opts::new(
                "omni_secret_rotation_overdue",
                "1 when the secret is past its rotation due date",
            ),
            &["secret_type"],
        )?;
        let connections = IntGauge::new("omni_secretd_connections", "Open client connections")?;
        let requests = IntCounterVec::new(
            Opts::new(
                "omni_secretd_requests_total",
                "Requests answered, by operation and result",
            ),
            &["op", "result"],
        )?;
        let audit_queue = IntGauge::new(
            "omni_secretd_audit_queue_depth",
            "Audit events queued and not yet committed",
        )?;
        registry.register(Box::new(reads_vec.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(cache_age.clone()))?;
        registry.register(Box::new(refresh_latency.clone()))?;
        registry.register(Box::new(break_glass_active.clone()))?;
        registry.register(Box::new(rotation_overdue.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        let watchers = IntGauge::new("omni_secretd_watchers", "Open watch subscriptions")?;
        let watch_lagged = IntCounter::new(
            "omni_secretd_watch_lagged_total",
            "Times a watcher fell behind and was told to re-read",
        )?;
        let unlocked_buffers = IntGauge::new(
            "omni_secretd_unlocked_buffers",
            "Secret buffers that could not be locked into RAM (raise LimitMEMLOCK)",
        )?;
        registry.register(Box::new(audit_queue.clone()))?;
        registry.register(Box::new(watchers.clone()))?;
        registry.register(Box::new(watch_lagged.clone()))?;
        registry.register(Box::new(unlocked_buffers.clone()))?;
        let reads = cache
            .slots()
            .iter()
            .map(|slot| SOURCES.map(|k| reads_vec.with_label_values(&[&*slot.name, k.as_str()])))
            .collect();
        Ok(Metrics {
            registry,
            reads,
            failures,
            cache_age,
            refresh_latency,
            break_glass_active,
            rotation_overdue,
            connections,
            requests,
            audit_queue,
            watchers,
            watch_lagged,
            unlocked_buffers,
        })
    }

    /// Counts a value served from slot `idx`.
    pub fn read(&self, idx: usize, source: SourceKind) {
        if let Some(counters) = self.reads.get(idx) {
            counters[source_index(source)].inc();
        }
    }

    /// Counts a failed fetch.
    pub fn failure(&self, secret: &str, reason: &str) {
        self.failures.with_label_values(&[secret, reason]).inc();
    }

    /// Records how long a fetch took.
    pub fn refresh_took(&self, secret: &str, seconds: f64) {
        self.refresh_latency
            .with_label_values(&[secret])
            .observe(seconds);
    }

    /// Counts an answered request.
    pub fn request(&self, op: &str, result: &str) {
        self.requests.with_label_values(&[op, result]).inc();
    }

    /// Renders the Prometheus text format, refreshing point-in-time gauges first.
    pub fn render(&self, cache: &Cache, store: &Store, audit: &AuditLog) -> String {
        let metas = store.all_meta().unwrap_or_default();
        let now = now_ms();
        self.cache_age.reset();
        for idx in 0..cache.slots().len() {
            let row = cache.status(idx);
            if let (Some(source), Some(age)) = (row.cache_source, row.age_ms) {
                self.cache_age
                    .with_label_values(&[&row.name, source.as_str()])
                    .set(age as f64 / 1000.0);
            }
            let overridden = cache.slot(idx).active_override().is_some();
            self.break_glass_active
                .with_label_values(&[&row.name])
                .set(i64::from(overridden));
            let overdue = metas
                .get(&row.name)
                .is_some_and(|m| now > m.rotation_due_at_ms);
            self.rotation_overdue
                .with_label_values(&[&row.name])
                .set(i64::from(overdue));
        }
        self.audit_queue
            .set(i64::try_from(audit.depth()).unwrap_or(i64::MAX));
        self.watchers
            .set(i64::try_from(cache.watchers()).unwrap_or(i64::MAX));
        self.unlocked_buffers
            .set(i64::try_from(secretd_proto::locked::unlocked_buffers()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
