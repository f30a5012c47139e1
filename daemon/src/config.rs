//! The TOML configuration, parsed and validated into [`Config`].
//!
//! Parsing is strict: unknown keys, keys that belong to another source, duplicate names and
//! unparsable durations are errors with the offending key named, so a typo never silently
//! changes who can read what.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use secretd_proto::{SourceKind, validate_name};
use serde::Deserialize;

/// Connections served at once, unless `daemon.max_connections` says otherwise.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// HTTP connections served at once, unless `daemon.http_max_connections` says otherwise.
pub(crate) const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;
/// Refusals one uid may cause in a minute, unless `daemon.max_denials_per_minute_per_uid` says
/// otherwise.
pub(crate) const DEFAULT_MAX_DENIALS_PER_MINUTE: u64 = 600;
/// The most HTTP connections `daemon.http_max_connections` may allow.
pub(crate) const MAX_HTTP_CONNECTIONS: usize = 4096;
/// Connections one uid may hold at once, unless `daemon.max_connections_per_uid` says
/// otherwise (never more than `max_connections`).
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 512;
/// The hard ceiling on `daemon.max_connections` (each connection holds a file descriptor).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = 65_536;
/// The shortest accepted refresh interval or TTL; anything shorter would hammer the source.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);
/// The largest catalog; the protocol's status frame and the per-connection policy are sized
/// for a small catalog of credentials, not a database.
pub(crate) const MAX_SECRETS: usize = 1024;

/// Default `daemon.refresh_interval`: the TTL of a secret that sets none.
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default `daemon.max_stale`.
pub(crate) const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Default `daemon.audit_retention`: 90 days.
pub(crate) const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default `daemon.rotation_check_interval`.
pub(crate) const DEFAULT_ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Default `daemon.rotation_warning`: 30 days.
pub(crate) const DEFAULT_ROTATION_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default `daemon.first_fetch_wait`: how long a read of a secret that has not loaded yet
/// waits for that secret's first fetch.
pub(crate) const DEFAULT_FIRST_FETCH_WAIT: Duration = Duration::from_secs(2);
/// The longest accepted `daemon.first_fetch_wait` (clients time out after 5 s).
pub(crate) const MAX_FIRST_FETCH_WAIT: Duration = Duration::from_secs(4);
/// The environment variable systemd sets to the directory of a unit's credentials.
pub(crate) const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";
/// Default `daemon.audit_anchor_interval`.
pub(crate) const DEFAULT_AUDIT_ANCHOR_INTERVAL: Duration = Duration::from_secs(300);
/// The credential name `LoadCredential(Encrypted)=` gives the audit chain key.
pub(crate) const AUDIT_KEY_CREDENTIAL: &str = "secretd-audit-key";
/// The credential name `LoadCredential(Encrypted)=` gives the last-known-good key.
pub(crate) const LAST_KNOWN_GOOD_CREDENTIAL: &str = "secretd-lkg-key";

