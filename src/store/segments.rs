//! Large values out of sled: append-only segment files.
//!
//! sled keeps a value inside its tree's leaf page, and rewrites the page, value and all, each
//! time a neighbouring key changes; a 4 MiB sealed copy is written many times over (608 MiB sent
//! left a 1.89 GB store), and every flush of the shared log pays for the megabytes queued in it,
//! so a FLASH alert's commit waited behind them (submit acknowledgement p99 76 ms while bulk was
//! submitted). So a large value (a sealed copy, a received packet's evidence, a large receipt) is
//! written here first, synced with `fdatasync`, and sled keeps only a 28-byte reference to it
//! ([`BlobRef`]), committed afterwards like any small record. A crash between the two leaves an
//! unreferenced record, never a reference to nothing.
//!
//! Format: files `NNNNNNNNNNNNNNNN.seg` (16 hex digits, ids rising) in one directory per set
//! (the store keeps what it sent and what it received apart), each a header `LSEG0001`
//! then records `[len: u32 BE][crc32: u32 BE][len bytes]`. The newest segment is appended to
//! until it passes [`SEGMENT_BYTES`]; older ones are never written again. At start the newest is
//! read through: a record cut short or failing its checksum (a torn write) ends it, and the file
//! is cut there. A segment is deleted once no reference in the store points into it
//! ([`super::Store::reclaim`], on the writer thread between batches); the newest never is, nor
//! one with a record written and not yet committed or abandoned ([`Written`]).
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

const FILE_MAGIC: &[u8; 8] = b"LSEG0001";
const RECORD_HEADER: u64 = 8;
/// What a stored reference starts with: no sealed copy, signed packet or receipt does (they are
/// COSE, starting with a CBOR tag; this starts with the integer 0).
const REF_MAGIC: [u8; 4] = [0x00, b'L', b'B', b'R'];
const REF_LEN: usize = 4 + 8 + 8 + 4 + 4;

/// Where a value lives in the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// The segment's id.
    pub segment: u64,
    /// The record's offset in it (its header).
    pub offset: u64,
    /// The value's length.
    pub len: u32,
    /// CRC-32 of the value.
    pub crc: u32,
}

impl BlobRef {
    /// The 28 bytes stored in the tree in place of the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REF_LEN);
        v.extend_from_slice(&REF_MAGIC);
        v.extend_from_slice(&self.segment.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }

    /// The reference a stored value is, if it is one.
    pub fn decode(stored: &[u8]) -> Option<Self> {
        if stored.len() != REF_LEN || stored[..4] != REF_MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(stored[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_be_bytes(stored[i..i + 4].try_into().unwrap_or_default());
        Some(Self { segment: u64_at(4), offset: u64_at(12), len: u32_at(20), crc: u32_at(24) })
    }
}

/// The segment files of one store.
pub struct Segments {
    dir: PathBuf,
    /// A segment grows to about this size ([`SEGMENT_BYTES`]; tests use less).
    max: u64,
    active: Mutex<Active>,
    /// The newest segment's id, readable without waiting for an append in progress. Ids only
    /// rise, and a segment gets its id under the `active` lock.
    active_id: AtomicU64,
    /// Records written and not yet committed or abandoned, per segment: such a segment is not
    /// reclaimed even if no reference points into it yet.
    outstanding: Arc<Mutex<BTreeMap<u64, usize>>>,
    /// Open files for reading, by segment id.
    readers: Mutex<BTreeMap<u64, Arc<File>>>,
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

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("segments: {what}: {e}"))
}

fn name(id: u64) -> String {
    format!("{id:016x}.seg")
}

impl Segments {
    /// Opens the segments in `dir` (created if missing); the newest is checked to its end and a
    /// torn tail cut off.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`Segments::open`] with segments of about `max` bytes.
    pub fn open_sized(dir: &Path, max: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory", e))?;
        let ids = list(dir)?;
        let active = match ids.last() {
            Some(&id) => {
                let path = dir.join(name(id));
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open", e))?;
                let len = recover(&file).map_err(|e| io("read the newest segment", e))?;
                Active { id, file: Arc::new(file), len }
            }
            None => create(dir, 1)?,
        };
        Ok(Self {
            dir: dir.to_owned(),
            max,
            active_id: AtomicU64::new(active.id),
            active: Mutex::new(active),
            outstanding: Arc::default(),
            readers: Mutex::default(),
        })
    }

    /// Appends `values` and syncs them to disk; their references are valid from the return on.
    /// A failed write (a full disk) cuts the segment back to where it was: nothing is left.
    pub fn append(&self, values: &[&[u8]]) -> Result<Written, StoreError> {
        self.append_paced(values, None)
    }

