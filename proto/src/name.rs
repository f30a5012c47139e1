//! Secret names: what the catalog can hold, checked the same way by the daemon and clients.

/// The longest secret name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that a secret name is one the catalog could hold: 1 to [`MAX_NAME_LEN`] bytes of
/// ASCII letters, digits, `_`, `-` and `.`, starting with a letter or digit.
///
/// The error text describes the problem without echoing arbitrary bytes back.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("secret name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("secret name is longer than 128 bytes");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("secret name must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("secret name may only contain ASCII letters, digits, '_', '-' and '.'");
    }
    Ok(())
}
