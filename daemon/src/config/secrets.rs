//! `[[secret]]`: the catalog, one entry per secret, each with its source.

use std::path::PathBuf;
use std::time::Duration;

use secretd_proto::{SourceKind, validate_name};

use super::daemon::{DaemonConfig, MIN_TTL};
use super::gsm::{
    GsmConfig, MIN_GSM_TTL, check_endpoint, is_version_or_alias, validate_gcp_resource,
};
use super::raw::RawSecret;
use super::values::duration_or;
use super::{ConfigError, invalid};

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

pub(super) fn validate_secret(
    s: RawSecret,
    daemon: &DaemonConfig,
    gsm: Option<&GsmConfig>,
) -> Result<SecretConfig, ConfigError> {
    validate_name(&s.name).map_err(|e| invalid(format!("secret {:?}: {e}", s.name)))?;
    let keys = SourceKeys {
        name: &s.name,
        source: &s.source,
        gcp_secret: s.gcp_secret,
        version: s.version,
        env: s.env,
        path: s.path,
    };
    let source = match s.source.as_str() {
        "gsm" => gsm_source(keys, gsm)?,
        "env" => env_source(keys)?,
        "file" => file_source(keys)?,
        other => {
            return Err(invalid(format!(
                "secret {:?}: source = {other:?} is not one of \"gsm\", \"env\", \"file\"",
                s.name
            )));
        }
    };
    let ttl = secret_ttl(&s.name, s.ttl, &source, daemon)?;
    Ok(SecretConfig {
        name: s.name,
        source,
        ttl,
        owner: s.owner,
        environment: s.environment,
    })
}

/// The source keys of one `[[secret]]`: each source takes its own and refuses the others'.
struct SourceKeys<'a> {
    /// The secret's name, for errors.
    name: &'a str,
    /// `source`, for errors.
    source: &'a str,
    /// `gcp_secret` (gsm).
    gcp_secret: Option<String>,
    /// `version` (gsm).
    version: Option<String>,
    /// `env` (env).
    env: Option<String>,
    /// `path` (file).
    path: Option<PathBuf>,
}

impl SourceKeys<'_> {
    /// Refuses `key` when it is set: it belongs to another source.
    fn foreign(&self, key: &str, present: bool) -> Result<(), ConfigError> {
        if present {
            return Err(invalid(format!(
                "secret {:?}: `{key}` does not apply to source {:?}",
                self.name, self.source
            )));
        }
        Ok(())
    }

    /// The error for a missing `key` this source needs.
    fn required(&self, key: &str) -> ConfigError {
        invalid(format!(
            "secret {:?}: source {:?} needs `{key}`",
            self.name, self.source
        ))
    }
}

/// `source = "gsm"`: a resource (a bare id lives in `[gsm] project`) and a version or alias.
fn gsm_source(keys: SourceKeys<'_>, gsm: Option<&GsmConfig>) -> Result<SourceConfig, ConfigError> {
    let name = keys.name;
    keys.foreign("path", keys.path.is_some())?;
    keys.foreign("env", keys.env.is_some())?;
    let Some(gsm) = gsm else {
        return Err(invalid(format!(
            "secret {name:?} uses source \"gsm\" but there is no [gsm] section"
        )));
    };
    let short = keys
        .gcp_secret
        .clone()
        .ok_or_else(|| keys.required("gcp_secret"))?;
    let resource = match (&gsm.project, short.contains('/')) {
        (Some(project), false) => format!("projects/{project}/secrets/{short}"),
        _ => short,
    };
    validate_gcp_resource(name, &resource)?;
    if gsm.anonymous && resource.contains("/locations/") {
        check_endpoint("gsm.regional_endpoint", &gsm.regional_endpoint, true)?;
    }
    let version = keys.version.unwrap_or_else(|| "latest".into());
    if !is_version_or_alias(&version) {
        return Err(invalid(format!(
            "secret {name:?}: version = {version:?} must be \"latest\", a version \
             number, or a GSM version alias (a letter, then letters, digits, - or _; not \
             \"new\" or another case of \"latest\", which GSM reserves)"
        )));
    }
    Ok(SourceConfig::Gsm { resource, version })
}

/// `source = "env"`: a variable name.
fn env_source(keys: SourceKeys<'_>) -> Result<SourceConfig, ConfigError> {
    keys.foreign("gcp_secret", keys.gcp_secret.is_some())?;
    keys.foreign("version", keys.version.is_some())?;
    keys.foreign("path", keys.path.is_some())?;
    let var = keys.env.clone().ok_or_else(|| keys.required("env"))?;
    if var.is_empty() || var.contains('=') || var.contains('\0') {
        return Err(invalid(format!(
            "secret {:?}: env = {var:?} is not a variable name",
            keys.name
        )));
    }
    Ok(SourceConfig::Env { var })
}

/// `source = "file"`: an absolute path.
fn file_source(keys: SourceKeys<'_>) -> Result<SourceConfig, ConfigError> {
    keys.foreign("gcp_secret", keys.gcp_secret.is_some())?;
    keys.foreign("version", keys.version.is_some())?;
    keys.foreign("env", keys.env.is_some())?;
    let path = keys.path.clone().ok_or_else(|| keys.required("path"))?;
    if !path.is_absolute() {
        return Err(invalid(format!(
            "secret {:?}: path {:?} must be absolute",
            keys.name,
            path.display()
        )));
    }
    Ok(SourceConfig::File { path })
}

/// `ttl`: the refresh interval by default, at least [`MIN_TTL`], and for GSM at least
/// [`MIN_GSM_TTL`] unless `allow_short_ttl` (short TTLs spend the access quota).
fn secret_ttl(
    name: &str,
    ttl: Option<String>,
    source: &SourceConfig,
    daemon: &DaemonConfig,
) -> Result<Duration, ConfigError> {
    let ttl = duration_or(
        &format!("secret {name:?} ttl"),
        ttl,
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
    Ok(ttl)
}
