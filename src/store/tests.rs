//! The store's tests: commits, failures and the space rules, segments, formats and migrations.

use super::*;
use crate::markings::Priority;

fn entry(n: u8) -> Entry {
    Entry {
        packet_id: format!("019ac0a1-5c00-7000-8000-0000000000{n:02x}").parse().unwrap(),
        recipient: "ES-UDYCO".parse().unwrap(),
        priority: Priority::Flash,
        expires: 1_000_000,
        sealed_digest: Digest::of(&[n]),
        signed_digest: Some(Digest::of(&[n, n])),
        submitted: 5,
        attempts: 1,
        state: crate::delivery::EntryState::Queued { not_before: 7 },
        reads: Vec::new(),
    }
}

/// The pending and outcome indexes follow each entry write, an older store gets them when
/// opened, and retention walks a recipient's outcomes oldest first.
#[test]
fn the_indexes_list_exactly_the_pending_and_the_terminal_entries() {
    let keys =
        |store: &Store, tree| -> Vec<Vec<u8>> { store.scan(tree, &[]).unwrap().into_iter().map(|(k, _)| k).collect() };
    let key = |e: &Entry| pair_key(e.packet_id, &e.recipient);
    let pkey = |e: &Entry| pending_key(e);
    let delivered = |n: u8, at: Millis| Entry {
        state: crate::delivery::EntryState::Delivered { at, digest: Digest::of(&[n]), receipted: Some(at) },
        ..entry(n)
    };
    let store = Store::with_backend(Arc::new(MemoryBackend::default())).unwrap();
    let (a, b) = (entry(1), entry(2));
    let routine = Entry { priority: Priority::Routine, ..entry(0) };
    store.commit_blocking([entry_write(&routine), entry_write(&a), entry_write(&b)].concat()).unwrap();
    assert_eq!(keys(&store, Tree::Pending), vec![pkey(&a), pkey(&b), pkey(&routine)], "FLASH first");
    let (page, last) = store.pending_after(None, 2).unwrap();
    assert_eq!((page, last), (vec![a.clone(), b.clone()], Some(pkey(&b))), "a start's first page");
    assert_eq!(store.pending_after(Some(&pkey(&b)), 2).unwrap().0, vec![routine.clone()]);
    store
        .commit_blocking(vec![Op::Delete(Tree::Outbox, key(&routine)), Op::Delete(Tree::Pending, pkey(&routine))])
        .unwrap();
    assert_eq!(keys(&store, Tree::Pending), vec![pkey(&a), pkey(&b)]);
    assert!(keys(&store, Tree::Outcomes).is_empty());
    let b = delivered(2, 900);
    store.commit_blocking(entry_write(&b)).unwrap();
    assert_eq!(keys(&store, Tree::Pending), vec![pkey(&a)], "delivered: out of the index, in the same commit");
    assert_eq!(keys(&store, Tree::Outcomes), vec![outcome_key(&b.recipient, 900, b.packet_id)]);

    // Retention: per recipient (a longer node id sharing the prefix is not walked), oldest
    // first, up to the first kept, at most the limit.
    let c = delivered(3, 300);
    let other = Entry { recipient: "ES-UDYCOX".parse().unwrap(), ..delivered(4, 100) };
    store.commit_blocking([entry_write(&c), entry_write(&other)].concat()).unwrap();
    let ids = |v: Vec<(PacketId, Vec<u8>)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    let es = a.recipient;
    assert_eq!(ids(store.past_retention(&es, 1_000, 50, 10).unwrap()), vec![c.packet_id, b.packet_id]);
    assert_eq!(ids(store.past_retention(&es, 1_000, 500, 10).unwrap()), vec![c.packet_id], "900 + 500 is kept");
    assert_eq!(ids(store.past_retention(&es, 1_000, 50, 1).unwrap()), vec![c.packet_id], "the limit");
    assert_eq!(store.past_retention(&es, 1_000, 50, 10).unwrap()[0].1, outcome_key(&es, 300, c.packet_id));
    // Beyond one page of the walk.
    let many: Vec<Entry> = (0..600u16)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..2].copy_from_slice(&i.to_be_bytes());
            Entry { packet_id: PacketId::from_bytes(id), ..delivered(9, u64::from(i) / 3) }
        })
        .collect();
    store.commit_blocking(many.iter().flat_map(entry_write).collect()).unwrap();
    let walked = ids(store.past_retention(&es, 1_000, 50, 1_000).unwrap());
    assert_eq!(walked.len(), 602);
    assert_eq!(walked[..600], many.iter().map(|e| e.packet_id).collect::<Vec<_>>()[..], "oldest first");
    assert_eq!(walked[600..], [c.packet_id, b.packet_id]);

    // A format-5 store: entries, no index.
    let mem = Arc::new(MemoryBackend::default());
    mem.apply(&[
        Op::Put(Tree::Meta, b"format".to_vec(), vec![5]),
        put(Tree::Outbox, key(&a), &a),
        put(Tree::Outbox, key(&b), &b),
    ])
    .unwrap();
    // A key left by a migration that stopped before the mark (then an older build
    // delivered the entry).
    mem.apply(&[Op::Put(Tree::Pending, pkey(&b), Vec::new())]).unwrap();
    let store = Store::with_backend(mem.clone()).unwrap();
    assert_eq!(keys(&store, Tree::Pending), vec![pkey(&a)], "rebuilt, not added to");
    assert_eq!(keys(&store, Tree::Outcomes), vec![outcome_key(&b.recipient, 900, b.packet_id)]);
    assert_eq!(mem.get(Tree::Meta, b"format").unwrap(), Some(vec![FORMAT_VERSION]));

    // A format-7 store: its pending index keyed by pair key alone.
    let mem = Arc::new(MemoryBackend::default());
    mem.apply(&[
        Op::Put(Tree::Meta, b"format".to_vec(), vec![7]),
        put(Tree::Outbox, key(&a), &a),
        Op::Put(Tree::Pending, key(&a), Vec::new()),
    ])
    .unwrap();
    let store = Store::with_backend(mem).unwrap();
    assert_eq!(keys(&store, Tree::Pending), vec![pkey(&a)]);
    assert_eq!(store.pending_entries().unwrap(), vec![a.clone()]);
}

