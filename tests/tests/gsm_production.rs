//! The path a production host takes to GSM: real credentials (metadata-server ADC, a
//! service-account key signing its own JWTs) against a fake that refuses missing and forged
//! tokens; GSM's own semantics (a disabled `latest`, revocation, aliases, regional secrets,
//! 429s). The real daemon binary, the official client library, the in-repo fakes over HTTP.

mod support;

use std::time::{Duration, Instant};

use secretd_client::{ChangeEvent, Client, ErrorCode, RotationStep, Watch};
use secretd_gsm_fake::{
    FakeGsm, FakeMetadata, FakeTokenServer, Fault, Grants, METADATA_ACCOUNT, VersionState,
};
use support::{TestEnv, cli, wait_until};

const API_KEY: &str = "projects/apex-test/secrets/omni-trading-api-key";
const SA_EMAIL: &str = "secretd-reader@apex-test.iam.gserviceaccount.com";

/// A config reading `trading_api_key` from `fake` at `version`, with the given `[gsm]` and
/// `[daemon]` settings on top of the test defaults. `key_file` replaces `anonymous` with a
/// service-account key. Setting values that read as integers or booleans are written as such.
fn config(
    env: &TestEnv,
    fake: &FakeGsm,
    version: &str,
    gsm: &[(&str, &str)],
    daemon: &[(&str, &str)],
) -> String {
    config_with_key(env, fake, version, gsm, daemon, None)
}

fn config_with_key(
    env: &TestEnv,
    fake: &FakeGsm,
    version: &str,
    gsm: &[(&str, &str)],
    daemon: &[(&str, &str)],
    key_file: Option<&str>,
) -> String {
    let typed = |v: &str| -> toml::Value {
        match (v.parse::<i64>(), v.parse::<bool>()) {
            (Ok(n), _) => n.into(),
            (_, Ok(b)) => b.into(),
            _ => v.into(),
        }
    };
    let mut conf = match key_file {
        Some(file) => env
            .conf()
            .gsm(&fake.endpoint())
            .gsm_unset("anonymous")
            .gsm_set("credentials_file", file),
        None => env.conf().gsm_authenticated(fake),
    };
    for (k, v) in gsm {
        conf = conf.gsm_set(k, typed(v));
    }
    for (k, v) in daemon {
        conf = conf.daemon(k, typed(v));
    }
    conf.gsm_secret("trading_api_key", API_KEY)
        .with("version", version)
        .readable_by_me()
        .build()
}

/// What the daemon's environment must not inherit from the machine running the tests: its
/// own Google credentials.
fn clean_google_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("GOOGLE_APPLICATION_CREDENTIALS", String::new()),
        ("HOME", env.path("home").display().to_string()),
        // Every credential type bills its calls here (`x-goog-user-project`).
        ("GOOGLE_CLOUD_QUOTA_PROJECT", QUOTA_PROJECT.into()),
    ]
}

/// The quota project the daemons are given.
const QUOTA_PROJECT: &str = "apex-billing";

/// Asserts that `fake` saw access calls, each billed to [`QUOTA_PROJECT`].
fn assert_billed_to_quota_project(fake: &FakeGsm) {
    let access: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":access"))
        .collect();
    assert!(!access.is_empty(), "no access call");
    assert!(
        access
            .iter()
            .all(|r| r.user_project.as_deref() == Some(QUOTA_PROJECT)),
        "GOOGLE_CLOUD_QUOTA_PROJECT not honoured: {access:?}"
    );
}

fn vars<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Writes a service-account key file with a new RSA pair and returns its path and public key
/// (SPKI PEM).
fn service_account_key(env: &TestEnv, stem: &str, kid: &str) -> (String, String) {
    let (private, public) = support::google::new_key_pair();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "apex-test",
        "private_key_id": kid,
        "private_key": private,
        "client_email": SA_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let file = env.path(&format!("{stem}.json"));
    std::fs::write(&file, key.to_string()).expect("key file");
    (file.display().to_string(), public)
}

/// A fake GSM holding `value` as the API key's version 1, answering 401 without a valid token.
fn requiring_tokens(value: &[u8]) -> FakeGsm {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, value);
    fake.require_auth();
    fake
}

/// The status row of `trading_api_key`.
fn row(client: &Client) -> secretd_client::SecretStatus {
    client.status().expect("status").remove(0)
}

