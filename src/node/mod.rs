//! The node runtime: drives the delivery core with QUIC, the store and the clock.
//!
//! This is the I/O shell around [`crate::delivery`]: it moves bytes and time into the state
//! machines and carries out what they ask. It never decides delivery policy itself.
//!
//! To each partner, the node keeps one connection and on it one long-lived bidirectional stream
//! per priority lane (see [`crate::wire`]). A lane writes sealed copies as frames, up to
//! [`crate::delivery::WINDOW`] of them ahead of their receipts; the receiver reads what has arrived, commits the
//! whole batch with one flush, and answers with one sealed, signed `DeliveryReceipt` listing
//! every copy of the batch. The FLASH lane's stream has the highest QUIC stream priority, so a
//! FLASH alert is not stuck behind a large ROUTINE copy on the same connection.
//!
//! Durability, in order:
//! - submit: the sealed copies and their outbox entries are committed (flushed) before the
//!   packet id is returned and before anything is sent;
//! - receive: the packets of a batch and the receipt are committed before the receipt leaves
//!   the node;
//! - receipt at the sender: stored (with the new entry states) as soon as it is verified.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit};

use crate::limits::{Limits, MemoryBudget, PartnerLimits};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit::{Checkpoint, Event as AuditEvent, Head as AuditHead};
use crate::deadlines::{Deadline, Deadlines, Flow, Role};
use crate::delivery::receiver::timestamp_of;
pub use crate::delivery::submit::{Refused, SentCopy, Submitted};
use crate::delivery::{Entry, Inbox, Incoming, Millis, RetryPolicy, Sender, Transmit};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;
use crate::packet::{Body, Packet, ReceiptItem, MAX_RECEIPT_ITEMS};
use crate::policy::PolicyBook;
use crate::seal::{OpenError, SealContext, SignedPacket, MAX_SEALED_BYTES};
use crate::store::{self, pair_key, InboxRecord, Op, Store, StoreError, Tree};
use crate::timestamp::Timestamp;
use crate::transport::{self, TlsMaterial};
use crate::wire;

mod admin;
mod bulk;
mod inbound;
pub mod links;
mod listing;
mod outbound;
mod partners;
mod peer;
mod queries;
mod rotation;
use partners::PartnerState;
pub use partners::{AdminLock, Enrolment, PartnerSet};
pub use queries::{consents_about, held};
pub use rotation::Announced;

/// Largest receipt frame accepted from a partner: a receipt of [`MAX_RECEIPT_ITEMS`] copies,
/// each with a rejection reason, with room to spare.
const MAX_RECEIPT_FRAME: usize = 4 << 20;

/// Slow reads (see [`Node::slow`]) running at once.
pub const SLOW_SLOTS: usize = 2;

