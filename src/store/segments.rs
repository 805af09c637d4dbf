//! Large values out of sled: append-only segment files.
//!
//! sled keeps a value inside its tree's leaf page, and rewrites the page, value and all, each
//! time a neighbouring key changes; a 4 MiB sealed copy is written many times over (608 MiB sent
//! left a 1.89 GB store), and every flush of the shared log pays for the megabytes queued in it,
//! so a FLASH alert's commit waited behind them (submit acknowledgement p99 76 ms while bulk was
//! submitted). So a large value (a sealed copy, a signed packet, a received packet's evidence, a
//! large receipt) is written here first, synced with `fdatasync`, and sled keeps only a 28-byte
//! reference to it ([`BlobRef`]), committed afterwards like any small record. A crash between the
//! two leaves an unreferenced record, never a reference to nothing.
//!
//! Format: files `NNNNNNNNNNNNNNNN.seg` (16 hex digits, ids rising) in one directory per
//! [`Stream`], each a header `LSEG0002` then records `[len: u32 BE][crc32: u32 BE][len bytes]`,
//! the bytes being the record's owner (`[tree: u8][key length: u16 BE][key]`) then the value,
//! the checksum covering both. The newest segment is appended to until it passes
//! [`SEGMENT_BYTES`]; older ones are never written again. At start the newest is read through: a
//! record cut short or failing its checksum (a torn write) ends it, and the file is cut there.
//!
//! Reclaiming: a record is live while its owner's key holds a reference to it. Only the newest
//! segment is appended to, so a reference into an older segment whose records are all committed
//! can disappear but never appear: such a segment found with no live record is dead for good and
//! deleted ([`Segments::reclaim`]), on any thread, without holding commits off. The writer notes
//! the segments whose references a batch overwrote or deleted, so that only those are looked at
//! again. Segments of the first format (`LSEG0001`, store format 4: values without owners) are
//! read as before and looked at by a scan of the trees.
//!
//! What this file must never do: hand out a reference before the record is synced, or delete a
//! segment a committed reference points into.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Backend, Op, StoreError, Tree};

/// A segment grows to about this size, then a new one is started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Bulk records are written and synced in pieces of this size ([`Segments::append_paced`]).
pub const PACE_CHUNK: usize = 1024 * 1024;

/// Values at least this large go to segments (when committed with [`super::Store::commit_as`]).
pub const BLOB_MIN: usize = 16 * 1024;

/// The header of segments written by this build: records carry their owner.
const FILE_MAGIC: &[u8; 8] = b"LSEG0002";
/// The header of the first format's segments (store format 4): records are bare values.
const FILE_MAGIC_1: &[u8; 8] = b"LSEG0001";
const RECORD_HEADER: u64 = 8;
/// What a stored reference starts with: no sealed copy, signed packet or receipt does (they are
/// COSE, starting with a CBOR tag; this starts with the integer 0). The fourth byte names the
/// stream ([`Stream::byte`]); `R` is a reference of store format 4, whose stream follows from
/// its tree ([`Stream::legacy`]).
const REF_MAGIC: [u8; 3] = [0x00, b'L', b'B'];
const REF_LEN: usize = 4 + 8 + 8 + 4 + 4;

/// A set of segment files, kept apart by how long what they hold lives, so that a segment's
/// records tend to die together and the file goes whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Sealed copies waiting for their receipt: gone once delivered.
    Sealed,
    /// What this node sent and keeps as evidence: signed packets, receipts received.
    Sent,
    /// What this node received: packets' evidence, receipts issued; gone with retention.
    Received,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 3] = [Stream::Sealed, Stream::Sent, Stream::Received];

    /// Where `tree`'s large values go.
    pub fn of(tree: Tree) -> Self {
        match tree {
            Tree::Sealed => Self::Sealed,
            Tree::Evidence | Tree::Issued => Self::Received,
            _ => Self::Sent,
        }
    }

    /// Where a reference of store format 4 in `tree` points (sealed copies were kept with what
    /// was sent).
    fn legacy(tree: Tree) -> Self {
        match tree {
            Tree::Evidence | Tree::Issued => Self::Received,
            _ => Self::Sent,
        }
    }

    /// Its directory under `segments/`.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Sealed => "sealed",
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Sealed => b'1',
            Self::Sent => b'2',
            Self::Received => b'3',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.byte() == b)
    }
}