/// Waits for the next change event of `name` on `watch`.
fn next_change(watch: &mut Watch, name: &str) -> secretd_client::SecretChange {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match watch.next_timeout(Duration::from_millis(500)) {
            Some(Ok(Some(ChangeEvent::Changed(c)))) if c.name == name => return c,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("watch failed: {e}"),
            None => panic!("watch ended"),
        }
    }
    panic!("no change of {name} within 20 s");
}

#[test]
fn metadata_server_credentials_read_from_a_gsm_that_requires_tokens() {
    let fake = requiring_tokens(b"Omni-Key-ADC-AAAA-1111!");
    let metadata = FakeMetadata::start(fake.handle()).expect("fake metadata");
    let env = TestEnv::new();
    let conf = env.conf().gsm(&fake.endpoint()).gsm_unset("anonymous");
    let conf = conf
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .build();
    let mut extra = clean_google_env(&env);
    extra.push(("GCE_METADATA_HOST", metadata.host()));
    let daemon = env.start_with_env(&conf, &vars(&extra));
    let client = Client::connect(&daemon.socket).expect("connect");

    let secret = wait_until("the value through ADC", Duration::from_secs(20), || {
        client.get("trading_api_key").ok()
    });
    assert_eq!(secret.expose(), b"Omni-Key-ADC-AAAA-1111!");
    assert_billed_to_quota_project(&fake);
    assert!(metadata.tokens_issued() >= 1);
    assert_eq!(
        metadata.flavorless_requests(),
        0,
        "Metadata-Flavor: Google sent"
    );
    assert_eq!(fake.unauthenticated_count(), 0);

    let log = daemon.wait_for_log("Google credentials work");
    let line = log
        .lines()
        .find(|l| l.contains("gsm.credentials"))
        .expect("the credentials line");
    assert!(line.contains("metadata_server"), "{line}");
    assert!(line.contains(METADATA_ACCOUNT), "{line}");
    assert!(!log.contains("ya29."), "an access token reached the log");
    assert!(!log.contains("Omni-Key-ADC"), "a value reached the log");

    // A metadata server failing with 5xx is an outage (`unavailable`), not bad credentials;
    // the token already issued keeps working, so only a fresh daemon notices.
    metadata.fail_tokens(Some(503));
    let env2 = TestEnv::new();
    let conf2 = env2
        .conf()
        .gsm(&fake.endpoint())
        .gsm_unset("anonymous")
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .build();
    let mut extra2 = clean_google_env(&env2);
    extra2.push(("GCE_METADATA_HOST", metadata.host()));
    let second = env2.start_with_env(&conf2, &vars(&extra2));
    let client2 = Client::connect(&second.socket).expect("connect");
    let reason = wait_until("a failed first fetch", Duration::from_secs(30), || {
        row(&client2).last_error_reason
    });
    assert_eq!(reason, "unavailable");
    metadata.fail_tokens(None);
    wait_until("healed without a restart", Duration::from_secs(30), || {
        client2.get("trading_api_key").ok()
    });
}

#[test]
fn a_service_account_key_signs_its_own_tokens_and_a_forged_key_is_refused() {
    let fake = requiring_tokens(b"Omni-Key-SA-BBBB-2222!");
    let env = TestEnv::new();
    let (key_file, public) = service_account_key(&env, "sa", "kid-real");
    fake.trust_service_account(SA_EMAIL, "kid-real", &public)
        .expect("trust");
    let extra = clean_google_env(&env);
    let conf = config_with_key(&env, &fake, "latest", &[], &[], Some(&key_file));
    let daemon = env.start_with_env(&conf, &vars(&extra));
    let client = Client::connect(&daemon.socket).expect("connect");
    let secret = wait_until("the value with a key", Duration::from_secs(20), || {
        client.get("trading_api_key").ok()
    });
    assert_eq!(secret.expose(), b"Omni-Key-SA-BBBB-2222!");
    assert_billed_to_quota_project(&fake);
    assert_eq!(fake.unauthenticated_count(), 0);
    let log = daemon.wait_for_log("Google credentials work");
    assert!(
        log.contains("service_account") && log.contains(SA_EMAIL),
        "{log}"
    );
    assert!(!log.contains("eyJ"), "a JWT reached the log");
    assert!(!log.contains("PRIVATE KEY"), "the key reached the log");

    // Same kid and account, another key: the signature does not verify.
    let forged_env = TestEnv::new();
    let (forged_file, _) = service_account_key(&forged_env, "forged", "kid-real");
    let conf = config_with_key(&forged_env, &fake, "latest", &[], &[], Some(&forged_file));
    let forged = forged_env.start_with_env(&conf, &vars(&clean_google_env(&forged_env)));
    let client = Client::connect(&forged.socket).expect("connect");
    let reason = wait_until("the refusal", Duration::from_secs(20), || {
        row(&client).last_error_reason
    });
    assert_eq!(reason, "unauthenticated");
    assert!(fake.unauthenticated_count() >= 1);
    let refused = client.get("trading_api_key").expect_err("no value");
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable));
}

