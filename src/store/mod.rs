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
//! | `sealed` | packet id ‖ recipient | the sealed copy to send (deleted once a receipt names the signed packet) |
//! | `sent` | packet id ‖ recipient | the signed packet (COSE_Sign1) in that copy: evidence of what was sent |
//! | `receipts` | packet id ‖ recipient | the receipt received (sealed, verified), evidence |
//! | `inbox` | packet id ‖ sender | [`InboxRecord`]: sender, digest, time, type, priority, due-by, reads |
//! | `evidence` | packet id ‖ sender | the signed packet (COSE_Sign1) exactly as received |
//! | `issued` | packet id | the receipt this node issued (answer to retransmissions) |
//! | `meta` | name | store format version |
//! | `pending` | lane ‖ packet id ‖ recipient | nothing: the outbox entries not yet terminal, FLASH first |
//! | `outcomes` | recipient ‖ 0 ‖ outcome time ‖ packet id | nothing: the terminal ones, oldest first per recipient |

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::audit;

mod backend;
mod compact;
mod format;
pub mod segments;
pub mod space;
mod writer;
use crate::delivery::{Entry, Millis};
use crate::encoding::{self, Digest};
use crate::ids::{NodeId, OfficerId, PacketId};
pub use backend::{Backend, MemoryBackend, SledBackend};
pub use compact::Compacted;
use format::check_format;
use segments::{holds_large, take_large};
pub use segments::{BlobRef, Record, Segments, Stream, Streams};
pub use space::{Class, Headroom, SpaceState};
use writer::{set_space, writer_loop, Commit, Job, Reservation, Shared};

/// The store format this code writes. 2: receipts cover batches (`receipts` by receipt id plus
/// `receipt_index`; `issued` by receipt id); the audit trail (`audit`, `audit_checkpoints`).
/// 3: a received packet is identified by its id and its sender (`inbox` and `evidence` keyed by
/// packet id ‖ sender); a format-2 store is migrated when it is opened.
/// 4: values may be references into the segment files ([`segments`]); a format-3 store is
/// taken as it is (its values are all inline) and marked 4, so that an older build refuses it.
/// 5: segment records name their owner and references their stream ([`segments`]); the signed
/// packets sent (`sent`). Format 3 and 4 stores are taken as they are (their references and
/// segments are read as before) and marked 5.
/// 6: the index of pending outbox entries (`pending`); built from the outbox when an older
/// store is opened.
/// 7: the index of terminal outbox entries by recipient and outcome time (`outcomes`): what
/// retention deletes, found without reading every entry; built with `pending` when an older
/// store is opened.
/// 8: `pending` keyed by lane, then pair key ([`pending_key`]: a start loads FLASH first);
/// rebuilt, with `outcomes`, when a store of format 2–7 is opened.
pub const FORMAT_VERSION: u8 = 8;

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
    /// Another process has this data directory open.
    #[error(
        "{}: the data directory is in use by another process (is this node already running? every node needs a data_dir of its own)",
        .0
    )]
    InUse(String),
    /// The disk has too little space left for this commit's class: nothing of it was written.
    /// Retry once space is freed (the node resumes by itself).
    #[error("{}", full_text(*.class, *.free, *.kept))]
    Full {
        /// The commit's class.
        class: Class,
        /// Bytes free when it was refused.
        free: u64,
        /// Bytes the store keeps free for commits of this class.
        kept: u64,
    },
    /// The disk has not completed a write for `secs` seconds: nothing more is taken (sled does
    /// not recover in-process from a write the disk refused; `liaison serve` restarts).
    #[error(
        "store: the disk has not completed a write for {secs} s; nothing more is accepted until the node restarts"
    )]
    Stuck {
        /// How long the writer has been waiting.
        secs: u64,
    },
}

