//! Durable node state: one owner thread, group commit, flush before "done".
//!
//! Every write goes through [`Store::commit`]: the owner thread takes all commits that are
//! waiting, applies them, flushes **once**, and only then answers each caller (group commit, so a
//! burst of 256 submits costs one fsync, not 256). A caller that got `Ok` knows its writes are on
//! disk; a caller that got `Err` knows nothing of its batch was acknowledged. Reads go straight to
//! the backend (sled's trees are safe to read concurrently) and see only committed data.
//!
//! The backend is a trait ([`Backend`]) so that a second implementation is possible: [`SledBackend`]
//! is the real one, [`MemoryBackend`] serves tests of the layers above.
//!
//! What is kept, by tree (keys are raw ids; values are CBOR or raw sealed bytes):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `outbox` | packet id ‖ recipient | [`Entry`] (delivery state) |
//! | `sealed` | packet id ‖ recipient | the sealed copy to send |
//! | `receipts` | packet id ‖ recipient | the receipt received (sealed, verified), evidence |
//! | `inbox` | packet id ‖ sender | [`InboxRecord`]: sender, digest, time, type, priority, due-by, reads |
//! | `evidence` | packet id ‖ sender | the signed packet (COSE_Sign1) exactly as received |
//! | `issued` | packet id | the receipt this node issued (answer to retransmissions) |
//! | `meta` | name | store format version |

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::audit;
use crate::delivery::{Entry, Millis};
use crate::encoding::{self, Digest};
use crate::ids::{NodeId, OfficerId, PacketId};

/// The store format this code writes. 2: receipts cover batches (`receipts` by receipt id plus
/// `receipt_index`; `issued` by receipt id); the audit trail (`audit`, `audit_checkpoints`).
/// 3: a received packet is identified by its id and its sender (`inbox` and `evidence` keyed by
/// packet id ‖ sender); a format-2 store is migrated when it is opened.
pub const FORMAT_VERSION: u8 = 3;

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error (I/O, full disk, corruption).
    #[error("store: {0}")]
    Backend(String),
    /// A stored value could not be decoded.
    #[error("store: corrupt value in {tree}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by another format version.
    #[error("store: format version {found}, this build reads {FORMAT_VERSION}")]
    Version {
        /// The version found on disk.
        found: u8,
    },
    /// The owner thread is gone (the node is shutting down).
    #[error("store: closed")]
    Closed,
}

/// The trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Delivery state per (packet, recipient).
    Outbox,
    /// Acknowledgements of copies sent, as the partner reported them: (packet, recipient,
    /// officer) -> read at (ms, big-endian). A set that only grows, kept apart from the entry
    /// so that writing an acknowledgement never races with writing the entry's state.
    Reads,
    /// Sealed copies waiting to be (re)sent.
    Sealed,
    /// Signed receipts received, by the receipt's own packet id (one receipt covers a batch).
    Receipts,
    /// Which receipt delivered each (packet, recipient): pair key -> receipt packet id.
    ReceiptIndex,
    /// Packets received.
    Inbox,
    /// Signed receipts issued, by the receipt's own packet id.
    Issued,
    /// Signed packets received (COSE_Sign1), kept apart so listings never read payloads.
    Evidence,
    /// Answer deadlines: (request, counterpart) -> [`crate::deadlines::Deadline`].
    Deadlines,
    /// The audit trail: entry seq (big-endian) -> entry CBOR (see [`crate::audit`]).
    Audit,
    /// Signed checkpoints of the audit trail: head seq (big-endian) -> checkpoint CBOR.
    AuditCheckpoints,
    /// Format version and other metadata.
    Meta,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 12] = [
        Tree::Outbox,
        Tree::Reads,
        Tree::Sealed,
        Tree::Receipts,
        Tree::ReceiptIndex,
        Tree::Inbox,
        Tree::Issued,
        Tree::Evidence,
        Tree::Deadlines,
        Tree::Audit,
        Tree::AuditCheckpoints,
        Tree::Meta,
    ];

    /// The tree's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Reads => "reads",
            Self::Sealed => "sealed",
            Self::Receipts => "receipts",
            Self::ReceiptIndex => "receipt_index",
            Self::Inbox => "inbox",
            Self::Issued => "issued",
            Self::Evidence => "evidence",
            Self::Deadlines => "deadlines",
            Self::Audit => "audit",
            Self::AuditCheckpoints => "audit_checkpoints",
            Self::Meta => "meta",
        }
    }
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The in-memory backend's map: (tree, key) -> value.
type MemoryMap = std::collections::BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Tree, Vec<u8>, Vec<u8>),
    /// Remove (absent is fine).
    Delete(Tree, Vec<u8>),
    /// Append an event to the audit trail. The writer turns it into an entry of the hash chain
    /// (next sequence number, previous entry's hash) as it applies the commit, so entries are
    /// chained in the order their changes reach the disk.
    Audit(crate::audit::Event),
}

