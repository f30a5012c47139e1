//! `[daemon]`: the socket, the database, limits, intervals, keys and the last-known-good file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::validate_http;
use super::raw::RawDaemon;
use super::values::{bounded_duration, duration_or, positive_duration_or};
use super::{ConfigError, invalid};

pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Refusals one uid may cause in a minute, unless `daemon.max_denials_per_minute_per_uid` says
/// otherwise.
pub(crate) const DEFAULT_MAX_DENIALS_PER_MINUTE: u64 = 600;
/// Unless `daemon.max_connections_per_uid` says otherwise, one uid may hold this share of
/// `max_connections` (1/4): two busy or hostile uids still leave half the seats to everyone
/// else. A pool larger than that needs the setting raised.
pub(crate) const DEFAULT_PER_UID_SHARE: usize = 4;
/// Connections kept for `admin_uids` alone, unless `daemon.admin_reserved_connections` says
/// otherwise (and never more than a quarter of `max_connections` by default): the operator can
/// always run `secretd status`, whoever fills the rest.
pub(crate) const DEFAULT_ADMIN_RESERVED_CONNECTIONS: usize = 16;
/// The hard ceiling on `daemon.max_connections` (each connection holds a file descriptor).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = 65_536;
/// `daemon.db` when the file names none.
const DEFAULT_DB: &str = "/var/lib/secretd/secretd.redb";
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
/// Default `daemon.write_timeout`: how long writing one response may take before the client
/// (one that stopped reading, a watcher that fell behind) is cut off.
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `daemon.write_timeout`: a stuck client holds a seat this long at most.
pub(crate) const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `daemon.frame_deadline`: how long a frame may take to arrive once its first byte
/// has (the hello: once the connection is accepted). A client trickling bytes holds its seat
/// this long at most.
pub(crate) const DEFAULT_FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// The longest `daemon.frame_deadline`.
pub(crate) const MAX_FRAME_DEADLINE: Duration = Duration::from_secs(60);
/// Default `daemon.audit_read_window`: reads of one secret version by one uid and program
/// are recorded once when first seen, then as one count per window.
pub(crate) const DEFAULT_AUDIT_READ_WINDOW: Duration = Duration::from_secs(60);
/// The longest `daemon.audit_read_window`: counts reach the trail within two of these.
pub(crate) const MAX_AUDIT_READ_WINDOW: Duration = Duration::from_secs(3600);
/// Default `daemon.attest_max_exe_bytes`: executables larger than this are not hashed (and
/// match no `exe_sha256` selector), so a peer cannot make the daemon read gigabytes.
pub(crate) const DEFAULT_ATTEST_MAX_EXE_BYTES: u64 = 256 * 1024 * 1024;
/// Default `daemon.audit_anchor_interval`.
pub(crate) const DEFAULT_AUDIT_ANCHOR_INTERVAL: Duration = Duration::from_secs(300);
/// The credential name `LoadCredential(Encrypted)=` gives the audit chain key.
pub(crate) const AUDIT_KEY_CREDENTIAL: &str = "secretd-audit-key";
/// The credential name `LoadCredential(Encrypted)=` gives the last-known-good key.
pub(crate) const LAST_KNOWN_GOOD_CREDENTIAL: &str = "secretd-lkg-key";

/// Default `break_glass.max_ttl`.
pub(crate) const DEFAULT_BREAK_GLASS_MAX_TTL: Duration = Duration::from_secs(3600);

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
    /// Connections one uid may hold at once, as set; else a quarter of `max_connections`
    /// ([`DaemonConfig::per_uid_connections`]).
    pub max_connections_per_uid: Option<usize>,
    /// Connections only `admin_uids` may use, as set; else
    /// [`DEFAULT_ADMIN_RESERVED_CONNECTIONS`] or a quarter of `max_connections` if less
    /// ([`DaemonConfig::admin_reserved`]).
    pub admin_reserved_connections: Option<usize>,
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
    /// How long writing one response may take (`write_timeout`).
    pub write_timeout: Duration,
    /// How long a frame may take once started, and the hello once accepted (`frame_deadline`).
    pub frame_deadline: Duration,
    /// How often counted reads are written to the audit trail (`audit_read_window`).
    pub audit_read_window: Duration,
    /// The largest executable hashed for an `exe_sha256` selector (`attest_max_exe_bytes`).
    pub attest_max_exe_bytes: u64,
    /// The sealed last-known-good file and its key, when enabled.
    pub last_known_good: Option<LastKnownGoodConfig>,
    /// The systemd credential provider's socket (`credentials_socket`), when enabled.
    pub credentials_socket: Option<PathBuf>,
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

impl GroupRef {
    /// A number is a gid; anything else a name.
    fn parse(text: String) -> GroupRef {
        match text.parse::<u32>() {
            Ok(id) => GroupRef::Id(id),
            Err(_) => GroupRef::Name(text),
        }
    }
}

