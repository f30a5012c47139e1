//! The audit table's operations: append in group commits, tail, verify from the checkpoint,
//! prune a prefix. The chain's format is `chain`'s; the database file is `store`'s.

use redb::{Durability, ReadableTable};

use super::chain::{self, Chaining, HASH_LEN, Hash, Verification};
use super::event::AuditEvent;
use crate::store::tables::{AUDIT, KEY_AUDIT_CHECKPOINT, KEY_AUDIT_KEYED_FROM, META};
use crate::store::{Store, StoreError};
use crate::util::key_file::Key;

/// What opening the chain under its key found.
#[derive(Debug)]
pub(crate) enum Keying {
    /// The chain is keyed already, or empty and keyed from its next record.
    Keyed,
    /// A database an earlier release wrote: its unkeyed records were checked, and the keyed
    /// chain starts with the next record (which must commit to this head).
    Upgraded {
        /// The unkeyed chain's last record.
        head_seq: u64,
        /// Its hash.
        head_hash: Hash,
        /// The unkeyed chain's verification.
        legacy: Verification,
    },
}

/// Starts keyed chaining on this database: a new or empty chain is keyed from its next record;
/// an unkeyed one (an earlier release's) is verified as it is, and keyed from the record after
/// its head.
pub(crate) fn open_keyed(store: &Store) -> Result<Keying, StoreError> {
    let txn = store.write()?;
    let keying = {
        let mut meta = txn.open_table(META)?;
        if meta.get(KEY_AUDIT_KEYED_FROM)?.is_some() {
            return Ok(Keying::Keyed);
        }
        let table = txn.open_table(AUDIT)?;
        let (first, prev) = checkpoint(&meta)?;
        let last = table.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
        let (keyed_from, keying) = match last {
            None => (first, Keying::Keyed),
            Some((head_seq, stored)) => {
                let head_hash = chain::split_stored(&stored)
                    .ok_or_else(|| StoreError::corrupt(format!("audit record {head_seq}")))?
                    .1;
                let mut rows = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    rows.push((k.value(), v.value().to_vec()));
                }
                let legacy = chain::verify(
                    None,
                    first,
                    prev,
                    rows.iter().map(|(s, v)| (*s, v.as_slice())),
                );
                (
                    head_seq + 1,
                    Keying::Upgraded {
                        head_seq,
                        head_hash,
                        legacy,
                    },
                )
            }
        };
        meta.insert(KEY_AUDIT_KEYED_FROM, &keyed_from.to_le_bytes()[..])?;
        keying
    };
    txn.commit()?;
    Ok(keying)
}

/// Appends events to the chain in one durable transaction (group commit).
pub(crate) fn append(store: &Store, key: &Key, events: &[AuditEvent]) -> Result<(), StoreError> {
    // Everything this build appends is keyed: it runs only after `open_keyed`.
    append_chained(store, Chaining { key, keyed_from: 0 }, events)
}

/// [`append`] under `chaining` (tests write an earlier release's unkeyed records with it).
fn append_chained(
    store: &Store,
    chaining: Chaining<'_>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
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
            let (stored, hash) =
                chain::encode_stored(chaining, &prev, seq, &chain::encode_body(event));
            table.insert(seq, stored.as_slice())?;
            prev = hash;
        }
    }
    Ok(txn.commit()?)
}

/// Whether any record satisfies `wanted` (newest first; a whole scan when none does).
pub(crate) fn any(
    store: &Store,
    mut wanted: impl FnMut(&AuditEvent) -> bool,
) -> Result<bool, StoreError> {
    let txn = store.read()?;
    let table = txn.open_table(AUDIT)?;
    for row in table.iter()?.rev() {
        let (k, v) = row?;
        let seq = k.value();
        let (_, _, body) = chain::split_stored(v.value())
            .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?;
        let event = chain::decode_body(body)
            .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?;
        if wanted(&event) {
            return Ok(true);
        }
    }
    Ok(false)
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

/// Walks the whole chain from its checkpoint, under `key`.
pub(crate) fn verify(store: &Store, key: &Key) -> Result<Verification, StoreError> {
    let txn = store.read()?;
    let meta = txn.open_table(META)?;
    let (first, prev) = checkpoint(&meta)?;
    let table = txn.open_table(AUDIT)?;
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push((k.value(), v.value().to_vec()));
    }
    // Where keyed records must start comes from the chain itself, never from the meta row
    // `audit_keyed_from`: anyone who can write the database could set that past the head and
    // rewrite every record unkeyed.
    let chaining = Chaining {
        key,
        keyed_from: chain::keyed_from(key, first, &rows),
    };
    let mut v = chain::verify(
        Some(chaining),
        first,
        prev,
        rows.iter().map(|(s, v)| (*s, v.as_slice())),
    );
    if v.broken.is_none()
        && first > 1
        && first >= chaining.keyed_from
        && !checkpoint_confirmed(&rows, first, &prev)
    {
        v.broken = Some((
            first,
            "the prune checkpoint does not match its audit_prune record (moved or forged)".into(),
        ));
    }
    Ok(v)
}

