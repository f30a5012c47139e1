//! The break-glass envelope: an emergency value sealed for the daemon's RSA key.
//!
//! RSA-OAEP (SHA-256, MGF1-SHA256) wraps a random AES-256-GCM key; GCM encrypts the value with
//! associated data that binds the secret name, the expiry and, optionally, the one host (its
//! machine id) that may apply it, so none can be changed without the daemon noticing. Layout
//! (all integers little-endian):
//!
//! ```text
//! "SBG1" | u16 name_len | name | i64 expires_at_ms | u16 wrapped_len | wrapped AES key
//!        | nonce [12] | u32 ct_len | ciphertext with 16-byte tag
//! "SBG2" | u16 name_len | name | u16 host_len | host | i64 expires_at_ms | (as SBG1)
//! ```
//!
//! As a file it is armored base64 between `-----BEGIN/END SECRETD BREAK-GLASS-----` lines.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::sha2::Sha256;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use zeroize::Zeroizing;

/// The envelope format's magic and version: not bound to a host.
const MAGIC: &[u8; 4] = b"SBG1";
/// The format bound to one host's machine id.
const MAGIC_HOST: &[u8; 4] = b"SBG2";
/// The longest host id (a machine id is 32 hex digits).
pub(crate) const MAX_HOST_LEN: usize = 255;
/// Bound into the associated data so ciphertexts cannot be reused by another protocol.
const AAD_CONTEXT: &[u8] = b"secretd-break-glass-v1";
/// The largest envelope accepted (a 64 KiB value plus headers and a large RSA key).
pub(crate) const MAX_ENVELOPE: usize = 80 * 1024;
/// The smallest RSA key accepted.
pub(crate) const MIN_RSA_BITS: usize = 3072;
const ARMOR_BEGIN: &str = "-----BEGIN SECRETD BREAK-GLASS-----";
const ARMOR_END: &str = "-----END SECRETD BREAK-GLASS-----";

/// Why sealing failed (client side; may be specific).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The public key is too small.
    #[error("the public key has {0} bits; break-glass needs at least {MIN_RSA_BITS}")]
    WeakKey(usize),
    /// A field does not fit the format.
    #[error("{0}")]
    TooLarge(&'static str),
    /// AES-GCM refused the key or the value.
    #[error("sealing failed: AES-256-GCM refused the key or the value")]
    Aead,
    /// RSA-OAEP could not wrap the key.
    #[error("sealing failed: {0}")]
    Rsa(#[source] rsa::Error),
}

/// The one error for any envelope that does not open: wrong key, tampering, truncation. It says
/// nothing about which check failed, so a caller cannot use it as an oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("break-glass envelope rejected")]
pub(crate) struct Rejected;

/// A verified, decrypted envelope.
pub(crate) struct Opened {
    /// The catalog name the value is for.
    pub(crate) name: String,
    /// When the override ends, Unix ms.
    pub(crate) expires_at_ms: i64,
    /// The only host (machine id) that may apply it, when bound.
    pub(crate) host: Option<String>,
    /// The emergency value.
    pub(crate) value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("name", &self.name)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("host", &self.host)
            .field(
                "value",
                &format_args!("[REDACTED; {} bytes]", self.value.len()),
            )
            .finish()
    }
}

fn aad(name: &str, expires_at_ms: i64, host: Option<&str>) -> Vec<u8> {
    let mut aad = AAD_CONTEXT.to_vec();
    aad.extend_from_slice(&(name.len() as u16).to_le_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&expires_at_ms.to_le_bytes());
    if let Some(host) = host {
        aad.extend_from_slice(b"host");
        aad.extend_from_slice(&(host.len() as u16).to_le_bytes());
        aad.extend_from_slice(host.as_bytes());
    }
    aad
}

/// Seals `value` for `name` until `expires_at_ms` with the daemon's public key, for any host
/// holding the private key or only for `host` (a machine id).
pub(crate) fn seal(
    public: &RsaPublicKey,
    name: &str,
    expires_at_ms: i64,
    host: Option<&str>,
    value: &[u8],
) -> Result<Vec<u8>, SealError> {
    if host.is_some_and(|h| h.is_empty() || h.len() > MAX_HOST_LEN) {
        return Err(SealError::TooLarge("the host id must be 1 to 255 bytes"));
    }
    use rsa::traits::PublicKeyParts;
    let bits = public.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(SealError::WeakKey(bits));
    }
    let name_len = u16::try_from(name.len()).map_err(|_| SealError::TooLarge("name too long"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut key[..]);
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| SealError::Aead)?;
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value,
                aad: &aad(name, expires_at_ms, host),
            },
        )
        .map_err(|_| SealError::Aead)?;
    let wrapped = public
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &key[..])
        .map_err(SealError::Rsa)?;
    let mut out = Vec::with_capacity(64 + name.len() + wrapped.len() + ciphertext.len());
    out.extend_from_slice(if host.is_some() { MAGIC_HOST } else { MAGIC });
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(&(host.len() as u16).to_le_bytes());
        out.extend_from_slice(host.as_bytes());
    }
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.extend_from_slice(&(wrapped.len() as u16).to_le_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&nonce);
    let ct_len =
        u32::try_from(ciphertext.len()).map_err(|_| SealError::TooLarge("value too large"))?;
    out.extend_from_slice(&ct_len.to_le_bytes());
    out.extend_from_slice(&ciphertext);
    if out.len() > MAX_ENVELOPE {
        return Err(SealError::TooLarge(
            "value too large for a break-glass envelope",
        ));
    }
    Ok(out)
}