#[test]
fn sled_commits_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let e = entry(1);
        store
            .commit_blocking(
                [
                    entry_write(&e),
                    vec![Op::Put(Tree::Sealed, pair_key(e.packet_id, &e.recipient), b"sealed bytes".to_vec())],
                ]
                .concat(),
            )
            .unwrap();
        store.close();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.pending_entries().unwrap(), vec![entry(1)]);
    let e = entry(1);
    assert_eq!(store.get(Tree::Sealed, &pair_key(e.packet_id, &e.recipient)).unwrap().unwrap(), b"sealed bytes");
}

/// Thousands of pending entries are read in parts on several threads: all come back, in key
/// order, each with its own acknowledgements; terminal ones are not read.
#[test]
fn many_pending_entries_load_in_order_with_their_reads() {
    let store = Store::with_backend(Arc::new(MemoryBackend::default())).unwrap();
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let mut want = Vec::new();
    let mut ops = Vec::new();
    for i in 0..3000u32 {
        let mut e = entry(0);
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        e.packet_id = PacketId::from_bytes(id);
        if i % 3 == 1 {
            e.state = crate::delivery::EntryState::Expired { at: 9 };
            ops.extend(entry_write(&e));
            continue;
        }
        ops.extend(entry_write(&e));
        if [0, 1500, 2999].contains(&i) {
            let officer: OfficerId = format!("Officer {i}").parse().unwrap();
            ops.push(put_read(e.packet_id, &es, &officer, u64::from(i)));
            e.reads.push((officer, u64::from(i)));
        }
        want.push(e);
    }
    store.commit_blocking(ops).unwrap();
    assert_eq!(want.len(), 2000);
    assert_eq!(want.iter().filter(|e| !e.reads.is_empty()).count(), 3);
    assert_eq!(store.pending_entries().unwrap(), want);
}

#[test]
fn concurrent_commits_are_grouped_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    s.commit_blocking(vec![Op::Put(Tree::Issued, vec![t, i], vec![i])]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.scan(Tree::Issued, &[]).unwrap().len(), 400);
}

