//! The bodies of the fuzz targets in `fuzz/`, here so the committed corpus also runs as an
//! ordinary test on stable Rust (`proto/tests/fuzz_corpus.rs`). Not part of the API.

use crate::frame::{HEADER_LEN, body_len, decode_body, encode_frame, read_frame, read_reply};
use crate::message::{Request, Response};

/// Feeds `data` through every way the protocol reads bytes. Panics only on a real bug: a
/// decoded request that does not re-encode to itself.
pub fn frame(data: &[u8]) {
    if let Some(header) = data.get(..HEADER_LEN) {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        let _ = body_len(h);
    }
    let mut buf = Vec::new();
    let _ = read_frame(&mut &data[..], &mut buf);
    let _ = read_reply(&mut &data[..], &mut buf);
    let _ = decode_body::<Response<'static>>(data);
    if let Ok(request) = decode_body::<Request>(data) {
        let mut again = Vec::new();
        encode_frame(&request, &mut again).expect("a decoded request re-encodes");
        let decoded: Request = decode_body(&again[HEADER_LEN..]).expect("and decodes again");
        assert_eq!(decoded, request, "round trip changed the request");
    }
}
