//! The one type that holds secret values inside the daemon.

use zeroize::{Zeroize, Zeroizing};

/// A secret value: one exact-size heap allocation, wiped on drop, never printed.
///
/// Exact size matters: a `Vec` that grows copies its contents and frees the old buffer
/// without wiping it, leaving a copy `zeroize` can never reach.
pub struct SecretBytes(Box<[u8]>);

impl SecretBytes {
    /// Copies `bytes` into a new exact-size allocation. The caller wipes its own copy.
    pub fn copy_from(bytes: &[u8]) -> SecretBytes {
        SecretBytes(bytes.to_vec().into_boxed_slice())
    }

    /// Takes ownership of a zeroizing buffer, moving (not copying) it when it is exact-size.
    pub fn from_zeroizing(mut bytes: Zeroizing<Vec<u8>>) -> SecretBytes {
        if bytes.len() == bytes.capacity() {
            SecretBytes(std::mem::take(&mut *bytes).into_boxed_slice())
        } else {
            SecretBytes::copy_from(&bytes)
        }
    }

    /// The bytes. Named so that every use stands out in review.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Equality in time that depends only on the lengths, not on where the bytes differ.
    pub fn ct_eq(&self, other: &SecretBytes) -> bool {
        let (a, b) = (self.expose(), other.expose());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
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
