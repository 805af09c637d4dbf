//! kill -9 of a process in the middle of a stream of commits loses nothing it acknowledged.
//!
//! The test re-runs its own binary as the child (`LIAISON_STORE_CHILD=dir`): the child commits
//! records one by one and prints `ack N` after each `Ok`; the parent SIGKILLs it mid-stream,
//! reopens the sled store, and checks that every acknowledged record is there, intact. Every
//! other record is large, so it goes to a segment file first and sled keeps a reference: the
//! kill lands in segment writes too (a torn tail is cut at the next open, and nothing
//! acknowledged points into it). Half the large records (`i % 4 == 1`) are deleted 20 records
//! later and the segments reclaimed after each deletion, and compacted after every fourth
//! (segments of 256 KiB, each left about half live, so that compaction moves the other half
//! out and the files go): the kill lands in reclamation and compaction too, and nothing
//! acknowledged and not deleted may be missing or damaged.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use liaison::store::{Class, Op, Store, Tree};

fn value(i: u32) -> Vec<u8> {
    // Odd records are over the segment threshold (16 KiB), and of different sizes.
    let words = if i % 2 == 1 { 5_000 + (i as usize % 7) * 300 } else { 64 };
    let mut v = i.to_be_bytes().repeat(words);
    v.extend_from_slice(b"end");
    v
}

#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("LIAISON_STORE_CHILD") else { return };
    let start: u32 = std::env::var("LIAISON_STORE_START").unwrap().parse().unwrap();
    let store = Store::open_sized(std::path::Path::new(&dir), SEGMENT).unwrap();
    // The test's own disk may have less free than the default headroom.
    store.set_headroom(liaison::store::Headroom::mib(4));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for i in start.. {
        rt.block_on(store.commit_as(Class::Bulk, vec![Op::Put(Tree::Issued, i.to_be_bytes().to_vec(), value(i))]))
            .unwrap();
        println!("ack {i}");
        if let Some(old) = i.checked_sub(DELETE_AFTER).filter(|o| o % 4 == 1) {
            rt.block_on(store.commit(vec![Op::Delete(Tree::Issued, old.to_be_bytes().to_vec())])).unwrap();
            println!("del {old}");
            store.reclaim_blocking().unwrap();
            if old % 16 == 1 {
                store.compact_blocking(u64::MAX, &|| false).unwrap();
            }
        }
    }
}

/// Segment size in the child: about ten large records each.
const SEGMENT: u64 = 256 * 1024;
/// An odd record is deleted this many records after it was written.
const DELETE_AFTER: u32 = 20;

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0u32;
    let mut deleted = std::collections::BTreeSet::new();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("LIAISON_STORE_CHILD", dir.path())
            .env("LIAISON_STORE_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = None;
        let target = next + 150 + round * 37;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("del ") {
                deleted.insert(n.parse::<u32>().unwrap());
            }
            if let Some(n) = line.strip_prefix("ack ") {
                let n: u32 = n.parse().unwrap();
                acked = Some(n);
                if n >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last = acked.expect("the child acknowledged nothing");

        let store = Store::open_sized(dir.path(), SEGMENT).unwrap();
        for i in 0..=last {
            let v = store.get(Tree::Issued, &i.to_be_bytes()).unwrap();
            // A deletion acknowledged is durable; one the kill interrupted (or that a restart
            // skipped) may or may not have happened; every other record is there, intact.
            if deleted.contains(&i) {
                assert_eq!(v, None, "round {round}: record {i} came back after its deletion was acknowledged");
            } else if i % 4 == 1 && i + DELETE_AFTER <= last + 1 {
                assert!(v.is_none() || v.as_deref() == Some(value(i).as_slice()), "round {round}: record {i} damaged");
            } else {
                assert_eq!(v.as_deref(), Some(value(i).as_slice()), "round {round}: acknowledged record {i} lost");
            }
        }
        let keys = store.keys_after(Tree::Issued, None, usize::MAX).unwrap();
        next = keys.iter().map(|k| u32::from_be_bytes(k.as_slice().try_into().unwrap())).max().unwrap() + 1;
        assert!(next > last, "round {round}");
        assert!(store.segment_bytes() > 0, "the large records went to segment files");
        store.close();
    }
    let files = std::fs::read_dir(dir.path().join("segments/received")).unwrap().count();
    let first = dir.path().join("segments/received/0000000000000001.seg");
    assert!(!first.exists(), "compacted and reclaimed: the first segment's live records moved ({files} files left)");
}