#[test]
fn workload_identity_federation_exchanges_a_file_sourced_token_at_the_sts() {
    const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/\
                            workloadIdentityPools/onprem/providers/trading-hosts";
    const SUBJECT: &str = "host-oidc-token-QQQQ-6060";
    let fake = requiring_tokens(b"Omni-Key-WIF-RRRR-7070!");
    let sts = FakeTokenServer::start(
        fake.handle(),
        Grants {
            subject_token: Some((SUBJECT.into(), AUDIENCE.into())),
            ..Grants::default()
        },
    )
    .expect("fake sts");
    let env = TestEnv::new();
    let subject_file = env.path("oidc-token");
    std::fs::write(&subject_file, SUBJECT).expect("subject token");
    let wif = serde_json::json!({
        "type": "external_account",
        "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": sts.sts_url(),
        "credential_source": {"file": subject_file.display().to_string()},
    });
    let wif_file = env.path("wif.json");
    std::fs::write(&wif_file, wif.to_string()).expect("wif file");
    let conf = config_with_key(
        &env,
        &fake,
        "latest",
        &[],
        &[],
        Some(wif_file.to_str().expect("utf8")),
    );
    let daemon = env.start_with_env(&conf, &vars(&clean_google_env(&env)));
    let client = Client::connect(&daemon.socket).expect("connect");
    let secret = wait_until(
        "the value through federation",
        Duration::from_secs(20),
        || client.get("trading_api_key").ok(),
    );
    assert_eq!(secret.expose(), b"Omni-Key-WIF-RRRR-7070!");
    assert_billed_to_quota_project(&fake);
    assert!(sts.count("sts") >= 1);
    assert!(fake.accepted("sts") >= 1, "GSM saw the STS token");
    assert_eq!((sts.count("refused"), fake.unauthenticated_count()), (0, 0));
    let log = daemon.wait_for_log("Google credentials work");
    assert!(log.contains("external_account"), "{log}");
    assert!(!log.contains(SUBJECT), "the subject token reached the log");
    assert!(!log.contains("ya29."), "an access token reached the log");
}

/// Starts a daemon with `credentials` (a credentials file's JSON) against `fake`, and returns
/// it with the value it read.
fn read_with_credentials(
    env: &TestEnv,
    fake: &FakeGsm,
    credentials: &serde_json::Value,
) -> (support::Daemon, Vec<u8>) {
    let file = env.path("credentials.json");
    std::fs::write(&file, credentials.to_string()).expect("credentials file");
    let conf = config_with_key(env, fake, "latest", &[], &[], file.to_str());
    let daemon = env.start_with_env(&conf, &vars(&clean_google_env(env)));
    let client = Client::connect(&daemon.socket).expect("connect");
    let secret = wait_until("the value", Duration::from_secs(20), || {
        client.get("trading_api_key").ok()
    });
    assert_billed_to_quota_project(fake);
    (daemon, secret.expose().to_vec())
}