/// Default `break_glass.max_ttl`.
pub(crate) const DEFAULT_BREAK_GLASS_MAX_TTL: Duration = Duration::from_secs(3600);

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("invalid config: {0}")]
    Parse(String),
    /// The TOML parsed but a value is not acceptable.
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    gsm: Option<RawGsm>,
    break_glass: Option<RawBreakGlass>,
    #[serde(default, rename = "secret")]
    secrets: Vec<RawSecret>,
    #[serde(default, rename = "policy")]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    db: Option<PathBuf>,
    admin_uids: Option<Vec<u32>>,
    refresh_interval: Option<String>,
    max_stale: Option<String>,
    metrics_listen: Option<String>,
    metrics_listen_public: Option<bool>,
    http_max_connections: Option<usize>,
    max_denials_per_minute_per_uid: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    audit_retention: Option<String>,
    rotation_check_interval: Option<String>,
    rotation_warning: Option<String>,
    first_fetch_wait: Option<String>,
    audit_key: Option<PathBuf>,
    fingerprint_key: Option<PathBuf>,
    audit_anchor_interval: Option<String>,
    last_known_good: Option<PathBuf>,
    last_known_good_key: Option<PathBuf>,
    #[serde(default)]
    allow_short_ttl: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGsm {
    project: Option<String>,
    endpoint: Option<String>,
    regional_endpoint: Option<String>,
    credentials_file: Option<PathBuf>,
    #[serde(default)]
    anonymous: bool,
    attempt_timeout: Option<String>,
    retry_budget: Option<String>,
    max_attempts: Option<u32>,
    #[serde(default)]
    require_crc32c: bool,
    notifications: Option<RawNotifications>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    subscription: String,
    endpoint: Option<String>,
    notification_jitter: Option<String>,
    health_check_interval: Option<String>,
    notification_fallback_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    private_key: PathBuf,
    max_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    name: String,
    source: String,
    gcp_secret: Option<String>,
    version: Option<String>,
    path: Option<PathBuf>,
    env: Option<String>,
    ttl: Option<String>,
    owner: Option<String>,
    environment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    exe: Option<Vec<String>>,
    exe_sha256: Option<Vec<String>>,
    systemd_unit: Option<Vec<String>>,
    cgroup: Option<Vec<String>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Daemon-wide settings.
    pub daemon: DaemonConfig,
    /// Google Secret Manager settings, if any secret uses it.
    pub gsm: Option<GsmConfig>,
    /// Break-glass settings, if break-glass is enabled.
    pub break_glass: Option<BreakGlassConfig>,
    /// The catalog, in config order.
    pub secrets: Vec<SecretConfig>,
    /// Who may read what.
    pub policies: Vec<PolicyConfig>,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConfig {
    /// The socket path.
    pub socket: PathBuf,
    /// The socket file's permission bits.
    pub socket_mode: u32,
    /// The group the socket file is given, when a group of bots should connect.
    pub socket_group: Option<GroupRef>,
    /// The redb database path.
    pub db: PathBuf,
    /// Uids allowed admin operations.
    pub admin_uids: Vec<u32>,
    /// Default TTL of cached values (the refresh period).
    pub refresh_interval: Duration,
    /// Whether GSM secrets may have a TTL under [`MIN_GSM_TTL`] (a typo must not spend a
    /// project's quota).
    pub allow_short_ttl: bool,
    /// How long past expiry a value is still served while its source fails.
    pub max_stale: Duration,
    /// Where the HTTP metrics listener binds, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// HTTP connections served at once on `metrics_listen`.
    pub http_max_connections: usize,
    /// Refusals one uid may cause in a minute before its connections are closed.
    pub max_denials_per_minute_per_uid: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// Whether `max_connections` was set in the file (then it is never lowered to fit the
    /// file-descriptor limit: the daemon refuses to start instead).
    pub max_connections_explicit: bool,
    /// Connections one uid may hold at once.
    pub max_connections_per_uid: usize,
    /// How long audit records are kept.
    pub audit_retention: Duration,
    /// How often rotation due dates are checked.
    pub rotation_check_interval: Duration,
    /// How long before its due date a secret logs `secret.near_expiry`.
    pub rotation_warning: Duration,
    /// How long a read of a never-loaded secret waits for that secret's first fetch.
    pub first_fetch_wait: Duration,
    /// The audit chain's key file, when set (else systemd's credential, else a file beside the
    /// database).
    pub audit_key: Option<PathBuf>,
    /// A fingerprint key file shared by a fleet, so fingerprints compare across hosts (else a
    /// per-host key beside the database, created on first start).
    pub fingerprint_key: Option<PathBuf>,
    /// How often the chain's head is logged as `audit.anchor`.
    pub audit_anchor_interval: Duration,
    /// The sealed last-known-good file and its key, when enabled.
    pub last_known_good: Option<LastKnownGoodConfig>,
}

/// `[daemon] last_known_good` and where its key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastKnownGoodConfig {
    /// The sealed file.
    pub path: PathBuf,
    /// The 32-byte key file: `last_known_good_key`, or systemd's credential.
    pub key: PathBuf,
}

/// A group given by name or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupRef {
    /// A numeric gid.
    Id(u32),
    /// A group name, resolved at startup.
    Name(String),
}

/// `[gsm]`.
#[derive(Debug, Clone)]
pub(crate) struct GsmConfig {
    /// The default GCP project.
    pub project: Option<String>,
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
    /// GSM's Pub/Sub notifications, when a subscription is configured.
    pub notifications: Option<NotificationsConfig>,
}

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
    /// How often the subscription is checked (`GetSubscription`): the stream counts as up only
    /// while it is open and the last check succeeded.
    pub health_check_interval: Duration,
    /// The longest wait between refreshes while the channel is down (default: no shorter
    /// than the refresh interval, so quota is spent only if an operator asks).
    pub fallback_interval: Duration,
}

