//! The HTTP keys of `[daemon]`: where `/metrics`, `/healthz` and `/status` listen, and how many
//! connections they serve at once.

use std::net::SocketAddr;

use super::{ConfigError, invalid};

/// HTTP connections served at once, unless `daemon.http_max_connections` says otherwise.
pub(crate) const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;
/// The most HTTP connections `daemon.http_max_connections` may allow.
pub(crate) const MAX_HTTP_CONNECTIONS: usize = 4096;

/// The validated HTTP keys.
pub(super) struct HttpSettings {
    /// `daemon.metrics_listen`.
    pub(super) listen: Option<SocketAddr>,
    /// `daemon.http_max_connections`.
    pub(super) max_connections: usize,
}

/// `daemon.metrics_listen` (on loopback unless `metrics_listen_public`: the endpoints name
/// every secret, version and fingerprint) and `daemon.http_max_connections` (1 to
/// [`MAX_HTTP_CONNECTIONS`]).
pub(super) fn validate_http(
    listen: Option<String>,
    public: Option<bool>,
    max_connections: Option<usize>,
) -> Result<HttpSettings, ConfigError> {
    let listen: Option<SocketAddr> = listen
        .map(|a| {
            a.parse().map_err(|_| {
                invalid(format!(
                    "daemon.metrics_listen = {a:?} is not an address like \"127.0.0.1:9464\""
                ))
            })
        })
        .transpose()?;
    if let Some(addr) = listen
        && !addr.ip().is_loopback()
        && public != Some(true)
    {
        return Err(invalid(format!(
            "daemon.metrics_listen = \"{addr}\" is not on loopback; /metrics and /status name \
             every secret, version and fingerprint: set metrics_listen_public = true to serve \
             them beyond this host"
        )));
    }
    let max_connections = max_connections.unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
    if max_connections == 0 || max_connections > MAX_HTTP_CONNECTIONS {
        return Err(invalid(format!(
            "daemon.http_max_connections must be between 1 and {MAX_HTTP_CONNECTIONS}"
        )));
    }
    Ok(HttpSettings {
        listen,
        max_connections,
    })
}