fn full_text(class: Class, free: u64, kept: u64) -> String {
    let (free, kept) = (space::mib(free), space::mib(kept));
    match class {
        Class::Bulk => format!(
            "the disk is nearly full: {free} MiB free, and {kept} MiB are kept for FLASH alerts and receipts; \
             ROUTINE and URGENT packets are refused until space is freed"
        ),
        Class::Essential => format!(
            "the disk is full: {free} MiB free, below the {kept} MiB the store never uses; \
             nothing can be stored until space is freed"
        ),
    }
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
    /// Signed packets sent (COSE_Sign1), per (packet, recipient): what the recipient's receipt
    /// names by its digest, the evidence of what was sent once the sealed copy is gone.
    Sent,
    /// The outbox entries not yet delivered, rejected or expired: [`pending_key`] (the lane,
    /// then the pair key) -> nothing. Written with each entry ([`entry_write`]), so a start
    /// reads the pending entries without walking the terminal ones, FLASH first.
    Pending,
    /// The terminal outbox entries (delivered, rejected, expired) by recipient and the time
    /// their retention counts from ([`outcome_key`]) -> nothing: retention walks a partner's
    /// oldest first and stops at the first it keeps. Written with each entry ([`entry_write`]).
    Outcomes,
    /// Officers' accounts: officer id -> account ([`crate::accounts`]).
    Accounts,
    /// Packets officers sent: packet id -> [`crate::catalogue::SentRecord`] (what it is, each
    /// recipient's policy decision), written with its copies; deleted with its last copy.
    Submissions,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 17] = [
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
        Tree::Sent,
        Tree::Pending,
        Tree::Outcomes,
        Tree::Accounts,
        Tree::Submissions,
    ];

    /// The tree's number in segment records (its place in [`Tree::ALL`], which only grows at
    /// its end).
    pub fn index(self) -> u8 {
        Self::ALL.iter().position(|t| *t == self).unwrap_or(0) as u8
    }

    /// The tree of a number from [`Tree::index`].
    pub fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(usize::from(i)).copied()
    }

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
            Self::Sent => "sent",
            Self::Pending => "pending",
            Self::Outcomes => "outcomes",
            Self::Accounts => "accounts",
            Self::Submissions => "submissions",
        }
    }
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

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
    /// A compaction's move ([`Store::compact_blocking`]): the value becomes `to` only if it is
    /// still `from` (a segment reference) and no earlier write of the same batch touched it; a
    /// value deleted or rewritten since the move was read stays as it is. The writer decides,
    /// as it applies the batch.
    Relocate {
        /// The owner's tree.
        tree: Tree,
        /// The owner's key.
        key: Vec<u8>,
        /// The reference read.
        from: Vec<u8>,
        /// The reference to the copy.
        to: Vec<u8>,
    },
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
    /// The run of the node (an id drawn at each start) that stored it; 0 for records stored
    /// before runs were named. A record counts as received in the run that wrote it only once
    /// its commit is answered ([`crate::delivery::Inbox`]).
    #[serde(default)]
    pub run: u64,
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

/// The writes that store outbox entry `e`: the entry, and its place in [`Tree::Pending`] while
/// it is neither delivered, rejected nor expired, in [`Tree::Outcomes`] once it is (an entry
/// never leaves a terminal state, so its outcome key never changes). Every write of an entry
/// goes through here, so the indexes and the entries agree in every commit.
pub fn entry_write(e: &Entry) -> Vec<Op> {
    let key = pair_key(e.packet_id, &e.recipient);
    match e.retention_from() {
        Some(from) => vec![
            Op::Delete(Tree::Pending, pending_key(e)),
            Op::Put(Tree::Outcomes, outcome_key(&e.recipient, from, e.packet_id), Vec::new()),
            put(Tree::Outbox, key, e),
        ],
        None => vec![Op::Put(Tree::Pending, pending_key(e), Vec::new()), put(Tree::Outbox, key, e)],
    }
}

/// The key of a pending entry in [`Tree::Pending`]: its lane (FLASH 0, URGENT 1, ROUTINE 2: a
/// start loads FLASH copies first; an entry's lane never changes), then its pair key.
pub fn pending_key(e: &Entry) -> Vec<u8> {
    [&[e.priority.rank()], pair_key(e.packet_id, &e.recipient).as_slice()].concat()
}

/// The key of a terminal entry in [`Tree::Outcomes`]: [`outcome_prefix`] of its recipient, the
/// time its retention counts from ([`Entry::retention_from`], big-endian: in time order), its
/// packet id.
pub fn outcome_key(recipient: &NodeId, from: Millis, packet_id: PacketId) -> Vec<u8> {
    [outcome_prefix(recipient).as_slice(), &from.to_be_bytes(), packet_id.as_bytes()].concat()
}

