use std::os::unix::ffi::OsStringExt;

use secretd_proto::SourceKind;
use zeroize::Zeroizing;

use super::{FailureReason, FetchFuture, Fetched, Source, SourceError, check_value};
use crate::catalog::secret_bytes::SecretBytes;

/// A value from one of the daemon's environment variables (development: the same catalog
/// names resolve on a laptop without a cloud account). The process environment keeps its own
/// copy, which no one can wipe: never use this source in production.
#[derive(Debug)]
pub(super) struct EnvSource {
    /// The variable's name.
    var: String,
}

impl EnvSource {
    /// A source reading `var`.
    pub(super) fn new(var: String) -> EnvSource {
        EnvSource { var }
    }
}

impl Source for EnvSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Env
    }

    fn describe(&self) -> String {
        format!("env {}", self.var)
    }

    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let value = std::env::var_os(&self.var).ok_or_else(|| {
                SourceError::new(
                    FailureReason::NotFound,
                    format!("environment variable {} is not set", self.var),
                )
            })?;
            let bytes = Zeroizing::new(value.into_vec());
            check_value(bytes.len())?;
            Ok(Fetched {
                value: SecretBytes::from_zeroizing(bytes),
                version: None,
                unverified: false,
            })
        })
    }
}
