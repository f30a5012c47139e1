//! The point-in-time series: what each secret and the daemon are like right now, set from a
//! snapshot (`Gauges`) at scrape time.

use prometheus::{GaugeVec, IntGaugeVec, Opts};
use secretd_proto::SourceKind;

use super::Registrar;

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
pub(super) fn gauge<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// What each secret is like right now: gauges set from a snapshot at scrape time.
#[derive(Debug)]
pub(super) struct SecretGauges {
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
    pub(super) fn new(r: &Registrar) -> Result<SecretGauges, prometheus::Error> {
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

    /// Sets every secret's gauges from the snapshot, forgetting label sets (versions,
    /// sources, reasons) that no longer hold.
    pub(super) fn set_all(&self, rows: &[SlotGauges<'_>]) {
        self.cache_age.reset();
        self.info.reset();
        self.revoked.reset();
        for row in rows {
            self.set(row);
        }
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
