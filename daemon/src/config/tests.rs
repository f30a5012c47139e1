use super::daemon::{DEFAULT_REFRESH_INTERVAL, LAST_KNOWN_GOOD_CREDENTIAL};
use super::gsm::{
    DEFAULT_NOTIFICATION_JITTER, DEFAULT_PUBSUB_ENDPOINT, DEFAULT_ROTATION_CHECK_SPREAD,
    MAX_VERSION_ALIAS_LEN,
};
use super::*;

const SPEC_EXAMPLE: &str = r#"
[daemon]
socket = "/run/secretd/secretd.sock"
socket_mode = "0600"
db = "/var/lib/secretd/secretd.redb"
admin_uids = [0]
refresh_interval = "5m"
max_stale = "1h"
metrics_listen = "127.0.0.1:9464"

[gsm]
project = "apex-prod"
endpoint = "https://secretmanager.googleapis.com"

[break_glass]
private_key = "/etc/secretd/break-glass.pem"
max_ttl = "1h"

[[secret]]
name = "trading_api_key"
source = "gsm"
gcp_secret = "projects/apex-prod/secrets/omni-trading-api-key"
version = "latest"
ttl = "5m"
owner = "trading-platform"

[[secret]]
name = "webhook_shared_secret"
source = "file"
path = "/etc/secretd/dev/webhook_shared_secret"

[[secret]]
name = "trading_api_passphrase"
source = "env"
env = "TRADING_API_PASSPHRASE"

[[policy]]
uids = [1001]
gids = [2001]
allow = ["trading_*", "webhook_shared_secret"]
deny = []
"#;

#[test]
fn spec_example_parses() {
    let c = Config::parse(SPEC_EXAMPLE).expect("spec example");
    assert_eq!(c.secrets.len(), 3);
    assert_eq!(c.daemon.socket_mode, 0o600);
    assert_eq!(c.daemon.refresh_interval, Duration::from_secs(300));
    assert_eq!(c.secrets[0].ttl, Duration::from_secs(300));
    assert!(c.policies[0].allow.is_match("trading_api_key"));
    assert!(!c.policies[0].allow.is_match("other"));
    assert_eq!(
        c.break_glass.expect("bg").max_ttl,
        Duration::from_secs(3600)
    );
}

/// The default `/etc/secretd/secretd.toml` the Debian package ships starts the daemon with an
/// empty catalog, on the socket `secretd.socket` listens on.
#[test]
fn the_packaged_default_config_parses_with_an_empty_catalog() {
    let text = include_str!("../../../packaging/debian/secretd.toml");
    let c = Config::parse(text).expect("packaged default config");
    assert!(c.secrets.is_empty() && c.policies.is_empty());
    let unit = include_str!("../../../packaging/secretd.socket");
    let listen = format!("ListenStream={}", c.daemon.socket.display());
    assert!(
        unit.lines().any(|l| l == listen),
        "{listen} missing from secretd.socket"
    );
}

