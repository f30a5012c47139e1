use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use secretd_proto::SourceKind;

use super::{
    FailureReason, FetchFuture, Fetched, MAX_SECRET_LEN, Source, SourceError, check_value,
    read_bounded,
};

/// A value that is the whole content of a file (development and tests).
#[derive(Debug)]
pub(super) struct FileSource {
    /// The file.
    path: PathBuf,
}

impl FileSource {
    /// A source reading `path`.
    pub(super) fn new(path: PathBuf) -> FileSource {
        FileSource { path }
    }
}

fn read_value(path: &Path) -> Result<Fetched, SourceError> {
    let io_err = |e: std::io::Error| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => FailureReason::NotFound,
            std::io::ErrorKind::PermissionDenied => FailureReason::PermissionDenied,
            _ => FailureReason::Unavailable,
        };
        SourceError::new(reason, format!("cannot read {}: {e}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(SourceError::new(
            FailureReason::InvalidPayload,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.mode() & 0o777),
            "secret file is readable by others than its owner"
        );
    }
    let (value, oversize) = read_bounded(&mut file).map_err(io_err)?;
    check_value(if oversize {
        MAX_SECRET_LEN + 1
    } else {
        value.len()
    })?;
    Ok(Fetched {
        value,
        version: None,
        unverified: false,
    })
}

impl Source for FileSource {
    fn kind(&self) -> SourceKind {
        SourceKind::File
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn fetch(&self) -> FetchFuture<'_> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_value(&path))
                .await
                .map_err(|_| {
                    SourceError::new(FailureReason::Unavailable, "file read task failed")
                })?
        })
    }
}