#[test]
fn a_failing_disk_acknowledges_nothing() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem.clone()).unwrap();
    mem.set_failing(true);
    let err = store.commit_blocking(vec![Op::Put(Tree::Inbox, b"k".to_vec(), b"v".to_vec())]).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(store.get(Tree::Inbox, b"k").unwrap(), None);
    mem.set_failing(false);
    store.commit_blocking(vec![Op::Put(Tree::Inbox, b"k".to_vec(), b"v".to_vec())]).unwrap();
    assert_eq!(store.get(Tree::Inbox, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// A batch whose flush fails is taken back: reads do not show it, what it overwrote is
/// back, and the audit head (what a checkpoint signs) stays where it was.
#[test]
fn a_failed_flush_is_taken_back() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem.clone()).unwrap();
    store.commit_blocking(vec![Op::Put(Tree::Inbox, b"k".to_vec(), b"old".to_vec())]).unwrap();
    let head = store.audit_head().unwrap();
    mem.set_failing_flushes(true);
    let ops = vec![
        Op::Put(Tree::Inbox, b"k".to_vec(), b"new".to_vec()),
        Op::Put(Tree::Inbox, b"k".to_vec(), b"newer".to_vec()),
        Op::Put(Tree::Inbox, b"j".to_vec(), b"v".to_vec()),
        Op::Audit(crate::audit::Event::Stopped),
    ];
    assert!(store.commit_blocking(ops).is_err());
    assert_eq!(store.get(Tree::Inbox, b"k").unwrap().as_deref(), Some(&b"old"[..]), "what it overwrote is back");
    assert_eq!(store.get(Tree::Inbox, b"j").unwrap(), None);
    assert_eq!(store.audit_head().unwrap(), head);
    assert!(store.scan(Tree::Audit, &[]).unwrap().is_empty());
    mem.set_failing_flushes(false);
    mem.crash();
    let store = Store::with_backend(mem.clone()).unwrap();
    assert_eq!(store.get(Tree::Inbox, b"k").unwrap().as_deref(), Some(&b"old"[..]));
}

/// The headroom: bulk stops where it begins, essential commits go on into it down to its last
/// quarter, nothing refused reaches the backend, and the store takes everything again as
/// soon as the space is back, without being reopened.
#[test]
fn a_full_disk_refuses_by_class_and_the_store_resumes_by_itself() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem.clone()).unwrap();
    store.set_headroom(Headroom::mib(64));
    let mib = 1024 * 1024;
    let bulk = |k: &[u8]| vec![Op::Put(Tree::Sealed, k.to_vec(), vec![7; 4 * mib as usize])];
    let small =
        |k: &[u8]| vec![Op::Put(Tree::Inbox, k.to_vec(), b"v".to_vec()), Op::Audit(crate::audit::Event::Stopped)];
    let block_on = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);

    mem.set_free(Some(70 * mib));
    assert_eq!(store.health().space, SpaceState::Ok);
    let e = block_on(store.commit_as(Class::Bulk, bulk(b"a"))).unwrap_err();
    assert!(matches!(e, StoreError::Full { class: Class::Bulk, kept, .. } if kept == 64 * mib), "{e:?}");
    assert!(e.to_string().contains("70 MiB free, and 64 MiB are kept for FLASH alerts and receipts"), "{e}");
    assert_eq!(store.get(Tree::Sealed, b"a").unwrap(), None, "nothing of a refused commit is written");
    store.commit_blocking(small(b"x")).unwrap();
    mem.set_free(Some(40 * mib));
    assert_eq!(store.health().space, SpaceState::Low);
    assert!(matches!(block_on(store.commit_as(Class::Bulk, bulk(b"a"))), Err(StoreError::Full { .. })));
    store.commit_blocking(small(b"x")).unwrap();
    assert_eq!(store.shared.space.load(Ordering::Relaxed), SpaceState::Low.to_u8());
    let head = store.audit_head().unwrap();

    mem.set_free(Some(10 * mib));
    assert_eq!(store.health().space, SpaceState::Full);
    let e = store.commit_blocking(small(b"y")).unwrap_err();
    assert!(matches!(e, StoreError::Full { class: Class::Essential, .. }), "{e:?}");
    assert!(e.to_string().contains("the disk is full: 10 MiB free, below the 16 MiB"), "{e}");
    assert_eq!(store.get(Tree::Inbox, b"y").unwrap(), None);
    assert_eq!(store.audit_head().unwrap(), head, "a refused audit event takes no place in the chain");

    mem.set_free(Some(200 * mib));
    block_on(store.commit_as(Class::Bulk, bulk(b"a"))).unwrap();
    store.commit_blocking(small(b"y")).unwrap();
    assert_eq!(store.get(Tree::Sealed, b"a").unwrap().map(|v| v.len()), Some(4 * mib as usize));
    assert_eq!(store.health().space, SpaceState::Ok);
    assert_eq!(store.shared.space.load(Ordering::Relaxed), SpaceState::Ok.to_u8());
    assert_eq!(mem.refused(), 0, "the backend never saw a refused write");
    let node: NodeId = "IT-DCSA".parse().unwrap();
    let keys = crate::keys::NodeKeys::generate(node, &mut rand_core::OsRng);
    let audit = store.audit_verify(&node, &[keys.public().signing]);
    assert!(audit.unwrap().is_ok(), "the chain has no hole where the refused event was");
}