/// Where a value lives in the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// The set of segments.
    pub stream: Stream,
    /// The segment's id.
    pub segment: u64,
    /// The record's offset in it (its header).
    pub offset: u64,
    /// The record's length (owner and value).
    pub len: u32,
    /// CRC-32 of the record's bytes.
    pub crc: u32,
}

impl BlobRef {
    /// The 28 bytes stored in the tree in place of the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REF_LEN);
        v.extend_from_slice(&REF_MAGIC);
        v.push(self.stream.byte());
        v.extend_from_slice(&self.segment.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }

    /// The reference a value stored in `tree` is, if it is one.
    pub fn decode(tree: Tree, stored: &[u8]) -> Option<Self> {
        if !holds_large(tree) || stored.len() != REF_LEN || stored[..3] != REF_MAGIC {
            return None;
        }
        let stream = match stored[3] {
            b'R' => Stream::legacy(tree),
            b => Stream::from_byte(b)?,
        };
        let u64_at = |i: usize| u64::from_be_bytes(stored[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_be_bytes(stored[i..i + 4].try_into().unwrap_or_default());
        Some(Self { stream, segment: u64_at(4), offset: u64_at(12), len: u32_at(20), crc: u32_at(24) })
    }
}

/// A value to append, with its owner: the tree and key whose reference will point to it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The owner's tree.
    pub tree: Tree,
    /// The owner's key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// The segment files of one [`Stream`].
pub struct Segments {
    dir: PathBuf,
    stream: Stream,
    /// A segment grows to about this size ([`SEGMENT_BYTES`]; tests use less).
    max: u64,
    active: Mutex<Active>,
    /// The newest segment's id, readable without waiting for an append in progress. Ids only
    /// rise, and a segment gets its id under the `active` lock.
    active_id: AtomicU64,
    /// Records written and not yet committed or abandoned, per segment: such a segment is not
    /// reclaimed even if no reference points into it yet.
    outstanding: Arc<Mutex<BTreeMap<u64, usize>>>,
    /// Open files for reading, by segment id, with their format (1 or 2).
    readers: Mutex<BTreeMap<u64, (Arc<File>, u8)>>,
}

struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
}

/// Records written (and synced) whose references are being committed: while it lives, their
/// segments are not reclaimed. Drop it once the commit is answered, whatever the answer.
#[must_use = "hold it until the commit that references the records is answered"]
pub struct Written {
    refs: Vec<BlobRef>,
    outstanding: Arc<Mutex<BTreeMap<u64, usize>>>,
}

impl Written {
    /// The references, in the order the values were given.
    pub fn refs(&self) -> &[BlobRef] {
        &self.refs
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        let mut o = self.outstanding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in &self.refs {
            if let Some(n) = o.get_mut(&r.segment) {
                *n -= 1;
                if *n == 0 {
                    o.remove(&r.segment);
                }
            }
        }
    }
}

/// What keeps a reclaim running beside the writer from deleting what a failing batch puts back:
/// the writer holds `lock` from applying a batch until it is flushed, or undone and counted in
/// `failures`. A reclaim reads the count before it reads anything, and deletes under the lock
/// only if no batch failed since (nor is the store failing): every batch that overlapped its
/// reads then made its deletions durable.
pub struct Gate<'a> {
    /// Held by the writer around each batch.
    pub lock: &'a Mutex<()>,
    /// Batches that failed, ever.
    pub failures: &'a AtomicU64,
    /// Non-zero while the last batch failed.
    pub failing_since: &'a AtomicU64,
}

impl Gate<'_> {
    fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Runs `f` under the lock if no batch failed since `seen`; returns whether it ran.
    fn run_if_settled(
        &self,
        seen: Option<u64>,
        f: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<bool, StoreError> {
        let _held = self.lock.lock().map_err(|_| StoreError::Closed)?;
        if seen != Some(self.failures()) || self.failing_since.load(Ordering::SeqCst) != 0 {
            return Ok(false);
        }
        f()?;
        Ok(true)
    }
}

