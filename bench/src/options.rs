//! The command line: `[--quick] [--python PATH] [--no-build] [--only PART,...]`.

use std::path::PathBuf;

use crate::error::BenchError;

/// Command-line options.
#[derive(Debug)]
pub(crate) struct Options {
    /// Fewer samples (a smoke run for CI).
    pub(crate) quick: bool,
    /// The Python interpreter with `secretd` installed.
    pub(crate) python: Option<PathBuf>,
    /// Do not run `cargo build` for the daemon and libsecretd first.
    pub(crate) no_build: bool,
    /// The parts to run (`--only`); all when empty.
    pub(crate) only: Vec<String>,
}

/// The parts of a run, for `--only`.
const PARTS: [&str; 8] = [
    "reads",
    "program",
    "restart",
    "propagation",
    "catalog",
    "flood",
    "attribution",
    "any-process",
];

impl Options {
    /// Whether part `name` runs.
    pub(crate) fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

pub(crate) fn parse_args() -> Result<Options, BenchError> {
    let mut options = Options {
        quick: false,
        python: None,
        no_build: false,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-build" => options.no_build = true,
            "--only" => {
                let list = args.next().ok_or("--only needs a list of parts")?;
                for part in list.split(',') {
                    if !PARTS.contains(&part) {
                        return Err(BenchError::from(format!(
                            "unknown part {part:?}: one of {}",
                            PARTS.join(", ")
                        )));
                    }
                    options.only.push(part.into());
                }
            }
            "--python" => {
                options.python = Some(args.next().ok_or("--python needs a path")?.into());
            }
            "-h" | "--help" => {
                return Err(
                    "usage: secretd-bench [--quick] [--python PATH] [--no-build] \
                     [--only reads,program,restart,propagation,catalog,flood,attribution,any-process]"
                        .into(),
                );
            }
            other => {
                return Err(BenchError::from(format!(
                    "unknown argument {other:?} (try --help)"
                )));
            }
        }
    }
    Ok(options)
}
