//! Prometheus metrics, every series in one room. Counters on the read path are registered per
//! secret and source at startup, so counting a read is one atomic add: no label lookup, no
//! lock (`requests` does the same for every operation and result). Point-in-time values (cache
//! age, break-glass, rotation overdue, audit queue) are set at scrape time from a [`Gauges`]
//! snapshot (`gauges`), which `scrape` takes from the catalog, the store and the audit writer.
//!
//! The room spans two layers, kept apart file by file: this file, `requests` and `gauges` know
//! nothing of the catalog, so the refresher and the notification listener count into them;
//! only `scrape` reads the catalog, and only the server calls it (the `Metrics` request and
//! the HTTP `/metrics`).

mod gauges;
mod notifications;
mod requests;
mod scrape;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use secretd_proto::{ErrorCode, SourceKind};

pub(crate) use gauges::{Gauges, SlotGauges};
use gauges::{SecretGauges, gauge};
pub(crate) use notifications::Notifications;
use requests::Requests;
pub(crate) use scrape::scrape;

/// The buckets of `omni_secret_refresh_duration_seconds`, in seconds.
const REFRESH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Creates series and registers them in one step.
struct Registrar(Registry);

impl Registrar {
    /// Registers `series` and hands it back.
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        series: C,
    ) -> Result<C, prometheus::Error> {
        self.0.register(Box::new(series.clone()))?;
        Ok(series)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.register(IntGauge::new(name, help)?)
    }
}

/// All of secretd's series.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// `omni_secret_reads_total{secret_type,source}`, pre-resolved per slot and source.
    reads: Vec<[IntCounter; SourceKind::ALL.len()]>,
    /// `omni_secret_failures_total{secret_type,reason}`: failed fetches by reason.
    failures: IntCounterVec,
    /// `omni_secret_revocations_total{secret_type}`: served versions withdrawn because GSM
    /// refused them (disabled or destroyed).
    revocations: IntCounterVec,
    /// `omni_secret_missing_crc_total{secret_type}`: GSM payloads that came without a CRC32C.
    missing_crc: IntCounterVec,
    /// The GSM notification stream's series.
    notifications: Notifications,
    /// `omni_secret_refresh_duration_seconds{secret_type}`.
    refresh_latency: HistogramVec,
    /// `omni_secretd_connections`: open client connections.
    pub(crate) connections: IntGauge,
    /// `omni_secretd_dedicated_connections`: connections served on a thread of their own
    /// (busy clients; see `server::transport::thread`).
    pub(crate) dedicated: IntGauge,
    /// `omni_secretd_requests_total{op,result}`, resolved once per label pair.
    requests: Requests,
    /// What each secret is like right now, set at scrape time.
    now: SecretGauges,
    /// `omni_secretd_audit_queue_depth`: audit events not yet committed.
    audit_queue: IntGauge,
    /// `omni_secretd_watchers`: open watch subscriptions.
    watchers: IntGauge,
    /// `omni_secretd_audit_writable`: 1 while the audit trail can be written.
    audit_writable: IntGauge,
    /// `omni_secretd_watch_lagged_total`: times a watcher fell behind and was told to re-read.
    pub(crate) watch_lagged: IntCounter,
    /// `omni_secretd_unlocked_buffers`: value buffers that could not be locked into RAM.
    unlocked_buffers: IntGauge,
    /// `omni_secretd_connections_refused_total{reason}`: connections refused at accept
    /// (`total`, `per_uid`); no uid label, so a flood of uids cannot grow the scrape.
    pub(crate) refused: IntCounterVec,
}

