use std::io::IsTerminal;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::error::CliError;
use crate::config::Config;

/// The environment variable holding the log filter (`info`, `secretd=debug`, ...).
const LOG_ENV: &str = "SECRETD_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

pub(super) fn run(
    config: Option<PathBuf>,
    dev: bool,
    socket: Option<PathBuf>,
    log_format: LogFormat,
) -> Result<(), CliError> {
    // With this variable set the Google client logs every response, payloads included.
    // SAFETY: no other thread exists yet (the runtime starts below), so nothing reads the
    // environment concurrently.
    unsafe { std::env::remove_var(crate::catalog::source::gsm::GOOGLE_LOGGING_ENV) };
    init_logging(log_format);
    // Also before any thread: it clears the LISTEN_* variables.
    let activated = crate::runtime::systemd::take_activated_sockets();
    let mut config = if dev {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        crate::runtime::dev::dev_config(euid)?
    } else {
        Config::load(&config.ok_or(CliError::NoConfig)?)?
    };
    if let Some(socket) = socket {
        config.daemon.socket = socket;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("secretd")
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = watch_signals(cancel.clone()).map_err(CliError::Runtime)?;
        let result = crate::runtime::serve::run(config, cancel.clone(), activated).await;
        signals.abort();
        Ok(result?)
    })
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .with_filter(FilterFn::new(google_capped))
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .with_filter(FilterFn::new(google_capped))
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

/// The Google client crates log request and response bodies (secret payloads) at DEBUG and
/// below; whatever `SECRETD_LOG` says, they get WARN at most.
fn google_capped(meta: &tracing::Metadata<'_>) -> bool {
    !meta.target().starts_with("google_cloud") || *meta.level() <= tracing::Level::WARN
}

/// Cancels `cancel` on SIGTERM or SIGINT.
fn watch_signals(cancel: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping");
        cancel.cancel();
    }))
}
