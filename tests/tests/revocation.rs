//! Withdrawals confirmed before they take effect, against a GSM fake whose state changes show
//! late (as Secret Manager's eventual consistency may): a disabled version announced on the
//! topic is checked by number until GSM refuses it, or reported unconfirmed; a deleted secret
//! is withdrawn only after repeated `NOT_FOUND` answers over `revocation_confirm_window`, never
//! for a 403 or a message alone; revoked names answer `Revoked` to clients that know it and
//! `Unavailable` to older ones.

mod support;

use std::time::{Duration, Instant};

use secretd_client::{Client, ErrorCode};
use secretd_gsm_fake::pubsub_emulator::gsm_event;
use secretd_gsm_fake::{FakeGsm, Fault, VersionState};
use secretd_proto::{ClientHello, Request, Response};
use support::notify::{
    API_KEY, LOADED_MARGIN, Listening, emulator_or_skip, listening_configured, listening_with,
    metric, secret_id,
};
use support::{RawConn, TestEnv, cli, wait_until};

/// The first check of a doubt waits 1 s, and each next one twice as long.
fn checks_until(lag: Duration) -> Duration {
    let mut waited = Duration::ZERO;
    let mut step = Duration::from_secs(1);
    while waited < lag {
        waited += step;
        step *= 2;
    }
    waited
}

/// What a client of protocol 5 (before `Revoked`) is answered for a read of `name`.
fn old_client_error(socket: &std::path::Path, name: &str) -> ErrorCode {
    let mut old = RawConn::connect(socket);
    old.send(&Request::Hello(ClientHello {
        protocol_version: 5,
        ..ClientHello::new("secretd-client (protocol 5)")
    }));
    assert!(matches!(old.recv(), Some(Response::Hello(h)) if h.protocol_version == 5));
    old.send(&Request::Get { name: name.into() });
    match old.recv() {
        Some(Response::Error(e)) => e.code,
        other => panic!("get: {other:?}"),
    }
}

#[test]
fn a_disable_gsm_shows_late_is_confirmed_by_number_within_the_window() {
    let Some(emulator) = emulator_or_skip("revocation: a late disable") else {
        return;
    };
    let lag = Duration::from_secs(4);
    let host = listening_with(
        emulator,
        "gsm-late-disable",
        "host-late-disable",
        b"Omni-Key-v1-LATE-1111!",
        |fake| fake.set_state_lag(lag),
    );
    host.fake
        .set_version_state(API_KEY, 1, VersionState::Disabled);
    let published = Instant::now();
    emulator
        .publish(
            "gsm-late-disable",
            &[gsm_event("SECRET_VERSION_DISABLE", &secret_id(), Some(1))],
        )
        .expect("publish");
    // The refresh the message triggers still sees the version enabled; the checks by number
    // (1 s, 2 s, 4 s, ...) see it refused once the lag has passed. The poll is 5 min away.
    let bound = checks_until(lag) + Duration::from_secs(1) + LOADED_MARGIN;
    let refused = wait_until("the revocation", bound, || {
        host.client.get("trading_api_key").err()
    });
    assert_eq!(refused.code(), Some(ErrorCode::Revoked), "{refused}");
    assert!(
        published.elapsed() >= lag,
        "revoked before GSM showed the disable: {:?}",
        published.elapsed()
    );
    assert!(
        refused.to_string().contains("disabled or destroyed"),
        "{refused}"
    );
    assert_eq!(
        old_client_error(&host.daemon.socket, "trading_api_key"),
        ErrorCode::Unavailable
    );
    assert_eq!(
        metric(
            &host.client,
            "omni_secret_revoked{reason=\"disabled\",secret_type=\"trading_api_key\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &host.client,
            "omni_secret_revocation_unconfirmed{secret_type=\"trading_api_key\"}"
        ),
        0.0
    );
    host.daemon.wait_for_log("omni.alert.version_revoked");
}

#[test]
fn a_disable_gsm_never_confirms_is_reported_and_checked_again() {
    let Some(emulator) = emulator_or_skip("revocation: unconfirmed") else {
        return;
    };
    let Listening {
        fake,
        env: _env,
        daemon,
        client,
    } = listening_configured(
        emulator,
        "gsm-unconfirmed",
        "host-unconfirmed",
        b"Omni-Key-v1-UNCO-1111!",
        |fake| fake.set_state_lag(Duration::from_secs(3600)),
        |conf| conf.gsm_set("revocation_confirm_window", "3s"),
    );
    fake.set_version_state(API_KEY, 1, VersionState::Disabled);
    emulator
        .publish(
            "gsm-unconfirmed",
            &[gsm_event("SECRET_VERSION_DISABLE", &secret_id(), Some(1))],
        )
        .expect("publish");
    let unconfirmed = "omni_secret_revocation_unconfirmed{secret_type=\"trading_api_key\"}";
    wait_until(
        "the unconfirmed revocation",
        Duration::from_secs(30),
        || (metric(&client, unconfirmed) == 1.0).then_some(()),
    );
    daemon.wait_for_log("omni.alert.revocation_unconfirmed");
    // GSM still allows it by number: it stays served.
    assert_eq!(
        client
            .get("trading_api_key")
            .expect("still served")
            .version(),
        "1"
    );

    // GSM catches up; the next refresh (an operator's here, the poll otherwise) revokes.
    fake.set_state_lag(Duration::ZERO);
    let socket = daemon.socket.to_str().expect("utf-8 socket path");
    // The refresh reports the refusal (exit 1): that is the revocation.
    let out = cli(&["refresh", "trading_api_key", "--socket", socket], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("refreshes failed"), "{said}");
    let refused = client.get("trading_api_key").expect_err("revoked");
    assert_eq!(refused.code(), Some(ErrorCode::Revoked), "{refused}");
    assert_eq!(metric(&client, unconfirmed), 0.0);
}

