//! Stable, numbered error codes carried in [`crate::Response::Error`].
//!
//! The numbers are part of the public contract (the C header and the Python exceptions map
//! them one to one): a code is never renumbered or reused, new codes are appended.

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Why a request failed. Encoded on the wire as a little-endian `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The name is not in the daemon's catalog.
    NotFound = 1,
    /// The caller's uid/gid is not allowed this secret or operation.
    PermissionDenied = 2,
    /// The secret is known but has no servable value (never loaded, or stale past `max_stale`).
    Unavailable = 3,
    /// The request is well-formed on the wire but its arguments are not (a bad name, say).
    InvalidRequest = 4,
    /// The client speaks a protocol version this daemon does not.
    UnsupportedVersion = 5,
    /// The byte stream broke the protocol (bad frame, unknown tag, no hello first).
    ProtocolViolation = 6,
    /// The daemon is at its connection limit; try again shortly.
    Busy = 7,
    /// A bug or an unexpected failure inside the daemon.
    Internal = 8,
    /// The secret's source withdrew the version that was served: disabled or destroyed in
    /// GSM, or the secret was deleted. Nothing is served until an operator acts (protocol
    /// version 6; older clients are told [`ErrorCode::Unavailable`]).
    Revoked = 9,
    /// A code this build does not know (sent by a newer daemon). Never sent by a daemon.
    Unknown = u16::MAX,
}

impl ErrorCode {
    /// Every code a daemon may send, in numeric order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::NotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::Unavailable,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ProtocolViolation,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::Revoked,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a wire number; numbers from a newer daemon become [`ErrorCode::Unknown`].
    pub fn from_u16(n: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_u16() == n)
            .unwrap_or(ErrorCode::Unknown)
    }

    /// A short, stable, snake_case name (used in logs, metrics labels and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::ProtocolViolation => "protocol_violation",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Revoked => "revoked",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Encode for ErrorCode {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_u16().encode(encoder)
    }
}

impl<Context> Decode<Context> for ErrorCode {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(ErrorCode::from_u16(u16::decode(decoder)?))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ErrorCode {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(ErrorCode::from_u16(u16::decode(decoder)?))
    }
}

/// An error as sent by the daemon: a stable code and a human sentence.
///
/// The message never contains a secret value; it may name the secret.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WireError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl WireError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        // These numbers are published in include/secretd.h and docs/protocol.md.
        let expected = [1u16, 2, 3, 4, 5, 6, 7, 8, 9];
        let got: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.as_u16()).collect();
        assert_eq!(got, expected);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
        }
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown);
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown);
    }
}