/// Default `[gsm.notifications] health_check_interval`.
pub(crate) const DEFAULT_NOTIFICATION_HEALTH_CHECK: Duration = Duration::from_secs(60);

/// Default `[gsm.notifications] endpoint`.
pub(crate) const DEFAULT_PUBSUB_ENDPOINT: &str = "https://pubsub.googleapis.com";
/// Default `[gsm.notifications] notification_jitter`.
pub(crate) const DEFAULT_NOTIFICATION_JITTER: Duration = Duration::from_secs(1);
/// The longest `notification_jitter` (a rotation must still reach the fleet in seconds).
pub(crate) const MAX_NOTIFICATION_JITTER: Duration = Duration::from_secs(60);

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

/// `[break_glass]`.
#[derive(Debug, Clone)]
pub(crate) struct BreakGlassConfig {
    /// The RSA private key that opens break-glass envelopes.
    pub private_key: PathBuf,
    /// The longest TTL an override may ask for.
    pub max_ttl: Duration,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceConfig {
    /// A GSM secret and version alias.
    Gsm {
        /// `projects/P/secrets/S` or `projects/P/locations/L/secrets/S`.
        resource: String,
        /// `latest`, a version alias (`prod`), or a version number.
        version: String,
    },
    /// An environment variable of the daemon.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A file whose whole content is the value.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl SourceConfig {
    /// The kind of source.
    pub(crate) fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Gsm { .. } => SourceKind::Gsm,
            SourceConfig::Env { .. } => SourceKind::Env,
            SourceConfig::File { .. } => SourceKind::File,
        }
    }
}

/// One `[[secret]]`.
#[derive(Debug, Clone)]
pub(crate) struct SecretConfig {
    /// The catalog name clients ask for.
    pub name: String,
    /// Where the value comes from.
    pub source: SourceConfig,
    /// How long a fetched value is fresh.
    pub ttl: Duration,
    /// The owning team, for metadata.
    pub owner: Option<String>,
    /// The environment label (`prod`, `staging`), for metadata.
    pub environment: Option<String>,
}

/// One `[[policy]]`, globs compiled.
#[derive(Debug, Clone)]
pub(crate) struct PolicyConfig {
    /// Peers whose uid is listed match.
    pub uids: Vec<u32>,
    /// Peers whose primary or supplementary gid is listed match.
    pub gids: Vec<u32>,
    /// Names a matching peer may read.
    pub allow: GlobSet,
    /// Names a matching peer may not read, whatever any policy allows.
    pub deny: GlobSet,
    /// Which programs the policy is for; a peer matches only if every selector present
    /// matches what was attested of it.
    pub selectors: Selectors,
}

/// Workload selectors of a policy (all optional; all present must match).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    /// Executable paths (exact or globs, `/` only matched literally).
    pub exe: Option<GlobSet>,
    /// Hex SHA-256 of the executable's content (lower case).
    pub exe_sha256: Option<Vec<String>>,
    /// systemd unit names (globs).
    pub systemd_unit: Option<GlobSet>,
    /// cgroup paths (globs, `/` only matched literally).
    pub cgroup: Option<GlobSet>,
}

impl Selectors {
    /// Whether any selector needs the executable's hash.
    pub(crate) fn needs_hash(&self) -> bool {
        self.exe_sha256.is_some()
    }
}

/// The longest duration any key accepts: far beyond any sane setting, and far below what would
/// overflow the clock arithmetic it feeds.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a humane duration (`"5m"`, `"25m"`, `"12h"`), naming the key on error.
pub(crate) fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        invalid(format!(
            "{key} = {text:?} is not a duration like \"5m\": {e}"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(invalid(format!(
            "{key} = {text:?} is longer than 100 years"
        )));
    }
    Ok(d)
}

/// The duration at `key`, or `default` when the key is absent: the one place config turns an
/// optional humane duration into a value.
fn duration_or(
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        Some(t) => parse_duration(key, &t),
        None => Ok(default),
    }
}

