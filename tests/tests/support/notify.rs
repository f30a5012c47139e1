//! What the notification tests share: Google's Pub/Sub emulator (one per test binary), a
//! daemon listening on a subscription of it with the GSM fake behind, and the metrics that
//! say what became of each notification.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use secretd_client::Client;
use secretd_gsm_fake::pubsub_emulator::{Emulator, emulator_script};
use secretd_gsm_fake::{FakeGsm, project_number};

use super::config::ConfigBuilder;
use super::{TestEnv, can_run, wait_until};

pub(crate) const API_KEY: &str = "projects/apex-test/secrets/omni-trading-api-key";

/// The emulator the tests of this file share (it takes seconds to start), or `None` where
/// the machine has none (outside CI only).
pub(crate) fn shared_emulator() -> Option<&'static Emulator> {
    static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
    EMULATOR
        .get_or_init(|| {
            let emulator = Emulator::start(&emulator_script()?).expect("emulator");
            // A static is never dropped: without this, every test binary left a JVM behind.
            EMULATOR_GROUP.store(emulator.process_group(), Ordering::SeqCst);
            // SAFETY: registers a plain extern "C" function that only calls kill(2).
            unsafe { libc::atexit(kill_shared_emulator) };
            Some(emulator)
        })
        .as_ref()
}

/// The shared emulator's process group, for [`kill_shared_emulator`].
static EMULATOR_GROUP: AtomicI32 = AtomicI32::new(0);

/// Kills the shared emulator when the test binary exits.
extern "C" fn kill_shared_emulator() {
    let group = EMULATOR_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill has no memory effects; the group is the emulator's own.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

pub(crate) fn emulator_or_skip(test: &str) -> Option<&'static Emulator> {
    let emulator = shared_emulator();
    can_run(
        emulator.is_some(),
        test,
        "Google's Pub/Sub emulator (google-cloud-cli-pubsub-emulator) and java",
    )
    .then_some(emulator)
    .flatten()
}

/// The name GSM gives the API key in notifications (with the project number).
pub(crate) fn secret_id() -> String {
    API_KEY.replace("apex-test", &project_number("apex-test"))
}

/// A daemon on `fake` refreshing every 5 minutes, listening on `subscription`.
/// How soon a version announced on the topic is served: the fleet-notification contract (for
/// version-numbered reads; README, "Fleet notifications").
pub(crate) const PROPAGATION_PROMISE: Duration = Duration::from_secs(3);
/// `notification_jitter`'s default: the refresh waits a random time up to this.
pub(crate) const DEFAULT_JITTER: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to a promised time (stated, not tuned).
pub(crate) const LOADED_MARGIN: Duration = Duration::from_secs(6);

pub(crate) fn daemon_config(
    env: &TestEnv,
    fake: &FakeGsm,
    emulator: &Emulator,
    subscription: &str,
) -> String {
    daemon_config_with(env, fake, emulator, subscription, |c| c)
}

/// [`daemon_config`], with `configure` applied last (the API key is the last secret, so
/// `with` sets its keys).
pub(crate) fn daemon_config_with(
    env: &TestEnv,
    fake: &FakeGsm,
    emulator: &Emulator,
    subscription: &str,
    configure: impl FnOnce(ConfigBuilder<'_>) -> ConfigBuilder<'_>,
) -> String {
    let conf = env
        .conf()
        .daemon("refresh_interval", "5m")
        .gsm_authenticated(fake)
        .gsm_notifications(subscription, &emulator.endpoint())
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me();
    configure(conf).build()
}

/// A daemon serving version 1 of the API key, its notification stream up.
pub(crate) struct Listening {
    /// The GSM fake.
    pub(crate) fake: FakeGsm,
    /// The daemon's directory (kept for its lifetime).
    pub(crate) env: TestEnv,
    /// The daemon.
    pub(crate) daemon: super::Daemon,
    /// A client of it.
    pub(crate) client: Client,
}

/// Creates `topic` and `subscription` on `emulator` and starts a daemon listening on it, with
/// `value` as version 1 of the API key.
pub(crate) fn listening(
    emulator: &Emulator,
    topic: &str,
    subscription: &str,
    value: &[u8],
) -> Listening {
    listening_with(emulator, topic, subscription, value, |_| {})
}

/// Like [`listening`], with `prepare` run on the fake before the daemon starts.
pub(crate) fn listening_with(
    emulator: &Emulator,
    topic: &str,
    subscription: &str,
    value: &[u8],
    prepare: impl FnOnce(&FakeGsm),
) -> Listening {
    listening_configured(emulator, topic, subscription, value, prepare, |c| c)
}

/// Like [`listening_with`], with `configure` applied to the daemon's config (see
/// [`daemon_config_with`]).
pub(crate) fn listening_configured(
    emulator: &Emulator,
    topic: &str,
    subscription: &str,
    value: &[u8],
    prepare: impl FnOnce(&FakeGsm),
    configure: impl FnOnce(ConfigBuilder<'_>) -> ConfigBuilder<'_>,
) -> Listening {
    let subscription = emulator
        .topic_and_subscription(topic, subscription)
        .expect("topic and subscription");
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, value);
    prepare(&fake);
    let env = TestEnv::new();
    let daemon = env.start(&daemon_config_with(
        &env,
        &fake,
        emulator,
        &subscription,
        configure,
    ));
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    stream_up(&client);
    Listening {
        fake,
        env,
        daemon,
        client,
    }
}

/// The value of one series in the daemon's metrics, 0 when absent.
pub(crate) fn metric(client: &Client, series: &str) -> f64 {
    client
        .metrics()
        .expect("metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many notifications of `event` ended in `result`.
pub(crate) fn counted(client: &Client, event: &str, result: &str) -> f64 {
    metric(
        client,
        &format!("omni_secret_notifications_total{{event=\"{event}\",result=\"{result}\"}}"),
    )
}

/// Waits until at least one notification of `event` ended in `result`.
pub(crate) fn wait_counted(client: &Client, event: &str, result: &str) {
    wait_until(
        || format!("a {event} notification counted as {result}"),
        Duration::from_secs(30),
        || (counted(client, event, result) >= 1.0).then_some(()),
    );
}

pub(crate) fn stream_up(client: &Client) {
    wait_until("the notification stream", Duration::from_secs(30), || {
        (metric(client, "omni_secretd_notification_stream_up") == 1.0).then_some(())
    });
}
