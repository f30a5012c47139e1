//! Notifications that must not be lost, against Google's Pub/Sub emulator: a host that starts
//! while GSM fails every access still knows its secrets in messages (`[gsm] project_number`);
//! a host whose subscription expired says so and polls until it is re-created.

mod support;

use std::time::{Duration, Instant};

use secretd_client::{ChannelState, Client, HealthStatus};
use secretd_gsm_fake::FakeGsm;
use secretd_gsm_fake::grpc_recorder::GrpcRecorder;
use secretd_gsm_fake::pubsub_emulator::{PROJECT, gsm_event};
use support::notify::{
    API_KEY, DEFAULT_JITTER, LOADED_MARGIN, Listening, counted, daemon_config, emulator_or_skip,
    listening_configured, metric, secret_id, stream_up, wait_counted,
};
use support::{TestEnv, wait_until};

#[test]
fn a_host_that_starts_in_an_outage_knows_its_secrets_in_messages() {
    let Some(emulator) = emulator_or_skip("notifications: started in an outage") else {
        return;
    };
    let subscription = emulator
        .topic_and_subscription("gsm-outage-start", "host-outage-start")
        .expect("topic and subscription");
    // GSM fails every access from the start: the daemon never hears the project number in an
    // answer, so it must know it from `[gsm] project_number`.
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-OUT1-1111!");
    fake.set_fault(Some(secretd_gsm_fake::Fault::Unavailable));
    let env = TestEnv::new();
    let daemon = env.start(&daemon_config(&env, &fake, emulator, &subscription));
    let client = Client::connect(&daemon.socket).expect("connect");
    stream_up(&client);
    assert!(
        client.get("trading_api_key").is_err(),
        "served in the outage"
    );
    fake.set_fault(None);
    fake.add_version(API_KEY, b"Omni-Key-v2-OUT2-2222!");
    emulator
        .publish(
            "gsm-outage-start",
            &[gsm_event("SECRET_VERSION_ADD", &secret_id(), Some(2))],
        )
        .expect("publish");
    // Recognised (refreshed), not dropped as another project's secret (ignored).
    wait_counted(&client, "secret_version_add", "refreshed");
    assert_eq!(counted(&client, "secret_version_add", "ignored"), 0.0);
    let served = wait_until("version 2", Duration::from_secs(30), || {
        client
            .get("trading_api_key")
            .ok()
            .filter(|s| s.version() == "2")
    });
    assert_eq!(served.expose(), b"Omni-Key-v2-OUT2-2222!");
}

#[test]
fn a_host_whose_subscription_expired_says_so_polls_and_recovers_when_it_is_recreated() {
    let Some(emulator) = emulator_or_skip("notifications: subscription missing") else {
        return;
    };
    // Every call the daemon makes to Pub/Sub goes through the recorder: least privilege
    // (roles/pubsub.subscriber) allows the streaming pull and its acks, nothing else.
    let recorder = GrpcRecorder::start(emulator.port).expect("grpc recorder");
    let topic = emulator.topic("gsm-expired").expect("topic");
    // The host was off for a month: Pub/Sub deleted its subscription.
    let subscription = format!("projects/{PROJECT}/subscriptions/host-expired");
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-EXP1-1111!");
    let env = TestEnv::new();
    let config = env
        .conf()
        .daemon("refresh_interval", "5m")
        .gsm_authenticated(&fake)
        .gsm_notifications(&subscription, &recorder.endpoint())
        .gsm_notifications_set("notification_fallback_interval", "2s")
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    wait_until(
        "the missing subscription reported",
        Duration::from_secs(30),
        || (metric(&client, "omni_secretd_notification_subscription_missing") == 1.0).then_some(()),
    );
    assert_eq!(metric(&client, "omni_secretd_notification_stream_up"), 0.0);
    let health = client.health().expect("health");
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    let ChannelState::Down(why) = &health.notifications else {
        panic!("notifications not down: {health:?}");
    };
    assert!(
        why.contains("does not exist") && why.contains("--expiration-period=never"),
        "{why}"
    );
    daemon.wait_for_log("the subscription does not exist");
    // Deaf, but not stuck: the host polls at the fallback interval.
    fake.add_version(API_KEY, b"Omni-Key-v2-EXP2-2222!");
    wait_until("version 2 by polling", Duration::from_secs(30), || {
        client
            .get("trading_api_key")
            .ok()
            .filter(|s| s.version() == "2")
    });

    // The operator re-creates it: the daemon resubscribes (backoff at most 30 s) and hears.
    emulator
        .subscription(&topic, "host-expired")
        .expect("subscription again");
    stream_up(&client);
    assert_eq!(
        metric(&client, "omni_secretd_notification_subscription_missing"),
        0.0
    );
    fake.add_version(API_KEY, b"Omni-Key-v3-EXP3-3333!");
    emulator
        .publish(
            "gsm-expired",
            &[gsm_event("SECRET_VERSION_ADD", &secret_id(), Some(3))],
        )
        .expect("publish");
    wait_until("version 3 by notification", Duration::from_secs(30), || {
        client
            .get("trading_api_key")
            .ok()
            .filter(|s| s.version() == "3")
    });
    let calls = recorder.calls();
    assert!(
        calls.iter().any(|c| c.ends_with("/StreamingPull")),
        "no streaming pull went through the recorder: {calls:?}"
    );
    let needs_more = |c: &&String| {
        !c.ends_with("/StreamingPull")
            && !c.ends_with("/Acknowledge")
            && !c.ends_with("/ModifyAckDeadline")
    };
    assert_eq!(
        calls.iter().filter(needs_more).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "calls roles/pubsub.subscriber does not allow"
    );
}