/// Where a recipient's outcomes start: its node id and a zero byte (no node id holds one, so
/// `IT-DCS`'s are not among `IT-DCSA`'s).
pub fn outcome_prefix(recipient: &NodeId) -> Vec<u8> {
    [recipient.as_str().as_bytes(), &[0]].concat()
}

/// The outcome time and packet id of an outcome key under `prefix` ([`outcome_prefix`]).
pub fn parse_outcome_key(prefix: &[u8], key: &[u8]) -> Option<(Millis, PacketId)> {
    let rest = key.strip_prefix(prefix)?;
    let from = Millis::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let id: [u8; 16] = rest.get(8..)?.try_into().ok()?;
    Some((from, PacketId::from_bytes(id)))
}

/// The key of `officer`'s acknowledgement at `node` of `packet_id` (in [`Tree::Reads`]): the
/// pair key, a zero byte (no node id holds one), the officer.
pub fn read_key(packet_id: PacketId, node: &NodeId, officer: &OfficerId) -> Vec<u8> {
    [reads_prefix(&pair_key(packet_id, node)).as_slice(), officer.as_str().as_bytes()].concat()
}

/// Where the acknowledgements of the copy under pair key `pair` start in [`Tree::Reads`]: the
/// pair key and its zero byte (a shorter node id's, `IT-DCS`, are not among `IT-DCSA`'s).
pub fn reads_prefix(pair: &[u8]) -> Vec<u8> {
    [pair, &[0]].concat()
}

/// The write that records `officer`'s acknowledgement at `node` of `packet_id`, read at `at`.
pub fn put_read(packet_id: PacketId, node: &NodeId, officer: &OfficerId, at: Millis) -> Op {
    Op::Put(Tree::Reads, read_key(packet_id, node, officer), at.to_be_bytes().to_vec())
}

/// The owner of the store: a handle to its writer thread, and direct read access.
#[derive(Clone)]
pub struct Store {
    /// Shared by every handle: [`Store::close`] takes it, and the writer stops.
    tx: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    backend: Arc<dyn Backend>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The audit chain's head as of the last successful flush (what a checkpoint may sign).
    durable: Arc<Mutex<audit::Head>>,
    /// What the writer shares with the handles: space rules and state, whether it is stuck.
    shared: Arc<Shared>,
    /// Where large values go (sled stores only; tests' in-memory stores keep every value inline).
    segments: Option<Arc<Streams>>,
}

/// A value as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the tree.
    Inline(Vec<u8>),
    /// In a segment file.
    External(BlobRef),
}

/// The store's condition, as `GET /v1/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// The disk's state now.
    pub space: SpaceState,
    /// Bytes free on the store's file system, if the backend can tell.
    pub free_bytes: Option<u64>,
    /// Bytes the store keeps free ([`Headroom`]).
    pub headroom_bytes: u64,
    /// How long the write in progress has taken, if one has for more than a second (ms).
    pub stuck_ms: Option<u64>,
    /// How long every write has failed, if the last one failed (ms).
    pub failing_ms: Option<u64>,
}

/// A write that has not completed for this long is taken as stuck: further commits are refused
/// at once ([`StoreError::Stuck`]) instead of queuing behind it.
pub const STUCK_AFTER_MS: u64 = 30_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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

