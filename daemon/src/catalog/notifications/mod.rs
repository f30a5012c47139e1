//! GSM's Pub/Sub notifications: a change of a secret in GSM (a new version, an alias moved, a
//! version disabled or destroyed) reaches this host in seconds instead of at its next refresh.
//!
//! GSM publishes every change of a secret to the topics configured on it; each host holds a
//! streaming pull on a subscription of its own. A message names the secret (`secretId`, with
//! the project number) and the event (`eventType`). A message about a catalog secret triggers
//! that secret's refresh after a random wait of up to `notification_jitter`; messages that
//! arrive while one is pending coalesce into it. The refresh is the ordinary one, so a
//! `_DISABLE` or `_DESTROY` revokes the served version only if GSM, asked by version number,
//! confirms it: whoever can publish to the topic cannot black out the fleet. A
//! `SECRET_VERSION_ADD` names the new version (`versionId`): a secret bound to `latest` reads
//! it by number, which GSM guarantees current where `latest` converges within minutes, and
//! serves it only if it is newer than the served one (an old or forged message rolls nothing
//! back). Likewise a
//! `SECRET_ROTATE` reaches watchers only once the secret's rotation schedule in GSM shows it
//! (`rotation_schedule`). A message that triggers a refresh is acknowledged once the refresh
//! is done, and nacked if the daemon stops first (Pub/Sub redelivers it at once); others are
//! acknowledged on arrival. The poll stays as the safety net.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Catalog;
use super::refresh::REFRESH_WAIT;
use super::revocation::Suspicion;
use super::rotation::schedule::{Look, Schedules, Verdict};
use super::source::Source;
use crate::config::NotificationsConfig;
use crate::metrics::Metrics;
use crate::util::lock::Recover;

mod stream;

use stream::StreamEnded;

/// The first wait before resubscribing after the stream ended; it doubles per failure.
pub(crate) const RESUBSCRIBE_FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between resubscription attempts.
pub(crate) const RESUBSCRIBE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Every event GSM publishes: the `event` label is one of these in lower case, or `other`, so
/// whoever can publish to the topic cannot grow the metrics without bound.
const KNOWN: [&str; 10] = [
    "SECRET_CREATE",
    "SECRET_UPDATE",
    "SECRET_DELETE",
    "SECRET_VERSION_ADD",
    "SECRET_VERSION_ENABLE",
    "SECRET_VERSION_DISABLE",
    "SECRET_VERSION_DESTROY",
    "SECRET_VERSION_DESTROY_SCHEDULED",
    "SECRET_ROTATE",
    "TOPIC_CONFIGURED",
];
/// Events that may change what a secret serves: each triggers a refresh.
const REFRESHING: [&str; 7] = [
    "SECRET_VERSION_ADD",
    "SECRET_VERSION_ENABLE",
    "SECRET_VERSION_DISABLE",
    "SECRET_VERSION_DESTROY",
    "SECRET_VERSION_DESTROY_SCHEDULED",
    "SECRET_UPDATE",
    "SECRET_DELETE",
];
/// Events that may withdraw the served version (counted `revoked` when the refresh did).
const REVOKING: [&str; 3] = [
    "SECRET_VERSION_DISABLE",
    "SECRET_VERSION_DESTROY",
    "SECRET_VERSION_DESTROY_SCHEDULED",
];

/// Whether notifications can reach this host, for `/healthz` and the refreshers' schedule.
#[derive(Debug)]
pub(crate) struct ChannelHealth {
    /// Why the channel is down, or `None` while it is up.
    down: std::sync::Mutex<Option<String>>,
    /// How often secrets are polled while the channel is down.
    pub(crate) fallback_interval: Duration,
}

impl ChannelHealth {
    /// A channel not yet up (the stream has not been checked).
    pub(crate) fn new(fallback_interval: Duration) -> ChannelHealth {
        ChannelHealth {
            down: std::sync::Mutex::new(Some("the notification stream is starting".into())),
            fallback_interval,
        }
    }

    /// Why the channel is down, if it is.
    pub(crate) fn down(&self) -> Option<String> {
        self.down.lock().recover().clone()
    }

    fn set(&self, down: Option<String>) {
        *self.down.lock().recover() = down;
    }
}