#[test]
fn a_users_refresh_token_and_an_impersonated_service_account_read_through_their_endpoints() {
    const REFRESH: &str = "1//refresh-token-XXXX-9090";
    const TARGET: &str = "secretd-reader@apex-test.iam.gserviceaccount.com";
    let user = serde_json::json!({"type": "authorized_user", "client_id": "client.apps",
        "client_secret": "client-secret-YYYY", "refresh_token": REFRESH});

    // authorized_user: the refresh token buys a user token, which GSM accepts.
    let fake = requiring_tokens(b"Omni-Key-User-ZZZZ-1212!");
    let tokens = FakeTokenServer::start(
        fake.handle(),
        Grants {
            refresh_token: Some(REFRESH.into()),
            user_tokens_reach_gsm: true,
            ..Grants::default()
        },
    )
    .expect("token server");
    let mut with_uri = user.clone();
    with_uri["token_uri"] = tokens.oauth_url().into();
    let env = TestEnv::new();
    let (daemon, value) = read_with_credentials(&env, &fake, &with_uri);
    assert_eq!(value, b"Omni-Key-User-ZZZZ-1212!");
    assert!(fake.accepted("user") >= 1);
    let log = daemon.wait_for_log("Google credentials work");
    assert!(log.contains("authorized_user"), "{log}");
    for leaked in [REFRESH, "client-secret-YYYY", "ya29."] {
        assert!(!log.contains(leaked), "{leaked} reached the log");
    }

    // impersonated_service_account: the user token only buys the service account's token, and
    // only that one reaches GSM.
    let fake = requiring_tokens(b"Omni-Key-Imp-WWWW-3434!");
    let tokens = FakeTokenServer::start(
        fake.handle(),
        Grants {
            refresh_token: Some(REFRESH.into()),
            impersonate: Some(TARGET.into()),
            user_tokens_reach_gsm: false,
            ..Grants::default()
        },
    )
    .expect("token server");
    let mut source = user.clone();
    source["token_uri"] = tokens.oauth_url().into();
    let impersonated = serde_json::json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": tokens.impersonation_url(TARGET),
        "source_credentials": source,
    });
    let env = TestEnv::new();
    let (daemon, value) = read_with_credentials(&env, &fake, &impersonated);
    assert_eq!(value, b"Omni-Key-Imp-WWWW-3434!");
    assert!(tokens.count("user") >= 1 && tokens.count("iam") >= 1);
    assert_eq!(
        (fake.accepted("iam") >= 1, fake.accepted("user")),
        (true, 0)
    );
    let log = daemon.wait_for_log("Google credentials work");
    assert!(
        log.contains("impersonated") && log.contains(TARGET),
        "{log}"
    );
}

#[test]
fn without_any_credentials_one_clear_line_and_the_rest_is_served() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-None-CCCC-3333!");
    let env = TestEnv::new();
    let conf = env
        .conf()
        .gsm(&fake.endpoint())
        .gsm_unset("anonymous")
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .file_secret("trading_local", b"Omni-Local-DDDD-4444!")
        .readable_by_me()
        .build();
    // A metadata host nothing listens on: not on GCE, no key file, no gcloud login.
    let mut extra = clean_google_env(&env);
    extra.push(("GCE_METADATA_HOST", "127.0.0.1:9".into()));
    let started = Instant::now();
    let daemon = env.start_with_env(&conf, &vars(&extra));
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(
        client.get("trading_local").expect("local").expose(),
        b"Omni-Local-DDDD-4444!"
    );
    wait_until("the no-credentials line", Duration::from_secs(30), || {
        daemon
            .log()
            .contains("no Google credentials: set credentials_file, GOOGLE_APPLICATION_CREDENTIALS, or run on GCE")
            .then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(client.get("trading_local").is_ok(), "still serving");
}

#[test]
fn a_disabled_newest_version_keeps_the_served_one_after_one_check_by_number() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-EEEE-5555!");
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "latest",
        &[],
        &[("refresh_interval", "5m")],
    ));
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");

    // Version 2 is added and disabled at once: `latest` now fails, as GSM documents.
    fake.add_version(API_KEY, b"Omni-Key-v2-FFFF-6666!");
    fake.set_version_state(API_KEY, 2, VersionState::Disabled);
    let before = fake.access_count(API_KEY);
    let outcome = client.refresh(Some("trading_api_key")).expect("refresh");
    let error = outcome[0].error.as_ref().expect("the refresh failed");
    assert!(error.message.contains("DISABLED"), "{}", error.message);
    assert!(
        error.message.contains("still serving version 1"),
        "{}",
        error.message
    );
    assert_eq!(
        fake.access_count(API_KEY) - before,
        2,
        "latest, then version 1 by number"
    );
    let by_number = format!("/v1/{API_KEY}/versions/1:access");
    assert!(fake.requests().iter().any(|r| r.path == by_number));

    let served = client.get("trading_api_key").expect("still served");
    assert_eq!(
        (served.version(), served.expose()),
        ("1", &b"Omni-Key-v1-EEEE-5555!"[..])
    );
    let status = row(&client);
    assert_eq!(status.last_error_reason.as_deref(), Some("disabled"));
    assert_eq!(status.version_alias.as_deref(), Some("latest"));
    assert_eq!(status.gcp_secret.as_deref(), Some(API_KEY));

    // The JSON status names the reason too.
    let socket = daemon.socket.to_str().expect("utf8");
    let out = cli(&["status", "--json", "--socket", socket], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json[0]["lastErrorReason"], "disabled");
    assert_eq!(json[0]["versionAlias"], "latest");
    assert_eq!(json[0]["gcpSecret"], API_KEY);
}