/// A receiving lane closes a batch (commits and receipts it) at this many bytes, so large
/// copies are receipted one or two at a time and the sender sees steady progress.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Why the node failed, or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed; nothing of the request was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The packet could not be sealed (invalid, not ours, unknown recipient...).
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// A recipient is not an enrolled partner of this node.
    #[error("{0} is not a partner of this node")]
    NotAPartner(NodeId),
    /// No such packet.
    #[error("no packet {0}")]
    UnknownPacket(PacketId),
    /// Several partners sent a packet with this id (a collision, or one squatting another's
    /// id): say whose.
    #[error("packet id {packet} was used by {}: name the sender", .senders.iter().map(NodeId::as_str).collect::<Vec<_>>().join(" and "))]
    Ambiguous {
        /// The packet id.
        packet: PacketId,
        /// Who sent a packet with it.
        senders: Vec<NodeId>,
    },
    /// This officer's acknowledgement is already recorded, or as many as are kept.
    #[error("{0}")]
    AckRefused(String),
    /// The node named is not a recipient of the packet.
    #[error("{node} is not a recipient of {packet}")]
    NotARecipient {
        /// The packet.
        packet: PacketId,
        /// The node.
        node: NodeId,
    },
    /// A consent for a holder whose copy is not delivered: it would reach a node that does not
    /// hold the packet, which refuses it.
    #[error("{node} does not hold {packet} yet (its copy is {state}); consent once it is delivered")]
    NotDelivered {
        /// The packet.
        packet: PacketId,
        /// The holder.
        node: NodeId,
        /// Where its copy stands.
        state: &'static str,
    },
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// A change of partners was refused (a partner without keys, keys that clash, a partner
    /// of the configuration file removed through the API...); nothing changed.
    #[error("partner change refused: {0}")]
    PartnerChange(String),
    /// Binding the UDP socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored signed packet no longer verifies (keyring changed, or corruption).
    #[error("stored packet {0} does not verify: {1}")]
    Evidence(PacketId, OpenError),
    /// The sharing policy refuses the packet for every recipient; nothing was sent.
    #[error("refused by policy: {}", .0.iter().map(|r| format!("{}: {}", r.recipient, r.denial)).collect::<Vec<_>>().join("; "))]
    Denied(Vec<Refused>),
    /// A packet with this id was already submitted (a draft may carry its own id).
    #[error(
        "packet id {0} was already used for a packet this node sent; see its status, or send a new draft without an id"
    )]
    IdInUse(PacketId),
    /// The work on a large packet failed on the bulk pool (it panicked, or the pool is gone).
    #[error(transparent)]
    Pool(#[from] bulk::BulkError),
}

/// A partner node: its id and where to reach it.
#[derive(Debug, Clone)]
pub struct Partner {
    /// The partner's node id.
    pub node: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// What the runtime needs, already validated and loaded.
pub struct NodeConfig {
    /// Keys and keyring.
    pub seal: SealContext,
    /// TLS material.
    pub tls: TlsMaterial,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// An already bound socket to use instead of binding `listen` (tests bind first to learn
    /// their port).
    pub socket: Option<std::net::UdpSocket>,
    /// The store, opened by the caller: sled in a data directory ([`Store::open`]) in
    /// production, any [`crate::store::Backend`] in tests and the simulation.
    pub store: Store,
    /// Enrolled partners.
    pub partners: Vec<Partner>,
    /// The sharing policies with the partners (a partner without one gets and sends nothing).
    pub policies: PolicyBook,
    /// Retry spacing.
    pub retry: RetryPolicy,
    /// What each partner may make this node hold or do.
    pub limits: Limits,
    /// How QUIC paces sending under loss, and which TLS key exchange it does.
    pub transport: transport::Options,
    /// Where partners enrolled through the API are written ([`crate::enrolment`]); `None`: this
    /// node takes enrolments from its files only.
    pub partners_dir: Option<std::path::PathBuf>,
}

/// Per-recipient status of a packet this node sent.
pub type Status = Vec<Entry>;

/// A running node. Cheap to clone; every clone drives the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    /// This node's keys and the keyring: replaced whole when partners change (read with
    /// [`Node::seal`]).
    seal: std::sync::RwLock<Arc<SealContext>>,
    store: Store,
    /// The partners, each with its sender machine, link and budgets ([`PartnerState`]): added
    /// and removed while the node runs ([`Node::set_partners`]). (Copies queued for a former
    /// partner stay on disk, and go out if it is enrolled again.)
    partners: std::sync::RwLock<HashMap<NodeId, Arc<PartnerState>>>,
    /// Where partners enrolled through the API are written.
    partners_dir: Option<std::path::PathBuf>,
    /// One change of partners or TLS material at a time ([`Node::admin_lock`]).
    admin: tokio::sync::Mutex<()>,
    /// Removed partners whose tasks had not ended 10 s after: not enrolled again before they
    /// have.
    draining: Mutex<HashMap<NodeId, Arc<PartnerState>>>,
    /// Each partner's latest announcement of its keys ([`rotation`]).
    announced: Mutex<HashMap<NodeId, Announced>>,
    /// The TLS material in force (the server side is built again when partners change).
    tls: std::sync::RwLock<Arc<TlsMaterial>>,
    inbox: Mutex<Inbox>,
    endpoint: quinn::Endpoint,
    /// The client side of TLS, replaced on a reload (connections are dialled with it).
    client: std::sync::RwLock<quinn::ClientConfig>,
    /// Bumped when the TLS material is reloaded: every live connection is closed and made again
    /// under the new material (a revoked partner cannot come back).
    tls_generation: watch::Sender<u64>,
    /// Cancelled when the node stops: every loop watches it.
    cancel: tokio_util::sync::CancellationToken,
    /// Every task the node starts, so that shutdown can wait for each to finish.
    tasks: tokio_util::task::TaskTracker,
    /// Slots for slow reads (whole-trail verification, exports, full listings): they run on the
    /// blocking pool, at most this many at once, never on the async workers.
    slow: Arc<tokio::sync::Semaphore>,
    /// Swapped whole on a reload; readers take the `Arc` and keep a consistent book.
    policies: std::sync::RwLock<Arc<PolicyBook>>,
    deadlines: Mutex<Deadlines>,
    /// Requests whose deadlines a commit has staged and not yet put in force: another commit
    /// touching one of them waits (see [`Deadlines::touched`]); others go on, group-committed.
    deadlines_busy: Mutex<std::collections::HashSet<PacketId>>,
    /// Wakes commits waiting for a request's deadline.
    deadlines_freed: Notify,
    /// Bumped whenever receipts were applied: wakes whoever waits for a packet's outcome.
    receipts_applied: watch::Sender<u64>,
    limits: Limits,
    /// Retry spacing (for the machines of partners enrolled while the node runs).
    retry: RetryPolicy,
    /// How QUIC paces sending under loss (kept for TLS reloads).
    transport: transport::Options,
    /// Acknowledgements read, change and write an inbox record: one at a time.
    acks: tokio::sync::Mutex<()>,
    /// Officers' accounts (the web workspace's sign-in).
    accounts: crate::accounts::Accounts,
    /// Packets stored in the inbox, as they are (for the web workspace's live alerts; a
    /// listener that falls behind is told it lagged and reloads).
    arrivals: tokio::sync::broadcast::Sender<Arrival>,
    /// The inbox listing of the web workspace ([`listing`]).
    listing: listing::Listing,
    /// Submit to verified receipt stored, per delivered copy (`GET /metrics`).
    receipt_latency: crate::metrics::Histogram,
    /// When the TLS material in force stops being usable ([`TlsMaterial::expiries`]).
    expiries: std::sync::RwLock<Vec<(&'static str, String, crate::timestamp::Timestamp)>>,
}

/// Arrivals a slow listener may fall behind by before it is told it lagged.
const ARRIVALS_KEPT: usize = 1024;

/// A packet just stored in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The packet.
    pub id: PacketId,
    /// Its sender.
    pub from: NodeId,
}