/// In one batch, commits are admitted in order while they fit: a large bulk commit that does
/// not fit does not keep a small one behind it out.
#[test]
fn commits_are_admitted_one_by_one_within_a_batch() {
    let mem = Arc::new(MemoryBackend::default());
    mem.set_free(Some(70 << 20));
    let store = Store::with_backend(mem.clone()).unwrap();
    store.set_headroom(Headroom::mib(64));
    let big = store.enqueue_as(Class::Bulk, vec![Op::Put(Tree::Sealed, b"big".to_vec(), vec![0; 8 << 20])]);
    let little = store.enqueue_as(Class::Bulk, vec![Op::Put(Tree::Sealed, b"little".to_vec(), vec![0; 1024])]);
    assert!(matches!(big.durable_blocking(), Err(StoreError::Full { .. })));
    little.durable_blocking().unwrap();
}

/// A write the disk does not complete (sled after a failed write) makes the store refuse
/// every later commit at once instead of queuing them without end, and report it; `close`
/// does not wait for it beyond its bound.
#[test]
fn a_stuck_write_is_reported_and_later_commits_refused_at_once() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem.clone()).unwrap();
    store.shared.stuck_after_ms.store(100, Ordering::Relaxed);
    mem.set_hanging_flushes(true);
    let first = store.enqueue(vec![Op::Put(Tree::Inbox, b"k".to_vec(), b"v".to_vec())]);
    let t = std::time::Instant::now();
    while store.health().stuck_ms.is_none_or(|ms| ms < 150) {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "the stuck write is not reported");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let e = store.commit_blocking(vec![Op::Put(Tree::Inbox, b"j".to_vec(), b"v".to_vec())]).unwrap_err();
    assert!(matches!(e, StoreError::Stuck { .. }), "{e:?}");
    assert!(e.to_string().contains("has not completed a write"), "{e}");
    mem.set_hanging_flushes(false);
    first.durable_blocking().unwrap();
    assert_eq!(store.health().stuck_ms, None);
    store.commit_blocking(vec![Op::Put(Tree::Inbox, b"j".to_vec(), b"v".to_vec())]).unwrap();
}

