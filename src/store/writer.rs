//! The store's writer thread: group commit, the space check that admits each commit, putting
//! back what a failed batch overwrote, and noting the segments whose references a batch let go
//! (for [`super::Store::reclaim`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use super::segments::{BlobRef, Stream};
use super::space::{self, Class, Headroom, SpaceState};
use super::{audit, encoding, now_ms, Backend, Op, StoreError, Tree, AUDIT_HEAD};

/// What the writer thread is asked to do.
pub(super) enum Job {
    /// Apply and flush these writes (with whatever else is waiting).
    Commit(Commit),
}

/// The writer's state that handles read.
pub(super) struct Shared {
    /// Bytes of headroom ([`Headroom`]); may change while the node runs.
    pub(super) headroom: AtomicU64,
    /// [`SpaceState`] as of the last batch or probe.
    pub(super) space: AtomicU8,
    /// When the writer began the write it is in (ms since the epoch), 0 when idle.
    pub(super) busy_since: AtomicU64,
    /// When the backend began failing every write (ms since the epoch), 0 when the last worked.
    pub(super) failing_since: AtomicU64,
    /// A write in progress for this long is stuck ([`super::STUCK_AFTER_MS`]; tests shorten it).
    pub(super) stuck_after_ms: AtomicU64,
    /// Essential commits handed to the writer and not yet answered: bulk segment writes give
    /// way while there are any ([`super::Segments::append_paced`]).
    pub(super) essential_pending: AtomicUsize,
    /// Bytes of segment records being written or committed ([`super::Store::commit_as`]): counted as
    /// used by every space check until their commit is answered, so concurrent large commits
    /// cannot each take the same free space.
    pub(super) reserved: AtomicU64,
    /// Segments a committed batch removed a reference into: perhaps dead now, for
    /// [`super::Store::reclaim`] to look at.
    pub(super) candidates: Mutex<BTreeSet<(Stream, u64)>>,
    /// What compaction found of each segment (its bytes, and those of its live records), until
    /// a batch removes a reference into it ([`super::Store::compact_blocking`]).
    pub(super) liveness: Mutex<std::collections::BTreeMap<(Stream, u64), (u64, u64)>>,
    /// Bumped each time a batch removes a reference: a compaction keeps what it read of a
    /// segment only if no batch did meanwhile.
    pub(super) liveness_generation: AtomicU64,
    /// Held from applying a batch until it is flushed or undone ([`super::segments::Gate`]).
    pub(super) batch_lock: Mutex<()>,
    /// Batches that failed, ever ([`super::segments::Gate`]).
    pub(super) failures: AtomicU64,
}

