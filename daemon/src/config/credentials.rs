//! `[[credential]]`: which systemd units may load which secrets through the credentials socket
//! (`LoadCredential=ID:/run/secretd/credentials.sock`), and what a rotation does to them.
//! `[[policy]]` never applies there: systemd connects as root for the unit.

use std::time::Duration;

use globset::GlobSet;

use super::policy::compile_globs;
use super::raw::RawCredential;
use super::values::duration_or;
use super::{ConfigError, invalid};

/// The stagger a `[[credential]]` gets when it names none: restarts spread over 30 s.
pub(crate) const DEFAULT_CREDENTIAL_STAGGER: Duration = Duration::from_secs(30);
/// The longest stagger: a day.
pub(crate) const MAX_CREDENTIAL_STAGGER: Duration = Duration::from_secs(24 * 3600);

/// One `[[credential]]`, globs compiled.
#[derive(Debug, Clone)]
pub(crate) struct CredentialGrant {
    /// The unit patterns as written (`mm-bot.service`, `fix-gw@*.service`), for the polkit
    /// rule that lets the daemon restart exactly these.
    pub units_text: Vec<String>,
    /// The same, compiled.
    pub units: GlobSet,
    /// Secret names the units may load.
    pub allow: GlobSet,
    /// Whether a unit that loaded an old value is restarted after a change.
    pub restart_on_change: bool,
    /// Restarts wait a random time up to this, so units and hosts do not restart together.
    pub stagger: Duration,
}

impl CredentialGrant {
    /// Whether this grant lets `unit` load `secret`.
    pub(crate) fn grants(&self, unit: &str, secret: &str) -> bool {
        self.units.is_match(unit) && self.allow.is_match(secret)
    }
}

pub(super) fn validate_credential(
    index: usize,
    c: RawCredential,
) -> Result<CredentialGrant, ConfigError> {
    let key = format!("credential #{}", index + 1);
    if c.units.is_empty() {
        return Err(invalid(format!("{key} lists no units")));
    }
    if c.allow.is_empty() {
        return Err(invalid(format!("{key} allows no secrets")));
    }
    for unit in &c.units {
        // systemd names units with letters, digits and ":-_.@" (and escapes others with a
        // backslash); a glob adds "*?[]!". Quotes or slashes could never match a unit and
        // would break the generated polkit rule. A backslash is refused too: globset reads it
        // as an escape and the polkit rule would not, so the two could grant different units
        // (match an escaped unit name with `?`).
        let ok = unit.ends_with(".service")
            && unit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.@*?[]!".contains(&b));
        if !ok {
            return Err(invalid(format!(
                "{key} unit {unit:?} is not a service unit name or glob (like \"fix-gw@*.service\")"
            )));
        }
    }
    let restart_on_change = match c.on_change.as_deref().unwrap_or("restart") {
        "restart" => true,
        "none" => false,
        other => {
            return Err(invalid(format!(
                "{key} on_change {other:?}: expected \"restart\" or \"none\""
            )));
        }
    };
    let stagger = duration_or(
        &format!("{key} stagger"),
        c.stagger,
        DEFAULT_CREDENTIAL_STAGGER,
    )?;
    if stagger > MAX_CREDENTIAL_STAGGER {
        return Err(invalid(format!("{key} stagger: at most 24h")));
    }
    Ok(CredentialGrant {
        units: compile_globs(&format!("{key} units"), &c.units)?,
        units_text: c.units,
        allow: compile_globs(&format!("{key} allow"), &c.allow)?,
        restart_on_change,
        stagger,
    })
}
