//! Who asks for a credential: systemd connects for a unit from an abstract address that names
//! the unit and the credential (`\0<hex>/unit/<unit>/<id>`, systemd 250 and later), as root,
//! from a process already in the unit's cgroup. All three are checked: the address alone is
//! any root process's to choose.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::server::identity::attest::unit_of_process;
use crate::server::transport::socket::{Side, unix_address};

/// The longest unit name systemd allows.
const MAX_UNIT_NAME: usize = 255;

/// A credential request as systemd made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// The unit being started (`mm-bot.service`).
    pub(super) unit: String,
    /// The credential id: the secret's name.
    pub(super) id: String,
    /// The connecting process (systemd's helper in the unit's cgroup), for the audit.
    pub(super) pid: i32,
}

/// Why a connection is not a credential request secretd answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotARequest {
    /// Only the system manager (root) loads credentials.
    #[error("the peer is uid {0}, not systemd (uid 0)")]
    NotRoot(u32),
    /// The peer's address is not systemd's `\0<hex>/unit/<unit>/<id>`.
    #[error("the peer's address is not a systemd credential request ({0})")]
    Address(String),
    /// The connecting process is not in the unit its address names.
    #[error("the connecting process is in {found}, not in {unit}")]
    WrongUnit {
        /// The unit the address names.
        unit: String,
        /// Where the process is (or "no system unit").
        found: String,
    },
}

impl NotARequest {
    /// The unit to name in the log, when the address named one.
    pub(super) fn unit(&self) -> Option<&str> {
        match self {
            NotARequest::WrongUnit { unit, .. } => Some(unit),
            _ => None,
        }
    }
}

/// Reads and checks who is asking on `fd`.
pub(super) fn identify(fd: BorrowedFd<'_>) -> Result<Request, NotARequest> {
    let cred = crate::server::identity::peer_cred(fd)
        .map_err(|e| NotARequest::Address(format!("no peer credentials: {e}")))?;
    if cred.uid != 0 {
        return Err(NotARequest::NotRoot(cred.uid));
    }
    let address = unix_address(fd.as_raw_fd(), Side::Peer)
        .map_err(|e| NotARequest::Address(format!("no peer address: {e}")))?;
    let (unit, id) = parse_address(&address)?;
    match unit_of_process(cred.pid) {
        Some(found) if found == unit => Ok(Request {
            unit,
            id,
            pid: cred.pid,
        }),
        found => Err(NotARequest::WrongUnit {
            unit,
            found: found.unwrap_or_else(|| "no system unit".into()),
        }),
    }
}

/// `\0<1-16 hex digits>/unit/<unit>/<id>` → (unit, id).
pub(super) fn parse_address(address: &[u8]) -> Result<(String, String), NotARequest> {
    let shown = || NotARequest::Address(format!("{:?}", String::from_utf8_lossy(address)));
    let rest = address.strip_prefix(b"\0").ok_or_else(shown)?;
    let text = std::str::from_utf8(rest).map_err(|_| shown())?;
    let mut parts = text.splitn(4, '/');
    let (hex, kind, unit, id) = (
        parts.next().ok_or_else(shown)?,
        parts.next().ok_or_else(shown)?,
        parts.next().ok_or_else(shown)?,
        parts.next().ok_or_else(shown)?,
    );
    let hex_ok = (1..=16).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let unit_ok = (1..=MAX_UNIT_NAME).contains(&unit.len())
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    if !hex_ok || kind != "unit" || !unit_ok || secretd_proto::validate_name(id).is_err() {
        return Err(shown());
    }
    Ok((unit.to_owned(), id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_address_names_the_unit_and_the_credential() {
        assert_eq!(
            parse_address(b"\0adf9d86b6eda275e/unit/mm-bot.service/trading_api_key"),
            Ok(("mm-bot.service".into(), "trading_api_key".into()))
        );
        assert_eq!(
            parse_address(b"\0a/unit/fix-gw@2.service/k").map(|(u, _)| u),
            Ok("fix-gw@2.service".into())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b""[..],
            b"/run/x.sock",
            b"\0/unit/a.service/k",
            b"\x000123456789abcdef0/unit/a.service/k",
            b"\0zz/unit/a.service/k",
            b"\0ab/user/a.service/k",
            b"\0ab/unit/a.service",
            b"\0ab/unit/a b.service/k",
            b"\0ab/unit/a.service/../k",
            b"\0ab/unit//k",
        ] {
            assert!(
                parse_address(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
