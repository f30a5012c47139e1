//! Framing without I/O: bytes go in with the credentials of the process that wrote them, whole
//! frames come out with theirs. Whoever drives a connection (a runtime task, a thread of its
//! own) reads into [`FrameBuf::spare`] and reports what arrived with [`FrameBuf::filled`]; the
//! buffer travels with the connection when it moves between drivers, so bytes read ahead are
//! never carried over by hand.
//!
//! Every byte a frame occupied is wiped when the frame is dropped (requests can carry
//! break-glass envelopes), and so is anything the buffer still holds when it goes.

use std::time::Instant;

use secretd_proto::frame::{FrameError, HEADER_LEN, body_len};
use zeroize::Zeroize;

pub(crate) use crate::server::identity::Sender;

/// The first read of an empty buffer: requests are small, so this usually takes a whole frame
/// (or several pipelined ones) in one read.
pub(crate) const READ_CHUNK: usize = 1024;
/// A buffer grown past this for one large frame is released once that frame is taken, so an
/// envelope does not keep every later wipe expensive.
const KEEP_BUFFER: usize = 16 * 1024;

/// Why the bytes received cannot be read as the next frame. The connection answers with a
/// protocol violation and closes: after a bad frame the stream is out of step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameFault {
    /// The length prefix is zero or over the limit.
    #[error(transparent)]
    Length(#[from] FrameError),
    /// The frame's bytes came from more than one process.
    #[error("one frame written by two processes (pids {first:?} and {second:?})")]
    MixedSenders {
        /// Who wrote the frame's first bytes.
        first: Option<i32>,
        /// Who wrote later ones.
        second: Option<i32>,
    },
    /// Bytes nobody was recorded as writing (a driver that skipped `filled`'s sender).
    #[error("bytes with no recorded writer")]
    Unattributed,
}

/// One whole frame's body and who wrote it. Its bytes are wiped when it is dropped.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    /// The body (the length prefix stripped).
    body: &'a mut [u8],
    /// The process that wrote every byte of it.
    pub(crate) sender: Sender,
}

