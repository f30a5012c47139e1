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
use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use secretd_proto::SourceKind;
use zeroize::{Zeroize, Zeroizing};

use super::{
    FailureReason, FetchFuture, Fetched, PinError, ScheduleFuture, Source, SourceError, check_value,
};
use crate::catalog::secret_bytes::SecretBytes;
use crate::config::GsmConfig;
use crate::util::lock::Recover;

/// Environment variable that makes the Google client log every response, payload included.
/// The daemon removes it from its environment before anything starts.
pub(crate) const GOOGLE_LOGGING_ENV: &str = "GOOGLE_CLOUD_RUST_LOGGING";

/// Longest GSM error message carried into logs and status.
const MAX_ERROR_MESSAGE: usize = 300;

/// How long the startup probe waits for a first token before it says what is wrong.
pub(crate) const CREDENTIALS_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The line logged when Application Default Credentials find nothing at all.
const NO_CREDENTIALS: &str =
    "no Google credentials: set credentials_file, GOOGLE_APPLICATION_CREDENTIALS, or run on GCE";

/// Why the GSM client could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GsmSetupError {
    /// The credentials file could not be read.
    #[error("Google credentials file {}: {source}", path.display())]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The credentials file is not one google-cloud-auth can use.
    #[error("Google credentials file {}: {why}", path.display())]
    UnsupportedCredentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        why: String,
    },
    /// google-cloud-auth refused the file.
    #[error("Google credentials file {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// google-cloud-auth's reason.
        source: google_cloud_auth::build_errors::Error,
    },
    /// The metadata-server credentials could not be set up.
    #[error("cannot set up metadata-server credentials: {0}")]
    MetadataServer(#[source] google_cloud_auth::build_errors::Error),
    /// The retry backoff could not be built (a bug in the constants below).
    #[error("cannot create the Secret Manager client: {0}")]
    Backoff(#[source] google_cloud_gax::exponential_backoff::Error),
    /// The client could not be built.
    #[error("cannot create the Secret Manager client for {endpoint}: {source}")]
    Client {
        /// The endpoint it was for.
        endpoint: String,
        /// The builder's reason.
        source: google_cloud_gax::client_builder::Error,
    },
}

/// Which kind of Google credentials the daemon holds, as logged (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialKind {
    /// The GCE/GKE metadata server (the last step of Application Default Credentials).
    MetadataServer,
    /// A service-account key (self-signed JWTs, no token endpoint).
    ServiceAccount,
    /// Workload identity federation (an STS exchange of an external subject token).
    ExternalAccount,
    /// A service account impersonated by other credentials.
    Impersonated,
    /// A user's refresh token (`gcloud auth application-default login`).
    AuthorizedUser,
    /// No credentials (emulators and tests).
    Anonymous,
}

impl CredentialKind {
    /// The stable name logged as `type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CredentialKind::MetadataServer => "metadata_server",
            CredentialKind::ServiceAccount => "service_account",
            CredentialKind::ExternalAccount => "external_account",
            CredentialKind::Impersonated => "impersonated",
            CredentialKind::AuthorizedUser => "authorized_user",
            CredentialKind::Anonymous => "anonymous",
        }
    }
}

/// The credentials every GSM client of this daemon shares, and what to log about them.
#[derive(Debug, Clone)]
pub(crate) struct GoogleCredentials {
    /// What the clients send.
    credentials: Credentials,
    /// Which kind they are.
    pub(crate) kind: CredentialKind,
    /// Where they came from (a file, or Application Default Credentials' last step).
    origin: String,
    /// The account, when the file names it (the metadata server is asked at the probe).
    account: Option<String>,
}

impl GoogleCredentials {
    /// The credentials themselves, for another Google client (Pub/Sub).
    pub(crate) fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }
}

