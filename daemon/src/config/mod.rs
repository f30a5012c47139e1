//! The TOML configuration, parsed and validated into [`Config`].
//!
//! Parsing is strict: unknown keys, keys that belong to another source, duplicate names and
//! unparsable durations are errors with the offending key named, so a typo never silently
//! changes who can read what.

mod credentials;
mod daemon;
mod gsm;
mod http;
mod policy;
mod raw;
mod secrets;
#[cfg(test)]
mod tests;
mod values;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use credentials::CredentialGrant;
use credentials::validate_credential;
pub(crate) use daemon::{
    AUDIT_KEY_CREDENTIAL, CREDENTIALS_DIRECTORY_ENV, DaemonConfig, GroupRef, LastKnownGoodConfig,
    MAX_SECRETS,
};
use daemon::{DEFAULT_BREAK_GLASS_MAX_TTL, validate_daemon};
#[cfg(test)]
pub(crate) use gsm::DEFAULT_GSM_REGIONAL_ENDPOINT;
pub(crate) use gsm::DEFAULT_REVOCATION_CONFIRM_WINDOW;
use gsm::validate_gsm;
pub(crate) use gsm::{FETCH_DEADLINE, GsmConfig, NotificationsConfig, is_version_number};
use policy::validate_policy;
pub(crate) use policy::{PolicyConfig, Selectors};
use raw::RawConfig;
use secrets::validate_secret;
pub(crate) use secrets::{SecretConfig, SourceConfig};
use values::positive_duration_or;

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
    /// The TOML is malformed or has unknown or mistyped keys (the parser's error, with the
    /// line and column, is the source).
    #[error("invalid config: {0}")]
    Parse(#[source] toml::de::Error),
    /// The TOML parsed but a value is not acceptable.
    #[error("invalid config: {0}")]
    Invalid(String),
}

pub(super) fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
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
    /// Which systemd units may load which secrets as credentials.
    pub credentials: Vec<CredentialGrant>,
}

/// With notifications on, every GSM secret must be recognisable in a message from the start:
/// GSM names secrets there by project number, and a host that starts during an outage has
/// learned none from an answer.
fn check_notifications_can_name(
    gsm: &GsmConfig,
    secrets: &[SecretConfig],
) -> Result<(), ConfigError> {
    for s in secrets {
        let SourceConfig::Gsm { resource, .. } = &s.source else {
            continue;
        };
        if !gsm::names_project_number(resource) && gsm.numbered(resource).is_none() {
            return Err(invalid(format!(
                "secret {:?}: with [gsm.notifications], GSM names secrets by project number: \
                 set [gsm] project and project_number for {resource:?}'s project, or name it \
                 projects/NUMBER/secrets/...",
                s.name
            )));
        }
    }
    Ok(())
}

/// `[break_glass]`.
#[derive(Debug, Clone)]
pub(crate) struct BreakGlassConfig {
    /// The RSA private key that opens break-glass envelopes.
    pub private_key: PathBuf,
    /// The longest TTL an override may ask for.
    pub max_ttl: Duration,
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

    /// Parses and validates config text, finding keys the file does not name in systemd's
    /// credentials directory (`$CREDENTIALS_DIRECTORY`) when there is one.
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Config::parse_in(text, credentials.as_deref())
    }

    /// [`Config::parse`] with the credentials directory given (`None`: there is none).
    pub(crate) fn parse_in(text: &str, credentials: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(ConfigError::Parse)?;
        let daemon = validate_daemon(raw.daemon, credentials)?;
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
        if let Some(gsm) = gsm.as_ref().filter(|g| g.notifications.is_some()) {
            check_notifications_can_name(gsm, &secrets)?;
        }
        let policies = raw
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| validate_policy(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = raw
            .credentials
            .into_iter()
            .enumerate()
            .map(|(i, c)| validate_credential(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        if daemon.credentials_socket.as_deref() == Some(daemon.socket.as_path()) {
            return Err(invalid(
                "daemon.credentials_socket must be another path than daemon.socket",
            ));
        }
        if !credentials.is_empty() && daemon.credentials_socket.is_none() {
            return Err(invalid(
                "[[credential]] is configured but daemon.credentials_socket is not: set it \
                 (the package's secretd-credentials.socket listens on \
                 /run/secretd/credentials.sock)",
            ));
        }
        Ok(Config {
            daemon,
            gsm,
            break_glass,
            secrets,
            policies,
            credentials,
        })
    }
}
