//! The audit trail: what happened, to which secret, by whom, in a hash chain that breaks at
//! any altered, removed or reordered record.
//!
//! `event` (what a record says) → `chain` (its canonical bytes and the chain over them) →
//! `table` (the redb table: append, tail, verify, prune) → `writer` (one thread that
//! group-commits, and the fail-closed health flag) → `retention` (pruning past the retention
//! period, itself audited). Producers on the read path never wait for the disk; admin
//! operations wait until their record is durable.

mod chain;
mod event;
mod retention;
mod table;
mod writer;

pub(crate) use event::{Action, Actor, ActorType, AuditEvent, Outcome};
pub(crate) use retention::prune;
pub(crate) use table::{Keying, any, append, open_keyed, record_hash, tail, verify as verify_with};
pub(crate) use writer::{AuditError, AuditLog};
