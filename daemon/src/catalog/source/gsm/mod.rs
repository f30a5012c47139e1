//! Google Secret Manager through the official `google-cloud-secretmanager-v1` client.
//!
//! The refresh path calls AccessSecretVersion only: its quota is 90,000/min per project, while
//! metadata reads (GetSecret, ListSecretVersions) share 600/min and would cap a fleet near 750
//! hosts. Every attempt has a timeout and every fetch a retry budget, so a dead endpoint costs
//! seconds, not the client's default of a minute.
//!
//! Never format an `AccessSecretVersionResponse` or `SecretPayload` with `{:?}`: their Debug
//! prints the payload.

mod credentials;
mod errors;

use std::time::Duration;

use bytes::Bytes;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use secretd_proto::SourceKind;
use zeroize::Zeroize;

use super::{
    FailureReason, FetchFuture, Fetched, PinError, ScheduleFuture, Source, SourceError, check_value,
};
use crate::catalog::secret_bytes::SecretBytes;
use crate::config::GsmConfig;
use crate::util::lock::Recover;
pub(crate) use credentials::{GoogleCredentials, GsmSetupError, credentials, probe};
use errors::map_error;

/// Environment variable that makes the Google client log every response, payload included.
/// The daemon removes it from its environment before anything starts.
pub(crate) const GOOGLE_LOGGING_ENV: &str = "GOOGLE_CLOUD_RUST_LOGGING";

/// Builds a Secret Manager client for `endpoint` (the global one, or a region's).
pub(crate) async fn connect(
    cfg: &GsmConfig,
    endpoint: &str,
    creds: &GoogleCredentials,
) -> Result<SecretManagerService, GsmSetupError> {
    let backoff = ExponentialBackoffBuilder::new()
        .with_initial_delay(Duration::from_millis(200))
        .with_maximum_delay(Duration::from_secs(2))
        .build()
        .map_err(GsmSetupError::Backoff)?;
    SecretManagerService::builder()
        .with_endpoint(endpoint.to_owned())
        .with_retry_policy(
            Aip194Strict
                .with_attempt_limit(cfg.max_attempts)
                .with_time_limit(cfg.retry_budget),
        )
        .with_backoff_policy(backoff)
        .with_attempt_timeout(cfg.attempt_timeout)
        .with_credentials(creds.credentials())
        .build()
        .await
        .map_err(|source| GsmSetupError::Client {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// The location of a regional secret (`projects/P/locations/L/secrets/S`), `None` for a
/// global one.
pub(crate) fn location_of(resource: &str) -> Option<&str> {
    let mut parts = resource.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("projects"), Some(_), Some("locations"), Some(location)) => Some(location),
        _ => None,
    }
}

/// The endpoint serving `location`: `regional_endpoint` with `{location}` substituted.
pub(crate) fn regional_endpoint(template: &str, location: &str) -> String {
    template.replace("{location}", location)
}

/// One catalog entry's secret version in GSM.
#[derive(Debug)]
pub(crate) struct GsmSource {
    /// The client for the secret's endpoint (global or regional).
    client: SecretManagerService,
    /// `projects/P/secrets/S` or `projects/P/locations/L/secrets/S`.
    resource: String,
    /// The configured version: `latest`, an alias such as `prod`, or a number.
    alias: String,
    /// A version pinned by a rotation in progress, overriding the alias.
    pinned: std::sync::Mutex<Option<String>>,
    /// Refuse payloads without a CRC32C (`[gsm] require_crc32c`).
    require_crc32c: bool,
    /// The secret's name as GSM answers it (`projects/NUMBER/...`), learned from an access:
    /// notifications name secrets this way.
    answered_as: std::sync::Mutex<Option<String>>,
    /// The same name from the config (`[gsm] project_number`), known before any access.
    configured_number: Option<String>,
}

impl GsmSource {
    /// A source for `resource` at `version` (`latest`, an alias, or a number).
    pub(crate) fn new(
        client: SecretManagerService,
        resource: &str,
        version: &str,
        require_crc32c: bool,
    ) -> GsmSource {
        GsmSource {
            client,
            resource: resource.to_owned(),
            alias: version.to_owned(),
            pinned: std::sync::Mutex::new(None),
            require_crc32c,
            answered_as: std::sync::Mutex::new(None),
            configured_number: None,
        }
    }

    /// Also recognises the secret under `numbered` (its name with the project number).
    pub(crate) fn also_named(mut self, numbered: String) -> GsmSource {
        self.configured_number = Some(numbered);
        self
    }

    fn version_name(&self) -> String {
        let pinned = self.pinned.lock().recover();
        format!(
            "{}/versions/{}",
            self.resource,
            pinned.as_deref().unwrap_or(&self.alias)
        )
    }

    async fn access(&self, version_name: String) -> Result<Fetched, SourceError> {
        let response = self
            .client
            .access_secret_version()
            .set_name(version_name.clone())
            .send()
            .await
            .map_err(|e| map_error(&version_name, &e))?;
        if let Some((secret, _)) = response.name.rsplit_once("/versions/") {
            let mut answered = self.answered_as.lock().recover();
            if answered.as_deref() != Some(secret) {
                *answered = Some(secret.to_owned());
            }
        }
        let version = resolved_version(&response.name).ok_or_else(|| {
            SourceError::new(
                FailureReason::InvalidPayload,
                format!("GSM response for {version_name} names no version"),
            )
        })?;
        let payload = response.payload.ok_or_else(|| {
            SourceError::new(
                FailureReason::InvalidPayload,
                format!("GSM response for {version_name} has no payload"),
            )
        })?;
        let unverified = payload.data_crc32c.is_none();
        let checked = if unverified && self.require_crc32c {
            Err(SourceError::new(
                FailureReason::InvalidPayload,
                "GSM sent no dataCrc32c and [gsm] require_crc32c is set",
            ))
        } else {
            verify_payload(&payload.data, payload.data_crc32c)
                .map(|()| SecretBytes::copy_from(&payload.data))
        };
        wipe(payload.data);
        Ok(Fetched {
            value: checked.map_err(|e| {
                SourceError::new(e.reason, format!("{version_name}: {}", e.message))
            })?,
            version: Some(version.to_owned()),
            unverified,
        })
    }
}

impl Source for GsmSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Gsm
    }

    fn describe(&self) -> String {
        format!("gsm {}", self.version_name())
    }

    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.access(self.version_name()))
    }

    fn gsm_names(&self) -> Vec<String> {
        let mut names = vec![self.resource.clone()];
        names.extend(self.configured_number.clone());
        names.extend(self.answered_as.lock().recover().clone());
        names
    }

    fn fetch_version(&self, version: &str) -> Option<FetchFuture<'_>> {
        let name = format!("{}/versions/{version}", self.resource);
        Some(Box::pin(self.access(name)))
    }

    fn follows_latest(&self) -> bool {
        self.alias == "latest" && self.pinned.lock().recover().is_none()
    }

    fn alias(&self) -> Option<&str> {
        let named = self.alias != "latest" && !crate::config::is_version_number(&self.alias);
        (named && self.pinned.lock().recover().is_none()).then_some(self.alias.as_str())
    }

    fn rotation_schedule(&self) -> Option<ScheduleFuture<'_>> {
        Some(Box::pin(async move {
            let secret = self
                .client
                .get_secret()
                .set_name(self.resource.clone())
                .send()
                .await
                .map_err(|e| map_error(&self.resource, &e))?;
            Ok(secret
                .rotation
                .and_then(|r| r.next_rotation_time)
                .map(|t| i128::from(t.seconds()) * 1_000_000_000 + i128::from(t.nanos())))
        }))
    }

    fn pin_version(&self, version: Option<&str>) -> Result<(), PinError> {
        if let Some(v) = version
            && !crate::config::is_version_number(v)
        {
            return Err(PinError::NotAVersion(v.to_owned()));
        }
        *self.pinned.lock().recover() = version.map(str::to_owned);
        Ok(())
    }
}