#[test]
fn revoking_the_served_version_stops_it_everywhere_within_one_refresh() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-GGGG-7777!");
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "latest",
        &[],
        &[("refresh_interval", "2s")],
    ));
    let plain = Client::connect(&daemon.socket).expect("connect");
    // Loaded first (the read waits for the first fetch), so the load's own announcement
    // cannot empty the cache below.
    assert_eq!(plain.get("trading_api_key").expect("get").version(), "1");
    let cached = Client::connect(&daemon.socket)
        .expect("connect")
        .with_cache()
        .expect("cache");
    let mut watch = plain.watch(["trading_api_key"]).expect("watch");
    assert_eq!(cached.get("trading_api_key").expect("get").version(), "1");
    assert_eq!(cached.cached_len(), 1);

    // An operator disables the leaked version in GSM.
    fake.set_version_state(API_KEY, 1, VersionState::Disabled);
    let change = next_change(&mut watch, "trading_api_key");
    assert_eq!(change.version, "", "nothing is served any more");
    assert_eq!(change.fingerprint, "");
    let refused = plain.get("trading_api_key").expect_err("revoked");
    assert_eq!(refused.code(), Some(ErrorCode::Revoked));
    assert!(refused.to_string().contains("revoked"), "{refused}");
    // The cached client hears the same event on its own watch, a moment later or sooner.
    let refused = wait_until(
        "the cached client drops it",
        Duration::from_secs(10),
        || cached.get("trading_api_key").err(),
    );
    assert!(refused.to_string().contains("revoked"), "{refused}");
    let status = row(&plain);
    assert_eq!(status.version, None);
    assert_eq!(status.last_error_reason.as_deref(), Some("disabled"));
    let log = daemon.wait_for_log("omni.alert.version_revoked");
    assert!(!log.contains("Omni-Key-v1"), "a value reached the log");
    // The audit writer commits in batches: wait for the record.
    let revoke = wait_until("the revoke record", Duration::from_secs(10), || {
        plain
            .audit_tail(50, Some("trading_api_key"))
            .expect("audit")
            .into_iter()
            .find(|e| e.action == "revoke")
    });
    assert_eq!(revoke.version, "1");
    assert!(
        plain
            .metrics()
            .expect("metrics")
            .contains("omni_secret_revocations_total{secret_type=\"trading_api_key\"} 1")
    );

    // A new version is served again, and announced.
    fake.add_version(API_KEY, b"Omni-Key-v2-HHHH-8888!");
    let change = next_change(&mut watch, "trading_api_key");
    assert_eq!(change.version, "2");
    assert_eq!(cached.get("trading_api_key").expect("get").version(), "2");
}

#[test]
fn a_destroyed_pinned_version_is_revoked_and_survives_no_restart() {
    const OTHER: &str = "projects/apex-test/secrets/omni-client-secret";
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-IIII-9999!");
    fake.add_version(OTHER, b"Omni-Client-v1-PPPP-5050!");
    let env = TestEnv::new();
    let key = env.path("lkg.key");
    std::fs::write(&key, [0x5au8; 32]).expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let daemon_conf = env
        .conf()
        .daemon("refresh_interval", "5m")
        .daemon("first_fetch_wait", "1s")
        .daemon(
            "last_known_good",
            env.path("lkg.sealed").to_str().expect("utf8"),
        )
        .daemon("last_known_good_key", key.to_str().expect("utf8"))
        .gsm_authenticated(&fake)
        .gsm_secret("trading_api_key", API_KEY)
        .with("version", "1")
        .readable_by_me()
        .gsm_secret("trading_client_secret", OTHER)
        .readable_by_me()
        .build();
    let mut daemon = env.start(&daemon_conf);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    assert!(client.get("trading_client_secret").is_ok());
    fake.set_version_state(API_KEY, 1, VersionState::Destroyed);
    let outcome = client.refresh(Some("trading_api_key")).expect("refresh");
    assert!(
        outcome[0]
            .error
            .as_ref()
            .expect("failed")
            .message
            .contains("DESTROYED"),
        "{outcome:?}"
    );
    assert!(client.get("trading_api_key").is_err(), "revoked");
    // The sealed last-known-good copy is rewritten without it, at the latest when the daemon
    // stops (the writer seals a pending change on its way out): a restart during a GSM outage
    // must not bring a revoked key back. Stopped at once, so that last write is what is tested.
    assert!(daemon.stop().success());
    fake.set_fault(Some(Fault::Unavailable));
    let daemon = env.start(&daemon_conf);
    let client = Client::connect(&daemon.socket).expect("connect");
    let other = wait_until(
        "the other secret from the sealed copy",
        Duration::from_secs(20),
        || client.get("trading_client_secret").ok(),
    );
    assert_eq!(other.source(), secretd_client::SourceKind::LastKnownGood);
    assert!(
        client.get("trading_api_key").is_err(),
        "a revoked version came back from the sealed copy"
    );
}

