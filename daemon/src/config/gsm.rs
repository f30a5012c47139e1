//! `[gsm]` and `[gsm.notifications]`: endpoints, credentials, retries, and the resource names
//! and versions secrets point at.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawGsm, RawNotifications};
use super::values::{bounded_duration, duration_or, positive_duration_or};
use super::{ConfigError, invalid};

/// `[gsm]`.
#[derive(Debug, Clone)]
pub(crate) struct GsmConfig {
    /// The default GCP project.
    pub project: Option<String>,
    /// `project`'s number: GSM's notifications name secrets by project number, and a host
    /// must recognise them before any access has answered (it may start in an outage).
    pub project_number: Option<String>,
    /// The API endpoint (overridable for tests and emulators).
    pub endpoint: String,
    /// The endpoint of regional secrets, `{location}` standing for the secret's location.
    pub regional_endpoint: String,
    /// A service-account key file instead of Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
    /// Send no credentials (emulators and tests only).
    pub anonymous: bool,
    /// How long one HTTP attempt may take.
    pub attempt_timeout: Duration,
    /// How long one fetch may spend across its retries.
    pub retry_budget: Duration,
    /// How many attempts one fetch may make (only UNAVAILABLE-like errors are retried).
    pub max_attempts: u32,
    /// Refuse versions GSM sends without a CRC32C (else they are served and counted).
    pub require_crc32c: bool,
    /// How long a revocation GSM announced (a version disabled or destroyed, the secret
    /// deleted) is checked with backoff before it counts as unconfirmed: GSM's state converges
    /// eventually, and a message alone never revokes.
    pub revocation_confirm_window: Duration,
    /// GSM's Pub/Sub notifications, when a subscription is configured.
    pub notifications: Option<NotificationsConfig>,
}

/// Default `[gsm] revocation_confirm_window`.
pub(crate) const DEFAULT_REVOCATION_CONFIRM_WINDOW: Duration = Duration::from_secs(30);
/// The longest `revocation_confirm_window`: a deleted secret must stop being served in
/// minutes, not hours.
pub(crate) const MAX_REVOCATION_CONFIRM_WINDOW: Duration = Duration::from_secs(15 * 60);

/// `[gsm.notifications]`: a pull subscription on the topic the catalog's secrets publish to.
#[derive(Debug, Clone)]
pub(crate) struct NotificationsConfig {
    /// `projects/P/subscriptions/S`.
    pub subscription: String,
    /// The Pub/Sub endpoint (the emulator's, in tests).
    pub endpoint: String,
    /// The longest random wait between a notification and its refresh (a fleet told at once
    /// does not fetch at once), and the window in which notifications coalesce.
    pub jitter: Duration,
    /// How often the Pub/Sub endpoint is checked to accept a connection (no API call, no
    /// permission): the Pub/Sub client retries a lost connection quietly, so the stream counts
    /// as up only
    /// while it is open and the last check succeeded.
    pub health_check_interval: Duration,
    /// The longest wait between refreshes while the channel is down (default: no shorter
    /// than the refresh interval, so quota is spent only if an operator asks).
    pub fallback_interval: Duration,
    /// The longest random wait before a `SECRET_ROTATE` message is checked against the
    /// secret's rotation schedule (one GetSecret per host and secret: a fleet told at once
    /// stays inside the metadata quota).
    pub rotation_check_spread: Duration,
}

/// Default `[gsm.notifications] health_check_interval`.
pub(crate) const DEFAULT_NOTIFICATION_HEALTH_CHECK: Duration = Duration::from_secs(60);

/// Default `[gsm.notifications] endpoint`.
pub(crate) const DEFAULT_PUBSUB_ENDPOINT: &str = "https://pubsub.googleapis.com";
/// Default `[gsm.notifications] notification_jitter`.
pub(crate) const DEFAULT_NOTIFICATION_JITTER: Duration = Duration::from_secs(1);
/// The longest `notification_jitter` (a rotation must still reach the fleet in seconds).
pub(crate) const MAX_NOTIFICATION_JITTER: Duration = Duration::from_secs(60);

/// Default `[gsm.notifications] rotation_check_spread`.
pub(crate) const DEFAULT_ROTATION_CHECK_SPREAD: Duration = Duration::from_secs(120);
/// The longest `rotation_check_spread` (a rotation request must still reach automation soon).
pub(crate) const MAX_ROTATION_CHECK_SPREAD: Duration = Duration::from_secs(15 * 60);

/// Default `[gsm] endpoint`.
pub(crate) const DEFAULT_GSM_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Default `[gsm] regional_endpoint` (`{location}` is substituted).
pub(crate) const DEFAULT_GSM_REGIONAL_ENDPOINT: &str =
    "https://secretmanager.{location}.rep.googleapis.com";
