use std::io::IsTerminal;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// The environment variable holding the log filter (`info`, `secretd=debug`, ...).
const LOG_ENV: &str = "SECRETD_LOG";

pub(super) fn run(
    config: Option<PathBuf>,
    dev: bool,
    socket: Option<PathBuf>,
) -> Result<(), String> {
    init_logging();
    let mut config = if dev {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        crate::dev::dev_config(euid).map_err(|e| e.to_string())?
    } else {
        let path = config.ok_or("serve needs --config FILE or --dev")?;
        Config::load(&path).map_err(|e| e.to_string())?
    };
    if let Some(socket) = socket {
        config.daemon.socket = socket;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("secretd")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = watch_signals(cancel.clone())?;
        let result = crate::serve::run(config, cancel.clone()).await;
        signals.abort();
        result.map_err(|e| e.to_string())
    })
}

fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Cancels `cancel` on SIGTERM or SIGINT.
fn watch_signals(cancel: CancellationToken) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping");
        cancel.cancel();
    }))
}