    /// [`Segments::append`], written and synced [`PACE_CHUNK`] at a time with `pace` called
    /// between chunks (bulk: it waits while FLASH commits are in the store's queue). A small
    /// fsync issued while megabytes are being synced waits for them in the disk's queue (here a
    /// 200-byte commit went from p99 0.3 ms to 8.9 ms while 4 MiB records were synced); in
    /// chunks, it waits for one chunk at most.
    pub fn append_paced(&self, values: &[&[u8]], pace: Option<&dyn Fn()>) -> Result<Written, StoreError> {
        let mut refs = Vec::with_capacity(values.len());
        let mut to_sync: Vec<Arc<File>> = Vec::new();
        {
            let mut a = self.active.lock().map_err(|_| StoreError::Closed)?;
            let start = (a.id, a.len);
            let result = (|| {
                for v in values {
                    let len =
                        u32::try_from(v.len()).map_err(|_| StoreError::Backend("segments: value over 4 GiB".into()))?;
                    if a.len > FILE_MAGIC.len() as u64 && a.len + RECORD_HEADER + v.len() as u64 > self.max {
                        to_sync.push(a.file.clone());
                        *a = create(&self.dir, a.id + 1)?;
                        self.active_id.store(a.id, Ordering::SeqCst);
                    }
                    let crc = crc32fast::hash(v);
                    let mut header = [0u8; RECORD_HEADER as usize];
                    header[..4].copy_from_slice(&len.to_be_bytes());
                    header[4..].copy_from_slice(&crc.to_be_bytes());
                    a.file.write_all_at(&header, a.len).map_err(full_or("append"))?;
                    let body = a.len + RECORD_HEADER;
                    match pace {
                        None => a.file.write_all_at(v, body).map_err(full_or("append"))?,
                        Some(pace) => {
                            let chunks = v.len().div_ceil(PACE_CHUNK);
                            for (i, chunk) in v.chunks(PACE_CHUNK).enumerate() {
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
                    refs.push(BlobRef { segment: a.id, offset: a.len, len, crc });
                    a.len = body + v.len() as u64;
                }
                Ok(())
            })();
            if let Err(e) = result {
                // Back to where it was: the file (or files) written past `start` are cut.
                if a.id == start.0 {
                    let _ = a.file.set_len(start.1);
                    a.len = start.1;
                }
                return Err(e);
            }
            to_sync.push(a.file.clone());
            let mut o = self.outstanding.lock().map_err(|_| StoreError::Closed)?;
            for r in &refs {
                *o.entry(r.segment).or_default() += 1;
            }
        }
        let written = Written { refs, outstanding: self.outstanding.clone() };
        for f in to_sync {
            f.sync_data().map_err(full_or("sync"))?;
        }
        Ok(written)
    }

    /// The value `r` points to, checked against its length and checksum.
    pub fn read(&self, r: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(r.segment)?;
        let corrupt = |reason: String| StoreError::Corrupt { tree: "segments", reason };
        let mut header = [0u8; RECORD_HEADER as usize];
        file.read_exact_at(&mut header, r.offset)
            .map_err(|e| corrupt(format!("segment {:x} at {}: {e}", r.segment, r.offset)))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len != r.len || crc != r.crc {
            return Err(corrupt(format!(
                "segment {:x} at {}: the record is not the one referenced",
                r.segment, r.offset
            )));
        }
        let mut v = vec![0; len as usize];
        file.read_exact_at(&mut v, r.offset + RECORD_HEADER)
            .map_err(|e| corrupt(format!("segment {:x} at {}: {e}", r.segment, r.offset)))?;
        if crc32fast::hash(&v) != crc {
            return Err(corrupt(format!("segment {:x} at {}: checksum mismatch", r.segment, r.offset)));
        }
        Ok(v)
    }

    /// Deletes the segments no reference in `live` points into, except the newest and those
    /// with records not yet committed. Returns the ids deleted. The caller must hold every
    /// commit off while it collects `live` and calls this (the store's writer thread does).
    pub fn reclaim(&self, live: &BTreeSet<u64>) -> Result<Vec<u64>, StoreError> {
        // Read first: a segment created from here on (by an append rotating) has a higher id and
        // is left alone, though no reference and no outstanding record shows it yet.
        let active = self.active_id.load(Ordering::SeqCst);
        let outstanding: BTreeSet<u64> =
            self.outstanding.lock().map_err(|_| StoreError::Closed)?.keys().copied().collect();
        let mut gone = Vec::new();
        for id in list(&self.dir)? {
            if id >= active || live.contains(&id) || outstanding.contains(&id) {
                continue;
            }
            if let Ok(mut r) = self.readers.lock() {
                r.remove(&id);
            }
            std::fs::remove_file(self.dir.join(name(id))).map_err(|e| io("delete a segment", e))?;
            gone.push(id);
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(gone)
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

    fn reader(&self, id: u64) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock().map_err(|_| StoreError::Closed)?;
        if let Some(f) = readers.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.dir.join(name(id))).map_err(|e| StoreError::Corrupt {
            tree: "segments",
            reason: format!("segment {id:x} referenced but missing: {e}"),
        })?);
        // A handful of segments are read at once; keep the handles bounded.
        if readers.len() >= 64 {
            readers.clear();
        }
        readers.insert(id, f.clone());
        Ok(f)
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
/// that a crash cut short, never referenced). Returns its length.
fn recover(file: &File) -> std::io::Result<u64> {
    let total = file.metadata()?.len();
    let mut f = file;
    f.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    let header_ok = total >= 8 && f.read_exact(&mut magic).is_ok() && &magic == FILE_MAGIC;
    if !header_ok {
        if total > FILE_MAGIC.len() as u64 {
            // The header is synced before any record: a file with more than a header and not
            // this one is another format or damaged, and nothing of it is destroyed here.
            return Err(std::io::Error::other("not a segment of this format (its header differs); refusing to open"));
        }
        // Created and cut before its header was synced: start it again.
        file.set_len(0)?;
        file.write_all_at(FILE_MAGIC, 0)?;
        file.sync_all()?;
        return Ok(FILE_MAGIC.len() as u64);
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
    Ok(at)
}

/// Two sets of segment files: what this node sent (sealed copies, receipts received) and what
/// it received (packets' evidence, receipts issued). Kept apart so that a received packet's
/// bytes leave the disk when retention deletes it and its neighbours, and not only when the
/// copies this node sent at the same time are gone too.
pub struct Streams {
    pub(super) sent: Segments,
    pub(super) received: Segments,
}

impl Streams {
    /// Opens `dir/sent` and `dir/received`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { sent: Segments::open(&dir.join("sent"))?, received: Segments::open(&dir.join("received"))? })
    }

    /// The segments of `tree`'s large values.
    pub(super) fn of(&self, tree: Tree) -> &Segments {
        match tree {
            Tree::Evidence | Tree::Issued => &self.received,
            _ => &self.sent,
        }
    }

    pub(super) fn bytes(&self) -> u64 {
        self.sent.bytes() + self.received.bytes()
    }

    /// Deletes what no stored reference points into (see [`Segments::reclaim`]).
    pub(super) fn reclaim(&self, backend: &dyn Backend) -> Result<Vec<u64>, StoreError> {
        let mut gone = self.sent.reclaim(&live_segments(backend, &[Tree::Sealed, Tree::Receipts])?)?;
        gone.extend(self.received.reclaim(&live_segments(backend, &[Tree::Evidence, Tree::Issued])?)?);
        Ok(gone)
    }
}

/// The trees whose values may be large (sealed copies, received packets, signed receipts), and
/// may therefore live in the segment files.
pub(super) fn holds_large(tree: Tree) -> bool {
    matches!(tree, Tree::Sealed | Tree::Evidence | Tree::Receipts | Tree::Issued)
}

/// A value taken out of a commit for the segments: (index of its op, its tree, the value).
pub(super) type Large = (usize, Tree, Vec<u8>);

/// Takes the values that go to segments out of `ops`.
pub(super) fn take_large(mut ops: Vec<Op>) -> (Vec<Op>, Vec<Large>) {
    let mut large = Vec::new();
    for (i, op) in ops.iter_mut().enumerate() {
        if let Op::Put(t, _, v) = op {
            if holds_large(*t) && v.len() >= BLOB_MIN {
                large.push((i, *t, std::mem::take(v)));
            }
        }
    }
    (ops, large)
}

/// The segments the stored references point into (read on the writer thread, between batches).
pub(super) fn live_segments(
    backend: &dyn Backend,
    trees: &[Tree],
) -> Result<std::collections::BTreeSet<u64>, StoreError> {
    let mut live = std::collections::BTreeSet::new();
    for &tree in trees {
        backend.visit(tree, &mut |_, v| {
            if let Some(r) = BlobRef::decode(v) {
                live.insert(r.segment);
            }
        })?;
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let a = vec![1u8; 100_000];
        let b = vec![2u8; 5];
        let w = s.append(&[&a, &b]).unwrap();
        let refs = w.refs().to_vec();
        drop(w);
        assert_eq!(s.read(&refs[0]).unwrap(), a);
        assert_eq!(s.read(&refs[1]).unwrap(), b);
        assert_eq!(BlobRef::decode(&refs[0].encode()), Some(refs[0]));
        assert_eq!(BlobRef::decode(b"not a reference"), None);
        drop(s);
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.read(&refs[1]).unwrap(), b);
        let c = s.append(&[b"more"]).unwrap().refs()[0];
        assert_eq!(c.offset, refs[1].offset + RECORD_HEADER + 5, "appended after what was there");
    }

    /// A segment newer than the one this handle last knew as the newest (created by an append
    /// rotating while a reclaim runs) is never taken for dead.
    #[test]
    fn a_segment_newer_than_the_newest_known_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let newer = dir.path().join(name(2));
        std::fs::write(&newer, FILE_MAGIC).unwrap();
        assert_eq!(s.reclaim(&BTreeSet::new()).unwrap(), Vec::<u64>::new());
        assert!(newer.exists());
    }

    /// A newest segment whose header is not this format's is refused, not reset: it may be a
    /// newer build's, or damaged, and holds records.
    #[test]
    fn a_segment_of_another_format_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name(1));
        std::fs::write(&path, b"LSEG0002 and records after it").unwrap();
        assert!(Segments::open(dir.path()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"LSEG0002 and records after it");
    }

    #[test]
    fn a_paced_append_gives_way_between_chunks_and_stores_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let v: Vec<u8> = (0..3 * PACE_CHUNK + 10).map(|i| i as u8).collect();
        let calls = std::cell::Cell::new(0);
        let pace = || calls.set(calls.get() + 1);
        let r = s.append_paced(&[&v, b"small"], Some(&pace)).unwrap().refs().to_vec();
        assert_eq!(calls.get(), 3, "between the chunks of a record (4 chunks, then 1)");
        assert_eq!(s.read(&r[0]).unwrap(), v);
        assert_eq!(s.read(&r[1]).unwrap(), b"small");
    }