/// What the notification task shares with the refreshes it schedules.
struct Listener {
    /// The catalog whose refreshers are woken.
    catalog: Arc<Catalog>,
    /// Each slot's source, for the names GSM uses.
    sources: Vec<Arc<dyn Source>>,
    /// Per slot: whether a refresh is scheduled and not yet asked for (later messages
    /// coalesce into it), and the messages it will answer.
    pending: Vec<std::sync::Mutex<Pending>>,
    /// The longest random wait before a scheduled refresh.
    jitter: Duration,
    /// `omni_secret_notifications_total`, `omni_secretd_notification_stream_up`.
    metrics: Arc<Metrics>,
    /// What GSM's rotation schedules said, against which `SECRET_ROTATE` is judged.
    schedules: Schedules,
    /// Whether a malformed message was logged already (logged once, counted always).
    malformed_logged: AtomicBool,
    /// Scheduled refreshes join the daemon's tasks, so shutdown waits for them.
    tracker: TaskTracker,
    /// Shutdown.
    cancel: CancellationToken,
}

/// Holds the streaming pull until `cancel`, resubscribing with backoff whenever it ends.
pub(crate) async fn run(
    cfg: NotificationsConfig,
    credentials: Credentials,
    catalog: Arc<Catalog>,
    sources: Vec<Arc<dyn Source>>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let listener = Arc::new(Listener {
        pending: sources.iter().map(|_| Default::default()).collect(),
        schedules: Schedules::new(sources.len(), cfg.rotation_check_spread),
        catalog,
        sources,
        jitter: cfg.jitter,
        metrics,
        malformed_logged: AtomicBool::new(false),
        tracker,
        cancel: cancel.clone(),
    });
    listener.learn_schedules();
    let mut wait = RESUBSCRIBE_FIRST_WAIT;
    let mut last_why = String::new();
    let sink = SinkOf(listener.clone());
    loop {
        // The stream watches `cancel` itself: it gives back what it holds before it returns.
        let ended = stream::listen(&cfg, &credentials, &sink, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        listener.metrics.notifications().stream_up(false);
        listener
            .metrics
            .notifications()
            .subscription_missing(matches!(ended, Err(StreamEnded::SubscriptionMissing)));
        let why = match &ended {
            Err(e) => e.to_string(),
            Ok(_) => StreamEnded::Closed.to_string(),
        };
        listener.set_health(Some(why.clone()));
        let healthy_for_a_while = ended.as_ref().is_ok_and(|delivered| *delivered);
        if healthy_for_a_while {
            wait = RESUBSCRIBE_FIRST_WAIT;
        }
        // Said once per reason: a subscription that stays missing would otherwise log twice
        // a minute for as long as nobody re-creates it.
        if why != last_why {
            tracing::warn!(
                event = "gsm.notifications",
                subscription = %cfg.subscription,
                error = %why,
                retry_in_ms = wait.as_millis() as u64,
                "the notification stream is down; refreshes poll until it is back"
            );
        }
        last_why = why;
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESUBSCRIBE_MAX_WAIT);
    }
    listener.metrics.notifications().stream_up(false);
}

/// The listener as the stream's [`stream::Sink`].
struct SinkOf(Arc<Listener>);

impl stream::Sink for SinkOf {
    fn health(&self, down: Option<String>) {
        let listener = &self.0;
        listener.metrics.notifications().stream_up(down.is_none());
        // The stream is open: the subscription exists.
        listener.metrics.notifications().subscription_missing(false);
        listener.set_health(down.map(|e| format!("the Pub/Sub endpoint does not answer: {e}")));
    }

    fn message(&self, message: Message, handler: Handler) {
        self.0.handle(&message, handler);
    }

    fn release(&self) {
        for pending in &self.0.pending {
            // Dropped unacknowledged: nacked, so Pub/Sub redelivers them at once.
            let given_back = std::mem::take(&mut pending.lock().recover().held);
            self.0.metrics.notifications().released(given_back.len());
        }
    }
}

/// A slot's scheduled refresh and the messages it answers.
#[derive(Debug, Default)]
struct Pending {
    /// A refresh is scheduled and has not been asked for yet.
    scheduled: bool,
    /// The messages it answers, acknowledged once it is done. A message is acknowledged only
    /// when what it asked for happened: if the daemon stops first, they are nacked and
    /// Pub/Sub redelivers them at once, to the restarted host or another subscriber, instead
    /// of after their lease runs out.
    held: Vec<Handler>,
}

impl Listener {
    /// Handles one message: a refresh for a catalog secret, acknowledged once it is done;
    /// anything else is acknowledged at once.
    fn handle(self: &Arc<Self>, message: &Message, handler: Handler) {
        match self.route(message) {
            Some((idx, label, revoking)) => self.schedule(idx, label, revoking, handler),
            None => handler.ack(),
        }
    }

