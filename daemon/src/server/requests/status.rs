//! Status and health: what `Status`, `Health` and an admin operation's answer show a caller
//! (never values; only secrets the caller may see), and the host's one health judgement, which
//! `/healthz` and `secretd status` share: every secret servable and the audit trail writable,
//! else unhealthy; a notification channel that is down only degrades it, since polling still
//! keeps values current.

use secretd_proto::{
    ChannelState, DaemonHealth, EntryState, ErrorCode, HealthStatus, Response, SecretStatus,
    WireError,
};

use super::reply::Reply;
use super::session::Session;
use crate::server::Shared;
use crate::store::metadata::SecretMeta;

impl Session {
    /// The host's health; reasons name only secrets this caller may see.
    pub(super) fn health(&self) -> Reply {
        let access = &self.access;
        let health = assess(&self.shared, |i| access.admin || access.can_read(i));
        Reply::plain(Response::Health(health))
    }

    pub(super) fn status(&self) -> Reply {
        Reply::plain(Response::Status(self.status_rows()))
    }

    /// Status rows the caller may see, with metadata merged in.
    pub(super) fn status_rows(&self) -> Vec<SecretStatus> {
        let catalog = &self.shared.catalog;
        let metas = self.shared.store.all_meta().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read secret metadata for status");
            Default::default()
        });
        (0..catalog.slots().len())
            .filter(|&i| self.access.admin || self.access.can_read(i))
            .map(|i| {
                let mut row = catalog.status(i);
                if let Some(meta) = metas.get(&row.name) {
                    merge_meta(&mut row, meta);
                }
                row
            })
            .collect()
    }

    /// The status row of slot `idx`, as the answer to an admin operation on it.
    pub(super) fn status_row(&self, idx: usize) -> Result<SecretStatus, WireError> {
        let name = &self.shared.catalog.slot(idx).name;
        self.status_rows()
            .into_iter()
            .find(|r| *r.name == **name)
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "status row missing"))
    }
}

/// Adds what the store knows of a secret to its status row.
pub(crate) fn merge_meta(row: &mut SecretStatus, meta: &SecretMeta) {
    row.metadata_status = Some(meta.status.as_str().into());
    row.rotation_due_at_ms = Some(meta.rotation_due_at_ms);
    row.break_glass_expires_at_ms = meta.break_glass_enabled_until_ms;
    row.version_alias.clone_from(&meta.gcp_version_alias);
    row.gcp_secret.clone_from(&meta.gcp_secret_id);
    row.owner.clone_from(&meta.owner);
    row.last_rotated_at_ms = meta.last_rotated_at_ms;
    row.last_validated_at_ms = meta.last_validated_at_ms;
    row.active_version.clone_from(&meta.active_version);
}

/// Judges the host. Reasons name only the secrets `visible` admits; the others that are not
/// servable are counted in one line, so a caller learns the verdict without their names.
pub(crate) fn assess(shared: &Shared, visible: impl Fn(usize) -> bool) -> DaemonHealth {
    let mut reasons = Vec::new();
    let mut hidden = 0usize;
    for i in 0..shared.catalog.slots().len() {
        let row = shared.catalog.status(i);
        let why = match row.state {
            EntryState::Fresh | EntryState::Stale => continue,
            EntryState::Expired => "stale past max_stale",
            EntryState::Missing => "never loaded",
        };
        if visible(i) {
            reasons.push(format!("{}: {why}", row.name));
        } else {
            hidden += 1;
        }
    }
    if hidden > 0 {
        reasons.push(format!("{hidden} secret(s) you may not see: not servable"));
    }
    if !shared.audit.healthy() {
        reasons.push("audit trail not writable".into());
    }
    let notifications = match &shared.catalog.channel {
        None => ChannelState::Off,
        Some(channel) => match channel.down() {
            None => ChannelState::Up,
            Some(why) => ChannelState::Down(why),
        },
    };
    let status = if !reasons.is_empty() {
        HealthStatus::Unhealthy
    } else if matches!(notifications, ChannelState::Down(_)) {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    };
    DaemonHealth {
        status,
        reasons,
        notifications,
    }
}
