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
//! (`rotation_schedule`). Every message is acknowledged; the poll stays as the safety net.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin};
use google_cloud_pubsub::model::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Catalog;
use super::refresh::REFRESH_WAIT;
use super::rotation::schedule::{Look, Schedules, Verdict};
use super::source::Source;
use crate::config::NotificationsConfig;
use crate::metrics::Metrics;
use crate::util::lock::Recover;

/// The first wait before resubscribing after the stream ended; it doubles per failure.
pub(crate) const RESUBSCRIBE_FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long one GetSubscription health check may take before it counts as failed.
pub(crate) const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Per slot: a refresh is scheduled and has not been asked for yet (later messages
    /// coalesce into it).
    pending: Vec<AtomicBool>,
    /// The longest random wait before a scheduled refresh.
    jitter: Duration,
    /// `omni_secret_notifications_total`, `omni_secretd_notification_stream_up`.
    metrics: Arc<Metrics>,
    /// What GSM's rotation schedules said, against which `SECRET_ROTATE` is judged.
    schedules: Schedules,
    /// Whether a malformed message was logged already (logged once, counted always).
    malformed_logged: AtomicBool,
    /// Whether it was logged that the subscription cannot be checked (no permission).
    unchecked_logged: AtomicBool,
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
        pending: sources.iter().map(|_| AtomicBool::new(false)).collect(),
        schedules: Schedules::new(sources.len(), cfg.rotation_check_spread),
        catalog,
        sources,
        jitter: cfg.jitter,
        metrics,
        malformed_logged: AtomicBool::new(false),
        unchecked_logged: AtomicBool::new(false),
        tracker,
        cancel: cancel.clone(),
    });
    listener.learn_schedules();
    let mut wait = RESUBSCRIBE_FIRST_WAIT;
    loop {
        let ended = tokio::select! {
            () = cancel.cancelled() => break,
            ended = listener.clone().listen(&cfg, &credentials) => ended,
        };
        listener.metrics.notification_stream(false);
        let why = match &ended {
            Err(e) => e.to_string(),
            Ok(_) => StreamEnded::Closed.to_string(),
        };
        listener.set_health(Some(why.clone()));
        let healthy_for_a_while = ended.as_ref().is_ok_and(|delivered| *delivered);
        if healthy_for_a_while {
            wait = RESUBSCRIBE_FIRST_WAIT;
        }
        tracing::warn!(
            event = "gsm.notifications",
            subscription = %cfg.subscription,
            error = %why,
            retry_in_ms = wait.as_millis() as u64,
            "the notification stream is down; refreshes poll until it is back"
        );
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESUBSCRIBE_MAX_WAIT);
    }
    listener.metrics.notification_stream(false);
}

/// Whether a failed subscription check says nothing about the stream: the caller may not
/// look (a permission error), which is not the subscription being gone.
fn cannot_check(e: &google_cloud_gax::error::Error) -> bool {
    e.status()
        .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::PermissionDenied)
}

/// Why one subscription of the notification stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnded {
    /// A Pub/Sub client could not be built (which one, and Google's reason).
    #[error("cannot create the Pub/Sub {0} client: {1}")]
    Build(
        &'static str,
        #[source] google_cloud_gax::client_builder::Error,
    ),
    /// The streaming pull failed (after the client's own retries).
    #[error("{0}")]
    Pull(#[source] google_cloud_pubsub::Error),
    /// The stream ended without an error.
    #[error("the stream ended")]
    Closed,
}