impl Store {
    /// Opens a sled store in `dir` (large values in `dir/segments`), checking (or writing) the
    /// format version; segment files nothing refers to any more are deleted.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_sized(dir, segments::SEGMENT_BYTES)
    }

    /// [`Store::open`] with segment files of about `segment_bytes` (tests make many small ones).
    pub fn open_sized(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(dir)?);
        // The format first: a store this build does not read is refused before anything of it,
        // segment files included, is touched.
        check_format(&*backend)?;
        let segments = Arc::new(Streams::open_sized(&dir.join("segments"), segment_bytes)?);
        // Nothing writes yet: what no reference points into can go now. (A failure here costs
        // disk space, not the start: it is said, and the next reclaims go on.)
        if let Err(e) = segments.reclaim(&*backend, None, None) {
            tracing::warn!(error = %e, "segment files could not be reclaimed at open");
        }
        Self::start(backend, Some(segments))
    }

    /// A store over any backend, every value inline. Starts the writer thread.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Self, StoreError> {
        Self::start(backend, None)
    }

    fn start(backend: Arc<dyn Backend>, segments: Option<Arc<Streams>>) -> Result<Self, StoreError> {
        check_format(&*backend)?;
        let head = match backend.get(Tree::Meta, AUDIT_HEAD)? {
            Some(v) => decode(Tree::Meta, &v)?,
            None => audit::Head::GENESIS,
        };
        Self::spawn_writer(backend, segments, head)
    }

    fn spawn_writer(
        backend: Arc<dyn Backend>,
        segments: Option<Arc<Streams>>,
        head: audit::Head,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let durable = Arc::new(Mutex::new(head));
        let shared = Arc::new(Shared {
            headroom: AtomicU64::new(Headroom::DEFAULT.bytes),
            space: AtomicU8::new(SpaceState::Ok.to_u8()),
            busy_since: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            stuck_after_ms: AtomicU64::new(STUCK_AFTER_MS),
            essential_pending: AtomicUsize::new(0),
            reserved: AtomicU64::new(0),
            candidates: Mutex::default(),
            liveness: Mutex::default(),
            liveness_generation: AtomicU64::new(0),
            batch_lock: Mutex::default(),
            failures: AtomicU64::new(0),
        });
        let b = backend.clone();
        let writer = std::thread::Builder::new()
            .name("liaison-store".into())
            .spawn({
                let durable = durable.clone();
                let shared = shared.clone();
                move || writer_loop(&*b, &rx, head, &durable, &shared)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the store thread: {e}")))?;
        Ok(Self {
            tx: Arc::new(Mutex::new(Some(tx))),
            backend,
            writer: Arc::new(Mutex::new(Some(writer))),
            durable,
            shared,
            segments,
        })
    }

    /// Deletes the segment files no stored value refers to any more, among those whose
    /// references committed batches overwrote or deleted since the last call (the newest, and
    /// those with records being committed, are looked at again next time). Reads the segments'
    /// record owners on the blocking pool; commits go on meanwhile. Returns how many segments
    /// went.
    pub async fn reclaim(&self) -> Result<usize, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reclaim_blocking())
            .await
            .map_err(|e| StoreError::Backend(format!("reclaim task: {e}")))?
    }

    /// [`Store::reclaim`] for callers outside an async runtime.
    pub fn reclaim_blocking(&self) -> Result<usize, StoreError> {
        let Some(segments) = &self.segments else { return Ok(0) };
        // After a failed batch what is on disk may differ from what reads show (a partly
        // durable flush, an undo that failed): nothing is deleted until a batch is flushed again.
        if self.shared.failing_since.load(Ordering::Relaxed) != 0 {
            return Ok(0);
        }
        let candidates = std::mem::take(&mut *self.shared.candidates.lock().map_err(|_| StoreError::Closed)?);
        if candidates.is_empty() {
            return Ok(0);
        }
        let gate = segments::Gate {
            lock: &self.shared.batch_lock,
            failures: &self.shared.failures,
            failing_since: &self.shared.failing_since,
        };
        let done = match segments.reclaim(&*self.backend, Some(&candidates), Some(&gate)) {
            Ok(d) => d,
            Err(e) => {
                if let Ok(mut c) = self.shared.candidates.lock() {
                    c.extend(candidates);
                }
                return Err(e);
            }
        };
        let mut gone = 0;
        if let Ok(mut c) = self.shared.candidates.lock() {
            for (stream, r) in done {
                gone += r.gone.len();
                c.extend(r.later.into_iter().map(|id| (stream, id)));
            }
        }
        if gone > 0 {
            tracing::info!(segments = gone, "segment files nothing refers to any more deleted");
        }
        Ok(gone)
    }

    /// Bytes the segment files take (0 without segments).
    pub fn segment_bytes(&self) -> u64 {
        self.segments.as_ref().map_or(0, |s| s.bytes())
    }

    /// Sets the space the store keeps free on its disk (see [`space`]).
    pub fn set_headroom(&self, headroom: Headroom) {
        self.shared.headroom.store(headroom.bytes, Ordering::Relaxed);
    }

    /// The store's condition now: free space (read again), whether a write is stuck or every
    /// write fails.
    pub fn health(&self) -> Health {
        let headroom = Headroom { bytes: self.shared.headroom.load(Ordering::Relaxed) };
        let free_bytes = self.backend.free_bytes();
        let now = now_ms();
        let since = |a: &AtomicU64, min: u64| {
            let t = a.load(Ordering::Relaxed);
            (t != 0 && now.saturating_sub(t) >= min).then(|| now.saturating_sub(t))
        };
        Health {
            space: free_bytes
                .map_or_else(|| SpaceState::from_u8(self.shared.space.load(Ordering::Relaxed)), |f| headroom.state(f)),
            free_bytes,
            headroom_bytes: headroom.bytes,
            stuck_ms: since(&self.shared.busy_since, 1_000),
            failing_ms: since(&self.shared.failing_since, 0),
        }
    }

    /// Applies `ops` and returns once they are flushed to disk (group commit with any concurrent
    /// callers). An [`Class::Essential`] commit: see [`Store::commit_as`] for bulk.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).durable().await
    }

    /// [`Store::commit`] of a commit of `class` (what it may use of the headroom). Large values
    /// go to the segment files first (written and synced on the blocking pool, apart from the
    /// writer), so the commit itself stays small: a FLASH commit's flush never carries megabytes.
    pub async fn commit_as(&self, class: Class, ops: Vec<Op>) -> Result<(), StoreError> {
        let Some(segments) = self.segments.clone() else { return self.enqueue_as(class, ops).durable().await };
        let (mut ops, large) = take_large(ops);
        if large.is_empty() {
            return self.enqueue_as(class, ops).durable().await;
        }
        // The space the records take is checked here, as the writer checks the commit's, and
        // counted as used until the commit is answered.
        let bytes: u64 = large.iter().map(|(_, _, k, v)| (v.len() + k.len()) as u64 + 11).sum();
        let headroom = Headroom { bytes: self.shared.headroom.load(Ordering::Relaxed) };
        let reserved = self.shared.reserved.fetch_add(bytes, Ordering::SeqCst);
        let _reservation = Reservation(&self.shared.reserved, bytes);
        if let Some(free) = self.backend.free_bytes().map(|f| f.saturating_sub(reserved)) {
            set_space(&self.shared, headroom.state(free), free, headroom);
            let kept = headroom.kept_for(class);
            if free.saturating_sub(bytes) < kept {
                return Err(StoreError::Full { class, free, kept });
            }
        }
        let shared = self.shared.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let give_way = || shared.give_way();
            let pace: Option<&dyn Fn()> = (class == Class::Bulk).then_some(&give_way as &dyn Fn());
            // One append per set of segments; each value's reference lands at its index.
            let mut refs: Vec<Option<BlobRef>> = vec![None; large.len()];
            let mut written = Vec::new();
            for stream in Stream::ALL {
                let mine: Vec<usize> = (0..large.len()).filter(|k| Stream::of(large[*k].1) == stream).collect();
                if mine.is_empty() {
                    continue;
                }
                let records: Vec<Record<'_>> =
                    mine.iter().map(|k| Record { tree: large[*k].1, key: &large[*k].2, value: &large[*k].3 }).collect();
                let w = segments.get(stream).append_paced(&records, pace)?;
                for (k, r) in mine.iter().zip(w.refs()) {
                    refs[*k] = Some(*r);
                }
                written.push(w);
            }
            let at: Vec<(usize, BlobRef)> =
                large.iter().zip(refs).filter_map(|((i, ..), r)| r.map(|r| (*i, r))).collect();
            Ok::<_, StoreError>((at, written))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("segment write task: {e}")))?;
        let (at, written) = match appended {
            Ok(a) => a,
            Err(StoreError::Full { .. }) => {
                let free = self.backend.free_bytes().unwrap_or(0);
                return Err(StoreError::Full { class, free, kept: headroom.kept_for(class) });
            }
            Err(e) => return Err(e),
        };
        for (i, r) in at {
            if let Op::Put(_, _, v) = &mut ops[i] {
                *v = r.encode();
            }
        }
        let result = self.enqueue_as(class, ops).durable().await;
        // Answered: the records are referenced (or not), and may be reclaimed by the rules;
        // those of a commit that failed are nobody's, and their segments worth a look.
        if result.is_err() {
            if let Ok(mut c) = self.shared.candidates.lock() {
                c.extend(written.iter().flat_map(|w| w.refs().iter().map(|r| (r.stream, r.segment))));
            }
        }
        drop(written);
        result
    }

    /// Hands `ops` to the writer now and returns what to wait on. The writer applies commits in
    /// the order they were enqueued: a caller that takes a snapshot of some state and enqueues
    /// it under the lock that guards the state knows that no older snapshot lands after it.
    pub fn enqueue(&self, ops: Vec<Op>) -> Pending {
        self.enqueue_as(Class::Essential, ops)
    }

    /// [`Store::enqueue`] of a commit of `class`.
    pub fn enqueue_as(&self, class: Class, ops: Vec<Op>) -> Pending {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if class == Class::Essential {
            self.shared.essential_pending.fetch_add(1, Ordering::Relaxed);
        }
        match self.send(Job::Commit(Commit { ops, class, reply })) {
            Ok(()) => Pending(Ok(rx)),
            Err(e) => {
                if class == Class::Essential {
                    self.shared.essential_pending.fetch_sub(1, Ordering::Relaxed);
                }
                Pending(Err(e))
            }
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        // A stuck writer would never answer: refuse at once rather than queue without end.
        let busy = self.shared.busy_since.load(Ordering::Relaxed);
        let waited = now_ms().saturating_sub(busy);
        if busy != 0 && waited >= self.shared.stuck_after_ms.load(Ordering::Relaxed) {
            return Err(StoreError::Stuck { secs: waited / 1000 });
        }
        let tx = self.tx.lock().map_err(|_| StoreError::Closed)?;
        tx.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)
    }

    /// [`Store::commit`] for callers outside an async runtime.
    pub fn commit_blocking(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).durable_blocking()
    }

    /// One committed value (read from its segment if it lives in one).
    pub fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.backend.get(tree, key)? {
            Some(v) => self.resolve_at(tree, key, v),
            None => Ok(None),
        }
    }

    /// A committed value as stored: inline, or where it lives in a segment (to read it with
    /// [`Store::read_external`] where a read of megabytes holds nothing up).
    pub fn get_stored(&self, tree: Tree, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        Ok(self.backend.get(tree, key)?.map(|v| match BlobRef::decode(tree, &v) {
            Some(r) => Stored::External(r),
            None => Stored::Inline(v),
        }))
    }

    /// The value a segment reference read from `tree`/`key` points to (`None` if the key was
    /// deleted since): read again from the key if the record was moved meanwhile
    /// ([`Store::resolve_at`]).
    pub fn read_external(&self, tree: Tree, key: &[u8], r: &BlobRef) -> Result<Option<Vec<u8>>, StoreError> {
        self.resolve_at(tree, key, r.encode())
    }

    /// Up to `limit` committed keys of `tree` after `after` (from the first if `None`), in key
    /// order, without reading their values: a walk in pages.
    pub fn keys_after(&self, tree: Tree, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.backend.keys_after(tree, after, limit)
    }

    /// Committed values under a key prefix (read from their segments where they live in one).
    pub fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let kvs = self.backend.scan(tree, prefix)?;
        if !holds_large(tree) {
            return Ok(kvs);
        }
        let mut resolved = Vec::with_capacity(kvs.len());
        for (k, v) in kvs {
            if let Some(v) = self.resolve_at(tree, &k, v)? {
                resolved.push((k, v));
            }
        }
        Ok(resolved)
    }

    /// `v`, as stored under `tree`/`key`, resolved. A reference whose record cannot be read is
    /// read again from its key, once: compaction may have moved the record, and its old segment
    /// may be gone, between the two reads (`None`: the key was deleted meanwhile). A record
    /// still referenced that cannot be read is an error.
    fn resolve_at(&self, tree: Tree, key: &[u8], v: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        if BlobRef::decode(tree, &v).is_none() {
            return Ok(Some(v));
        }
        match self.resolve(tree, v.clone()) {
            Ok(value) => Ok(Some(value)),
            Err(e) => match self.backend.get(tree, key)? {
                None => Ok(None),
                Some(now) if now != v => self.resolve(tree, now).map(Some),
                Some(_) => Err(e),
            },
        }
    }

    /// A stored value as it was committed: a reference is read from its segment.
    fn resolve(&self, tree: Tree, v: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if !holds_large(tree) {
            return Ok(v);
        }
        match (BlobRef::decode(tree, &v), &self.segments) {
            (None, _) => Ok(v),
            (Some(r), Some(s)) => s.read(&r),
            (Some(_), None) => Err(StoreError::Corrupt {
                tree: tree.name(),
                reason: "a segment reference in a store without segments".into(),
            }),
        }
    }

    /// The outbox entries not yet delivered, rejected or expired (for
    /// [`crate::delivery::Outbox::restore`] at start-up), found through [`Tree::Pending`]: a start
    /// reads none of the terminal entries, however many are kept.
    pub fn pending_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let keys: Vec<Vec<u8>> = self.scan(Tree::Pending, &[])?.into_iter().map(|(k, _)| k).collect();
        self.pending_at(&keys, false)
    }

    /// Up to `limit` pending entries after the index key `after` (from the first if `None`),
    /// FLASH first, and the last index key read (`None` at the end): a start's walk in pages
    /// ([`crate::node::Node::start`] loads the outbox behind the node's start). An entry that
    /// cannot be decoded is left on disk and said in the log (the walk goes on past it); a
    /// read that fails is an error (the page is read again).
    pub fn pending_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>), StoreError> {
        let keys = self.keys_after(Tree::Pending, after, limit)?;
        Ok((self.pending_at(&keys, true)?, keys.last().cloned()))
    }

    /// The entries listed under `keys` of [`Tree::Pending`]; with `skip_corrupt`, one that
    /// cannot be decoded is logged and left out instead of failing them all.
    fn pending_at(&self, keys: &[Vec<u8>], skip_corrupt: bool) -> Result<Vec<Entry>, StoreError> {
        // Reading and decoding is most of a restart's time (a few us an entry): spread over the
        // cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let chunk = keys.len().div_ceil(threads).max(256);
        let read: Vec<Result<Vec<Entry>, StoreError>> = std::thread::scope(|s| {
            let workers: Vec<_> = keys
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut v = Vec::with_capacity(part.len());
                        for k in part {
                            // Listed and gone: a key left by a write that failed half-way
                            // (sled is not atomic across a crash); nothing to send.
                            match self.outbox_entry_at(k.get(1..).unwrap_or_default()) {
                                Ok(Some(e)) => v.push(e),
                                Ok(None) => {}
                                Err(e @ StoreError::Corrupt { .. }) if skip_corrupt => {
                                    tracing::error!(error = %e, key = ?k, "an outbox entry cannot be read: left on disk, not sent");
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(v)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(StoreError::Backend("reading thread panicked".into()))))
                .collect()
        });
        let mut entries = Vec::with_capacity(keys.len());
        for part in read {
            entries.extend(part?);
        }
        Ok(entries)
    }

    /// The stored entry of the copy of `packet_id` for `recipient`, with its officers'
    /// acknowledgements.
    pub fn outbox_entry(&self, packet_id: PacketId, recipient: &NodeId) -> Result<Option<Entry>, StoreError> {
        self.outbox_entry_at(&pair_key(packet_id, recipient))
    }

    /// Every stored entry of `packet_id` (one per recipient), in recipient order, with their
    /// acknowledgements.
    pub fn outbox_entries_of(&self, packet_id: PacketId) -> Result<Vec<Entry>, StoreError> {
        let mut v = Vec::new();
        for (k, val) in self.scan(Tree::Outbox, packet_id.as_bytes())? {
            v.push(self.with_reads(&k, decode(Tree::Outbox, &val)?)?);
        }
        Ok(v)
    }

    /// Terminal entries of `recipient` kept longer than `keep` at `now`, oldest first, at most
    /// `limit`: their packet ids and outcome keys (what [`crate::delivery::sender::retention_ops`]
    /// deletes). A walk of [`Tree::Outcomes`] that stops at the first entry still kept.
    pub fn past_retention(
        &self,
        recipient: &NodeId,
        now: Millis,
        keep: Millis,
        limit: usize,
    ) -> Result<Vec<(PacketId, Vec<u8>)>, StoreError> {
        let prefix = outcome_prefix(recipient);
        let mut past = Vec::new();
        let mut after = prefix.clone();
        'walk: while past.len() < limit {
            let page = self.keys_after(Tree::Outcomes, Some(&after), 256)?;
            for k in &page {
                if !k.starts_with(&prefix) {
                    break 'walk;
                }
                let Some((from, id)) = parse_outcome_key(&prefix, k) else {
                    return Err(StoreError::Corrupt {
                        tree: Tree::Outcomes.name(),
                        reason: format!("a malformed key under {recipient}"),
                    });
                };
                if from.saturating_add(keep) >= now || past.len() >= limit {
                    break 'walk;
                }
                past.push((id, k.clone()));
            }
            match page.last() {
                Some(last) if page.len() == 256 => after = last.clone(),
                _ => break,
            }
        }
        Ok(past)
    }

    fn outbox_entry_at(&self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.get(Tree::Outbox, key)? {
            Some(v) => Ok(Some(self.with_reads(key, decode(Tree::Outbox, &v)?)?)),
            None => Ok(None),
        }
    }

    /// `e` (stored under `key`) with the acknowledgements kept apart from it in [`Tree::Reads`]
    /// (older stores kept them in the entry only; both are merged, in time order).
    fn with_reads(&self, key: &[u8], mut e: Entry) -> Result<Entry, StoreError> {
        let prefix = reads_prefix(key);
        for (k, v) in self.scan(Tree::Reads, &prefix)? {
            let officer: Option<OfficerId> = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|o| o.parse().ok());
            let at = v.as_slice().try_into().ok().map(Millis::from_be_bytes);
            let (Some(officer), Some(at)) = (officer, at) else {
                // One bad acknowledgement does not keep its copy from being sent or shown.
                tracing::error!(key = ?k, "a malformed acknowledgement: left out");
                continue;
            };
            if !e.reads.iter().any(|(o, _)| *o == officer) {
                e.reads.push((officer, at));
            }
        }
        e.reads.sort_by_key(|(_, at)| *at);
        e.reads.truncate(MAX_READS);
        Ok(e)
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
        keys: &[ed25519_dalek::VerifyingKey],
    ) -> Result<Result<audit::Verified, audit::Broken>, StoreError> {
        let head = self.audit_head()?;
        let mut entries = self.scan(Tree::Audit, &[])?;
        entries.retain(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).map_or(true, |b| u64::from_be_bytes(b) <= head.seq));
        let checkpoints = self.audit_checkpoints()?;
        Ok(audit::verify(audit::Head::GENESIS, &entries, Some(head), &checkpoints, node, keys))
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
    ///
    /// A writer stuck in a write the disk never completes is not waited for beyond
    /// [`CLOSE_WAIT`]: the node must still stop (what was not flushed was not acknowledged).
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::error!(
                    waited_s = CLOSE_WAIT.as_secs(),
                    "the store's writer is stuck in a write the disk does not complete; closing without it"
                );
            }
        }
    }
}

/// How long [`Store::close`] waits for the writer to finish its last batch.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An `Op::Put` of a CBOR-encoded value.
pub fn put<T: Serialize>(tree: Tree, key: Vec<u8>, value: &T) -> Op {
    Op::Put(tree, key, encoding::to_cbor(value))
}

/// Decodes a stored CBOR value.
pub fn decode<T: serde::de::DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T, StoreError> {
    encoding::from_cbor_exact(bytes, usize::MAX)
        .map_err(|e| StoreError::Corrupt { tree: tree.name(), reason: e.to_string() })
}

/// The Meta key of the audit chain's head.
const AUDIT_HEAD: &[u8] = b"audit_head";

#[cfg(test)]
mod tests;
