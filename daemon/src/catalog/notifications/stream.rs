//! One subscription of the notification stream, and how its health is judged.
//!
//! Health comes from what the streaming pull itself reports, never from an extra Pub/Sub call:
//! the role hosts are given (`roles/pubsub.subscriber`) has no `pubsub.subscriptions.get`, and
//! a call refused for want of it says nothing about the stream (and fills the project's audit
//! logs with denials). The Pub/Sub client ends the stream on a permanent error (the
//! subscription is gone, the pull is not allowed) and retries transient ones quietly, for as
//! long as it takes; so beside the stream, the endpoint is checked to accept a connection
//! every `health_check_interval`, which needs no permission and calls no API. A message
//! received is proof the stream works.

use std::time::Duration;

use futures::StreamExt as _;
use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio_util::sync::CancellationToken;

use crate::config::NotificationsConfig;

/// How long one connection check of the Pub/Sub endpoint may take before it counts as failed.
pub(crate) const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new stream must stay open (with the endpoint reachable) before it counts as up:
/// a missing subscription or a refused pull ends it within a round trip, and must not show as
/// up in between.
pub(crate) const STREAM_SETTLE: Duration = Duration::from_secs(2);
/// The ack deadline the stream asks for (the Pub/Sub client extends held messages' leases by
/// this much at a time): a message held by a host that dies without giving it back (a crash,
/// SIGKILL, power loss; or a server that does not honour the nack, as the emulator at times
/// does) is redelivered after at most this long. Pub/Sub's minimum; the client's default is
/// 60 s.
pub(crate) const STREAM_ACK_DEADLINE: Duration = Duration::from_secs(10);
/// How long shutdown waits for the nacks of messages not yet handled to reach Pub/Sub.
pub(crate) const NACK_FLUSH: Duration = Duration::from_secs(3);

/// Why one subscription of the notification stream ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamEnded {
    /// The Pub/Sub client could not be built (Google's reason).
    #[error("cannot create the Pub/Sub client: {0}")]
    Build(#[source] google_cloud_gax::client_builder::Error),
    /// The subscription does not exist: deleted, or expired (Pub/Sub deletes a subscription
    /// after 31 days without a subscriber unless it was created with
    /// `--expiration-period=never`).
    #[error(
        "the subscription does not exist (deleted, or expired after 31 days without a \
         subscriber: create it with --expiration-period=never)"
    )]
    SubscriptionMissing,
    /// The pull was refused: the daemon's identity lacks `pubsub.subscriptions.consume` on
    /// the subscription (`roles/pubsub.subscriber`).
    #[error("the daemon may not pull from the subscription (grant roles/pubsub.subscriber): {0}")]
    PullDenied(#[source] google_cloud_pubsub::Error),
    /// The streaming pull failed for another reason (after the client's own retries).
    #[error("{0}")]
    Pull(#[source] google_cloud_pubsub::Error),
    /// The stream ended without an error.
    #[error("the stream ended")]
    Closed,
}

impl StreamEnded {
    /// Classifies a failed pull.
    fn from_pull(e: google_cloud_pubsub::Error) -> StreamEnded {
        match e.status().map(|s| s.code) {
            Some(Code::NotFound) => StreamEnded::SubscriptionMissing,
            Some(Code::PermissionDenied) => StreamEnded::PullDenied(e),
            _ => StreamEnded::Pull(e),
        }
    }
}

/// What a subscription reports while it is open.
pub(super) trait Sink {
    /// The stream's health as judged now: `None` while up, else why it is not.
    fn health(&self, down: Option<String>);
    /// One message, with the handler to acknowledge it.
    fn message(&self, message: Message, handler: Handler);
    /// Shutdown: give back (nack) every message held and not yet handled.
    fn release(&self);
}

/// Holds one subscription until the stream ends (`Ok(true)` if it delivered anything) or
/// `cancel`; then messages received and not handled yet are nacked (ack deadline 0), waiting
/// up to [`NACK_FLUSH`] for Pub/Sub to take them, so the restarted host or another subscriber
/// gets them at once instead of when their lease runs out.
pub(super) async fn listen(
    cfg: &NotificationsConfig,
    credentials: &Credentials,
    sink: &impl Sink,
    cancel: &CancellationToken,
) -> Result<bool, StreamEnded> {
    let client = Subscriber::builder()
        .with_endpoint(cfg.endpoint.clone())
        .with_credentials(credentials.clone())
        .build()
        .await
        .map_err(StreamEnded::Build)?;
    // As a `Stream`, the pull survives the select below dropping a `next()` half-way (the
    // pending read lives in the stream, not in the dropped future).
    let pull = client
        .subscribe(cfg.subscription.clone())
        .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
        .set_max_lease_extension(STREAM_ACK_DEADLINE)
        .build();
    let shutdown = pull.shutdown_token();
    let mut stream = Box::pin(futures::stream::unfold(pull, |mut pull| async move {
        pull.next().await.map(|item| (item, pull))
    }));
    tracing::info!(
        event = "gsm.notifications",
        subscription = %cfg.subscription,
        "listening for GSM notifications"
    );
    let messages = async {
        let mut delivered = false;
        while let Some(item) = stream.next().await {
            let (message, handler) = item.map_err(StreamEnded::from_pull)?;
            delivered = true;
            sink.health(None);
            sink.message(message, handler);
        }
        Ok(delivered)
    };
    let ended = tokio::select! {
        ended = messages => Some(ended),
        never = watch_endpoint(cfg, sink) => match never {},
        () = cancel.cancelled() => None,
    };
    if let Some(ended) = ended {
        return ended;
    }
    // Shutdown: the held messages are nacked (the client's shutdown nacks every message still
    // leased, ours included), then the stream closes when this returns.
    sink.release();
    if tokio::time::timeout(NACK_FLUSH, shutdown.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            event = "gsm.notifications",
            "messages not handled yet could not be given back in time; Pub/Sub redelivers \
             them when their lease runs out"
        );
    }
    Ok(false)
}