impl Listener {
    /// One subscription: returns when the stream ends, `Ok(true)` if it delivered anything.
    async fn listen(
        self: Arc<Self>,
        cfg: &NotificationsConfig,
        credentials: &Credentials,
    ) -> Result<bool, StreamEnded> {
        let client = Subscriber::builder()
            .with_endpoint(cfg.endpoint.clone())
            .with_credentials(credentials.clone())
            .build()
            .await
            .map_err(|e| StreamEnded::Build("subscriber", e))?;
        let admin = SubscriptionAdmin::builder()
            .with_endpoint(cfg.endpoint.clone())
            .with_credentials(credentials.clone())
            .build()
            .await
            .map_err(|e| StreamEnded::Build("admin", e))?;
        // As a `Stream`, the pull survives the select below dropping a `next()` half-way (the
        // pending read lives in the stream, not in the dropped future).
        let pull = client.subscribe(cfg.subscription.clone()).build();
        let mut stream = Box::pin(futures::stream::unfold(pull, |mut pull| async move {
            pull.next().await.map(|item| (item, pull))
        }));
        tracing::info!(
            event = "gsm.notifications",
            subscription = %cfg.subscription,
            "listening for GSM notifications"
        );
        // The client retries transient failures itself, quietly: a subscription that answers
        // GetSubscription is what tells the stream can deliver. The check runs beside the
        // messages, never in their way.
        let health = async {
            let mut tick = tokio::time::interval(cfg.health_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let check = admin
                    .get_subscription()
                    .set_subscription(cfg.subscription.clone())
                    .send();
                let down = match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await {
                    Ok(Ok(_)) => None,
                    // Least privilege (`roles/pubsub.subscriber`) has no
                    // `pubsub.subscriptions.get`: the check cannot tell, so the stream
                    // judges alone (a deleted subscription still ends it).
                    Ok(Err(e)) if cannot_check(&e) => {
                        self.report_unchecked(&cfg.subscription);
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no answer in time".to_owned()),
                };
                if let Some(e) = &down {
                    tracing::warn!(
                        event = "gsm.notifications",
                        subscription = %cfg.subscription,
                        error = %e,
                        "the subscription does not answer; refreshes poll until it does"
                    );
                }
                self.metrics.notification_stream(down.is_none());
                self.set_health(down.map(|e| format!("subscription check failed: {e}")));
            }
        };
        let messages = async {
            let mut delivered = false;
            while let Some(item) = stream.next().await {
                let (message, handler) = item.map_err(StreamEnded::Pull)?;
                // Acknowledged at once: the refresh it triggers is idempotent and the poll is
                // the safety net, so a redelivery would only cost a GSM call.
                handler.ack();
                delivered = true;
                self.handle(&message);
            }
            Ok(delivered)
        };
        tokio::select! {
            ended = messages => ended,
            never = health => never,
        }
    }

    /// Says once that the subscription cannot be checked, and what that costs.
    fn report_unchecked(&self, subscription: &str) {
        if !self.unchecked_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "gsm.notifications.unchecked",
                subscription = %subscription,
                "no permission to check the subscription (pubsub.subscriptions.get, in \
                 roles/pubsub.viewer); the stream alone says whether notifications flow, and \
                 an outage the Pub/Sub client rides out by retrying is not seen (logged once)"
            );
        }
    }

    /// Routes one message: a refresh for a catalog secret, nothing for anything else.
    fn handle(self: &Arc<Self>, message: &Message) {
        let attribute = |k: &str| message.attributes.get(k).map(String::as_str);
        let (Some(event), Some(secret)) = (attribute("eventType"), attribute("secretId")) else {
            // TOPIC_CONFIGURED (GSM's test message) carries no secretId: not malformed.
            if attribute("eventType") == Some("TOPIC_CONFIGURED") {
                self.metrics.notification("topic_configured", "ignored");
            } else {
                self.malformed("no eventType or secretId attribute");
            }
            return;
        };
        let label = if KNOWN.contains(&event) {
            event.to_ascii_lowercase()
        } else {
            "other".to_owned()
        };
        let Some(idx) = self.slot_of(secret) else {
            self.metrics.notification(&label, "ignored");
            return;
        };
        if event == "SECRET_ROTATE" {
            self.check_rotation(idx, label);
            return;
        }
        if !REFRESHING.contains(&event) {
            self.metrics.notification(&label, "ignored");
            return;
        }
        if event == "SECRET_VERSION_ADD"
            && let Some(version) = attribute("versionId").and_then(|v| self.version_of(idx, v))
        {
            // Read by number: strongly consistent, where `latest` may lag for minutes.
            self.catalog.slot(idx).trigger.announce_version(version);
        }
        if self.pending[idx].swap(true, Ordering::SeqCst) {
            self.metrics.notification(&label, "coalesced");
            return;
        }
        let me = self.clone();
        let revoking = REVOKING.contains(&event);
        self.tracker.spawn(async move {
            let wait = me.jitter.mul_f64(fastrand::f64());
            tokio::select! {
                () = me.cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let slot = me.catalog.slot(idx);
            let was_revoked = slot.health().revoked.is_some();
            me.pending[idx].store(false, Ordering::SeqCst);
            let ticket = slot.trigger.request();
            let finished = ticket
                .wait(tokio::time::Instant::now() + REFRESH_WAIT)
                .await;
            let revoked = !was_revoked && slot.health().revoked.is_some();
            let result = if finished && revoking && revoked {
                "revoked"
            } else {
                "refreshed"
            };
            me.metrics.notification(&label, result);
        });
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
                tokio::select! {
                    () = me.cancel.cancelled() => return,
                    () = tokio::time::sleep(me.schedules.delay()) => {}
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
            self.metrics.notification(&label, "coalesced");
            return;
        }
        let me = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = me.cancel.cancelled() => return,
                () = tokio::time::sleep(me.schedules.delay()) => {}
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
            me.metrics.notification(&label, result);
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
        self.metrics.notification("malformed", "malformed");
        if !self.malformed_logged.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                event = "gsm.notifications",
                why,
                "a malformed notification was acknowledged and dropped (further ones are only counted)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::Error;
    use google_cloud_gax::error::rpc::{Code, Status};

    #[test]
    fn only_a_permission_error_leaves_the_stream_to_judge() {
        let failed = |code| Error::service(Status::default().set_code(code));
        assert!(cannot_check(&failed(Code::PermissionDenied)));
        for down in [Code::NotFound, Code::Unavailable, Code::Unauthenticated] {
            assert!(!cannot_check(&failed(down)), "{down:?}");
        }
    }
}
