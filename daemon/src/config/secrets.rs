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
