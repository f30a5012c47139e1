//! Audit records: canonical encoding and the hash chain.
//!
//! Stored value = prev_hash (32) ‖ hash (32) ‖ body, where
//! hash = HMAC-SHA256(key, prev_hash ‖ seq as u64 LE ‖ body) under a key kept outside the
//! database. Records written before keyed chains (by an earlier release) keep their
//! SHA-256(prev_hash ‖ seq ‖ body); `Chaining` says from which sequence number the key
//! applies. Binding the sequence number makes a deleted, reordered or altered record break the
//! chain at that point; the key means nobody without it can rewrite the chain to match.
//! docs/schema.md has the layout.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::util::key_file::Key;

use super::event::{Action, ActorType, AuditEvent, Outcome};

/// Bytes of a SHA-256 hash.
pub(super) const HASH_LEN: usize = 32;
/// The body format this build writes: 2 adds the attested program after `detail`.
const BODY_FORMAT: u8 = 2;
/// The first format, which has no program; still read.
const BODY_FORMAT_1: u8 = 1;
/// The longest text field kept in a record (longer text is cut at a char boundary).
const MAX_TEXT: usize = 1024;

/// A hash in the chain.
pub(super) type Hash = [u8; HASH_LEN];

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// The canonical body of an event.
pub(super) fn encode_body(e: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.secret.len() + e.detail.len() + 64);
    out.push(BODY_FORMAT);
    out.extend_from_slice(&e.recorded_at_ms.to_le_bytes());
    out.push(e.action as u8);
    out.push(e.actor_type as u8);
    out.push(e.outcome as u8);
    out.extend_from_slice(&e.error_code.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&e.uid.to_le_bytes());
    out.extend_from_slice(&e.gid.to_le_bytes());
    out.extend_from_slice(&e.pid.unwrap_or(-1).to_le_bytes());
    out.extend_from_slice(&e.duration_ms.to_le_bytes());
    out.extend_from_slice(&e.count.to_le_bytes());
    for text in [&e.secret, &e.version, &e.fingerprint, &e.detail, &e.program] {
        put_text(&mut out, text);
    }
    out
}

/// Reads fields off a body, failing on truncation.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn text(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// Parses a canonical body (for `audit tail`).
pub(super) fn decode_body(body: &[u8]) -> Option<AuditEvent> {
    let mut c = Cursor(body);
    let format = c.array::<1>()?[0];
    if format != BODY_FORMAT && format != BODY_FORMAT_1 {
        return None;
    }
    let recorded_at_ms = i64::from_le_bytes(c.array()?);
    let action = Action::from_u8(c.array::<1>()?[0])?;
    let actor_type = match c.array::<1>()?[0] {
        1 => ActorType::Client,
        2 => ActorType::Admin,
        3 => ActorType::Daemon,
        _ => return None,
    };
    let outcome = match c.array::<1>()?[0] {
        1 => Outcome::Ok,
        2 => Outcome::Denied,
        3 => Outcome::Failed,
        _ => return None,
    };
    let error_code = Some(u16::from_le_bytes(c.array()?)).filter(|c| *c != 0);
    let uid = u32::from_le_bytes(c.array()?);
    let gid = u32::from_le_bytes(c.array()?);
    let pid = Some(i32::from_le_bytes(c.array()?)).filter(|p| *p >= 0);
    let duration_ms = u32::from_le_bytes(c.array()?);
    let count = u64::from_le_bytes(c.array()?);
    let event = AuditEvent {
        recorded_at_ms,
        action,
        secret: c.text()?,
        actor_type,
        uid,
        gid,
        pid,
        outcome,
        error_code,
        version: c.text()?,
        fingerprint: c.text()?,
        duration_ms,
        count,
        detail: c.text()?,
        program: if format == BODY_FORMAT {
            c.text()?
        } else {
            String::new()
        },
    };
    c.0.is_empty().then_some(event)
}

/// How records are hashed: under the key from `keyed_from` on, with plain SHA-256 before (the
/// records an earlier release wrote, before the database was upgraded).
#[derive(Clone, Copy)]
pub(crate) struct Chaining<'a> {
    /// The chain key.
    pub(crate) key: &'a Key,
    /// The first sequence number hashed under the key.
    pub(crate) keyed_from: u64,
}