/// Checks the Pub/Sub endpoint every `health_check_interval` once the stream has settled and
/// tells `sink`; logs once per outage. Runs until dropped.
async fn watch_endpoint(cfg: &NotificationsConfig, sink: &impl Sink) -> std::convert::Infallible {
    tokio::time::sleep(STREAM_SETTLE).await;
    let mut tick = tokio::time::interval(cfg.health_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_down = false;
    loop {
        tick.tick().await;
        let down = reachable(&cfg.endpoint).await.err();
        if let Some(e) = &down
            && !was_down
        {
            tracing::warn!(
                event = "gsm.notifications",
                endpoint = %cfg.endpoint,
                error = %e,
                "the Pub/Sub endpoint does not answer; refreshes poll until it does"
            );
        }
        was_down = down.is_some();
        sink.health(down.map(|e| e.to_string()));
    }
}

/// Why the Pub/Sub endpoint is not reachable.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    /// `[gsm.notifications] endpoint` is not a URL with a host.
    #[error("cannot take a host and port from {0}")]
    NoHost(String),
    /// The connection was refused or failed.
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        /// The endpoint's host.
        host: String,
        /// Its port (the scheme's when the URL names none).
        port: u16,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Nothing answered within [`HEALTH_CHECK_TIMEOUT`].
    #[error("{host}:{port} did not accept a connection within {}s", HEALTH_CHECK_TIMEOUT.as_secs())]
    Timeout {
        /// The endpoint's host.
        host: String,
        /// Its port.
        port: u16,
    },
}

/// Whether `endpoint` (`scheme://host[:port]`) accepts a TCP connection within
/// [`HEALTH_CHECK_TIMEOUT`]: the network and the service's front end are there. No request is
/// sent, so no permission is needed.
async fn reachable(endpoint: &str) -> Result<(), Unreachable> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| Unreachable::NoHost(endpoint.to_owned()))?;
    let host = uri
        .host()
        .ok_or_else(|| Unreachable::NoHost(endpoint.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    match tokio::time::timeout(
        HEALTH_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(Unreachable::Connect { host, port, source }),
        Err(_) => Err(Unreachable::Timeout { host, port }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::Error;
    use google_cloud_gax::error::rpc::Status;

    #[test]
    fn a_missing_subscription_and_a_refused_pull_are_told_apart() {
        let failed =
            |code| StreamEnded::from_pull(Error::service(Status::default().set_code(code)));
        assert!(matches!(
            failed(Code::NotFound),
            StreamEnded::SubscriptionMissing
        ));
        assert!(matches!(
            failed(Code::PermissionDenied),
            StreamEnded::PullDenied(_)
        ));
        assert!(matches!(
            failed(Code::Unauthenticated),
            StreamEnded::Pull(_)
        ));
    }

    #[tokio::test]
    async fn an_endpoint_nobody_listens_on_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        reachable(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a listener is reachable");
        drop(listener);
        let e = reachable(&format!("http://127.0.0.1:{port}"))
            .await
            .expect_err("nobody listens");
        assert!(e.to_string().contains("cannot connect to 127.0.0.1"), "{e}");
        let e = reachable("no host").await.expect_err("not a URL");
        assert!(matches!(e, Unreachable::NoHost(_)), "{e}");
    }
}
