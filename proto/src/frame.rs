//! Frames: a `u32` little-endian body length, then one bincode message.
//!
//! One fixed bincode configuration (little-endian, fixed-width integers) is used for every
//! message, with a decode limit of [`MAX_FRAME`] so that a length field inside a message can
//! never make the decoder allocate more than a frame could hold. Bodies are decoded from a
//! slice and must be consumed exactly: trailing bytes are an error.

use std::io::{self, Read};

use bincode::config::{self, Configuration, Fixint, Limit, LittleEndian};
use bincode::enc::write::SizeWriter;
use bincode::{Decode, Encode};
use zeroize::Zeroize;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// The largest request body a daemon accepts, in bytes (and the largest frame of anything
/// else but a response: a hello, a watch event). A break-glass envelope is at most 64 KiB;
/// the rest is headroom. Requests come from processes the daemon does not trust, so this
/// stays small.
pub const MAX_FRAME: usize = 256 * 1024;

/// The largest response body a client accepts, in bytes: `status` of a full catalog (1,024
/// rows, each up to about 2 KiB with long names, resources and error messages) fits with
/// room to spare. Responses come from a daemon the client has checked.
pub const MAX_RESPONSE_FRAME: usize = 4 * 1024 * 1024;

/// How many bytes decoding one response may set aside. bincode counts what a message claims
/// in memory (a `Vec` of rows claims its length times the row's in-memory size, more than its
/// wire size), so this is a multiple of [`MAX_RESPONSE_FRAME`]: the bound on what a frame can
/// make a client allocate, not on its size.
pub const MAX_RESPONSE_CLAIM: usize = 4 * MAX_RESPONSE_FRAME;

/// The one bincode configuration of the protocol (requests: claims bounded by [`MAX_FRAME`]).
pub type WireConfig = Configuration<LittleEndian, Fixint, Limit<MAX_FRAME>>;

/// [`WireConfig`] for decoding responses (claims bounded by [`MAX_RESPONSE_CLAIM`]).
pub type ResponseConfig = Configuration<LittleEndian, Fixint, Limit<MAX_RESPONSE_CLAIM>>;

/// Returns the protocol's bincode configuration.
pub const fn wire_config() -> WireConfig {
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_FRAME>()
}

/// Returns the bincode configuration a client decodes responses with.
pub const fn response_config() -> ResponseConfig {
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_RESPONSE_CLAIM>()
}

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A length prefix of zero.
    #[error("empty frame (length 0)")]
    Empty,
    /// A length prefix above the limit ([`MAX_FRAME`], or [`MAX_RESPONSE_FRAME`] for a
    /// response).
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The length the prefix claimed.
        len: u64,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A message that does not fit in one frame.
    #[error("message of {len} bytes exceeds the {limit}-byte frame limit")]
    MessageTooLarge {
        /// The encoded size of the message.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The body is not a valid message (bincode's reason).
    #[error("malformed message: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The body held a valid message followed by extra bytes.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The message could not be encoded (bincode's reason).
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Validates a request's length prefix and returns the body length it announces.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    checked_len(header, MAX_FRAME)
}

/// Validates a length prefix of a frame a daemon sent (up to [`MAX_RESPONSE_FRAME`]).
pub fn response_body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    checked_len(header, MAX_RESPONSE_FRAME)
}

fn checked_len(header: [u8; HEADER_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header);
    match len as usize {
        0 => Err(FrameError::Empty),
        n if n > limit => Err(FrameError::TooLarge {
            len: len.into(),
            limit,
        }),
        n => Ok(n),
    }
}

/// Encodes `msg` as a whole frame (prefix and body) into `out`, replacing its contents.
///
/// The size is computed first and `out` reserved exactly, so a growing buffer never leaves a
/// copy of a secret behind in memory it freed. Whatever `out` held before is wiped.
pub fn encode_frame<T: Encode>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_limited(msg, out, MAX_FRAME)
}

/// [`encode_frame`] for a response, up to [`MAX_RESPONSE_FRAME`].
pub fn encode_response_frame<T: Encode>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_limited(msg, out, MAX_RESPONSE_FRAME)
}