/// Resolves the credentials as Application Default Credentials would, keeping track of which
/// kind they are: `anonymous`, else `credentials_file`, else `$GOOGLE_APPLICATION_CREDENTIALS`,
/// else gcloud's well-known file, else the metadata server.
pub(crate) fn credentials(cfg: &GsmConfig) -> Result<GoogleCredentials, GsmSetupError> {
    if cfg.anonymous {
        return Ok(GoogleCredentials {
            credentials: google_cloud_auth::credentials::anonymous::Builder::new().build(),
            kind: CredentialKind::Anonymous,
            origin: "gsm.anonymous".into(),
            account: None,
        });
    }
    let file = cfg
        .credentials_file
        .clone()
        .or_else(|| {
            std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| well_known_file().filter(|p| p.exists()));
    match file {
        Some(path) => from_file(&path),
        None => Ok(GoogleCredentials {
            credentials: with_quota(
                google_cloud_auth::credentials::mds::Builder::default(),
                |b, q| b.with_quota_project_id(q),
            )
            .build()
            .map_err(GsmSetupError::MetadataServer)?,
            kind: CredentialKind::MetadataServer,
            origin: "the metadata server".into(),
            account: None,
        }),
    }
}

/// The environment variable naming the project calls are billed to (Application Default
/// Credentials' `GOOGLE_CLOUD_QUOTA_PROJECT`; it outranks a `quota_project_id` in the file).
pub(crate) const QUOTA_PROJECT_ENV: &str = "GOOGLE_CLOUD_QUOTA_PROJECT";

/// `builder` with the quota project from [`QUOTA_PROJECT_ENV`], when it is set: only the crate's
/// own ADC builder reads the variable, and the daemon builds each credential type itself. The
/// calls then carry `x-goog-user-project` (and need `serviceusage.services.use` on it).
fn with_quota<B>(builder: B, set: impl FnOnce(B, String) -> B) -> B {
    match std::env::var(QUOTA_PROJECT_ENV) {
        Ok(project) if !project.trim().is_empty() => set(builder, project.trim().to_owned()),
        _ => builder,
    }
}

/// gcloud's Application Default Credentials file.
fn well_known_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".config/gcloud/application_default_credentials.json"))
}

/// Builds credentials from a JSON file, dispatching on its `type` to the builder
/// google-cloud-auth offers for it.
fn from_file(path: &Path) -> Result<GoogleCredentials, GsmSetupError> {
    use google_cloud_auth::credentials::user_account;
    use google_cloud_auth::credentials::{external_account, impersonated, service_account};
    // The file may hold a private key or a refresh token: keep our copy of the text in wiped
    // memory.
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        GsmSetupError::CredentialsFile {
            path: path.to_owned(),
            source,
        }
    })?);
    let unsupported = |why: String| GsmSetupError::UnsupportedCredentials {
        path: path.to_owned(),
        why,
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| unsupported("is not a JSON credentials file".into()))?;
    let text_of = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    // Impersonation URLs end in `serviceAccounts/EMAIL:generateAccessToken`.
    let impersonated_account = || {
        text_of("service_account_impersonation_url").and_then(|u| {
            let (_, tail) = u.rsplit_once("serviceAccounts/")?;
            Some(tail.split(':').next()?.to_owned())
        })
    };
    let kind_name = text_of("type").unwrap_or_default();
    let (kind, account) = match kind_name.as_str() {
        "service_account" => (CredentialKind::ServiceAccount, text_of("client_email")),
        "external_account" => (CredentialKind::ExternalAccount, impersonated_account()),
        "impersonated_service_account" => (CredentialKind::Impersonated, impersonated_account()),
        "authorized_user" => (CredentialKind::AuthorizedUser, None),
        other => {
            return Err(unsupported(format!(
                "has type {other:?}; supported are service_account, external_account, \
                 impersonated_service_account and authorized_user"
            )));
        }
    };
    let built = match kind {
        CredentialKind::ServiceAccount => {
            with_quota(service_account::Builder::new(json), |b, q| {
                b.with_quota_project_id(q)
            })
            .build()
        }
        CredentialKind::ExternalAccount => {
            with_quota(external_account::Builder::new(json), |b, q| {
                b.with_quota_project_id(q)
            })
            .build()
        }
        CredentialKind::Impersonated => with_quota(impersonated::Builder::new(json), |b, q| {
            b.with_quota_project_id(q)
        })
        .build(),
        _ => with_quota(user_account::Builder::new(json), |b, q| {
            b.with_quota_project_id(q)
        })
        .build(),
    };
    Ok(GoogleCredentials {
        credentials: built.map_err(|source| GsmSetupError::Credentials {
            path: path.to_owned(),
            source,
        })?,
        kind,
        origin: path.display().to_string(),
        account,
    })
}