/// The error `text` is refused with, judged with no credentials directory (whatever the
/// environment the tests run in says).
fn err(text: &str) -> String {
    Config::parse_in(text, None)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn gsm_settings_that_would_leak_tokens_or_spend_quota_are_refused() {
    let gsm = |settings: &str| format!("[gsm]\n{settings}\n");
    // Bearer tokens never cross a network in clear: http:// on loopback only.
    let e = err(&gsm("endpoint = \"http://10.0.0.5:8085\""));
    assert!(e.contains("loopback"), "{e}");
    let e = err(&gsm(
        "regional_endpoint = \"http://gsm.internal/{location}\"",
    ));
    assert!(e.contains("gsm.regional_endpoint"), "{e}");
    for ok in [
        "http://127.0.0.1:8085",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        assert!(
            Config::parse(&gsm(&format!("endpoint = \"{ok}\""))).is_ok(),
            "{ok}"
        );
    }
    assert!(err(&gsm("endpoint = \"ftp://x\"")).contains("https://"));
    // Anonymous is for emulators, never Google itself.
    let e = err(&gsm("anonymous = true"));
    assert!(e.contains("anonymous"), "{e}");
    // A retry budget longer than a fetch may take could never be spent.
    let e = err(&gsm("retry_budget = \"45s\""));
    assert!(e.contains("retry_budget"), "{e}");
    // A typo in a TTL must not eat the project's quota.
    let secret = "[[secret]]\nname = \"k\"\nsource = \"gsm\"\n\
                  gcp_secret = \"projects/p/secrets/s\"\nttl = \"5s\"\n";
    let e = err(&format!("{}{secret}", gsm("")));
    assert!(e.contains("allow_short_ttl"), "{e}");
    let allowed = format!("[daemon]\nallow_short_ttl = true\n{}{secret}", gsm(""));
    assert!(Config::parse(&allowed).is_ok());
    // Aliases as GSM allows them.
    let version = |v: &str| {
        Config::parse(&format!(
            "{}[[secret]]\nname = \"k\"\nsource = \"gsm\"\n\
             gcp_secret = \"projects/p/secrets/s\"\nversion = \"{v}\"\n",
            gsm("")
        ))
    };
    for ok in ["latest", "7", "prod", "blue-green_2"] {
        assert!(version(ok).is_ok(), "{ok}");
    }
    for bad in [
        "0",
        "",
        "2prod",
        "prod alias",
        // GSM reserves these, in any case.
        "NEW",
        "new",
        "Latest",
        "LATEST",
        &"a".repeat(MAX_VERSION_ALIAS_LEN + 1),
    ] {
        assert!(version(bad).is_err(), "{bad:?}");
    }
    let regional = Config::parse(&format!(
        "{}[[secret]]\nname = \"k\"\nsource = \"gsm\"\n\
         gcp_secret = \"projects/p/locations/europe-west4/secrets/s\"\n",
        gsm("")
    ));
    assert!(regional.is_ok());
    // An emulator for global secrets does not make Google's regional endpoints anonymous.
    let e = err(&format!(
        "{}[[secret]]\nname = \"k\"\nsource = \"gsm\"\n\
         gcp_secret = \"projects/p/locations/europe-west4/secrets/s\"\n",
        gsm("endpoint = \"http://127.0.0.1:8085\"\nanonymous = true")
    ));
    assert!(e.contains("gsm.regional_endpoint"), "{e}");
}

#[test]
fn notification_settings_are_checked() {
    let conf = |n: &str| format!("[gsm]\n[gsm.notifications]\n{n}\n");
    let ok = Config::parse(&conf("subscription = \"projects/p/subscriptions/host-1\""))
        .expect("minimal");
    let n = ok.gsm.and_then(|g| g.notifications).expect("notifications");
    assert_eq!(n.endpoint, DEFAULT_PUBSUB_ENDPOINT);
    assert_eq!(n.jitter, DEFAULT_NOTIFICATION_JITTER);
    assert_eq!(n.rotation_check_spread, DEFAULT_ROTATION_CHECK_SPREAD);
    assert_eq!(
        n.fallback_interval, DEFAULT_REFRESH_INTERVAL,
        "no extra polling unless asked"
    );
    for (bad, expect) in [
        ("subscription = \"host-1\"", "projects/P/subscriptions/S"),
        (
            "subscription = \"projects/p/subscriptions/s\"\nendpoint = \"http://10.1.1.1:8085\"",
            "loopback",
        ),
        (
            "subscription = \"projects/p/subscriptions/s\"\nnotification_jitter = \"5m\"",
            "at most 60s",
        ),
        (
            "subscription = \"projects/p/subscriptions/s\"\nrotation_check_spread = \"1h\"",
            "rotation_check_spread must be at most 900s",
        ),
        (
            "subscription = \"projects/p/subscriptions/s\"\nhealth_check_interval = \"0s\"",
            "longer than zero",
        ),
        (
            "subscription = \"projects/p/subscriptions/s\"\ntopic = \"t\"",
            "unknown field",
        ),
    ] {
        let e = err(&conf(bad));
        assert!(e.contains(expect), "{bad}: {e}");
    }
}

#[test]
fn zero_intervals_and_absurd_durations_are_refused() {
    for key in ["audit_retention", "rotation_check_interval"] {
        let e = err(&format!("[daemon]\n{key} = \"0s\""));
        assert!(e.contains(key) && e.contains("longer than zero"), "{e}");
    }
    let e = err("[gsm]\nattempt_timeout = \"0s\"");
    assert!(e.contains("gsm.attempt_timeout"), "{e}");
    let e = err("[daemon]\nmax_stale = \"200years\"");
    assert!(e.contains("max_stale") && e.contains("100 years"), "{e}");
    let e = err("[daemon]\nfirst_fetch_wait = \"10s\"");
    assert!(e.contains("first_fetch_wait"), "{e}");
    let e = err("[daemon]\nlast_known_good = \"/var/lib/secretd/lkg\"");
    assert!(e.contains("needs a key"), "{e}");
    // With a credentials directory, the key is the credential in it.
    let dir = std::path::Path::new("/run/credentials/secretd.service");
    let config = Config::parse_in(
        "[daemon]\nlast_known_good = \"/var/lib/secretd/lkg\"",
        Some(dir),
    )
    .expect("a key from the credentials directory");
    let lkg = config.daemon.last_known_good.expect("configured");
    assert_eq!(lkg.key, dir.join(LAST_KNOWN_GOOD_CREDENTIAL));
}

#[test]
fn mistakes_are_named() {
    assert!(err("[daemon]\nsokcet = \"/x\"").contains("sokcet"));
    assert!(err("[daemon]\nsocket_mode = \"999\"").contains("socket_mode"));
    assert!(err("[daemon]\nsocket_mode = \"0044\"").contains("owner"));
    assert!(err("[daemon]\nsocket_mode = \"0666\"").contains("socket_group"));
    assert!(err("[daemon]\nrefresh_interval = \"soon\"").contains("refresh_interval"));
    assert!(err("[daemon]\nsocket = \"relative.sock\"").contains("absolute"));
    let dup = "[[secret]]\nname=\"a\"\nsource=\"env\"\nenv=\"A\"\n[[secret]]\nname=\"a\"\nsource=\"env\"\nenv=\"B\"";
    assert!(err(dup).contains("twice"));
    assert!(
        err("[[secret]]\nname=\"a\"\nsource=\"env\"\npath=\"/x\"\nenv=\"A\"").contains("`path`")
    );
    assert!(err("[[secret]]\nname=\"a\"\nsource=\"file\"").contains("`path`"));
    assert!(err("[[secret]]\nname=\"a\"\nsource=\"vault\"").contains("vault"));
    assert!(err("[[secret]]\nname=\"a b\"\nsource=\"env\"\nenv=\"A\"").contains("a b"));
    assert!(
        err("[[secret]]\nname=\"a\"\nsource=\"gsm\"\ngcp_secret=\"projects/p/secrets/s\"")
            .contains("[gsm]")
    );
    assert!(
        err("[gsm]\n[[secret]]\nname=\"a\"\nsource=\"gsm\"\ngcp_secret=\"p/s\"")
            .contains("projects/P")
    );
    assert!(err("[[policy]]\nallow=[\"*\"]").contains("matches nobody"));
    assert!(err("[[policy]]\nuids=[1]\nallow=[\"[\"]").contains("pattern"));
}

#[test]
fn notifications_need_every_secret_nameable_by_project_number() {
    let conf = |gsm: &str, resource: &str| {
        format!(
            "[gsm]\n{gsm}\n[gsm.notifications]\nsubscription = \"projects/p/subscriptions/h\"\n\
             [[secret]]\nname = \"k\"\nsource = \"gsm\"\ngcp_secret = \"{resource}\"\n"
        )
    };
    let by_id = "projects/apex/secrets/k";
    assert!(err(&conf("", by_id)).contains("project_number"));
    let numbered = "project = \"apex\"\nproject_number = \"123456789012\"";
    let ok = Config::parse(&conf(numbered, by_id)).expect("numbered");
    assert_eq!(
        ok.gsm.expect("gsm").numbered(by_id).as_deref(),
        Some("projects/123456789012/secrets/k")
    );
    assert!(Config::parse(&conf("", "projects/123456789012/secrets/k")).is_ok());
    // Another project by id cannot be numbered from [gsm] project.
    assert!(err(&conf(numbered, "projects/other/secrets/k")).contains("project_number"));
    assert!(err(&conf("project_number = \"1\"", by_id)).contains("gsm.project is not"));
    let letters = "project = \"apex\"\nproject_number = \"apex\"";
    assert!(err(&conf(letters, by_id)).contains("digits"));
}
