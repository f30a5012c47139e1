//! Prometheus metrics. Counters on the read path are registered per secret and source at
//! startup, so counting a read is one atomic add: no label lookup, no lock. Point-in-time
//! values (cache age, break-glass, rotation overdue, audit queue) are filled in at scrape time
//! from a [`Gauges`] snapshot the server takes (`server::scrape`), so this module sits below
//! the catalog it counts for and the refresher can report into it.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use secretd_proto::SourceKind;

/// Point-in-time values of one secret, taken at scrape time.
#[derive(Debug)]
pub(crate) struct SlotGauges<'a> {
    /// The catalog name.
    pub(crate) name: &'a str,
    /// Where the served value came from and how old it is, if there is one.
    pub(crate) age: Option<(SourceKind, f64)>,
    /// Whether a break-glass override is served.
    pub(crate) break_glass: bool,
    /// Whether the secret is past its rotation due date.
    pub(crate) rotation_overdue: bool,
    /// The version, source and fingerprint served, if anything is (`omni_secret_info`).
    pub(crate) served: Option<(String, SourceKind, String)>,
    /// Whether reads are answered (fresh or stale within `max_stale`).
    pub(crate) servable: bool,
    /// Whether the value is past its TTL (its source is failing).
    pub(crate) stale: bool,
}

/// Point-in-time values of the daemon, taken at scrape time.
#[derive(Debug)]
pub(crate) struct Gauges<'a> {
    /// One row per catalog secret.
    pub(crate) slots: Vec<SlotGauges<'a>>,
    /// Audit events queued and not yet committed.
    pub(crate) audit_queue: usize,
    /// Open watch subscriptions.
    pub(crate) watchers: usize,
    /// Whether the audit trail can be written.
    pub(crate) audit_writable: bool,
}

/// A count as a gauge value, saturating.
fn gauge<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
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
    /// `omni_secret_notifications_total{event,result}`: GSM notifications by event and what
    /// was done (`refreshed`, `coalesced`, `ignored`, `malformed`, `revoked`).
    notifications: IntCounterVec,
    /// `omni_secretd_notification_stream_up`: 1 while the notification stream is open.
    notification_stream_up: IntGauge,
    /// `omni_secret_cache_age_seconds{secret_type,source}`.
    cache_age: GaugeVec,
    /// `omni_secret_refresh_duration_seconds{secret_type}`.
    refresh_latency: HistogramVec,
    /// `omni_secret_break_glass_active{secret_type}`: 1 while an override is served.
    break_glass_active: IntGaugeVec,
    /// `omni_secret_rotation_overdue{secret_type}`: 1 past rotation_due_at.
    rotation_overdue: IntGaugeVec,
    /// `omni_secretd_connections`: open client connections.
    pub(crate) connections: IntGauge,
    /// `omni_secretd_dedicated_connections`: connections served on a thread of their own
    /// (busy clients; see `server::transport::thread`).
    pub(crate) dedicated: IntGauge,
    /// `omni_secretd_requests_total{op,result}`.
    requests: IntCounterVec,
    /// `omni_secretd_audit_queue_depth`: audit events not yet committed.
    audit_queue: IntGauge,
    /// `omni_secretd_watchers`: open watch subscriptions.
    watchers: IntGauge,
    /// `omni_secret_info{secret_type,version,source,fingerprint}`: 1 for what each secret
    /// serves, so Prometheus can compare versions across hosts.
    info: IntGaugeVec,
    /// `omni_secret_servable{secret_type}`: 1 while reads of the secret are answered.
    servable: IntGaugeVec,
    /// `omni_secret_stale{secret_type}`: 1 while the served value is past its TTL.
    stale: IntGaugeVec,
    /// `omni_secretd_audit_writable`: 1 while the audit trail can be written.
    audit_writable: IntGauge,
    /// `omni_secretd_watch_lagged_total`: times a watcher fell behind and was told to re-read.
    pub(crate) watch_lagged: IntCounter,
    /// `omni_secretd_unlocked_buffers`: value buffers that could not be locked into RAM.
    unlocked_buffers: IntGauge,
}