/// Parsed, unauthenticated fields.
struct Parts<'a> {
    name: &'a [u8],
    host: Option<&'a [u8]>,
    expires_at_ms: i64,
    wrapped: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse(envelope: &[u8]) -> Option<Parts<'_>> {
    let mut rest = envelope;
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    };
    let bound = match take(4)? {
        m if m == MAGIC => false,
        m if m == MAGIC_HOST => true,
        _ => return None,
    };
    let name_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let name = take(name_len)?;
    let host = if bound {
        let host_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        Some(take(host_len)?)
    } else {
        None
    };
    let expires_at_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let wrapped_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let wrapped = take(wrapped_len)?;
    let nonce = take(12)?;
    let ct_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let ciphertext = take(ct_len)?;
    rest.is_empty().then_some(Parts {
        name,
        host,
        expires_at_ms,
        wrapped,
        nonce,
        ciphertext,
    })
}

/// Opens an envelope with the daemon's private key. Every failure is the same [`Rejected`],
/// and no partial plaintext is ever returned.
pub(crate) fn open(private: &RsaPrivateKey, envelope: &[u8]) -> Result<Opened, Rejected> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(Rejected);
    }
    let parts = parse(envelope).ok_or(Rejected)?;
    let name = std::str::from_utf8(parts.name).map_err(|_| Rejected)?;
    let host = parts
        .host
        .map(|h| std::str::from_utf8(h).map_err(|_| Rejected))
        .transpose()?;
    let key = Zeroizing::new(
        private
            .decrypt(Oaep::new::<Sha256>(), parts.wrapped)
            .map_err(|_| Rejected)?,
    );
    let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| Rejected)?;
    // GCM checks the tag before releasing any plaintext.
    let value = cipher
        .decrypt(
            Nonce::from_slice(parts.nonce),
            Payload {
                msg: parts.ciphertext,
                aad: &aad(name, parts.expires_at_ms, host),
            },
        )
        .map_err(|_| Rejected)?;
    Ok(Opened {
        name: name.to_owned(),
        expires_at_ms: parts.expires_at_ms,
        host: host.map(str::to_owned),
        value: Zeroizing::new(value),
    })
}

/// The armored text form of an envelope.
pub(crate) fn armor(envelope: &[u8]) -> String {
    format!("{ARMOR_BEGIN}\n{}\n{ARMOR_END}\n", B64.encode(envelope))
}

/// Reads an armored (or bare base64) envelope.
pub(crate) fn dearmor(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != ARMOR_BEGIN && *l != ARMOR_END)
        .collect();
    B64.decode(body).ok().filter(|b| b.len() <= MAX_ENVELOPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn keys() -> &'static (RsaPrivateKey, RsaPublicKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPublicKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let private = RsaPrivateKey::new(&mut OsRng, MIN_RSA_BITS).expect("keygen");
            let public = private.to_public_key();
            (private, public)
        })
    }

    #[test]
    fn seal_open_and_every_tampering_is_rejected() {
        let (private, public) = keys();
        let env = seal(
            public,
            "trading_api_key",
            1_800_000_000_000,
            None,
            b"emergency",
        )
        .expect("seal");
        let opened = open(private, &env).expect("open");
        assert_eq!(opened.name, "trading_api_key");
        assert_eq!(opened.expires_at_ms, 1_800_000_000_000);
        assert_eq!(&opened.value[..], b"emergency");
        assert!(!format!("{opened:?}").contains("emergency"));
        assert_eq!(dearmor(&armor(&env)).expect("armor"), env);

        // Flip each byte in turn: every position is covered by the tag, the AAD or the parser.
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(
                open(private, &bad).is_err(),
                "byte {i} flipped and accepted"
            );
        }
        assert_eq!(open(private, &env[..env.len() - 1]).err(), Some(Rejected));
        let mut longer = env.clone();
        longer.push(0);
        assert!(open(private, &longer).is_err());
        assert!(open(private, b"").is_err());

        let other = RsaPrivateKey::new(&mut OsRng, 2048).expect("small key");
        assert!(matches!(
            seal(&other.to_public_key(), "k", 1, None, b"v"),
            Err(SealError::WeakKey(2048))
        ));
    }

    #[test]
    fn a_host_bound_envelope_names_its_host_and_every_tampering_is_rejected() {
        let (private, public) = keys();
        let host = "0123456789abcdef0123456789abcdef";
        let env = seal(
            public,
            "trading_api_key",
            1_800_000_000_000,
            Some(host),
            b"emergency",
        )
        .expect("seal");
        assert_eq!(&env[..4], b"SBG2");
        let opened = open(private, &env).expect("open");
        assert_eq!(opened.host.as_deref(), Some(host));
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(
                open(private, &bad).is_err(),
                "byte {i} flipped and accepted"
            );
        }
        // Turning a bound envelope into an unbound one breaks the tag.
        let mut unbound = env.clone();
        unbound[3] = b'1';
        assert!(open(private, &unbound).is_err());
    }
}
