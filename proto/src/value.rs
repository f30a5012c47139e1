//! The secret bytes inside a [`crate::SecretReply`].
//!
//! On the daemon side a reply borrows the cached value, so serving a read copies it only once,
//! into the frame buffer. On the client side the value is decoded straight into zeroizing memory
//! of exactly the right size. Neither side can print it.

use bincode::de::read::Reader;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use zeroize::Zeroizing;

/// Secret bytes, borrowed (for encoding) or owned and zeroized on drop (after decoding).
///
/// Wire form: a `u64` length then the bytes, exactly like a bincode `Vec<u8>`.
pub enum SecretValue<'a> {
    /// A view of a value someone else keeps (the daemon's cache).
    Borrowed(&'a [u8]),
    /// A decoded value; wiped when dropped.
    Owned(Zeroizing<Vec<u8>>),
}

impl SecretValue<'_> {
    /// The bytes. Named so that every use is easy to find in review.
    pub fn expose(&self) -> &[u8] {
        match self {
            SecretValue::Borrowed(b) => b,
            SecretValue::Owned(v) => v,
        }
    }

    /// The value's length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the owned bytes out (copying a borrowed value into zeroizing memory).
    pub fn into_owned(self) -> Zeroizing<Vec<u8>> {
        match self {
            SecretValue::Borrowed(b) => Zeroizing::new(b.to_vec()),
            SecretValue::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for SecretValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue([REDACTED; {} bytes])", self.len())
    }
}

impl PartialEq for SecretValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        // Only tests compare values; constant time is not needed for equality of test data,
        // but there is no reason to leak timing either.
        let (a, b) = (self.expose(), other.expose());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for SecretValue<'_> {}

impl Encode for SecretValue<'_> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.expose().encode(encoder)
    }
}

fn decode_owned<D: Decoder>(decoder: &mut D) -> Result<SecretValue<'static>, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
    // Checked against the configured limit before anything is allocated.
    decoder.claim_container_read::<u8>(len)?;
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    decoder.reader().read(&mut bytes)?;
    Ok(SecretValue::Owned(bytes))
}

impl<Context> Decode<Context> for SecretValue<'_> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decode_owned(decoder)
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for SecretValue<'_> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        decode_owned(decoder)
    }
}