/// The node's clock, in ms since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the state machines hold no invariant
    // that a half-finished call could break, so carry on with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Node {
    /// Reserves the deadlines of the requests `packets` touch until the guard is dropped
    /// (after the commit and the apply), waiting while another commit holds one of them.
    async fn reserve_deadlines<'a>(&self, packets: impl IntoIterator<Item = &'a Packet>) -> DeadlineReservation {
        let ids: Vec<PacketId> = {
            let deadlines = lock(&self.inner.deadlines);
            packets.into_iter().flat_map(|p| deadlines.touched(p)).collect()
        };
        loop {
            let freed = self.inner.deadlines_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut busy = lock(&self.inner.deadlines_busy);
                if ids.iter().all(|id| !busy.contains(id)) {
                    busy.extend(ids.iter().copied());
                    return DeadlineReservation { inner: self.inner.clone(), ids };
                }
            }
            freed.await;
        }
    }

    /// This node's keys and the keyring now in force.
    pub fn seal(&self) -> Arc<SealContext> {
        self.inner.seal.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Opens the store, restores the outbox and the deadlines, binds the endpoint, and starts
    /// the accept loop and one sender per partner. Runs until `shutdown` becomes `true`.
    pub async fn start(config: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<Node, NodeError> {
        let me = *config.seal.node();
        let store = config.store;
        let now = now_ms();
        // The outbox is loaded behind the start (`Node::load_outbox`): a start with a million
        // copies queued listens at once, and FLASH copies are loaded first.
        let Restored { mut senders, deadlines } =
            restore_with(&store, config.partners.iter().map(|p| p.node), config.retry, now, false)?;
        let enrolled: Vec<NodeId> = config.partners.iter().map(|p| p.node).collect();
        let server = transport::server_config(&config.tls, &enrolled, refusals_logged(), config.transport)?;
        let client = transport::client_config(&config.tls, config.transport)?;
        let bind = |source| NodeError::Bind { addr: config.listen, source };
        let socket = match config.socket {
            Some(s) => s,
            None => std::net::UdpSocket::bind(config.listen).map_err(bind)?,
        };
        let runtime = quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime")))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(bind)?;
        endpoint.set_default_client_config(client.clone());
        let accounts = crate::accounts::Accounts::load(store.clone(), &me)?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let partners = config
            .partners
            .iter()
            .filter_map(|p| {
                let sender = senders.remove(&p.node)?;
                Some((p.node, PartnerState::new(p, sender, &config.policies, &config.limits, &cancel, now)))
            })
            .collect();
        let node = Node {
            inner: Arc::new(Inner {
                me,
                seal: std::sync::RwLock::new(Arc::new(config.seal)),
                store,
                partners: std::sync::RwLock::new(partners),
                partners_dir: config.partners_dir,
                admin: tokio::sync::Mutex::new(()),
                draining: Mutex::new(HashMap::new()),
                announced: Mutex::new(HashMap::new()),
                receipt_latency: crate::metrics::Histogram::default(),
                expiries: std::sync::RwLock::new(config.tls.expiries()),
                tls: std::sync::RwLock::new(Arc::new(config.tls)),
                // This run's id: the inbox trusts records of earlier runs from the store.
                inbox: Mutex::new(Inbox::new(rand_core::RngCore::next_u64(&mut rand_core::OsRng))),
                endpoint,
                client: std::sync::RwLock::new(client),
                tls_generation: watch::channel(0).0,
                cancel,
                tasks: tokio_util::task::TaskTracker::new(),
                slow: Arc::new(tokio::sync::Semaphore::new(SLOW_SLOTS)),
                policies: std::sync::RwLock::new(Arc::new(config.policies)),
                deadlines: Mutex::new(deadlines),
                deadlines_busy: Mutex::new(std::collections::HashSet::new()),
                deadlines_freed: Notify::new(),
                receipts_applied: watch::channel(0).0,
                limits: config.limits,
                retry: config.retry,
                transport: config.transport,
                acks: tokio::sync::Mutex::new(()),
                accounts,
                arrivals: tokio::sync::broadcast::channel(ARRIVALS_KEPT).0,
                listing: listing::Listing::default(),
            }),
        };
        let ids: Vec<NodeId> = node.partner_states().iter().map(|p| p.node).collect();
        let with: Vec<(NodeId, Digest)> =
            ids.iter().filter_map(|p| node.policies().policy(p).map(|x| (*p, x.hash))).collect();
        let without: Vec<NodeId> = ids.iter().filter(|p| node.policies().policy(p).is_none()).cloned().collect();
        let started = Op::Audit(AuditEvent::Started { node: me, policies: with, without_policy: without });
        match node.inner.store.commit(vec![started.clone()]).await {
            Ok(()) => {}
            // A node must start on a full disk too: it reports its state, delivers what it
            // holds once space is back, and takes new packets then, without another restart.
            Err(e @ StoreError::Full { .. }) => {
                warn!(error = %e, "starting on a full disk: the start goes into the audit trail once space is freed");
                let (n, cancel) = (node.clone(), node.inner.cancel.clone());
                node.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = cancel.cancelled() => return,
                        }
                        if n.inner.store.commit(vec![started.clone()]).await.is_ok() {
                            return;
                        }
                    }
                });
            }
            Err(e) => return Err(e.into()),
        }
        info!(node = %me, addr = %node.local_addr(), "node started; loading the outbox");
        // The caller's signal stops the node's loops (as does `shutdown`, or the caller going away).
        let cancel = node.inner.cancel.clone();
        let mut stop = shutdown;
        node.spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = cancel.cancelled() => {}
            }
            cancel.cancel();
        });
        // Before connections are taken: a live announcement is never overwritten by an older
        // one read back.
        node.restore_announcements();
        node.spawn(node.clone().load_outbox().instrument(info_span!("load", node = %me)));
        node.spawn(node.clone().maintenance_loop().instrument(info_span!("maintenance", node = %me)));
        node.spawn(node.clone().reclaim_loop().instrument(info_span!("reclaim", node = %me)));
        node.spawn(node.clone().compact_loop().instrument(info_span!("compact", node = %me)));
        node.spawn(node.clone().expiry_loop().instrument(info_span!("expiry", node = %me)));
        node.spawn(node.clone().accept_loop().instrument(info_span!("accept", node = %me)));
        // A rotation under way (a generation to come, or one being retired): the partners are
        // told again (an announcement they already took changes nothing there).
        let now = crate::timestamp::Timestamp::now();
        let live = node.seal().generations().iter().filter(|k| k.public().valid_until.is_none_or(|u| u > now)).count();
        if live > 1 {
            let n = node.clone();
            node.spawn(async move { n.announce_keys().await });
        }
        for partner in node.partner_states() {
            if node.policies().policy(&partner.node).is_none() {
                warn!(peer = %partner.node, "no sharing policy with this partner: nothing will be sent to it or accepted from it");
            }
            node.start_partner(partner);
        }
        Ok(node)
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.inner.me
    }

    /// Officers' accounts.
    pub fn accounts(&self) -> &crate::accounts::Accounts {
        &self.inner.accounts
    }

    /// Packets stored in the inbox from now on, as they are stored.
    pub fn arrivals(&self) -> tokio::sync::broadcast::Receiver<Arrival> {
        self.inner.arrivals.subscribe()
    }

    /// Where partners enrolled through the API are written, if anywhere.
    pub fn partners_dir(&self) -> Option<&std::path::Path> {
        self.inner.partners_dir.as_deref()
    }

    /// The sharing policies with the partners, as now in force.
    pub fn policies(&self) -> Arc<PolicyBook> {
        self.inner.policies.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stops the node in order: cancels every loop, closes the endpoint (partners see the
    /// connections close), waits for every task to finish (up to 10 s: a commit under way is
    /// answered, a lane puts its copies back in the queue), records the stop in the audit
    /// trail, signs a last checkpoint and closes the store.
    pub async fn shutdown(self) {
        self.inner.cancel.cancel();
        self.inner.endpoint.close(quinn::VarInt::from_u32(0), b"node shutting down");
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await.is_err() {
            warn!(remaining = self.inner.tasks.len(), "tasks still running 10 s after the stop; stopping without them");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.endpoint.wait_idle()).await;
        // Bounded: a disk that does not complete writes must not keep the node from stopping.
        let last = async {
            self.inner.store.commit(vec![Op::Audit(AuditEvent::Stopped)]).await?;
            self.checkpoint().await
        };
        match tokio::time::timeout(Duration::from_secs(5), last).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not record the stop and sign the last audit checkpoint"),
            Err(_) => warn!("the store did not record the stop within 5 s; stopping without it"),
        }
        let store = self.inner.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        info!(node = %self.inner.me, "node stopped");
    }

    /// Runs `f` (a slow read: a whole-trail verification, an export, a full listing) on the
    /// blocking pool, within the node's slots for such work, so that it neither holds up the
    /// async workers (lanes, receipts, FLASH) nor runs more than [`SLOW_SLOTS`] at once.
    pub async fn slow<T: Send + 'static>(&self, f: impl FnOnce(&Node) -> T + Send + 'static) -> Result<T, NodeError> {
        let busy = || NodeError::Store(StoreError::Backend("the node is shutting down".into()));
        let _slot = self.inner.slow.clone().acquire_owned().await.map_err(|_| busy())?;
        let node = self.clone();
        tokio::task::spawn_blocking(move || f(&node)).await.map_err(|_| busy())
    }

    /// Starts a task the node tracks (shutdown waits for it).
    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tasks.spawn(task)
    }
}

