//! `--mask`: the child's stdout and stderr go through a pipe, and every value this run has
//! held is replaced by `<redacted:NAME>` on the way out, also when the child writes a value
//! in pieces. Best effort: the child no longer writes to a terminal, and a value it encodes
//! (base64, hex, JSON escapes) is not recognised.

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use super::values::{Seen, Value};

/// How much one read takes from the child's pipe.
const READ_CHUNK: usize = 16 * 1024;

/// Copies `from` to our own fd `to` (1 or 2) with values replaced, until the child and all it
/// started have closed the pipe.
pub(super) fn spawn_pump(
    from: impl Read + Send + 'static,
    to: RawFd,
    seen: Arc<Seen>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("secretd-run-mask".into())
        .spawn(move || pump(from, to, &seen))
}

fn pump(mut from: impl Read, to: RawFd, seen: &Seen) {
    // SAFETY: `to` is our stdout or stderr, open for the life of the process; ManuallyDrop
    // keeps it open (and unbuffered: nothing but the carry holds a piece of a value).
    let mut out = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(to) });
    let mut redactor = Redactor::default();
    let mut buf = Zeroizing::new(vec![0u8; READ_CHUNK]);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let cleaned = seen.with(|values| redactor.feed(values, &buf[..n]));
        // A closed stdout (the reader went away) must not stop the child: keep draining.
        let _ = out.write_all(&cleaned);
    }
    let rest = seen.with(|values| redactor.finish(values));
    let _ = out.write_all(&rest);
}

/// Replaces values in a stream that arrives in pieces. Holds back only a tail that could be
/// the start of a value.
#[derive(Default)]
pub(super) struct Redactor {
    /// Bytes held back from the last piece.
    carry: Zeroizing<Vec<u8>>,
}

impl Redactor {
    /// The cleaned bytes that are safe to write now.
    pub(super) fn feed(&mut self, values: &[(String, Value)], piece: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut data = Zeroizing::new(std::mem::take(&mut *self.carry));
        data.extend_from_slice(piece);
        let (out, held) = scan(values, &data, false);
        self.carry = Zeroizing::new(data[held..].to_vec());
        out
    }

    /// Everything left at the end of the stream.
    pub(super) fn finish(&mut self, values: &[(String, Value)]) -> Zeroizing<Vec<u8>> {
        let data = Zeroizing::new(std::mem::take(&mut *self.carry));
        scan(values, &data, true).0
    }
}

/// Cleans `data`; returns the output and where the held-back tail starts (`data.len()` when
/// nothing is held, always so at the end).
fn scan(values: &[(String, Value)], data: &[u8], at_end: bool) -> (Zeroizing<Vec<u8>>, usize) {
    let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
    let mut i = 0;
    'bytes: while i < data.len() {
        let rest = &data[i..];
        // A longer value may still be arriving here: wait for it before judging.
        if !at_end
            && values
                .iter()
                .any(|(_, v)| v.len() > rest.len() && v.starts_with(rest))
        {
            return (out, i);
        }
        // `values` is longest first, so a value containing another wins.
        for (name, value) in values {
            if rest.starts_with(value) {
                out.extend_from_slice(format!("<redacted:{name}>").as_bytes());
                i += value.len();
                continue 'bytes;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    (out, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[(&str, &str)]) -> Vec<(String, Value)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(n, v)| (n.to_string(), Zeroizing::new(v.as_bytes().to_vec())))
            .collect();
        v.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        v
    }

    /// Feeds `text` in pieces of `size` bytes and returns all output.
    fn run(values: &[(String, Value)], text: &str, size: usize) -> String {
        let mut r = Redactor::default();
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(size) {
            out.extend_from_slice(&r.feed(values, piece));
        }
        out.extend_from_slice(&r.finish(values));
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn values_are_replaced_whatever_the_piece_size() {
        let v = values(&[("api_key", "s3cr3t-KEY"), ("pass", "hunter2")]);
        let text = "key=s3cr3t-KEY pass=hunter2 and s3cr3t-KEs hunter2";
        let want = "key=<redacted:api_key> pass=<redacted:pass> and s3cr3t-KEs <redacted:pass>";
        for size in 1..=text.len() {
            assert_eq!(run(&v, text, size), want, "piece size {size}");
        }
    }

    #[test]
    fn a_partial_value_at_the_end_is_written_as_it_is() {
        let v = values(&[("k", "abcdef")]);
        assert_eq!(run(&v, "xx abc", 2), "xx abc");
    }

    #[test]
    fn the_longer_of_two_overlapping_values_wins() {
        let v = values(&[("short", "abc"), ("long", "abcdef")]);
        assert_eq!(run(&v, "abcdef abc", 3), "<redacted:long> <redacted:short>");
    }

    #[test]
    fn only_a_possible_start_of_a_value_is_held_back() {
        let v = values(&[("k", "secret")]);
        let mut r = Redactor::default();
        assert_eq!(r.feed(&v, b"hello se").as_slice(), b"hello ");
        assert_eq!(r.feed(&v, b"cond").as_slice(), b"second");
    }
}