/// The longest one fetch from a source may take; `[gsm] retry_budget` must fit in it.
pub(crate) const FETCH_DEADLINE: Duration = Duration::from_secs(30);
/// The shortest TTL of a GSM secret without `allow_short_ttl = true` in `[daemon]`.
pub(crate) const MIN_GSM_TTL: Duration = Duration::from_secs(30);
/// The longest GSM version alias (Google's limit).
pub(crate) const MAX_VERSION_ALIAS_LEN: usize = 63;

/// Default `[gsm] attempt_timeout`.
pub(crate) const DEFAULT_GSM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[gsm] retry_budget`.
pub(crate) const DEFAULT_GSM_RETRY_BUDGET: Duration = Duration::from_secs(15);
/// Default `[gsm] max_attempts`.
pub(crate) const DEFAULT_GSM_MAX_ATTEMPTS: u32 = 3;

pub(super) fn validate_gsm(
    g: RawGsm,
    refresh_interval: Duration,
) -> Result<GsmConfig, ConfigError> {
    let endpoint = g.endpoint.unwrap_or_else(|| DEFAULT_GSM_ENDPOINT.into());
    check_endpoint("gsm.endpoint", &endpoint, g.anonymous)?;
    // The default regional endpoint is Google's: with `anonymous` it is refused only if a
    // regional secret would use it (`validate_secret`).
    let regional_endpoint = match g.regional_endpoint {
        Some(url) => {
            check_endpoint("gsm.regional_endpoint", &url, g.anonymous)?;
            url
        }
        None => DEFAULT_GSM_REGIONAL_ENDPOINT.into(),
    };
    if g.anonymous && g.credentials_file.is_some() {
        return Err(invalid(
            "gsm.anonymous and gsm.credentials_file cannot both be set",
        ));
    }
    let max_attempts = g.max_attempts.unwrap_or(DEFAULT_GSM_MAX_ATTEMPTS);
    if !(1..=10).contains(&max_attempts) {
        return Err(invalid("gsm.max_attempts must be between 1 and 10"));
    }
    let attempt_timeout = positive_duration_or(
        "gsm.attempt_timeout",
        g.attempt_timeout,
        DEFAULT_GSM_ATTEMPT_TIMEOUT,
    )?;
    let retry_budget =
        positive_duration_or("gsm.retry_budget", g.retry_budget, DEFAULT_GSM_RETRY_BUDGET)?;
    if retry_budget >= FETCH_DEADLINE {
        return Err(invalid(format!(
            "gsm.retry_budget must be under the {}s a fetch may take",
            FETCH_DEADLINE.as_secs()
        )));
    }
    let revocation_confirm_window = bounded_duration(
        "gsm.revocation_confirm_window",
        g.revocation_confirm_window,
        DEFAULT_REVOCATION_CONFIRM_WINDOW,
        MAX_REVOCATION_CONFIRM_WINDOW,
    )?;
    let notifications = g
        .notifications
        .map(|n| validate_notifications(n, g.anonymous, refresh_interval))
        .transpose()?;
    if let Some(number) = &g.project_number {
        if g.project.is_none() {
            return Err(invalid("gsm.project_number is set but gsm.project is not"));
        }
        if number.is_empty() || number.len() > 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "gsm.project_number = {number:?} must be the project's number (digits, as \
                 `gcloud projects describe PROJECT --format='value(projectNumber)'` prints it)"
            )));
        }
    }
    Ok(GsmConfig {
        project_number: g.project_number,
        project: g.project,
        endpoint,
        regional_endpoint,
        credentials_file: g.credentials_file,
        anonymous: g.anonymous,
        attempt_timeout,
        retry_budget,
        max_attempts,
        require_crc32c: g.require_crc32c,
        revocation_confirm_window,
        notifications,
    })
}

pub(super) fn validate_notifications(
    n: RawNotifications,
    anonymous: bool,
    refresh_interval: Duration,
) -> Result<NotificationsConfig, ConfigError> {
    let parts: Vec<&str> = n.subscription.split('/').collect();
    let well_formed = matches!(parts.as_slice(), ["projects", p, "subscriptions", s]
        if !p.is_empty() && !s.is_empty());
    if !well_formed {
        return Err(invalid(format!(
            "gsm.notifications.subscription = {:?} must look like \
             \"projects/P/subscriptions/S\"",
            n.subscription
        )));
    }
    let endpoint = n.endpoint.unwrap_or_else(|| DEFAULT_PUBSUB_ENDPOINT.into());
    check_endpoint("gsm.notifications.endpoint", &endpoint, anonymous)?;
    let jitter = duration_or(
        "gsm.notifications.notification_jitter",
        n.notification_jitter,
        DEFAULT_NOTIFICATION_JITTER,
    )?;
    if jitter > MAX_NOTIFICATION_JITTER {
        return Err(invalid(format!(
            "gsm.notifications.notification_jitter must be at most {}s",
            MAX_NOTIFICATION_JITTER.as_secs()
        )));
    }
    let rotation_check_spread = duration_or(
        "gsm.notifications.rotation_check_spread",
        n.rotation_check_spread,
        DEFAULT_ROTATION_CHECK_SPREAD,
    )?;
    if rotation_check_spread > MAX_ROTATION_CHECK_SPREAD {
        return Err(invalid(format!(
            "gsm.notifications.rotation_check_spread must be at most {}s",
            MAX_ROTATION_CHECK_SPREAD.as_secs()
        )));
    }
    Ok(NotificationsConfig {
        subscription: n.subscription,
        rotation_check_spread,
        endpoint,
        jitter,
        health_check_interval: positive_duration_or(
            "gsm.notifications.health_check_interval",
            n.health_check_interval,
            DEFAULT_NOTIFICATION_HEALTH_CHECK,
        )?,
        fallback_interval: positive_duration_or(
            "gsm.notifications.notification_fallback_interval",
            n.notification_fallback_interval,
            refresh_interval,
        )?,
    })
}

/// An endpoint is `https://`, or `http://` on loopback only (an emulator or a test fake: a
/// bearer token must never cross a network in clear). Anonymous requests to Google itself are
/// a mistake, refused here rather than answered 401 on every refresh.
pub(super) fn check_endpoint(key: &str, url: &str, anonymous: bool) -> Result<(), ConfigError> {
    let host = if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(invalid(format!(
                "{key} = {url:?}: http:// is allowed on loopback only (an emulator); use https://"
            )));
        }
        host
    } else if let Some(rest) = url.strip_prefix("https://") {
        rest.split(['/', ':']).next().unwrap_or_default()
    } else {
        return Err(invalid(format!(
            "{key} = {url:?} must be an https:// URL (http:// on loopback only)"
        )));
    };
    if anonymous && is_google(host) {
        return Err(invalid(format!(
            "gsm.anonymous = true with {key} = {url:?}: Google refuses anonymous requests; \
             anonymous is for emulators and tests"
        )));
    }
    Ok(())
}