/// [`duration_or`] for keys where zero makes no sense (an interval, a timeout, a period).
fn positive_duration_or(
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration_or(key, text, default)?;
    if d.is_zero() {
        return Err(invalid(format!("{key} must be longer than zero")));
    }
    Ok(d)
}

fn parse_mode(text: &str) -> Result<u32, ConfigError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8).map_err(|_| {
        invalid(format!(
            "daemon.socket_mode = {text:?} is not an octal mode"
        ))
    })?;
    if mode & !0o777 != 0 {
        return Err(invalid(format!(
            "daemon.socket_mode = {text:?} has bits outside 0777"
        )));
    }
    if mode & 0o600 != 0o600 {
        return Err(invalid(format!(
            "daemon.socket_mode = {text:?} must let the owner read and write"
        )));
    }
    if mode & 0o002 != 0 {
        return Err(invalid(format!(
            "daemon.socket_mode = {text:?} lets every local user connect; grant a group \
             instead (socket_mode = \"0660\" with socket_group)"
        )));
    }
    Ok(mode)
}

fn compile_globs(key: &str, patterns: &[String]) -> Result<GlobSet, ConfigError> {
    compile_globs_with(key, patterns, false)
}

/// Compiles `patterns`; with `paths`, `*` and `?` never match a `/`.
fn compile_globs_with(key: &str, patterns: &[String], paths: bool) -> Result<GlobSet, ConfigError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(paths)
            .build()
            .map_err(|e| invalid(format!("policy {key} pattern {p:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| invalid(format!("policy {key}: {e}")))
}

impl Config {
    /// Reads and validates a config file.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let daemon = validate_daemon(raw.daemon)?;
        let gsm = raw
            .gsm
            .map(|g| validate_gsm(g, daemon.refresh_interval))
            .transpose()?;
        let break_glass = raw
            .break_glass
            .map(|b| -> Result<BreakGlassConfig, ConfigError> {
                Ok(BreakGlassConfig {
                    private_key: b.private_key,
                    max_ttl: positive_duration_or(
                        "break_glass.max_ttl",
                        b.max_ttl,
                        DEFAULT_BREAK_GLASS_MAX_TTL,
                    )?,
                })
            })
            .transpose()?;
        if raw.secrets.len() > MAX_SECRETS {
            return Err(invalid(format!(
                "{} secrets configured; at most {MAX_SECRETS} are supported",
                raw.secrets.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut secrets = Vec::with_capacity(raw.secrets.len());
        for s in raw.secrets {
            let secret = validate_secret(s, &daemon, gsm.as_ref())?;
            if !seen.insert(secret.name.clone()) {
                return Err(invalid(format!(
                    "secret {:?} is configured twice",
                    secret.name
                )));
            }
            secrets.push(secret);
        }
        let policies = raw
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| validate_policy(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            daemon,
            gsm,
            break_glass,
            secrets,
            policies,
        })
    }
}

fn validate_daemon(raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
    let socket = raw
        .socket
        .unwrap_or_else(|| PathBuf::from(secretd_proto::paths::DEFAULT_SOCKET));
    if !socket.is_absolute() {
        return Err(invalid(format!(
            "daemon.socket = {:?} must be an absolute path",
            socket.display()
        )));
    }
    let refresh_interval = duration_or(
        "daemon.refresh_interval",
        raw.refresh_interval,
        DEFAULT_REFRESH_INTERVAL,
    )?;
    if refresh_interval < MIN_TTL {
        return Err(invalid("daemon.refresh_interval must be at least 1s"));
    }
    let first_fetch_wait = duration_or(
        "daemon.first_fetch_wait",
        raw.first_fetch_wait,
        DEFAULT_FIRST_FETCH_WAIT,
    )?;
    if first_fetch_wait > MAX_FIRST_FETCH_WAIT {
        return Err(invalid(format!(
            "daemon.first_fetch_wait must be at most {}s, under the clients' 5 s timeout",
            MAX_FIRST_FETCH_WAIT.as_secs()
        )));
    }
    let audit_anchor_interval = positive_duration_or(
        "daemon.audit_anchor_interval",
        raw.audit_anchor_interval,
        DEFAULT_AUDIT_ANCHOR_INTERVAL,
    )?;
    let audit_key = raw.audit_key;
    let fingerprint_key = raw.fingerprint_key;
    for (key, path) in [
        ("daemon.audit_key", &audit_key),
        ("daemon.fingerprint_key", &fingerprint_key),
    ] {
        if let Some(k) = path
            && !k.is_absolute()
        {
            return Err(invalid(format!(
                "{key} = {:?} must be an absolute path",
                k.display()
            )));
        }
    }
    let last_known_good = match (raw.last_known_good, raw.last_known_good_key) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(invalid(
                "daemon.last_known_good_key is set but daemon.last_known_good is not",
            ));
        }
        (Some(path), key) => {
            let key = key.or_else(|| {
                std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(d).join(LAST_KNOWN_GOOD_CREDENTIAL))
            });
            let Some(key) = key else {
                return Err(invalid(format!(
                    "daemon.last_known_good needs a key: set daemon.last_known_good_key, or run \
                     under systemd with LoadCredentialEncrypted={LAST_KNOWN_GOOD_CREDENTIAL} \
                     (a key beside the file would protect nothing)"
                )));
            };
            for (k, p) in [("last_known_good", &path), ("last_known_good_key", &key)] {
                if !p.is_absolute() {
                    return Err(invalid(format!(
                        "daemon.{k} = {:?} must be an absolute path",
                        p.display()
                    )));
                }
            }
            Some(LastKnownGoodConfig { path, key })
        }
    };
    let metrics_listen: Option<SocketAddr> = raw
        .metrics_listen
        .map(|a| {
            a.parse().map_err(|_| {
                invalid(format!(
                    "daemon.metrics_listen = {a:?} is not an address like \"127.0.0.1:9464\""
                ))
            })
        })
        .transpose()?;
    if let Some(addr) = metrics_listen
        && !addr.ip().is_loopback()
        && raw.metrics_listen_public != Some(true)
    {
        return Err(invalid(format!(
            "daemon.metrics_listen = \"{addr}\" is not on loopback; /metrics and /status name \
             every secret, version and fingerprint: set metrics_listen_public = true to serve \
             them beyond this host"
        )));
    }
    let http_max_connections = raw
        .http_max_connections
        .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
    if http_max_connections == 0 || http_max_connections > MAX_HTTP_CONNECTIONS {
        return Err(invalid(format!(
            "daemon.http_max_connections must be between 1 and {MAX_HTTP_CONNECTIONS}"
        )));
    }
    let max_denials_per_minute_per_uid = raw
        .max_denials_per_minute_per_uid
        .unwrap_or(DEFAULT_MAX_DENIALS_PER_MINUTE);
    if max_denials_per_minute_per_uid == 0 {
        return Err(invalid(
            "daemon.max_denials_per_minute_per_uid must be at least 1",
        ));
    }
    let max_connections_explicit = raw.max_connections.is_some();
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 || max_connections > MAX_CONNECTIONS_LIMIT {
        return Err(invalid(format!(
            "daemon.max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}"
        )));
    }
    let max_connections_per_uid = match raw.max_connections_per_uid {
        Some(n) if n == 0 || n > max_connections => {
            return Err(invalid(format!(
                "daemon.max_connections_per_uid must be between 1 and max_connections ({max_connections})"
            )));
        }
        Some(n) => n,
        None => DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections),
    };
    Ok(DaemonConfig {
        socket,
        socket_mode: match raw.socket_mode {
            Some(m) => parse_mode(&m)?,
            None => 0o600,
        },
        socket_group: raw.socket_group.map(|g| match g.parse::<u32>() {
            Ok(id) => GroupRef::Id(id),
            Err(_) => GroupRef::Name(g),
        }),
        db: raw
            .db
            .unwrap_or_else(|| PathBuf::from("/var/lib/secretd/secretd.redb")),
        admin_uids: raw.admin_uids.unwrap_or_else(|| vec![0]),
        refresh_interval,
        allow_short_ttl: raw.allow_short_ttl,
        max_stale: duration_or("daemon.max_stale", raw.max_stale, DEFAULT_MAX_STALE)?,
        metrics_listen,
        http_max_connections,
        max_denials_per_minute_per_uid,
        max_connections,
        max_connections_explicit,
        max_connections_per_uid,
        audit_retention: positive_duration_or(
            "daemon.audit_retention",
            raw.audit_retention,
            DEFAULT_AUDIT_RETENTION,
        )?,
        rotation_check_interval: positive_duration_or(
            "daemon.rotation_check_interval",
            raw.rotation_check_interval,
            DEFAULT_ROTATION_CHECK_INTERVAL,
        )?,
        rotation_warning: duration_or(
            "daemon.rotation_warning",
            raw.rotation_warning,
            DEFAULT_ROTATION_WARNING,
        )?,
        first_fetch_wait,
        audit_key,
        fingerprint_key,
        audit_anchor_interval,
        last_known_good,
    })
}

