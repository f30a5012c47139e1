//! The host's health, one judgement for `/healthz` and for `Request::Health` (which
//! `secretd status` prints): every secret servable and the audit trail writable, else
//! unhealthy; a notification channel that is down only degrades it, since polling still keeps
//! values current.

use secretd_proto::{ChannelState, DaemonHealth, EntryState, HealthStatus};

use crate::server::Shared;

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