/// A record's owner: (the record's offset, the tree, the key).
type Owner = (u64, Tree, Vec<u8>);

/// A live record: where it is, its owner, and the reference as stored (what a move of it
/// expects to find).
pub(super) struct Live {
    pub(super) r: BlobRef,
    pub(super) tree: Tree,
    pub(super) key: Vec<u8>,
    pub(super) stored: Vec<u8>,
}

impl Live {
    /// The bytes it takes in its segment.
    pub(super) fn bytes(&self) -> u64 {
        RECORD_HEADER + u64::from(self.r.len)
    }
}

/// What a reclaim did: the segments deleted, and those it had to leave for now (the newest, or
/// with records still being committed) though they were asked about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Deleted.
    pub gone: Vec<u64>,
    /// To look at again later.
    pub later: Vec<u64>,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("segments: {what}: {e}"))
}

fn name(id: u64) -> String {
    format!("{id:016x}.seg")
}

impl Segments {
    /// Opens the segments of `stream` in `dir` (created if missing); the newest is checked to
    /// its end and a torn tail cut off.
    pub fn open(dir: &Path, stream: Stream) -> Result<Self, StoreError> {
        Self::open_sized(dir, stream, SEGMENT_BYTES)
    }

    /// [`Segments::open`] with segments of about `max` bytes.
    pub fn open_sized(dir: &Path, stream: Stream, max: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let ids = list(dir)?;
        let active = match ids.last() {
            Some(&id) => {
                let path = dir.join(name(id));
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open", e))?;
                let (len, version) = recover(&file).map_err(|e| io("read the newest segment", e))?;
                if version == 2 {
                    Active { id, file: Arc::new(file), len }
                } else {
                    // Records of this format go to a segment of this format.
                    create(dir, id + 1)?
                }
            }
            None => create(dir, 1)?,
        };
        Ok(Self {
            dir: dir.to_owned(),
            stream,
            max,
            active_id: AtomicU64::new(active.id),
            active: Mutex::new(active),
            outstanding: Arc::default(),
            readers: Mutex::default(),
        })
    }

