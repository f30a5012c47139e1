//! 32-byte key files kept outside the database (fingerprint key, audit chain key): mode 0600
//! or stricter, owned by root or the daemon's own uid, created with random bytes on first start
//! when the caller allows it.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

/// Bytes of every key.
pub(crate) const KEY_LEN: usize = 32;

/// A key, wiped on drop.
pub(crate) type Key = Zeroizing<[u8; KEY_LEN]>;

/// Reads the key at `path`; refuses one others can read, or one owned by anyone but root and
/// the daemon's uid (its owner could have put their own key there, or can swap it later).
pub(crate) fn load(path: &Path) -> std::io::Result<Key> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}; a key must belong to root or the daemon's uid ({me})",
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is readable by others (mode {:o}); it must be 0600",
            path.display(),
            mode & 0o777
        )));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    f.read_exact(&mut key[..])?;
    Ok(key)
}

/// Reads the key at `path`, creating it (random, mode 0600) when there is none.
pub(crate) fn load_or_create(path: &Path) -> std::io::Result<Key> {
    match load(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            getrandom::fill(&mut key[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&key[..])?;
            f.sync_all()?;
            Ok(key)
        }
        other => other,
    }
}