#[test]
fn an_alias_move_reaches_the_daemon_and_status_names_both() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-JJJJ-1010!");
    fake.add_version(API_KEY, b"Omni-Key-v2-KKKK-2020!");
    fake.set_alias(API_KEY, "prod", Some(1));
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "prod",
        &[],
        &[("refresh_interval", "2s")],
    ));
    let client = Client::connect(&daemon.socket).expect("connect");
    let served = client.get("trading_api_key").expect("get");
    assert_eq!(served.version(), "1", "the alias, not the newest version");
    let status = row(&client);
    assert_eq!(status.version.as_deref(), Some("1"));
    assert_eq!(status.version_alias.as_deref(), Some("prod"));

    fake.set_alias(API_KEY, "prod", Some(2));
    wait_until("the alias move", Duration::from_secs(10), || {
        (client.get("trading_api_key").ok()?.version() == "2").then_some(())
    });
    assert_eq!(row(&client).version.as_deref(), Some("2"));

    // A bad alias is a config error, not a GSM call.
    let bad_env = TestEnv::new();
    let mut refused = bad_env.spawn(
        &config(&bad_env, &fake, "prod alias!", &[], &[]),
        "bad.toml",
    );
    let status = refused.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(refused.log().contains("version alias"), "{}", refused.log());
}

#[test]
fn regional_and_global_secrets_mix() {
    let global = FakeGsm::start().expect("global fake");
    let regional = FakeGsm::start_regional("europe-west4").expect("regional fake");
    const REGIONAL: &str = "projects/apex-test/locations/europe-west4/secrets/omni-eu-key";
    global.add_version(API_KEY, b"Omni-Key-Global-LLLL!");
    regional.add_version(REGIONAL, b"Omni-Key-Regional-MMMM!");
    let env = TestEnv::new();
    // The regional endpoint requires the same credentials.
    support::google::service_account(&env, &regional);
    let conf = env
        .conf()
        .gsm_authenticated(&global)
        .gsm_set("regional_endpoint", regional.endpoint().as_str())
        .gsm_secret("trading_api_key", API_KEY)
        .readable_by_me()
        .gsm_secret("trading_eu_key", REGIONAL)
        .readable_by_me()
        // The endpoint above is europe-west4's alone (no `{location}` in it), and a regional
        // endpoint serves its own location only, as Google's do.
        .gsm_secret(
            "trading_us_key",
            "projects/apex-test/locations/us-east1/secrets/omni-us-key",
        )
        .readable_by_me()
        .build();
    let daemon = env.start(&conf);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(
        client.get("trading_api_key").expect("global").expose(),
        b"Omni-Key-Global-LLLL!"
    );
    assert_eq!(
        client.get("trading_eu_key").expect("regional").expose(),
        b"Omni-Key-Regional-MMMM!"
    );
    assert_eq!(
        global.access_count(REGIONAL),
        0,
        "regional secrets go to their region"
    );
    assert_eq!(regional.access_count(API_KEY), 0);
    assert!(regional.access_count(REGIONAL) >= 1);
    let eu = client
        .status()
        .expect("status")
        .into_iter()
        .find(|r| r.name == "trading_eu_key")
        .expect("row");
    assert_eq!(eu.gcp_secret.as_deref(), Some(REGIONAL));
    // Serving does not wait for every first fetch: the us-east1 one fails in its own time.
    let why = wait_until(
        "the us-east1 secret to fail",
        Duration::from_secs(30),
        || {
            client
                .status()
                .ok()?
                .into_iter()
                .find(|r| r.name == "trading_us_key")?
                .last_error
        },
    )
    .message;
    assert!(
        why.contains("serves resources in europe-west4 only"),
        "{why}"
    );
}