/// Asks for a first token in the background (ADC never fails at build time: it falls back to
/// the metadata server), then logs `event="gsm.credentials"` with the kind and account, never
/// a token; or, within [`CREDENTIALS_PROBE_TIMEOUT`], one line saying what is missing. Serving
/// does not wait for it.
pub(crate) async fn probe(creds: GoogleCredentials) {
    if creds.kind == CredentialKind::Anonymous {
        tracing::info!(
            event = "gsm.credentials",
            r#type = "anonymous",
            "GSM requests carry no credentials"
        );
        return;
    }
    let headers = creds.credentials.headers(http::Extensions::new());
    let failure = match tokio::time::timeout(CREDENTIALS_PROBE_TIMEOUT, headers).await {
        Ok(Ok(_)) => {
            let account = match (&creds.account, creds.kind) {
                (Some(a), _) => a.clone(),
                (None, CredentialKind::MetadataServer) => metadata_account().await,
                (None, _) => "unknown".into(),
            };
            tracing::info!(
                event = "gsm.credentials",
                r#type = creds.kind.as_str(),
                account = %account,
                origin = %creds.origin,
                "Google credentials work"
            );
            return;
        }
        Ok(Err(e)) => clip(&e.to_string()),
        Err(_) => format!("no token within {}s", CREDENTIALS_PROBE_TIMEOUT.as_secs()),
    };
    if creds.kind == CredentialKind::MetadataServer {
        tracing::error!(
            event = "gsm.credentials",
            r#type = creds.kind.as_str(),
            error = %failure,
            "{NO_CREDENTIALS}"
        );
    } else {
        tracing::error!(
            event = "gsm.credentials",
            r#type = creds.kind.as_str(),
            account = creds.account.as_deref().unwrap_or("unknown"),
            origin = %creds.origin,
            error = %failure,
            "cannot obtain a Google token; GSM secrets fail until this is fixed"
        );
    }
}

/// The metadata server's default service account, for the log line ("unknown" if it will not
/// say).
async fn metadata_account() -> String {
    let Ok(signer) = google_cloud_auth::credentials::mds::Builder::default().build_signer() else {
        return "unknown".into();
    };
    match tokio::time::timeout(CREDENTIALS_PROBE_TIMEOUT, signer.client_email()).await {
        Ok(Ok(email)) => email,
        _ => "unknown".into(),
    }
}

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
        .with_credentials(creds.credentials.clone())
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

fn clip(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_MESSAGE)
        .collect();
    one_line.trim().to_owned()
}

/// Maps a client error to a failure category. Only texts that cannot contain payload bytes
/// or tokens are carried over: GSM's own status message, HTTP codes, network errors; never a
/// deserializer's message, which may quote the response body.
/// Whether a status's details say the API is disabled (`ErrorInfo` reason `SERVICE_DISABLED`).
fn service_disabled(details: &[google_cloud_gax::error::rpc::StatusDetails]) -> bool {
    details.iter().any(|d| {
        matches!(d, google_cloud_gax::error::rpc::StatusDetails::ErrorInfo(info)
            if info.reason == "SERVICE_DISABLED")
    })
}