/// A large value committed with `commit_as` lives in a segment file, sled holding a
/// reference; it reads back the same, after a reopen too. Segment files nothing refers to
/// are deleted (at open, and by `reclaim`), never the newest or a referenced one.
#[test]
fn large_values_live_in_segments_and_dead_segments_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let big = vec![5u8; 100_000];
    {
        let store = Store::open(dir.path()).unwrap();
        rt.block_on(store.commit_as(Class::Bulk, vec![Op::Put(Tree::Evidence, b"a".to_vec(), big.clone())])).unwrap();
        rt.block_on(store.commit_as(Class::Bulk, vec![Op::Put(Tree::Evidence, b"small".to_vec(), vec![1; 10])]))
            .unwrap();
        let raw = store.backend.get(Tree::Evidence, b"a").unwrap().unwrap();
        assert_eq!(
            BlobRef::decode(Tree::Evidence, &raw).map(|r| (r.stream, r.segment)),
            Some((Stream::Received, 1)),
            "sled keeps a reference"
        );
        assert_eq!(store.backend.get(Tree::Evidence, b"small").unwrap().unwrap(), vec![1; 10], "small stays inline");
        assert_eq!(store.get(Tree::Evidence, b"a").unwrap().unwrap(), big);
        assert_eq!(store.scan(Tree::Evidence, b"a").unwrap()[0].1, big);
        store.close();
    }
    // Records nobody refers to, in segments 2 and 3 (a crash after the write, before the commit).
    {
        let segs = Segments::open_sized(&dir.path().join("segments/received"), Stream::Received, 1000).unwrap();
        for _ in 0..2 {
            drop(segs.append(&[Record { tree: Tree::Evidence, key: b"a", value: &[0u8; 2000] }]).unwrap());
        }
    }
    let files = || std::fs::read_dir(dir.path().join("segments/received")).unwrap().count();
    assert_eq!(files(), 3);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(files(), 2, "segment 2 reclaimed at open; 1 is referenced, 3 is the newest");
    assert_eq!(store.get(Tree::Evidence, b"a").unwrap().unwrap(), big);
    assert_eq!(store.reclaim_blocking().unwrap(), 0, "nothing let go of a reference yet");
    store.commit_blocking(vec![Op::Delete(Tree::Evidence, b"a".to_vec())]).unwrap();
    assert_eq!(store.reclaim_blocking().unwrap(), 1);
    assert_eq!(files(), 1);
    assert_eq!(store.get(Tree::Evidence, b"a").unwrap(), None);
}

/// Segments that are mostly dead but keep a live record each are compacted, emptiest first:
/// the live records move to the newest segment, the old files go, every kept value reads the
/// same, nothing deleted comes back; a store within the allowed amplification is left alone.
#[test]
fn partly_live_segments_are_compacted_and_their_files_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = Store::open_sized(dir.path(), 100_000).unwrap();
    let value = |i: u8| vec![i; 20_000];
    // Four values to a segment, 40 of them: ten segments.
    for i in 0..40u8 {
        rt.block_on(store.commit_as(Class::Bulk, vec![Op::Put(Tree::Evidence, vec![i], value(i))])).unwrap();
    }
    let files = || std::fs::read_dir(dir.path().join("segments/received")).unwrap().count();
    assert_eq!(files(), 10);
    assert_eq!(store.compact_blocking(u64::MAX, &|| false).unwrap(), Compacted::default(), "all live: nothing to do");
    // References read before the compaction (a reader between its two reads).
    let held = |key: u8| match store.get_stored(Tree::Evidence, &[key]).unwrap() {
        Some(Stored::External(r)) => r,
        other => panic!("{other:?}"),
    };
    let (kept_ref, deleted_ref) = (held(0), held(1));
    // Three of every four deleted: each segment keeps one live record.
    let gone: Vec<u8> = (0..40).filter(|i| i % 4 != 0).collect();
    store.commit_blocking(gone.iter().map(|i| Op::Delete(Tree::Evidence, vec![*i])).collect()).unwrap();
    assert_eq!(store.reclaim_blocking().unwrap(), 0, "no segment is dead");
    let before = store.segment_bytes();
    let done = store.compact_blocking(u64::MAX, &|| false).unwrap();
    assert!(done.segments >= 6 && done.reclaimed >= done.segments, "{done:?}");
    let after = store.segment_bytes();
    let live = 10 * 20_000u64;
    // Within 1.2× what is live, plus the newest segment (taken as live: it is not compacted)
    // and one segment of slack.
    assert!(after <= live / 5 * 6 + 2 * 100_000, "{after} bytes for {live} live (before: {before})");
    for i in 0..40u8 {
        let got = store.get(Tree::Evidence, &[i]).unwrap();
        assert_eq!(got, (i % 4 == 0).then(|| value(i)), "value {i}");
    }
    assert!(!dir.path().join("segments/received/0000000000000001.seg").exists());
    assert_eq!(store.read_external(Tree::Evidence, &[0], &kept_ref).unwrap(), Some(value(0)), "moved: read again");
    assert_eq!(store.read_external(Tree::Evidence, &[1], &deleted_ref).unwrap(), None, "deleted meanwhile");
    store.close();
    drop(store);
    // And after a restart.
    let store = Store::open_sized(dir.path(), 100_000).unwrap();
    for i in (0..40u8).step_by(4) {
        assert_eq!(store.get(Tree::Evidence, &[i]).unwrap(), Some(value(i)));
    }
}