/// Segment bytes counted as used while they are written and committed; given back on drop.
pub(super) struct Reservation<'a>(pub(super) &'a AtomicU64, pub(super) u64);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Answers a commit (and counts an essential one as no longer pending).
    pub(super) fn answer(&self, c: Commit, result: Result<(), StoreError>) {
        if c.class == Class::Essential {
            self.essential_pending.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = c.reply.send(result);
    }

    /// Waits (20 ms at most) while essential commits are pending: what a bulk segment write
    /// does between its chunks.
    pub(super) fn give_way(&self) {
        let t = std::time::Instant::now();
        while self.essential_pending.load(Ordering::Relaxed) > 0 && t.elapsed() < GIVE_WAY_AT_MOST {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// How long a bulk segment write waits, between two chunks, for FLASH commits to be answered.
pub(super) const GIVE_WAY_AT_MOST: std::time::Duration = std::time::Duration::from_millis(20);

/// How often an idle writer reads the free space again while the disk is low or full.
pub(super) const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One commit handed to the writer: its writes, its class, whom to answer.
pub(super) struct Commit {
    pub(super) ops: Vec<Op>,
    pub(super) class: Class,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// Group commit: block for one commit, take every other one already waiting, admit those the
/// free space allows (see [`space`]; the others are answered [`StoreError::Full`] at once), apply
/// them all, flush once, answer everyone. A failed batch is answered with the error and nothing
/// in it is acknowledged: what it overwrote is put back, so reads do not show it either; the
/// audit chain's head goes back to where it was, so the next entries reuse the sequence numbers
/// the failed batch could not write.
pub(super) fn writer_loop(
    backend: &dyn Backend,
    rx: &mpsc::Receiver<Job>,
    mut head: audit::Head,
    durable: &Mutex<audit::Head>,
    shared: &Shared,
) {
    loop {
        let first = match rx.recv_timeout(PROBE_EVERY) {
            Ok(Job::Commit(c)) => c,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Idle after a failed batch: does the disk take a flush again? (Otherwise a node
                // with nothing to write would look as if every write failed, and be restarted.)
                if shared.failing_since.load(Ordering::Relaxed) != 0 && backend.flush().is_ok() {
                    shared.failing_since.store(0, Ordering::Relaxed);
                }
                // Idle: if the disk was low, see whether space came back.
                if SpaceState::from_u8(shared.space.load(Ordering::Relaxed)) != SpaceState::Ok {
                    let headroom = Headroom { bytes: shared.headroom.load(Ordering::Relaxed) };
                    if let Some(free) = backend.free_bytes() {
                        set_space(shared, headroom.state(free), free, headroom);
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut waiting = vec![first];
        while waiting.len() < 4096 {
            match rx.try_recv() {
                Ok(Job::Commit(c)) => waiting.push(c),
                Err(_) => break,
            }
        }
        let batch = admit(backend, shared, waiting);
        if !batch.is_empty() {
            head = write_batch(backend, batch, head, durable, shared);
        }
    }
}

/// Applies one admitted batch, flushes once, answers everyone; returns the audit chain's head.
pub(super) fn write_batch(
    backend: &dyn Backend,
    mut batch: Vec<Commit>,
    mut head: audit::Head,
    durable: &Mutex<audit::Head>,
    shared: &Shared,
) -> audit::Head {
    let before = head;
    let now = now_ms();
    let mut ops = Vec::with_capacity(batch.iter().map(|c| c.ops.len()).sum::<usize>() + 1);
    // Keys written earlier in this batch: a move of one of them is dropped (the value changed
    // after the move read it). Kept only for a batch with moves (compaction is rare).
    let moves = batch.iter().any(|c| c.ops.iter().any(|o| matches!(o, Op::Relocate { .. })));
    let mut touched: std::collections::HashSet<(Tree, Vec<u8>)> = std::collections::HashSet::new();
    for c in &mut batch {
        for op in std::mem::take(&mut c.ops) {
            match op {
                Op::Audit(event) => {
                    let (k, v) = head.append(now, event);
                    ops.push(Op::Put(Tree::Audit, k, v));
                }
                Op::Relocate { tree, key, from, to } => {
                    let unchanged = !touched.contains(&(tree, key.clone()))
                        && backend.get(tree, &key).ok().flatten().is_some_and(|v| v == from);
                    if unchanged {
                        touched.insert((tree, key.clone()));
                        ops.push(Op::Put(tree, key, to));
                    }
                }
                other => {
                    if let (true, Op::Put(t, k, _) | Op::Delete(t, k)) = (moves, &other) {
                        touched.insert((*t, k.clone()));
                    }
                    ops.push(other);
                }
            }
        }
    }
    if head != before {
        ops.push(Op::Put(Tree::Meta, AUDIT_HEAD.to_vec(), encoding::to_cbor(&head)));
    }
    shared.busy_since.store(now.max(1), Ordering::Relaxed);
    let undo = undo_log(backend, &ops);
    // A reclaim deletes only between batches, and only if none failed while it read.
    let held = shared.batch_lock.lock();
    let result = undo.as_ref().map_err(Clone::clone).and_then(|undo| {
        let applied = backend.apply(&ops).and_then(|()| backend.flush());
        if applied.is_err() {
            // Put back what the batch overwrote: reads must not show what was never
            // acknowledged (sled keeps writes whose flush failed in memory), and flush that
            // at once if the disk lets us, so that the failed batch cannot become durable
            // with a later flush either.
            if backend.apply(undo).is_ok() {
                let _ = backend.flush();
            }
        }
        applied
    });
    if result.is_err() {
        shared.failures.fetch_add(1, Ordering::SeqCst);
    }
    drop(held);
    shared.busy_since.store(0, Ordering::Relaxed);
    match result {
        Ok(()) => {
            shared.failing_since.store(0, Ordering::Relaxed);
            if let Ok(mut d) = durable.lock() {
                *d = head;
            }
            // What the batch overwrote or deleted, as the undo log read it before: a reference
            // there let go of its segment.
            if let (Ok(undo), Ok(mut c), Ok(mut l)) = (&undo, shared.candidates.lock(), shared.liveness.lock()) {
                for op in undo {
                    if let Op::Put(tree, _, old) = op {
                        if let Some(r) = BlobRef::decode(*tree, old) {
                            c.insert((r.stream, r.segment));
                            l.remove(&(r.stream, r.segment));
                            shared.liveness_generation.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
        Err(_) => {
            let _ = shared.failing_since.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
            head = before;
        }
    }
    for c in batch {
        shared.answer(c, result.clone());
    }
    head
}

/// The commits of `waiting` that the free space allows, in order; the others are answered
/// [`StoreError::Full`] now and never reach the backend. Updates the space state.
pub(super) fn admit(backend: &dyn Backend, shared: &Shared, waiting: Vec<Commit>) -> Vec<Commit> {
    let headroom = Headroom { bytes: shared.headroom.load(Ordering::Relaxed) };
    // Segment records being written are about to take their space (those already written are
    // counted twice until their commit is answered: the safe side).
    let Some(free) = backend.free_bytes().map(|f| f.saturating_sub(shared.reserved.load(Ordering::SeqCst))) else {
        return waiting;
    };
    let mut used = 0u64;
    let mut admitted = Vec::with_capacity(waiting.len());
    for c in waiting {
        let need = space::estimate(&c.ops);
        let kept = headroom.kept_for(c.class);
        if free.saturating_sub(used.saturating_add(need)) < kept {
            let class = c.class;
            shared.answer(c, Err(StoreError::Full { class, free, kept }));
        } else {
            used += need;
            admitted.push(c);
        }
    }
    // The state is the free space's alone (a large packet refused with room left for smaller
    // ones does not make the disk "low", and the log does not flap with each refusal).
    set_space(shared, headroom.state(free.saturating_sub(used)), free, headroom);
    admitted
}

/// Records the disk's state; a change is logged (the administrator must act on a full disk, and
/// know when the node resumed).
pub(super) fn set_space(shared: &Shared, state: SpaceState, free: u64, headroom: Headroom) {
    let was = SpaceState::from_u8(shared.space.swap(state.to_u8(), Ordering::Relaxed));
    if was == state {
        return;
    }
    let (free_mib, headroom_mib) = (space::mib(free), space::mib(headroom.bytes));
    match state {
        SpaceState::Ok => tracing::info!(free_mib, headroom_mib, "disk space is back: every packet is taken again"),
        SpaceState::Low => tracing::warn!(
            free_mib,
            headroom_mib,
            "disk nearly full: ROUTINE and URGENT packets are refused (submits: 507; partners' copies: no receipt, \
             sent again later); FLASH alerts and receipts go on"
        ),
        SpaceState::Full => tracing::error!(
            free_mib,
            headroom_mib,
            "disk full: nothing is stored until space is freed; the node resumes by itself"
        ),
    }
}

/// The writes that put back what `ops` will overwrite, in reverse order (a key written twice
/// gets its value from before the batch).
pub(super) fn undo_log(backend: &dyn Backend, ops: &[Op]) -> Result<Vec<Op>, StoreError> {
    let mut undo = Vec::with_capacity(ops.len());
    for op in ops.iter().rev() {
        let (Op::Put(tree, key, _) | Op::Delete(tree, key)) = op else { continue };
        undo.push(match backend.get(*tree, key)? {
            Some(old) => Op::Put(*tree, key.clone(), old),
            None => Op::Delete(*tree, key.clone()),
        });
    }
    Ok(undo)
}