impl Frame<'_> {
    /// The body's bytes.
    pub(crate) fn body(&self) -> &[u8] {
        self.body
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

/// Bytes received on one connection and not yet taken as frames.
#[derive(Debug, Default)]
pub(crate) struct FrameBuf {
    /// Storage; `start..end` holds the bytes not yet taken, everything else is zero.
    buf: Vec<u8>,
    /// Where the unread bytes begin.
    start: usize,
    /// Where they end.
    end: usize,
    /// Who wrote the unread bytes: the end offset of each writer's run, in order. A run per
    /// read; neighbouring runs of one writer are merged, so this is almost always one entry.
    writers: Vec<(usize, Sender)>,
    /// When the first byte of a frame not yet whole arrived (its deadline runs from here).
    started: Option<Instant>,
    /// When the last read arrived: bytes left after a frame is taken came no later.
    last_fill: Option<Instant>,
}

impl FrameBuf {
    /// Room to read into: at least what the frame in progress still lacks when its length is
    /// known, else [`READ_CHUNK`]. Report what a read put there with [`FrameBuf::filled`].
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.writers.clear();
            if self.buf.len() > KEEP_BUFFER {
                // Every byte is zero already (taken frames wipe themselves); let it go.
                self.buf = Vec::new();
            }
        }
        let unread = self.end - self.start;
        let need = match self.body_len() {
            Some(Ok(len)) if HEADER_LEN + len > unread => HEADER_LEN + len - unread,
            _ => READ_CHUNK,
        };
        if self.buf.len() - self.end < need && self.start > 0 {
            self.compact();
        }
        if self.buf.len() - self.end < need {
            self.grow(self.end + need);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`FrameBuf::spare`], written by `sender`, at `now`.
    pub(crate) fn filled(&mut self, n: usize, sender: Sender, now: Instant) {
        let n = n.min(self.buf.len() - self.end);
        if n == 0 {
            return;
        }
        if self.start == self.end {
            self.started = Some(now);
        }
        self.last_fill = Some(now);
        self.end += n;
        match self.writers.last_mut() {
            Some((end, last)) if *last == sender => *end = self.end,
            _ => self.writers.push((self.end, sender)),
        }
    }

    /// Whether any bytes are waiting (a pipelined request, or the start of one).
    pub(crate) fn has_bytes(&self) -> bool {
        self.start < self.end
    }

    /// When the first byte of the frame not yet whole arrived: its deadline runs from there.
    /// `None` between frames.
    pub(crate) fn partial_since(&self) -> Option<Instant> {
        if self.has_bytes() { self.started } else { None }
    }

    /// The next whole frame, if all of it has arrived. Whatever follows it in the buffer
    /// starts its clock at the read that brought it.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameFault> {
        let len = match self.body_len() {
            None => return Ok(None),
            Some(len) => len?,
        };
        let (first, last) = (self.start, self.start + HEADER_LEN + len);
        if last > self.end {
            return Ok(None);
        }
        let sender = self.sender_of(first, last)?;
        self.buf[first..first + HEADER_LEN].zeroize();
        self.start = last;
        self.writers.retain(|(end, _)| *end > last);
        self.started = if self.has_bytes() {
            self.last_fill
        } else {
            None
        };
        Ok(Some(Frame {
            body: &mut self.buf[first + HEADER_LEN..last],
            sender,
        }))
    }

    /// The body length the next frame's prefix announces, once the prefix is here.
    fn body_len(&self) -> Option<Result<usize, FrameError>> {
        if self.end - self.start < HEADER_LEN {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        Some(body_len(header))
    }

    /// The one writer of bytes `first..last`, or the two that shared them.
    fn sender_of(&self, first: usize, last: usize) -> Result<Sender, FrameFault> {
        let mut found: Option<Sender> = None;
        let mut run_start = 0;
        for &(end, sender) in &self.writers {
            let covers = end > first && run_start < last;
            run_start = end;
            if !covers {
                continue;
            }
            match found {
                None => found = Some(sender),
                Some(f) if f != sender => {
                    return Err(FrameFault::MixedSenders {
                        first: f.pid,
                        second: sender.pid,
                    });
                }
                Some(_) => {}
            }
        }
        found.ok_or(FrameFault::Unattributed)
    }

    /// Moves the unread bytes to the front and wipes the stale copies behind them.
    fn compact(&mut self) {
        let (start, end) = (self.start, self.end);
        let unread = end - start;
        self.buf.copy_within(start..end, 0);
        self.buf[unread..end].zeroize();
        for (run_end, _) in &mut self.writers {
            *run_end -= start;
        }
        self.start = 0;
        self.end = unread;
    }

    /// Makes the storage `len` bytes long (at most one whole frame past what is unread),
    /// wiping the old storage when it moves.
    fn grow(&mut self, len: usize) {
        if self.buf.capacity() >= len {
            self.buf.resize(len, 0);
            return;
        }
        let mut bigger = Vec::with_capacity(len);
        bigger.extend_from_slice(&self.buf);
        bigger.resize(len, 0);
        self.buf.zeroize();
        self.buf = bigger;
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use secretd_proto::frame::{MAX_FRAME, encode_frame};
    use secretd_proto::{MAGIC, Request};

    use super::*;

    const ME: Sender = Sender {
        pid: Some(10),
        uid: 1000,
        gid: 1000,
    };
    const OTHER: Sender = Sender {
        pid: Some(11),
        uid: 1000,
        gid: 1000,
    };

    fn frame_of(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&Request::Get { name: name.into() }, &mut out).expect("encode");
        out
    }

    /// Feeds `bytes` as one read by `sender`, however many `spare` calls it takes.
    fn feed(buf: &mut FrameBuf, mut bytes: &[u8], sender: Sender) {
        while !bytes.is_empty() {
            let room = buf.spare();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            buf.filled(n, sender, Instant::now());
            bytes = &bytes[n..];
        }
    }

    fn take(buf: &mut FrameBuf) -> Option<(Vec<u8>, Sender)> {
        let frame = buf.next_frame().expect("no fault")?;
        Some((frame.body().to_vec(), frame.sender))
    }

    #[test]
    fn pipelined_frames_come_out_one_by_one_with_their_writer() {
        let mut buf = FrameBuf::default();
        let (a, b) = (frame_of("alpha"), frame_of("beta"));
        feed(&mut buf, &[a.clone(), b.clone()].concat(), ME);
        assert_eq!(take(&mut buf), Some((a[HEADER_LEN..].to_vec(), ME)));
        assert_eq!(take(&mut buf), Some((b[HEADER_LEN..].to_vec(), ME)));
        assert_eq!(take(&mut buf), None);
        assert!(!buf.has_bytes());
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_rest_and_its_clock_runs() {
        let mut buf = FrameBuf::default();
        let a = frame_of("alpha");
        feed(&mut buf, &a[..2], ME);
        assert_eq!(take(&mut buf), None, "half a prefix");
        let since = buf.partial_since().expect("a frame in progress");
        feed(&mut buf, &a[2..7], ME);
        assert_eq!(take(&mut buf), None, "the prefix and part of the body");
        assert_eq!(
            buf.partial_since(),
            Some(since),
            "the clock runs from the first byte"
        );
        feed(&mut buf, &a[7..], ME);
        assert_eq!(take(&mut buf), Some((a[HEADER_LEN..].to_vec(), ME)));
        assert_eq!(buf.partial_since(), None);
    }

    #[test]
    fn a_frame_from_two_writers_is_a_fault_and_two_frames_are_not() {
        let mut buf = FrameBuf::default();
        let a = frame_of("alpha");
        feed(&mut buf, &a[..6], ME);
        feed(&mut buf, &a[6..], OTHER);
        assert!(matches!(
            buf.next_frame(),
            Err(FrameFault::MixedSenders {
                first: Some(10),
                second: Some(11)
            })
        ));
        let mut buf = FrameBuf::default();
        feed(&mut buf, &a, ME);
        feed(&mut buf, &a, OTHER);
        assert_eq!(take(&mut buf).map(|(_, s)| s), Some(ME));
        assert_eq!(take(&mut buf).map(|(_, s)| s), Some(OTHER));
    }

    #[test]
    fn bad_prefixes_are_faults() {
        let mut buf = FrameBuf::default();
        feed(&mut buf, &0u32.to_le_bytes(), ME);
        assert!(matches!(
            buf.next_frame(),
            Err(FrameFault::Length(FrameError::Empty))
        ));
        let mut buf = FrameBuf::default();
        feed(&mut buf, &(MAX_FRAME as u32 + 1).to_le_bytes(), ME);
        assert!(matches!(
            buf.next_frame(),
            Err(FrameFault::Length(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_taken_frame_leaves_no_copy_behind_and_a_large_one_no_large_buffer() {
        let mut buf = FrameBuf::default();
        let secret = "s3cr3t-envelope-bytes".repeat(2_000);
        let big = frame_of(&secret);
        assert!(big.len() > KEEP_BUFFER);
        feed(&mut buf, &big, ME);
        let (body, _) = take(&mut buf).expect("whole");
        assert_eq!(body, big[HEADER_LEN..]);
        assert!(buf.buf.iter().all(|b| *b == 0), "every byte wiped");
        let _ = buf.spare();
        assert!(buf.buf.len() <= KEEP_BUFFER, "the large buffer released");
    }

    #[test]
    fn room_grows_to_a_whole_frame_and_compaction_keeps_bytes_in_order() {
        let mut buf = FrameBuf::default();
        let hello = {
            let mut out = Vec::new();
            let h = secretd_proto::ClientHello {
                magic: MAGIC,
                protocol_version: 1,
                client: "t".into(),
            };
            encode_frame(&Request::Hello(h), &mut out).expect("encode");
            out
        };
        let big = frame_of(&"x".repeat(5_000));
        // A small frame, then the start of a big one in the same read: the big one's rest
        // needs the buffer to grow and its start to move to the front.
        let first_read = [hello.clone(), big[..100].to_vec()].concat();
        feed(&mut buf, &first_read, ME);
        assert_eq!(
            take(&mut buf).map(|(b, _)| b),
            Some(hello[HEADER_LEN..].to_vec())
        );
        assert!(buf.spare().len() >= big.len() - 100);
        feed(&mut buf, &big[100..], ME);
        assert_eq!(
            take(&mut buf).map(|(b, _)| b),
            Some(big[HEADER_LEN..].to_vec())
        );
    }
}