fn encode_limited<T: Encode>(msg: &T, out: &mut Vec<u8>, limit: usize) -> Result<(), FrameError> {
    let mut size = SizeWriter::default();
    bincode::encode_into_writer(msg, &mut size, wire_config()).map_err(FrameError::Encode)?;
    let len = size.bytes_written;
    if len == 0 || len > limit {
        return Err(FrameError::MessageTooLarge { len, limit });
    }
    out.zeroize();
    out.reserve_exact(HEADER_LEN + len);
    out.resize(HEADER_LEN + len, 0);
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    let written = bincode::encode_into_slice(msg, &mut out[HEADER_LEN..], wire_config())
        .map_err(FrameError::Encode)?;
    debug_assert_eq!(written, len);
    Ok(())
}

/// Decodes one response from a frame body (claims bounded by [`MAX_RESPONSE_CLAIM`]), which
/// it must fill exactly.
pub fn decode_response_body<T: Decode<()>>(body: &[u8]) -> Result<T, FrameError> {
    decode_whole(body, response_config())
}

/// Decodes one message from a frame body, which it must fill exactly.
pub fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, FrameError> {
    decode_whole(body, wire_config())
}

fn decode_whole<T: Decode<()>, C: bincode::config::Config>(
    body: &[u8],
    config: C,
) -> Result<T, FrameError> {
    let (msg, used) =
        bincode::decode_from_slice::<T, _>(body, config).map_err(FrameError::Decode)?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(msg)
}

/// The first read of [`read_reply`]: a reply to a get (about 150 bytes) arrives in one read.
const REPLY_FIRST_READ: usize = 1024;

/// Reads into `buf` until at least `min` bytes arrived; returns how many did. A clean end of
/// stream before the first byte is [`FrameError::Closed`], one after it [`FrameError::Truncated`].
fn read_at_least<R: Read>(reader: &mut R, buf: &mut [u8], min: usize) -> Result<usize, FrameError> {
    let mut have = 0;
    while have < min {
        match reader.read(&mut buf[have..]) {
            Ok(0) if have == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(have)
}

/// Reads the one frame that answers a request into `buf` (header included: the body is
/// `buf[HEADER_LEN..]`), usually in a single `read` where [`read_frame`] needs two. Only for
/// request/response streams: bytes beyond the frame are a protocol error, since nothing may
/// follow a reply. `buf`'s old contents are wiped first; a buffer outgrown mid-read is wiped
/// before it is released.
pub fn read_reply<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    buf.zeroize();
    buf.resize(REPLY_FIRST_READ, 0);
    let have = read_at_least(reader, buf, HEADER_LEN)?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&buf[..HEADER_LEN]);
    let total = HEADER_LEN + response_body_len(header)?;
    if have > total {
        return Err(FrameError::TrailingBytes {
            extra: have - total,
        });
    }
    if total > buf.len() {
        let mut bigger = vec![0u8; total];
        bigger[..have].copy_from_slice(&buf[..have]);
        buf.zeroize();
        *buf = bigger;
    }
    buf.truncate(total);
    reader
        .read_exact(&mut buf[have..])
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })
}