fn map_error(name: &str, e: &GaxError) -> SourceError {
    use FailureReason as R;
    if let Some(status) = e.status() {
        if status.code == Code::PermissionDenied && service_disabled(&status.details) {
            return SourceError::new(
                R::ServiceDisabled,
                "the Secret Manager API is not enabled in the secret's project \
                 (SERVICE_DISABLED): enable it (gcloud services enable \
                 secretmanager.googleapis.com --project PROJECT); not retried before the next \
                 refresh",
            );
        }
        let reason = match status.code {
            Code::NotFound => R::NotFound,
            // GSM's answer for a disabled or destroyed version (and a disabled CMEK key).
            Code::FailedPrecondition => R::Disabled,
            Code::PermissionDenied => R::PermissionDenied,
            Code::Unauthenticated => R::Unauthenticated,
            Code::ResourceExhausted => R::RateLimited,
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
        // A metadata server answering 5xx or an STS out of reach heals by itself; a key GSM
        // refuses does not.
        let transient = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        return SourceError::new(
            if transient {
                R::Unavailable
            } else {
                R::Unauthenticated
            },
            format!("cannot obtain Google credentials: {}", clip(&e.to_string())),
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
            401 => R::Unauthenticated,
            403 => R::PermissionDenied,
            429 => R::RateLimited,
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

    // google-cloud-auth's builders start a token cache on the current runtime.
    #[tokio::test]
    async fn credential_files_dispatch_on_their_type() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, json: serde_json::Value| {
            let path = dir.path().join(name);
            std::fs::write(&path, json.to_string()).expect("write");
            path
        };
        let user = write(
            "user.json",
            serde_json::json!({"type": "authorized_user", "client_id": "c",
                "client_secret": "s", "refresh_token": "r"}),
        );
        let built = from_file(&user).expect("authorized_user");
        assert_eq!(
            (built.kind, built.account),
            (CredentialKind::AuthorizedUser, None)
        );
        let impersonated = write(
            "imp.json",
            serde_json::json!({"type": "impersonated_service_account",
                "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/reader@p.iam.gserviceaccount.com:generateAccessToken",
                "source_credentials": {"type": "authorized_user", "client_id": "c",
                    "client_secret": "s", "refresh_token": "r"}}),
        );
        let built = from_file(&impersonated).expect("impersonated");
        assert_eq!(built.kind, CredentialKind::Impersonated);
        assert_eq!(
            built.account.as_deref(),
            Some("reader@p.iam.gserviceaccount.com")
        );
        let unknown = write(
            "x.json",
            serde_json::json!({"type": "gdch_service_account"}),
        );
        let e = from_file(&unknown).expect_err("unsupported").to_string();
        assert!(
            e.contains("gdch_service_account") && e.contains("external_account"),
            "{e}"
        );
        let not_json = dir.path().join("bad.json");
        std::fs::write(&not_json, "-----BEGIN PRIVATE KEY-----").expect("write");
        let e = from_file(&not_json).expect_err("not json").to_string();
        assert!(!e.contains("PRIVATE"), "the content reached the error: {e}");
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
        for (code, reason) in [
            (Code::FailedPrecondition, FailureReason::Disabled),
            (Code::Unauthenticated, FailureReason::Unauthenticated),
            (Code::PermissionDenied, FailureReason::PermissionDenied),
            (Code::ResourceExhausted, FailureReason::RateLimited),
            (Code::Unavailable, FailureReason::Unavailable),
        ] {
            let status = google_cloud_gax::error::rpc::Status::default().set_code(code);
            assert_eq!(
                map_error("n", &GaxError::service(status)).reason,
                reason,
                "{code:?}"
            );
        }
        let long = "y".repeat(1000);
        assert_eq!(clip(&long).len(), MAX_ERROR_MESSAGE);
        assert_eq!(clip("a\nb"), "a b");
    }
}