    #[test]
    fn a_torn_tail_is_cut_at_open_and_what_was_whole_stays() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path()).unwrap();
        let keep = s.append(&[&[7u8; 1000]]).unwrap().refs()[0];
        let torn = s.append(&[&[8u8; 1000]]).unwrap().refs()[0];
        drop(s);
        let path = dir.path().join(name(keep.segment));
        let len = std::fs::metadata(&path).unwrap().len();
        // A write the crash cut short: half of the second record.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 500).unwrap();
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), torn.offset, "cut after the last whole record");
        assert_eq!(s.read(&keep).unwrap(), vec![7u8; 1000]);
        assert!(matches!(s.read(&torn), Err(StoreError::Corrupt { .. })));
        // A record whose bytes were not all written (a checksum that does not match) is cut too.
        let bad = s.append(&[&[9u8; 100]]).unwrap().refs()[0];
        drop(s);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 10], bad.offset + RECORD_HEADER + 50).unwrap();
        let s = Segments::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bad.offset);
        assert_eq!(s.read(&keep).unwrap(), vec![7u8; 1000]);
    }

    #[test]
    fn segments_rotate_and_only_dead_ones_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open_sized(dir.path(), 3000).unwrap();
        let big = vec![3u8; 1500];
        let r1 = s.append(&[&big]).unwrap().refs()[0];
        let r2 = s.append(&[&big]).unwrap().refs()[0];
        let pending = s.append(&[&big]).unwrap();
        let r3 = pending.refs()[0];
        let r4 = s.append(&[&big]).unwrap().refs()[0];
        assert_eq!((r1.segment, r2.segment, r3.segment, r4.segment), (1, 2, 3, 4));
        // Nothing references segment 1 or 3; 3 has a record not yet committed, 4 is the newest.
        let live: BTreeSet<u64> = [2].into();
        assert_eq!(s.reclaim(&live).unwrap(), vec![1]);
        assert_eq!(s.read(&r2).unwrap().len(), big.len());
        drop(pending);
        assert_eq!(s.reclaim(&live).unwrap(), vec![3]);
        assert_eq!(s.reclaim(&BTreeSet::new()).unwrap(), vec![2], "never the newest");
        assert!(matches!(s.read(&r1), Err(StoreError::Corrupt { .. })));
        assert_eq!(s.read(&r4).unwrap().len(), big.len());
    }
}