/// Reads one frame body a daemon sent (up to [`MAX_RESPONSE_FRAME`]) from a blocking reader
/// into `buf` (wiped first, then sized exactly).
///
/// Returns [`FrameError::Closed`] on a clean end of stream before the first prefix byte.
pub fn read_frame<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_at_least(reader, &mut header, HEADER_LEN)?;
    let len = response_body_len(header)?;
    buf.zeroize();
    buf.reserve_exact(len);
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientHello, Request, Response, SecretReply, SourceKind};
    use crate::value::SecretValue;

    fn roundtrip_request(req: Request) {
        let mut buf = Vec::new();
        encode_frame(&req, &mut buf).expect("encode");
        let len = body_len(buf[..4].try_into().expect("header")).expect("len");
        assert_eq!(len, buf.len() - 4);
        let back: Request = decode_body(&buf[4..]).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip_request(Request::Hello(ClientHello::new("test/1")));
        roundtrip_request(Request::Get {
            name: "trading_api_key".into(),
        });
        roundtrip_request(Request::Status);
        roundtrip_request(Request::Refresh { name: None });
        roundtrip_request(Request::Refresh {
            name: Some("trading_api_key".into()),
        });
    }

    #[test]
    fn get_request_bytes_are_documented() {
        // docs/protocol.md shows exactly these bytes for `Get { name: "ab" }`.
        let mut buf = Vec::new();
        encode_frame(&Request::Get { name: "ab".into() }, &mut buf).expect("encode");
        assert_eq!(
            buf,
            [
                14, 0, 0, 0, // body length 14
                1, 0, 0, 0, // tag 1 = Get
                2, 0, 0, 0, 0, 0, 0, 0, // name length 2
                b'a', b'b'
            ]
        );
    }

    #[test]
    fn borrowed_secret_decodes_owned() {
        let value = b"s3cr3t".to_vec();
        let reply = Response::Secret(SecretReply {
            version: "7".into(),
            source: SourceKind::Gsm,
            fetched_at_ms: 1,
            expires_at_ms: 2,
            value: SecretValue::Borrowed(&value),
        });
        let mut buf = Vec::new();
        encode_frame(&reply, &mut buf).expect("encode");
        let back: Response<'static> = decode_body(&buf[4..]).expect("decode");
        match back {
            Response::Secret(s) => {
                assert!(matches!(s.value, SecretValue::Owned(_)));
                assert_eq!(s.value.expose(), b"s3cr3t");
                assert!(!format!("{s:?}").contains("s3cr3t"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_lengths_rejected_before_allocation() {
        assert!(matches!(body_len([0, 0, 0, 0]), Err(FrameError::Empty)));
        assert!(matches!(
            body_len(u32::MAX.to_le_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            body_len((MAX_FRAME as u32).to_le_bytes()).expect("max"),
            MAX_FRAME
        );
    }

    #[test]
    fn huge_inner_length_is_an_error_not_an_abort() {
        // Tag 1 (Get) followed by a string length of 2^40: bincode without a limit would try
        // to allocate a terabyte.
        let mut body = vec![1, 0, 0, 0];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode_body::<Request>(&body),
            Err(FrameError::Decode(_))
        ));
        // The same inside a response's secret value.
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_body::<Response<'static>>(&body).is_err());
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_rejected() {
        let mut buf = Vec::new();
        encode_frame(&Request::Status, &mut buf).expect("encode");
        let mut body = buf[4..].to_vec();
        body.push(0);
        assert!(matches!(
            decode_body::<Request>(&body),
            Err(FrameError::TrailingBytes { extra: 1 })
        ));
        assert!(matches!(
            decode_body::<Request>(&[99, 0, 0, 0]),
            Err(FrameError::Decode(_))
        ));
        assert!(decode_body::<Request>(&[]).is_err());
    }

    #[test]
    fn read_reply_takes_exactly_one_frame() {
        let mut small = Vec::new();
        encode_frame(&Request::Status, &mut small).expect("encode");
        let mut big = Vec::new();
        let name = "n".repeat(100);
        let names = vec![name; 60]; // a body larger than the first read
        encode_frame(&Request::Watch { names }, &mut big).expect("encode");
        for frame in [&small, &big] {
            let mut buf = b"old contents".to_vec();
            read_reply(&mut frame.as_slice(), &mut buf).expect("read");
            assert_eq!(&buf, frame);
        }
        let mut two = small.clone();
        two.extend_from_slice(&small);
        let mut buf = Vec::new();
        assert!(matches!(
            read_reply(&mut two.as_slice(), &mut buf),
            Err(FrameError::TrailingBytes { .. })
        ));
        assert!(matches!(
            read_reply(&mut &big[..big.len() - 1], &mut buf),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_reply(&mut &b""[..], &mut buf),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_reply(&mut &[0u8, 0, 0, 0][..], &mut buf),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn read_frame_handles_eof() {
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut &[][..], &mut buf),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &[5, 0][..], &mut buf),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[5, 0, 0, 0, 1][..], &mut buf),
            Err(FrameError::Truncated)
        ));
        read_frame(&mut &[2, 0, 0, 0, 7, 8][..], &mut buf).expect("frame");
        assert_eq!(buf, [7, 8]);
    }
}
