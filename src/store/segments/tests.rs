//! The segments module's tests.

use super::*;
use crate::store::MemoryBackend;

fn rec(value: &[u8]) -> Record<'_> {
    Record { tree: Tree::Evidence, key: b"key", value }
}

fn open(dir: &Path) -> Segments {
    Segments::open(dir, Stream::Received).unwrap()
}

#[test]
fn values_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = vec![1u8; 100_000];
    let b = vec![2u8; 5];
    let w = s.append(&[rec(&a), rec(&b)]).unwrap();
    let refs = w.refs().to_vec();
    drop(w);
    assert_eq!(s.read(&refs[0]).unwrap(), a);
    assert_eq!(s.read(&refs[1]).unwrap(), b);
    assert_eq!(BlobRef::decode(Tree::Evidence, &refs[0].encode()), Some(refs[0]));
    assert_eq!(BlobRef::decode(Tree::Evidence, b"not a reference"), None);
    assert_eq!(BlobRef::decode(Tree::Inbox, &refs[0].encode()), None, "no reference outside the large trees");
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.read(&refs[1]).unwrap(), b);
    let c = s.append(&[rec(b"more")]).unwrap().refs()[0];
    assert_eq!(c.offset, refs[1].offset + RECORD_HEADER + 3 + 3 + 5, "appended after what was there");
    assert_eq!(
        s.owners(1, None).unwrap().unwrap(),
        vec![
            (refs[0].offset, Tree::Evidence, b"key".to_vec()),
            (refs[1].offset, Tree::Evidence, b"key".to_vec()),
            (c.offset, Tree::Evidence, b"key".to_vec())
        ]
    );
}

/// A reference of store format 4 (`R`) points into the stream its tree's values went to
/// then: sealed copies with what was sent.
#[test]
fn references_of_the_first_format_find_their_stream() {
    let mut r = BlobRef { stream: Stream::Sealed, segment: 3, offset: 8, len: 20_000, crc: 7 }.encode();
    r[3] = b'R';
    assert_eq!(BlobRef::decode(Tree::Sealed, &r).map(|r| r.stream), Some(Stream::Sent));
    assert_eq!(BlobRef::decode(Tree::Issued, &r).map(|r| r.stream), Some(Stream::Received));
    r[3] = b'9';
    assert_eq!(BlobRef::decode(Tree::Sealed, &r), None);
}

/// Segments of the first format (bare values) are read, appended after in a new segment of
/// this format, and reclaimed by a scan of the trees.
#[test]
fn segments_of_the_first_format_are_read_and_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![4u8; 20_000];
    let mut old = FILE_MAGIC_1.to_vec();
    old.extend_from_slice(&(value.len() as u32).to_be_bytes());
    old.extend_from_slice(&crc32fast::hash(&value).to_be_bytes());
    old.extend_from_slice(&value);
    std::fs::write(dir.path().join(name(1)), &old).unwrap();
    std::fs::write(dir.path().join(name(2)), &old).unwrap();
    let s = Segments::open(dir.path(), Stream::Sent).unwrap();
    let legacy = |segment| {
        let mut r =
            BlobRef { stream: Stream::Sent, segment, offset: 8, len: 20_000, crc: crc32fast::hash(&value) }.encode();
        r[3] = b'R';
        r
    };
    assert_eq!(s.read(&BlobRef::decode(Tree::Sealed, &legacy(2)).unwrap()).unwrap(), value);
    let new = s.append(&[Record { tree: Tree::Sent, key: b"k", value: &value }]).unwrap().refs()[0];
    assert_eq!(new.segment, 3, "not appended to a segment of the first format");
    let mem = MemoryBackend::default();
    mem.apply(&[Op::Put(Tree::Sealed, b"a".to_vec(), legacy(2))]).unwrap();
    assert_eq!(s.reclaim(&mem, None, None).unwrap(), Reclaimed { gone: vec![1], later: vec![] });
    assert!(s.read(&new).is_err(), "the newest held nothing referenced: cut back");
    assert_eq!(s.read(&BlobRef::decode(Tree::Sealed, &legacy(2)).unwrap()).unwrap(), value);
}

