//! The sealed file's format: every record encrypted on its own with AES-256-GCM under the
//! host's key, with a fresh random nonce per record per write, and associated data that binds
//! the host's machine id, the secret's name, its version and its fetch time. A record moved to
//! another host, renamed, relabelled or re-dated does not open.
//!
//! ```text
//! "SLKG" | u8 format (1) | u32 count | count × record
//! record: u16 name_len | name | u16 version_len | version | i64 fetched_at_ms
//!         | nonce [12] | u32 ct_len | ciphertext with 16-byte tag
//! associated data: "secretd-lkg-v1" 0 | machine_id 0 | name 0 | version 0 | fetched_at_ms (LE)
//! ```
//! All integers are little-endian. The file never holds a value in the clear.

use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::catalog::source::MAX_SECRET_LEN;

/// The file's magic.
const MAGIC: &[u8; 4] = b"SLKG";
/// The format this build writes and reads.
const FORMAT: u8 = 1;
/// Bound into every record's associated data, so no other ciphertext under the key opens.
const AAD_CONTEXT: &[u8] = b"secretd-lkg-v1";
/// Bytes of the key.
pub(crate) const KEY_LEN: usize = 32;
/// The most records a file may hold (the catalog's limit).
pub(crate) const MAX_RECORDS: usize = crate::config::MAX_SECRETS;
/// The largest file read: every record at the largest value, with room for its fields.
pub(crate) const MAX_FILE: usize = MAX_RECORDS * (MAX_SECRET_LEN + 1024) + 16;

/// One secret's value as sealed: which secret, which version, when it was fetched.
pub(crate) struct Record {
    /// The catalog name.
    pub(crate) name: String,
    /// GSM's version number.
    pub(crate) version: String,
    /// When the daemon fetched it, Unix ms.
    pub(crate) fetched_at_ms: i64,
    /// The value, wiped on drop.
    pub(crate) value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("fetched_at_ms", &self.fetched_at_ms)
            .field(
                "value",
                &format_args!("[REDACTED; {} bytes]", self.value.len()),
            )
            .finish()
    }
}

/// Why a file was refused. It says which check failed, never anything of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsealable {
    /// Not a last-known-good file, or one of a format this build does not read.
    #[error("not a last-known-good file of format {FORMAT}")]
    Format,
    /// The file ends inside a record, or has bytes after the last one.
    #[error("the file is truncated or has trailing bytes")]
    Truncated,
    /// A field is out of bounds.
    #[error("a record is malformed")]
    Malformed,
    /// A record does not open: another key, another host, or altered bytes.
    #[error("a record does not open: sealed with another key or on another host, or altered")]
    Authentication,
}

/// Why sealing failed (AES-GCM refuses only absurd lengths, which the catalog's limits rule out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM refused to seal a record")]
pub(crate) struct SealFailed;

fn aad(machine_id: &str, name: &str, version: &str, fetched_at_ms: i64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + machine_id.len() + name.len() + 32);
    for part in [
        AAD_CONTEXT,
        machine_id.as_bytes(),
        name.as_bytes(),
        version.as_bytes(),
    ] {
        aad.extend_from_slice(part);
        aad.push(0);
    }
    aad.extend_from_slice(&fetched_at_ms.to_le_bytes());
    aad
}

/// Seals `records` (name, version, fetch time, the value) into a whole file.
pub(crate) fn seal<'a>(
    key: &[u8; KEY_LEN],
    machine_id: &str,
    records: impl ExactSizeIterator<Item = (&'a str, &'a str, i64, &'a [u8])>,
) -> Result<Vec<u8>, SealFailed> {
    let cipher = Aes256Gcm::new(key.into());
    let count = u32::try_from(records.len()).map_err(|_| SealFailed)?;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&count.to_le_bytes());
    for (name, version, fetched_at_ms, value) in records {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        // Encrypted in a wiped buffer: the plaintext copy never outlives this iteration.
        let mut buffer = Zeroizing::new(Vec::with_capacity(value.len() + 16));
        buffer.extend_from_slice(value);
        cipher
            .encrypt_in_place(
                Nonce::from_slice(&nonce),
                &aad(machine_id, name, version, fetched_at_ms),
                &mut *buffer,
            )
            .map_err(|_| SealFailed)?;
        let name_len = u16::try_from(name.len()).map_err(|_| SealFailed)?;
        let version_len = u16::try_from(version.len()).map_err(|_| SealFailed)?;
        let ct_len = u32::try_from(buffer.len()).map_err(|_| SealFailed)?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&version_len.to_le_bytes());
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(&fetched_at_ms.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct_len.to_le_bytes());
        out.extend_from_slice(&buffer);
    }
    Ok(out)
}