impl Metrics {
    /// Registers every series for a catalog of `secrets` (names, in slot order).
    pub(crate) fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Metrics, prometheus::Error> {
        let r = Registrar(Registry::new());
        let per_secret = &["secret_type"];
        let reads_vec = r.counters(
            "omni_secret_reads_total",
            "Secret values served, by secret and source",
            &["secret_type", "source"],
        )?;
        let reads = secrets
            .into_iter()
            .map(|name| SourceKind::ALL.map(|k| reads_vec.with_label_values(&[name, k.as_str()])))
            .collect();
        Ok(Metrics {
            reads,
            failures: r.counters(
                "omni_secret_failures_total",
                "Failed fetches from a source, by reason",
                &["secret_type", "reason"],
            )?,
            revocations: r.counters(
                "omni_secret_revocations_total",
                "Served versions withdrawn because GSM refused them (disabled or destroyed) or deleted the secret",
                per_secret,
            )?,
            missing_crc: r.counters(
                "omni_secret_missing_crc_total",
                "GSM payloads received without a CRC32C (unverified in transit)",
                per_secret,
            )?,
            notifications: Notifications::new(&r)?,
            refresh_latency: r.register(HistogramVec::new(
                HistogramOpts::new(
                    "omni_secret_refresh_duration_seconds",
                    "Time one fetch from the source took",
                )
                .buckets(REFRESH_BUCKETS.to_vec()),
                per_secret,
            )?)?,
            connections: r.gauge("omni_secretd_connections", "Open client connections")?,
            dedicated: r.gauge(
                "omni_secretd_dedicated_connections",
                "Client connections served on a thread of their own (busy clients)",
            )?,
            now: SecretGauges::new(&r)?,
            requests: Requests::new(r.counters(
                "omni_secretd_requests_total",
                "Requests answered, by operation and result",
                &["op", "result"],
            )?),
            audit_queue: r.gauge(
                "omni_secretd_audit_queue_depth",
                "Audit events queued and not yet committed",
            )?,
            watchers: r.gauge("omni_secretd_watchers", "Open watch subscriptions")?,
            audit_writable: r.gauge(
                "omni_secretd_audit_writable",
                "1 while the audit trail can be written (reads are refused otherwise)",
            )?,
            watch_lagged: r.register(IntCounter::new(
                "omni_secretd_watch_lagged_total",
                "Times a watcher fell behind and was told to re-read",
            )?)?,
            unlocked_buffers: r.gauge(
                "omni_secretd_unlocked_buffers",
                "Secret buffers that could not be locked into RAM (raise LimitMEMLOCK)",
            )?,
            refused: r.counters(
                "omni_secretd_connections_refused_total",
                "Connections refused at accept, by reason (total: the daemon is full; per_uid: that uid holds its share)",
                &["reason"],
            )?,
            registry: r.0,
        })
    }

    /// Counts a value served from slot `idx`.
    pub(crate) fn read(&self, idx: usize, source: SourceKind) {
        if let Some(counters) = self.reads.get(idx) {
            counters[source.index()].inc();
        }
    }

    /// Counts a failed fetch.
    pub(crate) fn failure(&self, secret: &str, reason: &str) {
        self.failures.with_label_values(&[secret, reason]).inc();
    }

    /// The GSM notification stream's series.
    pub(crate) fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    /// Counts a GSM payload that came without a CRC32C.
    pub(crate) fn missing_crc(&self, secret: &str) {
        self.missing_crc.with_label_values(&[secret]).inc();
    }

    /// Counts a revoked version.
    pub(crate) fn revoked(&self, secret: &str) {
        self.revocations.with_label_values(&[secret]).inc();
    }

    /// Records how long a fetch took.
    pub(crate) fn refresh_took(&self, secret: &str, seconds: f64) {
        self.refresh_latency
            .with_label_values(&[secret])
            .observe(seconds);
    }

    /// Counts an answered request: the operation (a [`secretd_proto::Request::op_index`]) and the error code
    /// it was refused with, if it was.
    pub(crate) fn request(&self, op: usize, refused: Option<ErrorCode>) {
        self.requests.count(op, refused);
    }

    /// Renders the Prometheus text format, setting point-in-time gauges from `now` first.
    pub(crate) fn render(&self, now: &Gauges<'_>) -> String {
        self.now.set_all(&now.slots);
        self.audit_queue.set(gauge(now.audit_queue));
        self.watchers.set(gauge(now.watchers));
        self.audit_writable.set(i64::from(now.audit_writable));
        self.unlocked_buffers
            .set(gauge(secretd_proto::locked::unlocked_buffers()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
