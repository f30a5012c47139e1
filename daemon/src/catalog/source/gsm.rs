//! Google Secret Manager through the official `google-cloud-secretmanager-v1` client.
//!
//! The refresh path calls AccessSecretVersion only: its quota is 90,000/min per project, while
//! metadata reads (GetSecret, ListSecretVersions) share 600/min and would cap a fleet near 750
//! hosts. Every attempt has a timeout and every fetch a retry budget, so a dead endpoint costs
//! seconds, not the client's default of a minute.
//!
//! Never format an `AccessSecretVersionResponse` or `SecretPayload` with `{:?}`: their Debug
//! prints the payload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use secretd_proto::SourceKind;
use zeroize::{Zeroize, Zeroizing};

use super::{FailureReason, FetchFuture, Fetched, PinError, Source, SourceError, check_value};
use crate::catalog::secret_bytes::SecretBytes;
use crate::config::GsmConfig;
use crate::util::lock::Recover;

/// Environment variable that makes the Google client log every response, payload included.
/// The daemon removes it from its environment before anything starts.
pub(crate) const GOOGLE_LOGGING_ENV: &str = "GOOGLE_CLOUD_RUST_LOGGING";

/// Longest GSM error message carried into logs and status.
const MAX_ERROR_MESSAGE: usize = 300;

/// Why the GSM client could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GsmSetupError {
    /// The credentials file could not be read.
    #[error("gsm.credentials_file {}: {source}", path.display())]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The credentials file is not a service-account key.
    #[error("gsm.credentials_file {}: {why}", path.display())]
    NotServiceAccount {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        why: &'static str,
    },
    /// google-cloud-auth refused the key.
    #[error("gsm.credentials_file {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// google-cloud-auth's reason.
        source: google_cloud_auth::build_errors::Error,
    },
    /// Application Default Credentials could not be set up.
    #[error("cannot set up Application Default Credentials: {0}")]
    Adc(#[source] google_cloud_auth::build_errors::Error),
    /// The retry backoff could not be built (a bug in the constants below).
    #[error("cannot create the Secret Manager client: {0}")]
    Backoff(#[source] google_cloud_gax::exponential_backoff::Error),
    /// The client could not be built.
    #[error("cannot create the Secret Manager client: {0}")]
    Client(#[source] google_cloud_gax::client_builder::Error),
}

/// Builds the one Secret Manager client every GSM secret shares.
pub(crate) async fn connect(cfg: &GsmConfig) -> Result<SecretManagerService, GsmSetupError> {
    let backoff = ExponentialBackoffBuilder::new()
        .with_initial_delay(Duration::from_millis(200))
        .with_maximum_delay(Duration::from_secs(2))
        .build()
        .map_err(GsmSetupError::Backoff)?;
    let builder = SecretManagerService::builder()
        .with_endpoint(cfg.endpoint.clone())
        .with_retry_policy(
            Aip194Strict
                .with_attempt_limit(cfg.max_attempts)
                .with_time_limit(cfg.retry_budget),
        )
        .with_backoff_policy(backoff)
        .with_attempt_timeout(cfg.attempt_timeout);
    let credentials = if cfg.anonymous {
        google_cloud_auth::credentials::anonymous::Builder::new().build()
    } else if let Some(path) = &cfg.credentials_file {
        service_account_credentials(path)?
    } else {
        google_cloud_auth::credentials::Builder::default()
            .build()
            .map_err(GsmSetupError::Adc)?
    };
    builder
        .with_credentials(credentials)
        .build()
        .await
        .map_err(GsmSetupError::Client)
}

fn service_account_credentials(
    path: &Path,
) -> Result<google_cloud_auth::credentials::Credentials, GsmSetupError> {
    // The key file holds a private key: keep our copy of the text in wiped memory.
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        GsmSetupError::CredentialsFile {
            path: path.to_owned(),
            source,
        }
    })?);
    let not_service_account = |why| GsmSetupError::NotServiceAccount {
        path: path.to_owned(),
        why,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| not_service_account("is not a JSON key file"))?;
    if json.get("type").and_then(|t| t.as_str()) != Some("service_account") {
        return Err(not_service_account(
            "is not a service-account key; for other credential kinds use \
             GOOGLE_APPLICATION_CREDENTIALS (Application Default Credentials)",
        ));
    }
    google_cloud_auth::credentials::service_account::Builder::new(json)
        .build()
        .map_err(|source| GsmSetupError::Credentials {
            path: path.to_owned(),
            source,
        })
}

