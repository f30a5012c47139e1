//! The audit table's operations: append in group commits, tail, verify from the checkpoint,
//! prune a prefix. The chain's format is `chain`'s; the database file is `store`'s.

use redb::{Durability, ReadableTable};

use super::chain::{self, HASH_LEN, Hash, Verification};
use super::event::AuditEvent;
use crate::store::tables::{AUDIT, KEY_AUDIT_CHECKPOINT, META};
use crate::store::{Store, StoreError};

/// Appends events to the chain in one durable transaction (group commit).
pub(crate) fn append(store: &Store, events: &[AuditEvent]) -> Result<(), StoreError> {
    let mut txn = store.write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let meta = txn.open_table(META)?;
        let mut table = txn.open_table(AUDIT)?;
        let (mut seq, mut prev) = match table.last()? {
            Some((k, v)) => {
                let (_, hash, _) = chain::split_stored(v.value())
                    .ok_or_else(|| StoreError::corrupt(format!("audit record {}", k.value())))?;
                (k.value(), hash)
            }
            None => {
                let (first, prev) = checkpoint(&meta)?;
                (first - 1, prev)
            }
        };
        for event in events {
            seq += 1;
            let (stored, hash) = chain::encode_stored(&prev, seq, &chain::encode_body(event));
            table.insert(seq, stored.as_slice())?;
            prev = hash;
        }
    }
    Ok(txn.commit()?)
}

/// The last `limit` records (optionally of one secret), oldest first.
pub(crate) fn tail(
    store: &Store,
    limit: usize,
    secret: Option<&str>,
) -> Result<Vec<(u64, AuditEvent, Hash)>, StoreError> {
    let txn = store.read()?;
    let table = txn.open_table(AUDIT)?;
    let mut out = Vec::new();
    for row in table.iter()?.rev() {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        let seq = k.value();
        let (_, hash, body) = chain::split_stored(v.value())
            .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?;
        let event = chain::decode_body(body)
            .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?;
        if secret.is_none_or(|s| s == event.secret) {
            out.push((seq, event, hash));
        }
    }
    out.reverse();
    Ok(out)
}

/// Walks the whole chain from its checkpoint.
pub(crate) fn verify(store: &Store) -> Result<Verification, StoreError> {
    let txn = store.read()?;
    let meta = txn.open_table(META)?;
    let (first, prev) = checkpoint(&meta)?;
    let table = txn.open_table(AUDIT)?;
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push((k.value(), v.value().to_vec()));
    }
    Ok(chain::verify(
        first,
        prev,
        rows.iter().map(|(s, v)| (*s, v.as_slice())),
    ))
}

/// Removes records older than `cutoff_ms` from the start of the chain, moving the
/// checkpoint so the rest still verifies. Returns how many were removed.
pub(crate) fn prune(store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
    let txn = store.write()?;
    let mut removed = 0;
    {
        let mut meta = txn.open_table(META)?;
        let mut table = txn.open_table(AUDIT)?;
        let mut last: Option<(u64, Hash)> = None;
        let mut doomed = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (_, hash, body) = chain::split_stored(v.value())
                .ok_or_else(|| StoreError::corrupt(format!("audit record {}", k.value())))?;
            let at = chain::decode_body(body).map_or(i64::MAX, |e| e.recorded_at_ms);
            if at >= cutoff_ms {
                break;
            }
            doomed.push(k.value());
            last = Some((k.value(), hash));
        }
        if let Some((seq, hash)) = last {
            for s in &doomed {
                table.remove(*s)?;
            }
            let mut cp = (seq + 1).to_le_bytes().to_vec();
            cp.extend_from_slice(&hash);
            meta.insert(KEY_AUDIT_CHECKPOINT, cp.as_slice())?;
            removed = doomed.len() as u64;
        }
    }
    txn.commit()?;
    Ok(removed)
}

/// The chain's starting point: (first_seq, prev_hash); (1, zeros) before any pruning.
fn checkpoint(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(u64, Hash), StoreError> {
    match meta.get(KEY_AUDIT_CHECKPOINT)? {
        None => Ok((1, [0; HASH_LEN])),
        Some(v) => {
            let bytes = v.value();
            if bytes.len() != 8 + HASH_LEN {
                return Err(StoreError::corrupt("audit_checkpoint"));
            }
            let first = u64::from_le_bytes(
                bytes[..8]
                    .try_into()
                    .map_err(|_| StoreError::corrupt("audit_checkpoint"))?,
            );
            let prev = bytes[8..]
                .try_into()
                .map_err(|_| StoreError::corrupt("audit_checkpoint"))?;
            Ok((first, prev))
        }
    }
}