/// The numeric version at the end of a version resource name (`latest` comes back resolved).
fn resolved_version(name: &str) -> Option<&str> {
    let (_, v) = name.rsplit_once("/versions/")?;
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then_some(v)
}

/// Checks size limits and, when GSM sent one, the CRC32C (Castagnoli) of the payload. The
/// client library does not verify it; we must.
fn verify_payload(data: &[u8], crc: Option<i64>) -> Result<(), SourceError> {
    check_value(data.len())?;
    if let Some(expected) = crc {
        let actual = i64::from(crc32c::crc32c(data));
        if actual != expected {
            return Err(SourceError::new(
                FailureReason::InvalidPayload,
                "payload CRC32C does not match dataCrc32c (corrupted in transit?)",
            ));
        }
    }
    Ok(())
}

/// Wipes the payload buffer when we are its only owner (the usual case after decoding).
fn wipe(data: Bytes) {
    if let Ok(mut unique) = data.try_into_mut() {
        unique[..].zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_crc() {
        assert_eq!(
            resolved_version("projects/p/secrets/s/versions/12"),
            Some("12")
        );
        assert_eq!(
            resolved_version("projects/p/secrets/s/versions/latest"),
            None
        );
        assert_eq!(resolved_version(""), None);
        let data = b"hello";
        let crc = i64::from(crc32c::crc32c(data));
        assert!(verify_payload(data, Some(crc)).is_ok());
        assert!(verify_payload(data, None).is_ok());
        let bad = verify_payload(data, Some(crc + 1)).expect_err("mismatch");
        assert_eq!(bad.reason, FailureReason::InvalidPayload);
        // Known vector: CRC32C("123456789") = 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert!(verify_payload(&[], None).is_err());
        assert!(verify_payload(&vec![0; super::super::MAX_SECRET_LEN + 1], None).is_err());
    }

    #[test]
    fn regional_secrets_find_their_endpoint() {
        assert_eq!(
            location_of("projects/p/locations/europe-west4/secrets/s"),
            Some("europe-west4")
        );
        assert_eq!(location_of("projects/p/secrets/s"), None);
        assert_eq!(
            regional_endpoint(crate::config::DEFAULT_GSM_REGIONAL_ENDPOINT, "us-east1"),
            "https://secretmanager.us-east1.rep.googleapis.com"
        );
    }
}
