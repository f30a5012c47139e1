//! Rotation, in one room: the state machine an operator's steps move a secret through
//! (`begin`, `validate`, `promote`, `abort`, `unpin`: [`transition`]), the due-date monitor
//! ([`due`]), and GSM's rotation schedule, the only witness a `SECRET_ROTATE` message is
//! believed on ([`schedule`]). The request that takes a step is
//! `server::requests::rotation`; the state itself is a row of the store
//! (`store::metadata::SecretMeta`).

pub(crate) mod due;
pub(crate) mod schedule;

use crate::store::metadata::{ROTATION_PERIOD_MS, SecretMeta, Status};

/// A rotation step an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Pin `version` for staged validation.
    Begin(String),
    /// Make the pinned version the active one.
    Promote,
    /// Return to the configured alias.
    Abort,
    /// Record a successful live validation of the value served.
    Validate,
    /// Drop the active version and serve the config's again.
    Unpin,
}

/// Why a rotation step is not allowed from the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransitionError {
    /// Deprecated secrets are kept for reference only.
    #[error("{name} is deprecated and cannot be rotated")]
    Deprecated {
        /// The secret.
        name: String,
    },
    /// One rotation at a time.
    #[error("{name} is already rotating to version {version}; promote or abort it first")]
    AlreadyRotating {
        /// The secret.
        name: String,
        /// The version being validated.
        version: String,
    },
    /// Promote and abort need a rotation in progress.
    #[error("{name} is not rotating; begin a rotation first")]
    NotRotating {
        /// The secret.
        name: String,
    },
    /// Unpin needs an active version.
    #[error("{name} has no active version; it already serves the config's version")]
    NotPinned {
        /// The secret.
        name: String,
    },
    /// Unpin during a rotation would leave nothing to return to after an abort.
    #[error("{name} is rotating; promote or abort it first")]
    Rotating {
        /// The secret.
        name: String,
    },
}

/// Applies `step` at `now_ms`, or explains why the transition is not allowed.
pub(crate) fn transition(
    meta: &SecretMeta,
    step: &Step,
    now_ms: i64,
) -> Result<SecretMeta, TransitionError> {
    let mut next = meta.clone();
    let name = || meta.name.clone();
    match (meta.status, step) {
        (Status::Deprecated, _) => {
            return Err(TransitionError::Deprecated { name: name() });
        }
        (Status::Active, Step::Begin(v)) => {
            next.status = Status::Rotating;
            next.rotating_version = Some(v.clone());
        }
        (Status::Rotating, Step::Begin(_)) => {
            return Err(TransitionError::AlreadyRotating {
                name: name(),
                version: meta.rotating_version.clone().unwrap_or_else(|| "?".into()),
            });
        }
        (Status::Active, Step::Promote | Step::Abort) => {
            return Err(TransitionError::NotRotating { name: name() });
        }
        (Status::Rotating, Step::Promote) => {
            next.status = Status::Active;
            let validated = next.rotating_version.take();
            // Over a version number in the config, the validated version stays pinned as the
            // host's active version (returning to the number would serve the old key). Over
            // `latest` or an alias the caller checked that GSM resolves it to the validated
            // version: nothing to pin.
            next.active_version = if meta.config_pins_a_number() {
                validated.filter(|v| Some(v) != meta.gcp_version_alias.as_ref())
            } else {
                None
            };
            next.last_rotated_at_ms = Some(now_ms);
            next.rotation_due_at_ms = now_ms.saturating_add(ROTATION_PERIOD_MS);
        }
        (Status::Rotating, Step::Abort) => {
            next.status = Status::Active;
            next.rotating_version = None;
        }
        (Status::Rotating, Step::Unpin) => {
            return Err(TransitionError::Rotating { name: name() });
        }
        (Status::Active, Step::Unpin) => {
            if next.active_version.take().is_none() {
                return Err(TransitionError::NotPinned { name: name() });
            }
        }
        (_, Step::Validate) => {
            next.last_validated_at_ms = Some(now_ms);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(status: Status) -> SecretMeta {
        SecretMeta {
            id: "id".into(),
            name: "k".into(),
            environment: None,
            gcp_secret_id: None,
            gcp_version_alias: None,
            status,
            rotating_version: None,
            rotation_due_at_ms: 1_000,
            last_rotated_at_ms: None,
            last_validated_at_ms: None,
            owner: None,
            break_glass_enabled_until_ms: None,
            active_version: None,
        }
    }

    #[test]
    fn transitions() {
        let now = 10 * ROTATION_PERIOD_MS;
        let rotating =
            transition(&meta(Status::Active), &Step::Begin("7".into()), now).expect("begin");
        assert_eq!(rotating.status, Status::Rotating);
        assert_eq!(rotating.rotating_version.as_deref(), Some("7"));
        assert!(transition(&rotating, &Step::Begin("8".into()), now).is_err());
        let promoted = transition(&rotating, &Step::Promote, now).expect("promote");
        assert_eq!(promoted.status, Status::Active);
        assert_eq!(promoted.last_rotated_at_ms, Some(now));
        assert_eq!(promoted.rotation_due_at_ms, now + ROTATION_PERIOD_MS);
        assert_eq!(promoted.active_version, None, "no number in the config");
        let aborted = transition(&rotating, &Step::Abort, now).expect("abort");
        assert_eq!(
            (aborted.status, aborted.last_rotated_at_ms),
            (Status::Active, None)
        );
        assert!(transition(&meta(Status::Active), &Step::Promote, now).is_err());
        assert!(transition(&meta(Status::Active), &Step::Abort, now).is_err());
        assert!(transition(&meta(Status::Deprecated), &Step::Begin("1".into()), now).is_err());
        // Over a number in the config the validated version stays pinned, until unpinned.
        let mut numbered = rotating.clone();
        numbered.gcp_version_alias = Some("3".into());
        let promoted = transition(&numbered, &Step::Promote, now).expect("promote");
        assert_eq!(promoted.active_version.as_deref(), Some("7"));
        assert_eq!(promoted.pinned_version(), Some("7"));
        assert!(
            transition(&numbered, &Step::Unpin, now).is_err(),
            "rotating"
        );
        let unpinned = transition(&promoted, &Step::Unpin, now).expect("unpin");
        assert_eq!(unpinned.pinned_version(), None);
        assert!(
            transition(&unpinned, &Step::Unpin, now).is_err(),
            "nothing pinned"
        );
        // Promoting the config's own number pins nothing.
        numbered.gcp_version_alias = Some("7".into());
        let same = transition(&numbered, &Step::Promote, now).expect("promote");
        assert_eq!(same.active_version, None);
        // Validate only records when.
        let validated = transition(&promoted, &Step::Validate, now + 5).expect("validate");
        assert_eq!(validated.last_validated_at_ms, Some(now + 5));
        assert_eq!(validated.pinned_version(), Some("7"));
    }
}
