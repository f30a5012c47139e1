//! Notifications that must not be lost: a host that starts while GSM fails every access still
//! knows its secrets in messages (`[gsm] project_number`), against Google's Pub/Sub emulator.

mod support;

use std::time::Duration;

use secretd_client::Client;
use secretd_gsm_fake::FakeGsm;
use secretd_gsm_fake::pubsub_emulator::gsm_event;
use support::notify::{
    API_KEY, counted, daemon_config, emulator_or_skip, secret_id, stream_up, wait_counted,
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
