//! What `secretd run` was asked to do, checked before anything is fetched or started.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::RunError;

/// The longest `--stagger` or `--grace`: a delay longer than a day is a typo, not a plan.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The prefix of the names `secretd run` keeps for itself in a run directory (its lock and its
/// temporary files); a `--file` or `--template` destination may not start with it.
pub(super) const RESERVED_PREFIX: &str = ".secretd";

/// Everything a run does, from the command line.
#[derive(Debug)]
pub(super) struct Plan {
    /// Environment variables and the secret each holds.
    pub(super) env: Vec<EnvVar>,
    /// Files in the run directory and the secret each holds.
    pub(super) files: Vec<FileOut>,
    /// Templates rendered into the run directory.
    pub(super) templates: Vec<TemplateOut>,
    /// What a change of a secret does to the child.
    pub(super) on_change: OnChange,
    /// Actions on a change wait a random time up to this, so a fleet does not restart at once.
    pub(super) stagger: Duration,
    /// How long the child has between SIGTERM and SIGKILL.
    pub(super) grace: Duration,
    /// Whether the child's output is piped and its values replaced.
    pub(super) mask: bool,
    /// The program and its arguments.
    pub(super) command: Vec<OsString>,
}

/// `--env VAR=SECRET`.
#[derive(Debug)]
pub(super) struct EnvVar {
    /// The variable's name.
    pub(super) var: String,
    /// The catalog name.
    pub(super) secret: String,
}

/// `--file SECRET=PATH`.
#[derive(Debug)]
pub(super) struct FileOut {
    /// The catalog name.
    pub(super) secret: String,
    /// Where in the run directory.
    pub(super) dest: PathBuf,
}

/// `--template SRC:DEST`.
#[derive(Debug)]
pub(super) struct TemplateOut {
    /// The template file.
    pub(super) src: PathBuf,
    /// Where in the run directory the rendering goes.
    pub(super) dest: PathBuf,
}

/// `--on-change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnChange {
    /// Stop the child (SIGTERM, grace, SIGKILL) and start it again with the new values.
    Restart,
    /// Rewrite the files and templates, then send the child this signal.
    Signal(i32),
    /// Stop the child, then exit with [`super::EXIT_SECRET_CHANGED`] for a supervisor.
    Exit,
    /// Rewrite the files and templates; leave the child alone.
    None,
}