/// A move applies only to a value that is still the reference it read, and not after another
/// write of the same batch.
#[test]
fn a_move_never_brings_back_or_overwrites_what_changed() {
    let store = Store::with_backend(Arc::new(MemoryBackend::default())).unwrap();
    let (old, new) = (b"old reference".to_vec(), b"new reference".to_vec());
    let relocate =
        |key: &[u8]| Op::Relocate { tree: Tree::Evidence, key: key.to_vec(), from: old.clone(), to: new.clone() };
    store
        .commit_blocking(vec![
            Op::Put(Tree::Evidence, b"kept".to_vec(), old.clone()),
            Op::Put(Tree::Evidence, b"replaced".to_vec(), b"another value".to_vec()),
            Op::Put(Tree::Evidence, b"same batch".to_vec(), old.clone()),
        ])
        .unwrap();
    store
        .commit_blocking(vec![
            relocate(b"kept"),
            relocate(b"replaced"),
            relocate(b"deleted"),
            Op::Delete(Tree::Evidence, b"same batch".to_vec()),
            relocate(b"same batch"),
        ])
        .unwrap();
    assert_eq!(store.get(Tree::Evidence, b"kept").unwrap(), Some(new.clone()));
    assert_eq!(store.get(Tree::Evidence, b"replaced").unwrap(), Some(b"another value".to_vec()));
    assert_eq!(store.get(Tree::Evidence, b"deleted").unwrap(), None);
    assert_eq!(store.get(Tree::Evidence, b"same batch").unwrap(), None);
}

#[test]
fn wrong_format_version_is_refused() {
    let mem = Arc::new(MemoryBackend::default());
    mem.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![99])]).unwrap();
    assert!(matches!(Store::with_backend(mem), Err(StoreError::Version { found: 99 })));
}

#[test]
fn corrupt_values_are_reported_not_panicked() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem).unwrap();
    store
        .commit_blocking(vec![
            Op::Put(Tree::Outbox, b"x".to_vec(), vec![0xff, 0x00]),
            Op::Put(Tree::Pending, b"\x00x".to_vec(), Vec::new()),
        ])
        .unwrap();
    let err = store.pending_entries().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { tree: "outbox", .. }), "{err}");
    // A start's walk goes on past it (logged, left on disk).
    let e = entry(3);
    store.commit_blocking(entry_write(&e)).unwrap();
    assert_eq!(store.pending_after(None, 10).unwrap(), (vec![e.clone()], Some(b"\x00x".to_vec())), "x sorts last");
}

/// Acknowledgements live in a tree of their own and are merged into their entries on
/// load, with any an older store kept in the entry itself; a snapshot of the entry that
/// lacks them cannot take them away.
#[test]
fn acknowledgements_are_kept_apart_and_merged() {
    let store = Store::with_backend(Arc::new(MemoryBackend::default())).unwrap();
    let rossi: OfficerId = "Isp. Rossi".parse().unwrap();
    let bianchi: OfficerId = "Isp. Bianchi".parse().unwrap();
    let e = entry(1);
    let older = Entry { reads: vec![(rossi.clone(), 50)], ..entry(1) };
    store
        .commit_blocking(vec![
            Op::Put(Tree::Pending, pending_key(&e), Vec::new()),
            put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &older),
            put_read(e.packet_id, &e.recipient, &bianchi, 40),
            put_read(e.packet_id, &e.recipient, &rossi, 50),
            put_read(entry(2).packet_id, &e.recipient, &rossi, 60),
        ])
        .unwrap();
    // A later snapshot of the entry without them.
    store.commit_blocking(vec![put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &e)]).unwrap();
    let loaded = store.pending_entries().unwrap();
    assert_eq!(loaded.len(), 1, "an acknowledgement of an entry not kept adds none");
    assert_eq!(loaded[0].reads, vec![(bianchi.clone(), 40), (rossi, 50)]);
    assert_eq!(store.outbox_entry(e.packet_id, &e.recipient).unwrap().unwrap(), loaded[0]);
    assert_eq!(store.outbox_entries_of(e.packet_id).unwrap(), loaded);

    // A malformed one is left out (logged); the entry and the others load.
    let bad = read_key(e.packet_id, &e.recipient, &"Isp. Verdi".parse().unwrap());
    store.commit_blocking(vec![Op::Put(Tree::Reads, bad, vec![0; 3])]).unwrap();
    assert_eq!(store.pending_entries().unwrap(), loaded);
}