pub(crate) use bulk::{run_bounded as run_bulk_bounded, LARGE};

/// Requests whose deadlines one commit is changing; released when dropped.
struct DeadlineReservation {
    inner: Arc<Inner>,
    ids: Vec<PacketId>,
}

impl Drop for DeadlineReservation {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut busy = lock(&self.inner.deadlines_busy);
        for id in &self.ids {
            busy.remove(id);
        }
        drop(busy);
        self.inner.deadlines_freed.notify_waiters();
    }
}

/// A node's state in memory, rebuilt from its store.
pub struct Restored {
    /// One sender machine per partner (and, read whole by [`restore`], per former partner with
    /// pending entries).
    pub senders: HashMap<NodeId, Sender>,
    /// The answer deadlines.
    pub deadlines: Deadlines,
}

/// Rebuilds a node's state from `store` at `now` (start-up, and the simulation's restarts):
/// the sender machines (what was in flight is queued again) and the deadlines. The inbox index
/// starts empty: what earlier runs received is read from the store as packets arrive
/// ([`Inbox`]).
pub fn restore(
    store: &Store,
    partners: impl IntoIterator<Item = NodeId>,
    retry: RetryPolicy,
    now: Millis,
) -> Result<Restored, StoreError> {
    restore_with(store, partners, retry, now, true)
}

