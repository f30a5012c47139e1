//! Reads, audited across connections: one record when a uid and program first reads a secret
//! version, then one count per window, however many connections the reads came over.
//!
//! A connection counts its own reads without a lock ([`super::session::Tally`]) and asks the
//! ledger only for its first read of a secret version: if the same uid and program already
//! read that version this window, nothing is written now. Its counts come here when it flushes
//! (every window, when the value changes under it, at disconnect), and the ledger writes one
//! aggregated record per key when the window ends. A bot that reconnects for every read so
//! costs the trail two records a window, not one per read.
//!
//! The ledger holds at most [`MAX_READ_KEYS`] keys: when full, every count is written and the
//! ledger starts over. A key whose version changes writes its old count first. Whatever is
//! left is written when the ledger is dropped, at shutdown once every connection has flushed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::audit::{Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::util::lock::Recover;

/// The most (uid, program, secret) keys held before every count is written.
pub(crate) const MAX_READ_KEYS: usize = 4096;

/// Who read which secret: the uid and gid, the attested program and the slot.
type Key = (u32, u32, Arc<str>, usize);

/// One key's reads.
#[derive(Debug)]
struct Reads {
    /// The secret's name, for its records.
    name: Box<str>,
    /// The version read.
    version: String,
    /// Its fingerprint.
    fingerprint: String,
    /// Reads not yet written.
    pending: u64,
    /// Whether it was read this window (idle keys are dropped when the window ends).
    active: bool,
    /// The reader, for the aggregated record (its pid is left out: the count spans processes).
    actor: Actor,
}

/// A read a connection asks about: who, which slot under which name, which value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read<'a> {
    /// The reader.
    pub(crate) actor: &'a Actor,
    /// The secret's slot.
    pub(crate) slot: usize,
    /// Its name.
    pub(crate) name: &'a str,
    /// The version read.
    pub(crate) version: &'a str,
    /// Its fingerprint.
    pub(crate) fingerprint: &'a str,
}

/// What the ledger did with a connection's first read of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// Recorded now: the first of its key this window.
    Recorded,
    /// Already recorded this window: the connection counts it.
    Counted,
    /// The audit trail cannot take it: the read must be refused.
    Refused,
}

/// Reads per key, daemon-wide.
#[derive(Debug)]
pub(crate) struct ReadLedger {
    /// Where records go.
    audit: AuditLog,
    /// The keys.
    keys: Mutex<HashMap<Key, Reads>>,
}

impl ReadLedger {
    pub(crate) fn new(audit: AuditLog) -> ReadLedger {
        ReadLedger {
            audit,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// A connection's first read of `read.version`: recorded at once unless its key was read
    /// at that version this window.
    pub(crate) fn first(&self, read: Read<'_>) -> First {
        let mut keys = self.keys.lock().recover();
        let key = key_of(read);
        if let Some(reads) = keys.get_mut(&key) {
            if reads.version == read.version && reads.fingerprint == read.fingerprint {
                reads.active = true;
                return First::Counted;
            }
            // A new value: the old one's count is written before the new one's first read.
            self.write(reads);
            keys.remove(&key);
        }
        if keys.len() >= MAX_READ_KEYS {
            self.write_all(&mut keys);
            keys.clear();
        }
        let mut event = AuditEvent::new(Action::Read, read.name, read.actor, Outcome::Ok);
        event.version = read.version.to_owned();
        event.fingerprint = read.fingerprint.to_owned();
        if !self.audit.record(event) {
            return First::Refused;
        }
        keys.insert(
            key,
            Reads {
                name: read.name.into(),
                version: read.version.to_owned(),
                fingerprint: read.fingerprint.to_owned(),
                pending: 0,
                active: true,
                actor: aggregate_actor(read.actor),
            },
        );
        First::Recorded
    }

    /// Adds `count` reads a connection made of `read.version` since it last flushed.
    pub(crate) fn add(&self, read: Read<'_>, count: u64) {
        if count == 0 {
            return;
        }
        let mut keys = self.keys.lock().recover();
        if let Some(reads) = keys.get_mut(&key_of(read))
            && reads.version == read.version
            && reads.fingerprint == read.fingerprint
        {
            reads.pending += count;
            reads.active = true;
            return;
        }
        // Its key moved on to a newer value, or was written out: a record of its own.
        let mut reads = Reads {
            name: read.name.into(),
            version: read.version.to_owned(),
            fingerprint: read.fingerprint.to_owned(),
            pending: count,
            active: false,
            actor: aggregate_actor(read.actor),
        };
        self.write(&mut reads);
    }

    /// Ends a window: every count is written, and keys nobody read in it are dropped.
    pub(crate) fn roll(&self) {
        let mut keys = self.keys.lock().recover();
        keys.retain(|_, reads| {
            self.write(reads);
            std::mem::replace(&mut reads.active, false)
        });
    }

    /// Writes every count (the ledger is full, or going away); the caller starts over.
    fn write_all(&self, keys: &mut HashMap<Key, Reads>) {
        for reads in keys.values_mut() {
            self.write(reads);
        }
    }

    /// Writes `reads`' pending count, if any, as one aggregated record.
    fn write(&self, reads: &mut Reads) {
        if reads.pending == 0 {
            return;
        }
        let name = &reads.name;
        let mut event = AuditEvent::new(Action::Read, name, &reads.actor, Outcome::Ok);
        event.count = std::mem::take(&mut reads.pending);
        event.version.clone_from(&reads.version);
        event.fingerprint.clone_from(&reads.fingerprint);
        event.detail = "aggregated".into();
        if !self.audit.record(event) {
            tracing::error!(secret = %name, "aggregated reads could not be audited");
        }
    }
}

impl Drop for ReadLedger {
    /// At shutdown, once every connection has flushed into it: nothing counted is lost.
    fn drop(&mut self) {
        let mut keys = self.keys.lock().recover();
        self.write_all(&mut keys);
    }
}

fn key_of(read: Read<'_>) -> Key {
    (
        read.actor.uid,
        read.actor.gid,
        read.actor.program.clone().unwrap_or_else(|| Arc::from("")),
        read.slot,
    )
}

/// The reader as an aggregated record names it: uid, gid and program, no pid.
fn aggregate_actor(actor: &Actor) -> Actor {
    Actor {
        pid: None,
        ..actor.clone()
    }
}