#[test]
fn an_alias_a_notification_says_moved_is_re_read_until_it_agrees() {
    let Some(emulator) = emulator_or_skip("notifications: a lagging alias") else {
        return;
    };
    let Listening {
        fake,
        env: _env,
        daemon: _daemon,
        client,
    } = listening_configured(
        emulator,
        "gsm-alias-lag",
        "host-alias-lag",
        b"Omni-Key-v1-ALIA-1111!",
        |fake| {
            fake.add_version(API_KEY, b"Omni-Key-v2-ALIA-2222!");
            fake.set_alias(API_KEY, "prod", Some(1));
        },
        |conf| conf.with("version", "prod"),
    );

    // The alias moves, and GSM shows it only after the lag: the read the message triggers
    // still answers version 1, and the daemon reads the alias again (1 s, 2 s, 4 s, ...)
    // until it agrees with the message. The poll is 5 minutes away.
    let lag = Duration::from_secs(4);
    fake.set_read_lag(lag);
    fake.set_alias(API_KEY, "prod", Some(2));
    let attributes = gsm_event("SECRET_UPDATE", &secret_id(), None);
    let data = serde_json::json!({"name": secret_id(), "versionAliases": {"prod": "2"}});
    let published = Instant::now();
    emulator
        .publish_with_data("gsm-alias-lag", &[(attributes, data)])
        .expect("publish");
    let bound = lag + lag + DEFAULT_JITTER + LOADED_MARGIN;
    let served = wait_until("the alias caught up", bound, || {
        client
            .get("trading_api_key")
            .ok()
            .filter(|s| s.version() == "2")
    });
    assert_eq!(served.expose(), b"Omni-Key-v2-ALIA-2222!");
    assert!(published.elapsed() >= lag, "served before GSM showed it");
}

#[test]
fn a_message_not_handled_when_the_daemon_stops_is_given_back_not_acknowledged() {
    let Some(emulator) = emulator_or_skip("notifications: nacked at shutdown") else {
        return;
    };
    let subscription = emulator
        .topic_and_subscription("gsm-nack", "host-nack")
        .expect("topic and subscription");
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-NACK-1111!");
    let env = TestEnv::new();
    // The daemon talks to Pub/Sub through the recorder, and waits up to a minute before it
    // handles a message: it is stopped between the publish and the handling.
    let recorder = GrpcRecorder::start(emulator.port).expect("grpc recorder");
    let slow = daemon_config(&env, &fake, emulator, &subscription)
        .replace(&emulator.endpoint(), &recorder.endpoint())
        .replace(
            "notification_jitter = \"200ms\"",
            "notification_jitter = \"60s\"",
        );
    assert!(slow.contains("\"60s\""), "the jitter was not set: {slow}");
    let mut daemon = env.start(&slow);
    let client = Client::connect(&daemon.socket).expect("connect");
    stream_up(&client);
    fake.add_version(API_KEY, b"Omni-Key-v2-NACK-2222!");
    emulator
        .publish(
            "gsm-nack",
            &[gsm_event("SECRET_VERSION_ADD", &secret_id(), Some(2))],
        )
        .expect("publish");
    wait_until("the message held", Duration::from_secs(30), || {
        (metric(&client, "omni_secretd_notifications_held") == 1.0).then_some(())
    });
    drop(client);
    assert!(daemon.stop().success(), "the daemon did not stop cleanly");

    // Given back at shutdown: a nack (ModifyAckDeadline with deadline 0), never an
    // acknowledgement. (Whether the next subscriber then gets it at once is Pub/Sub's part:
    // Google documents it; the emulator redelivers a nacked message only some of the time,
    // after the stream's 10 s deadline, so it is not asserted here.)
    let deadlines: Vec<u64> = recorder
        .requests("/ModifyAckDeadline")
        .iter()
        .filter_map(|frame| ack_deadline(frame))
        .collect();
    assert!(deadlines.contains(&0), "no nack at shutdown: {deadlines:?}");
    assert!(
        deadlines.iter().all(|d| *d == 0 || *d == 10),
        "leases are extended by the 10 s the stream asks for: {deadlines:?}"
    );
    assert!(recorder.requests("/Acknowledge").is_empty());
}

/// The `ack_deadline_seconds` of a `ModifyAckDeadline` request as a gRPC frame (5 bytes of
/// header, then the protobuf): field 3, absent (0) in a nack.
fn ack_deadline(frame: &[u8]) -> Option<u64> {
    fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
        let mut value = 0u64;
        for (i, byte) in b.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((value, &b[i + 1..]));
            }
        }
        None
    }
    let mut rest = frame.get(5..)?;
    let mut deadline = 0;
    while !rest.is_empty() {
        let (key, after) = varint(rest)?;
        rest = after;
        match key & 7 {
            0 => {
                let (value, after) = varint(rest)?;
                if key >> 3 == 3 {
                    deadline = value;
                }
                rest = after;
            }
            2 => {
                let (len, after) = varint(rest)?;
                rest = after.get(usize::try_from(len).ok()?..)?;
            }
            _ => return None,
        }
    }
    Some(deadline)
}
