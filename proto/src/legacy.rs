//! Responses as peers of older protocol versions encode them. Protocol 4 appended fields to
//! [`SecretStatus`]; a daemon answering a client of version 1 to 3 (and a client reading a
//! daemon of version 1 to 3) uses the version-3 row layout below. Every other message is
//! encoded the same in all versions, so [`encode_response`] and [`decode_response`] are the
//! only places that look at the version.

use bincode::{Decode, Encode};

use crate::error::WireError;
use crate::frame::{FrameError, decode_response_body, encode_response_frame};
use crate::message::{EntryState, Response, SecretStatus, SourceKind};

/// The first protocol version with the longer status row.
pub const STATUS_ROW_V4: u16 = 4;

/// [`Response`]'s variant indices of the messages carrying status rows (bincode encodes an
/// enum as its `u32` index, then the variant's fields; a test keeps these in step).
const STATUS: u32 = 2;
const ROTATED: u32 = 5;
const BREAK_GLASS: u32 = 8;

/// A status row in protocol versions 1 to 3: [`SecretStatus`] without its version-4 fields.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SecretStatusV3 {
    name: String,
    configured_source: SourceKind,
    cache_source: Option<SourceKind>,
    state: EntryState,
    version: Option<String>,
    fetched_at_ms: Option<i64>,
    expires_at_ms: Option<i64>,
    age_ms: Option<u64>,
    last_error: Option<WireError>,
    metadata_status: Option<String>,
    rotation_due_at_ms: Option<i64>,
    break_glass_expires_at_ms: Option<i64>,
    fingerprint: Option<String>,
}

impl From<&SecretStatus> for SecretStatusV3 {
    fn from(s: &SecretStatus) -> SecretStatusV3 {
        SecretStatusV3 {
            name: s.name.clone(),
            configured_source: s.configured_source,
            cache_source: s.cache_source,
            state: s.state,
            version: s.version.clone(),
            fetched_at_ms: s.fetched_at_ms,
            expires_at_ms: s.expires_at_ms,
            age_ms: s.age_ms,
            last_error: s.last_error.clone(),
            metadata_status: s.metadata_status.clone(),
            rotation_due_at_ms: s.rotation_due_at_ms,
            break_glass_expires_at_ms: s.break_glass_expires_at_ms,
            fingerprint: s.fingerprint.clone(),
        }
    }
}

impl From<SecretStatusV3> for SecretStatus {
    fn from(s: SecretStatusV3) -> SecretStatus {
        SecretStatus {
            name: s.name,
            configured_source: s.configured_source,
            cache_source: s.cache_source,
            state: s.state,
            version: s.version,
            fetched_at_ms: s.fetched_at_ms,
            expires_at_ms: s.expires_at_ms,
            age_ms: s.age_ms,
            last_error: s.last_error,
            metadata_status: s.metadata_status,
            rotation_due_at_ms: s.rotation_due_at_ms,
            break_glass_expires_at_ms: s.break_glass_expires_at_ms,
            fingerprint: s.fingerprint,
            last_error_reason: None,
            version_alias: None,
            gcp_secret: None,
            owner: None,
            last_rotated_at_ms: None,
            last_validated_at_ms: None,
            active_version: None,
        }
    }
}

/// Encodes `response` as one frame into `out`, as a peer speaking `protocol` reads it.
pub fn encode_response(
    response: &Response<'_>,
    protocol: u16,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if protocol >= STATUS_ROW_V4 {
        return encode_response_frame(response, out);
    }
    match response {
        Response::Status(rows) => encode_response_frame(
            &(
                STATUS,
                rows.iter().map(SecretStatusV3::from).collect::<Vec<_>>(),
            ),
            out,
        ),
        Response::Rotated(row) => encode_response_frame(&(ROTATED, SecretStatusV3::from(row)), out),
        Response::BreakGlass(row) => {
            encode_response_frame(&(BREAK_GLASS, SecretStatusV3::from(row)), out)
        }
        other => encode_response_frame(other, out),
    }
}