#[test]
fn rate_limits_back_off_and_a_secret_that_never_loaded_retries_soon() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-NNNN-3030!");
    fake.set_secret_fault(API_KEY, Some(Fault::RateLimited), None);
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "latest",
        &[],
        &[("refresh_interval", "1s")],
    ));
    let client = Client::connect(&daemon.socket).expect("connect");
    let reason = wait_until("the first 429", Duration::from_secs(10), || {
        row(&client).last_error_reason
    });
    assert_eq!(reason, "rate_limited");
    let after_first = fake.access_count(API_KEY);
    // With a 1 s refresh interval a 429 still waits at least 15 s before the next call.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        fake.access_count(API_KEY),
        after_first,
        "a 429 was retried within seconds"
    );
    drop(daemon);

    // Three transient failures, then GSM answers: a secret that never loaded is served within
    // seconds (waits of about 1, 2 and 4 s), although its TTL is five minutes.
    let (fake, _env, daemon) = never_loaded(b"Omni-Key-v1-OOOO-4040!", 3);
    let client = Client::connect(&daemon.socket).expect("connect");
    wait_until("served after the outage", Duration::from_secs(30), || {
        client.get("trading_api_key").ok()
    });
    assert_eq!(fake.access_count(API_KEY), 4);
}

/// A daemon whose API key (`value`) fails with UNAVAILABLE `failures` times before GSM
/// answers: one HTTP attempt per fetch and a 5 min TTL, so every retry within minutes is the
/// backoff of a secret that never loaded.
fn never_loaded(value: &[u8], failures: u32) -> (FakeGsm, TestEnv, support::Daemon) {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, value);
    fake.set_secret_fault(API_KEY, Some(Fault::Unavailable), Some(failures));
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "latest",
        &[("max_attempts", "1")],
        &[("refresh_interval", "5m")],
    ));
    (fake, env, daemon)
}

#[test]
fn a_secret_that_never_loaded_is_retried_at_least_every_15_seconds() {
    // Six transient failures before GSM answers. Retries of a secret that never loaded wait
    // 1, 2, 4, 8 s (each ±20%), then 15 s at most however many failures came before (the
    // cap, `NEVER_LOADED_RETRY_CAP`, applies after the jitter), although the TTL is 5 min:
    // uncapped, the sixth wait would be 32 s ±20%.
    let (fake, _env, daemon) = never_loaded(b"Omni-Key-v1-QQQQ-1515!", 6);
    // When each access arrived, watched every 20 ms (the fake answers a failure at once).
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 7 && Instant::now() < deadline {
        let n = fake.access_count(API_KEY);
        while seen.len() < n {
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.len(), 7, "six failures and the success within 120 s");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    // The promise (15 s) plus a stated 3 s for a loaded machine and the watch's own steps.
    let bound = Duration::from_secs(15) + Duration::from_secs(3);
    assert!(
        gaps.iter().all(|g| *g <= bound),
        "a retry waited longer than 15 s: {gaps:?}"
    );
    assert!(
        gaps[5] >= Duration::from_secs(10),
        "the last waits are the cap's, not shorter: {gaps:?}"
    );
    let client = Client::connect(&daemon.socket).expect("connect");
    wait_until("served after the outage", Duration::from_secs(10), || {
        client.get("trading_api_key").ok()
    });
    // It had nothing to serve meanwhile, and the alert says so.
    let log = daemon.log();
    assert!(log.contains("omni.alert.cache_failure"), "{log}");
    assert!(log.contains("never loaded"), "{log}");
    assert!(!log.contains("serving the last good value"), "{log}");
}

#[test]
fn require_crc32c_refuses_an_unverified_payload() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-SSSS-8080!");
    fake.set_fault(Some(Fault::NoCrc));
    let env = TestEnv::new();
    let daemon = env.start(&config(
        &env,
        &fake,
        "latest",
        &[("require_crc32c", "true")],
        &[],
    ));
    let client = Client::connect(&daemon.socket).expect("connect");
    let reason = wait_until("the refusal", Duration::from_secs(10), || {
        row(&client).last_error_reason
    });
    assert_eq!(reason, "invalid_payload");
    assert!(client.get("trading_api_key").is_err());
    fake.set_fault(None);
    let outcome = client.refresh(Some("trading_api_key")).expect("refresh");
    assert!(outcome[0].error.is_none(), "{outcome:?}");
}

