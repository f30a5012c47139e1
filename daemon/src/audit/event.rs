//! What the audit trail records: one [`AuditEvent`] per thing that happened, with who did it
//! and how it ended. Never a value: only a keyed fingerprint of one.

use crate::util::time::now_ms;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Action {
    /// A value was read (or a read refused); aggregated per connection and secret.
    Read = 1,
    /// A value was fetched from its source.
    Refresh = 2,
    /// A break-glass override was applied.
    BreakGlassApply = 3,
    /// A break-glass override was cleared.
    BreakGlassClear = 4,
    /// A rotation began.
    RotationBegin = 5,
    /// A rotation was promoted.
    RotationPromote = 6,
    /// A rotation was aborted.
    RotationAbort = 7,
    /// Secret metadata was created or changed.
    MetadataWrite = 8,
    /// The daemon started serving.
    DaemonStart = 9,
    /// Records past retention were pruned.
    AuditPrune = 10,
    /// A client subscribed to changes of a secret (or was refused).
    Watch = 11,
    /// The chain was keyed: the first keyed record, committing to the unkeyed head.
    AuditUpgrade = 12,
    /// GSM refused the version being served (disabled or destroyed): it is served no more.
    Revoke = 13,
    /// An operator recorded a successful live validation of the value served.
    RotationValidate = 14,
    /// An operator dropped the promoted active version; the config's is served again.
    RotationUnpin = 15,
    /// Admin: the newest audit records were asked for (recorded when refused).
    AuditTail = 16,
    /// Admin: the chain's verification was asked for (recorded when refused).
    AuditVerify = 17,
    /// Admin: the open connections were asked for (recorded when refused).
    Connections = 18,
    /// Admin: the metrics text was asked for over the socket (recorded when refused).
    Metrics = 19,
}

impl Action {
    const ALL: [Action; 19] = [
        Action::Read,
        Action::Refresh,
        Action::BreakGlassApply,
        Action::BreakGlassClear,
        Action::RotationBegin,
        Action::RotationPromote,
        Action::RotationAbort,
        Action::MetadataWrite,
        Action::DaemonStart,
        Action::AuditPrune,
        Action::Watch,
        Action::AuditUpgrade,
        Action::Revoke,
        Action::RotationValidate,
        Action::RotationUnpin,
        Action::AuditTail,
        Action::AuditVerify,
        Action::Connections,
        Action::Metrics,
    ];

    /// The stable snake_case name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Refresh => "refresh",
            Action::BreakGlassApply => "break_glass_apply",
            Action::BreakGlassClear => "break_glass_clear",
            Action::RotationBegin => "rotation_begin",
            Action::RotationPromote => "rotation_promote",
            Action::RotationAbort => "rotation_abort",
            Action::MetadataWrite => "metadata_write",
            Action::DaemonStart => "daemon_start",
            Action::AuditPrune => "audit_prune",
            Action::Watch => "watch",
            Action::AuditUpgrade => "audit_upgrade",
            Action::Revoke => "revoke",
            Action::RotationValidate => "rotation_validate",
            Action::RotationUnpin => "rotation_unpin",
            Action::AuditTail => "audit_tail",
            Action::AuditVerify => "audit_verify",
            Action::Connections => "connections",
            Action::Metrics => "metrics",
        }
    }

    pub(super) fn from_u8(n: u8) -> Option<Action> {
        Action::ALL.into_iter().find(|a| *a as u8 == n)
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ActorType {
    /// A local process reading secrets.
    Client = 1,
    /// An operator (an `admin_uids` caller) running an admin operation.
    Admin = 2,
    /// The daemon itself (refreshes, startup, pruning).
    Daemon = 3,
}

impl ActorType {
    /// The stable name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActorType::Client => "client",
            ActorType::Admin => "admin",
            ActorType::Daemon => "daemon",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    /// Done.
    Ok = 1,
    /// Refused by policy.
    Denied = 2,
    /// Attempted and failed.
    Failed = 3,
}

impl Outcome {
    /// The stable name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One audited event. Never holds a value: only its keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditEvent {
    /// When, Unix ms.
    pub recorded_at_ms: i64,
    /// What.
    pub action: Action,
    /// The secret involved ("" for daemon-wide events).
    pub secret: String,
    /// Who, by kind.
    pub actor_type: ActorType,
    /// Their uid.
    pub uid: u32,
    /// Their gid.
    pub gid: u32,
    /// Their pid, if known (informational).
    pub pid: Option<i32>,
    /// How it ended.
    pub outcome: Outcome,
    /// The protocol error code, if any.
    pub error_code: Option<u16>,
    /// The secret's version involved ("" if none).
    pub version: String,
    /// HMAC-SHA256 fingerprint (hex) of the value involved ("" if none).
    pub fingerprint: String,
    /// How long it took.
    pub duration_ms: u32,
    /// How many events this record stands for (aggregated reads), at least 1.
    pub count: u64,
    /// A short explanation (error text, a version change); never a value.
    pub detail: String,
    /// The attested program of a client (`exe=... sha256=... unit=...`), "" for the daemon.
    pub program: String,
}

/// Who acted: kind, uid, gid, pid, and the program the kernel attested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    /// Client, admin or daemon.
    pub kind: ActorType,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid, if known.
    pub pid: Option<i32>,
    /// The attested program, for clients.
    pub program: Option<std::sync::Arc<str>>,
}

impl Actor {
    /// The daemon itself.
    pub(crate) fn daemon() -> Actor {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Actor {
            kind: ActorType::Daemon,
            uid,
            gid,
            pid: i32::try_from(std::process::id()).ok(),
            program: None,
        }
    }
}

impl AuditEvent {
    /// An event happening now, with no version, fingerprint or detail yet.
    pub(crate) fn new(action: Action, secret: &str, actor: &Actor, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            recorded_at_ms: now_ms(),
            action,
            secret: secret.to_owned(),
            actor_type: actor.kind,
            uid: actor.uid,
            gid: actor.gid,
            pid: actor.pid,
            outcome,
            error_code: None,
            version: String::new(),
            fingerprint: String::new(),
            duration_ms: 0,
            count: 1,
            detail: String::new(),
            program: actor.program.as_deref().unwrap_or_default().to_owned(),
        }
    }
}
