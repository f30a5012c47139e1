//! The one type that holds secret values inside the daemon.

use std::sync::atomic::{AtomicBool, Ordering};

use secretd_proto::LockedBuf;
use zeroize::Zeroizing;

/// Whether a buffer that could not be locked was reported: once per process is enough (the
/// `omni_secretd_unlocked_buffers` gauge keeps the count).
static REPORTED_UNLOCKED: AtomicBool = AtomicBool::new(false);

/// A secret value: one exact-size buffer in its own locked, no-dump, wipe-on-fork mapping,
/// wiped on drop, never printed.
///
/// Exact size matters: a `Vec` that grows copies its contents and frees the old buffer
/// without wiping it, leaving a copy `zeroize` can never reach.
pub(crate) struct SecretBytes(LockedBuf);

impl SecretBytes {
    /// Copies `bytes` into a new locked buffer. The caller wipes its own copy.
    pub(crate) fn copy_from(bytes: &[u8]) -> SecretBytes {
        let buf = LockedBuf::copy_from(bytes);
        if !buf.is_locked() && !REPORTED_UNLOCKED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "memory.unlocked",
                "cannot lock secret memory into RAM (RLIMIT_MEMLOCK is too low): values may be \
                 swapped to disk; raise LimitMEMLOCK (omni_secretd_unlocked_buffers counts them)"
            );
        }
        SecretBytes(buf)
    }

    /// Takes a zeroizing buffer: copies it into locked memory, then wipes it.
    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> SecretBytes {
        SecretBytes::copy_from(&bytes)
    }

    /// The bytes. Named so that every use stands out in review.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// Length in bytes (safe to log).
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Equality in time that depends only on the lengths, not on where the bytes differ.
    pub(crate) fn ct_eq(&self, other: &SecretBytes) -> bool {
        let (a, b) = (self.expose(), other.expose());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_compared() {
        let a = SecretBytes::copy_from(b"hunter2");
        assert_eq!(format!("{a:?}"), "SecretBytes([REDACTED; 7 bytes])");
        assert!(a.ct_eq(&SecretBytes::copy_from(b"hunter2")));
        assert!(!a.ct_eq(&SecretBytes::copy_from(b"hunter3")));
        assert!(!a.ct_eq(&SecretBytes::copy_from(b"hunter")));
        let moved = SecretBytes::from_zeroizing(Zeroizing::new(b"abc".to_vec()));
        assert_eq!(moved.expose(), b"abc");
    }
}