    /// Appends `records` and syncs them to disk; their references are valid from the return on.
    /// A failed write (a full disk) cuts the segment back to where it was: nothing is left.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Written, StoreError> {
        self.append_paced(records, None)
    }

    /// [`Segments::append`], written and synced [`PACE_CHUNK`] at a time with `pace` called
    /// between chunks (bulk: it waits while FLASH commits are in the store's queue). A small
    /// fsync issued while megabytes are being synced waits for them in the disk's queue (here a
    /// 200-byte commit went from p99 0.3 ms to 8.9 ms while 4 MiB records were synced); in
    /// chunks, it waits for one chunk at most.
    pub fn append_paced(&self, records: &[Record<'_>], pace: Option<&dyn Fn()>) -> Result<Written, StoreError> {
        // Each record counts as outstanding from before its first byte is written: a reclaim
        // that sees its segment as older than the newest (a rotation within this append) must
        // not take the segment for dead. Dropped on an error, the guard counts them off again.
        let mut written = Written { refs: Vec::with_capacity(records.len()), outstanding: self.outstanding.clone() };
        let mut to_sync: Vec<Arc<File>> = Vec::new();
        {
            let mut a = self.active.lock().map_err(|_| StoreError::Closed)?;
            let start = (a.id, a.len);
            let result = (|| {
                for r in records {
                    let klen = u16::try_from(r.key.len())
                        .map_err(|_| StoreError::Backend("segments: key over 64 KiB".into()))?;
                    let mut owner = Vec::with_capacity(3 + r.key.len());
                    owner.push(r.tree.index());
                    owner.extend_from_slice(&klen.to_be_bytes());
                    owner.extend_from_slice(r.key);
                    let total = owner.len() + r.value.len();
                    let len =
                        u32::try_from(total).map_err(|_| StoreError::Backend("segments: value over 4 GiB".into()))?;
                    if a.len > FILE_MAGIC.len() as u64 && a.len + RECORD_HEADER + total as u64 > self.max {
                        to_sync.push(a.file.clone());
                        *a = create(&self.dir, a.id + 1)?;
                        self.active_id.store(a.id, Ordering::SeqCst);
                    }
                    let mut hasher = crc32fast::Hasher::new();
                    hasher.update(&owner);
                    hasher.update(r.value);
                    let crc = hasher.finalize();
                    *self.outstanding.lock().map_err(|_| StoreError::Closed)?.entry(a.id).or_default() += 1;
                    written.refs.push(BlobRef { stream: self.stream, segment: a.id, offset: a.len, len, crc });
                    let mut head = Vec::with_capacity(RECORD_HEADER as usize + owner.len());
                    head.extend_from_slice(&len.to_be_bytes());
                    head.extend_from_slice(&crc.to_be_bytes());
                    head.extend_from_slice(&owner);
                    a.file.write_all_at(&head, a.len).map_err(full_or("append"))?;
                    let body = a.len + head.len() as u64;
                    match pace {
                        None => a.file.write_all_at(r.value, body).map_err(full_or("append"))?,
                        Some(pace) => {
                            let chunks = r.value.len().div_ceil(PACE_CHUNK);
                            for (i, chunk) in r.value.chunks(PACE_CHUNK).enumerate() {
                                a.file
                                    .write_all_at(chunk, body + (i * PACE_CHUNK) as u64)
                                    .map_err(full_or("append"))?;
                                if i + 1 < chunks {
                                    a.file.sync_data().map_err(full_or("sync"))?;
                                    pace();
                                }
                            }
                        }
                    }
                    a.len = body + r.value.len() as u64;
                }
                Ok(())
            })();
            if let Err(e) = result {
                // Back to where it was: the newest file is cut after its last whole record, to
                // where this append began if it began there (whole records it left in an older
                // segment are unreferenced, and go with that segment). `written` is dropped: its
                // records count as outstanding no more.
                let keep = if a.id == start.0 { start.1 } else { a.len };
                let _ = a.file.set_len(keep);
                a.len = keep;
                return Err(e);
            }
            to_sync.push(a.file.clone());
        }
        for f in to_sync {
            f.sync_data().map_err(full_or("sync"))?;
        }
        Ok(written)
    }

    /// The value `r` points to, checked against its length and checksum.
    pub fn read(&self, r: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let (file, version) = self.reader(r.segment)?;
        let corrupt = |reason: String| StoreError::Corrupt { tree: "segments", reason };
        let at = |e: std::io::Error| corrupt(format!("segment {:x} at {}: {e}", r.segment, r.offset));
        let mut header = [0u8; RECORD_HEADER as usize];
        file.read_exact_at(&mut header, r.offset).map_err(at)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len != r.len || crc != r.crc {
            return Err(corrupt(format!(
                "segment {:x} at {}: the record is not the one referenced",
                r.segment, r.offset
            )));
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut from = r.offset + RECORD_HEADER;
        let mut value_len = len as usize;
        if version == 2 {
            let mut owner = [0u8; 3];
            file.read_exact_at(&mut owner, from).map_err(at)?;
            let klen = u16::from_be_bytes([owner[1], owner[2]]) as usize;
            let mut key = vec![0; klen];
            file.read_exact_at(&mut key, from + 3).map_err(at)?;
            value_len = value_len
                .checked_sub(3 + klen)
                .ok_or_else(|| corrupt(format!("segment {:x} at {}: owner past the record", r.segment, r.offset)))?;
            hasher.update(&owner);
            hasher.update(&key);
            from += 3 + klen as u64;
        }
        let mut v = vec![0; value_len];
        file.read_exact_at(&mut v, from).map_err(at)?;
        hasher.update(&v);
        if hasher.finalize() != crc {
            return Err(corrupt(format!("segment {:x} at {}: checksum mismatch", r.segment, r.offset)));
        }
        Ok(v)
    }

    /// The owners of segment `id`'s records: (offset, tree, key); `None` for a segment of the
    /// first format, whose records do not say. A record that does not fit (its owner past its
    /// end, its end past the file's) is an error: what follows it cannot be known, so the
    /// segment is not judged dead. Zeros where a record would begin end it (a tail a power cut
    /// left).
    fn owners(&self, id: u64, upto: Option<u64>) -> Result<Option<Vec<Owner>>, StoreError> {
        let (file, version) = self.reader(id)?;
        if version != 2 {
            return Ok(None);
        }
        let on_disk = file.metadata().map_err(|e| io("read a segment's length", e))?.len();
        let total = upto.map_or(on_disk, |u| u.min(on_disk));
        let mut owners = Vec::new();
        let mut at = FILE_MAGIC.len() as u64;
        let mut head = [0u8; RECORD_HEADER as usize + 3];
        while at + head.len() as u64 <= total {
            file.read_exact_at(&mut head, at).map_err(|e| io("read a record's owner", e))?;
            let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
            let klen = u16::from_be_bytes([head[9], head[10]]) as usize;
            if len == 0 {
                break;
            }
            if len < 3 + klen as u64 || at + RECORD_HEADER + len > total {
                return Err(StoreError::Corrupt {
                    tree: "segments",
                    reason: format!("segment {id:x} at {at}: a record that does not fit; the segment is kept"),
                });
            }
            let mut key = vec![0; klen];
            file.read_exact_at(&mut key, at + head.len() as u64).map_err(|e| io("read a record's owner", e))?;
            if let Some(tree) = Tree::from_index(head[8]) {
                owners.push((at, tree, key));
            }
            at += RECORD_HEADER + len;
        }
        Ok(Some(owners))
    }

    /// Deletes the segments among `only` (every one if `None`) that no stored reference points
    /// into; the newest is cut back to its header instead, and those with records not yet
    /// committed are left for later. Safe while commits go on (see the module doc) given the
    /// writer's `gate` (`None`: nothing writes meanwhile, as at open). A segment whose records
    /// cannot be read is kept, and said so in the log.
    pub fn reclaim(
        &self,
        backend: &dyn Backend,
        only: Option<&BTreeSet<u64>>,
        gate: Option<&Gate<'_>>,
    ) -> Result<Reclaimed, StoreError> {
        // Before any read: a batch that fails from here on may put back a reference this reclaim
        // did not see.
        let seen = gate.map(Gate::failures);
        // Then the newest: a segment created from here on (by an append rotating) has a higher
        // id and is left alone, though no reference and no outstanding record shows it yet.
        let active = self.active_id.load(Ordering::SeqCst);
        let outstanding: BTreeSet<u64> =
            self.outstanding.lock().map_err(|_| StoreError::Closed)?.keys().copied().collect();
        let ids = list(&self.dir)?;
        let mut done = Reclaimed::default();
        let mut legacy: Option<BTreeSet<u64>> = None;
        for id in ids.into_iter().filter(|id| only.is_none_or(|o| o.contains(id))) {
            if id == active {
                if !self.cut_newest_if_dead(id, backend, &mut legacy, gate, seen)? {
                    done.later.push(id);
                }
                continue;
            }
            if id > active || outstanding.contains(&id) {
                done.later.push(id);
                continue;
            }
            match self.referenced(id, backend, &mut legacy, None) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(segment = id, error = %e, "a segment file could not be read through; kept");
                    continue;
                }
            }
            let delete = || {
                if let Ok(mut r) = self.readers.lock() {
                    r.remove(&id);
                }
                match std::fs::remove_file(self.dir.join(name(id))) {
                    // Another reclaim took it first.
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("delete a segment", e)),
                    _ => Ok(()),
                }
            };
            match gate {
                Some(g) if !g.run_if_settled(seen, delete)? => done.later.push(id),
                Some(_) => done.gone.push(id),
                None => {
                    delete()?;
                    done.gone.push(id);
                }
            }
        }
        if !done.gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(done)
    }

    /// Cuts the newest segment `id` back to its header if none of its records is referenced or
    /// being committed. Its records are read without holding appends off; the cut is made only
    /// if nothing was appended meanwhile. Returns whether it is settled: cut, empty, or
    /// referenced (a reference to it only goes away with a later batch, which makes it a
    /// candidate again); `false` if it must be looked at later.
    fn cut_newest_if_dead(
        &self,
        id: u64,
        backend: &dyn Backend,
        legacy: &mut Option<BTreeSet<u64>>,
        gate: Option<&Gate<'_>>,
        seen: Option<u64>,
    ) -> Result<bool, StoreError> {
        let header = FILE_MAGIC.len() as u64;
        let len = {
            let a = self.active.lock().map_err(|_| StoreError::Closed)?;
            if a.id != id {
                // It rotated meanwhile: an older segment now, for the next reclaim.
                return Ok(false);
            }
            a.len
        };
        if len <= header {
            return Ok(true);
        }
        if self.outstanding.lock().map_err(|_| StoreError::Closed)?.contains_key(&id) {
            return Ok(false);
        }
        match self.referenced(id, backend, legacy, Some(len)) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(segment = id, error = %e, "the newest segment file could not be read through; kept");
                return Ok(true);
            }
        }
        let mut a = self.active.lock().map_err(|_| StoreError::Closed)?;
        if a.id != id || a.len != len || self.outstanding.lock().map_err(|_| StoreError::Closed)?.contains_key(&id) {
            return Ok(false);
        }
        let cut =
            || a.file.set_len(header).and_then(|()| a.file.sync_all()).map_err(|e| io("cut the newest segment", e));
        let done = match gate {
            Some(g) => g.run_if_settled(seen, cut)?,
            None => cut().map(|()| true)?,
        };
        if done {
            tracing::debug!(segment = id, freed = len - header, "the newest segment held nothing referenced: cut back");
            a.len = header;
        }
        Ok(done)
    }

    /// Whether any stored reference points into segment `id` (its records up to `upto` bytes,
    /// all if `None`).
    fn referenced(
        &self,
        id: u64,
        backend: &dyn Backend,
        legacy: &mut Option<BTreeSet<u64>>,
        upto: Option<u64>,
    ) -> Result<bool, StoreError> {
        match self.owners(id, upto)? {
            Some(owners) => {
                for (offset, tree, key) in owners {
                    let Some(v) = backend.get(tree, &key)? else { continue };
                    if BlobRef::decode(tree, &v)
                        .is_some_and(|r| r.stream == self.stream && r.segment == id && r.offset == offset)
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            None => {
                if legacy.is_none() {
                    *legacy = Some(live_segments(backend, self.stream)?);
                }
                Ok(legacy.as_ref().is_some_and(|l| l.contains(&id)))
            }
        }
    }

    /// The segments older than the newest with no record being committed: those a compaction
    /// may move records out of ([`super::Store::compact_blocking`]).
    pub(super) fn settled(&self) -> Result<Vec<u64>, StoreError> {
        let active = self.active_id.load(Ordering::SeqCst);
        let outstanding: BTreeSet<u64> =
            self.outstanding.lock().map_err(|_| StoreError::Closed)?.keys().copied().collect();
        Ok(list(&self.dir)?.into_iter().filter(|id| *id < active && !outstanding.contains(id)).collect())
    }

    /// The bytes segment `id` takes, and its live records: those a stored reference points to
    /// (`None` for a segment of the first format, whose records do not name their owner).
    pub(super) fn live(&self, id: u64, backend: &dyn Backend) -> Result<Option<(u64, Vec<Live>)>, StoreError> {
        let Some(owners) = self.owners(id, None)? else { return Ok(None) };
        let bytes = std::fs::metadata(self.dir.join(name(id))).map_err(|e| io("read a segment's length", e))?.len();
        let mut live = Vec::new();
        for (offset, tree, key) in owners {
            let Some(stored) = backend.get(tree, &key)? else { continue };
            let here = BlobRef::decode(tree, &stored)
                .filter(|r| r.stream == self.stream && r.segment == id && r.offset == offset);
            if let Some(r) = here {
                live.push(Live { r, tree, key, stored });
            }
        }
        Ok(Some((bytes, live)))
    }

    /// The size a segment grows to.
    pub(super) fn max(&self) -> u64 {
        self.max
    }

    /// Bytes the segment files take.
    pub fn bytes(&self) -> u64 {
        list(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| std::fs::metadata(self.dir.join(name(*id))).ok())
            .map(|m| m.len())
            .sum()
    }

    fn reader(&self, id: u64) -> Result<(Arc<File>, u8), StoreError> {
        let mut readers = self.readers.lock().map_err(|_| StoreError::Closed)?;
        if let Some(f) = readers.get(&id) {
            return Ok(f.clone());
        }
        let missing = |e: std::io::Error| StoreError::Corrupt {
            tree: "segments",
            reason: format!("segment {id:x} referenced but missing: {e}"),
        };
        let f = Arc::new(File::open(self.dir.join(name(id))).map_err(missing)?);
        let mut magic = [0u8; 8];
        f.read_exact_at(&mut magic, 0).map_err(missing)?;
        let version = match &magic {
            m if m == FILE_MAGIC => 2,
            m if m == FILE_MAGIC_1 => 1,
            _ => {
                return Err(StoreError::Corrupt {
                    tree: "segments",
                    reason: format!("segment {id:x}: not a segment of a format this build reads"),
                })
            }
        };
        // A handful of segments are read at once; keep the handles bounded.
        if readers.len() >= 64 {
            readers.clear();
        }
        readers.insert(id, (f.clone(), version));
        Ok((f, version))
    }
}

/// A write error: a full disk is [`StoreError::Full`] (the caller's class is not known here;
/// bulk, the conservative reading), anything else a backend error.
fn full_or(what: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| {
        if matches!(e.raw_os_error(), Some(28 | 122)) {
            // ENOSPC, EDQUOT
            StoreError::Full { class: super::Class::Bulk, free: 0, kept: 0 }
        } else {
            io(what, e)
        }
    }
}

/// The ids of the segment files in `dir`, in order.
fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| io("list", e))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            u64::from_str_radix(n.strip_suffix(".seg")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A new, empty segment `id` (its header synced, and the directory entry).
fn create(dir: &Path, id: u64) -> Result<Active, StoreError> {
    let path = dir.join(name(id));
    let mut file =
        OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(full_or("create a segment"))?;
    let init = file.write_all(FILE_MAGIC).and_then(|()| file.sync_all()).map_err(full_or("create a segment"));
    if let Err(e) = init.and_then(|()| sync_dir(dir)) {
        // Not left behind half made: the next attempt (once space is back) creates it again.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Active { id, file: Arc::new(file), len: FILE_MAGIC.len() as u64 })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the directory", e))
}

/// Reads a segment through and cuts it after its last whole, valid record (a torn tail: a write
/// that a crash cut short, never referenced). Returns its length and its format (1 or 2).
fn recover(file: &File) -> std::io::Result<(u64, u8)> {
    let total = file.metadata()?.len();
    let mut f = file;
    f.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    let read = total >= 8 && f.read_exact(&mut magic).is_ok();
    let version = match &magic {
        m if read && m == FILE_MAGIC => 2,
        m if read && m == FILE_MAGIC_1 => 1,
        _ => 0,
    };
    if version == 0 {
        if total > FILE_MAGIC.len() as u64 {
            // The header is synced before any record: a file with more than a header and not
            // this one is another format or damaged, and nothing of it is destroyed here.
            return Err(std::io::Error::other("not a segment of this format (its header differs); refusing to open"));
        }
        // Created and cut before its header was synced: start it again.
        file.set_len(0)?;
        file.write_all_at(FILE_MAGIC, 0)?;
        file.sync_all()?;
        return Ok((FILE_MAGIC.len() as u64, 2));
    }
    let mut at = FILE_MAGIC.len() as u64;
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; RECORD_HEADER as usize];
        if at + RECORD_HEADER > total || file.read_exact_at(&mut h, at).is_err() {
            break;
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        // No record is empty (values are at least BLOB_MIN bytes; zeros are what a power cut
        // leaves in a file's tail), and none reaches past the end.
        if len == 0 || at + RECORD_HEADER + len > total {
            break;
        }
        buf.resize(len as usize, 0);
        if file.read_exact_at(&mut buf, at + RECORD_HEADER).is_err() || crc32fast::hash(&buf) != crc {
            break;
        }
        at += RECORD_HEADER + len;
    }
    if at < total {
        tracing::warn!(
            cut = total - at,
            "segment: a torn tail cut off (a write a crash interrupted; never referenced)"
        );
        file.set_len(at)?;
        file.sync_all()?;
    }
    Ok((at, version))
}

/// The segment files of one store, one set per [`Stream`].
pub struct Streams {
    sets: [Segments; 3],
}

impl Streams {
    /// Opens `dir/sealed`, `dir/sent` and `dir/received`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`Streams::open`] with segments of about `max` bytes.
    pub fn open_sized(dir: &Path, max: u64) -> Result<Self, StoreError> {
        let open = |s: Stream| Segments::open_sized(&dir.join(s.dir()), s, max);
        Ok(Self { sets: [open(Stream::Sealed)?, open(Stream::Sent)?, open(Stream::Received)?] })
    }

    /// The segments of `stream`.
    pub(super) fn get(&self, stream: Stream) -> &Segments {
        &self.sets[stream as usize]
    }

    /// The value a reference points to.
    pub(super) fn read(&self, r: &BlobRef) -> Result<Vec<u8>, StoreError> {
        self.get(r.stream).read(r)
    }

    pub(super) fn bytes(&self) -> u64 {
        self.sets.iter().map(Segments::bytes).sum()
    }

    /// Deletes what no stored reference points into (see [`Segments::reclaim`]): among `only`
    /// (stream, segment), or everywhere if `None`.
    pub(super) fn reclaim(
        &self,
        backend: &dyn Backend,
        only: Option<&BTreeSet<(Stream, u64)>>,
        gate: Option<&Gate<'_>>,
    ) -> Result<Vec<(Stream, Reclaimed)>, StoreError> {
        let mut done = Vec::new();
        for set in &self.sets {
            let mine: Option<BTreeSet<u64>> =
                only.map(|o| o.iter().filter(|(s, _)| *s == set.stream).map(|(_, id)| *id).collect());
            if mine.as_ref().is_some_and(BTreeSet::is_empty) {
                continue;
            }
            done.push((set.stream, set.reclaim(backend, mine.as_ref(), gate)?));
        }
        Ok(done)
    }
}

/// The trees whose values may be large (sealed copies, signed packets sent, received packets,
/// signed receipts), and may therefore live in the segment files.
pub(super) fn holds_large(tree: Tree) -> bool {
    matches!(tree, Tree::Sealed | Tree::Sent | Tree::Evidence | Tree::Receipts | Tree::Issued)
}

/// A value taken out of a commit for the segments: (index of its op, its tree, its key, the
/// value).
pub(super) type Large = (usize, Tree, Vec<u8>, Vec<u8>);

/// Takes the values that go to segments out of `ops`.
pub(super) fn take_large(mut ops: Vec<Op>) -> (Vec<Op>, Vec<Large>) {
    let mut large = Vec::new();
    for (i, op) in ops.iter_mut().enumerate() {
        if let Op::Put(t, k, v) = op {
            if holds_large(*t) && v.len() >= BLOB_MIN {
                large.push((i, *t, k.clone(), std::mem::take(v)));
            }
        }
    }
    (ops, large)
}

/// The segments of `stream` the stored references point into, found by reading every tree that
/// may hold one (for segments of the first format only, whose records do not name their owner).
fn live_segments(backend: &dyn Backend, stream: Stream) -> Result<BTreeSet<u64>, StoreError> {
    let mut live = BTreeSet::new();
    for tree in Tree::ALL.into_iter().filter(|t| holds_large(*t)) {
        backend.visit(tree, &mut |_, v| {
            if let Some(r) = BlobRef::decode(tree, v).filter(|r| r.stream == stream) {
                live.insert(r.segment);
            }
        })?;
    }
    Ok(live)
}

#[cfg(test)]
mod tests;