impl Metrics {
    /// Registers every series for a catalog of `secrets` (names, in slot order).
    pub(crate) fn new<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Metrics, prometheus::Error> {
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
        let revocations = IntCounterVec::new(
            Opts::new(
                "omni_secret_revocations_total",
                "Served versions withdrawn because GSM refused them (disabled or destroyed)",
            ),
            &["secret_type"],
        )?;
        let missing_crc = IntCounterVec::new(
            Opts::new(
                "omni_secret_missing_crc_total",
                "GSM payloads received without a CRC32C (unverified in transit)",
            ),
            &["secret_type"],
        )?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "omni_secret_notifications_total",
                "GSM notifications received, by event and what was done",
            ),
            &["event", "result"],
        )?;
        let notification_stream_up = IntGauge::new(
            "omni_secretd_notification_stream_up",
            "1 while the GSM notification stream is open",
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
        let dedicated = IntGauge::new(
            "omni_secretd_dedicated_connections",
            "Client connections served on a thread of their own (busy clients)",
        )?;
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
        registry.register(Box::new(revocations.clone()))?;
        registry.register(Box::new(missing_crc.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(notification_stream_up.clone()))?;
        registry.register(Box::new(cache_age.clone()))?;
        registry.register(Box::new(refresh_latency.clone()))?;
        registry.register(Box::new(break_glass_active.clone()))?;
        registry.register(Box::new(rotation_overdue.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(dedicated.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        let watchers = IntGauge::new("omni_secretd_watchers", "Open watch subscriptions")?;
        let info = IntGaugeVec::new(
            Opts::new(
                "omni_secret_info",
                "1 for the version, source and keyed fingerprint each secret serves",
            ),
            &["secret_type", "version", "source", "fingerprint"],
        )?;
        let servable = IntGaugeVec::new(
            Opts::new(
                "omni_secret_servable",
                "1 while reads of the secret are answered",
            ),
            &["secret_type"],
        )?;
        let stale = IntGaugeVec::new(
            Opts::new(
                "omni_secret_stale",
                "1 while the served value is past its TTL (its source is failing)",
            ),
            &["secret_type"],
        )?;
        let audit_writable = IntGauge::new(
            "omni_secretd_audit_writable",
            "1 while the audit trail can be written (reads are refused otherwise)",
        )?;
        registry.register(Box::new(info.clone()))?;
        registry.register(Box::new(servable.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(audit_writable.clone()))?;
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
        let reads = secrets
            .into_iter()
            .map(|name| SourceKind::ALL.map(|k| reads_vec.with_label_values(&[name, k.as_str()])))
            .collect();
        Ok(Metrics {
            registry,
            reads,
            failures,
            revocations,
            missing_crc,
            notifications,
            notification_stream_up,
            cache_age,
            refresh_latency,
            break_glass_active,
            rotation_overdue,
            connections,
            dedicated,
            requests,
            audit_queue,
            watchers,
            info,
            servable,
            stale,
            audit_writable,
            watch_lagged,
            unlocked_buffers,
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

    /// Counts a GSM notification.
    pub(crate) fn notification(&self, event: &str, result: &str) {
        self.notifications.with_label_values(&[event, result]).inc();
    }

    /// Records whether the notification stream is open.
    pub(crate) fn notification_stream(&self, up: bool) {
        self.notification_stream_up.set(i64::from(up));
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

    /// Counts an answered request.
    pub(crate) fn request(&self, op: &str, result: &str) {
        self.requests.with_label_values(&[op, result]).inc();
    }

    /// Renders the Prometheus text format, setting point-in-time gauges from `now` first.
    pub(crate) fn render(&self, now: &Gauges<'_>) -> String {
        self.cache_age.reset();
        self.info.reset();
        for row in &now.slots {
            if let Some((version, source, fingerprint)) = &row.served {
                self.info
                    .with_label_values(&[row.name, version, source.as_str(), fingerprint])
                    .set(1);
            }
            self.servable
                .with_label_values(&[row.name])
                .set(i64::from(row.servable));
            self.stale
                .with_label_values(&[row.name])
                .set(i64::from(row.stale));
            if let Some((source, age)) = row.age {
                self.cache_age
                    .with_label_values(&[row.name, source.as_str()])
                    .set(age);
            }
            self.break_glass_active
                .with_label_values(&[row.name])
                .set(i64::from(row.break_glass));
            self.rotation_overdue
                .with_label_values(&[row.name])
                .set(i64::from(row.rotation_overdue));
        }
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