fn validate_gsm(g: RawGsm, refresh_interval: Duration) -> Result<GsmConfig, ConfigError> {
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
    let notifications = g
        .notifications
        .map(|n| validate_notifications(n, g.anonymous, refresh_interval))
        .transpose()?;
    Ok(GsmConfig {
        project: g.project,
        endpoint,
        regional_endpoint,
        credentials_file: g.credentials_file,
        anonymous: g.anonymous,
        attempt_timeout,
        retry_budget,
        max_attempts,
        require_crc32c: g.require_crc32c,
        notifications,
    })
}

fn validate_notifications(
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
    Ok(NotificationsConfig {
        subscription: n.subscription,
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
fn check_endpoint(key: &str, url: &str, anonymous: bool) -> Result<(), ConfigError> {
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

fn validate_secret(
    s: RawSecret,
    daemon: &DaemonConfig,
    gsm: Option<&GsmConfig>,
) -> Result<SecretConfig, ConfigError> {
    validate_name(&s.name).map_err(|e| invalid(format!("secret {:?}: {e}", s.name)))?;
    let name = s.name;
    let foreign = |key: &str, present: bool| -> Result<(), ConfigError> {
        if present {
            Err(invalid(format!(
                "secret {name:?}: `{key}` does not apply to source {:?}",
                s.source
            )))
        } else {
            Ok(())
        }
    };
    let required = |key: &str| {
        invalid(format!(
            "secret {name:?}: source {:?} needs `{key}`",
            s.source
        ))
    };
    let source = match s.source.as_str() {
        "gsm" => {
            foreign("path", s.path.is_some())?;
            foreign("env", s.env.is_some())?;
            let Some(gsm) = gsm else {
                return Err(invalid(format!(
                    "secret {name:?} uses source \"gsm\" but there is no [gsm] section"
                )));
            };
            let short = s.gcp_secret.ok_or_else(|| required("gcp_secret"))?;
            // A bare secret id is taken to live in [gsm] project.
            let resource = match (&gsm.project, short.contains('/')) {
                (Some(project), false) => format!("projects/{project}/secrets/{short}"),
                _ => short,
            };
            validate_gcp_resource(&name, &resource)?;
            if gsm.anonymous && resource.contains("/locations/") {
                check_endpoint("gsm.regional_endpoint", &gsm.regional_endpoint, true)?;
            }
            let version = s.version.unwrap_or_else(|| "latest".into());
            if !is_version_or_alias(&version) {
                return Err(invalid(format!(
                    "secret {name:?}: version = {version:?} must be \"latest\", a version \
                     number, or a GSM version alias (a letter, then letters, digits, - or _)"
                )));
            }
            SourceConfig::Gsm { resource, version }
        }
        "env" => {
            foreign("gcp_secret", s.gcp_secret.is_some())?;
            foreign("version", s.version.is_some())?;
            foreign("path", s.path.is_some())?;
            let var = s.env.ok_or_else(|| required("env"))?;
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(invalid(format!(
                    "secret {name:?}: env = {var:?} is not a variable name"
                )));
            }
            SourceConfig::Env { var }
        }
        "file" => {
            foreign("gcp_secret", s.gcp_secret.is_some())?;
            foreign("version", s.version.is_some())?;
            foreign("env", s.env.is_some())?;
            let path = s.path.ok_or_else(|| required("path"))?;
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "secret {name:?}: path {:?} must be absolute",
                    path.display()
                )));
            }
            SourceConfig::File { path }
        }
        other => {
            return Err(invalid(format!(
                "secret {name:?}: source = {other:?} is not one of \"gsm\", \"env\", \"file\""
            )));
        }
    };
    let ttl = duration_or(
        &format!("secret {name:?} ttl"),
        s.ttl,
        daemon.refresh_interval,
    )?;
    if ttl < MIN_TTL {
        return Err(invalid(format!("secret {name:?}: ttl must be at least 1s")));
    }
    if matches!(source, SourceConfig::Gsm { .. }) && ttl < MIN_GSM_TTL && !daemon.allow_short_ttl {
        return Err(invalid(format!(
            "secret {name:?}: a GSM TTL of {} spends the project's access quota fast; at least \
             {}s, or set allow_short_ttl = true in [daemon]",
            humantime::format_duration(ttl),
            MIN_GSM_TTL.as_secs()
        )));
    }
    Ok(SecretConfig {
        name,
        source,
        ttl,
        owner: s.owner,
        environment: s.environment,
    })
}

