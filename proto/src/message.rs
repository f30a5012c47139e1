//! Requests and responses.
//!
//! Variant order is the wire tag (a `u32`): variants are only ever appended. Changing the fields
//! of an existing message bumps [`PROTOCOL_VERSION`]. `docs/protocol.md` documents every byte.

use bincode::{Decode, Encode};

use crate::error::WireError;
use crate::value::SecretValue;

/// The protocol version this build speaks. A client sends it in its hello; the daemon answers
/// with the version both speak (the lower of the two), and sends that client only what that
/// version knows.
///
/// - 1: the first release.
/// - 2: [`SourceKind::LastKnownGood`]. A version-1 client is told `Gsm` instead, which is
///   where a last-known-good value came from.
/// - 3: [`Request::Connections`] and [`Response::Connections`] (admins: what was attested of
///   each open connection). Clients send it only to a daemon that answered version 3.
/// - 4: [`SecretStatus`] gains `last_error_reason`, `version_alias`, `gcp_secret`, `owner`,
///   `last_rotated_at_ms`, `last_validated_at_ms` and `active_version`; older peers exchange
///   status rows in the version-3 layout ([`crate::legacy`]). [`RotationStep::Validate`] and
///   [`RotationStep::Unpin`], sent only to a daemon that answered 4.
///   [`ChangeEvent::RotationRequested`], sent only to watchers that agreed on 4.
/// - 5: [`Request::Health`] and [`Response::Health`] (the host's health as `/healthz` judges
///   it, with the notification channel's state). Clients send it only to a daemon that
///   answered 5.
/// - 6: [`crate::ErrorCode::Revoked`], sent only to clients that agreed on 6 (older ones are
///   told `Unavailable`, as before).
pub const PROTOCOL_VERSION: u16 = 6;

/// The oldest protocol version the daemon still serves, so clients built against earlier
/// releases keep working after an upgrade.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first four bytes of every client hello, so a daemon can tell a secretd client from a
/// stray program that happened to connect.
pub const MAGIC: [u8; 4] = *b"SCRD";

pub use crate::name::{MAX_NAME_LEN, validate_name};

/// The first message on every connection, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClientHello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Free text naming the client library and version, for logs (`secretd-client/0.1.0`).
    pub client: String,
}

impl ClientHello {
    /// A hello for this build's protocol version.
    pub fn new(client: impl Into<String>) -> ClientHello {
        ClientHello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            client: client.into(),
        }
    }
}

/// The daemon's answer to a good hello.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ServerHello {
    /// The daemon's [`PROTOCOL_VERSION`] (equal to the client's when the hello succeeded).
    pub protocol_version: u16,
    /// The daemon's package version, for diagnostics.
    pub daemon_version: String,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SourceKind {
    /// Google Secret Manager.
    Gsm,
    /// An operator's break-glass override.
    BreakGlass,
    /// An environment variable of the daemon (development).
    Env,
    /// A file readable by the daemon (development and tests).
    File,
    /// The daemon's sealed copy of the last values it fetched from GSM, served after a restart
    /// while GSM does not answer (protocol version 2 and later).
    LastKnownGood,
}

