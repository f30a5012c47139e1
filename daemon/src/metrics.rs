//! Prometheus metrics. Counters on the read path are registered per secret and source at
//! startup, so counting a read is one atomic add: no label lookup, no lock. Point-in-time
//! values (cache age, break-glass, rotation overdue, audit queue) are filled in at scrape time
//! from a [`Gauges`] snapshot the server takes (`server::scrape`), so this module sits below
//! the catalog it counts for and the refresher can report into it.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use secretd_proto::{ErrorCode, Request, SourceKind};

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

/// Results `omni_secretd_requests_total` tells apart: `ok`, every code a daemon sends, and
/// `unknown`.
const RESULTS: usize = ErrorCode::ALL.len() + 2;

/// `omni_secretd_requests_total`, one counter per operation and result, each resolved on its
/// first use (so the scrape shows only pairs that happened) and then a single atomic add: no
/// label hashing or lock per request.
#[derive(Debug)]
struct Requests {
    /// The labelled family the counters come from.
    family: IntCounterVec,
    /// By [`Request::op_index`], then result (`ok` first, then [`ErrorCode::ALL`], then
    /// `unknown`).
    counters: Vec<[OnceLock<IntCounter>; RESULTS]>,
}

impl Requests {
    fn new(family: IntCounterVec) -> Requests {
        Requests {
            family,
            counters: Request::OPS
                .iter()
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
        }
    }

    fn count(&self, op: usize, refused: Option<ErrorCode>) {
        let result = match refused {
            None => 0,
            Some(code) => ErrorCode::ALL
                .iter()
                .position(|c| *c == code)
                .map_or(RESULTS - 1, |i| i + 1),
        };
        let Some(cell) = self.counters.get(op).map(|row| &row[result]) else {
            return;
        };
        cell.get_or_init(|| {
            let label = refused.map_or("ok", ErrorCode::as_str);
            self.family.with_label_values(&[Request::OPS[op], label])
        })
        .inc();
    }
}

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
    /// Why the served version was withdrawn (`disabled`, `deleted`), while it is.
    pub(crate) revoked: Option<&'static str>,
    /// Whether an announced revocation went unconfirmed through its window.
    pub(crate) revocation_unconfirmed: bool,
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

/// What each secret is like right now: gauges set from a snapshot at scrape time.
#[derive(Debug)]
struct SecretGauges {
    /// `omni_secret_cache_age_seconds{secret_type,source}`.
    cache_age: GaugeVec,
    /// `omni_secret_break_glass_active{secret_type}`: 1 while an override is served.
    break_glass_active: IntGaugeVec,
    /// `omni_secret_rotation_overdue{secret_type}`: 1 past rotation_due_at.
    rotation_overdue: IntGaugeVec,
    /// `omni_secret_info{secret_type,version,source,fingerprint}`: 1 for what each secret
    /// serves, so Prometheus can compare versions across hosts.
    info: IntGaugeVec,
    /// `omni_secret_servable{secret_type}`: 1 while reads of the secret are answered.
    servable: IntGaugeVec,
    /// `omni_secret_stale{secret_type}`: 1 while the served value is past its TTL.
    stale: IntGaugeVec,
    /// `omni_secret_revoked{secret_type,reason}`: 1 while the source's value is withdrawn,
    /// and why.
    revoked: IntGaugeVec,
    /// `omni_secret_revocation_unconfirmed{secret_type}`: 1 while GSM announced the served
    /// version revoked and did not confirm it within `revocation_confirm_window`.
    revocation_unconfirmed: IntGaugeVec,
}