/// A record counts as being committed from before its first byte is written: a reclaim
/// that runs while an append is between chunks, after it rotated to a new segment, leaves
/// the older segment holding the append's first record alone.
#[test]
fn a_reclaim_during_an_append_that_rotated_spares_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open_sized(dir.path(), Stream::Sealed, PACE_CHUNK as u64 + PACE_CHUNK as u64 / 2).unwrap();
    let mem = MemoryBackend::default();
    let (a, b) = (vec![1u8; PACE_CHUNK + 10], vec![2u8; PACE_CHUNK + 10]);
    let gone = std::cell::RefCell::new(Vec::new());
    // (Only once the append is in segment 2: a reclaim looking at the newest waits for the
    // append lock, which this thread holds.)
    let pace = || {
        if s.active_id.load(Ordering::SeqCst) == 2 {
            gone.borrow_mut().extend(s.reclaim(&mem, Some(&[1].into()), None).unwrap().gone);
        }
    };
    let w = s
        .append_paced(
            &[Record { tree: Tree::Sealed, key: b"a", value: &a }, Record { tree: Tree::Sealed, key: b"b", value: &b }],
            Some(&pace),
        )
        .unwrap();
    assert_eq!(w.refs().iter().map(|r| r.segment).collect::<Vec<_>>(), vec![1, 2], "rotated within the append");
    assert!(gone.borrow().is_empty(), "segment 1 was deleted under the append: {:?}", gone.borrow());
    assert_eq!(s.read(&w.refs()[0]).unwrap(), a);
}

/// A segment whose records cannot be read through is kept, and the others are still
/// reclaimed; the writer's gate stops a deletion once a batch failed since the reads.
#[test]
fn an_unreadable_segment_is_kept_and_a_failed_batch_stops_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open_sized(dir.path(), Stream::Received, 3000).unwrap();
    let mem = MemoryBackend::default();
    let big = vec![3u8; 1500];
    for key in [b"a", b"b", b"c"] {
        drop(s.append(&[Record { tree: Tree::Evidence, key, value: &big }]).unwrap());
    }
    // Segment 1's record claims more bytes than the file has.
    let f = OpenOptions::new().write(true).open(dir.path().join(name(1))).unwrap();
    f.write_all_at(&u32::MAX.to_be_bytes(), FILE_MAGIC.len() as u64).unwrap();
    let lock = Mutex::new(());
    let (failures, failing_since) = (AtomicU64::new(0), AtomicU64::new(0));
    let gate = Gate { lock: &lock, failures: &failures, failing_since: &failing_since };
    assert!(!gate.run_if_settled(Some(1), || Ok(())).unwrap(), "a batch failed since the reads");
    assert_eq!(s.reclaim(&mem, None, Some(&gate)).unwrap(), Reclaimed { gone: vec![2], later: vec![] });
    assert!(dir.path().join(name(1)).exists());
}

/// A segment newer than the one this handle last knew as the newest (created by an append
/// rotating while a reclaim runs) is never taken for dead.
#[test]
fn a_segment_newer_than_the_newest_known_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let newer = dir.path().join(name(2));
    std::fs::write(&newer, FILE_MAGIC).unwrap();
    let mem = MemoryBackend::default();
    assert_eq!(s.reclaim(&mem, None, None).unwrap().gone, Vec::<u64>::new());
    assert!(newer.exists());
}

/// A newest segment whose header is not this format's is refused, not reset: it may be a
/// newer build's, or damaged, and holds records.
#[test]
fn a_segment_of_another_format_is_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name(1));
    std::fs::write(&path, b"LSEG0003 and records after it").unwrap();
    assert!(Segments::open(dir.path(), Stream::Sent).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"LSEG0003 and records after it");
}

#[test]
fn a_paced_append_gives_way_between_chunks_and_stores_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v: Vec<u8> = (0..3 * PACE_CHUNK + 10).map(|i| i as u8).collect();
    let calls = std::cell::Cell::new(0);
    let pace = || calls.set(calls.get() + 1);
    let r = s.append_paced(&[rec(&v), rec(b"small")], Some(&pace)).unwrap().refs().to_vec();
    assert_eq!(calls.get(), 3, "between the chunks of a record (4 chunks, then 1)");
    assert_eq!(s.read(&r[0]).unwrap(), v);
    assert_eq!(s.read(&r[1]).unwrap(), b"small");
}