/// A storage backend. Methods take `&self`: backends synchronise internally.
pub trait Backend: Send + Sync + 'static {
    /// Applies the writes (in order).
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// One value.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every (key, value) of a tree whose key starts with `prefix`, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;
}

/// sled, one tree per [`Tree`].
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // No background flushing on a timer: what the writer's flush did not make durable, and
        // took back after a failure, is not flushed behind its back half a second later.
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name()).map_err(backend)).collect::<Result<_, _>>()?;
        Ok(Self { db, trees })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t as usize]
    }
}

impl Backend for SledBackend {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        for op in ops {
            match op {
                Op::Put(t, k, v) => self.tree(*t).insert(k.as_slice(), v.as_slice()).map(drop),
                Op::Delete(t, k) => self.tree(*t).remove(k.as_slice()).map(drop),
                Op::Audit(_) => return Err(unchained()),
            }
            .map_err(backend)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // sled's Db::flush covers every tree: they share one log.
        self.db.flush().map(drop).map_err(backend)
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(tree).scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)).collect()
    }
}

/// An audit event reached a backend without going through the writer's chain.
fn unchained() -> StoreError {
    StoreError::Backend("an audit event must be committed through Store::commit".into())
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An in-memory backend for tests and the simulation, with the faults of a real disk: writes
/// that fail (a full disk), flushes that fail (an I/O error after the data was handed over),
/// and a crash that loses everything applied since the last successful flush.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// What reads see: everything applied.
    live: MemoryMap,
    /// What survives a crash: everything flushed.
    durable: MemoryMap,
    /// Applied since the last flush, in order.
    unflushed: Vec<Op>,
    fail_writes: bool,
    fail_flushes: bool,
    /// Writes and flushes refused so far.
    refused: u64,
}

impl MemoryBackend {
    /// Makes every later `apply` fail (as a full disk would), or work again.
    pub fn set_failing(&self, failing: bool) {
        self.with(|s| s.fail_writes = failing);
    }

    /// Makes every later `flush` fail (the writes stay applied but not durable), or work again.
    pub fn set_failing_flushes(&self, failing: bool) {
        self.with(|s| s.fail_flushes = failing);
    }

    /// A crash (power cut, `kill -9`): everything not flushed is gone. The store must be opened
    /// again over this backend ([`Store::with_backend`]), as after a restart.
    pub fn crash(&self) {
        self.with(|s| {
            s.live = s.durable.clone();
            s.unflushed.clear();
        });
    }