impl SourceKind {
    /// Every kind, in declaration order: `ALL[kind.index()] == kind`.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Gsm,
        SourceKind::BreakGlass,
        SourceKind::Env,
        SourceKind::File,
        SourceKind::LastKnownGood,
    ];

    /// The stable lowercase name as a C string: the one table of names, which the C API lends
    /// out and [`SourceKind::as_str`] reads.
    pub fn as_c_str(self) -> &'static std::ffi::CStr {
        match self {
            SourceKind::Gsm => c"gsm",
            SourceKind::BreakGlass => c"break_glass",
            SourceKind::Env => c"env",
            SourceKind::File => c"file",
            SourceKind::LastKnownGood => c"last_known_good",
        }
    }

    /// This kind as a client speaking `protocol` knows it: kinds newer than its version are
    /// reported as the kind they stand in for.
    pub fn for_protocol(self, protocol: u16) -> SourceKind {
        match self {
            SourceKind::LastKnownGood if protocol < 2 => SourceKind::Gsm,
            other => other,
        }
    }

    /// The stable lowercase name (`gsm`, `break_glass`, `env`, `file`, `last_known_good`).
    pub fn as_str(self) -> &'static str {
        // The names above are ASCII, so this never falls back.
        self.as_c_str().to_str().unwrap_or("unknown")
    }

    /// The position in [`SourceKind::ALL`], for tables indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How servable a cache entry is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum EntryState {
    /// Loaded and not yet expired.
    Fresh,
    /// Past its expiry but within `max_stale`: still served while the source is failing.
    Stale,
    /// Past `max_stale`: reads fail with `Unavailable` until a refresh succeeds.
    Expired,
    /// Never loaded since the daemon started: reads fail with `Unavailable`.
    Missing,
}

impl EntryState {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Fresh => "fresh",
            EntryState::Stale => "stale",
            EntryState::Expired => "expired",
            EntryState::Missing => "missing",
        }
    }
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// Must be the first frame on a connection, and only the first.
    Hello(ClientHello),
    /// Read one secret's value.
    Get {
        /// The catalog name.
        name: String,
    },
    /// Describe every catalog entry the caller may read (never values).
    Status,
    /// Admin: fetch one secret (or all, with `None`) from its source now, and report.
    Refresh {
        /// The catalog name, or `None` for every secret.
        name: Option<String>,
    },
    /// Admin: a rotation step for one secret.
    Rotation {
        /// The catalog name.
        name: String,
        /// What to do.
        step: RotationStep,
    },
    /// Admin: the newest audit records, oldest first.
    AuditTail {
        /// How many records at most.
        limit: u32,
        /// Only records of this secret.
        secret: Option<String>,
    },
    /// Admin: walk the audit hash chain.
    AuditVerify,
    /// Admin: apply a break-glass override from a sealed envelope (the name and expiry are
    /// inside it, bound by the encryption).
    BreakGlassApply {
        /// The envelope bytes (docs/protocol.md, "Break-glass envelope").
        envelope: Vec<u8>,
    },
    /// Admin: end a break-glass override now.
    BreakGlassClear {
        /// The catalog name.
        name: String,
    },
    /// Admin: the Prometheus text exposition, as `/metrics` serves it.
    Metrics,
    /// Turn this connection into a stream of [`ChangeEvent`]s for these names (every name the
    /// caller may read, when empty). Answered by [`Response::Watching`], then events until
    /// either side closes; the client sends nothing more.
    Watch {
        /// Catalog names, at most [`MAX_WATCH_NAMES`].
        names: Vec<String>,
    },
    /// Admin (protocol 3): every open connection, with what was attested of its peer.
    Connections,
    /// (protocol 5) The host's health as `/healthz` judges it. Anyone may ask; reasons name
    /// only secrets the caller may see.
    Health,
}

/// The daemon's health (protocol 5), as `/healthz` and `secretd status` report it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DaemonHealth {
    /// The verdict.
    pub status: HealthStatus,
    /// Why it is [`HealthStatus::Unhealthy`], one line each (a degraded host's reason is
    /// in `notifications`).
    pub reasons: Vec<String>,
    /// The GSM notification channel (`[gsm.notifications]`).
    pub notifications: ChannelState,
}

/// How healthy the daemon is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum HealthStatus {
    /// Every secret servable, the audit trail writable, notifications (if any) flowing.
    Ok,
    /// Serving everything, but something that keeps it current is down (the notification
    /// channel): changes arrive by polling only.
    Degraded,
    /// A secret cannot be served, or the audit trail cannot be written.
    Unhealthy,
}

