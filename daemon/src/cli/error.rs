//! Why a `secretd` command failed. Each variant prints as the one line after `secretd: `, and
//! every one exits 1 (clap's usage errors exit 2 before a command runs).

use std::io;
use std::path::PathBuf;

use crate::catalog::break_glass::envelope::SealError;
use crate::catalog::break_glass::keys::KeyError;
use crate::config::ConfigError;
use crate::runtime::dev::DevError;
use crate::runtime::serve::ServeError;
use crate::store::StoreError;

/// A command's failure, one line each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The daemon could not be reached, or refused or failed the request (the client's error
    /// names which, and the path).
    #[error(transparent)]
    Client(#[from] secretd_client::Error),
    /// The answer could not be written to standard output (a closed pipe, a full disk).
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    /// A file named on the command line could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What the file is for ("cannot read the value", "cannot create", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// An argument that parsed but is not acceptable.
    #[error("{flag} {value:?}: {why}")]
    Argument {
        /// The flag or argument.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// `serve` without `--config` or `--dev` (clap normally catches this first).
    #[error("serve needs --config FILE or --dev")]
    NoConfig,
    /// The config file is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The development catalog could not be set up.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The daemon could not start, or stopped on an error.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Some of the refreshes asked for failed (each printed above).
    #[error("{failed} of {total} refreshes failed")]
    RefreshFailed {
        /// How many failed.
        failed: usize,
        /// How many were asked for.
        total: usize,
    },
    /// The policy gate found violations (each printed above).
    #[error("check failed: {0} violations")]
    CheckFailed(usize),
    /// The audit chain is broken, or does not hold an expected head.
    #[error(transparent)]
    Audit(#[from] AuditCheckError),
    /// The database copy could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A break-glass key could not be made or read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A break-glass envelope could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A file that should hold a break-glass envelope does not.
    #[error("{} is not a break-glass envelope", .0.display())]
    NotAnEnvelope(PathBuf),
    /// A break-glass value is empty or too large.
    #[error("the value must be 1 to {0} bytes")]
    ValueSize(usize),
}

/// Why `secretd audit verify` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditCheckError {
    /// `--head` is not `SEQ:HASH` with a number and 64 hex digits.
    #[error("--head {0:?} is not SEQ:HASH (a sequence number and 64 hex digits)")]
    BadHead(String),
    /// A record fails its hash or key check.
    #[error("audit chain broken at seq {seq}: {reason} ({checked} records verified before it)")]
    Broken {
        /// The first bad record.
        seq: u64,
        /// What is wrong with it.
        reason: String,
        /// Records that verified before it.
        checked: u64,
    },
    /// The expected head is past the end of the chain.
    #[error(
        "record {seq} is not in the chain, which ends at {last}: the database was truncated \
         or rolled back"
    )]
    Truncated {
        /// The expected record.
        seq: u64,
        /// The chain's last record.
        last: u64,
    },
    /// The expected head was pruned by retention.
    #[error(
        "record {seq} was pruned (the chain starts at {first}): this anchor can no longer be \
         checked"
    )]
    Pruned {
        /// The expected record.
        seq: u64,
        /// The chain's first record.
        first: u64,
    },
    /// The expected head has another hash.
    #[error(
        "record {seq} has hash {found}, not {expected}: the database was rolled back or rewritten"
    )]
    Rewritten {
        /// The expected record.
        seq: u64,
        /// Its hash in the chain.
        found: String,
        /// The hash expected.
        expected: String,
    },
    /// The expected head is within the chain's range but absent.
    #[error("record {0} is missing from the chain")]
    Missing(u64),
    /// The expected head is further back than the daemon lists.
    #[error(
        "record {seq} is more than {limit} records back: verify a copy of the database offline \
         (--db)"
    )]
    TooFarBack {
        /// The expected record.
        seq: u64,
        /// The most records the daemon lists.
        limit: u32,
    },
}

/// Writes `bytes` to standard output and flushes, as every command's answer is written.
pub(crate) fn print_bytes(bytes: &[u8]) -> Result<(), CliError> {
    use io::Write as _;
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// The client of the daemon at `socket`, or at the default path.
pub(crate) fn connect(socket: Option<PathBuf>) -> Result<secretd_client::Client, CliError> {
    let path = socket.unwrap_or_else(secretd_client::default_socket_path);
    Ok(secretd_client::Client::connect(&path)?)
}
