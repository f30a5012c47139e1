//! The GSM notification stream's series: what arrived and what was done with it, whether the
//! stream is open, and what waits for a refresh.

use prometheus::{IntCounterVec, IntGauge};

use super::Registrar;
use super::gauges::gauge;

/// The notification listener's series (`catalog::notifications` counts into them).
#[derive(Debug)]
pub(crate) struct Notifications {
    /// `omni_secret_notifications_total{event,result}`: GSM notifications by event and what
    /// was done (`refreshed`, `coalesced`, `ignored`, `malformed`, `revoked`,
    /// `rotation_requested`, `unconfirmed`).
    received: IntCounterVec,
    /// `omni_secretd_notification_stream_up`: 1 while the notification stream is open.
    stream_up: IntGauge,
    /// `omni_secretd_notification_subscription_missing`: 1 while Pub/Sub says the
    /// subscription does not exist (deleted, or expired unused), which no retry mends.
    subscription_missing: IntGauge,
    /// `omni_secretd_notifications_held`: messages received and waiting for the refresh they
    /// asked for (acknowledged after it; nacked if the daemon stops first).
    held: IntGauge,
}

impl Notifications {
    pub(super) fn new(r: &Registrar) -> Result<Notifications, prometheus::Error> {
        Ok(Notifications {
            received: r.counters(
                "omni_secret_notifications_total",
                "GSM notifications received, by event and what was done",
                &["event", "result"],
            )?,
            stream_up: r.gauge(
                "omni_secretd_notification_stream_up",
                "1 while the GSM notification stream is open",
            )?,
            held: r.gauge(
                "omni_secretd_notifications_held",
                "GSM notifications received and waiting for the refresh they asked for",
            )?,
            subscription_missing: r.gauge(
                "omni_secretd_notification_subscription_missing",
                "1 while the notification subscription does not exist (deleted or expired): re-create it",
            )?,
        })
    }

    /// Counts a GSM notification: its event and what was done.
    pub(crate) fn received(&self, event: &str, result: &str) {
        self.received.with_label_values(&[event, result]).inc();
    }

    /// Records whether the notification stream is open.
    pub(crate) fn stream_up(&self, up: bool) {
        self.stream_up.set(i64::from(up));
    }

    /// Counts `n` more notifications waiting for their refresh.
    pub(crate) fn held(&self, n: usize) {
        self.held.add(gauge(n));
    }

    /// Counts `n` notifications no longer waiting (acknowledged, or given back).
    pub(crate) fn released(&self, n: usize) {
        self.held.sub(gauge(n));
    }

    /// Records whether Pub/Sub says the notification subscription does not exist.
    pub(crate) fn subscription_missing(&self, missing: bool) {
        self.subscription_missing.set(i64::from(missing));
    }
}
