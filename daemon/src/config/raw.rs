//! The TOML as written: every table and key the file may hold, with nothing validated yet
//! (unknown keys are refused here, by serde).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    pub(super) gsm: Option<RawGsm>,
    pub(super) break_glass: Option<RawBreakGlass>,
    #[serde(default, rename = "secret")]
    pub(super) secrets: Vec<RawSecret>,
    #[serde(default, rename = "policy")]
    pub(super) policies: Vec<RawPolicy>,
    #[serde(default, rename = "credential")]
    pub(super) credentials: Vec<RawCredential>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) socket: Option<PathBuf>,
    pub(super) socket_mode: Option<String>,
    pub(super) socket_group: Option<String>,
    pub(super) credentials_socket: Option<PathBuf>,
    pub(super) db: Option<PathBuf>,
    pub(super) admin_uids: Option<Vec<u32>>,
    pub(super) refresh_interval: Option<String>,
    pub(super) max_stale: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) metrics_listen_public: Option<bool>,
    pub(super) http_max_connections: Option<usize>,
    pub(super) max_denials_per_minute_per_uid: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_uid: Option<usize>,
    pub(super) admin_reserved_connections: Option<usize>,
    pub(super) audit_retention: Option<String>,
    pub(super) rotation_check_interval: Option<String>,
    pub(super) rotation_warning: Option<String>,
    pub(super) first_fetch_wait: Option<String>,
    pub(super) audit_key: Option<PathBuf>,
    pub(super) fingerprint_key: Option<PathBuf>,
    pub(super) audit_anchor_interval: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) frame_deadline: Option<String>,
    pub(super) audit_read_window: Option<String>,
    pub(super) attest_max_exe_bytes: Option<u64>,
    pub(super) last_known_good: Option<PathBuf>,
    pub(super) last_known_good_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) allow_short_ttl: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGsm {
    pub(super) project: Option<String>,
    pub(super) project_number: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) regional_endpoint: Option<String>,
    pub(super) credentials_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) anonymous: bool,
    pub(super) attempt_timeout: Option<String>,
    pub(super) retry_budget: Option<String>,
    pub(super) max_attempts: Option<u32>,
    #[serde(default)]
    pub(super) require_crc32c: bool,
    pub(super) revocation_confirm_window: Option<String>,
    pub(super) notifications: Option<RawNotifications>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifications {
    pub(super) subscription: String,
    pub(super) endpoint: Option<String>,
    pub(super) notification_jitter: Option<String>,
    pub(super) health_check_interval: Option<String>,
    pub(super) notification_fallback_interval: Option<String>,
    pub(super) rotation_check_spread: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreakGlass {
    pub(super) private_key: PathBuf,
    pub(super) max_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) name: String,
    pub(super) source: String,
    pub(super) gcp_secret: Option<String>,
    pub(super) version: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) env: Option<String>,
    pub(super) ttl: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) environment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub(super) uids: Vec<u32>,
    #[serde(default)]
    pub(super) gids: Vec<u32>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
    pub(super) exe: Option<Vec<String>>,
    pub(super) exe_sha256: Option<Vec<String>>,
    pub(super) systemd_unit: Option<Vec<String>>,
    pub(super) cgroup: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    #[serde(default)]
    pub(super) units: Vec<String>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    pub(super) on_change: Option<String>,
    pub(super) stagger: Option<String>,
}
