//! Compaction of segment files that are partly live.
//!
//! A segment is deleted only once nothing in it is referenced ([`super::Store::reclaim`]). Its
//! records mostly die together (the three streams keep apart what lives long and what does
//! not), but not always: partners with different retention periods share the received stream,
//! and one record kept for a year keeps its 64 MiB file. So when a stream's files take more
//! than [`AMPLIFICATION`] times what is live in them (plus one segment, so that a small store
//! is left alone), the emptiest segments are compacted first: their live records are copied to
//! the newest segment (appended and synced like any bulk record), then each owner's reference
//! is moved to the copy with [`Op::Relocate`], which the writer applies only if the owner still
//! holds the reference the compaction read (a record deleted or replaced meanwhile stays so).
//! The old segment is then dead and reclaimed. A crash before the move leaves an unreferenced
//! copy (reclaimed with its segment); after it, a dead segment (reclaimed at the next look).
//!
//! What this file must never do: move a reference that changed since it was read, or count a
//! segment dead that a reference still points into (that is the reclaim's rule, unchanged).

use std::sync::atomic::Ordering;

use super::segments::{Live, Record, Stream};
use super::space::{Class, Headroom};
use super::{Op, Store, StoreError};

/// The most a stream's segment files may take, relative to what is live in them, before
/// compaction moves records out of the emptiest: (numerator, denominator).
pub const AMPLIFICATION: (u64, u64) = (6, 5);

/// Values moved per append and commit.
const MOVE_BYTES: u64 = 8 * 1024 * 1024;

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Segments whose live records were moved out.
    pub segments: usize,
    /// Bytes of records moved.
    pub moved: u64,
    /// Segment files deleted afterwards (these and any other dead ones).
    pub reclaimed: usize,
}

impl Store {
    /// Compacts each stream whose segment files take more than [`AMPLIFICATION`] times what is
    /// live in them, plus one segment: the emptiest segments first, until they do not (or only
    /// nearly full segments are left). A segment's liveness is read once (its records' owners,
    /// a lookup each) and kept until a batch removes a reference into it. A slow read: run it
    /// off the async workers ([`crate::node::Node::purge_expired`] runs it after the purges).
    pub fn compact_blocking(&self) -> Result<Compacted, StoreError> {
        let mut done = Compacted::default();
        let Some(streams) = &self.segments else { return Ok(done) };
        for stream in Stream::ALL {
            let segments = streams.get(stream);
            let mut stats = Vec::new();
            for id in segments.settled()? {
                let cached = self.shared.liveness.lock().map_err(|_| StoreError::Closed)?.get(&(stream, id)).copied();
                let (bytes, live) = match cached {
                    Some(s) => s,
                    None => match segments.live(id, &*self.backend) {
                        Ok(Some((bytes, live))) => {
                            let s = (bytes, live.iter().map(Live::bytes).sum());
                            self.shared.liveness.lock().map_err(|_| StoreError::Closed)?.insert((stream, id), s);
                            s
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(segment = id, error = %e, "a segment file could not be read through; not compacted");
                            continue;
                        }
                    },
                };
                stats.push((id, bytes, live));
            }
            let total = segments.bytes();
            let known: u64 = stats.iter().map(|(_, b, _)| b).sum();
            // The newest segment and those not judged are taken as live.
            let live = stats.iter().map(|(_, _, l)| l).sum::<u64>() + total.saturating_sub(known);
            let allowed = live / AMPLIFICATION.1 * AMPLIFICATION.0 + segments.max();
            let mut excess = total.saturating_sub(allowed);
            // Emptiest first.
            stats.sort_by_key(|(id, bytes, live)| (live * 1000 / (*bytes).max(1), *id));
            for (id, bytes, live) in stats {
                // Moving a segment that is nine tenths live frees little for what it writes.
                if excess == 0 || live * 10 >= bytes * 9 {
                    break;
                }
                let moved = self.move_live(stream, id)?;
                done.segments += 1;
                done.moved += moved;
                excess = excess.saturating_sub(bytes.saturating_sub(moved));
            }
        }
        if done.segments > 0 {
            done.reclaimed = self.reclaim_blocking()?;
            tracing::info!(
                segments = done.segments,
                moved = done.moved,
                reclaimed = done.reclaimed,
                "segment files compacted"
            );
        }
        Ok(done)
    }

    /// Copies segment `id`'s live records to the newest segment and moves their references,
    /// [`MOVE_BYTES`] at a time. Returns the bytes moved.
    fn move_live(&self, stream: Stream, id: u64) -> Result<u64, StoreError> {
        let Some(streams) = &self.segments else { return Ok(0) };
        let segments = streams.get(stream);
        let Some((_, live)) = segments.live(id, &*self.backend)? else { return Ok(0) };
        let mut moved = 0;
        let mut group: Vec<&Live> = Vec::new();
        let mut group_bytes = 0;
        for (i, l) in live.iter().enumerate() {
            group.push(l);
            group_bytes += l.bytes();
            if group_bytes < MOVE_BYTES && i + 1 < live.len() {
                continue;
            }
            let values = group.iter().map(|l| segments.read(&l.r)).collect::<Result<Vec<_>, _>>()?;
            // The copies need the space before the old segment gives it back: a bulk write.
            let headroom = Headroom { bytes: self.shared.headroom.load(Ordering::Relaxed) };
            if let Some(free) = self.backend.free_bytes() {
                let kept = headroom.kept_for(Class::Bulk);
                if free.saturating_sub(group_bytes) < kept {
                    return Err(StoreError::Full { class: Class::Bulk, free, kept });
                }
            }
            let records: Vec<Record<'_>> =
                group.iter().zip(&values).map(|(l, v)| Record { tree: l.tree, key: &l.key, value: v }).collect();
            let shared = self.shared.clone();
            let give_way = move || shared.give_way();
            let written = segments.append_paced(&records, Some(&give_way))?;
            let ops = group
                .iter()
                .zip(written.refs())
                .map(|(l, to)| Op::Relocate {
                    tree: l.tree,
                    key: l.key.clone(),
                    from: l.stored.clone(),
                    to: to.encode(),
                })
                .collect();
            self.enqueue_as(Class::Bulk, ops).durable_blocking()?;
            drop(written);
            moved += group_bytes;
            group.clear();
            group_bytes = 0;
        }
        Ok(moved)
    }
}