/// [`restore`]; with `outbox` false the machines (one per partner) start empty, to be loaded
/// behind the start ([`Sender::begin_loading`], [`Node::load_outbox`]).
fn restore_with(
    store: &Store,
    partners: impl IntoIterator<Item = NodeId>,
    retry: RetryPolicy,
    now: Millis,
    outbox: bool,
) -> Result<Restored, StoreError> {
    let mut by_partner: HashMap<NodeId, Vec<Entry>> = partners.into_iter().map(|p| (p, Vec::new())).collect();
    if outbox {
        for e in store.pending_entries()? {
            by_partner.entry(e.recipient).or_default().push(e);
        }
    }
    let senders = by_partner
        .into_iter()
        .map(|(peer, entries)| {
            let mut s = Sender::restore(peer, retry, partners::jitter_seed(&peer, now), entries, now);
            if !outbox {
                s.begin_loading();
            }
            (peer, s)
        })
        .collect();
    let mut kept = Vec::new();
    for (_, v) in store.scan(Tree::Deadlines, &[])? {
        kept.push(store::decode::<Deadline>(Tree::Deadlines, &v)?);
    }
    Ok(Restored { senders, deadlines: Deadlines::restore(kept) })
}

/// The entry of the copy of `packet_id` sent to `peer`: `held`, the sender machine's if it
/// holds one (pending, or terminal and not yet on disk: newer than the store's), else the
/// store's (a terminal entry, with its acknowledgements). Read the machine first: an entry
/// leaves it only once its terminal state is on disk.
pub fn sent_entry(
    held: Option<Entry>,
    store: &Store,
    packet_id: PacketId,
    peer: &NodeId,
) -> Result<Option<Entry>, StoreError> {
    match held {
        Some(e) => Ok(Some(e)),
        None => store.outbox_entry(packet_id, peer),
    }
}

/// Refused client certificates, logged within the budget for unauthenticated events.
fn refusals_logged() -> transport::OnRefusal {
    Arc::new(|reason: &str| crate::limits::log_refusal("refused connection: client certificate", reason))
}

/// The QUIC stream priority of a lane: FLASH highest.
fn lane_priority(lane: Priority) -> i32 {
    2 - i32::from(lane.rank())
}

fn packet_id_of(key: &[u8]) -> Result<PacketId, StoreError> {
    let b: [u8; 16] = key
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or(StoreError::Corrupt { tree: "inbox", reason: "key is not a packet id".into() })?;
    Ok(PacketId::from_bytes(b))
}