impl Plan {
    /// Checks the raw flags.
    pub(super) fn parse(args: super::RunArgs) -> Result<Plan, RunError> {
        let env = args
            .env
            .iter()
            .map(|a| {
                let (var, secret) = split(a, '=', "--env", "VAR=SECRET")?;
                check_var(var).map_err(|why| bad("--env", a, why))?;
                check_secret(secret).map_err(|why| bad("--env", a, why))?;
                Ok(EnvVar {
                    var: var.to_owned(),
                    secret: secret.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let files = args
            .file
            .iter()
            .map(|a| {
                let (secret, dest) = split(a, '=', "--file", "SECRET=PATH")?;
                check_secret(secret).map_err(|why| bad("--file", a, why))?;
                Ok(FileOut {
                    secret: secret.to_owned(),
                    dest: check_dest(dest).map_err(|why| bad("--file", a, why))?,
                })
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let templates = args
            .template
            .iter()
            .map(|a| {
                let (src, dest) = a
                    .rsplit_once(':')
                    .ok_or_else(|| bad("--template", a, "expected SRC:DEST"))?;
                if src.is_empty() {
                    return Err(bad("--template", a, "SRC is empty"));
                }
                Ok(TemplateOut {
                    src: PathBuf::from(src),
                    dest: check_dest(dest).map_err(|why| bad("--template", a, why))?,
                })
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let mut dests: Vec<&Path> = files.iter().map(|f| f.dest.as_path()).collect();
        dests.extend(templates.iter().map(|t| t.dest.as_path()));
        dests.sort();
        if let Some(w) = dests.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(
                "--file/--template",
                &w[0].display().to_string(),
                "two outputs write the same file",
            ));
        }
        if env.is_empty() && files.is_empty() && templates.is_empty() {
            return Err(bad(
                "--env/--file/--template",
                "",
                "name at least one secret to inject",
            ));
        }
        Ok(Plan {
            env,
            files,
            templates,
            on_change: parse_on_change(&args.on_change)?,
            stagger: parse_delay("--stagger", &args.stagger)?,
            grace: parse_delay("--grace", &args.grace)?,
            mask: args.mask,
            command: args.command,
        })
    }

    /// Whether the run needs a directory of its own.
    pub(super) fn writes_files(&self) -> bool {
        !self.files.is_empty() || !self.templates.is_empty()
    }
}

fn bad(flag: &'static str, value: &str, why: impl ToString) -> RunError {
    RunError::Argument {
        flag,
        value: value.to_owned(),
        why: why.to_string(),
    }
}

fn split<'a>(
    arg: &'a str,
    sep: char,
    flag: &'static str,
    form: &str,
) -> Result<(&'a str, &'a str), RunError> {
    arg.split_once(sep)
        .ok_or_else(|| bad(flag, arg, format!("expected {form}")))
}

/// Why a name or path in a flag is refused.
#[derive(Debug, thiserror::Error)]
enum BadName {
    /// An environment variable name a shell could not `export`.
    #[error("VAR must be letters, digits and '_', not starting with a digit")]
    Var,
    /// Not a secret name (the protocol's rule, with its reason).
    #[error("{0}")]
    Secret(&'static str),
    /// A destination outside the run directory.
    #[error("PATH must be relative: files go in the run's own directory ($SECRETD_RUN_DIR)")]
    Absolute,
    /// A destination among secretd's own names in the run directory.
    #[error("names starting with {RESERVED_PREFIX} are secretd's own")]
    Reserved,
    /// A destination that could climb out of the run directory.
    #[error("PATH may not contain '.' or '..' components")]
    Dots,
}

/// A portable environment variable name: what a shell could `export`.
fn check_var(var: &str) -> Result<(), BadName> {
    let mut bytes = var.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(BadName::Var);
    }
    Ok(())
}

fn check_secret(secret: &str) -> Result<(), BadName> {
    secretd_proto::validate_name(secret).map_err(BadName::Secret)
}

/// A destination inside the run directory: relative, no `..`, not one of secretd's own names.
fn check_dest(dest: &str) -> Result<PathBuf, BadName> {
    let path = PathBuf::from(dest);
    if dest.is_empty() || path.is_absolute() {
        return Err(BadName::Absolute);
    }
    for c in path.components() {
        match c {
            Component::Normal(part) if !part.to_string_lossy().starts_with(RESERVED_PREFIX) => {}
            Component::Normal(_) => return Err(BadName::Reserved),
            _ => return Err(BadName::Dots),
        }
    }
    Ok(path)
}

fn parse_on_change(s: &str) -> Result<OnChange, RunError> {
    let why = || {
        bad(
            "--on-change",
            s,
            "expected restart, signal:SIG (HUP, USR1, ... or a number), exit or none",
        )
    };
    match s {
        "restart" => Ok(OnChange::Restart),
        "exit" => Ok(OnChange::Exit),
        "none" => Ok(OnChange::None),
        _ => {
            let sig = s.strip_prefix("signal:").ok_or_else(why)?;
            signal_number(sig).map(OnChange::Signal).ok_or_else(why)
        }
    }
}

/// A signal by name (`HUP`, `SIGHUP`) or number; only ones a program can catch.
pub(super) fn signal_number(sig: &str) -> Option<i32> {
    let name = sig.strip_prefix("SIG").unwrap_or(sig);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => name.parse().ok()?,
    };
    let catchable = (1..=libc::SIGRTMAX()).contains(&n) && n != libc::SIGKILL && n != libc::SIGSTOP;
    catchable.then_some(n)
}

fn parse_delay(flag: &'static str, s: &str) -> Result<Duration, RunError> {
    let d = humantime::parse_duration(s).map_err(|e| bad(flag, s, e.to_string()))?;
    if d > MAX_DELAY {
        return Err(bad(flag, s, "at most 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_stay_inside_the_run_directory() {
        assert!(check_dest("api_key").is_ok());
        assert!(check_dest("conf/session.cfg").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./x",
            ".secretd-run.lock",
        ] {
            assert!(check_dest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_by_name_or_number_but_never_kill() {
        assert_eq!(signal_number("HUP"), Some(libc::SIGHUP));
        assert_eq!(signal_number("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("10"), Some(10));
        assert_eq!(signal_number("KILL"), None);
        assert_eq!(signal_number("9"), None);
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("nonsense"), None);
    }

    #[test]
    fn variable_names_are_portable() {
        assert!(check_var("API_KEY").is_ok());
        assert!(check_var("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A=B", "Ä"] {
            assert!(check_var(bad).is_err(), "{bad}");
        }
    }
}
