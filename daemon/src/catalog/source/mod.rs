//! Where values come from. Every source implements [`Source`]; the refresher does not care
//! which one it drives.

mod env;
mod file;
pub(crate) mod gsm;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secretd_proto::SourceKind;

use super::secret_bytes::SecretBytes;
use crate::config::{Config, SourceConfig};

use env::EnvSource;
use file::FileSource;

/// The largest value any source may deliver (GSM's own payload limit).
pub(crate) const MAX_SECRET_LEN: usize = 64 * 1024;

/// A value fresh from its source.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The value.
    pub(crate) value: SecretBytes,
    /// The source's own version, when it has one (GSM's version number). Local sources leave
    /// it to the cache, which counts changes.
    pub(crate) version: Option<String>,
    /// GSM sent no CRC32C, so the payload could not be checked (counted in
    /// `omni_secret_missing_crc_total`).
    pub(crate) unverified: bool,
}

/// Why a fetch failed, in categories that decide retries, alerts and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FailureReason {
    /// The source says the secret or version does not exist.
    NotFound,
    /// The source knows the daemon's credentials but they may not read this secret (IAM).
    PermissionDenied,
    /// The source's API is not enabled in the project (GSM's `SERVICE_DISABLED`): a
    /// configuration step, not an outage and not IAM.
    ServiceDisabled,
    /// The source did not accept the daemon's credentials at all (no token, a forged or
    /// expired one, a key GSM does not know).
    Unauthenticated,
    /// The version exists but may not be read: disabled or destroyed in GSM (or its CMEK key
    /// is disabled). For the version being served, this is a revocation.
    Disabled,
    /// The source asked the daemon to slow down (GSM's 429 RESOURCE_EXHAUSTED).
    RateLimited,
    /// The source is down or overloaded, or credentials could not be obtained for now
    /// (metadata server 5xx, STS unreachable); retrying helps.
    Unavailable,
    /// The source did not answer in time.
    Timeout,
    /// The source answered with something that is not a usable value (too large, empty,
    /// corrupt).
    InvalidPayload,
}

impl FailureReason {
    /// Whether retrying soon may help (outages, timeouts, corruption in transit), as opposed
    /// to conditions an operator must fix (a missing secret, a refused credential, a disabled
    /// version). A 429 is neither: it has its own, longer backoff.
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            FailureReason::Unavailable | FailureReason::Timeout | FailureReason::InvalidPayload
        )
    }

    /// The stable snake_case name (metrics label, log field).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::NotFound => "not_found",
            FailureReason::PermissionDenied => "permission_denied",
            FailureReason::ServiceDisabled => "service_disabled",
            FailureReason::Unauthenticated => "unauthenticated",
            FailureReason::Disabled => "disabled",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Unavailable => "unavailable",
            FailureReason::Timeout => "timeout",
            FailureReason::InvalidPayload => "invalid_payload",
        }
    }
}

/// A failed fetch. The message describes the failure, never the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct SourceError {
    /// The category.
    pub(crate) reason: FailureReason,
    /// A sentence for operators.
    pub(crate) message: String,
}

impl SourceError {
    /// Builds an error.
    pub(crate) fn new(reason: FailureReason, message: impl Into<String>) -> SourceError {
        SourceError {
            reason,
            message: message.into(),
        }
    }
}

/// What a source's fetch returns.
pub(crate) type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Fetched, SourceError>> + Send + 'a>>;

/// What a read of a secret's rotation schedule returns: GSM's `rotation.next_rotation_time`
/// in nanoseconds since the Unix epoch, `None` when the secret has no schedule.
pub(crate) type ScheduleFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<i128>, SourceError>> + Send + 'a>>;

/// A place a value can be fetched from.
pub(crate) trait Source: Send + Sync + std::fmt::Debug {
    /// Which kind of source this is.
    fn kind(&self) -> SourceKind;

    /// Where the value lives, for logs (`env TRADING_API_KEY`, `file /etc/...`): never the value.
    fn describe(&self) -> String;

    /// Fetches the current value.
    fn fetch(&self) -> FetchFuture<'_>;

    /// The names GSM may use for this secret in its notifications (`secretId`): the configured
    /// resource and, once an access answered, the same with the project number. Empty for
    /// sources that are not GSM.
    fn gsm_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Fetches exactly `version`, for sources with versions (`None` otherwise). Used once, when
    /// the configured alias points at a version the source refuses, to learn whether the
    /// version being served is still allowed or was revoked too.
    fn fetch_version(&self, version: &str) -> Option<FetchFuture<'_>> {
        let _ = version;
        None
    }

    /// Whether the source serves its newest version (GSM's `latest`, no rotation pin): a
    /// version announced by number may be read by number before `latest` shows it, and an
    /// older answer from `latest` than the version served is `latest` lagging, not a change.
    fn follows_latest(&self) -> bool {
        false
    }

    /// The GSM alias the source serves (`prod`), when it serves one and no rotation pins a
    /// version: an alias converges eventually after it moves, so a notification that says
    /// where it points now is followed by re-reading the alias until it agrees.
    fn alias(&self) -> Option<&str> {
        None
    }

    /// Reads the secret's rotation schedule, for sources that have one (`None` otherwise):
    /// a `SECRET_ROTATE` message is believed only when the schedule moved.
    fn rotation_schedule(&self) -> Option<ScheduleFuture<'_>> {
        None
    }

    /// Pins a specific version (a rotation being validated), or returns to the configured
    /// alias with `None`. Only sources with versions support it.
    fn pin_version(&self, version: Option<&str>) -> Result<(), PinError> {
        let _ = version;
        Err(PinError::Unversioned(self.describe()))
    }
}