/// Whether `host` is one of Google's API hosts.
pub(super) fn is_google(host: &str) -> bool {
    host == "googleapis.com" || host.ends_with(".googleapis.com")
}

/// Whether `version` is a GSM version number (1, 2, ...), as opposed to `latest` or an alias.
pub(crate) fn is_version_number(version: &str) -> bool {
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && version.parse::<u64>().is_ok_and(|v| v > 0)
}

/// Names GSM reserves, in any case: no version can have them as an alias, so a config naming
/// one (other than `latest` itself) names nothing that could ever be served.
const RESERVED_ALIASES: [&str; 2] = ["latest", "new"];

/// `latest`, a version number (1, 2, ...), or an alias as GSM allows them.
pub(super) fn is_version_or_alias(version: &str) -> bool {
    if version == "latest" || is_version_number(version) {
        return true;
    }
    !RESERVED_ALIASES
        .iter()
        .any(|r| version.eq_ignore_ascii_case(r))
        && version.len() <= MAX_VERSION_ALIAS_LEN
        && version.starts_with(|c: char| c.is_ascii_alphabetic())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

pub(super) fn validate_gcp_resource(name: &str, resource: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = resource.split('/').collect();
    let names = match parts.as_slice() {
        ["projects", p, "secrets", s] => vec![*p, *s],
        ["projects", p, "locations", l, "secrets", s] => vec![*p, *l, *s],
        _ => Vec::new(),
    };
    let ok = !names.is_empty()
        && names.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "secret {name:?}: gcp_secret = {resource:?} must look like \"projects/P/secrets/S\" \
             or \"projects/P/locations/L/secrets/S\""
        )))
    }
}

impl GsmConfig {
    /// `resource` as GSM's notifications name it: with the project number in place of
    /// `[gsm] project`'s id. `None` when it already names a number, or another project.
    pub(crate) fn numbered(&self, resource: &str) -> Option<String> {
        let rest = resource.strip_prefix("projects/")?;
        let (project, tail) = rest.split_once('/')?;
        let number = self.project_number.as_ref()?;
        (self.project.as_deref() == Some(project)).then(|| format!("projects/{number}/{tail}"))
    }
}

/// Whether `resource` names its project by number.
pub(crate) fn names_project_number(resource: &str) -> bool {
    resource
        .strip_prefix("projects/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}
