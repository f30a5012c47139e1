//! What a handler answers: a [`Reply`]. The connection encodes it, counts it in the request
//! metrics and wipes the buffer it was encoded into, in one place (`Framed::send`), so no
//! handler touches frame bytes and nothing reads a reply's kind back out of them.

use std::sync::Arc;

use secretd_proto::frame::{FrameError, encode_frame};
use secretd_proto::legacy::encode_response;
use secretd_proto::{
    ErrorCode, PROTOCOL_VERSION, Response, SecretReply, SecretStatus, SecretValue, WireError,
};

use super::subscription::Subscription;
use crate::catalog::entry::Entry;
use crate::util::time::unix_ms;

/// The answer to one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A value. It stays in the entry's locked buffer until it is encoded straight into the
    /// outgoing frame, which is wiped after the write.
    Secret(Arc<Entry>),
    /// A granted watch: `Watching` with the names goes out, then the connection streams
    /// change events.
    Watch(Subscription),
    /// Every other answer, none of which carries a value (boxed: status rows make it large,
    /// and the hot path answers `Secret`).
    Plain(Box<Response<'static>>),
}

/// A handler's result: `Err` is a refusal (not an admin, a bad name, the audit trail down, a
/// failed step), answered as that error; `Ok` the answer to the work itself. `?` ends a
/// handler early with its refusal.
pub(super) type Answer = Result<Reply, WireError>;

/// The refusal when the audit trail cannot record a request (fail closed).
pub(super) fn audit_down() -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        "the audit trail cannot be written; requests are refused until it recovers",
    )
}

impl Reply {
    /// A value-free answer.
    pub(super) fn plain(response: Response<'static>) -> Reply {
        Reply::Plain(Box::new(response))
    }

    /// The code the request was refused with, if it was (the `result` label of
    /// `omni_secretd_requests_total`).
    pub(crate) fn refused(&self) -> Option<ErrorCode> {
        match self {
            Reply::Plain(response) => match &**response {
                Response::Error(e) => Some(e.code),
                _ => None,
            },
            _ => None,
        }
    }

    /// Encodes the reply as one frame into `out`, as a client speaking `protocol` reads it.
    fn encode(&self, out: &mut Vec<u8>, protocol: u16) -> Result<(), FrameError> {
        match self {
            Reply::Secret(entry) => encode_frame(
                &Response::Secret(SecretReply {
                    version: entry.version.clone(),
                    source: entry.source.for_protocol(protocol),
                    fetched_at_ms: unix_ms(entry.fetched_at),
                    expires_at_ms: unix_ms(entry.expires_at),
                    value: SecretValue::Borrowed(entry.value.expose()),
                }),
                out,
            ),
            Reply::Watch(subscription) => {
                encode_frame(&Response::Watching(subscription.names().to_vec()), out)
            }
            Reply::Plain(response) => match older(response, protocol) {
                Some(downgraded) => encode_response(&downgraded, protocol, out),
                None => encode_response(response, protocol, out),
            },
        }
    }
}

/// Encodes `reply` into `out` for a client speaking `protocol`; a reply too large to encode
/// becomes an `Internal` error (logged), so the client is never left waiting.
pub(crate) fn encode_reply(
    reply: &Reply,
    protocol: u16,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if let Err(e) = reply.encode(out, protocol) {
        zeroize::Zeroize::zeroize(out);
        tracing::error!(error = %e, "cannot encode a response");
        let internal = WireError::new(ErrorCode::Internal, "response too large");
        return encode_frame(&Response::Error(internal), out);
    }
    Ok(())
}

impl From<WireError> for Reply {
    fn from(e: WireError) -> Reply {
        Reply::plain(Response::Error(e))
    }
}

/// The first protocol version whose clients know [`ErrorCode::Revoked`].
const REVOKED_SINCE: u16 = 6;

/// A value-free response as a client speaking an older `protocol` reads it (newer source
/// kinds become the kinds they stand in for, `Revoked` becomes `Unavailable`), or `None` when it reads the response as it is.
fn older(response: &Response<'static>, protocol: u16) -> Option<Response<'static>> {
    if protocol >= PROTOCOL_VERSION {
        return None;
    }
    let row = |s: &SecretStatus| SecretStatus {
        cache_source: s.cache_source.map(|k| k.for_protocol(protocol)),
        configured_source: s.configured_source.for_protocol(protocol),
        ..s.clone()
    };
    match response {
        Response::Status(rows) => Some(Response::Status(rows.iter().map(row).collect())),
        Response::Rotated(s) => Some(Response::Rotated(row(s))),
        Response::BreakGlass(s) => Some(Response::BreakGlass(row(s))),
        Response::Error(e) if e.code == ErrorCode::Revoked && protocol < REVOKED_SINCE => Some(
            Response::Error(WireError::new(ErrorCode::Unavailable, e.message.clone())),
        ),
        _ => None,
    }
}
