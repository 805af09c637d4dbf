//! Two nodes on loopback, real QUIC + mutual TLS, real sled stores with group commit: sustained
//! 1 KiB packets/s with durable signed receipts, and FLASH submit-to-verified-receipt latency,
//! idle and while a bulk transfer runs on the same link.
//!
//! `cargo bench --bench node` (add `-- --quick` for a short run, `-- --throughput-only` to
//! profile the sustained phase alone, `-- --lossy` for throughput through the fault proxy at
//! 100 ms each way, clean and with 5 % and 20 % loss; `-- --storage` for store size after 1 GiB,
//! memory with 100,000 copies queued and the time to load them again). Both nodes share this
//! process's tokio runtime on the machine's cores, as two nodes on one machine would share it.
//! Prints figures; asserts nothing (shared machines are noisy).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use liaison::delivery::{EntryState, RetryPolicy};
use liaison::faultproxy::{FaultProxy, Faults};
use liaison::ids::NodeId;
use liaison::keys::{Keyring, NodeKeys};
use liaison::node::{Node, NodeConfig, Partner};
use liaison::packet::{Body, Packet};
use liaison::pki::Ca;
use liaison::seal::SealContext;
use liaison::timestamp::Timestamp;
use liaison::transport::TlsMaterial;
use rand_core::OsRng;
use time::OffsetDateTime;

fn node_id(s: &str) -> NodeId {
    s.parse().unwrap()
}

/// Where node `name` keeps its store: under `dir`, or under the directory given as
/// `--dir-IT-DCSA=PATH` / `--dir-ES-UDYCO=PATH` (to put one node on another file system, e.g.
/// a tmpfs, as if the two nodes had disks of their own).
fn node_dir(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let flag = format!("--dir-{name}=");
    match std::env::args().find_map(|a| a.strip_prefix(&flag).map(std::path::PathBuf::from)) {
        Some(base) => base.join(format!("liaison-bench-{}", std::process::id())).join(name),
        None => dir.join(name),
    }
}

/// Removes what [`node_dir`] made outside the bench's temporary directory.
fn remove_node_dirs() {
    for a in std::env::args().filter(|a| a.starts_with("--dir-")) {
        if let Some((_, base)) = a.split_once('=') {
            let _ = std::fs::remove_dir_all(
                std::path::Path::new(base).join(format!("liaison-bench-{}", std::process::id())),
            );
        }
    }
}

async fn start_pair(dir: &std::path::Path) -> (Node, Node, tokio::sync::watch::Sender<bool>) {
    let (it, es, stop, _) = start_pair_via(dir, false, true).await;
    (it, es.unwrap(), stop)
}

