//! The bytes a get of the bench secret puts on the wire, and how a raw client reads a frame:
//! shared by the raw rows, the echo server and the client program.

use std::io::Read;
use std::os::unix::net::UnixStream;

use secretd_proto::frame::encode_frame;
use secretd_proto::{Request, Response, SecretReply, SecretValue, SourceKind};

use crate::fixture::{NAME, VALUE};

/// The exact request and response frames a get of the bench secret puts on the wire.
pub(crate) fn wire_frames() -> (Vec<u8>, Vec<u8>) {
    let mut request = Vec::new();
    encode_frame(&Request::Get { name: NAME.into() }, &mut request).unwrap_or_default();
    let mut response = Vec::new();
    let reply = Response::Secret(SecretReply {
        version: "1".into(),
        source: SourceKind::File,
        fetched_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        value: SecretValue::Borrowed(VALUE),
    });
    encode_frame(&reply, &mut response).unwrap_or_default();
    (request, response)
}

/// Reads one length-prefixed frame (header, then body), as every client does.
pub(crate) fn read_frame(stream: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    buf.resize(u32::from_le_bytes(header) as usize, 0);
    stream.read_exact(buf)
}
