//! Every redb table, in one place. docs/schema.md documents each layout; change both together.
//!
//! Evolution rules: never change a table's key or value type in place; add new tables or new
//! keys instead. `SCHEMA_VERSION` in `meta` is checked at open: a database written by a newer
//! incompatible schema is refused rather than misread.

use redb::TableDefinition;

/// The schema this build writes and understands.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Daemon-wide records: `schema_version` (u32 LE), `audit_checkpoint` (u64 LE first_seq then
/// 32-byte prev_hash).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// One row per catalog secret: name → UTF-8 JSON of `SecretMeta`.
pub(crate) const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// The audit trail: seq → 32-byte prev_hash, 32-byte hash, then the canonical record body.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Key of the schema version in `META`.
pub(crate) const KEY_SCHEMA_VERSION: &str = "schema_version";
/// Key of the audit checkpoint in `META`.
pub(crate) const KEY_AUDIT_CHECKPOINT: &str = "audit_checkpoint";
/// Key in `META` of the first audit sequence number chained under the audit key (u64 LE).
/// Absent in a database an earlier release wrote, until a keyed build opens it.
pub(crate) const KEY_AUDIT_KEYED_FROM: &str = "audit_keyed_from";

/// What the last-known-good file held when it was last sealed: secret name → the fetch time
/// (Unix ms) of the value sealed for it. A file older than this (a copy put back) is refused
/// record by record at restore.
pub(crate) const LKG_SEALED: TableDefinition<&str, i64> = TableDefinition::new("lkg_sealed");

/// Active break-glass overrides: name → the sealed envelope exactly as submitted (never the
/// plaintext), so a restart during an outage keeps the override until it expires.
pub(crate) const BREAK_GLASS: TableDefinition<&str, &[u8]> = TableDefinition::new("break_glass");

/// Break-glass envelopes already applied: envelope id (hex SHA-256 of its bytes) → the
/// override's expiry, Unix ms (i64 LE). An envelope is applied at most once; ids are dropped
/// once past their expiry (an expired envelope is refused anyway).
pub(crate) const BREAK_GLASS_USED: TableDefinition<&str, &[u8]> =
    TableDefinition::new("break_glass_used");