pub(super) fn parse_mode(text: &str) -> Result<u32, ConfigError> {
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

/// `[daemon]`, with `credentials` the directory systemd hands the daemon its credentials in
/// (`$CREDENTIALS_DIRECTORY`), where keys not named in the file are looked for.
pub(super) fn validate_daemon(
    raw: RawDaemon,
    credentials: Option<&Path>,
) -> Result<DaemonConfig, ConfigError> {
    let refresh_interval = refresh_interval(raw.refresh_interval)?;
    let (audit_key, fingerprint_key) = key_paths(raw.audit_key, raw.fingerprint_key)?;
    let http = validate_http(
        raw.metrics_listen,
        raw.metrics_listen_public,
        raw.http_max_connections,
    )?;
    let limits = connection_limits(
        raw.max_connections,
        raw.max_connections_per_uid,
        raw.admin_reserved_connections,
    )?;
    let (write_timeout, frame_deadline) = client_deadlines(raw.write_timeout, raw.frame_deadline)?;
    Ok(DaemonConfig {
        socket: absolute(
            "daemon.socket",
            raw.socket
                .unwrap_or_else(|| PathBuf::from(secretd_proto::paths::DEFAULT_SOCKET)),
        )?,
        socket_mode: raw.socket_mode.map_or(Ok(0o600), |m| parse_mode(&m))?,
        socket_group: raw.socket_group.map(GroupRef::parse),
        db: raw.db.unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
        admin_uids: raw.admin_uids.unwrap_or_else(|| vec![0]),
        refresh_interval,
        allow_short_ttl: raw.allow_short_ttl,
        max_stale: duration_or("daemon.max_stale", raw.max_stale, DEFAULT_MAX_STALE)?,
        metrics_listen: http.listen,
        http_max_connections: http.max_connections,
        max_denials_per_minute_per_uid: denial_limit(raw.max_denials_per_minute_per_uid)?,
        max_connections: limits.total,
        max_connections_explicit: limits.explicit,
        max_connections_per_uid: limits.per_uid,
        admin_reserved_connections: limits.reserved,
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
        first_fetch_wait: first_fetch_wait(raw.first_fetch_wait)?,
        audit_key,
        fingerprint_key,
        write_timeout,
        frame_deadline,
        audit_read_window: bounded_duration(
            "daemon.audit_read_window",
            raw.audit_read_window,
            DEFAULT_AUDIT_READ_WINDOW,
            MAX_AUDIT_READ_WINDOW,
        )?,
        attest_max_exe_bytes: attest_max_exe_bytes(raw.attest_max_exe_bytes)?,
        audit_anchor_interval: positive_duration_or(
            "daemon.audit_anchor_interval",
            raw.audit_anchor_interval,
            DEFAULT_AUDIT_ANCHOR_INTERVAL,
        )?,
        last_known_good: last_known_good(
            raw.last_known_good,
            raw.last_known_good_key,
            credentials,
        )?,
        credentials_socket: raw
            .credentials_socket
            .map(|p| absolute("daemon.credentials_socket", p))
            .transpose()?,
    })
}

/// `daemon.write_timeout` and `daemon.frame_deadline`: how long a client may take to read a
/// response and to send a frame, each with a ceiling.
fn client_deadlines(
    write_timeout: Option<String>,
    frame_deadline: Option<String>,
) -> Result<(Duration, Duration), ConfigError> {
    Ok((
        bounded_duration(
            "daemon.write_timeout",
            write_timeout,
            DEFAULT_WRITE_TIMEOUT,
            MAX_WRITE_TIMEOUT,
        )?,
        bounded_duration(
            "daemon.frame_deadline",
            frame_deadline,
            DEFAULT_FRAME_DEADLINE,
            MAX_FRAME_DEADLINE,
        )?,
    ))
}

/// `path`, if it is absolute (`key` names the setting in the error).
fn absolute(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(invalid(format!(
            "{key} = {:?} must be an absolute path",
            path.display()
        )))
    }
}

/// `daemon.refresh_interval`: at least [`MIN_TTL`].
fn refresh_interval(text: Option<String>) -> Result<Duration, ConfigError> {
    let interval = duration_or("daemon.refresh_interval", text, DEFAULT_REFRESH_INTERVAL)?;
    if interval < MIN_TTL {
        return Err(invalid("daemon.refresh_interval must be at least 1s"));
    }
    Ok(interval)
}

/// `daemon.first_fetch_wait`: at most [`MAX_FIRST_FETCH_WAIT`], under the clients' timeout.
fn first_fetch_wait(text: Option<String>) -> Result<Duration, ConfigError> {
    let wait = duration_or("daemon.first_fetch_wait", text, DEFAULT_FIRST_FETCH_WAIT)?;
    if wait > MAX_FIRST_FETCH_WAIT {
        return Err(invalid(format!(
            "daemon.first_fetch_wait must be at most {}s, under the clients' 5 s timeout",
            MAX_FIRST_FETCH_WAIT.as_secs()
        )));
    }
    Ok(wait)
}

