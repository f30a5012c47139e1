use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretBox};
use secretd_proto::{SecretReply, SourceKind};

/// A secret value and what the daemon knows about it.
///
/// The bytes live in one exact-size allocation that is wiped on drop. `Debug` shows the
/// metadata and the length, never the value.
pub struct Secret {
    /// The value; only reachable through [`Secret::expose`].
    value: SecretBox<[u8]>,
    /// The source's version of the value.
    version: String,
    /// Where the daemon got it.
    source: SourceKind,
    /// When the daemon fetched it.
    fetched_at: SystemTime,
    /// When the daemon will refresh it.
    expires_at: SystemTime,
}

fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

impl Secret {
    pub(crate) fn from_reply(reply: SecretReply<'_>) -> Secret {
        let mut owned = reply.value.into_owned();
        // The decoded Vec has exact capacity, so this moves the allocation without copying.
        let bytes = std::mem::take(&mut *owned).into_boxed_slice();
        Secret {
            value: SecretBox::new(bytes),
            version: reply.version,
            source: reply.source,
            fetched_at: from_unix_ms(reply.fetched_at_ms),
            expires_at: from_unix_ms(reply.expires_at_ms),
        }
    }

    /// A copy of a cached value (the client-side cache keeps its own locked copy).
    pub(crate) fn from_parts(
        value: &[u8],
        version: String,
        source: SourceKind,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) -> Secret {
        Secret {
            value: SecretBox::new(Box::from(value)),
            version,
            source,
            fetched_at,
            expires_at,
        }
    }

    /// The value's bytes.
    pub fn expose(&self) -> &[u8] {
        self.value.expose_secret()
    }

    /// The value as UTF-8 text.
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.expose())
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source's version of this value (the GSM version number, or a local counter).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the daemon got the value.
    pub fn source(&self) -> SourceKind {
        self.source
    }

    /// When the daemon fetched the value.
    pub fn fetched_at(&self) -> SystemTime {
        self.fetched_at
    }

    /// When the daemon will refresh the value.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("version", &self.version)
            .field("source", &self.source)
            .field("value", &format_args!("[REDACTED; {} bytes]", self.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretd_proto::SecretValue;

    #[test]
    fn debug_masks_value() {
        let s = Secret::from_reply(SecretReply {
            version: "3".into(),
            source: SourceKind::Gsm,
            fetched_at_ms: 0,
            expires_at_ms: 1000,
            value: SecretValue::Borrowed(b"hunter2-very-secret"),
        });
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("19 bytes"));
        assert_eq!(s.expose(), b"hunter2-very-secret");
        assert_eq!(s.expires_at(), UNIX_EPOCH + Duration::from_secs(1));
    }
}