    /// Routes one message: the slot to refresh (with the metrics label and whether the event
    /// may withdraw a version), or `None` when nothing is to be refreshed.
    fn route(self: &Arc<Self>, message: &Message) -> Option<(usize, String, bool)> {
        let attribute = |k: &str| message.attributes.get(k).map(String::as_str);
        let (Some(event), Some(secret)) = (attribute("eventType"), attribute("secretId")) else {
            // TOPIC_CONFIGURED (GSM's test message) carries no secretId: not malformed.
            if attribute("eventType") == Some("TOPIC_CONFIGURED") {
                self.metrics
                    .notifications()
                    .received("topic_configured", "ignored");
            } else {
                self.malformed("no eventType or secretId attribute");
            }
            return None;
        };
        let label = if KNOWN.contains(&event) {
            event.to_ascii_lowercase()
        } else {
            "other".to_owned()
        };
        let Some(idx) = self.slot_of(secret) else {
            self.metrics.notifications().received(&label, "ignored");
            return None;
        };
        if event == "SECRET_ROTATE" {
            self.check_rotation(idx, label);
            return None;
        }
        if !REFRESHING.contains(&event) {
            self.metrics.notifications().received(&label, "ignored");
            return None;
        }
        if event == "SECRET_VERSION_ADD"
            && let Some(version) = attribute("versionId").and_then(|v| self.version_of(idx, v))
        {
            // Read by number: strongly consistent, where `latest` may lag for minutes.
            self.catalog.slot(idx).trigger.announce_version(version);
        }
        self.doubt(idx, event, attribute("versionId"));
        if event == "SECRET_UPDATE"
            && let Some(alias) = self.sources[idx].alias()
            && let Some(target) = alias_target(&message.data, alias)
        {
            self.catalog.slot(idx).trigger.expect_alias(target);
        }
        Some((idx, label, REVOKING.contains(&event)))
    }