/// One catalog entry's secret version in GSM.
#[derive(Debug)]
pub(crate) struct GsmSource {
    /// The shared client.
    client: SecretManagerService,
    /// `projects/P/secrets/S`.
    resource: String,
    /// The configured version alias (`latest` or a number).
    alias: String,
    /// A version pinned by a rotation in progress, overriding the alias.
    pinned: std::sync::Mutex<Option<String>>,
}

impl GsmSource {
    /// A source for `resource` (`projects/P/secrets/S`) at `version` (`latest` or a number).
    pub(crate) fn new(client: SecretManagerService, resource: &str, version: &str) -> GsmSource {
        GsmSource {
            client,
            resource: resource.to_owned(),
            alias: version.to_owned(),
            pinned: std::sync::Mutex::new(None),
        }
    }

    fn version_name(&self) -> String {
        let pinned = self.pinned.lock().recover();
        format!(
            "{}/versions/{}",
            self.resource,
            pinned.as_deref().unwrap_or(&self.alias)
        )
    }

    async fn access(&self) -> Result<Fetched, SourceError> {
        let version_name = self.version_name();
        let response = self
            .client
            .access_secret_version()
            .set_name(version_name.clone())
            .send()
            .await
            .map_err(|e| map_error(&version_name, &e))?;
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
        let checked = verify_payload(&payload.data, payload.data_crc32c)
            .map(|()| SecretBytes::copy_from(&payload.data));
        wipe(payload.data);
        Ok(Fetched {
            value: checked.map_err(|e| {
                SourceError::new(e.reason, format!("{version_name}: {}", e.message))
            })?,
            version: Some(version.to_owned()),
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
        Box::pin(self.access())
    }

    fn pin_version(&self, version: Option<&str>) -> Result<(), PinError> {
        if let Some(v) = version
            && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v == "0")
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

fn clip(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_MESSAGE)
        .collect();
    one_line.trim().to_owned()
}

/// Maps a client error to a failure category. Only texts that cannot contain payload bytes
/// are carried over: GSM's own status message, HTTP codes, network errors; never a
/// deserializer's message, which may quote the response body.
fn map_error(name: &str, e: &GaxError) -> SourceError {
    use FailureReason as R;
    if let Some(status) = e.status() {
        let reason = match status.code {
            Code::NotFound | Code::FailedPrecondition => R::NotFound,
            Code::PermissionDenied | Code::Unauthenticated => R::PermissionDenied,
            Code::DeadlineExceeded => R::Timeout,
            _ => R::Unavailable,
        };
        return SourceError::new(
            reason,
            format!(
                "GSM {:?} for {name}: {}",
                status.code,
                clip(&status.message)
            ),
        );
    }
    if e.is_timeout() {
        return SourceError::new(R::Timeout, format!("GSM did not answer in time for {name}"));
    }
    if e.is_authentication() {
        return SourceError::new(
            R::PermissionDenied,
            format!("cannot obtain GSM credentials: {}", clip(&e.to_string())),
        );
    }
    if e.is_deserialization() {
        return SourceError::new(
            R::InvalidPayload,
            format!("GSM sent a response for {name} that does not parse (bad JSON or base64)"),
        );
    }
    if let Some(code) = e.http_status_code() {
        let reason = match code {
            404 => R::NotFound,
            401 | 403 => R::PermissionDenied,
            _ => R::Unavailable,
        };
        return SourceError::new(
            reason,
            format!("GSM answered HTTP {code} without a JSON error for {name}"),
        );
    }
    if e.is_exhausted() {
        return SourceError::new(
            R::Unavailable,
            format!("GSM retry budget exhausted for {name}"),
        );
    }
    SourceError::new(
        R::Unavailable,
        format!("cannot reach GSM for {name}: {}", clip(&e.to_string())),
    )
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
    fn errors_are_categorised_and_clipped() {
        let status = google_cloud_gax::error::rpc::Status::default()
            .set_code(Code::NotFound)
            .set_message("Secret [x] not found or has no versions.");
        let e = map_error(
            "projects/p/secrets/x/versions/latest",
            &GaxError::service(status),
        );
        assert_eq!(e.reason, FailureReason::NotFound);
        assert!(e.message.contains("not found"));
        let long = "y".repeat(1000);
        assert_eq!(clip(&long).len(), MAX_ERROR_MESSAGE);
        assert_eq!(clip("a\nb"), "a b");
    }
}