/// Why a version cannot be pinned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    /// The source has no versions (env, file).
    #[error("{0} has no versions; only gsm secrets can be rotated")]
    Unversioned(String),
    /// The text is not a version number.
    #[error("version {0:?} is not a GSM version number")]
    NotAVersion(String),
}

/// Why the sources could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The GSM client could not be created.
    #[error(transparent)]
    Gsm(#[from] gsm::GsmSetupError),
    /// A GSM secret without a `[gsm]` section (config validation prevents this).
    #[error("secret {name:?} uses GSM but there is no [gsm] section")]
    NoGsm {
        /// The secret.
        name: String,
    },
}

/// The sources of every catalog entry, in config order, and what must run beside them.
#[derive(Debug)]
pub(crate) struct Built {
    /// One source per `[[secret]]`.
    pub(crate) sources: Vec<Arc<dyn Source>>,
    /// The Google credentials, when some secret uses GSM: their startup probe logs what they
    /// are and whether they work.
    pub(crate) google: Option<gsm::GoogleCredentials>,
}

/// Builds the source of every catalog entry, in config order. Google credentials are resolved
/// once, and one GSM client is created per endpoint used (the global one, and one per region
/// of a regional secret), only when some secret needs it.
pub(crate) async fn build_all(config: &Config) -> Result<Built, BuildError> {
    let google = match &config.gsm {
        Some(gsm)
            if config
                .secrets
                .iter()
                .any(|s| s.source.kind() == SourceKind::Gsm) =>
        {
            Some(gsm::credentials(gsm)?)
        }
        _ => None,
    };
    let mut clients = std::collections::HashMap::new();
    let mut sources: Vec<Arc<dyn Source>> = Vec::with_capacity(config.secrets.len());
    for secret in &config.secrets {
        sources.push(match &secret.source {
            SourceConfig::Env { var } => Arc::new(EnvSource::new(var.clone())),
            SourceConfig::File { path } => Arc::new(FileSource::new(path.clone())),
            SourceConfig::Gsm { resource, version } => {
                let (Some(cfg), Some(creds)) = (&config.gsm, &google) else {
                    return Err(BuildError::NoGsm {
                        name: secret.name.clone(),
                    });
                };
                let endpoint = match gsm::location_of(resource) {
                    Some(location) => gsm::regional_endpoint(&cfg.regional_endpoint, location),
                    None => cfg.endpoint.clone(),
                };
                let client = match clients.get(&endpoint) {
                    Some(c) => Clone::clone(c),
                    None => {
                        let c = gsm::connect(cfg, &endpoint, creds).await?;
                        clients.insert(endpoint, c.clone());
                        c
                    }
                };
                let mut source = gsm::GsmSource::new(client, resource, version, cfg.require_crc32c);
                if let Some(numbered) = cfg.numbered(resource) {
                    source = source.also_named(numbered);
                }
                Arc::new(source)
            }
        });
    }
    Ok(Built { sources, google })
}

/// Reads at most [`MAX_SECRET_LEN`] + 1 bytes into a fixed scratch buffer and copies the
/// exact value out: no growing `Vec`, so no stray copies. Returns the value and whether the
/// input was longer than the limit.
pub(crate) fn read_bounded(
    reader: &mut impl std::io::Read,
) -> std::io::Result<(SecretBytes, bool)> {
    let mut scratch = zeroize::Zeroizing::new(vec![0u8; MAX_SECRET_LEN + 1]);
    let mut len = 0;
    while len < scratch.len() {
        match reader.read(&mut scratch[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((
        SecretBytes::copy_from(&scratch[..len.min(MAX_SECRET_LEN)]),
        len > MAX_SECRET_LEN,
    ))
}

/// Checks a fetched value against the limits every source shares.
pub(crate) fn check_value(len: usize) -> Result<(), SourceError> {
    if len == 0 {
        return Err(SourceError::new(
            FailureReason::InvalidPayload,
            "the value is empty",
        ));
    }
    if len > MAX_SECRET_LEN {
        return Err(SourceError::new(
            FailureReason::InvalidPayload,
            format!("the value is larger than {MAX_SECRET_LEN} bytes"),
        ));
    }
    Ok(())
}
