//! GSM's errors as failure categories, with only texts that cannot carry a payload or a token.

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;

use super::super::{FailureReason, SourceError};

/// Longest GSM error message carried into logs and status.
const MAX_ERROR_MESSAGE: usize = 300;

/// A message on one line, clipped to [`MAX_ERROR_MESSAGE`] characters.
pub(super) fn clip(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_MESSAGE)
        .collect();
    one_line.trim().to_owned()
}

/// Whether a status's details say the API is disabled (`ErrorInfo` reason `SERVICE_DISABLED`).
fn service_disabled(details: &[google_cloud_gax::error::rpc::StatusDetails]) -> bool {
    details.iter().any(|d| {
        matches!(d, google_cloud_gax::error::rpc::StatusDetails::ErrorInfo(info)
            if info.reason == "SERVICE_DISABLED")
    })
}

/// Maps a client error to a failure category. Only texts that cannot contain payload bytes
/// or tokens are carried over: GSM's own status message, HTTP codes, network errors; never a
/// deserializer's message, which may quote the response body.
pub(super) fn map_error(name: &str, e: &GaxError) -> SourceError {
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