/// `daemon.attest_max_exe_bytes`: above zero (an `exe_sha256` selector needs some file to hash).
fn attest_max_exe_bytes(value: Option<u64>) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(invalid(
            "daemon.attest_max_exe_bytes must be above 0 (no executable could be hashed)",
        )),
        Some(bytes) => Ok(bytes),
        None => Ok(DEFAULT_ATTEST_MAX_EXE_BYTES),
    }
}

/// `daemon.audit_key` and `daemon.fingerprint_key`: absolute paths when given.
fn key_paths(
    audit_key: Option<PathBuf>,
    fingerprint_key: Option<PathBuf>,
) -> Result<(Option<PathBuf>, Option<PathBuf>), ConfigError> {
    Ok((
        audit_key
            .map(|p| absolute("daemon.audit_key", p))
            .transpose()?,
        fingerprint_key
            .map(|p| absolute("daemon.fingerprint_key", p))
            .transpose()?,
    ))
}

/// `daemon.last_known_good` and its key: the key from the config, else systemd's credentials
/// directory (never beside the file, which would protect nothing).
fn last_known_good(
    path: Option<PathBuf>,
    key: Option<PathBuf>,
    credentials: Option<&Path>,
) -> Result<Option<LastKnownGoodConfig>, ConfigError> {
    let path = match (path, &key) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(invalid(
                "daemon.last_known_good_key is set but daemon.last_known_good is not",
            ));
        }
        (Some(path), _) => path,
    };
    let key = key.or_else(|| credentials.map(|d| d.join(LAST_KNOWN_GOOD_CREDENTIAL)));
    let Some(key) = key else {
        return Err(invalid(format!(
            "daemon.last_known_good needs a key: set daemon.last_known_good_key, or run \
             under systemd with LoadCredentialEncrypted={LAST_KNOWN_GOOD_CREDENTIAL} \
             (a key beside the file would protect nothing)"
        )));
    };
    Ok(Some(LastKnownGoodConfig {
        path: absolute("daemon.last_known_good", path)?,
        key: absolute("daemon.last_known_good_key", key)?,
    }))
}

/// `daemon.max_denials_per_minute_per_uid`: at least 1.
fn denial_limit(limit: Option<u64>) -> Result<u64, ConfigError> {
    let limit = limit.unwrap_or(DEFAULT_MAX_DENIALS_PER_MINUTE);
    if limit == 0 {
        return Err(invalid(
            "daemon.max_denials_per_minute_per_uid must be at least 1",
        ));
    }
    Ok(limit)
}

/// The socket's connection caps, validated together.
struct ConnectionLimits {
    /// `daemon.max_connections`.
    total: usize,
    /// Whether it was set (a default one is lowered to fit the open-files limit, an explicit
    /// one that does not fit is refused).
    explicit: bool,
    /// `daemon.max_connections_per_uid`, if set.
    per_uid: Option<usize>,
    /// `daemon.admin_reserved_connections`, if set.
    reserved: Option<usize>,
}

/// `daemon.max_connections` (1 to [`MAX_CONNECTIONS_LIMIT`]), `max_connections_per_uid`
/// (1 to `max_connections`) and `admin_reserved_connections` (below `max_connections`).
fn connection_limits(
    total: Option<usize>,
    per_uid: Option<usize>,
    reserved: Option<usize>,
) -> Result<ConnectionLimits, ConfigError> {
    let explicit = total.is_some();
    let total = total.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if total == 0 || total > MAX_CONNECTIONS_LIMIT {
        return Err(invalid(format!(
            "daemon.max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}"
        )));
    }
    if per_uid.is_some_and(|n| n == 0 || n > total) {
        return Err(invalid(format!(
            "daemon.max_connections_per_uid must be between 1 and max_connections ({total})"
        )));
    }
    if reserved.is_some_and(|n| n >= total) {
        return Err(invalid(format!(
            "daemon.admin_reserved_connections must be below max_connections ({total})"
        )));
    }
    Ok(ConnectionLimits {
        total,
        explicit,
        per_uid,
        reserved,
    })
}

impl DaemonConfig {
    /// Connections one uid may hold at once.
    pub(crate) fn per_uid_connections(&self) -> usize {
        self.max_connections_per_uid
            .unwrap_or(self.max_connections / DEFAULT_PER_UID_SHARE)
            .clamp(1, self.max_connections)
    }

    /// Connections only admins may use (the others share the rest).
    pub(crate) fn admin_reserved(&self) -> usize {
        self.admin_reserved_connections
            .unwrap_or(DEFAULT_ADMIN_RESERVED_CONNECTIONS.min(self.max_connections / 4))
            .min(self.max_connections.saturating_sub(1))
    }
}
