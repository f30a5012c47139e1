//! The `secretd` command: `serve` runs the daemon; the other subcommands are clients of it.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error.

mod audit_cmds;
mod break_glass_cmds;
mod check_cmd;
mod client_cmds;
mod error;
mod polkit_cmd;
mod run;
mod serve_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a usage error (clap uses the same).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "secretd",
    version,
    about = "Serves trading credentials from Google Secret Manager to local processes",
    propagate_version = true
)]
struct Cli {
    /// The daemon's socket (default: $SECRETD_SOCKET, /run/secretd/secretd.sock, or your
    /// `serve --dev` socket).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The TOML config file.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "dev",
            conflicts_with = "dev"
        )]
        config: Option<PathBuf>,
        /// Run with the built-in development catalog (demo values, your user as admin).
        #[arg(long)]
        dev: bool,
        /// Log lines as human text or JSON (for journald and collectors).
        #[arg(long, value_enum, default_value = "text", env = "SECRETD_LOG_FORMAT")]
        log_format: serve_cmd::LogFormat,
    },
    /// Admin: print the Prometheus metrics (the same text as HTTP /metrics).
    Metrics,
    /// Policy gate: required names present, values strong, TTL and rotation not about to
    /// lapse. One line per violation; exit 1 on any.
    Check {
        /// Validate this config too, and require every secret it names.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A name that must be served (repeatable; default: the four Omni names, or the
        /// config's secrets).
        #[arg(long = "require", value_name = "NAME")]
        required: Vec<String>,
        /// Least acceptable time before a value is due for refresh.
        #[arg(long, default_value = "30s")]
        min_ttl: String,
        /// Least acceptable time before a rotation is due.
        #[arg(long, default_value = "7d")]
        min_rotation: String,
    },
    /// Print a secret's value to stdout (raw bytes, no newline).
    Get {
        /// The catalog name.
        name: String,
    },
    /// Show every secret you may read: source, version, age; never values.
    Status {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Admin: the open connections and what was attested of each peer, instead.
        #[arg(long)]
        connections: bool,
    },
    /// Print one JSON line per change of these secrets (all you may read, when none are
    /// given) until interrupted; resubscribes by itself when the daemon restarts.
    Watch {
        /// Catalog names.
        names: Vec<String>,
    },
    /// Run a command with secrets in its environment, files or templates; restart, signal or
    /// stop it when one changes. Exits with the command's status (128+N for signal N), 125 if
    /// secretd run itself failed (nothing was started), 126/127 if the command could not be
    /// executed or found, 75 after `--on-change exit`.
    Run(run::RunArgs),
    /// Admin: fetch one secret (or all) from its source now; prints each result.
    Refresh {
        /// The catalog name; every secret when omitted.
        name: Option<String>,
    },
    /// Admin: rotate a GSM secret (begin pins a version, promote makes it active, abort).
    Rotation {
        #[command(subcommand)]
        step: RotationCmd,
    },
    /// Admin: read or verify the hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Generate the break-glass key pair (the daemon keeps the private key).
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out_private: PathBuf,
        /// Where to write the public key (SPKI PEM) for operators.
        #[arg(long, value_name = "FILE")]
        out_public: PathBuf,
        /// RSA key size.
        #[arg(long, default_value_t = 3072)]
        bits: usize,
    },
    /// The polkit rule letting the daemon's user try-restart the units [[credential]]
    /// restarts on a rotation (the packaged unit writes it before each start).
    PolkitRule {
        /// The daemon's config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The user the daemon runs as.
        #[arg(long, default_value = "secretd")]
        user: String,
        /// Write the rule here (atomically) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Admin: emergency values that outrank GSM until they expire.
    BreakGlass {
        #[command(subcommand)]
        cmd: BreakGlassCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BreakGlassCmd {
    /// Seal a value for the daemon's key and apply it (or write the envelope with --out).
    Apply {
        /// The catalog name.
        name: String,
        /// The value: a file, or - for stdin (the exact bytes; no newline is stripped).
        #[arg(long, value_name = "FILE|-")]
        value_file: PathBuf,
        /// How long the override lasts ("25m"); at most the daemon's break_glass.max_ttl.
        #[arg(long)]
        ttl: String,
        /// The daemon's break-glass public key.
        #[arg(long, value_name = "PUB.pem")]
        public_key: PathBuf,
        /// Bind the envelope to one host: its machine id (`cat /etc/machine-id` on it). Any
        /// other host holding the private key refuses it.
        #[arg(long, value_name = "MACHINE_ID")]
        host: Option<String>,
        /// Write the sealed envelope here instead of applying it (for `break-glass submit`).
        #[arg(long, value_name = "ENVELOPE")]
        out: Option<PathBuf>,
    },
    /// Apply an envelope sealed elsewhere.
    Submit {
        /// The envelope file.
        envelope: PathBuf,
    },
    /// End an override now; the normal source is served again.
    Clear {
        /// The catalog name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum RotationCmd {
    /// Serve VERSION for staged validation (status rotating).
    #[command(disable_version_flag = true)]
    Begin {
        /// The catalog name.
        name: String,
        /// The GSM version number to pin.
        #[arg(long)]
        version: String,
    },
    /// Make the pinned version active (due again in 365 days). Over `latest` or an alias,
    /// only once GSM resolves it to the pinned version; over a version number, the pinned
    /// version stays this host's active version until the config names it.
    Promote {
        /// The catalog name.
        name: String,
    },
    /// Return to the configured version.
    Abort {
        /// The catalog name.
        name: String,
    },
    /// Record that the value served passed a live validation (lastValidatedAt).
    Validate {
        /// The catalog name.
        name: String,
    },
    /// Drop the promoted active version and serve the config's version again.
    Unpin {
        /// The catalog name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Print the newest records, oldest first.
    Tail {
        /// How many records.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        /// Only records of this secret.
        #[arg(long)]
        secret: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain; exit 1 and name the first bad record if it is broken. The last line
    /// is `ok: N records, head SEQ:HASH`.
    Verify {
        /// Also require this record (an `audit.anchor` from the shipped log) to be in the chain
        /// with this hash: a truncated or rolled-back database fails.
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<String>,
        /// Verify a copy of the database offline instead of asking the daemon.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// With --db: the audit key (default: the copy's path plus `.audit-key`).
        #[arg(long, value_name = "FILE", requires = "db")]
        key: Option<PathBuf>,
    },
}

/// The CLI's clap definition, for generators (man pages and completions in the packages).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// Entry point of the `secretd` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap picks the exit code (0 or 2).
            let _ = e.print();
            let usage = u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
            // `secretd run`'s own usage errors must not look like the command's status.
            let code = if usage != 0 && is_run_command() {
                run::EXIT_RUN_FAILED
            } else {
                usage
            };
            return ExitCode::from(code);
        }
    };
    if let Command::Run(args) = cli.command {
        return ExitCode::from(run::run(cli.socket, args));
    }
    match run(cli.command, cli.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secretd: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Whether the command line is a `secretd run` (the first word that is not an option or the
/// global `--socket`'s value).
fn is_run_command() -> bool {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => {
                args.next();
            }
            Some(a) if a.starts_with('-') => {}
            Some(word) => return word == "run",
            None => return false,
        }
    }
    false
}

/// Runs one subcommand.
fn run(command: Command, socket: Option<PathBuf>) -> Result<(), error::CliError> {
    match command {
        Command::Serve {
            config,
            dev,
            log_format,
        } => serve_cmd::run(config, dev, socket, log_format),
        Command::Metrics => client_cmds::metrics(socket),
        Command::Check {
            config,
            required,
            min_ttl,
            min_rotation,
        } => check_cmd::run(socket, config, required, &min_ttl, &min_rotation),
        Command::Get { name } => client_cmds::get(socket, &name),
        Command::Status {
            json,
            connections: true,
        } => client_cmds::connections(socket, json),
        Command::Status { json, .. } => client_cmds::status(socket, json),
        Command::Refresh { name } => client_cmds::refresh(socket, name.as_deref()),
        // Dispatched in `main`: its exit code is the command's, not 0 or 1.
        Command::Run(_) => Err(error::CliError::Runtime(std::io::Error::other(
            "secretd run is dispatched by main",
        ))),
        Command::Watch { names } => client_cmds::watch(socket, &names),
        Command::Rotation { step } => {
            let (name, step) = rotation_step(step);
            client_cmds::rotation(socket, &name, step)
        }
        Command::Audit {
            cmd: AuditCmd::Tail { n, secret, json },
        } => client_cmds::audit_tail(socket, n, secret.as_deref(), json),
        Command::Audit {
            cmd: AuditCmd::Verify { head, db, key },
        } => match db {
            Some(db) => audit_cmds::verify_offline(&db, key.as_deref(), head.as_deref()),
            None => audit_cmds::verify_online(socket, head.as_deref()),
        },
        Command::Keygen {
            out_private,
            out_public,
            bits,
        } => keygen(bits, &out_private, &out_public),
        Command::PolkitRule { config, user, out } => {
            polkit_cmd::run(&config, &user, out.as_deref())
        }
        Command::BreakGlass { cmd } => match cmd {
            BreakGlassCmd::Apply {
                name,
                value_file,
                ttl,
                public_key,
                host,
                out,
            } => break_glass_cmds::apply(
                socket,
                &name,
                &value_file,
                &ttl,
                &public_key,
                host.as_deref(),
                out.as_deref(),
            ),
            BreakGlassCmd::Submit { envelope } => break_glass_cmds::submit(socket, &envelope),
            BreakGlassCmd::Clear { name } => break_glass_cmds::clear(socket, &name),
        },
    }
}

/// The secret and the protocol's step for a `rotation` subcommand.
fn rotation_step(step: RotationCmd) -> (String, secretd_client::RotationStep) {
    use secretd_client::RotationStep as S;
    match step {
        RotationCmd::Begin { name, version } => (name, S::Begin { version }),
        RotationCmd::Promote { name } => (name, S::Promote),
        RotationCmd::Abort { name } => (name, S::Abort),
        RotationCmd::Validate { name } => (name, S::Validate),
        RotationCmd::Unpin { name } => (name, S::Unpin),
    }
}

/// `secretd keygen`: the break-glass key pair.
fn keygen(
    bits: usize,
    out_private: &std::path::Path,
    out_public: &std::path::Path,
) -> Result<(), error::CliError> {
    crate::catalog::break_glass::keys::generate(bits, out_private, out_public)?;
    println!(
        "wrote {} (keep it on the daemon host, 0600) and {}",
        out_private.display(),
        out_public.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        // Catches clashing flags (such as a subcommand's --version against clap's own).
        super::Cli::command().debug_assert();
    }
}
