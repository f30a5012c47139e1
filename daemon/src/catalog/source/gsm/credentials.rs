//! Which Google credentials the daemon holds: resolved as Application Default Credentials
//! would, each kind built with google-cloud-auth's own builder, and probed once at startup for
//! a log line that names the kind and account (never a token).

use std::path::{Path, PathBuf};
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use zeroize::Zeroizing;

use super::errors::clip;
use crate::config::GsmConfig;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
