//! `secretd run`: starts a program with secrets in its environment, in files or in rendered
//! templates, for programs that cannot link a secretd library, and acts on a rotation by
//! itself (restart, signal, exit for a supervisor, or rewrite files).
//!
//! The values are fetched as the caller; the daemon attests `secretd` as the program, so a
//! policy for a wrapped program names its uid, unit or cgroup. Nothing starts unless every
//! value could be read, and no value appears in argv, logs or errors.

mod child;
mod mask;
mod plan;
mod rundir;
mod supervise;
mod template;
mod values;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use secretd_client::{ChangeEvent, Client};

use plan::Plan;
use supervise::{Event, Supervisor};
use template::Template;
use values::{Fetcher, Values};

/// `secretd run` itself failed, before the command started or while running it (env(1)'s
/// code, so it is not mistaken for the command's own status).
pub(crate) const EXIT_RUN_FAILED: u8 = 125;
/// The command was found but could not be executed.
pub(crate) const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;
/// `--on-change exit`: a secret changed and the command was stopped; start the run again
/// (EX_TEMPFAIL; with systemd, `RestartForceExitStatus=75`).
pub(crate) const EXIT_SECRET_CHANGED: u8 = 75;

/// `secretd run`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Put SECRET's value in the command's environment as VAR (repeatable). Other processes of
    /// your uid can read it in /proc/PID/environ.
    #[arg(long = "env", value_name = "VAR=SECRET")]
    env: Vec<String>,
    /// Write SECRET's value to PATH in the run's own 0700 directory, mode 0400 (repeatable).
    /// The command finds the directory in $SECRETD_RUN_DIR.
    #[arg(long = "file", value_name = "SECRET=PATH")]
    file: Vec<String>,
    /// Render the minijinja template SRC (`{{ secret("NAME") }}`) to DEST in the run's
    /// directory (repeatable).
    #[arg(long = "template", value_name = "SRC:DEST")]
    template: Vec<String>,
    /// On a change: stop and start the command again; rewrite the files and send SIG; stop it
    /// and exit 75; or rewrite the files only.
    #[arg(
        long,
        default_value = "restart",
        value_name = "restart|signal:SIG|exit|none"
    )]
    on_change: String,
    /// Act on a change after a random delay up to this, so a fleet does not restart at once.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    stagger: String,
    /// Time between SIGTERM and SIGKILL when stopping the command.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    grace: String,
    /// Pipe the command's stdout and stderr and replace every value with <redacted:NAME>
    /// (the command no longer writes to a terminal).
    #[arg(long)]
    mask: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Why a run failed. Never holds a value: names, paths and the daemon's reasons only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// A flag that parsed but is not acceptable.
    #[error("{flag} {value:?}: {why}")]
    Argument {
        /// The flag.
        flag: &'static str,
        /// What was given (names and paths, never a value).
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// The daemon could not be reached (the client's error names the path and why).
    #[error("{0}")]
    Connect(#[source] secretd_client::Error),
    /// A secret could not be read: denied, unknown, or the daemon unreachable.
    #[error("secret {name}: {source}")]
    Secret {
        /// The catalog name.
        name: String,
        /// The client's reason.
        source: secretd_client::Error,
    },
    /// A value for `--env` holds a NUL byte, which no environment variable can.
    #[error("secret {0} holds a NUL byte and cannot be an environment variable (use --file)")]
    NulInEnv(String),
    /// A value a template reads is not UTF-8.
    #[error("secret {0} is not UTF-8 text, which a template needs (use --file)")]
    NotText(String),
    /// A template file could not be read.
    #[error("cannot read template {}: {source}", path.display())]
    TemplateFile {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A template is not valid, or failed to render.
    #[error("template {}: {message}", path.display())]
    Template {
        /// The file.
        path: PathBuf,
        /// minijinja's reason, any value in it replaced.
        message: String,
    },
    /// The run directory or a file in it could not be made or written.
    #[error("{what} {}: {source}", path.display())]
    RunDir {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// The command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Signal handling or a thread could not be set up.
    #[error("cannot set up: {0}")]
    Setup(#[source] io::Error),
}

/// Prints one of the run's own lines to stderr.
fn say(line: &str) {
    eprintln!("secretd run: {line}");
}

/// Runs the command; the exit code (the command's own status, or 125 to 127, or 75).
pub(crate) fn run(socket: Option<PathBuf>, args: RunArgs) -> u8 {
    match prepare(socket, args) {
        Ok(mut supervisor) => finish(&mut supervisor),
        Err(e) => {
            say(&e.to_string());
            EXIT_RUN_FAILED
        }
    }
}

/// Everything before the child starts: all values read, all outputs written, or nothing.
fn prepare(socket: Option<PathBuf>, args: RunArgs) -> Result<Prepared, RunError> {
    let plan = Plan::parse(args)?;
    // Before any file is written: a signal from here on is an event, never the end of the
    // run with its files left behind.
    let (tx, rx) = mpsc::channel();
    supervise::listen_for_signals(tx.clone())?;
    let path = socket.unwrap_or_else(secretd_client::default_socket_path);
    let client = Client::connect(&path).map_err(RunError::Connect)?;
    let fetcher = Arc::new(Fetcher::new(client, plan.mask));
    let names = plan.env.iter().map(|e| e.secret.as_str());
    let values = fetcher.fetch_all(names.chain(plan.files.iter().map(|f| f.secret.as_str())))?;
    check_env_values(&plan, &values)?;
    let templates = plan
        .templates
        .iter()
        .map(|t| Template::load(&t.src, &t.dest))
        .collect::<Result<Vec<_>, _>>()?;
    let run_dir = plan
        .writes_files()
        .then(rundir::RunDir::create)
        .transpose()?;
    let mut supervisor = Supervisor::new(plan, fetcher, templates, run_dir, values);
    supervisor.write_outputs()?;
    Ok(Prepared {
        supervisor,
        events: rx,
        sender: tx,
    })
}

/// A run ready to start its command.
struct Prepared {
    /// The loop's state.
    supervisor: Supervisor,
    /// Its events.
    events: mpsc::Receiver<Event>,
    /// For the watch.
    sender: mpsc::Sender<Event>,
}

fn finish(prepared: &mut Prepared) -> u8 {
    let supervisor = &mut prepared.supervisor;
    // Told to stop while reading the secrets: start nothing.
    while let Ok(event) = prepared.events.try_recv() {
        if let Event::Signal { signal, .. } = event
            && supervise::TERMINATING.contains(&signal)
        {
            return 128u8.saturating_add(u8::try_from(signal).unwrap_or(0));
        }
    }
    if let Err(code) = supervisor.start_child() {
        return code;
    }
    // Subscribed after the start, so the command is not kept waiting; the check queued right
    // after covers a change between the first read and the subscription.
    let _watch = watch(supervisor, prepared.sender.clone());
    let _ = prepared.sender.send(Event::Changed(None));
    supervisor.run(&prepared.events)
}

/// Subscribes to changes of the values held, when a change does anything.
fn watch(
    supervisor: &Supervisor,
    events: mpsc::Sender<Event>,
) -> Option<secretd_client::WatchHandle> {
    let acts = supervisor.plan.on_change != plan::OnChange::None || supervisor.plan.writes_files();
    if !acts {
        return None;
    }
    let names: Vec<&str> = supervisor.values.names().collect();
    let subscribed = supervisor.fetcher.client().watch_with(names, move |item| {
        let event = match item {
            Ok(ChangeEvent::Changed(c)) => Event::Changed(Some(c.name)),
            Ok(ChangeEvent::Lagged) => Event::Changed(None),
            Ok(_) => return,
            Err(e @ secretd_client::Error::Daemon(_)) => Event::WatchEnded(e.to_string()),
            // Transient: the watch resubscribes and then reports Lagged.
            Err(_) => return,
        };
        let _ = events.send(event);
    });
    match subscribed {
        Ok(handle) => Some(handle),
        Err(e) => {
            say(&format!(
                "cannot watch for changes ({e}); the command keeps the values it has"
            ));
            None
        }
    }
}

/// Values for `--env` must be NUL-free.
fn check_env_values(plan: &Plan, values: &Values) -> Result<(), RunError> {
    for var in &plan.env {
        if values.get(&var.secret).is_some_and(|v| v.contains(&0)) {
            return Err(RunError::NulInEnv(var.secret.clone()));
        }
    }
    Ok(())
}
