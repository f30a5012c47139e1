//! Where the daemon listens, shared by the daemon, the CLI and every client library.

use std::path::{Path, PathBuf};

/// The production socket (the systemd unit's `RuntimeDirectory=secretd`).
pub const DEFAULT_SOCKET: &str = "/run/secretd/secretd.sock";

/// The environment variable clients read before falling back to the defaults.
pub const SOCKET_ENV: &str = "SECRETD_SOCKET";

/// The file name of the socket inside a runtime directory.
pub const SOCKET_FILE: &str = "secretd.sock";

/// The per-user directory of `secretd serve --dev`: `$XDG_RUNTIME_DIR/secretd-dev`, or
/// `/tmp/secretd-dev-UID` when there is no XDG runtime directory.
pub fn dev_runtime_dir(euid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => Path::new(&dir).join("secretd-dev"),
        _ => PathBuf::from(format!("/tmp/secretd-dev-{euid}")),
    }
}

/// The socket of `secretd serve --dev` for this user.
pub fn dev_socket(euid: u32) -> PathBuf {
    dev_runtime_dir(euid).join(SOCKET_FILE)
}

/// The socket a client uses when none is given: `$SECRETD_SOCKET`, else the production socket
/// if it exists, else this user's development socket if that exists, else the production path
/// (so the error message names the path an operator expects).
pub fn default_socket(euid: u32) -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let production = PathBuf::from(DEFAULT_SOCKET);
    if production.exists() {
        return production;
    }
    let dev = dev_socket(euid);
    if dev.exists() {
        return dev;
    }
    production
}
