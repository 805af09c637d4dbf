//! The store's format version: checked at open, and an older store this build knows migrated
//! (see [`super::FORMAT_VERSION`] for what each version added).

use super::{
    decode, outcome_key, pair_key, pending_key, put, Backend, Entry, InboxRecord, KeyValue, Op, StoreError, Tree,
    FORMAT_VERSION,
};
use crate::ids::PacketId;

/// Checks the store's format version, migrating an older one this build knows (or writing it on
/// a new store); refuses one it does not read.
pub(super) fn check_format(backend: &dyn Backend) -> Result<(), StoreError> {
    match backend.get(Tree::Meta, b"format")? {
        Some(v) if v.as_slice() == [FORMAT_VERSION] => Ok(()),
        Some(v) if matches!(v.as_slice(), [3] | [4] | [5] | [6] | [7]) => {
            index_outbox(backend)?;
            backend.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![FORMAT_VERSION])])?;
            backend.flush()
        }
        Some(v) if v.as_slice() == [2] => {
            migrate_2_to_3(backend)?;
            index_outbox(backend)?;
            backend.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![FORMAT_VERSION])])?;
            backend.flush()
        }
        Some(v) => Err(StoreError::Version { found: v.first().copied().unwrap_or(0) }),
        None => {
            backend.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![FORMAT_VERSION])])?;
            backend.flush()
        }
    }
}

/// Format 2 keyed the inbox and the evidence by packet id alone; 3 keys them by packet id and
/// sender. Moved in batches of [`MIGRATION_BATCH`] records (the evidence of one may be 16 MiB),
/// each flushed; the format is written last. Each value is written under its new key before the
/// old one goes, so a crash at any point loses nothing, and the next start carries on (records
/// still under a 16-byte key are the ones left).
fn migrate_2_to_3(backend: &dyn Backend) -> Result<(), StoreError> {
    loop {
        let old: Vec<KeyValue> =
            backend.scan(Tree::Inbox, &[])?.into_iter().filter(|(k, _)| k.len() == 16).take(MIGRATION_BATCH).collect();
        if old.is_empty() {
            break;
        }
        let mut ops = Vec::new();
        for (k, v) in old {
            let Ok(id) = <[u8; 16]>::try_from(k.as_slice()) else { continue };
            let rec: InboxRecord = decode(Tree::Inbox, &v)?;
            let key = pair_key(PacketId::from_bytes(id), &rec.sender);
            if let Some(evidence) = backend.get(Tree::Evidence, &k)? {
                ops.push(Op::Put(Tree::Evidence, key.clone(), evidence));
                ops.push(Op::Delete(Tree::Evidence, k.clone()));
            }
            ops.push(put(Tree::Inbox, key, &rec));
            ops.push(Op::Delete(Tree::Inbox, k));
        }
        backend.apply(&ops)?;
        backend.flush()?;
    }
    Ok(())
}

/// Builds [`Tree::Pending`] and [`Tree::Outcomes`] from the outbox (a store of format 6 or
/// older lacks one or both): every entry is listed in one. Run before the format is marked,
/// from scratch each time: a store whose migration stopped before the mark (a crash, an error)
/// may have been used by an older build since, which changes entries without touching the
/// indexes.
fn index_outbox(backend: &dyn Backend) -> Result<(), StoreError> {
    for tree in [Tree::Pending, Tree::Outcomes] {
        let stale: Vec<Op> = backend.scan(tree, &[])?.into_iter().map(|(k, _)| Op::Delete(tree, k)).collect();
        backend.apply(&stale)?;
    }
    let mut ops = Vec::new();
    for (k, v) in backend.scan(Tree::Outbox, &[])? {
        let e: Entry = match decode(Tree::Outbox, &v) {
            Ok(e) => e,
            Err(error) => {
                // The store opens; the entry stays on disk, and the log says so.
                tracing::error!(%error, key = ?k, "an outbox entry cannot be decoded: left out of the indexes");
                continue;
            }
        };
        match e.retention_from() {
            Some(from) => ops.push(Op::Put(Tree::Outcomes, outcome_key(&e.recipient, from, e.packet_id), Vec::new())),
            None => ops.push(Op::Put(Tree::Pending, pending_key(&e), Vec::new())),
        }
        if ops.len() >= MIGRATION_BATCH * 16 {
            backend.apply(&std::mem::take(&mut ops))?;
        }
    }
    backend.apply(&ops)?;
    backend.flush()
}

/// Records moved per flushed batch when a format-2 store is migrated.
const MIGRATION_BATCH: usize = 256;