/// Whether `host` is one of Google's API hosts.
fn is_google(host: &str) -> bool {
    host == "googleapis.com" || host.ends_with(".googleapis.com")
}

/// Whether `version` is a GSM version number (1, 2, ...), as opposed to `latest` or an alias.
pub(crate) fn is_version_number(version: &str) -> bool {
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && version.parse::<u64>().is_ok_and(|v| v > 0)
}

/// `latest`, a version number (1, 2, ...), or an alias as GSM allows them.
fn is_version_or_alias(version: &str) -> bool {
    if version == "latest" || is_version_number(version) {
        return true;
    }
    version.len() <= MAX_VERSION_ALIAS_LEN
        && version.starts_with(|c: char| c.is_ascii_alphabetic())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn validate_gcp_resource(name: &str, resource: &str) -> Result<(), ConfigError> {
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

fn validate_policy(index: usize, p: RawPolicy) -> Result<PolicyConfig, ConfigError> {
    let key = format!("#{}", index + 1);
    if p.uids.is_empty() && p.gids.is_empty() {
        return Err(invalid(format!(
            "policy {key} lists no uids and no gids, so it matches nobody"
        )));
    }
    if p.allow.is_empty() && p.deny.is_empty() {
        return Err(invalid(format!(
            "policy {key} has neither allow nor deny patterns"
        )));
    }
    let non_empty = |name: &str, v: &Option<Vec<String>>| -> Result<(), ConfigError> {
        if v.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(format!(
                "policy {key} {name} = [] matches no program; remove the key to match any"
            )));
        }
        Ok(())
    };
    non_empty("exe", &p.exe)?;
    non_empty("exe_sha256", &p.exe_sha256)?;
    non_empty("systemd_unit", &p.systemd_unit)?;
    non_empty("cgroup", &p.cgroup)?;
    for path in p.exe.iter().flatten() {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "policy {key} exe {path:?} must be an absolute path"
            )));
        }
    }
    for path in p.cgroup.iter().flatten() {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "policy {key} cgroup {path:?} must start with / (like \"/system.slice/mm.service\")"
            )));
        }
    }
    let exe_sha256 = p
        .exe_sha256
        .map(|hashes| {
            hashes
                .into_iter()
                .map(|h| {
                    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(h.to_ascii_lowercase())
                    } else {
                        Err(invalid(format!(
                            "policy {key} exe_sha256 {h:?} is not 64 hex digits"
                        )))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let selectors = Selectors {
        exe: p
            .exe
            .map(|v| compile_globs_with(&format!("{key} exe"), &v, true))
            .transpose()?,
        exe_sha256,
        systemd_unit: p
            .systemd_unit
            .map(|v| compile_globs(&format!("{key} systemd_unit"), &v))
            .transpose()?,
        cgroup: p
            .cgroup
            .map(|v| compile_globs_with(&format!("{key} cgroup"), &v, true))
            .transpose()?,
    };
    Ok(PolicyConfig {
        allow: compile_globs(&format!("{key} allow"), &p.allow)?,
        deny: compile_globs(&format!("{key} deny"), &p.deny)?,
        uids: p.uids,
        gids: p.gids,
        selectors,
    })
}

#[cfg(test)]
mod tests {
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

    fn err(text: &str) -> String {
        Config::parse(text).expect_err("should fail").to_string()
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
        assert!(e.contains("needs a key") || std::env::var_os("CREDENTIALS_DIRECTORY").is_some());
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
            err("[[secret]]\nname=\"a\"\nsource=\"env\"\npath=\"/x\"\nenv=\"A\"")
                .contains("`path`")
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
}