/// The hash of record `seq`, if the chain holds it.
pub(crate) fn record_hash(store: &Store, seq: u64) -> Result<Option<Hash>, StoreError> {
    let txn = store.read()?;
    let table = txn.open_table(AUDIT)?;
    let Some(v) = table.get(seq)? else {
        return Ok(None);
    };
    Ok(Some(
        chain::split_stored(v.value())
            .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?
            .1,
    ))
}

/// The chain's last record: (seq, hash), if there is one.
pub(crate) fn head(store: &Store) -> Result<Option<(u64, Hash)>, StoreError> {
    let txn = store.read()?;
    let table = txn.open_table(AUDIT)?;
    let Some((k, v)) = table.last()? else {
        return Ok(None);
    };
    let seq = k.value();
    let hash = chain::split_stored(v.value())
        .ok_or_else(|| StoreError::corrupt(format!("audit record {seq}")))?
        .1;
    Ok(Some((seq, hash)))
}

/// Removes records older than `cutoff_ms` from the start of the chain, moving the
/// checkpoint so the rest still verifies, and appends `record` (completed with the count and
/// the new checkpoint) in the same transaction. Returns how many were removed.
pub(crate) fn prune(
    store: &Store,
    key: &Key,
    cutoff_ms: i64,
    mut record: AuditEvent,
    older_than: &str,
) -> Result<u64, StoreError> {
    let mut txn = store.write()?;
    txn.set_durability(Durability::Immediate)?;
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
            record.count = removed;
            record.detail = format!(
                "removed {removed} records older than {older_than}; {CHECKPOINT_TAG}{}:{}",
                seq + 1,
                hex::encode(hash)
            );
            // The record goes after the last kept one (or right after the checkpoint).
            let (head_seq, head) = match table.last()? {
                Some((k, v)) => (
                    k.value(),
                    chain::split_stored(v.value())
                        .ok_or_else(|| StoreError::corrupt(format!("audit record {}", k.value())))?
                        .1,
                ),
                None => (seq, hash),
            };
            let chaining = Chaining { key, keyed_from: 0 };
            let (stored, _) =
                chain::encode_stored(chaining, &head, head_seq + 1, &chain::encode_body(&record));
            table.insert(head_seq + 1, stored.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(removed)
}

/// How an `audit_prune` record names the checkpoint it set: `checkpoint SEQ:HASH`.
const CHECKPOINT_TAG: &str = "checkpoint ";

/// Whether the newest `audit_prune` record among `rows` names the checkpoint
/// (`first`, `prev`). Only checkpoints a keyed build set are checked (`first >= keyed_from`);
/// earlier releases did not name them.
fn checkpoint_confirmed(rows: &[(u64, Vec<u8>)], first: u64, prev: &Hash) -> bool {
    let expected = format!("{CHECKPOINT_TAG}{first}:{}", hex::encode(prev));
    rows.iter()
        .rev()
        .filter_map(|(_, stored)| chain::decode_body(chain::split_stored(stored)?.2))
        .find(|e| e.action == super::event::Action::AuditPrune)
        .is_some_and(|e| e.detail.ends_with(&expected))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Action, Actor, Outcome};

    fn events(n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|_| AuditEvent::new(Action::Read, "k", &Actor::daemon(), Outcome::Ok))
            .collect()
    }

    #[test]
    fn an_earlier_releases_chain_is_verified_then_keyed_from_its_head_on() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let key = zeroize::Zeroizing::new([3u8; 32]);
        // What an earlier release left: records chained without a key, and no keyed_from.
        append_unkeyed(&store, &key, &events(3));
        match open_keyed(&store).expect("open keyed") {
            Keying::Upgraded {
                head_seq, legacy, ..
            } => {
                assert_eq!(head_seq, 3);
                assert_eq!((legacy.checked, legacy.broken), (3, None));
            }
            other => panic!("expected an upgrade, got {other:?}"),
        }
        assert!(matches!(open_keyed(&store).expect("again"), Keying::Keyed));
        // The daemon records the upgrade (runtime/open_store.rs), then keyed records follow.
        append(&store, &key, &[upgrade()]).expect("upgrade record");
        append(&store, &key, &events(2)).expect("keyed records");
        let v = verify(&store, &key).expect("verify");
        assert_eq!((v.checked, v.broken), (6, None));
        // Under another key no upgrade record is authentic: nothing may be unkeyed.
        let other = zeroize::Zeroizing::new([4u8; 32]);
        assert_eq!(
            verify(&store, &other)
                .expect("verify")
                .broken
                .expect("broken")
                .0,
            1
        );
        assert_eq!(head(&store).expect("head").map(|h| h.0), Some(6));
        assert_eq!(
            record_hash(&store, 6).expect("hash"),
            head(&store).expect("head").map(|h| h.1)
        );
        // An unkeyed record after the upgrade is refused.
        append_unkeyed(&store, &key, &events(1));
        let v = verify(&store, &key).expect("verify");
        assert_eq!(v.broken.map(|b| b.0), Some(7));
    }

    fn upgrade() -> AuditEvent {
        AuditEvent::new(Action::AuditUpgrade, "", &Actor::daemon(), Outcome::Ok)
    }

    fn append_unkeyed(store: &Store, key: &Key, events: &[AuditEvent]) {
        let unkeyed = Chaining {
            key,
            keyed_from: u64::MAX,
        };
        append_chained(store, unkeyed, events).expect("unkeyed records");
    }

    #[test]
    fn a_keyed_chain_rewritten_unkeyed_fails_whatever_the_meta_rows_say() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let key = zeroize::Zeroizing::new([5u8; 32]);
        assert!(matches!(open_keyed(&store).expect("new"), Keying::Keyed));
        append(&store, &key, &events(3)).expect("keyed");
        assert_eq!(verify(&store, &key).expect("verify").broken, None);
        // Someone with write access but no key rewrites the chain unkeyed and moves
        // `audit_keyed_from` past it.
        let txn = store.write().expect("txn");
        {
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(KEY_AUDIT_KEYED_FROM, &u64::MAX.to_le_bytes()[..])
                .expect("flip");
            let mut table = txn.open_table(AUDIT).expect("audit");
            table.retain(|_, _| false).expect("clear");
        }
        txn.commit().expect("commit");
        append_unkeyed(&store, &key, &events(3));
        let v = verify(&store, &key).expect("verify");
        assert_eq!(v.broken.as_ref().map(|b| b.0), Some(1), "{v:?}");
    }

    #[test]
    fn a_new_database_is_keyed_from_its_first_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let key = zeroize::Zeroizing::new([5u8; 32]);
        assert!(matches!(open_keyed(&store).expect("open"), Keying::Keyed));
        append(&store, &key, &events(2)).expect("append");
        assert_eq!(verify(&store, &key).expect("verify").broken, None);
        let other = zeroize::Zeroizing::new([6u8; 32]);
        assert_eq!(
            verify(&store, &other)
                .expect("verify")
                .broken
                .expect("broken")
                .0,
            1
        );
    }

    #[test]
    fn pruning_verifies_and_a_checkpoint_moved_by_hand_is_caught() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let key = zeroize::Zeroizing::new([8u8; 32]);
        open_keyed(&store).expect("open");
        let mut old = events(5);
        for e in &mut old {
            e.recorded_at_ms = 1_000;
        }
        append(&store, &key, &old).expect("old");
        append(&store, &key, &events(2)).expect("new");
        let record = AuditEvent::new(Action::AuditPrune, "", &Actor::daemon(), Outcome::Ok);
        assert_eq!(prune(&store, &key, 2_000, record, "1s").expect("prune"), 5);
        let v = verify(&store, &key).expect("verify");
        assert_eq!((v.first_seq, v.checked, v.broken), (6, 3, None));

        // Someone drops record 6 and moves the checkpoint past it to hide that.
        let hash_of_6 = record_hash(&store, 6).expect("hash").expect("record 6");
        let txn = store.write().expect("txn");
        {
            let mut table = txn.open_table(AUDIT).expect("audit");
            table.remove(6u64).expect("remove");
            let mut meta = txn.open_table(META).expect("meta");
            let mut cp = 7u64.to_le_bytes().to_vec();
            cp.extend_from_slice(&hash_of_6);
            meta.insert(KEY_AUDIT_CHECKPOINT, cp.as_slice())
                .expect("checkpoint");
        }
        txn.commit().expect("commit");
        let v = verify(&store, &key).expect("verify");
        let (seq, why) = v.broken.expect("caught");
        assert_eq!(seq, 7);
        assert!(why.contains("checkpoint"), "{why}");
    }
}