    /// Holds `handler` for slot `idx`'s next refresh, scheduling it after a random wait of up
    /// to `notification_jitter` unless one is scheduled already (then the message coalesces).
    fn schedule(self: &Arc<Self>, idx: usize, label: String, revoking: bool, handler: Handler) {
        {
            // One lock for both: a message held here is answered by a refresh asked for
            // after it arrived.
            let mut pending = self.pending[idx].lock().recover();
            pending.held.push(handler);
            self.metrics.notifications().held(1);
            if std::mem::replace(&mut pending.scheduled, true) {
                self.metrics.notifications().received(&label, "coalesced");
                return;
            }
        }
        let me = self.clone();
        self.tracker.spawn(async move {
            let wait = me.jitter.mul_f64(fastrand::f64());
            tokio::select! {
                // The held messages stay for the stream to give back.
                () = me.cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let slot = me.catalog.slot(idx);
            let was_revoked = slot.health().revoked.is_some();
            let answered = {
                let mut pending = me.pending[idx].lock().recover();
                pending.scheduled = false;
                std::mem::take(&mut pending.held)
            };
            me.metrics.notifications().released(answered.len());
            let ticket = slot.trigger.request();
            let finished = tokio::select! {
                // Dropped unacknowledged: nacked, redelivered at once.
                () = me.cancel.cancelled() => return,
                finished = ticket.wait(tokio::time::Instant::now() + REFRESH_WAIT) => finished,
            };
            for handler in answered {
                handler.ack();
            }
            let revoked = !was_revoked && slot.health().revoked.is_some();
            let result = if finished && revoking && revoked {
                "revoked"
            } else {
                "refreshed"
            };
            me.metrics.notifications().received(&label, result);
        });
    }

    /// Opens a doubt for a message that announces a withdrawal: the served version disabled
    /// or destroyed, or the secret deleted. The refresher confirms it with GSM over
    /// `revocation_confirm_window` before anything is withdrawn (see `revocation`).
    fn doubt(&self, idx: usize, event: &str, version_id: Option<&str>) {
        let slot = self.catalog.slot(idx);
        let now = tokio::time::Instant::now();
        if event == "SECRET_DELETE" {
            slot.doubt.begin(Suspicion::Deleted, now);
            return;
        }
        if !REVOKING.contains(&event) {
            return;
        }
        let Some(served) = slot.current() else {
            return;
        };
        // Only a message about the served version (or naming none) concerns what is served.
        let named = version_id.and_then(|v| self.version_of(idx, v));
        if named.is_none_or(|n| n.to_string() == served.version) {
            slot.doubt
                .begin(Suspicion::Refused(served.version.clone()), now);
        }
    }

    /// Waits a random time within `rotation_check_spread` before a look at a schedule; false
    /// if the daemon stops first.
    async fn spread(&self) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(self.schedules.delay()) => true,
        }
    }

    /// Takes a first look at every GSM secret's rotation schedule, each after a random wait
    /// within the spread, so that the first `SECRET_ROTATE` after a start can be judged.
    fn learn_schedules(self: &Arc<Self>) {
        for (idx, source) in self.sources.iter().enumerate() {
            if source.kind() != secretd_proto::SourceKind::Gsm {
                continue;
            }
            let me = self.clone();
            self.tracker.spawn(async move {
                if !me.spread().await {
                    return;
                }
                let slot = me.catalog.slot(idx);
                me.schedules
                    .look(idx, &slot.name, me.sources[idx].as_ref())
                    .await;
            });
        }
    }

    /// Announces a `SECRET_ROTATE` to watchers only once GSM's schedule shows it moved (see
    /// `rotation_schedule`): whoever can publish to the topic cannot set automation rotating.
    fn check_rotation(self: &Arc<Self>, idx: usize, label: String) {
        if !self.schedules.claim(idx) {
            self.metrics.notifications().received(&label, "coalesced");
            return;
        }
        let me = self.clone();
        self.tracker.spawn(async move {
            if !me.spread().await {
                return;
            }
            let slot = me.catalog.slot(idx);
            let look = me
                .schedules
                .look(idx, &slot.name, me.sources[idx].as_ref())
                .await;
            let result = match look {
                Look::Judged(Verdict::Confirmed) => {
                    tracing::info!(
                        event = "secret.rotation_requested",
                        secret = %slot.name,
                        "GSM's rotation schedule asks for a new version of this secret"
                    );
                    // Watchers (automation) hear of it; nothing served changes, so no refresh.
                    slot.rotation_requested();
                    "rotation_requested"
                }
                Look::Judged(verdict) => {
                    let why = if verdict == Verdict::FirstLook {
                        "this host had not seen the secret's rotation schedule yet"
                    } else {
                        "GSM's rotation schedule did not move: the message was not sent by it"
                    };
                    tracing::warn!(
                        event = "secret.rotation_unconfirmed",
                        secret = %slot.name,
                        why,
                        "a SECRET_ROTATE message was not announced to watchers"
                    );
                    "unconfirmed"
                }
                Look::Failed(_) => "unconfirmed",
                Look::NoSchedule => "ignored",
            };
            me.metrics.notifications().received(&label, result);
        });
    }

    /// Records the channel's health where `/healthz` and the refreshers read it.
    fn set_health(&self, down: Option<String>) {
        if let Some(channel) = &self.catalog.channel {
            channel.set(down);
        }
    }

    /// The slot whose GSM secret `secret_id` names (by project id or number).
    fn slot_of(&self, secret_id: &str) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| s.gsm_names().iter().any(|n| n == secret_id))
    }

    /// The version number in `versionId` (`projects/NUMBER/secrets/S/versions/N`), if it names
    /// slot `idx`'s secret.
    fn version_of(&self, idx: usize, version_id: &str) -> Option<u64> {
        let (secret, version) = version_id.rsplit_once("/versions/")?;
        let ours = self.sources[idx].gsm_names().iter().any(|n| n == secret);
        ours.then(|| version.parse().ok()).flatten()
    }

    /// Counts a malformed message, and logs the first.
    fn malformed(&self, why: &str) {
        self.metrics
            .notifications()
            .received("malformed", "malformed");
        if !self.malformed_logged.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                event = "gsm.notifications",
                why,
                "a malformed notification was acknowledged and dropped (further ones are only counted)"
            );
        }
    }
}

/// Where `alias` points according to a `SECRET_UPDATE` message's data (the secret as JSON,
/// `versionAliases` mapping alias to version number, a string in Google's JSON).
fn alias_target(data: &[u8], alias: &str) -> Option<u64> {
    let secret: serde_json::Value = serde_json::from_slice(data).ok()?;
    let target = &secret["versionAliases"][alias];
    target
        .as_str()
        .and_then(|n| n.parse().ok())
        .or_else(|| target.as_u64())
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_target_is_read_from_the_secret_json() {
        let data = br#"{"name":"projects/1/secrets/s","versionAliases":{"prod":"7","dev":3}}"#;
        assert_eq!(alias_target(data, "prod"), Some(7));
        assert_eq!(alias_target(data, "dev"), Some(3));
        assert_eq!(alias_target(data, "canary"), None);
        assert_eq!(alias_target(b"not json", "prod"), None);
        assert_eq!(
            alias_target(br#"{"versionAliases":{"prod":"x"}}"#, "prod"),
            None
        );
    }
}