#[test]
fn a_torn_tail_is_cut_at_open_and_what_was_whole_stays() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let keep = s.append(&[rec(&[7u8; 1000])]).unwrap().refs()[0];
    let torn = s.append(&[rec(&[8u8; 1000])]).unwrap().refs()[0];
    drop(s);
    let path = dir.path().join(name(keep.segment));
    let len = std::fs::metadata(&path).unwrap().len();
    // A write the crash cut short: half of the second record.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 500).unwrap();
    let s = open(dir.path());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), torn.offset, "cut after the last whole record");
    assert_eq!(s.read(&keep).unwrap(), vec![7u8; 1000]);
    assert!(matches!(s.read(&torn), Err(StoreError::Corrupt { .. })));
    // A record whose bytes were not all written (a checksum that does not match) is cut too.
    let bad = s.append(&[rec(&[9u8; 100])]).unwrap().refs()[0];
    drop(s);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff; 10], bad.offset + RECORD_HEADER + 50).unwrap();
    let s = open(dir.path());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bad.offset);
    assert_eq!(s.read(&keep).unwrap(), vec![7u8; 1000]);
    // A damaged owner fails the checksum as well.
    let other = s.append(&[rec(&[6u8; 100])]).unwrap().refs()[0];
    f.write_all_at(b"x", other.offset + RECORD_HEADER + 3).unwrap();
    assert!(matches!(s.read(&other), Err(StoreError::Corrupt { .. })));
}

/// A segment goes when none of its records is referenced by its owner any more; one with a
/// record being committed stays; the newest, dead, is cut back to its header and appended to
/// again; a key that now points elsewhere does not keep the old record alive.
#[test]
fn segments_rotate_and_only_dead_ones_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open_sized(dir.path(), Stream::Received, 3000).unwrap();
    let mem = MemoryBackend::default();
    let big = vec![3u8; 1500];
    let put = |key: &[u8], r: BlobRef| mem.apply(&[Op::Put(Tree::Evidence, key.to_vec(), r.encode())]).unwrap();
    let append = |key: &'static [u8]| s.append(&[Record { tree: Tree::Evidence, key, value: &big }]).unwrap();
    let r1 = append(b"a").refs()[0];
    put(b"a", r1);
    let r2 = append(b"b").refs()[0];
    put(b"b", r2);
    let pending = append(b"c");
    let r3 = pending.refs()[0];
    let r4 = append(b"d").refs()[0];
    put(b"d", r4);
    assert_eq!((r1.segment, r2.segment, r3.segment, r4.segment), (1, 2, 3, 4));
    assert_eq!(s.reclaim(&mem, None, None).unwrap(), Reclaimed { gone: vec![], later: vec![3] });
    // "a" now points to segment 4: nothing refers to 1 any more.
    put(b"a", r4);
    assert_eq!(s.reclaim(&mem, Some(&[1, 2].into()), None).unwrap(), Reclaimed { gone: vec![1], later: vec![] });
    assert_eq!(s.read(&r2).unwrap().len(), big.len());
    drop(pending);
    assert_eq!(s.reclaim(&mem, None, None).unwrap().gone, vec![3], "its commit never came");
    mem.apply(&[
        Op::Delete(Tree::Evidence, b"a".to_vec()),
        Op::Delete(Tree::Evidence, b"b".to_vec()),
        Op::Delete(Tree::Evidence, b"d".to_vec()),
    ])
    .unwrap();
    assert_eq!(s.reclaim(&mem, None, None).unwrap(), Reclaimed { gone: vec![2], later: vec![] });
    let newest = dir.path().join(name(4));
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), FILE_MAGIC.len() as u64, "the newest, cut back");
    assert!(matches!(s.read(&r1), Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.read(&r4), Err(StoreError::Corrupt { .. })));
    let r5 = append(b"e").refs()[0];
    assert_eq!((r5.segment, r5.offset), (4, FILE_MAGIC.len() as u64));
    assert_eq!(s.read(&r5).unwrap(), big);
}