impl HealthStatus {
    /// The lower-case name `/healthz` and the CLI print.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The state of the GSM notification channel.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ChannelState {
    /// No `[gsm.notifications]`: changes arrive by polling.
    Off,
    /// The streaming pull runs and the subscription answers.
    Up,
    /// Down, and why; polling uses `notification_fallback_interval` meanwhile.
    Down(String),
}

/// One open connection, as `status --connections` shows it. Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConnectionInfo {
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
    /// The peer's pid, if known.
    pub pid: Option<i32>,
    /// The attested executable (`None`: unreadable, or replaced or deleted since it started).
    pub exe: Option<String>,
    /// The hex SHA-256 of the executable, when a policy selects by hash.
    pub exe_sha256: Option<String>,
    /// The systemd unit its cgroup names.
    pub systemd_unit: Option<String>,
    /// Its cgroup.
    pub cgroup: Option<String>,
    /// When it connected, Unix milliseconds.
    pub connected_at_ms: i64,
    /// The protocol version agreed in its hello.
    pub protocol_version: u16,
}

/// The most names one watch request may list.
pub const MAX_WATCH_NAMES: usize = 1024;

/// A change to the value a name serves. Never carries the value: a subscriber that needs it
/// reads it with a normal get.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SecretChange {
    /// The catalog name.
    pub name: String,
    /// The version now served.
    pub version: String,
    /// Where the value now served came from.
    pub source: SourceKind,
    /// Keyed fingerprint of the value now served (HMAC-SHA256, hex; empty if the daemon has
    /// no fingerprint key).
    pub fingerprint: String,
    /// When the daemon started serving it, Unix milliseconds.
    pub at_ms: i64,
}

/// One event on a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ChangeEvent {
    /// A watched name now serves a different value (new version, break-glass applied,
    /// cleared or expired). Changes are coalesced per name: only the latest is sent.
    Changed(SecretChange),
    /// Events were dropped because this subscriber fell behind (or, in client libraries,
    /// because the connection was re-established): re-read every watched name.
    Lagged,
    /// GSM's rotation schedule asks for a new version of a watched name (its `SECRET_ROTATE`
    /// notification): automation can add one. Nothing served changed. Protocol 4: sent only
    /// to watchers that agreed on 4 or later.
    RotationRequested(RotationRequest),
}

/// A rotation GSM's schedule asks for.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RotationRequest {
    /// The catalog name.
    pub name: String,
    /// When the daemon heard of it, Unix milliseconds.
    pub at_ms: i64,
}

impl ChangeEvent {
    /// The name concerned, for [`ChangeEvent::Changed`] and
    /// [`ChangeEvent::RotationRequested`].
    pub fn name(&self) -> Option<&str> {
        match self {
            ChangeEvent::Changed(c) => Some(&c.name),
            ChangeEvent::RotationRequested(r) => Some(&r.name),
            ChangeEvent::Lagged => None,
        }
    }
}

/// A rotation step.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RotationStep {
    /// Pin this GSM version for staged validation (status `rotating`).
    Begin {
        /// The version number to pin.
        version: String,
    },
    /// Make the pinned version active (status `active`, rotation due in 12 months).
    Promote,
    /// Return to the configured version alias (status `active`).
    Abort,
    /// Record that the value served passed a live validation (`last_validated_at`). Protocol 4.
    Validate,
    /// Drop the host's active version (set by a promote over a version number in the config)
    /// and serve the config's version again. Protocol 4.
    Unpin,
}

