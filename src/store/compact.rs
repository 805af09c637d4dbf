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

use super::segments::{Live, Record, Stream, PACE_CHUNK};
use super::space::{Class, Headroom};
use super::writer::Reservation;
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
    /// live in them, plus one segment: the emptiest segments first, until they do not, only
    /// segments four fifths live are left, `budget` bytes were moved, or `stop` says so. A
    /// segment's liveness is read once (its records' owners, a lookup each) and kept until a
    /// batch removes a reference into it. A slow read, and bulk writes: the node runs it on
    /// the blocking pool, a budget at a time (`Node::compact_loop`). A segment that cannot be
    /// read through is left as it is (logged), and the others are compacted.
    pub fn compact_blocking(&self, budget: u64, stop: &dyn Fn() -> bool) -> Result<Compacted, StoreError> {
        let mut done = Compacted::default();
        let Some(streams) = &self.segments else { return Ok(done) };
        'streams: for stream in Stream::ALL {
            let segments = streams.get(stream);
            let mut stats = Vec::new();
            for id in segments.settled()? {
                let cached = self.shared.liveness.lock().map_err(|_| StoreError::Closed)?.get(&(stream, id)).copied();
                let (bytes, live) = match cached {
                    Some(s) => s,
                    None => {
                        // A batch that removes a reference while this reads bumps the count:
                        // what was read is then not kept (it may count a record gone since).
                        let generation = self.shared.liveness_generation.load(Ordering::SeqCst);
                        match segments.live(id, &*self.backend) {
                            Ok(Some((bytes, live))) => {
                                let s = (bytes, live.iter().map(Live::bytes).sum());
                                let mut cache = self.shared.liveness.lock().map_err(|_| StoreError::Closed)?;
                                if self.shared.liveness_generation.load(Ordering::SeqCst) == generation {
                                    cache.insert((stream, id), s);
                                }
                                s
                            }
                            Ok(None) => continue,
                            Err(e) => {
                                tracing::warn!(segment = id, error = %e, "a segment file could not be read through; not compacted");
                                continue;
                            }
                        }
                    }
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
                // Moving a segment four fifths live frees little for what it writes.
                if excess == 0 || live * 5 >= bytes * 4 {
                    break;
                }
                if done.moved >= budget || stop() {
                    break 'streams;
                }
                let moved = self.move_live(stream, id, stop);
                // Whatever happened, the segment (and the copies' segments, if their commit
                // failed) is worth a reclaim's look.
                if let Ok(mut c) = self.shared.candidates.lock() {
                    c.insert((stream, id));
                    c.extend(moved.1.iter().map(|s| (stream, *s)));
                }
                match moved.0 {
                    Ok(bytes_moved) => {
                        done.segments += 1;
                        done.moved += bytes_moved;
                        excess = excess.saturating_sub(bytes.saturating_sub(bytes_moved));
                    }
                    Err(e @ StoreError::Full { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(segment = id, error = %e, "a segment could not be compacted; left as it is")
                    }
                }
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
    /// [`MOVE_BYTES`] at a time, each group appended a [`PACE_CHUNK`] at a time (the newest
    /// segment's lock is let go and FLASH commits go first between two). Returns the bytes
    /// moved, and the segments the copies went to (for a reclaim's look if their commit
    /// failed). A record that cannot be read is left where it is (logged).
    fn move_live(&self, stream: Stream, id: u64, stop: &dyn Fn() -> bool) -> (Result<u64, StoreError>, Vec<u64>) {
        let mut into = Vec::new();
        let result = (|| {
            let Some(streams) = &self.segments else { return Ok(0) };
            let segments = streams.get(stream);
            let Some((_, live)) = segments.live(id, &*self.backend)? else { return Ok(0) };
            let mut moved = 0;
            for group in runs(&live, MOVE_BYTES, Live::bytes) {
                if stop() {
                    break;
                }
                let group_bytes: u64 = group.iter().map(|l| l.bytes()).sum();
                // The copies take their space before the old segment gives it back: counted as
                // used, like any bulk commit's segment records, and checked before any read.
                let headroom = Headroom { bytes: self.shared.headroom.load(Ordering::Relaxed) };
                let reserved = self.shared.reserved.fetch_add(group_bytes, Ordering::SeqCst);
                let _reservation = Reservation(&self.shared.reserved, group_bytes);
                if let Some(free) = self.backend.free_bytes().map(|f| f.saturating_sub(reserved)) {
                    let kept = headroom.kept_for(Class::Bulk);
                    if free.saturating_sub(group_bytes) < kept {
                        return Err(StoreError::Full { class: Class::Bulk, free, kept });
                    }
                }
                let mut read = Vec::with_capacity(group.len());
                for l in group {
                    match segments.read(&l.r) {
                        Ok(v) => read.push((l, v)),
                        Err(e) => tracing::warn!(segment = id, error = %e, "a record could not be read; not moved"),
                    }
                }
                let mut ops = Vec::with_capacity(read.len());
                let mut written = Vec::new();
                for piece in runs(&read, PACE_CHUNK as u64, |(l, _)| l.bytes()) {
                    let records: Vec<Record<'_>> =
                        piece.iter().map(|(l, v)| Record { tree: l.tree, key: &l.key, value: v }).collect();
                    let w = segments.append(&records)?;
                    into.extend(w.refs().iter().map(|r| r.segment));
                    ops.extend(piece.iter().zip(w.refs()).map(|((l, _), to)| Op::Relocate {
                        tree: l.tree,
                        key: l.key.clone(),
                        from: l.stored.clone(),
                        to: to.encode(),
                    }));
                    written.push(w);
                    self.shared.give_way();
                }
                self.enqueue_as(Class::Bulk, ops).durable_blocking()?;
                drop(written);
                moved += read.iter().map(|(l, _)| l.bytes()).sum::<u64>();
            }
            Ok(moved)
        })();
        into.sort_unstable();
        into.dedup();
        (result, into)
    }
}

/// `items` in runs of about `bytes` by `size` (an item larger than that is a run of its own).
fn runs<T>(items: &[T], bytes: u64, size: impl Fn(&T) -> u64) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        if i > start && total + size(item) > bytes {
            out.push(&items[start..i]);
            (start, total) = (i, 0);
        }
        total += size(item);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}