/// Two nodes; with `proxy`, IT-DCSA reaches ES-UDYCO through the fault proxy (clean at first);
/// without `es_up`, ES-UDYCO is not started (its socket is bound and answers nothing).
async fn start_pair_via(
    dir: &std::path::Path,
    proxy: bool,
    es_up: bool,
) -> (Node, Option<Node>, tokio::sync::watch::Sender<bool>, Option<FaultProxy>) {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate("bench", now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    let names = ["IT-DCSA", "ES-UDYCO"];
    let keys: Vec<NodeKeys> = names.iter().map(|n| NodeKeys::generate(node_id(n), &mut OsRng)).collect();
    let mut ring = Keyring::new();
    for k in &keys {
        ring.add(k.public().clone()).unwrap();
    }
    let sockets: Vec<UdpSocket> = names.iter().map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let (stop, _) = tokio::sync::watch::channel(false);
    let proxy = proxy.then(|| FaultProxy::start("127.0.0.1:0".parse().unwrap(), addrs[1], Faults::NONE, 1).unwrap());
    let mut nodes = Vec::new();
    let mut kept = Vec::new();
    for (i, (k, socket)) in keys.into_iter().zip(sockets).enumerate() {
        if i == 1 && !es_up {
            kept.push(socket);
            continue;
        }
        let cert = ca.issue(&node_id(names[i]), now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
        let tls = TlsMaterial::from_pem(ca.cert_pem(), &[], &cert.cert_pem, &cert.key_pem).unwrap();
        let other = 1 - i;
        let config = NodeConfig {
            transport: Default::default(),
            seal: SealContext::new(k, ring.clone()).unwrap(),
            tls,
            listen: addrs[i],
            socket: Some(socket),
            store: liaison::store::Store::open(&node_dir(dir, names[i])).unwrap(),
            partners: vec![Partner {
                node: node_id(names[other]),
                addr: match (&proxy, i) {
                    (Some(p), 0) => p.addr(),
                    _ => addrs[other],
                },
            }],
            policies: liaison::policy::PolicyBook::new([bench_policy(names[i], names[other])]),
            retry: RetryPolicy { initial_backoff: 100, max_backoff: 2_000, receipt_timeout: 30_000 },
            limits: liaison::limits::Limits::default(),
            partners_dir: None,
        };
        nodes.push(Node::start(config, stop.subscribe()).await.unwrap());
    }
    let es = if es_up { nodes.pop() } else { None };
    let it = nodes.pop().unwrap();
    // The unstarted node's socket stays bound for the process's life: dials to it go unanswered.
    std::mem::forget(kept);
    (it, es, stop, proxy)
}

/// How long a sustained run took: every submit acknowledged (sealed and flushed), and every
/// copy receipted.
struct Run {
    submitted: Duration,
    receipted: Duration,
}

/// `n` 1 KiB packets from IT-DCSA to ES-UDYCO, submitted by 64 tasks: how long until every
/// one is acknowledged and receipted, or `None` past `limit`.
async fn sustained(it: &Node, n: usize, limit: Duration) -> Option<Run> {
    let packets: Vec<Packet> = (0..n).map(|_| packet("ROUTINE", 1024)).collect();
    let before = it.outbox_summary().delivered;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in packets.chunks(n.div_ceil(64)) {
        let it = it.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for p in chunk {
                it.submit(&p).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let submitted = t.elapsed();
    while it.outbox_summary().delivered < before + n {
        if t.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Run { submitted, receipted: t.elapsed() })
}

/// `--lossy`: sustained throughput through the fault proxy at 100 ms each way, clean, with 5 %
/// and with 20 % of datagrams lost (issue 11's lossy-link target: at 5 %, half the clean rate).
async fn lossy(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (it, _es, stop, proxy) = start_pair_via(dir.path(), true, true).await;
    let proxy = proxy.unwrap();
    let _ = flash_latencies(&it, 5).await;
    let n = if quick { 200 } else { 1_000 };
    println!("-- sustained through the fault proxy, 100 ms each way, {n} packets of 1 KiB per phase");
    for loss in [0.0, 0.05, 0.20] {
        proxy.set_faults(Faults { loss, delay: Duration::from_millis(100), ..Faults::NONE }).unwrap();
        let limit = Duration::from_secs(if quick { 60 } else { 300 });
        let before = proxy.counts();
        match sustained(&it, n, limit).await {
            Some(Run { receipted: d, .. }) => println!(
                "loss {:>4.0} %: {n} receipted in {:.1} s = {:.0} packets/s ({} datagrams lost)",
                loss * 100.0,
                d.as_secs_f64(),
                n as f64 / d.as_secs_f64(),
                proxy.counts().lost - before.lost
            ),
            None => println!("loss {:>4.0} %: not all receipted within {} s", loss * 100.0, limit.as_secs()),
        }
    }
    let _ = stop.send(true);
}

/// `--storage`: what the stores take on disk after sending 1 GiB in 4 MiB packets (64 MiB with
/// `--quick`); the process's resident memory with 100,000 copies queued for a partner that is
/// down (10,000 with `--quick`); and how long the sender's state takes to load again from its
/// store (open + restore, what a restart does before it listens).
async fn storage(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (it, es, stop, _) = start_pair_via(dir.path(), false, true).await;
    let es = es.unwrap();
    let _ = flash_latencies(&it, 5).await;
    // `--queue-only`: only the queued copies (for a heap profiler).
    let mib = if std::env::args().any(|a| a == "--queue-only") {
        0
    } else if quick {
        64
    } else {
        1024
    };
    println!("-- stores after sending {mib} MiB in 4 MiB ROUTINE packets, IT-DCSA -> ES-UDYCO");
    let before = it.outbox_summary().delivered;
    let t = Instant::now();
    for _ in 0..mib / 4 {
        it.submit(&packet("ROUTINE", 4 * 1024 * 1024)).await.unwrap();
    }
    while it.outbox_summary().delivered < before + mib / 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = t.elapsed();
    let size = |name: &str| dir_bytes(&dir.path().join(name)) as f64 / (1024.0 * 1024.0);
    let (it_mib, es_mib) = (size("IT-DCSA"), size("ES-UDYCO"));
    println!(
        "delivered in {:.1} s; sender's store {it_mib:.0} MiB ({:.2}x what was sent), receiver's {es_mib:.0} MiB ({:.2}x)",
        sent.as_secs_f64(),
        it_mib / mib as f64,
        es_mib / mib as f64
    );
    // What each must keep: the signed packets sent (the sender) and received (the receiver),
    // their receipts, the audit trail. Segment files go once nothing in them is referenced.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gone = it.reclaim_space().await.unwrap() + es.reclaim_space().await.unwrap();
    let (it_mib, es_mib) = (size("IT-DCSA"), size("ES-UDYCO"));
    println!(
        "after reclaiming ({gone} segment files): sender's store {it_mib:.0} MiB ({:.2}x), receiver's {es_mib:.0} MiB ({:.2}x)",
        it_mib / mib as f64,
        es_mib / mib as f64
    );
    // Past every retention (the demo policies keep 180 or 365 days): what is left is the audit
    // trail and sled's own files.
    let later = liaison::node::now_ms() + 400 * 86_400_000;
    let purged = it.purge_expired(later).await.unwrap() + es.purge_expired(later).await.unwrap();
    // The nodes' own reclaim (every 2 s) may be at work on the same segments: let it finish.
    let mut gone = 0;
    for _ in 0..3 {
        gone += it.reclaim_space().await.unwrap() + es.reclaim_space().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (it_mib, es_mib) = (size("IT-DCSA"), size("ES-UDYCO"));
    println!(
        "after retention ({purged} records, {gone} segment files): sender's store {it_mib:.0} MiB, receiver's {es_mib:.0} MiB"
    );

    let queued: usize = if quick { 10_000 } else { 100_000 };
    println!("\n-- {queued} copies of 1 KiB queued for ES-UDYCO, which is down");
    es.shutdown().await;
    let rss_before = rss_kib();
    // Each submitter makes its packets one at a time: the measure is the node's memory, not
    // 100,000 packets held by the bench (which glibc would keep as the process's afterwards).
    let per_task = queued.div_ceil(16);
    let mut tasks = Vec::new();
    for k in 0..16 {
        let it = it.clone();
        let n = per_task.min(queued.saturating_sub(k * per_task));
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                it.submit(&packet("ROUTINE", 1024)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss_after = rss_kib();
    println!(
        "process RSS {:.0} MiB before, {:.0} MiB with them queued: {:.0} bytes per queued copy (both nodes' process)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / queued as f64
    );
    let _ = stop.send(true);
    it.shutdown().await;
    let t = Instant::now();
    let store = liaison::store::Store::open(&dir.path().join("IT-DCSA")).unwrap();
    let opened = t.elapsed();
    let t2 = Instant::now();
    let scanned = store.scan(liaison::store::Tree::Outbox, &[]).unwrap().len();
    println!("(outbox tree scanned: {scanned} in {:.0} ms)", t2.elapsed().as_secs_f64() * 1000.0);
    let t2 = Instant::now();
    let n = store.pending_entries().unwrap().len();
    println!("(pending outbox entries read and decoded: {n} in {:.0} ms)", t2.elapsed().as_secs_f64() * 1000.0);
    let t = Instant::now() - opened;
    let restored =
        liaison::node::restore(&store, [node_id("ES-UDYCO")], RetryPolicy::default(), liaison::node::now_ms()).unwrap();
    let pending: usize = restored.senders.values().map(|s| s.pending()).sum();
    println!(
        "sender's state loaded again in {:.0} ms (store open {:.0} ms, restore {:.0} ms): {pending} copies pending, {} receipts stored",
        t.elapsed().as_secs_f64() * 1000.0,
        opened.as_secs_f64() * 1000.0,
        (t.elapsed() - opened).as_secs_f64() * 1000.0,
        store.scan(liaison::store::Tree::ReceiptIndex, &[]).unwrap().len()
    );
    store.close();
}

/// Restart at `n` receipts: a receiver that stored `n` packets, a sender holding `n` delivered
/// copies with their receipts (records written straight into sled stores, as the nodes would
/// have left them; the evidence and signed packets are left out: no restart reads them).
fn restart_at(n: usize) {
    use liaison::delivery::Outbox;
    use liaison::encoding::Digest;
    use liaison::store::{pair_key, put, InboxRecord, Store, Tree};
    let dir = tempfile::tempdir().unwrap();
    let (it, es) = (node_id("IT-DCSA"), node_id("ES-UDYCO"));
    println!("-- restart with {n} receipts");
    let t = Instant::now();
    {
        let (receiver, sender) =
            (Store::open(&dir.path().join("ES-UDYCO")).unwrap(), Store::open(&dir.path().join("IT-DCSA")).unwrap());
        let now = liaison::node::now_ms();
        for chunk in 0..n.div_ceil(10_000) {
            let (mut r_ops, mut s_ops) = (Vec::new(), Vec::new());
            for i in chunk * 10_000..((chunk + 1) * 10_000).min(n) {
                let id = liaison::ids::PacketId::new_v7(now - (n - i) as u64, &mut OsRng);
                let sealed = Digest::of(&i.to_be_bytes());
                let rec = InboxRecord {
                    sender: it,
                    sealed_digest: sealed,
                    received_at: now,
                    packet_type: liaison::packet::PacketType::InformationRequest,
                    priority: liaison::markings::Priority::Routine,
                    due_by: None,
                    reads: Vec::new(),
                    policy: Some(Digest::of(b"policy")),
                    originator: None,
                    run: 1,
                };
                r_ops.push(put(Tree::Inbox, pair_key(id, &it), &rec));
                let mut e =
                    Outbox::new_entry(now, id, es, liaison::markings::Priority::Routine, now + 86_400_000, sealed);
                e.signed_digest = Some(Digest::of(b"signed"));
                e.attempts = 1;
                e.state = EntryState::Delivered { at: now, digest: sealed, receipted: Some(now) };
                s_ops.extend(liaison::store::entry_write(&e));
            }
            receiver.commit_blocking(r_ops).unwrap();
            sender.commit_blocking(s_ops).unwrap();
        }
        receiver.close();
        sender.close();
    }
    println!("(written in {:.1} s)", t.elapsed().as_secs_f64());
    for (name, partner, tree) in [("receiver", it, Tree::Inbox), ("sender", es, Tree::Outbox)] {
        let dir = dir.path().join(if name == "sender" { "IT-DCSA" } else { "ES-UDYCO" });
        let t = Instant::now();
        let store = Store::open(&dir).unwrap();
        let opened = t.elapsed();
        let restored =
            liaison::node::restore(&store, [partner], RetryPolicy::default(), liaison::node::now_ms()).unwrap();
        let loaded = t.elapsed();
        let held: usize = restored.senders.values().map(|s| s.entries().count()).sum();
        drop(restored);
        // What a start that reads the whole tree costs (the receiver's did, before this build).
        let t2 = Instant::now();
        let read = store.scan(tree, &[]).unwrap();
        let decoded = match tree {
            Tree::Inbox => read.iter().filter(|(_, v)| liaison::store::decode::<InboxRecord>(tree, v).is_ok()).count(),
            _ => {
                read.iter().filter(|(_, v)| liaison::store::decode::<liaison::delivery::Entry>(tree, v).is_ok()).count()
            }
        };
        println!(
            "{name}: store opened in {:.0} ms, state loaded in {:.0} ms in all ({held} outbox entries in memory); reading and decoding its {} tree would take {:.0} ms ({decoded} records)",
            opened.as_secs_f64() * 1000.0,
            loaded.as_secs_f64() * 1000.0,
            tree.name(),
            t2.elapsed().as_secs_f64() * 1000.0
        );
        store.close();
    }
}

/// Restart with `n` copies queued for a partner that is down (entries written straight into a
/// sled store, as the node leaves them): the whole state read before anything else (as the
/// simulator restores), then a real node's start, which listens at once and loads the outbox
/// behind it; and the memory they take.
fn restart_queued(n: usize) {
    use liaison::delivery::Outbox;
    use liaison::encoding::Digest;
    use liaison::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let es = node_id("ES-UDYCO");
    println!("-- restart with {n} copies queued");
    let t = Instant::now();
    {
        let sender = Store::open(&dir.path().join("IT-DCSA")).unwrap();
        let now = liaison::node::now_ms();
        for chunk in 0..n.div_ceil(10_000) {
            let mut ops = Vec::new();
            for i in chunk * 10_000..((chunk + 1) * 10_000).min(n) {
                let id = liaison::ids::PacketId::new_v7(now - (n - i) as u64, &mut OsRng);
                let sealed = Digest::of(&i.to_be_bytes());
                let mut e =
                    Outbox::new_entry(now, id, es, liaison::markings::Priority::Routine, now + 86_400_000, sealed);
                e.signed_digest = Some(Digest::of(b"signed"));
                ops.extend(liaison::store::entry_write(&e));
            }
            sender.commit_blocking(ops).unwrap();
        }
        sender.close();
    }
    println!("(written in {:.1} s)", t.elapsed().as_secs_f64());
    let rss_before = rss_kib();
    let t = Instant::now();
    let store = Store::open(&dir.path().join("IT-DCSA")).unwrap();
    let opened = t.elapsed();
    let restored = liaison::node::restore(&store, [es], RetryPolicy::default(), liaison::node::now_ms()).unwrap();
    let loaded = t.elapsed();
    let pending: usize = restored.senders.values().map(|s| s.pending()).sum();
    println!(
        "whole state read first: store opened in {:.0} ms, state loaded in {:.0} ms in all ({pending} copies pending); process RSS {:.0} MiB more",
        opened.as_secs_f64() * 1000.0,
        loaded.as_secs_f64() * 1000.0,
        rss_kib().saturating_sub(rss_before) as f64 / 1024.0
    );
    drop(restored);
    store.close();
    drop(store);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let rss_before = rss_kib();
        let t = Instant::now();
        let (it, _, stop, _) = start_pair_via(dir.path(), false, false).await;
        let serving = t.elapsed();
        let waiting = |it: &Node| {
            let s = it.outbox_summary();
            if s.loading {
                0
            } else {
                s.queued + s.in_flight
            }
        };
        while waiting(&it) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "node start: listening and taking submits in {:.0} ms (store open and audit entry included); all {n} copies loaded behind it in {:.0} ms; process RSS {:.0} MiB more",
            serving.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0,
            rss_kib().saturating_sub(rss_before) as f64 / 1024.0
        );
        let _ = stop.send(true);
        it.shutdown().await;
    });
}

/// Mixed retention: `mib` MiB of received packets' evidence (256 KiB each) from two partners in
/// turn, one whose retention has run out (its records deleted) and one kept: every segment
/// file is left about half live. Store size before and after compaction, against what is live.
fn compaction(mib: usize) {
    use liaison::store::{Class, Op, Store, Tree};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let n = mib * 4;
    println!("-- compaction: {mib} MiB of 256 KiB records, every other one deleted");
    let t = Instant::now();
    for i in 0..n as u32 {
        let value = i.to_be_bytes().repeat(64 * 1024);
        rt.block_on(store.commit_as(Class::Bulk, vec![Op::Put(Tree::Evidence, i.to_be_bytes().to_vec(), value)]))
            .unwrap();
    }
    println!("(written in {:.1} s)", t.elapsed().as_secs_f64());
    let deleted: Vec<Op> =
        (0..n as u32).filter(|i| i % 2 == 1).map(|i| Op::Delete(Tree::Evidence, i.to_be_bytes().to_vec())).collect();
    store.commit_blocking(deleted).unwrap();
    let reclaimed = store.reclaim_blocking().unwrap();
    let live = (n as u64).div_ceil(2) * 256 * 1024;
    let before = store.segment_bytes();
    let t = Instant::now();
    let done = store.compact_blocking(u64::MAX, &|| false).unwrap();
    let took = t.elapsed();
    let after = store.segment_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "segment files {:.0} MiB before compaction ({:.2}x the {:.0} MiB live; {reclaimed} files reclaimed without it), {:.0} MiB after ({:.2}x): {} segments, {:.0} MiB moved in {:.1} s ({:.0} MiB/s)",
        mib(before),
        before as f64 / live as f64,
        mib(live),
        mib(after),
        after as f64 / live as f64,
        done.segments,
        mib(done.moved),
        took.as_secs_f64(),
        mib(done.moved) / took.as_secs_f64()
    );
    for i in (0..n as u32).step_by(97) {
        let got = store.get(Tree::Evidence, &i.to_be_bytes()).unwrap();
        assert_eq!(got.is_some(), i % 2 == 0, "record {i}");
    }
    store.close();
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes the files under `p` take.
fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The demo policy of `me` with `partner`, with a rate limit the bench cannot reach: every
/// packet is policy-checked on both sides, as in production.
fn bench_policy(me: &str, partner: &str) -> liaison::policy::Policy {
    let path = format!("{}/configs/policies/{me}/{partner}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("max_packets_per_minute = 60000", "max_packets_per_minute = 100000000");
    liaison::policy::Policy::from_toml(&text, Some(&node_id(partner))).unwrap()
}

/// A packet of about `size` bytes of CBOR from IT-DCSA to ES-UDYCO.
fn packet(priority: &str, size: usize) -> Packet {
    let text = include_str!("../schemas/examples/clarification-request.json");
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    let env = v["envelope"].as_object_mut().unwrap();
    for k in ["id", "created"] {
        env.remove(k);
    }
    env.insert("originator".into(), serde_json::json!({"node": "IT-DCSA", "officer": "bench"}));
    env.insert("recipients".into(), serde_json::json!(["ES-UDYCO"]));
    env.insert("priority".into(), priority.into());
    if priority == "ROUTINE" {
        env.remove("urgency_reason");
    }
    env.insert("expires".into(), Timestamp::now().plus_secs(86_400).to_string().into());
    let mut p = Packet::from_json_draft(&v.to_string(), Timestamp::now(), &mut OsRng).unwrap();
    let pad = size.saturating_sub(p.to_cbor().len());
    if let Body::ClarificationRequest(c) = &mut p.body {
        c.questions[0].push_str(&"x".repeat(pad.min(16_000)));
        let rest = pad.saturating_sub(16_000);
        let mut left = rest;
        while left > 0 {
            let n = left.min(16_000);
            c.questions.push("y".repeat(n));
            left -= n;
        }
    }
    p
}

async fn flash_latencies(it: &Node, samples: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let p = packet("FLASH", 1024);
        let t = Instant::now();
        let id = it.submit(&p).await.unwrap().id;
        let status = it.wait_final(id, Duration::from_secs(30)).await.unwrap();
        assert!(matches!(status[0].state, EntryState::Delivered { .. }), "{status:?}");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// FLASH alerts, one every 10 ms, while one task submits `bulk_mib` MiB of ROUTINE packets of
/// 1, 2, 3 and 4 MiB in turn and the link carries them: each alert's submit acknowledgement and
/// its verified receipt, sampled from the first bulk submit until the last bulk copy is receipted.
async fn flash_under_bulk(it: &Node, bulk_mib: usize) -> (Vec<Duration>, Vec<Duration>, String) {
    let sizes: Vec<usize> = {
        let (mut v, mut total) = (Vec::new(), 0);
        while total < bulk_mib {
            let mib = 1 + v.len() % 4;
            v.push(mib.min(bulk_mib - total) * 1024 * 1024);
            total += mib;
        }
        v
    };
    let n = sizes.len();
    let packets: Vec<Packet> = sizes.iter().map(|s| packet("ROUTINE", *s)).collect();
    let before = it.outbox_summary().delivered;
    let t = Instant::now();
    let submitter = {
        let it = it.clone();
        tokio::spawn(async move {
            for p in packets {
                it.submit(&p).await.unwrap();
            }
            Instant::now()
        })
    };
    let (mut acks, mut receipts) = (Vec::new(), Vec::new());
    let mut flash = 0;
    while it.outbox_summary().delivered < before + n + flash {
        let p = packet("FLASH", 1024);
        let t0 = Instant::now();
        let id = it.submit(&p).await.unwrap().id;
        acks.push(t0.elapsed());
        flash += 1;
        let status = it.wait_final(id, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(status[0].state, EntryState::Delivered { .. }), "{status:?}");
        receipts.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let submitted = submitter.await.unwrap() - t;
    acks.sort();
    receipts.sort();
    let bulk = format!(
        "{n} bulk packets submitted in {:.1} s, all receipted in {:.1} s",
        submitted.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    (acks, receipts, bulk)
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// What one durable commit costs on this disk: the floor under every FLASH hop.
async fn commit_latency(dir: &std::path::Path, samples: usize, name: &str) -> Vec<Duration> {
    use liaison::store::{Op, Store, Tree};
    let store = Store::open(&dir.join(name)).unwrap();
    let samples = samples.min(200);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        store.commit(vec![Op::Put(Tree::Meta, format!("probe-{i}").into_bytes(), vec![0; 200])]).await.unwrap();
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// Mean time of one policy decision (`dry_run`: evaluate, without the rate limit), per packet.
fn policy_cost(policy: liaison::policy::Policy, packet: &Packet, n: usize) -> Duration {
    use liaison::policy::{Direction, PolicyBook};
    let partner = policy.partner;
    let book = PolicyBook::new([policy]);
    let t = Instant::now();
    for _ in 0..n {
        let mut p = packet.clone();
        std::hint::black_box(book.dry_run(&partner, Direction::Send, &mut p));
    }
    let clone_only = Instant::now();
    for _ in 0..n {
        std::hint::black_box(packet.clone());
    }
    (t.elapsed().saturating_sub(clone_only.elapsed())) / n as u32
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--lossy") {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(lossy(quick));
        return;
    }
    if std::env::args().any(|a| a == "--compaction") {
        compaction(if quick { 256 } else { 1024 });
        return;
    }
    if std::env::args().any(|a| a == "--restart") {
        restart_at(if quick { 100_000 } else { 1_000_000 });
        restart_queued(if quick { 100_000 } else { 1_000_000 });
        return;
    }
    if std::env::args().any(|a| a == "--storage") {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(storage(quick));
        return;
    }
    let (n_packets, samples, bulk_mib) = if quick { (2_000, 50, 32) } else { (20_000, 300, 256) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let n = if quick { 2_000 } else { 20_000 };
        let routine = policy_cost(bench_policy("IT-DCSA", "ES-UDYCO"), &packet("ROUTINE", 1024), n);
        let response = {
            let text = include_str!("../schemas/examples/information-response.json");
            let mut p = Packet::from_json(text).unwrap();
            if let Body::InformationResponse(r) = &mut p.body {
                r.attachments.clear();
            }
            p
        };
        let redacting = policy_cost(bench_policy("IT-DCSA", "CO-DIJIN"), &response, n);
        println!("-- policy decision per packet and recipient ({n} runs, the packet copy excluded)");
        println!(
            "1 KiB request, IT-DCSA -> ES-UDYCO policy: {:.2} us; response with 7 entities, IT-DCSA -> CO-DIJIN (3 redactions): {:.2} us\n",
            routine.as_secs_f64() * 1e6,
            redacting.as_secs_f64() * 1e6
        );
        let c = commit_latency(dir.path(), samples, "commit-probe").await;
        println!("-- store commit (one 200-byte write + flush), {samples} samples");
        println!("p50 {:.3} ms  p99 {:.3} ms", pct(&c, 0.5), pct(&c, 0.99));
        // The same while another thread appends 4 MiB records to segment files and syncs them
        // (what bulk submits do): how much the disk itself makes a small commit wait.
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (busy, path) = (busy.clone(), dir.path().join("segment-probe"));
            std::thread::spawn(move || {
                let segs = liaison::store::Segments::open(&path, liaison::store::Stream::Sealed).unwrap();
                let v = vec![7u8; 4 << 20];
                let record = liaison::store::Record { tree: liaison::store::Tree::Sealed, key: b"probe", value: &v };
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(segs.append(&[record]).unwrap());
                }
            })
        };
        let c = commit_latency(dir.path(), samples, "commit-probe-busy").await;
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        println!("while 4 MiB segment records are appended and synced: p50 {:.3} ms  p99 {:.3} ms\n", pct(&c, 0.5), pct(&c, 0.99));
        let (it, es, stop) = start_pair(dir.path()).await;

        // Warm up: connection, caches.
        let _ = flash_latencies(&it, 20).await;
        if std::env::args().any(|a| a == "--flash-only") {
            flash_report(&it, samples, bulk_mib).await;
            let _ = stop.send(true);
            remove_node_dirs();
            return;
        }

        println!("-- sustained: {n_packets} packets of 1 KiB, IT-DCSA -> ES-UDYCO, durable at both ends");
        let Run { submitted, receipted: total } =
            sustained(&it, n_packets, Duration::from_secs(600)).await.expect("every copy receipted within 10 min");
        println!(
            "submitted (sealed + flushed) in {:.2} s = {:.0}/s; all receipted in {:.2} s = {:.0} packets/s",
            submitted.as_secs_f64(),
            n_packets as f64 / submitted.as_secs_f64(),
            total.as_secs_f64(),
            n_packets as f64 / total.as_secs_f64()
        );
        assert!(es.inbox().unwrap().len() >= n_packets);
        if std::env::args().any(|a| a == "--throughput-only") {
            let _ = stop.send(true);
            return;
        }

        flash_report(&it, samples, bulk_mib).await;
        let _ = stop.send(true);
        remove_node_dirs();
    });
}

/// FLASH submit to verified receipt, idle and under bulk.
async fn flash_report(it: &Node, samples: usize, bulk_mib: usize) {
    println!("\n-- FLASH submit -> verified receipt, idle link ({samples} samples)");
    let idle = flash_latencies(it, samples).await;
    println!("p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms", pct(&idle, 0.5), pct(&idle, 0.99), pct(&idle, 1.0));

    println!("\n-- FLASH while {bulk_mib} MiB of ROUTINE (1-4 MiB packets) are submitted and sent on the same link");
    let (acks, receipts, bulk) = flash_under_bulk(it, bulk_mib).await;
    println!(
        "submit acknowledged: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&acks, 0.5),
        pct(&acks, 0.99),
        pct(&acks, 1.0)
    );
    println!(
        "submit -> verified receipt: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples; {bulk})",
        pct(&receipts, 0.5),
        pct(&receipts, 0.99),
        pct(&receipts, 1.0),
        receipts.len()
    );
}