#[test]
fn a_promote_over_a_version_number_pins_the_validated_version_until_the_config_names_it() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-TTTT-1111!");
    fake.add_version(API_KEY, b"Omni-Key-v2-UUUU-2222!");
    let env = TestEnv::new();
    let pinned_1 = config(&env, &fake, "1", &[], &[]);
    let mut daemon = env.start(&pinned_1);
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");

    let step = |args: &[&str]| {
        let mut all = vec!["rotation"];
        all.extend_from_slice(args);
        all.extend(["--socket", socket.as_str()]);
        let out = cli(&all, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    step(&["begin", "trading_api_key", "--version", "2"]);
    let promoted = step(&["promote", "trading_api_key"]);
    assert!(
        promoted.contains("active version 2") && promoted.contains("unpin"),
        "{promoted}"
    );
    // Returning to the config's number would serve the old key: 2 stays, as the active version.
    assert_eq!(client.get("trading_api_key").expect("get").version(), "2");
    let status = row(&client);
    assert_eq!(
        (
            status.active_version.as_deref(),
            status.version_alias.as_deref()
        ),
        (Some("2"), Some("1"))
    );

    // It survives a restart, with a warning until the config is updated.
    assert!(daemon.stop().success());
    let mut daemon = env.start(&pinned_1);
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "2");
    daemon.wait_for_log("secret.active_version");

    // Unpin: the config's version again.
    step(&["unpin", "trading_api_key"]);
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    assert_eq!(row(&client).active_version, None);

    // Promote again, then the config catches up: the active version is no longer needed.
    step(&["begin", "trading_api_key", "--version", "2"]);
    step(&["promote", "trading_api_key"]);
    assert!(daemon.stop().success());
    let daemon = env.start(&config(&env, &fake, "2", &[], &[]));
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "2");
    let status = row(&client);
    assert_eq!(status.active_version, None);
    assert_eq!(status.version_alias.as_deref(), Some("2"));

    // A live validation is recorded.
    let socket = daemon.socket.to_str().expect("utf8").to_owned();
    let out = cli(
        &[
            "rotation",
            "validate",
            "trading_api_key",
            "--socket",
            &socket,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(row(&client).last_validated_at_ms.is_some());
    let validated = wait_until("the validate record", Duration::from_secs(10), || {
        client
            .audit_tail(50, Some("trading_api_key"))
            .expect("audit")
            .into_iter()
            .find(|e| e.action == "rotation_validate")
    });
    assert_eq!(validated.result, "ok");
}

#[test]
fn a_promote_over_an_alias_waits_until_the_alias_points_at_the_validated_version() {
    let fake = FakeGsm::start().expect("fake gsm");
    fake.add_version(API_KEY, b"Omni-Key-v1-VVVV-1111!");
    fake.add_version(API_KEY, b"Omni-Key-v2-WWWW-2222!");
    fake.set_alias(API_KEY, "prod", Some(1));
    let env = TestEnv::new();
    let daemon = env.start(&config(&env, &fake, "prod", &[], &[]));
    let client = Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    client
        .rotation(
            "trading_api_key",
            RotationStep::Begin {
                version: "2".into(),
            },
        )
        .expect("begin");
    let refused = client
        .rotation("trading_api_key", RotationStep::Promote)
        .expect_err("prod still points at 1");
    let why = refused.to_string();
    assert!(
        why.contains("\"prod\" to version 1") && why.contains("validated version 2"),
        "{why}"
    );
    assert_eq!(
        client.get("trading_api_key").expect("get").version(),
        "2",
        "still validating"
    );

    fake.set_alias(API_KEY, "prod", Some(2));
    let promoted = client
        .rotation("trading_api_key", RotationStep::Promote)
        .expect("promote");
    assert_eq!(promoted.version.as_deref(), Some("2"));
    assert_eq!(promoted.active_version, None, "the alias carries it");
    assert_eq!(promoted.metadata_status.as_deref(), Some("active"));
}