impl std::fmt::Debug for Chaining<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaining")
            .field("key", &"[REDACTED]")
            .field("keyed_from", &self.keyed_from)
            .finish()
    }
}

impl Chaining<'_> {
    /// The chain hash of record `seq`.
    pub(crate) fn hash(&self, prev: &Hash, seq: u64, body: &[u8]) -> Hash {
        if seq < self.keyed_from {
            return legacy_hash(prev, seq, body);
        }
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key[..]) else {
            return [0; HASH_LEN];
        };
        mac.update(prev);
        mac.update(&seq.to_le_bytes());
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The unkeyed hash earlier releases chained with.
pub(crate) fn legacy_hash(prev: &Hash, seq: u64, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(body);
    h.finalize().into()
}

/// A stored value: prev_hash ‖ hash ‖ body.
pub(crate) fn encode_stored(
    chaining: Chaining<'_>,
    prev: &Hash,
    seq: u64,
    body: &[u8],
) -> (Vec<u8>, Hash) {
    let hash = chaining.hash(prev, seq, body);
    let mut out = Vec::with_capacity(2 * HASH_LEN + body.len());
    out.extend_from_slice(prev);
    out.extend_from_slice(&hash);
    out.extend_from_slice(body);
    (out, hash)
}

/// Splits a stored value into (prev_hash, hash, body).
pub(super) fn split_stored(stored: &[u8]) -> Option<(Hash, Hash, &[u8])> {
    if stored.len() < 2 * HASH_LEN {
        return None;
    }
    let prev = stored[..HASH_LEN].try_into().ok()?;
    let hash = stored[HASH_LEN..2 * HASH_LEN].try_into().ok()?;
    Some((prev, hash, &stored[2 * HASH_LEN..]))
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verification {
    /// Records checked.
    pub checked: u64,
    /// The first sequence number the chain covers.
    pub first_seq: u64,
    /// The last sequence number checked.
    pub last_seq: u64,
    /// The first record that does not verify, and why.
    pub broken: Option<(u64, String)>,
    /// The hash of the last record checked (the chain's head when nothing is broken).
    pub head: Option<Hash>,
}

/// The first sequence number a verifier must find hashed under `key`, whatever the database's
/// meta rows say (they are not authenticated): the seq of the first `audit_upgrade` record
/// whose own hash is keyed (only the key's holder could write one; earlier records may be an
/// earlier release's unkeyed ones), else `first_seq` (a chain keyed from its first record, or
/// whose upgrade record was pruned along with everything unkeyed before it).
pub(crate) fn keyed_from(key: &Key, first_seq: u64, records: &[(u64, Vec<u8>)]) -> u64 {
    let keyed = Chaining { key, keyed_from: 0 };
    records
        .iter()
        .find_map(|(seq, stored)| {
            let (prev, hash, body) = split_stored(stored)?;
            let upgrade = decode_body(body)?.action == Action::AuditUpgrade;
            (upgrade && keyed.hash(&prev, *seq, body) == hash).then_some(*seq)
        })
        .unwrap_or(first_seq)
}

/// Walks records in key order from a checkpoint (`first_seq`, `prev_hash`). With
/// `chaining` = `None`, every record is checked as an unkeyed (legacy) one.
pub(crate) fn verify<'a>(
    chaining: Option<Chaining<'_>>,
    first_seq: u64,
    mut prev: Hash,
    records: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Verification {
    let mut v = Verification {
        checked: 0,
        first_seq,
        last_seq: first_seq.saturating_sub(1),
        broken: None,
        head: None,
    };
    for (expected, (seq, stored)) in (first_seq..).zip(records) {
        let fail = |why: &str| Some((expected.min(seq), why.to_owned()));
        if seq != expected {
            v.broken = fail(if seq > expected {
                "a record is missing (sequence gap)"
            } else {
                "records are out of order"
            });
            return v;
        }
        let Some((stored_prev, stored_hash, body)) = split_stored(stored) else {
            v.broken = fail("record too short");
            return v;
        };
        if stored_prev != prev {
            v.broken = fail("prev_hash does not match the previous record (reordered or removed)");
            return v;
        }
        let expected_hash = match chaining {
            Some(c) => c.hash(&prev, seq, body),
            None => legacy_hash(&prev, seq, body),
        };
        if expected_hash != stored_hash {
            v.broken = fail("hash does not match the record's content (altered)");
            return v;
        }
        if decode_body(body).is_none() {
            v.broken = fail("record body does not parse");
            return v;
        }
        prev = stored_hash;
        v.checked += 1;
        v.last_seq = seq;
        v.head = Some(stored_hash);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(secret: &str) -> AuditEvent {
        AuditEvent {
            recorded_at_ms: 1_700_000_000_000,
            action: Action::Read,
            secret: secret.into(),
            actor_type: ActorType::Client,
            uid: 1001,
            gid: 2001,
            pid: Some(42),
            outcome: Outcome::Ok,
            error_code: None,
            version: "3".into(),
            fingerprint: "ab".repeat(32),
            duration_ms: 0,
            count: 5,
            detail: String::new(),
            program: "exe=/opt/bots/mm sha256=0123456789abcdef".into(),
        }
    }

    fn key() -> Key {
        zeroize::Zeroizing::new([9; crate::util::key_file::KEY_LEN])
    }

    fn chaining(key: &Key) -> Chaining<'_> {
        Chaining { key, keyed_from: 1 }
    }

    fn chain(n: u64) -> Vec<(u64, Vec<u8>)> {
        let key = key();
        let mut prev = [0u8; HASH_LEN];
        (1..=n)
            .map(|seq| {
                let (stored, hash) =
                    encode_stored(chaining(&key), &prev, seq, &encode_body(&event("k")));
                prev = hash;
                (seq, stored)
            })
            .collect()
    }

    fn run(records: &[(u64, Vec<u8>)]) -> Verification {
        let key = key();
        verify(
            Some(chaining(&key)),
            1,
            [0; HASH_LEN],
            records.iter().map(|(s, v)| (*s, v.as_slice())),
        )
    }

    #[test]
    fn a_chain_rewritten_without_the_key_does_not_verify() {
        let good = chain(3);
        assert_eq!(run(&good).broken, None);
        // Someone who can write the database alters record 2 and recomputes every hash after
        // it, as an unkeyed chain would let them.
        let mut forged = good.clone();
        let mut prev = split_stored(&forged[0].1).expect("split").1;
        for (seq, stored) in forged.iter_mut().skip(1) {
            let mut e = event("k");
            e.count = 1;
            let (new, hash) = {
                let body = encode_body(&e);
                let hash = legacy_hash(&prev, *seq, &body);
                let mut out = prev.to_vec();
                out.extend_from_slice(&hash);
                out.extend_from_slice(&body);
                (out, hash)
            };
            *stored = new;
            prev = hash;
        }
        assert_eq!(run(&forged).broken.expect("caught").0, 2);
        // The head of a good chain is its last record's hash.
        assert_eq!(
            run(&good).head,
            Some(split_stored(&good[2].1).expect("split").1)
        );
    }

    #[test]
    fn body_roundtrip() {
        let e = event("trading_api_key");
        assert_eq!(decode_body(&encode_body(&e)), Some(e));
        let long = AuditEvent {
            detail: "é".repeat(2000),
            ..event("k")
        };
        assert!(decode_body(&encode_body(&long)).expect("cut").detail.len() <= MAX_TEXT);
    }

    #[test]
    fn tamper_delete_reorder_are_detected() {
        let good = chain(5);
        assert_eq!(run(&good).broken, None);
        assert_eq!(run(&good).checked, 5);

        let mut altered = good.clone();
        let last = altered[2].1.len() - 1;
        altered[2].1[last] ^= 1;
        assert_eq!(run(&altered).broken.expect("broken").0, 3);

        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(run(&deleted).broken.expect("broken").0, 2);

        let mut reordered = good.clone();
        reordered.swap(1, 2);
        // Renumbering the keys to hide the swap still breaks the chain.
        for (i, r) in reordered.iter_mut().enumerate() {
            r.0 = i as u64 + 1;
        }
        assert_eq!(run(&reordered).broken.expect("broken").0, 2);

        // A pruned prefix verifies from its checkpoint.
        let (_, hash_of_2, _) = split_stored(&good[1].1).expect("split");
        let key = key();
        let tail = verify(
            Some(chaining(&key)),
            3,
            hash_of_2,
            good[2..].iter().map(|(s, v)| (*s, v.as_slice())),
        );
        assert_eq!((tail.broken, tail.checked), (None, 3));
    }
}
