//! This host's identity: systemd's machine id, stable across reboots and unique per host. The
//! last-known-good file and host-bound break-glass envelopes are bound to it.

use std::io;

/// Where the machine id is read.
pub(crate) const MACHINE_ID: &str = "/etc/machine-id";

/// This host's machine id.
pub(crate) fn machine_id() -> io::Result<String> {
    let id = std::fs::read_to_string(MACHINE_ID)?;
    let id = id.trim();
    if id.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{MACHINE_ID} is empty"),
        ));
    }
    Ok(id.to_owned())
}