#[test]
fn inbox_records_round_trip() {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem).unwrap();
    let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
    let rec = InboxRecord {
        sender: "IT-DCSA".parse().unwrap(),
        sealed_digest: Digest::of(b"s"),
        received_at: 42,
        packet_type: crate::packet::PacketType::InformationRequest,
        priority: crate::markings::Priority::Urgent,
        due_by: None,
        reads: vec![("Isp. Rossi".parse().unwrap(), 50), ("Isp. Bianchi".parse().unwrap(), 60)],
        policy: Some(Digest::of(b"policy")),
        originator: None,
        run: 3,
    };
    let other = InboxRecord { sender: "CO-DIJIN".parse().unwrap(), reads: Vec::new(), ..rec.clone() };
    store
        .commit_blocking(vec![
            put(Tree::Inbox, pair_key(id, &rec.sender), &rec),
            put(Tree::Inbox, pair_key(id, &other.sender), &other),
        ])
        .unwrap();
    assert_eq!(store.inbox_record(id, &rec.sender).unwrap(), Some(rec.clone()));
    assert_eq!(store.inbox_records(id).unwrap(), vec![other, rec], "one per sender, in key order");
}

/// A format-2 store (inbox and evidence keyed by packet id, one acknowledgement per record)
/// opens as format 3: keyed by packet id and sender, the acknowledgement kept.
#[test]
fn a_format_2_store_is_migrated() {
    #[derive(Serialize)]
    struct V2 {
        sender: NodeId,
        sealed_digest: Digest,
        received_at: Millis,
        packet_type: String,
        priority: crate::markings::Priority,
        due_by: Option<crate::timestamp::Timestamp>,
        read: Option<(OfficerId, Millis)>,
        policy: Option<Digest>,
        originator: Option<NodeId>,
    }
    let mem = Arc::new(MemoryBackend::default());
    let ids: Vec<PacketId> = (1..=2u8).map(|i| PacketId::from_bytes([i; 16])).collect();
    let mut ops = vec![Op::Put(Tree::Meta, b"format".to_vec(), vec![2])];
    for (i, id) in ids.iter().enumerate() {
        let v2 = V2 {
            sender: "ES-UDYCO".parse().unwrap(),
            sealed_digest: Digest::of(b"s"),
            received_at: 42,
            packet_type: "ReadAck".into(),
            priority: crate::markings::Priority::Flash,
            due_by: None,
            read: (i == 0).then(|| ("Isp. Rossi".parse().unwrap(), 50)),
            policy: None,
            originator: None,
        };
        ops.push(put(Tree::Inbox, id.as_bytes().to_vec(), &v2));
        ops.push(Op::Put(Tree::Evidence, id.as_bytes().to_vec(), vec![i as u8]));
    }
    mem.apply(&ops).unwrap();
    let store = Store::with_backend(mem.clone()).unwrap();
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let first = store.inbox_record(ids[0], &es).unwrap().unwrap();
    assert_eq!(first.reads, vec![("Isp. Rossi".parse().unwrap(), 50)]);
    assert!(store.inbox_record(ids[1], &es).unwrap().unwrap().reads.is_empty());
    assert_eq!(store.get(Tree::Evidence, &pair_key(ids[1], &es)).unwrap(), Some(vec![1]));
    assert!(store.get(Tree::Inbox, ids[0].as_bytes()).unwrap().is_none(), "old keys gone");
    assert!(store.get(Tree::Evidence, ids[0].as_bytes()).unwrap().is_none());
    assert_eq!(mem.get(Tree::Meta, b"format").unwrap(), Some(vec![FORMAT_VERSION]));
}
