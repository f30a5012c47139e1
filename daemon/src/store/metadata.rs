//! Per-secret metadata: one row per catalog secret, with its rotation state (the state
//! machine that moves it is `catalog::rotation`).

use serde::{Deserialize, Serialize};

/// How long a rotation lasts: a promote sets rotation_due_at to now + 365 days.
pub(crate) const ROTATION_PERIOD_MS: i64 = 365 * 24 * 3600 * 1000;

/// Lifecycle of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Served from its configured version alias.
    Active,
    /// A new version is pinned for staged validation.
    Rotating,
    /// Kept for reference; cannot be rotated.
    Deprecated,
}

impl Status {
    /// The stable lowercase name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Rotating => "rotating",
            Status::Deprecated => "deprecated",
        }
    }
}

/// One row of the `secrets` table (stored as JSON; new fields must be optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecretMeta {
    /// Random UUID, stable for the life of the row.
    pub id: String,
    /// The catalog name (`secret_type`).
    pub name: String,
    /// Environment label from the config.
    pub environment: Option<String>,
    /// `projects/P[/locations/L]/secrets/S` for GSM secrets.
    pub gcp_secret_id: Option<String>,
    /// The configured version (`latest`, a GSM alias, or a number).
    pub gcp_version_alias: Option<String>,
    /// Lifecycle state.
    pub status: Status,
    /// The version pinned while rotating.
    pub rotating_version: Option<String>,
    /// When the next rotation is due, Unix ms.
    pub rotation_due_at_ms: i64,
    /// When the last rotation was promoted, Unix ms.
    pub last_rotated_at_ms: Option<i64>,
    /// When the value served last passed a live validation (`rotation validate`), Unix ms.
    pub last_validated_at_ms: Option<i64>,
    /// Owning team.
    pub owner: Option<String>,
    /// Until when a break-glass override is active, Unix ms.
    pub break_glass_enabled_until_ms: Option<i64>,
    /// The version a promote made this host serve when the config names a version number:
    /// it outranks that number until the config names it too, or `rotation unpin`.
    #[serde(default)]
    pub active_version: Option<String>,
}

impl SecretMeta {
    /// The GSM version this host serves instead of the configured one: the version being
    /// validated, else the promoted active version.
    pub(crate) fn pinned_version(&self) -> Option<&str> {
        self.rotating_version
            .as_deref()
            .or(self.active_version.as_deref())
    }

    /// Whether the config names a version number (rather than `latest` or an alias).
    pub(crate) fn config_pins_a_number(&self) -> bool {
        self.gcp_version_alias
            .as_deref()
            .is_some_and(crate::config::is_version_number)
    }
}
