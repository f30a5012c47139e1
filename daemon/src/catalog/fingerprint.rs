//! Keyed fingerprints of values: HMAC-SHA256 under a per-host key kept in a 0600 file beside
//! the database (never in it). Operators compare fingerprints across hosts that share the key
//! file; without the key a low-entropy secret cannot be brute-forced from its fingerprint.

#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of the fingerprint key.
pub(crate) const KEY_LEN: usize = 32;

/// The HMAC key.
pub(crate) struct FingerprintKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey([REDACTED])")
    }
}

/// The key file that goes with a database file.
pub(crate) fn key_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".fingerprint-key");
    PathBuf::from(name)
}

impl FingerprintKey {
    /// Loads the key, creating it (random, mode 0600) on first start.
    pub(crate) fn load_or_create(path: &Path) -> std::io::Result<FingerprintKey> {
        crate::util::key_file::load_or_create(path).map(FingerprintKey)
    }

    /// Loads a key that must exist (a fleet's shared key: never created here, where one host
    /// would invent a key nobody else has).
    pub(crate) fn load(path: &Path) -> std::io::Result<FingerprintKey> {
        crate::util::key_file::load(path).map(FingerprintKey)
    }

    /// A key from bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> FingerprintKey {
        FingerprintKey(Zeroizing::new(bytes))
    }

    /// The hex HMAC-SHA256 of `value`.
    pub(crate) fn fingerprint(&self, value: &[u8]) -> String {
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0[..]) else {
            return String::new();
        };
        mac.update(value);
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_stable() {
        let a = FingerprintKey::from_bytes([1; KEY_LEN]);
        let b = FingerprintKey::from_bytes([2; KEY_LEN]);
        assert_eq!(a.fingerprint(b"v"), a.fingerprint(b"v"));
        assert_ne!(a.fingerprint(b"v"), b.fingerprint(b"v"));
        assert_eq!(a.fingerprint(b"v").len(), 64);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k");
        let first = FingerprintKey::load_or_create(&path).expect("create");
        let again = FingerprintKey::load_or_create(&path).expect("load");
        assert_eq!(first.fingerprint(b"x"), again.fingerprint(b"x"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