/// Decodes a response body from a peer speaking `protocol`.
pub fn decode_response(body: &[u8], protocol: u16) -> Result<Response<'static>, FrameError> {
    if protocol >= STATUS_ROW_V4 {
        return decode_response_body(body);
    }
    let index = body
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b))
        .unwrap_or(u32::MAX);
    Ok(match index {
        STATUS => {
            let (_, rows): (u32, Vec<SecretStatusV3>) = decode_response_body(body)?;
            Response::Status(rows.into_iter().map(SecretStatus::from).collect())
        }
        ROTATED => Response::Rotated(
            decode_response_body::<(u32, SecretStatusV3)>(body)?
                .1
                .into(),
        ),
        BREAK_GLASS => Response::BreakGlass(
            decode_response_body::<(u32, SecretStatusV3)>(body)?
                .1
                .into(),
        ),
        _ => decode_response_body(body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WireError;
    use crate::frame::{HEADER_LEN, MAX_FRAME, encode_frame};

    fn row() -> SecretStatus {
        SecretStatus {
            name: "trading_api_key".into(),
            configured_source: SourceKind::Gsm,
            cache_source: Some(SourceKind::Gsm),
            state: EntryState::Fresh,
            version: Some("3".into()),
            fetched_at_ms: Some(1),
            expires_at_ms: Some(2),
            age_ms: Some(3),
            last_error: None,
            metadata_status: Some("active".into()),
            rotation_due_at_ms: Some(4),
            break_glass_expires_at_ms: None,
            fingerprint: Some("ab".into()),
            last_error_reason: Some("disabled".into()),
            version_alias: Some("prod".into()),
            gcp_secret: Some("projects/p/secrets/s".into()),
            owner: Some("desk".into()),
            last_rotated_at_ms: Some(5),
            last_validated_at_ms: Some(6),
            active_version: Some("7".into()),
        }
    }

    fn round_trip(response: &Response<'_>, protocol: u16) -> Response<'static> {
        let mut out = Vec::new();
        encode_response(response, protocol, &mut out).expect("encode");
        decode_response(&out[HEADER_LEN..], protocol).expect("decode")
    }

    #[test]
    fn status_of_a_full_catalog_with_long_fields_fits_and_decodes_at_every_protocol() {
        // 1,024 rows (the most a catalog holds) with every field near its longest.
        let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
        let rows: Vec<SecretStatus> = (0..1024)
            .map(|i| SecretStatus {
                name: format!("{i:04}{}", long('n', 124)),
                gcp_secret: Some(format!(
                    "projects/{}/secrets/{}",
                    long('p', 30),
                    long('s', 255)
                )),
                last_error: Some(WireError::new(
                    crate::ErrorCode::Unavailable,
                    long('e', 600),
                )),
                version_alias: Some(long('a', 63)),
                owner: Some(long('o', 128)),
                fingerprint: Some(long('f', 64)),
                ..row()
            })
            .collect();
        let status = Response::Status(rows);
        let mut out = Vec::new();
        encode_response(&status, STATUS_ROW_V4, &mut out).expect("encode");
        assert!(
            out.len() > MAX_FRAME,
            "the test must exceed the request limit"
        );
        for protocol in [1, 3, STATUS_ROW_V4, crate::PROTOCOL_VERSION] {
            let Response::Status(back) = round_trip(&status, protocol) else {
                panic!("not a status");
            };
            assert_eq!(back.len(), 1024, "protocol {protocol}");
        }
    }

    #[test]
    fn variant_indices_match_the_derive() {
        for (response, index) in [
            (Response::Status(Vec::new()), STATUS),
            (Response::Rotated(row()), ROTATED),
            (Response::BreakGlass(row()), BREAK_GLASS),
        ] {
            let mut out = Vec::new();
            encode_frame(&response, &mut out).expect("encode");
            assert_eq!(out[HEADER_LEN..HEADER_LEN + 4], index.to_le_bytes());
        }
    }

    #[test]
    fn old_peers_exchange_version_3_rows_and_lose_only_the_new_fields() {
        let full = row();
        let old: SecretStatus = SecretStatusV3::from(&full).into();
        for protocol in 1..STATUS_ROW_V4 {
            assert_eq!(
                round_trip(
                    &Response::Status(vec![full.clone(), full.clone()]),
                    protocol
                ),
                Response::Status(vec![old.clone(), old.clone()])
            );
            assert_eq!(
                round_trip(&Response::Rotated(full.clone()), protocol),
                Response::Rotated(old.clone())
            );
            assert_eq!(
                round_trip(&Response::BreakGlass(full.clone()), protocol),
                Response::BreakGlass(old.clone())
            );
            let other = Response::Metrics("m".into());
            assert_eq!(round_trip(&other, protocol), other);
        }
        assert_eq!(
            round_trip(&Response::Status(vec![full.clone()]), STATUS_ROW_V4),
            Response::Status(vec![full])
        );
        // A version-3 row is shorter: read as version 4 it is refused, not misread.
        let mut out = Vec::new();
        encode_response(&Response::Status(vec![row()]), 3, &mut out).expect("encode");
        assert!(decode_response(&out[HEADER_LEN..], STATUS_ROW_V4).is_err());
        assert!(decode_response(&[], 3).is_err());
    }
}