impl SecretGauges {
    fn new(r: &Registrar) -> Result<SecretGauges, prometheus::Error> {
        let per_secret = &["secret_type"];
        Ok(SecretGauges {
            cache_age: r.register(GaugeVec::new(
                Opts::new("omni_secret_cache_age_seconds", "Age of the cached value"),
                &["secret_type", "source"],
            )?)?,
            break_glass_active: r.gauges(
                "omni_secret_break_glass_active",
                "1 while a break-glass override is served",
                per_secret,
            )?,
            rotation_overdue: r.gauges(
                "omni_secret_rotation_overdue",
                "1 when the secret is past its rotation due date",
                per_secret,
            )?,
            info: r.gauges(
                "omni_secret_info",
                "1 for the version, source and keyed fingerprint each secret serves",
                &["secret_type", "version", "source", "fingerprint"],
            )?,
            servable: r.gauges(
                "omni_secret_servable",
                "1 while reads of the secret are answered",
                per_secret,
            )?,
            stale: r.gauges(
                "omni_secret_stale",
                "1 while the served value is past its TTL (its source is failing)",
                per_secret,
            )?,
            revoked: r.gauges(
                "omni_secret_revoked",
                "1 while the secret's value is withdrawn, by reason (disabled: the version was disabled or destroyed; deleted: the secret was deleted)",
                &["secret_type", "reason"],
            )?,
            revocation_unconfirmed: r.gauges(
                "omni_secret_revocation_unconfirmed",
                "1 while GSM announced the served version revoked but did not confirm it within revocation_confirm_window",
                per_secret,
            )?,
        })
    }

    /// Sets every gauge of one secret from its snapshot.
    fn set(&self, row: &SlotGauges<'_>) {
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
        if let Some(reason) = row.revoked {
            self.revoked.with_label_values(&[row.name, reason]).set(1);
        }
        self.revocation_unconfirmed
            .with_label_values(&[row.name])
            .set(i64::from(row.revocation_unconfirmed));
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
    /// `omni_secret_notifications_total{event,result}`: GSM notifications by event and what
    /// was done (`refreshed`, `coalesced`, `ignored`, `malformed`, `revoked`,
    /// `rotation_requested`, `unconfirmed`).
    notifications: IntCounterVec,
    /// `omni_secretd_notification_stream_up`: 1 while the notification stream is open.
    notification_stream_up: IntGauge,
    /// `omni_secretd_notification_subscription_missing`: 1 while Pub/Sub says the
    /// subscription does not exist (deleted, or expired unused), which no retry mends.
    subscription_missing: IntGauge,
    /// `omni_secretd_notifications_held`: messages received and waiting for the refresh they
    /// asked for (acknowledged after it; nacked if the daemon stops first).
    notifications_held: IntGauge,
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
            notifications: r.counters(
                "omni_secret_notifications_total",
                "GSM notifications received, by event and what was done",
                &["event", "result"],
            )?,
            notification_stream_up: r.gauge(
                "omni_secretd_notification_stream_up",
                "1 while the GSM notification stream is open",
            )?,
            notifications_held: r.gauge(
                "omni_secretd_notifications_held",
                "GSM notifications received and waiting for the refresh they asked for",
            )?,
            subscription_missing: r.gauge(
                "omni_secretd_notification_subscription_missing",
                "1 while the notification subscription does not exist (deleted or expired): re-create it",
            )?,
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

    /// Counts a GSM notification.
    pub(crate) fn notification(&self, event: &str, result: &str) {
        self.notifications.with_label_values(&[event, result]).inc();
    }

    /// Records whether the notification stream is open.
    pub(crate) fn notification_stream(&self, up: bool) {
        self.notification_stream_up.set(i64::from(up));
    }

    /// Counts `n` more notifications waiting for their refresh.
    pub(crate) fn notifications_held(&self, n: usize) {
        self.notifications_held.add(gauge(n));
    }

    /// Counts `n` notifications no longer waiting (acknowledged, or given back).
    pub(crate) fn notifications_released(&self, n: usize) {
        self.notifications_held.sub(gauge(n));
    }

    /// Records whether Pub/Sub says the notification subscription does not exist.
    pub(crate) fn subscription_missing(&self, missing: bool) {
        self.subscription_missing.set(i64::from(missing));
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

    /// Counts an answered request: the operation (a [`Request::op_index`]) and the error code
    /// it was refused with, if it was.
    pub(crate) fn request(&self, op: usize, refused: Option<ErrorCode>) {
        self.requests.count(op, refused);
    }

    /// Renders the Prometheus text format, setting point-in-time gauges from `now` first.
    pub(crate) fn render(&self, now: &Gauges<'_>) -> String {
        self.now.cache_age.reset();
        self.now.info.reset();
        self.now.revoked.reset();
        for row in &now.slots {
            self.now.set(row);
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