/// Reads fields off the file, failing on truncation.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unsealable> {
        if self.0.len() < n {
            return Err(Unsealable::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Unsealable> {
        self.take(N)?.try_into().map_err(|_| Unsealable::Truncated)
    }

    fn text(&mut self, len: usize) -> Result<String, Unsealable> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| Unsealable::Malformed)
    }
}

/// Opens a whole file. Any record that does not open refuses the whole file: a file that was
/// tampered with is not trusted in part.
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    machine_id: &str,
    file: &[u8],
) -> Result<Vec<Record>, Unsealable> {
    let cipher = Aes256Gcm::new(key.into());
    let mut c = Cursor(file);
    if c.take(MAGIC.len()).map_err(|_| Unsealable::Format)? != MAGIC
        || c.array::<1>().map_err(|_| Unsealable::Format)?[0] != FORMAT
    {
        return Err(Unsealable::Format);
    }
    let count = u32::from_le_bytes(c.array()?) as usize;
    if count > MAX_RECORDS {
        return Err(Unsealable::Malformed);
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = u16::from_le_bytes(c.array()?) as usize;
        let name = c.text(name_len)?;
        let version_len = u16::from_le_bytes(c.array()?) as usize;
        let version = c.text(version_len)?;
        let fetched_at_ms = i64::from_le_bytes(c.array()?);
        let nonce: [u8; 12] = c.array()?;
        let ct_len = u32::from_le_bytes(c.array()?) as usize;
        if ct_len > MAX_SECRET_LEN + 16 {
            return Err(Unsealable::Malformed);
        }
        let mut value = Zeroizing::new(c.take(ct_len)?.to_vec());
        cipher
            .decrypt_in_place(
                Nonce::from_slice(&nonce),
                &aad(machine_id, &name, &version, fetched_at_ms),
                &mut *value,
            )
            .map_err(|_| Unsealable::Authentication)?;
        records.push(Record {
            name,
            version,
            fetched_at_ms,
            value,
        });
    }
    if !c.0.is_empty() {
        return Err(Unsealable::Truncated);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
    const HOST: &str = "0123456789abcdef0123456789abcdef";

    fn file() -> Vec<u8> {
        let records = [
            (
                "trading_api_key",
                "3",
                1_700_000_000_000,
                &b"Omni-Key-LKG-1111!"[..],
            ),
            (
                "trading_client_secret",
                "12",
                1_700_000_001_000,
                &b"Client-LKG-2222!"[..],
            ),
        ];
        seal(&KEY, HOST, records.into_iter()).expect("seal")
    }

    #[test]
    fn round_trip_holds_no_plaintext() {
        let sealed = file();
        assert!(
            !sealed
                .windows(8)
                .any(|w| w == b"Omni-Key" || w == b"Client-L")
        );
        let opened = open(&KEY, HOST, &sealed).expect("open");
        assert_eq!(opened.len(), 2);
        assert_eq!(opened[0].name, "trading_api_key");
        assert_eq!(opened[0].version, "3");
        assert_eq!(opened[0].fetched_at_ms, 1_700_000_000_000);
        assert_eq!(&opened[0].value[..], b"Omni-Key-LKG-1111!");
        assert!(!format!("{:?}", opened[0]).contains("Omni"));
        // A fresh nonce per write: two seals of the same values differ.
        assert_ne!(file(), file());
    }

    #[test]
    fn every_foreign_or_damaged_file_is_refused() {
        let sealed = file();
        assert_eq!(
            open(&[8; KEY_LEN], HOST, &sealed).expect_err("foreign key"),
            Unsealable::Authentication
        );
        assert_eq!(
            open(&KEY, "another-host", &sealed).expect_err("foreign host"),
            Unsealable::Authentication
        );
        for cut in [0, 3, 9, 20, sealed.len() - 1] {
            assert!(open(&KEY, HOST, &sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            open(&KEY, HOST, &longer).expect_err("trailing"),
            Unsealable::Truncated
        );
        // Every single flipped bit is caught, in a header field or in a ciphertext.
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(open(&KEY, HOST, &flipped).is_err(), "flip at byte {i}");
        }
    }
}