/// One audit record as `audit tail` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: u64,
    /// When, Unix ms.
    pub recorded_at_ms: i64,
    /// `read`, `refresh`, `rotation_begin`, ...
    pub action: String,
    /// The secret ("" for daemon-wide events).
    pub secret: String,
    /// `client`, `admin` or `daemon`.
    pub actor_type: String,
    /// The actor's uid.
    pub uid: u32,
    /// The actor's gid.
    pub gid: u32,
    /// The actor's pid, if known.
    pub pid: Option<i32>,
    /// `ok`, `denied` or `failed`.
    pub result: String,
    /// The protocol error code, if any.
    pub error_code: Option<u16>,
    /// The secret version involved ("" if none).
    pub version: String,
    /// Keyed fingerprint of the value involved ("" if none).
    pub fingerprint: String,
    /// Duration in milliseconds.
    pub duration_ms: u32,
    /// Events this record stands for (aggregated reads).
    pub count: u64,
    /// Explanation; never a value.
    pub detail: String,
    /// The record's chain hash, hex.
    pub hash: String,
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AuditVerification {
    /// Records that verified.
    pub checked: u64,
    /// The chain's first sequence number (after pruning).
    pub first_seq: u64,
    /// The last sequence number that verified.
    pub last_seq: u64,
    /// The first record that does not verify.
    pub broken_seq: Option<u64>,
    /// Why it does not.
    pub reason: Option<String>,
}

impl Request {
    /// A short stable name of the operation, for logs and metrics.
    pub fn op(&self) -> &'static str {
        Request::OPS[self.op_index()]
    }

    /// Every operation's name, as [`Request::op`] gives it, in [`Request::op_index`] order:
    /// what a table of counters per operation is sized and labelled from.
    pub const OPS: [&'static str; 13] = [
        "hello",
        "get",
        "status",
        "refresh",
        "rotation",
        "audit_tail",
        "audit_verify",
        "break_glass_apply",
        "break_glass_clear",
        "metrics",
        "watch",
        "connections",
        "health",
    ];

    /// This request's operation as an index into [`Request::OPS`].
    pub fn op_index(&self) -> usize {
        match self {
            Request::Hello(_) => 0,
            Request::Get { .. } => 1,
            Request::Status => 2,
            Request::Refresh { .. } => 3,
            Request::Rotation { .. } => 4,
            Request::AuditTail { .. } => 5,
            Request::AuditVerify => 6,
            Request::BreakGlassApply { .. } => 7,
            Request::BreakGlassClear { .. } => 8,
            Request::Metrics => 9,
            Request::Watch { .. } => 10,
            Request::Connections => 11,
            Request::Health => 12,
        }
    }
}

/// A secret value with what the daemon knows about it.
#[derive(Debug, PartialEq, Eq, Encode, Decode)]
pub struct SecretReply<'a> {
    /// The source's version of this value (GSM version number; a local counter for env/file).
    pub version: String,
    /// Where the value currently served came from.
    pub source: SourceKind,
    /// When the daemon fetched it, Unix milliseconds.
    pub fetched_at_ms: i64,
    /// When it is due to be refreshed, Unix milliseconds.
    pub expires_at_ms: i64,
    /// The value itself.
    pub value: SecretValue<'a>,
}

/// One catalog entry as `status` shows it. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SecretStatus {
    /// The catalog name.
    pub name: String,
    /// The source configured for this name.
    pub configured_source: SourceKind,
    /// Where the value in the cache came from (`cacheSource`), if there is one.
    pub cache_source: Option<SourceKind>,
    /// How servable the entry is.
    pub state: EntryState,
    /// The version in the cache.
    pub version: Option<String>,
    /// When the cached value was fetched, Unix milliseconds.
    pub fetched_at_ms: Option<i64>,
    /// When the cached value is due for refresh, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// Age of the cached value in milliseconds, as the daemon measured it.
    pub age_ms: Option<u64>,
    /// The last refresh error, if the most recent refresh failed.
    pub last_error: Option<WireError>,
    /// Metadata status (`active`, `rotating`, `deprecated`), once the store knows it.
    pub metadata_status: Option<String>,
    /// When the secret is due for rotation, Unix milliseconds.
    pub rotation_due_at_ms: Option<i64>,
    /// When an active break-glass override expires, Unix milliseconds.
    pub break_glass_expires_at_ms: Option<i64>,
    /// Keyed fingerprint of the cached value (HMAC-SHA256, hex), once the store has a key.
    pub fingerprint: Option<String>,
    /// Why the last refresh failed, as a stable name (`not_found`, `permission_denied`,
    /// `service_disabled`, `unauthenticated`, `disabled`, `rate_limited`, `unavailable`,
    /// `timeout`, `invalid_payload`; a client must accept names it does not know). Protocol 4.
    pub last_error_reason: Option<String>,
    /// The configured version: `latest`, a GSM alias, or a number (GSM secrets). Protocol 4.
    pub version_alias: Option<String>,
    /// The full GSM resource name (`projects/P[/locations/L]/secrets/S`). Protocol 4.
    pub gcp_secret: Option<String>,
    /// The owning team, from the config. Protocol 4.
    pub owner: Option<String>,
    /// When the last rotation was promoted, Unix milliseconds. Protocol 4.
    pub last_rotated_at_ms: Option<i64>,
    /// When a value was last validated live (`rotation validate`), Unix milliseconds.
    /// Protocol 4.
    pub last_validated_at_ms: Option<i64>,
    /// The version this host was promoted to, which outranks a version number in the config
    /// until the config names it too (or `rotation unpin`). Protocol 4.
    pub active_version: Option<String>,
}

