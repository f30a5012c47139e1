//! One request and its answer on a non-blocking socket, as a state that counts every byte
//! moved: whoever drives it (the tokio client after a readiness wait, an event loop's reader
//! callback) writes from [`Exchange::unsent`], reads into [`Exchange::read_target`], and may
//! stop between any two steps and resume later without losing or repeating a byte. That is what
//! makes a cancelled call cheap: the exchange is finished later and the connection stays in step.

use secretd_proto::frame::{HEADER_LEN, encode_frame, response_body_len};
use secretd_proto::legacy::decode_response;
use secretd_proto::{Request, Response};
use zeroize::Zeroize;

use crate::error::{Error, ProtocolError, Result};

/// The first read of an answer asks for this much, so a typical answer (header and body) comes
/// in one `recv`.
const FIRST_READ: usize = 4096;

/// The progress of one exchange.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// The request frame being sent; empty when no exchange is under way.
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// The answer frame (header and body) being read; wiped after every exchange, as answers
    /// carry values.
    input: Vec<u8>,
    /// Bytes of `input` already read.
    got: usize,
    /// The whole answer frame's length, once its header is in.
    expected: Option<usize>,
}

impl Exchange {
    /// Begins `req` as the exchange to drive.
    pub(crate) fn start(&mut self, req: &Request) -> Result<()> {
        if let Err(e) = encode_frame(req, &mut self.out) {
            // Nothing of it was sent: the connection stays in step.
            self.out.clear();
            return Err(e.into());
        }
        self.sent = 0;
        self.got = 0;
        self.expected = None;
        Ok(())
    }

    /// Whether no exchange is under way.
    pub(crate) fn in_step(&self) -> bool {
        self.out.is_empty()
    }

    /// The part of the request not written yet.
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Counts `n` more request bytes as written.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
    }

    /// Whether the whole answer is in.
    pub(crate) fn answered(&self) -> bool {
        self.expected == Some(self.got)
    }

    /// Where the next bytes of the answer go (never past the end of this answer, so a byte of
    /// a later frame is never taken).
    pub(crate) fn read_target(&mut self) -> &mut [u8] {
        if self.input.len() < FIRST_READ {
            self.input.resize(FIRST_READ, 0);
        }
        let end = self.expected.unwrap_or(self.input.len());
        &mut self.input[self.got..end]
    }

    /// Counts `n` more answer bytes as read; learns the frame's length from its header.
    pub(crate) fn read(&mut self, n: usize) -> Result<()> {
        self.got += n;
        if self.expected.is_none() && self.got >= HEADER_LEN {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&self.input[..HEADER_LEN]);
            let total = HEADER_LEN + response_body_len(header)?;
            if self.got > total {
                return Err(ProtocolError::ExtraAnswer.into());
            }
            if self.input.len() < total {
                self.input.resize(total, 0);
            }
            self.expected = Some(total);
        }
        Ok(())
    }

    /// Ends the exchange: decodes the answer (as a peer of `protocol` lays it out) when it
    /// is whole, wipes it, and leaves the state ready for the next request.
    pub(crate) fn finish(&mut self, protocol: u16) -> Result<Response<'static>> {
        let answer = if self.answered() {
            decode_response(&self.input[HEADER_LEN..self.got], protocol).map_err(Error::from)
        } else {
            Err(ProtocolError::CutOff.into())
        };
        self.input.zeroize();
        self.out.clear();
        answer
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.input.zeroize();
    }
}