#[test]
fn a_deleted_secret_is_withdrawn_after_repeated_not_found_and_comes_back_when_recreated() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-GONE-1111!");
    let env = TestEnv::new();
    let window = Duration::from_secs(3);
    let config = env
        .conf()
        .daemon("refresh_interval", "1s")
        .daemon("max_stale", "1h")
        .gsm_authenticated(&fake)
        .gsm_set("revocation_confirm_window", "3s")
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");

    // A 403 is not a NOT_FOUND: refused for longer than the window, the value stays.
    fake.set_fault(Some(Fault::PermissionDenied));
    let before = fake.access_count(API_KEY);
    wait_until(
        "a window of refused accesses",
        Duration::from_secs(60),
        || (fake.access_count(API_KEY) >= before + 5).then_some(()),
    );
    std::thread::sleep(window);
    assert_eq!(
        client
            .get("trading_api_key")
            .expect("still served")
            .version(),
        "1"
    );
    fake.set_fault(None);

    // Deleted: withdrawn only once NOT_FOUND has been answered repeatedly over the window.
    fake.delete_secret(API_KEY);
    let deleted = Instant::now();
    let refused = wait_until("the withdrawal", Duration::from_secs(60), || {
        client.get("trading_api_key").err()
    });
    assert!(
        deleted.elapsed() >= window,
        "withdrawn within {:?}",
        deleted.elapsed()
    );
    assert_eq!(refused.code(), Some(ErrorCode::Revoked), "{refused}");
    assert!(refused.to_string().contains("deleted in GSM"), "{refused}");
    assert_eq!(
        old_client_error(&daemon.socket, "trading_api_key"),
        ErrorCode::Unavailable
    );
    assert_eq!(
        metric(
            &client,
            "omni_secret_revoked{reason=\"deleted\",secret_type=\"trading_api_key\"}"
        ),
        1.0
    );
    let row = client
        .status()
        .expect("status")
        .into_iter()
        .find(|r| r.name == "trading_api_key")
        .expect("row");
    assert_eq!(row.last_error_reason.as_deref(), Some("not_found"));
    assert_eq!(row.version, None);
    let revoke = wait_until("the revoke record", Duration::from_secs(10), || {
        client
            .audit_tail(50, Some("trading_api_key"))
            .expect("audit")
            .into_iter()
            .find(|e| e.action == "revoke")
    });
    assert_eq!(revoke.version, "1");
    assert!(revoke.detail.contains("deleted"), "{}", revoke.detail);
    let log = daemon.wait_for_log("omni.alert.version_revoked");
    assert!(!log.contains("Omni-Key-v1-GONE"), "a value reached the log");

    // Re-created: the next refresh serves it (its versions start at 1 again).
    fake.add_version(API_KEY, b"Omni-Key-v1-BACK-2222!");
    let back = wait_until("the re-created secret", Duration::from_secs(30), || {
        client.get("trading_api_key").ok()
    });
    assert_eq!(back.expose(), b"Omni-Key-v1-BACK-2222!");
}

#[test]
fn a_delete_message_alone_withdraws_nothing() {
    let Some(emulator) = emulator_or_skip("revocation: a forged delete") else {
        return;
    };
    let host = listening_with(
        emulator,
        "gsm-forged-delete",
        "host-forged-delete",
        b"Omni-Key-v1-FORG-1111!",
        |_| {},
    );
    let before = host.fake.access_count(API_KEY);
    emulator
        .publish(
            "gsm-forged-delete",
            &[gsm_event("SECRET_DELETE", &secret_id(), None)],
        )
        .expect("publish");
    // The doubt is checked over the default 30 s window: several accesses, all answered.
    wait_until("the deletion checked", Duration::from_secs(30), || {
        (host.fake.access_count(API_KEY) >= before + 3).then_some(())
    });
    let served = host.client.get("trading_api_key").expect("still served");
    assert_eq!(served.version(), "1");
    assert_eq!(
        metric(
            &host.client,
            "omni_secret_revoked{reason=\"deleted\",secret_type=\"trading_api_key\"}"
        ),
        0.0
    );
}