/// A response from the daemon. Exactly one per request.
#[derive(Debug, PartialEq, Eq, Encode, Decode)]
pub enum Response<'a> {
    /// The answer to a good [`Request::Hello`].
    Hello(ServerHello),
    /// The answer to [`Request::Get`].
    Secret(SecretReply<'a>),
    /// The answer to [`Request::Status`].
    Status(Vec<SecretStatus>),
    /// Any request may be answered with an error instead.
    Error(WireError),
    /// The answer to [`Request::Refresh`]: one outcome per secret refreshed.
    Refreshed(Vec<RefreshOutcome>),
    /// The answer to [`Request::Rotation`]: the secret's status after the step.
    Rotated(SecretStatus),
    /// The answer to [`Request::AuditTail`].
    AuditRecords(Vec<AuditEntry>),
    /// The answer to [`Request::AuditVerify`].
    AuditVerified(AuditVerification),
    /// The answer to a break-glass apply or clear: the secret's status afterwards.
    BreakGlass(SecretStatus),
    /// The answer to [`Request::Metrics`].
    Metrics(String),
    /// The answer to [`Request::Watch`]: the names now watched. Events follow.
    Watching(Vec<String>),
    /// A change on a watched connection.
    Event(ChangeEvent),
    /// The answer to [`Request::Connections`] (protocol 3).
    Connections(Vec<ConnectionInfo>),
    /// The answer to [`Request::Health`] (protocol 5).
    Health(DaemonHealth),
}

/// What one refresh achieved.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RefreshOutcome {
    /// The catalog name.
    pub name: String,
    /// The version now served, when the fetch succeeded.
    pub version: Option<String>,
    /// Why the fetch failed (the old value, if any, is still served).
    pub error: Option<WireError>,
}

impl Response<'_> {
    /// A short stable name of the response kind, for logs and unexpected-reply errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello(_) => "hello",
            Response::Secret(_) => "secret",
            Response::Status(_) => "status",
            Response::Error(_) => "error",
            Response::Refreshed(_) => "refreshed",
            Response::Rotated(_) => "rotated",
            Response::AuditRecords(_) => "audit_records",
            Response::AuditVerified(_) => "audit_verified",
            Response::BreakGlass(_) => "break_glass",
            Response::Metrics(_) => "metrics",
            Response::Watching(_) => "watching",
            Response::Event(_) => "event",
            Response::Connections(_) => "connections",
            Response::Health(_) => "health",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("trading_api_key").is_ok());
        assert!(validate_name("a.b-c_9").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("_x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name("é").is_err());
        assert!(validate_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn source_kinds_have_one_table() {
        for (i, kind) in SourceKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(kind.as_str().as_bytes(), kind.as_c_str().to_bytes());
        }
        assert_eq!(SourceKind::BreakGlass.as_str(), "break_glass");
    }
}