    /// How many writes and flushes were refused so far.
    pub fn refused(&self) -> u64 {
        self.with(|s| s.refused)
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryState) -> R) -> R {
        // A panic while holding this lock leaves a consistent map (every change is one insert
        // or remove); carry on with it.
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

fn apply_to(map: &mut MemoryMap, op: &Op) {
    match op {
        Op::Put(tree, k, v) => {
            map.insert((*tree, k.clone()), v.clone());
        }
        Op::Delete(tree, k) => {
            map.remove(&(*tree, k.clone()));
        }
        Op::Audit(_) => {}
    }
}

impl Backend for MemoryBackend {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.iter().any(|op| matches!(op, Op::Audit(_))) {
            return Err(unchained());
        }
        self.with(|s| {
            if s.fail_writes {
                s.refused += 1;
                return Err(StoreError::Backend("No space left on device (simulated)".into()));
            }
            for op in ops {
                apply_to(&mut s.live, op);
            }
            s.unflushed.extend_from_slice(ops);
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.with(|s| {
            if s.fail_flushes {
                s.refused += 1;
                return Err(StoreError::Backend("Input/output error (simulated flush failure)".into()));
            }
            for op in std::mem::take(&mut s.unflushed) {
                apply_to(&mut s.durable, &op);
            }
            Ok(())
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|s| s.live.get(&(tree, key.to_vec())).cloned()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self.with(|s| {
            s.live
                .range((tree, prefix.to_vec())..)
                .take_while(|((tr, k), _)| *tr == tree && k.starts_with(prefix))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

/// A packet received and stored: what a listing needs, without the payload (which is in
/// [`Tree::Evidence`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRecord {
    /// The node that sent it.
    pub sender: NodeId,
    /// SHA-256 of the sealed bytes received.
    pub sealed_digest: Digest,
    /// When it was stored (ms).
    pub received_at: Millis,
    /// Its packet type (for a forward: the type of the packet it carries).
    pub packet_type: crate::packet::PacketType,
    /// Its priority.
    pub priority: crate::markings::Priority,
    /// When an answer is due, for a request.
    pub due_by: Option<crate::timestamp::Timestamp>,
    /// The officers who acknowledged it, and when, in order (each once).
    #[serde(default, alias = "read", deserialize_with = "reads")]
    pub reads: Vec<(OfficerId, Millis)>,
    /// The version hash of this node's policy for the sender that admitted it.
    #[serde(default)]
    pub policy: Option<Digest>,
    /// For a packet passed on by `sender`: the node that originated it.
    #[serde(default)]
    pub originator: Option<NodeId>,
}

/// Most officers' acknowledgements kept per packet and partner (every officer of a unit may read
/// an alert; a partner must not be able to grow a record without end).
pub const MAX_READS: usize = 32;

/// Reads a list of acknowledgements, or the single one (or none) a format-2 store holds.
pub fn reads<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(OfficerId, Millis)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reads {
        Many(Vec<(OfficerId, Millis)>),
        One((OfficerId, Millis)),
        #[allow(dead_code)] // only its shape matters: null
        None(Option<()>),
    }
    Ok(match Reads::deserialize(d)? {
        Reads::Many(v) => v,
        Reads::One(r) => vec![r],
        Reads::None(_) => Vec::new(),
    })
}

/// The key of a (packet, recipient) pair.
pub fn pair_key(packet_id: PacketId, node: &NodeId) -> Vec<u8> {
    [packet_id.as_bytes().as_slice(), node.as_str().as_bytes()].concat()
}

/// The key of `officer`'s acknowledgement at `node` of `packet_id` (in [`Tree::Reads`]): the
/// pair key, a zero byte (no node id holds one), the officer.
pub fn read_key(packet_id: PacketId, node: &NodeId, officer: &OfficerId) -> Vec<u8> {
    [pair_key(packet_id, node).as_slice(), &[0], officer.as_str().as_bytes()].concat()
}

/// The write that records `officer`'s acknowledgement at `node` of `packet_id`, read at `at`.
pub fn put_read(packet_id: PacketId, node: &NodeId, officer: &OfficerId, at: Millis) -> Op {
    Op::Put(Tree::Reads, read_key(packet_id, node, officer), at.to_be_bytes().to_vec())
}

/// The owner of the store: a handle to its writer thread, and direct read access.
#[derive(Clone)]
pub struct Store {
    /// Shared by every handle: [`Store::close`] takes it, and the writer stops.
    tx: Arc<Mutex<Option<mpsc::Sender<Commit>>>>,
    backend: Arc<dyn Backend>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The audit chain's head as of the last successful flush (what a checkpoint may sign).
    durable: Arc<Mutex<audit::Head>>,
}

/// A commit handed to the writer ([`Store::enqueue`]), to wait on.
#[must_use = "a commit is durable only once `durable` says so"]
pub struct Pending(Result<tokio::sync::oneshot::Receiver<Result<(), StoreError>>, StoreError>);

impl Pending {
    /// Returns once the commit is flushed to disk, or failed (then nothing of it is stored).
    pub async fn durable(self) -> Result<(), StoreError> {
        self.0?.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Pending::durable`] for callers outside an async runtime.
    pub fn durable_blocking(self) -> Result<(), StoreError> {
        self.0?.blocking_recv().map_err(|_| StoreError::Closed)?
    }
}

struct Commit {
    ops: Vec<Op>,
    reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl Store {
    /// Opens a sled store in `dir`, checking (or writing) the format version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::with_backend(Arc::new(SledBackend::open(dir)?))
    }

    /// A store over any backend. Starts the writer thread.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Self, StoreError> {
        match backend.get(Tree::Meta, b"format")? {
            Some(v) if v.as_slice() == [FORMAT_VERSION] => {}
            Some(v) if v.as_slice() == [2] => migrate_2_to_3(&*backend)?,
            Some(v) => return Err(StoreError::Version { found: v.first().copied().unwrap_or(0) }),
            None => {
                backend.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![FORMAT_VERSION])])?;
                backend.flush()?;
            }
        }
        let head = match backend.get(Tree::Meta, AUDIT_HEAD)? {
            Some(v) => decode(Tree::Meta, &v)?,
            None => audit::Head::GENESIS,
        };
        let (tx, rx) = mpsc::channel::<Commit>();
        let durable = Arc::new(Mutex::new(head));
        let b = backend.clone();
        let writer = std::thread::Builder::new()
            .name("liaison-store".into())
            .spawn({
                let durable = durable.clone();
                move || writer_loop(&*b, &rx, head, &durable)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the store thread: {e}")))?;
        Ok(Self { tx: Arc::new(Mutex::new(Some(tx))), backend, writer: Arc::new(Mutex::new(Some(writer))), durable })
    }

    /// Applies `ops` and returns once they are flushed to disk (group commit with any concurrent
    /// callers).
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).durable().await
    }

    /// Hands `ops` to the writer now and returns what to wait on. The writer applies commits in
    /// the order they were enqueued: a caller that takes a snapshot of some state and enqueues
    /// it under the lock that guards the state knows that no older snapshot lands after it.
    pub fn enqueue(&self, ops: Vec<Op>) -> Pending {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.send(Commit { ops, reply }) {
            Ok(()) => Pending(Ok(rx)),
            Err(e) => Pending(Err(e)),
        }
    }

    fn send(&self, commit: Commit) -> Result<(), StoreError> {
        let tx = self.tx.lock().map_err(|_| StoreError::Closed)?;
        tx.as_ref().ok_or(StoreError::Closed)?.send(commit).map_err(|_| StoreError::Closed)
    }

    /// [`Store::commit`] for callers outside an async runtime.
    pub fn commit_blocking(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).durable_blocking()
    }

    /// One committed value.
    pub fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(tree, key)
    }

    /// Committed values under a key prefix.
    pub fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.backend.scan(tree, prefix)
    }

    /// Every outbox entry (for [`crate::delivery::Outbox::restore`] at start-up).
    pub fn outbox_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut reads: HashMap<Vec<u8>, Vec<(OfficerId, Millis)>> = HashMap::new();
        for (k, v) in self.scan(Tree::Reads, &[])? {
            let bad = || StoreError::Corrupt { tree: Tree::Reads.name(), reason: "a malformed acknowledgement".into() };
            // The packet id's 16 bytes may hold zeros; the node id after them does not.
            let split = k.iter().skip(16).position(|b| *b == 0).map(|p| p + 16).ok_or_else(bad)?;
            let officer: OfficerId =
                std::str::from_utf8(&k[split + 1..]).ok().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
            let at = Millis::from_be_bytes(v.as_slice().try_into().map_err(|_| bad())?);
            reads.entry(k[..split].to_vec()).or_default().push((officer, at));
        }
        self.scan(Tree::Outbox, &[])?
            .into_iter()
            .map(|(k, v)| {
                let mut e: Entry = decode(Tree::Outbox, &v)?;
                // Older stores kept them in the entry only; both are merged, in time order.
                for (officer, at) in reads.remove(&k).unwrap_or_default() {
                    if !e.reads.iter().any(|(o, _)| *o == officer) {
                        e.reads.push((officer, at));
                    }
                }
                e.reads.sort_by_key(|(_, at)| *at);
                e.reads.truncate(MAX_READS);
                Ok(e)
            })
            .collect()
    }

    /// The audit chain's committed head.
    ///
    /// This is the head as of the last successful flush, not what the backend shows while a
    /// batch is being flushed: a checkpoint must never sign entries that a failed flush then
    /// takes back.
    pub fn audit_head(&self) -> Result<audit::Head, StoreError> {
        self.durable.lock().map(|h| *h).map_err(|_| StoreError::Closed)
    }

    /// The signed checkpoints of the audit trail.
    pub fn audit_checkpoints(&self) -> Result<Vec<audit::Checkpoint>, StoreError> {
        self.scan(Tree::AuditCheckpoints, &[])?.into_iter().map(|(_, v)| decode(Tree::AuditCheckpoints, &v)).collect()
    }

    /// Verifies the audit trail of `node` (signing key `key`): every link, the recorded head,
    /// every checkpoint. The head is read first: entries appended meanwhile (the node keeps
    /// working) are beyond it and left out, instead of looking like a chain that ends too late.
    pub fn audit_verify(
        &self,
        node: &NodeId,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<Result<audit::Verified, audit::Broken>, StoreError> {
        let head = self.audit_head()?;
        let mut entries = self.scan(Tree::Audit, &[])?;
        entries.retain(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).map_or(true, |b| u64::from_be_bytes(b) <= head.seq));
        let checkpoints = self.audit_checkpoints()?;
        Ok(audit::verify(audit::Head::GENESIS, &entries, Some(head), &checkpoints, node, key))
    }

    /// The inbox record of `packet_id` from `sender`.
    pub fn inbox_record(&self, packet_id: PacketId, sender: &NodeId) -> Result<Option<InboxRecord>, StoreError> {
        self.get(Tree::Inbox, &pair_key(packet_id, sender))?.map(|v| decode(Tree::Inbox, &v)).transpose()
    }

    /// Every inbox record of packets with this id (one per sender; more than one is a collision).
    pub fn inbox_records(&self, packet_id: PacketId) -> Result<Vec<InboxRecord>, StoreError> {
        self.scan(Tree::Inbox, packet_id.as_bytes())?.into_iter().map(|(_, v)| decode(Tree::Inbox, &v)).collect()
    }

    /// Stops the writer after it has answered every commit already sent, and waits for it to
    /// finish (blocking: from async code, call it on the blocking pool). Every handle is closed:
    /// later commits fail with [`StoreError::Closed`]; reads still work.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.join();
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
    backend.apply(&[Op::Put(Tree::Meta, b"format".to_vec(), vec![FORMAT_VERSION])])?;
    backend.flush()
}

/// Records moved per flushed batch when a format-2 store is migrated.
const MIGRATION_BATCH: usize = 256;

/// An `Op::Put` of a CBOR-encoded value.
pub fn put<T: Serialize>(tree: Tree, key: Vec<u8>, value: &T) -> Op {
    Op::Put(tree, key, encoding::to_cbor(value))
}

/// Decodes a stored CBOR value.
pub fn decode<T: serde::de::DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T, StoreError> {
    encoding::from_cbor_exact(bytes, usize::MAX)
        .map_err(|e| StoreError::Corrupt { tree: tree.name(), reason: e.to_string() })
}

/// Group commit: block for one commit, take every other one already waiting, apply them all,
/// flush once, answer everyone. A failed batch is answered with the error and nothing in it is
/// acknowledged: what it overwrote is put back, so reads do not show it either; the audit
/// chain's head goes back to where it was, so the next entries reuse
/// the sequence numbers the failed batch could not write.
fn writer_loop(
    backend: &dyn Backend,
    rx: &mpsc::Receiver<Commit>,
    mut head: audit::Head,
    durable: &Mutex<audit::Head>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let before = head;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut ops = Vec::with_capacity(batch.iter().map(|c| c.ops.len()).sum::<usize>() + 1);
        for c in &mut batch {
            for op in std::mem::take(&mut c.ops) {
                match op {
                    Op::Audit(event) => {
                        let (k, v) = head.append(now, event);
                        ops.push(Op::Put(Tree::Audit, k, v));
                    }
                    other => ops.push(other),
                }
            }
        }
        if head != before {
            ops.push(Op::Put(Tree::Meta, AUDIT_HEAD.to_vec(), encoding::to_cbor(&head)));
        }
        let result = undo_log(backend, &ops).and_then(|undo| {
            let applied = backend.apply(&ops).and_then(|()| backend.flush());
            if applied.is_err() {
                // Put back what the batch overwrote: reads must not show what was never
                // acknowledged (sled keeps writes whose flush failed in memory), and flush that
                // at once if the disk lets us, so that the failed batch cannot become durable
                // with a later flush either.
                if backend.apply(&undo).is_ok() {
                    let _ = backend.flush();
                }
            }
            applied
        });
        match result {
            Ok(()) => {
                if let Ok(mut d) = durable.lock() {
                    *d = head;
                }
            }
            Err(_) => head = before,
        }
        for c in batch {
            let _ = c.reply.send(result.clone());
        }
    }
}

/// The writes that put back what `ops` will overwrite, in reverse order (a key written twice
/// gets its value from before the batch).
fn undo_log(backend: &dyn Backend, ops: &[Op]) -> Result<Vec<Op>, StoreError> {
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

/// The Meta key of the audit chain's head.
const AUDIT_HEAD: &[u8] = b"audit_head";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markings::Priority;

    fn entry(n: u8) -> Entry {
        Entry {
            packet_id: format!("019ac0a1-5c00-7000-8000-0000000000{n:02x}").parse().unwrap(),
            recipient: "ES-UDYCO".parse().unwrap(),
            priority: Priority::Flash,
            expires: 1_000_000,
            sealed_digest: Digest::of(&[n]),
            submitted: 5,
            attempts: 1,
            state: crate::delivery::EntryState::Queued { not_before: 7 },
            reads: Vec::new(),
        }
    }

    #[test]
    fn sled_commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let e = entry(1);
            store
                .commit_blocking(vec![
                    put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &e),
                    Op::Put(Tree::Sealed, pair_key(e.packet_id, &e.recipient), b"sealed bytes".to_vec()),
                ])
                .unwrap();
            store.close();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.outbox_entries().unwrap(), vec![entry(1)]);
        let e = entry(1);
        assert_eq!(store.get(Tree::Sealed, &pair_key(e.packet_id, &e.recipient)).unwrap().unwrap(), b"sealed bytes");
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
        store.commit_blocking(vec![Op::Put(Tree::Outbox, b"x".to_vec(), vec![0xff, 0x00])]).unwrap();
        let err = store.outbox_entries().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { tree: "outbox", .. }), "{err}");
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
                put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &older),
                put_read(e.packet_id, &e.recipient, &bianchi, 40),
                put_read(e.packet_id, &e.recipient, &rossi, 50),
                put_read(entry(2).packet_id, &e.recipient, &rossi, 60),
            ])
            .unwrap();
        // A later snapshot of the entry without them.
        store.commit_blocking(vec![put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &e)]).unwrap();
        let loaded = store.outbox_entries().unwrap();
        assert_eq!(loaded.len(), 1, "an acknowledgement of an entry not kept adds none");
        assert_eq!(loaded[0].reads, vec![(bianchi, 40), (rossi, 50)]);

        store.commit_blocking(vec![Op::Put(Tree::Reads, b"no separator".to_vec(), vec![0; 8])]).unwrap();
        let err = store.outbox_entries().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { tree: "reads", .. }), "{err}");
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
}
