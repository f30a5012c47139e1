//! Why a case, a helper process or the bench's own setup failed: one line on the report, and
//! a failed run (`notes`).

use std::io;

use secretd_gsm_fake::pubsub_emulator::EmulatorError;

/// A failure of the bench itself or of what it measures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A file, directory, process or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The daemon (through the client library) refused or failed a request.
    #[error("{what}: {source}")]
    Client {
        /// What was being asked.
        what: String,
        /// The client's error.
        #[source]
        source: secretd_client::Error,
    },
    /// Google's Pub/Sub emulator failed.
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    /// A helper program failed, a state never came, or the command line was not understood:
    /// the line says which.
    #[error("{0}")]
    Failed(String),
    /// The case cannot run on this machine (an interpreter, library or emulator is missing):
    /// a note outside CI, a failure under `CI=true`.
    #[error("cannot run here")]
    CannotRun,
}

impl BenchError {
    /// The error of an I/O step described by `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    /// The error of a client request described by `what`.
    pub(crate) fn client(
        what: impl Into<String>,
    ) -> impl FnOnce(secretd_client::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Client { what, source }
    }
}

impl From<String> for BenchError {
    fn from(line: String) -> BenchError {
        BenchError::Failed(line)
    }
}

impl From<&str> for BenchError {
    fn from(line: &str) -> BenchError {
        BenchError::Failed(line.to_owned())
    }
}
