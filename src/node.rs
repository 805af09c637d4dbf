//! The node runtime: drives the delivery core with QUIC, the store and the clock.
//!
//! This is the I/O shell around [`crate::delivery`]: it moves bytes and time into the state
//! machines and carries out what they ask. It never decides delivery policy itself.
//!
//! To each partner, the node keeps one connection and on it one long-lived bidirectional stream
//! per priority lane (see [`crate::wire`]). A lane writes sealed copies as frames, up to
//! [`WINDOW`] of them ahead of their receipts; the receiver reads what has arrived, commits the
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::limits::{Limits, MemoryBudget, PartnerLimits};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit::{Checkpoint, Decided, Event as AuditEvent, Head as AuditHead, Receipted};
use crate::deadlines::{Deadline, Deadlines, Flow, Role};
use crate::delivery::{
    Entry, Inbox, Incoming, Millis, Outbox, ReadAckMatch, ReceiptOutcome as Outcome, RetryPolicy, Transmit,
};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;
use crate::packet::{Body, Packet, ReceiptItem, ReceiptOutcome, MAX_RECEIPT_ITEMS};
use crate::policy::{Decision, Denial, Direction, PolicyBook, Redacted};
use crate::seal::{peek_route, OpenError, SealContext, SignedPacket, MAX_SEALED_BYTES};
use crate::store::{self, pair_key, InboxRecord, Op, Store, StoreError, Tree};
use crate::timestamp::Timestamp;
use crate::transport::{self, TlsMaterial};
use crate::wire;

/// Most copies written ahead of their receipts, per lane.
pub const WINDOW: usize = 256;

/// Largest receipt frame accepted from a partner: a receipt of [`MAX_RECEIPT_ITEMS`] copies,
/// each with a rejection reason, with room to spare.
const MAX_RECEIPT_FRAME: usize = 4 << 20;

/// A receiving lane closes a batch (commits and receipts it) at this many bytes, so large
/// copies are receipted one or two at a time and the sender sees steady progress.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The lanes, highest first; the index is the lane's slot.
const LANES: [Priority; 3] = [Priority::Flash, Priority::Urgent, Priority::Routine];

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
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
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
}

/// What a submit did, recipient by recipient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    /// The packet id.
    pub id: PacketId,
    /// Recipients a copy was sealed and stored for.
    pub sent: Vec<SentCopy>,
    /// Recipients the policy refused: nothing was sealed for them.
    pub denied: Vec<Refused>,
}

/// A copy sealed for one recipient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SentCopy {
    /// The recipient.
    pub recipient: NodeId,
    /// What its policy removed before signing.
    pub redacted: Vec<Redacted>,
    /// The version hash of the policy applied.
    pub policy: Option<Digest>,
}

/// A recipient refused by policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    /// The recipient.
    pub recipient: NodeId,
    /// The rule and why.
    pub denial: Denial,
    /// The version hash of the policy applied (`None`: no policy with this partner).
    pub policy: Option<Digest>,
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
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Enrolled partners.
    pub partners: Vec<Partner>,
    /// The sharing policies with the partners (a partner without one gets and sends nothing).
    pub policies: PolicyBook,
    /// Retry spacing.
    pub retry: RetryPolicy,
    /// What each partner may make this node hold or do.
    pub limits: Limits,
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
    seal: SealContext,
    store: Store,
    outbox: Mutex<Outbox>,
    inbox: Mutex<Inbox>,
    wake: HashMap<NodeId, Arc<Notify>>,
    partners: HashMap<NodeId, SocketAddr>,
    endpoint: quinn::Endpoint,
    /// The client side of TLS, replaced on a reload (connections are dialled with it).
    client: std::sync::RwLock<quinn::ClientConfig>,
    /// Bumped when the TLS material is reloaded: every live connection is closed and made again
    /// under the new material (a revoked partner cannot come back).
    tls_generation: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    retry: RetryPolicy,
    /// Swapped whole on a reload; readers take the `Arc` and keep a consistent book.
    policies: std::sync::RwLock<Arc<PolicyBook>>,
    deadlines: Mutex<Deadlines>,
    /// Bumped whenever receipts were applied: wakes whoever waits for a packet's outcome.
    receipts_applied: watch::Sender<u64>,
    limits: Limits,
    /// Acknowledgements read, change and write an inbox record: one at a time.
    acks: tokio::sync::Mutex<()>,
    /// Per partner: the budgets its traffic draws on.
    budgets: HashMap<NodeId, PartnerLimits<quinn::Connection>>,
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
    /// Opens the store, restores the outbox and the inbox index, binds the endpoint, and starts
    /// the accept loop and one sender per partner. Runs until `shutdown` becomes `true`.
    pub async fn start(config: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<Node, NodeError> {
        let me = config.seal.node().clone();
        let store = Store::open(&config.data_dir)?;
        let now = now_ms();
        let outbox = Outbox::restore(config.retry, now, store.outbox_entries()?, now);
        let mut inbox = Inbox::new();
        for (k, v) in store.scan(Tree::Inbox, &[])? {
            let rec: InboxRecord = store::decode(Tree::Inbox, &v)?;
            let id = packet_id_of(&k)?;
            inbox.record(id, rec.sender, rec.sealed_digest, rec.received_at);
        }
        let mut kept = Vec::new();
        for (_, v) in store.scan(Tree::Deadlines, &[])? {
            kept.push(store::decode::<Deadline>(Tree::Deadlines, &v)?);
        }
        let deadlines = Deadlines::restore(kept);
        let enrolled: Vec<NodeId> = config.partners.iter().map(|p| p.node.clone()).collect();
        let server = transport::server_config(&config.tls, &enrolled, refusals_logged())?;
        let client = transport::client_config(&config.tls)?;
        let bind = |source| NodeError::Bind { addr: config.listen, source };
        let socket = match config.socket {
            Some(s) => s,
            None => std::net::UdpSocket::bind(config.listen).map_err(bind)?,
        };
        let runtime = quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime")))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(bind)?;
        endpoint.set_default_client_config(client.clone());
        let partners: HashMap<NodeId, SocketAddr> = config.partners.iter().map(|p| (p.node.clone(), p.addr)).collect();
        let wake = partners.keys().map(|n| (n.clone(), Arc::new(Notify::new()))).collect();
        let budgets = partners
            .keys()
            .map(|n| {
                let agreed = config.policies.policy(n).map(|p| p.receive.max_packets_per_minute);
                (n.clone(), PartnerLimits::new(&config.limits, crate::limits::pace_per_minute(agreed), now))
            })
            .collect();
        let node = Node {
            inner: Arc::new(Inner {
                me: me.clone(),
                seal: config.seal,
                store,
                outbox: Mutex::new(outbox),
                inbox: Mutex::new(inbox),
                wake,
                partners,
                endpoint,
                client: std::sync::RwLock::new(client),
                tls_generation: watch::channel(0).0,
                shutdown,
                retry: config.retry,
                policies: std::sync::RwLock::new(Arc::new(config.policies)),
                deadlines: Mutex::new(deadlines),
                receipts_applied: watch::channel(0).0,
                limits: config.limits,
                acks: tokio::sync::Mutex::new(()),
                budgets,
            }),
        };
        let with: Vec<(NodeId, Digest)> =
            node.inner.partners.keys().filter_map(|p| node.policies().policy(p).map(|x| (p.clone(), x.hash))).collect();
        let without: Vec<NodeId> =
            node.inner.partners.keys().filter(|p| node.policies().policy(p).is_none()).cloned().collect();
        node.inner
            .store
            .commit(vec![Op::Audit(AuditEvent::Started { node: me.clone(), policies: with, without_policy: without })])
            .await?;
        info!(node = %me, addr = %node.local_addr(), pending = lock(&node.inner.outbox).pending(), "node started");
        tokio::spawn(node.clone().maintenance_loop().instrument(info_span!("maintenance", node = %me)));
        tokio::spawn(node.clone().accept_loop().instrument(info_span!("accept", node = %me)));
        for peer in node.inner.partners.keys() {
            if node.policies().policy(peer).is_none() {
                warn!(%peer, "no sharing policy with this partner: nothing will be sent to it or accepted from it");
            }
            let span = info_span!("sender", node = %me, peer = %peer);
            tokio::spawn(node.clone().sender_loop(peer.clone()).instrument(span));
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

    /// The answer deadlines of `request` (one per counterpart).
    pub fn deadlines_of(&self, request: PacketId) -> Vec<Deadline> {
        lock(&self.inner.deadlines).of(request).into_iter().cloned().collect()
    }

    /// Open deadlines in `role`, soonest first.
    pub fn open_deadlines(&self, role: Role) -> Vec<Deadline> {
        lock(&self.inner.deadlines).open(role).into_iter().cloned().collect()
    }

    /// The sharing policies with the partners, as now in force.
    pub fn policies(&self) -> Arc<PolicyBook> {
        self.inner.policies.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts new TLS material in force — typically a new CRL after a partner was revoked, or a
    /// renewed certificate: new handshakes use it at once, and every live connection is closed
    /// and made again under it, so a revoked partner is cut off now rather than at its next
    /// reconnect. Copies in flight are sent again (the receiver dedups). Recorded in the audit
    /// trail.
    pub async fn reload_tls(&self, tls: &TlsMaterial, by: &str, detail: String) -> Result<(), NodeError> {
        let enrolled: Vec<NodeId> = self.inner.partners.keys().cloned().collect();
        let server = transport::server_config(tls, &enrolled, refusals_logged())?;
        let client = transport::client_config(tls)?;
        let event = AuditEvent::Admin { action: "tls reload".into(), by: by.into(), detail };
        self.inner.store.commit(vec![Op::Audit(event)]).await?;
        self.inner.endpoint.set_server_config(Some(server));
        *self.inner.client.write().unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        self.inner.tls_generation.send_modify(|g| *g += 1);
        for w in self.inner.wake.values() {
            w.notify_one();
        }
        info!("TLS material reloaded; live connections are made again");
        Ok(())
    }

    /// Puts `book` in force in place of the current policies (an administrator edited the
    /// files). The change is recorded in the audit trail first, with each partner's old and new
    /// version, so the trail says from which entry on the new rules applied. Policies for nodes
    /// that are not enrolled partners are ignored (enrolling needs a restart). Returns the
    /// changes.
    pub async fn reload_policies(&self, book: PolicyBook, by: &str) -> Result<Vec<String>, NodeError> {
        let old = self.policies();
        let version =
            |b: &PolicyBook, p: &NodeId| b.policy(p).map_or_else(|| "none".to_owned(), |x| x.hash.to_string());
        let mut partners: Vec<&NodeId> = self.inner.partners.keys().collect();
        partners.sort();
        let changes: Vec<String> = partners
            .into_iter()
            .filter(|p| old.policy(p) != book.policy(p))
            .map(|p| format!("{p}: {} -> {}", version(&old, p), version(&book, p)))
            .collect();
        if changes.is_empty() {
            return Ok(changes);
        }
        let event = AuditEvent::Admin { action: "policy reload".into(), by: by.into(), detail: changes.join("; ") };
        self.inner.store.commit(vec![Op::Audit(event)]).await?;
        *self.inner.policies.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(book);
        info!(changes = %changes.join("; "), "sharing policies reloaded");
        Ok(changes)
    }

    /// Checks `packet` against the sharing policy of each recipient, seals the copy each may
    /// have (redacted where its policy says so, signed naming that policy), and stores the
    /// copies; returns once they are on disk. Recipients the policy refuses get nothing and are
    /// listed in [`Submitted::denied`]; if every recipient is refused the submit fails.
    pub async fn submit(&self, packet: &Packet) -> Result<Submitted, NodeError> {
        for r in &packet.envelope.recipients {
            if !self.inner.partners.contains_key(r) {
                return Err(NodeError::NotAPartner(r.clone()));
            }
        }
        let now = now_ms();
        let id = packet.envelope.id;
        let mut copies = Vec::new();
        let mut denied = Vec::new();
        for r in &packet.envelope.recipients {
            let mut copy = packet.clone();
            let verdict = self.policies().decide(r, Direction::Send, &mut copy, now);
            match verdict.decision {
                Decision::Deny(denial) => {
                    warn!(packet_id = %id, recipient = %r, rule = %denial.rule, "refused by policy; nothing sent to this partner");
                    denied.push(Refused { recipient: r.clone(), denial, policy: verdict.policy });
                }
                Decision::Allow => {
                    copies.push((copy, SentCopy { recipient: r.clone(), redacted: Vec::new(), policy: verdict.policy }))
                }
                Decision::Redact(redacted) => {
                    info!(packet_id = %id, recipient = %r, fields = redacted.len(), "redacted by policy");
                    copies.push((copy, SentCopy { recipient: r.clone(), redacted, policy: verdict.policy }));
                }
            }
        }
        self.seal_and_store(packet, copies, denied, now).await
    }

    /// Seals and stores the copies decided for `packet` (one per allowed recipient; each names
    /// the recipients that actually get the packet), records the decisions in the audit trail,
    /// and hands the copies to the outbox. With no copy, only the refusal is recorded.
    async fn seal_and_store(
        &self,
        packet: &Packet,
        mut copies: Vec<(Packet, SentCopy)>,
        denied: Vec<Refused>,
        now: Millis,
    ) -> Result<Submitted, NodeError> {
        let id = packet.envelope.id;
        let mut decisions = denied_decisions(&denied);
        if copies.is_empty() {
            // Nothing is sent, but the refusal is on record.
            let event = AuditEvent::Submitted { packet_id: id, kind: packet.packet_type().as_str().into(), decisions };
            self.inner.store.commit(vec![Op::Audit(event)]).await?;
            return Err(NodeError::Denied(denied));
        }
        // Each copy names the recipients that actually get the packet.
        let receiving: Vec<NodeId> = copies.iter().map(|(_, c)| c.recipient.clone()).collect();
        let expires = crate::delivery::millis(packet.envelope.expires);
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        for (copy, sent) in &mut copies {
            copy.envelope.recipients.clone_from(&receiving);
            let signed = self.inner.seal.sign_under(copy, sent.policy)?;
            let s = self.inner.seal.encrypt_for(&signed, &sent.recipient, &mut rand_core::OsRng)?;
            let e = Outbox::new_entry(
                now,
                s.route.packet_id,
                s.route.recipient.clone(),
                s.route.priority,
                expires,
                Digest::of(&s.bytes),
            );
            let key = pair_key(e.packet_id, &e.recipient);
            let mut rules: Vec<String> = sent.redacted.iter().map(|r| r.rule.clone()).collect();
            rules.dedup();
            decisions.push(Decided {
                to: sent.recipient.clone(),
                decision: if sent.redacted.is_empty() { "allow" } else { "redact" }.into(),
                rules,
                redacted: sent.redacted.iter().map(|r| r.path.clone()).collect(),
                policy: sent.policy,
                sealed: Some(e.sealed_digest),
            });
            ops.push(Op::Put(Tree::Sealed, key.clone(), s.bytes));
            ops.push(store::put(Tree::Outbox, key, &e));
            entries.push(e);
        }
        ops.push(Op::Audit(AuditEvent::Submitted {
            packet_id: id,
            kind: packet.packet_type().as_str().into(),
            decisions,
        }));
        {
            let mut deadlines = lock(&self.inner.deadlines);
            for (copy, sent) in &copies {
                for d in deadlines.on_packet(copy, Flow::Sent, &sent.recipient, now) {
                    ops.push(store::put(Tree::Deadlines, Deadlines::key(&d), &d));
                }
            }
        }
        self.inner.store.commit(ops).await?;
        {
            let mut outbox = lock(&self.inner.outbox);
            for e in entries {
                outbox.admit(now, e);
            }
        }
        for r in &receiving {
            if let Some(w) = self.inner.wake.get(r) {
                w.notify_one();
            }
        }
        info!(packet_id = %id, kind = %packet.packet_type(), priority = packet.envelope.priority.as_str(), recipients = receiving.len(), refused = denied.len(), "submitted");
        Ok(Submitted { id, sent: copies.into_iter().map(|(_, c)| c).collect(), denied })
    }

    /// Per-recipient delivery status of a packet this node sent.
    pub fn status(&self, packet_id: PacketId) -> Result<Status, NodeError> {
        let entries: Vec<Entry> = lock(&self.inner.outbox).entries_of(packet_id).into_iter().cloned().collect();
        if entries.is_empty() {
            return Err(NodeError::UnknownPacket(packet_id));
        }
        Ok(entries)
    }

    /// The signed receipt `recipient` returned for `packet_id` (verified again from the store),
    /// and its item about this packet.
    pub fn receipt(
        &self,
        packet_id: PacketId,
        recipient: &NodeId,
    ) -> Result<Option<(crate::seal::SignedPacket, ReceiptItem)>, NodeError> {
        let Some(receipt_id) = self.inner.store.get(Tree::ReceiptIndex, &pair_key(packet_id, recipient))? else {
            return Ok(None);
        };
        let bytes = self.inner.store.get(Tree::Receipts, &receipt_id)?.unwrap_or_default();
        let signed = crate::seal::verify_signed(self.inner.seal.keyring(), &bytes)
            .map_err(|e| NodeError::Evidence(packet_id, e))?;
        let item = match &signed.packet.body {
            Body::DeliveryReceipt(r) if r.receiver == *recipient => {
                r.receipts.iter().find(|i| i.packet_id == packet_id).cloned()
            }
            _ => None,
        };
        Ok(item.map(|i| (signed, i)))
    }

    /// Signs a checkpoint of the audit trail's head, unless the head is already signed; returns
    /// the head signed.
    pub async fn checkpoint(&self) -> Result<AuditHead, NodeError> {
        let head = self.inner.store.audit_head()?;
        if head.seq == 0 || self.inner.store.get(Tree::AuditCheckpoints, &crate::audit::key(head.seq))?.is_some() {
            return Ok(head);
        }
        let at = now_ms();
        let signature = self.inner.seal.sign_detached(&Checkpoint::message(&self.inner.me, &head, at));
        let c = Checkpoint { node: self.inner.me.clone(), head, at, signature };
        self.inner.store.commit(vec![store::put(Tree::AuditCheckpoints, crate::audit::key(head.seq), &c)]).await?;
        debug!(seq = head.seq, "audit checkpoint signed");
        Ok(head)
    }

    /// Records an administrative action in the audit trail.
    pub async fn audit_admin(&self, action: &str, by: &str, detail: String) -> Result<(), NodeError> {
        let event = AuditEvent::Admin { action: action.into(), by: by.into(), detail };
        self.inner.store.commit(vec![Op::Audit(event)]).await?;
        Ok(())
    }

    /// Verifies the whole audit trail: every link, the recorded head, every checkpoint.
    pub fn audit_verify(&self) -> Result<Result<crate::audit::Verified, crate::audit::Broken>, NodeError> {
        // The head first: entries appended while this runs (the node keeps working) are beyond
        // it and left out, instead of looking like a chain that ends too late.
        let head = self.inner.store.audit_head()?;
        let mut entries = self.inner.store.scan(Tree::Audit, &[])?;
        entries.retain(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).map_or(true, |b| u64::from_be_bytes(b) <= head.seq));
        let checkpoints = self.checkpoints()?;
        Ok(crate::audit::verify(
            AuditHead::GENESIS,
            &entries,
            Some(head),
            &checkpoints,
            &self.inner.me,
            &self.inner.seal.public().signing,
        ))
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, NodeError> {
        let mut v = Vec::new();
        for (_, bytes) in self.inner.store.scan(Tree::AuditCheckpoints, &[])? {
            v.push(store::decode::<Checkpoint>(Tree::AuditCheckpoints, &bytes)?);
        }
        Ok(v)
    }

    /// The entries recorded between `from` and `to` (ms), extended to the next signed
    /// checkpoint (signed now if needed), as a self-contained export.
    pub async fn audit_export(&self, from: Millis, to: Millis) -> Result<crate::audit::Export, NodeError> {
        // Entries appended after this checkpoint (the node keeps working) are left for the next
        // export: an export ends at a signature.
        let signed = self.checkpoint().await?;
        let checkpoints = self.checkpoints()?;
        let mut all = Vec::new();
        for (_, bytes) in self.inner.store.scan(Tree::Audit, &[])? {
            let e: crate::audit::Entry = store::decode(Tree::Audit, &bytes)?;
            if e.seq > signed.seq {
                break;
            }
            all.push((e.seq, e.at, bytes));
        }
        let first = all.iter().position(|(_, at, _)| *at >= from);
        let last = all.iter().rposition(|(_, at, _)| *at <= to);
        let (start, entries) = match (first, last) {
            (Some(first), Some(last)) if first <= last => {
                let start = match first.checked_sub(1).and_then(|i| all.get(i)) {
                    Some((seq, _, bytes)) => AuditHead { seq: *seq, hash: Digest::of(bytes) },
                    None => AuditHead::GENESIS,
                };
                // Extend to the first signed entry at or after the last one in range, so the
                // export ends at a signature (the head was just signed, so there is one).
                let end = (last..all.len())
                    .find(|i| checkpoints.iter().any(|c| c.head.seq == all[*i].0))
                    .unwrap_or(all.len() - 1);
                let entries = all[first..=end]
                    .iter()
                    .map(|(seq, _, bytes)| (*seq, crate::encoding::Blob(bytes.clone())))
                    .collect::<Vec<_>>();
                (start, entries)
            }
            _ => (self.inner.store.audit_head()?, Vec::new()),
        };
        let (first, last) = (start.seq, entries.last().map_or(start.seq, |(s, _)| *s));
        let public_key = crate::encoding::hex(self.inner.seal.public().signing.as_bytes());
        Ok(crate::audit::Export {
            format: crate::audit::EXPORT_FORMAT.into(),
            node: self.inner.me.clone(),
            public_key,
            start,
            entries,
            checkpoints: checkpoints.into_iter().filter(|c| c.head.seq > first && c.head.seq <= last).collect(),
        })
    }

    /// Housekeeping: signs an audit checkpoint every 30 s while the trail grows, and deletes
    /// received packets past their policy's retention at start and every 10 minutes.
    async fn maintenance_loop(self) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut rounds = 0u64;
        loop {
            if rounds % 20 == 0 {
                if let Err(e) = self.purge_expired(now_ms()).await {
                    warn!(error = %e, "could not apply the retention rules");
                }
            }
            rounds += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.checkpoint().await {
                warn!(error = %e, "could not sign an audit checkpoint");
            }
            crate::limits::flush_refusals();
            for (peer, b) in &self.inner.budgets {
                for (kind, n) in b.unlogged(now_ms()) {
                    warn!(%peer, kind, count = n, "{n} more events of this kind about the partner's traffic in the last minute, not logged one by one (the audit trail has each packet)");
                }
            }
        }
    }

    /// Deletes the received packets (inbox record, evidence, deadline) older than the retention
    /// of the policy with their sender; the deletion is recorded in the audit trail (ids only).
    /// Packets from a partner without a policy are kept (nothing says how long). Returns how
    /// many were deleted.
    pub async fn purge_expired(&self, now: Millis) -> Result<usize, NodeError> {
        let mut ops = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        let mut forgotten = Vec::new();
        let book = self.policies();
        for (id, rec) in self.inbox()? {
            let Some(policy) = book.policy(&rec.sender) else { continue };
            let keep = u64::from(policy.retention_days) * 86_400_000;
            if rec.received_at.saturating_add(keep) >= now {
                continue;
            }
            ops.push(Op::Delete(Tree::Inbox, pair_key(id, &rec.sender)));
            ops.push(Op::Delete(Tree::Evidence, pair_key(id, &rec.sender)));
            ops.push(Op::Delete(Tree::Deadlines, pair_key(id, &rec.sender)));
            gone.push(format!("{id} from {} ({} days)", rec.sender, policy.retention_days));
            forgotten.push((id, rec.sender));
        }
        if gone.is_empty() {
            return Ok(0);
        }
        let n = gone.len();
        ops.push(Op::Audit(AuditEvent::Admin {
            action: "retention purge".into(),
            by: "node".into(),
            detail: format!("deleted {n} received packet(s) past retention: {}", gone.join(", ")),
        }));
        self.inner.store.commit(ops).await?;
        {
            let mut inbox = lock(&self.inner.inbox);
            for (id, sender) in &forgotten {
                inbox.forget(*id, sender);
            }
        }
        info!(deleted = n, "received packets past their retention deleted");
        Ok(n)
    }

    /// Waits until every copy of `packet_id` is delivered, rejected or expired (or `timeout`
    /// passes), and returns the status then.
    pub async fn wait_final(&self, packet_id: PacketId, timeout: Duration) -> Result<Status, NodeError> {
        let mut applied = self.inner.receipts_applied.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(packet_id)?;
            if status.iter().all(|e| e.state.is_terminal()) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return Ok(status),
            }
        }
    }

    /// How many outbox entries are in each state (queued, in_flight, delivered, rejected,
    /// expired), and how many were read.
    pub fn outbox_summary(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let outbox = lock(&self.inner.outbox);
        let mut m = std::collections::BTreeMap::new();
        for e in outbox.entries() {
            *m.entry(e.state.name()).or_default() += 1;
            if !e.reads.is_empty() {
                *m.entry("read").or_default() += 1;
            }
        }
        m
    }

    /// Packets received, oldest first: id, sender, when, read by whom.
    pub fn inbox(&self) -> Result<Vec<(PacketId, InboxRecord)>, NodeError> {
        let mut v = Vec::new();
        for (k, val) in self.inner.store.scan(Tree::Inbox, &[])? {
            v.push((packet_id_of(&k)?, store::decode::<InboxRecord>(Tree::Inbox, &val)?));
        }
        v.sort_by_key(|(_, r)| r.received_at);
        Ok(v)
    }

    /// The inbox record of the packet `packet_id` from `from`, or from whichever partner sent
    /// one with that id if `from` is `None` and there is only one.
    pub fn received(&self, packet_id: PacketId, from: Option<&NodeId>) -> Result<InboxRecord, NodeError> {
        let mut found = self.inner.store.inbox_records(packet_id)?;
        if let Some(from) = from {
            found.retain(|r| r.sender == *from);
        }
        match found.len() {
            0 => Err(NodeError::UnknownPacket(packet_id)),
            1 => Ok(found.remove(0)),
            _ => {
                Err(NodeError::Ambiguous { packet: packet_id, senders: found.into_iter().map(|r| r.sender).collect() })
            }
        }
    }

    /// Other partners that sent a packet with the same id as `packet_id` from `sender` (a
    /// collision; shown as suspicious).
    pub fn also_from(&self, packet_id: PacketId, sender: &NodeId) -> Vec<NodeId> {
        lock(&self.inner.inbox).senders(packet_id).into_iter().filter(|n| n != sender).collect()
    }

    /// A received packet, verified again from the stored evidence.
    pub fn show(&self, packet_id: PacketId, from: Option<&NodeId>) -> Result<(Packet, InboxRecord), NodeError> {
        let rec = self.received(packet_id, from)?;
        let (original, _) = self.held(packet_id, &rec.sender)?;
        Ok((original.packet, rec))
    }

    /// A received packet as its originator signed it (for a forward: the original it carried,
    /// verified again), and the consent that came with it.
    fn held(&self, packet_id: PacketId, sender: &NodeId) -> Result<(SignedPacket, Option<SignedPacket>), NodeError> {
        let evidence = self
            .inner
            .store
            .get(Tree::Evidence, &pair_key(packet_id, sender))?
            .ok_or(NodeError::UnknownPacket(packet_id))?;
        let ring = self.inner.seal.keyring();
        let signed = crate::seal::verify_signed(ring, &evidence).map_err(|e| NodeError::Evidence(packet_id, e))?;
        let Body::Forward(f) = &signed.packet.body else { return Ok((signed, None)) };
        let original =
            crate::seal::verify_signed(ring, &f.original.0).map_err(|e| NodeError::Evidence(packet_id, e))?;
        let consent = match &f.consent {
            Some(c) => Some(crate::seal::verify_signed(ring, &c.0).map_err(|e| NodeError::Evidence(packet_id, e))?),
            None => None,
        };
        Ok((original, consent))
    }

    /// Passes a received packet on to `to` (partners that were not among its recipients), as a
    /// [`crate::packet::Forward`] carrying the original as its originator signed it and, where
    /// needed, the originator's consent (found among the consents this node received). Each
    /// recipient is checked on its own: the `[onward]` rule for the originator, H2, the consent,
    /// and this node's send policy for the recipient applied to the original (which cannot be
    /// redacted: another node signed it).
    pub async fn forward(
        &self,
        packet_id: PacketId,
        from: Option<&NodeId>,
        to: &[NodeId],
        officer: OfficerId,
    ) -> Result<Submitted, NodeError> {
        for r in to {
            if !self.inner.partners.contains_key(r) {
                return Err(NodeError::NotAPartner(r.clone()));
            }
        }
        let rec = self.received(packet_id, from)?;
        let (original, carried) = self.held(packet_id, &rec.sender)?;
        let p = &original.packet;
        let originator = &p.envelope.originator.node;
        // The rule of the agreement with the originator, or with whoever passed it to us.
        let book = self.policies();
        let policy = book.policy(originator).or_else(|| book.policy(&rec.sender));
        let rule = policy.map_or(crate::policy::OnwardRule::Never, |p| p.onward.from_partner);
        let consents = self.consents_about(p.envelope.id, originator, carried)?;
        let now = now_ms();
        let now_ts = Timestamp::now();
        let mut copies = Vec::new();
        let mut denied = Vec::new();
        let deny = |denied: &mut Vec<Refused>, r: &NodeId, rule: &str, reason: String, policy: Option<Digest>| {
            warn!(packet_id = %packet_id, recipient = %r, %rule, "not passed on");
            denied.push(Refused { recipient: r.clone(), denial: Denial { rule: rule.into(), reason }, policy });
        };
        let id = PacketId::new_v7(now, &mut rand_core::OsRng);
        for r in to {
            let policy_hash = self.policies().policy(r).map(|x| x.hash);
            if let Err(e) = crate::seal::check_times(p, now_ts) {
                deny(&mut denied, r, "onward.original_expired", e.to_string(), policy_hash);
                continue;
            }
            if r == originator || p.envelope.recipients.contains(r) {
                deny(
                    &mut denied,
                    r,
                    "onward.already_a_recipient",
                    format!("{r} already had it from {originator}"),
                    policy_hash,
                );
                continue;
            }
            let needed = match crate::onward::consent_needed(p, rule) {
                Ok(n) => n,
                Err(d) => {
                    deny(&mut denied, r, &d.rule, d.reason, policy_hash);
                    continue;
                }
            };
            let consent = consents.iter().find(|c| crate::onward::consent_for(c, p, &self.inner.me, r, now_ts).is_ok());
            if needed && consent.is_none() {
                let why = if p.envelope.handling.codes.contains(&crate::markings::HandlingCode::H2) {
                    "it is marked H2"
                } else {
                    "the policy with its originator requires consent"
                };
                deny(
                    &mut denied,
                    r,
                    "onward.consent_required",
                    format!("{why}, and no consent of {originator} covering {r} was received"),
                    policy_hash,
                );
                continue;
            }
            let mut check = p.clone();
            let verdict = self.policies().decide(r, Direction::Send, &mut check, now);
            match verdict.decision {
                Decision::Deny(d) => {
                    deny(&mut denied, r, &d.rule, d.reason, verdict.policy);
                    continue;
                }
                Decision::Redact(list) => {
                    let fields: Vec<String> = list.iter().map(|x| x.path.clone()).collect();
                    deny(
                        &mut denied,
                        r,
                        &list[0].rule,
                        format!("{} would have to be removed, but {originator} signed the packet", fields.join(", ")),
                        verdict.policy,
                    );
                    continue;
                }
                Decision::Allow => {}
            }
            let e = &p.envelope;
            let forward = Packet {
                version: p.version,
                envelope: crate::packet::Envelope {
                    id,
                    case_ref: e.case_ref.clone(),
                    in_reply_to: None,
                    related: vec![e.id],
                    originator: crate::packet::Originator {
                        node: self.inner.me.clone(),
                        officer: Some(officer.clone()),
                    },
                    recipients: vec![r.clone()],
                    created: now_ts,
                    expires: e.expires,
                    priority: e.priority,
                    urgency_reason: e.urgency_reason,
                    due_by: None,
                    classification: e.classification,
                    tlp: e.tlp,
                    handling: e.handling.clone(),
                    grading: e.grading,
                    legal_basis: e.legal_basis.clone(),
                    purpose: e.purpose.clone(),
                    language: e.language,
                },
                body: Body::Forward(crate::packet::Forward {
                    original: crate::encoding::Blob(original.bytes.clone()),
                    consent: consent.map(|c| crate::encoding::Blob(c.bytes.clone())),
                }),
            };
            copies.push((forward, SentCopy { recipient: r.clone(), redacted: Vec::new(), policy: verdict.policy }));
        }
        let Some((first, _)) = copies.first() else {
            let event =
                AuditEvent::Submitted { packet_id: id, kind: "Forward".into(), decisions: denied_decisions(&denied) };
            self.inner.store.commit(vec![Op::Audit(event)]).await?;
            return Err(NodeError::Denied(denied));
        };
        let first = first.clone();
        self.seal_and_store(&first, copies, denied, now).await
    }

    /// Verified consents of `originator` about `packet`: the one that came with it, and any it
    /// sent this node.
    fn consents_about(
        &self,
        packet: PacketId,
        originator: &NodeId,
        carried: Option<SignedPacket>,
    ) -> Result<Vec<SignedPacket>, NodeError> {
        let mut out: Vec<SignedPacket> = carried.into_iter().collect();
        for (id, rec) in self.inbox()? {
            if rec.packet_type != crate::packet::PacketType::OnwardConsent.as_str() || rec.sender != *originator {
                continue;
            }
            let (c, _) = self.held(id, &rec.sender)?;
            if matches!(&c.packet.body, Body::OnwardConsent(x) if x.packet_id == packet) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Gives consent that `packet` (sent by this node) may be passed on by `holder` (one of its
    /// recipients) to `allowed`, until `until`: a signed `OnwardConsent` sent to `holder`.
    pub async fn consent(
        &self,
        packet: PacketId,
        holder: &NodeId,
        allowed: Vec<NodeId>,
        until: Timestamp,
        officer: OfficerId,
    ) -> Result<Submitted, NodeError> {
        let entries = self.status(packet)?;
        if !entries.iter().any(|e| e.recipient == *holder) {
            return Err(NodeError::NotARecipient { packet, node: holder.clone() });
        }
        let now = Timestamp::now();
        let consent = Packet {
            version: crate::packet::PACKET_VERSION,
            envelope: crate::packet::Envelope {
                id: PacketId::new_v7(now_ms(), &mut rand_core::OsRng),
                case_ref: None,
                in_reply_to: Some(packet),
                related: Vec::new(),
                originator: crate::packet::Originator { node: self.inner.me.clone(), officer: Some(officer) },
                recipients: vec![holder.clone()],
                created: now,
                expires: until,
                priority: entries.first().map_or(Priority::Routine, |e| e.priority),
                urgency_reason: None,
                due_by: None,
                classification: crate::markings::Classification::Unclassified,
                tlp: None,
                handling: crate::markings::Handling {
                    codes: [crate::markings::HandlingCode::H0].into(),
                    h3_text: None,
                },
                grading: None,
                legal_basis: None,
                purpose: None,
                language: crate::ids::Language::ENGLISH,
            },
            body: Body::OnwardConsent(crate::packet::OnwardConsent { packet_id: packet, allowed, until }),
        };
        self.submit(&consent).await
    }

    /// An officer acknowledges a received packet: recorded here, and a signed `ReadAck` is sent
    /// to the originator. Every officer who reads it may acknowledge it (up to
    /// [`store::MAX_READS`]); an officer's second acknowledgement is refused, and nothing is sent.
    pub async fn ack(&self, packet_id: PacketId, from: Option<&NodeId>, officer: OfficerId) -> Result<(), NodeError> {
        let _one_at_a_time = self.inner.acks.lock().await;
        let (packet, mut rec) = self.show(packet_id, from)?;
        if let Some((_, at)) = rec.reads.iter().find(|(o, _)| *o == officer) {
            return Err(NodeError::AckRefused(format!(
                "{officer} already acknowledged {packet_id} at {}; nothing was sent again",
                timestamp_of(*at)
            )));
        }
        if rec.reads.len() >= store::MAX_READS {
            return Err(NodeError::AckRefused(format!(
                "{packet_id} already holds {} acknowledgements, as many as are kept",
                store::MAX_READS
            )));
        }
        let now = Timestamp::now();
        rec.reads.push((officer.clone(), now_ms()));
        let sender = rec.sender.clone();
        self.inner
            .store
            .commit(vec![
                store::put(Tree::Inbox, pair_key(packet_id, &sender), &rec),
                Op::Audit(AuditEvent::Acknowledged { packet_id, officer: officer.clone(), from: Some(sender) }),
            ])
            .await?;
        let ack = Packet::read_ack(
            &self.inner.me,
            &rec.sender,
            packet_id,
            packet.envelope.priority,
            officer,
            now,
            &mut rand_core::OsRng,
        );
        self.submit(&ack).await?;
        Ok(())
    }

    /// Closes the endpoint (after in-flight work), records the stop in the audit trail and
    /// signs a last checkpoint.
    pub async fn shutdown(self) {
        self.inner.endpoint.close(quinn::VarInt::from_u32(0), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.endpoint.wait_idle()).await;
        if let Err(e) = self.inner.store.commit(vec![Op::Audit(AuditEvent::Stopped)]).await {
            warn!(error = %e, "could not record the stop in the audit trail");
        }
        if let Err(e) = self.checkpoint().await {
            warn!(error = %e, "could not sign the last audit checkpoint");
        }
        info!(node = %self.inner.me, "node stopped");
    }

    async fn accept_loop(self) {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            let incoming = tokio::select! {
                i = self.inner.endpoint.accept() => i,
                _ = shutdown.changed() => None,
            };
            let Some(incoming) = incoming else { break };
            let node = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // A refused certificate was logged, with its reason, by the verifier;
                        // the peer was told only that it is refused.
                        let text = e.to_string();
                        if !text.contains(&transport::REFUSED.to_string()) {
                            crate::limits::log_refusal(
                                "refused connection: TLS handshake failed",
                                &format!("{remote}: {text}"),
                            );
                        }
                        return;
                    }
                };
                let peer = match transport::identify_peer(&conn, node.inner.partners.keys()) {
                    Ok(p) => p,
                    Err(e) => {
                        crate::limits::log_refusal("refused connection", &format!("{remote}: {e}"));
                        conn.close(quinn::VarInt::from_u32(1), b"refused");
                        return;
                    }
                };
                debug!(%remote, %peer, "partner connected");
                let Some(budget) = node.inner.budgets.get(&peer) else { return };
                let id = conn.stable_id() as u64;
                for old in budget.admit(id, conn.clone(), node.inner.limits.connections_per_partner) {
                    // A partner can open connections as fast as it likes: logged within a budget.
                    if let Some(suppressed) = node.partner_log(&peer, "connections") {
                        info!(%peer, max = node.inner.limits.connections_per_partner, suppressed, "closing the partner's oldest connection: a newer one replaces it");
                    }
                    old.close(quinn::VarInt::from_u32(6), b"replaced by a newer connection");
                }
                node.clone().serve_connection(conn, peer.clone()).instrument(info_span!("conn", %peer)).await;
                budget.release(id);
            });
        }
    }

    async fn serve_connection(self, conn: quinn::Connection, peer: NodeId) {
        let mut reloaded = self.inner.tls_generation.subscribe();
        loop {
            let accepted = tokio::select! {
                a = conn.accept_bi() => a,
                _ = reloaded.changed() => {
                    info!("closing the connection: TLS material reloaded");
                    conn.close(quinn::VarInt::from_u32(4), b"TLS material reloaded; reconnect");
                    return;
                }
            };
            let Ok((send, recv)) = accepted else { return };
            let node = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move { node.serve_stream(peer, send, recv).await });
        }
    }

    /// One incoming lane: a reader task reads frames ahead (bounded in bytes), this task takes
    /// whatever has arrived as one batch, commits it with one flush, and answers with one receipt.
    async fn serve_stream(self, peer: NodeId, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let (tx, mut rx) = mpsc::channel::<(wire::Frame, [OwnedSemaphorePermit; 2])>(MAX_RECEIPT_ITEMS);
        let Some(budget) = self.inner.budgets.get(&peer) else { return };
        // The stream's share keeps one lane from taking the whole partner budget (its FLASH
        // lane reads on while its bulk lane waits to commit); the partner budget bounds them all.
        let stream_memory = MemoryBudget::new(self.inner.limits.stream_memory());
        let partner_memory = budget.memory.clone();
        let stall = self.inner.limits.frame_stall;
        let node = self.clone();
        let from = peer.clone();
        let reader = tokio::spawn(async move {
            loop {
                node.pace(&from).await;
                let len = match wire::read_len(&mut recv, MAX_SEALED_BYTES).await {
                    Ok(Some(len)) => len,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let Some(own) = stream_memory.take(len).await else { return Ok(()) };
                let Some(shared) = partner_memory.take(len).await else { return Ok(()) };
                let frame = wire::read_body(&mut recv, len, stall).await?;
                if tx.send((frame, [own, shared])).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut prioritised = false;
        let mut failed = false;
        while let Some(first) = rx.recv().await {
            let mut bytes = first.0.len();
            let mut batch = vec![first];
            while batch.len() < MAX_RECEIPT_ITEMS && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(f) => {
                        bytes += f.0.len();
                        batch.push(f);
                    }
                    Err(_) => break,
                }
            }
            // The memory the frames hold is the partner's until the batch is stored and receipted.
            let (frames, _held): (Vec<wire::Frame>, Vec<_>) = batch.into_iter().unzip();
            let (receipt, lane) = match self.receive_batch(&peer, frames).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    // Nothing of the batch was acknowledged; the sender will send it again.
                    warn!(error = %e, "could not store a batch; closing the lane");
                    let _ = send.reset(quinn::VarInt::from_u32(3));
                    failed = true;
                    break;
                }
            };
            if !prioritised {
                let _ = send.set_priority(lane_priority(lane));
                prioritised = true;
            }
            if let Err(e) = wire::write_frame(&mut send, &receipt).await {
                debug!(error = %e, "lane closed before its receipt");
                failed = true;
                break;
            }
        }
        // Frames read ahead and not stored give their memory back now; a reader still waiting
        // (for budget, or for the partner) is stopped: nothing is left holding the partner's
        // budget or a stream slot.
        drop(rx);
        if failed {
            reader.abort();
            let _ = send.reset(quinn::VarInt::from_u32(3));
            return;
        }
        match reader.await {
            Ok(Err(e)) => {
                match e {
                    wire::WireError::Stalled(_) => {
                        if let Some(suppressed) = self.partner_log(&peer, "stalls") {
                            warn!(error = %e, suppressed, "partner stopped sending a frame; stream reset")
                        }
                    }
                    _ => debug!(error = %e, "lane ended"),
                }
                let _ = send.reset(quinn::VarInt::from_u32(2));
            }
            _ => {
                let _ = send.finish();
            }
        }
    }

    /// Whether a line about something `peer` sent may be written now, within its log budget
    /// for that `kind` of event: `Some(n)` with the `n` events of the minute before that were
    /// only counted.
    fn partner_log(&self, peer: &NodeId, kind: &'static str) -> Option<u64> {
        self.inner.budgets.get(peer)?.log(kind, now_ms())
    }

    /// Waits until `peer` may send another frame (see [`crate::limits`]: twice its agreed
    /// receive rate).
    async fn pace(&self, peer: &NodeId) {
        let Some(budget) = self.inner.budgets.get(peer) else { return };
        loop {
            let agreed = self.policies().policy(peer).map(|p| p.receive.max_packets_per_minute);
            let per_minute = crate::limits::pace_per_minute(agreed);
            let Some(wait) = budget.pace(per_minute, now_ms()) else { return };
            if let Some(suppressed) = self.partner_log(peer, "pace") {
                warn!(%peer, per_minute, suppressed, "partner sends more than twice its agreed rate; reading from it is paced");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One batch of incoming copies: open each, dedup, store all, flush once, and sign one
    /// receipt listing every copy (or `None` if no copy could even be attributed to a packet).
    async fn receive_batch(
        &self,
        peer: &NodeId,
        frames: Vec<wire::Frame>,
    ) -> Result<Option<(Vec<u8>, Priority)>, NodeError> {
        let received_ms = now_ms();
        let now = Timestamp::from_unix((received_ms / 1000) as i64).unwrap_or_else(|_| Timestamp::now());
        let mut items = Vec::with_capacity(frames.len());
        let mut ops = Vec::new();
        let mut new: HashMap<PacketId, (Digest, InboxRecord)> = HashMap::new();
        // Outbox entries that ReadAcks of this batch change, written with the batch and put in
        // memory once it is on disk.
        let mut acked: HashMap<(PacketId, NodeId), Entry> = HashMap::new();
        let mut lane = Priority::Routine;
        for bytes in frames {
            // `open` hashes the bytes it opened; hash here only what it could not open.
            let opened = self.inner.seal.open(&bytes, now);
            let digest = match &opened {
                Ok(o) => o.sealed_digest,
                Err(_) => Digest::of(&bytes),
            };
            let opened = opened.and_then(|o| {
                if o.route.sender == *peer {
                    Ok(o)
                } else {
                    Err(OpenError::HeaderMismatch(format!("sent by {} over the connection of {peer}", o.route.sender)))
                }
            });
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    let Ok(route) = peek_route(&bytes) else {
                        if let Some(suppressed) = self.partner_log(peer, "unreadable") {
                            warn!(error = %e, suppressed, "unreadable packet; no receipt possible");
                        }
                        continue;
                    };
                    if let Some(suppressed) = self.partner_log(peer, "rejected") {
                        warn!(packet_id = %route.packet_id, code = e.code(), error = %e, suppressed, "rejected");
                    }
                    lane = lane.min(route.priority);
                    items.push(rejection(route.packet_id, now, digest, e.code().into(), e.to_string(), None));
                    continue;
                }
            };
            let mut opened = opened;
            let id = opened.signed.packet.envelope.id;
            lane = lane.min(opened.signed.packet.envelope.priority);
            let span = info_span!("packet", packet_id = %id, kind = %opened.signed.packet.packet_type());
            let _enter = span.enter();
            let class = match new.get(&id) {
                // A copy sent twice within one batch.
                Some((first, rec)) if first.ct_eq(&digest) => {
                    crate::delivery::Incoming::Duplicate { received_at: rec.received_at }
                }
                Some((first, rec)) => {
                    crate::delivery::Incoming::DuplicateWithOtherBytes { received_at: rec.received_at, first: *first }
                }
                None => lock(&self.inner.inbox).classify(id, peer, &digest),
            };
            let also_from = match &class {
                Incoming::New { also_from } => also_from.clone(),
                _ => Vec::new(),
            };
            let item = match class {
                Incoming::Duplicate { received_at } => {
                    debug!("duplicate; receipted again");
                    ReceiptItem {
                        packet_id: id,
                        received_at: timestamp_of(received_at),
                        sealed_digest: digest,
                        outcome: ReceiptOutcome::Accepted,
                        policy: self.admitted_under(id, peer, &new),
                    }
                }
                Incoming::DuplicateWithOtherBytes { received_at, first } => {
                    if let Some(suppressed) = self.partner_log(peer, "resealed") {
                        warn!(suppressed, "same packet id with other bytes; receipted as the first copy");
                    }
                    ReceiptItem {
                        packet_id: id,
                        received_at: timestamp_of(received_at),
                        sealed_digest: first,
                        outcome: ReceiptOutcome::Accepted,
                        policy: self.admitted_under(id, peer, &new),
                    }
                }
                Incoming::New { .. } => {
                    // The receiving side of the agreement: checked once, on first arrival (a
                    // retransmission gets the answer the first copy got).
                    // A forward is checked as the packet it carries (and its consent), under
                    // the rules for the partner that passed it on.
                    let mut forwarded_from = None;
                    let mut forwarded_kind = None;
                    let checked = match self.unwrap_forward(peer, &opened.signed.packet, now) {
                        Ok(Some(mut original)) => {
                            forwarded_from = Some(original.envelope.originator.node.clone());
                            forwarded_kind = Some(original.packet_type());
                            self.policies().decide(peer, Direction::Receive, &mut original, received_ms)
                        }
                        Ok(None) => {
                            self.policies().decide(peer, Direction::Receive, &mut opened.signed.packet, received_ms)
                        }
                        Err((code, reason)) => {
                            if let Some(suppressed) = self.partner_log(peer, "forwards") {
                                warn!(%code, suppressed, "forward refused; not stored");
                            }
                            let policy = self.policies().policy(peer).map(|p| p.hash);
                            items.push(rejection(id, now, digest, code, reason, policy));
                            continue;
                        }
                    };
                    let verdict = checked;
                    if let Decision::Deny(denial) = verdict.decision {
                        if let Some(suppressed) = self.partner_log(peer, "policy") {
                            warn!(rule = %denial.rule, suppressed, "refused by policy; not stored");
                        }
                        let code = format!("policy.{}", denial.rule);
                        items.push(rejection(id, now, digest, code, denial.reason, verdict.policy));
                        continue;
                    }
                    let packet = &opened.signed.packet;
                    if let Err((code, reason)) = self.system_context(packet, peer, &new, &mut acked) {
                        if let Some(suppressed) = self.partner_log(peer, "system") {
                            warn!(%code, suppressed, "system packet refused; not stored");
                        }
                        items.push(rejection(id, now, digest, code.into(), reason, verdict.policy));
                        continue;
                    }
                    if !also_from.is_empty() {
                        // Kept apart from the other sender's packet, and recorded: someone may
                        // be squatting another partner's packet id.
                        let others = also_from.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ");
                        if let Some(suppressed) = self.partner_log(peer, "collisions") {
                            warn!(also_from = %others, suppressed, "packet id already used by another partner; both kept, both shown as suspicious");
                        }
                        ops.push(Op::Audit(AuditEvent::IdCollision {
                            packet_id: id,
                            from: peer.clone(),
                            also_from: also_from.clone(),
                        }));
                    }
                    let rec = InboxRecord {
                        sender: peer.clone(),
                        sealed_digest: digest,
                        received_at: received_ms,
                        packet_type: forwarded_kind.unwrap_or(packet.packet_type()).as_str().into(),
                        priority: packet.envelope.priority,
                        due_by: packet.envelope.due_by,
                        reads: Vec::new(),
                        policy: verdict.policy,
                        originator: forwarded_from.clone(),
                    };
                    ops.push(Op::Put(Tree::Evidence, pair_key(id, peer), opened.signed.bytes));
                    ops.push(store::put(Tree::Inbox, pair_key(id, peer), &rec));
                    for d in lock(&self.inner.deadlines).on_packet(packet, Flow::Received, peer, received_ms) {
                        ops.push(store::put(Tree::Deadlines, Deadlines::key(&d), &d));
                    }
                    new.insert(id, (digest, rec));
                    ReceiptItem {
                        packet_id: id,
                        received_at: now,
                        sealed_digest: digest,
                        outcome: ReceiptOutcome::Accepted,
                        policy: verdict.policy,
                    }
                }
            };
            items.push(item);
        }
        if items.is_empty() {
            return Ok(None);
        }
        for e in acked.values() {
            ops.push(store::put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), e));
        }
        let count = items.len();
        let audited: Vec<Receipted> = items.iter().map(receipted).collect();
        let receipt = Packet::delivery_receipt(&self.inner.me, peer, lane, items, now, &mut rand_core::OsRng);
        let receipt_id = receipt.envelope.id;
        ops.push(Op::Audit(AuditEvent::Received {
            from: peer.clone(),
            receipt: receipt_id,
            items: audited,
            policy: self.policies().policy(peer).map(|p| p.hash),
        }));
        let sealed = self.inner.seal.seal(&receipt, &mut rand_core::OsRng)?.pop().map(|s| s.bytes).unwrap_or_default();
        ops.push(Op::Put(Tree::Issued, receipt_id.as_bytes().to_vec(), sealed.clone()));
        self.inner.store.commit(ops).await?;
        {
            let mut inbox = lock(&self.inner.inbox);
            for (id, (digest, rec)) in &new {
                inbox.record(*id, peer.clone(), *digest, rec.received_at);
            }
        }
        if !acked.is_empty() {
            // On disk now: the officers' acknowledgements go into memory.
            let mut outbox = lock(&self.inner.outbox);
            for ((id, to), e) in acked {
                outbox.add_reads(id, &to, e.reads);
            }
        }
        info!(from = %peer, copies = count, stored = new.len(), receipt = %receipt_id, "batch stored and receipted");
        Ok(Some((sealed, lane)))
    }

    /// System packets are about something this node holds: a ReadAck about a copy it sent to
    /// `peer` (each officer once, a bounded number), a consent about a packet `peer` sent it.
    /// Anything else is refused (the code and why) and not stored. A ReadAck that is taken adds
    /// its officer to the entry in `acked`, which the batch writes and, once on disk, puts in
    /// memory.
    fn system_context(
        &self,
        packet: &Packet,
        peer: &NodeId,
        batch: &HashMap<PacketId, (Digest, InboxRecord)>,
        acked: &mut HashMap<(PacketId, NodeId), Entry>,
    ) -> Result<(), (&'static str, String)> {
        match &packet.body {
            Body::ReadAck(ack) => {
                let key = (ack.packet_id, peer.clone());
                let entry =
                    acked.get(&key).cloned().or_else(|| lock(&self.inner.outbox).entry(ack.packet_id, peer).cloned());
                match Outbox::read_ack_match(entry.as_ref(), &ack.officer) {
                    ReadAckMatch::New => {
                        if let Some(mut e) = entry {
                            e.reads.push((ack.officer.clone(), crate::delivery::millis(ack.read_at)));
                            acked.insert(key, e);
                        }
                        Ok(())
                    }
                    ReadAckMatch::Unknown => Err((
                        "system.unknown_packet",
                        format!("acknowledges {}, which this node did not send to {peer}", ack.packet_id),
                    )),
                    ReadAckMatch::Already => {
                        Err(("system.duplicate_ack", format!("{} already acknowledged {}", ack.officer, ack.packet_id)))
                    }
                    ReadAckMatch::Full => Err((
                        "system.too_many_acks",
                        format!("{} already holds {} acknowledgements", ack.packet_id, store::MAX_READS),
                    )),
                }
            }
            Body::OnwardConsent(c) => {
                if batch.contains_key(&c.packet_id) || lock(&self.inner.inbox).has(c.packet_id, peer) {
                    Ok(())
                } else {
                    Err((
                        "system.unknown_packet",
                        format!("a consent about {}, which {peer} did not send this node", c.packet_id),
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// If `packet` (from `peer`) is a forward: whether this node takes forwards from `peer`, and
    /// the hop's checks ([`crate::onward::unwrap`]); the original on success. `Ok(None)` for any
    /// other packet.
    fn unwrap_forward(
        &self,
        peer: &NodeId,
        packet: &Packet,
        now: Timestamp,
    ) -> Result<Option<Packet>, (String, String)> {
        if packet.packet_type() != crate::packet::PacketType::Forward {
            return Ok(None);
        }
        match self.policies().policy(peer) {
            Some(p) if p.onward.accept_forwarded => {}
            Some(_) => {
                return Err((
                    "policy.onward.accept_forwarded".into(),
                    format!("this node does not take packets {peer} passes on from other originators"),
                ))
            }
            None => return Err(("policy.no_policy".into(), format!("no sharing policy with {peer}"))),
        }
        crate::onward::unwrap(self.inner.seal.keyring(), packet, peer, &self.inner.me, now)
            .map(|u| Some(u.original.packet))
            .map_err(|e| (e.code().to_owned(), e.to_string()))
    }

    /// The policy version under which a packet already received was admitted (for repeating
    /// its receipt), from this batch or the store.
    fn admitted_under(
        &self,
        id: PacketId,
        peer: &NodeId,
        batch: &HashMap<PacketId, (Digest, InboxRecord)>,
    ) -> Option<Digest> {
        match batch.get(&id) {
            Some((_, rec)) => rec.policy,
            None => self.inner.store.inbox_record(id, peer).ok().flatten().and_then(|r| r.policy),
        }
    }

    /// Keeps a connection to `peer` while there is something to send, and feeds its lanes.
    async fn sender_loop(self, peer: NodeId) {
        let Some(addr) = self.inner.partners.get(&peer).copied() else { return };
        let Some(wake) = self.inner.wake.get(&peer).cloned() else { return };
        let mut shutdown = self.inner.shutdown.clone();
        let mut conn: Option<quinn::Connection> = None;
        let mut tls_seen = *self.inner.tls_generation.borrow();
        let mut lanes: [Option<LaneHandle>; 3] = [None, None, None];
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = {
                let mut outbox = lock(&self.inner.outbox);
                outbox.handle_timeout(now_ms());
                outbox.poll_timeout()
            };
            self.persist_dirty().await;
            let idle = |next: Option<Millis>| {
                next.map_or(Duration::from_secs(1), |t| {
                    Duration::from_millis(t.saturating_sub(now_ms()).clamp(1, 1000))
                })
            };
            let has_ready = lock(&self.inner.outbox).ready_recipients(now_ms()).contains(&peer);
            if !has_ready {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(idle(next)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if tls_seen != *self.inner.tls_generation.borrow() {
                tls_seen = *self.inner.tls_generation.borrow();
                if let Some(c) = conn.take() {
                    info!("closing the connection: TLS material reloaded");
                    c.close(quinn::VarInt::from_u32(4), b"TLS material reloaded; reconnect");
                }
            }
            let c = match &conn {
                Some(c) if c.close_reason().is_none() => c.clone(),
                _ => match self.connect(addr, &peer).await {
                    Ok(c) => {
                        failures = 0;
                        conn = Some(c.clone());
                        lanes = [None, None, None];
                        c
                    }
                    Err(e) => {
                        failures += 1;
                        let backoff = self
                            .inner
                            .retry
                            .initial_backoff
                            .saturating_mul(1 << failures.min(7))
                            .min(self.inner.retry.max_backoff);
                        warn!(error = %e, retry_in_ms = backoff, "cannot reach partner");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                },
            };
            let mut fed = 0usize;
            for (slot, lane) in LANES.into_iter().enumerate() {
                loop {
                    let handle = match &lanes[slot] {
                        Some(h) if !h.jobs.is_closed() => h,
                        _ => lanes[slot].insert(self.open_lane(c.clone(), peer.clone(), lane)),
                    };
                    let Ok(permit) = handle.window.clone().try_acquire_owned() else { break };
                    let t = lock(&self.inner.outbox).poll_transmit_lane(now_ms(), &peer, lane);
                    let Some(t) = t else { break };
                    if let Err(mpsc::error::SendError(job)) =
                        handle.jobs.send(Job { t, _permit: permit, written_at: 0 })
                    {
                        // The lane ended between the check and the send: try again later.
                        lock(&self.inner.outbox).handle_send_failed(now_ms(), job.t.packet_id, &peer);
                        break;
                    }
                    fed += 1;
                }
            }
            self.persist_dirty().await;
            if fed == 0 {
                // Every lane with something to send has a full window: wait for a receipt.
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(idle(next)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn connect(&self, addr: SocketAddr, peer: &NodeId) -> Result<quinn::Connection, String> {
        let client = self.inner.client.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let connecting =
            self.inner.endpoint.connect_with(client, addr, &transport::server_name(peer)).map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "connection timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        info!(%addr, "connected");
        Ok(conn)
    }

    /// Starts a lane task; its stream is opened with the first copy.
    fn open_lane(&self, conn: quinn::Connection, peer: NodeId, lane: Priority) -> LaneHandle {
        let (jobs, rx) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(WINDOW));
        let span = info_span!("lane", peer = %peer, lane = lane.as_str());
        tokio::spawn(self.clone().run_lane(conn, peer, lane, rx).instrument(span));
        LaneHandle { jobs, window }
    }

    /// One outgoing lane: writes copies as they come, reads the receipts as they come back.
    /// When the stream fails, every copy still waiting in it goes back to the queue.
    async fn run_lane(
        self,
        conn: quinn::Connection,
        peer: NodeId,
        lane: Priority,
        mut jobs: mpsc::UnboundedReceiver<Job>,
    ) {
        let in_flight: Mutex<InFlight> = Mutex::new(InFlight::default());
        let result = async {
            let Some(first) = jobs.recv().await else { return Ok(()) };
            let (mut send, mut recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => {
                    lock(&in_flight).written(first, now_ms());
                    return Err(e.to_string());
                }
            };
            let _ = send.set_priority(lane_priority(lane));
            let writer = async {
                let mut next = Some(first);
                let mut sent = Vec::new();
                while let Some(job) = next {
                    let t = job.t.clone();
                    if self.write_copy(&mut send, job, &in_flight).await? {
                        sent.push(crate::audit::SentCopy { packet_id: t.packet_id, attempt: t.attempt, at: now_ms() });
                    }
                    // Record a burst of sends once the lane has nothing more waiting.
                    if jobs.is_empty() && !sent.is_empty() {
                        self.record_sends(&peer, std::mem::take(&mut sent));
                    }
                    next = jobs.recv().await;
                }
                // The node is closing this lane: finish, then let the reader collect receipts.
                let _ = send.finish();
                std::future::pending::<Result<(), String>>().await
            };
            let reader = async {
                let wait = Duration::from_millis(self.inner.retry.receipt_timeout);
                loop {
                    let read = wire::read_frame(&mut recv, MAX_RECEIPT_FRAME, self.inner.limits.frame_stall);
                    let frame = match tokio::time::timeout(wait, read).await {
                        Err(_) if lock(&in_flight).jobs.is_empty() => continue,
                        Err(_) => return Err("no receipt in time".to_owned()),
                        Ok(r) => r.map_err(|e| e.to_string())?,
                    };
                    let Some(frame) = frame else { return Ok(()) };
                    if let Err(e) = self.apply_receipt(&peer, &frame, &in_flight).await {
                        // A partner answering with what is not a receipt for what was sent:
                        // the administrator should know (within the partner's log budget).
                        if let Some(suppressed) = self.partner_log(&peer, "receipts") {
                            warn!(error = %e, suppressed, "receipt refused; the lane is closed and its copies sent again");
                        }
                        return Err(e);
                    }
                }
            };
            tokio::select! {
                r = writer => r,
                r = reader => r,
            }
        }
        .await;
        if let Err(e) = &result {
            debug!(error = %e, "lane failed; its copies will be sent again");
        }
        jobs.close();
        let mut failed: Vec<Transmit> = lock(&in_flight).jobs.drain().map(|(_, (_, j))| j.t).collect();
        while let Ok(job) = jobs.try_recv() {
            failed.push(job.t);
        }
        {
            let mut outbox = lock(&self.inner.outbox);
            for t in &failed {
                outbox.handle_send_failed(now_ms(), t.packet_id, &t.recipient);
            }
        }
        self.persist_dirty().await;
        if let Some(w) = self.inner.wake.get(&peer) {
            w.notify_one();
        }
    }

    /// Appends the sends of a burst to the audit trail, without holding up the lane (the record
    /// is a log of what was done, not a condition for doing it).
    fn record_sends(&self, to: &NodeId, copies: Vec<crate::audit::SentCopy>) {
        let store = self.inner.store.clone();
        let event = AuditEvent::Sent { to: to.clone(), copies };
        tokio::spawn(async move {
            if let Err(e) = store.commit(vec![Op::Audit(event)]).await {
                warn!(error = %e, "could not record sends in the audit trail");
            }
        });
    }

    /// Writes one copy on its lane, unless it stopped being in flight while it waited; returns
    /// whether it was written.
    async fn write_copy(
        &self,
        send: &mut quinn::SendStream,
        job: Job,
        in_flight: &Mutex<InFlight>,
    ) -> Result<bool, String> {
        if !lock(&self.inner.outbox).is_in_flight(&job.t) {
            // Timed out or expired while it waited in the lane: its window slot is free again.
            let peer = job.t.recipient.clone();
            drop(job);
            if let Some(w) = self.inner.wake.get(&peer) {
                w.notify_one();
            }
            return Ok(false);
        }
        let key = pair_key(job.t.packet_id, &job.t.recipient);
        let Some(bytes) = self.inner.store.get(Tree::Sealed, &key).map_err(|e| e.to_string())? else {
            warn!(packet_id = %job.t.packet_id, "sealed copy missing from the store; cannot send");
            return Ok(false);
        };
        let t = job.t.clone();
        lock(in_flight).written(job, now_ms());
        wire::write_frame(send, &bytes).await.map_err(|e| e.to_string())?;
        lock(&self.inner.outbox).handle_written(now_ms(), &t);
        debug!(packet_id = %t.packet_id, attempt = t.attempt, bytes = bytes.len(), "copy written");
        Ok(true)
    }

    /// A receipt came back on a lane: verify it, apply each item, store it with the new entry
    /// states in one commit, and free the window.
    async fn apply_receipt(&self, peer: &NodeId, bytes: &[u8], in_flight: &Mutex<InFlight>) -> Result<(), String> {
        let opened = self.inner.seal.open(bytes, Timestamp::now()).map_err(|e| format!("receipt refused: {e}"))?;
        let Body::DeliveryReceipt(r) = &opened.signed.packet.body else {
            return Err("answer is not a delivery receipt".into());
        };
        if opened.route.sender != *peer || r.receiver != *peer {
            return Err("receipt signed by another node".into());
        }
        let receipt_id = opened.signed.packet.envelope.id;
        if self.inner.store.get(Tree::Receipts, receipt_id.as_bytes()).map_err(|e| e.to_string())?.is_some() {
            return Err(format!("receipt {receipt_id} was already applied: a replay, refused"));
        }
        let mut done = Vec::with_capacity(r.receipts.len());
        let mut ops = Vec::new();
        {
            let mut outbox = lock(&self.inner.outbox);
            let mut waiting = lock(in_flight);
            let mut last = None;
            for item in &r.receipts {
                // Only a copy this lane wrote and still waits for can be receipted here: an item
                // about anything else (never sent, sent on another lane, already receipted)
                // changes nothing.
                let Some((seq, _)) = waiting.jobs.get(&item.packet_id) else {
                    debug!(packet_id = %item.packet_id, "receipt item for no copy in flight on this lane; ignored");
                    continue;
                };
                let seq = *seq;
                let outcome = match &item.outcome {
                    ReceiptOutcome::Accepted => {
                        Outcome::Accepted { received_at: crate::delivery::millis(item.received_at) }
                    }
                    ReceiptOutcome::Rejected { code, reason } => {
                        Outcome::Rejected { code: code.clone(), reason: reason.clone() }
                    }
                };
                let span = info_span!("receipt", packet_id = %item.packet_id, receipt = %receipt_id);
                let _enter = span.enter();
                match outbox.handle_receipt(now_ms(), item.packet_id, peer, item.sealed_digest, outcome) {
                    crate::delivery::ReceiptMatch::Completed => {
                        if let Some((_, job)) = waiting.jobs.remove(&item.packet_id) {
                            done.push(job);
                        }
                        last = last.max(Some(seq));
                        ops.push(Op::Put(
                            Tree::ReceiptIndex,
                            pair_key(item.packet_id, peer),
                            receipt_id.as_bytes().to_vec(),
                        ));
                        match &item.outcome {
                            ReceiptOutcome::Accepted => info!("delivered"),
                            ReceiptOutcome::Rejected { code, .. } => warn!(%code, "rejected by the partner"),
                        }
                    }
                    crate::delivery::ReceiptMatch::DigestMismatch => {
                        // Not the bytes sent: the copy stays in flight and is sent again when
                        // its receipt does not come.
                        warn!("receipt names other bytes than were sent; will send again")
                    }
                    other => {
                        if let Some((_, job)) = waiting.jobs.remove(&item.packet_id) {
                            done.push(job);
                        }
                        debug!(?other, "receipt item not applied")
                    }
                }
            }
            if done.is_empty() {
                // A receipt must answer at least one copy this lane is waiting for: otherwise
                // it is not an answer to what was sent (a partner replaying, inventing or
                // flooding receipts), and the lane is closed; its copies are sent again.
                return Err(format!("receipt {receipt_id} completes no copy in flight on this lane; refused"));
            }
            // The stream is ordered: a copy written before the last one receipted here, and not
            // receipted itself, was dropped by the receiver (unreadable) and must be sent again;
            // a copy written after it is still on its way, and the receipt timer restarts.
            if let Some(last) = last {
                let now = now_ms();
                let skipped: Vec<PacketId> =
                    waiting.jobs.iter().filter(|(_, (seq, _))| *seq < last).map(|(id, _)| *id).collect();
                for id in skipped {
                    if let Some((_, job)) = waiting.jobs.remove(&id) {
                        outbox.handle_send_failed(now, id, peer);
                        done.push(job);
                    }
                }
                for (_, job) in waiting.jobs.values() {
                    outbox.handle_written(now, &job.t);
                }
            }
        }
        if !ops.is_empty() {
            // The signed receipt (COSE_Sign1) is the evidence: anyone with the partner's public
            // key can verify it later, without this node's decryption key.
            ops.push(Op::Put(Tree::Receipts, receipt_id.as_bytes().to_vec(), opened.signed.bytes.clone()));
            ops.extend(self.dirty_ops());
        }
        ops.push(Op::Audit(AuditEvent::Receipts {
            from: peer.clone(),
            receipt: receipt_id,
            digest: Digest::of(&opened.signed.bytes),
            items: r
                .receipts
                .iter()
                .map(|i| Receipted {
                    sent: done
                        .iter()
                        .find(|j| j.t.packet_id == i.packet_id)
                        .map(|j| crate::audit::Sent { attempt: j.t.attempt, at: j.written_at }),
                    ..receipted(i)
                })
                .collect(),
        }));
        self.inner.store.commit(ops).await.map_err(|e| e.to_string())?;
        drop(done);
        self.inner.receipts_applied.send_modify(|n| *n += 1);
        if let Some(w) = self.inner.wake.get(peer) {
            w.notify_one();
        }
        Ok(())
    }

    /// Store writes for the outbox entries changed since the last call. In-flight is not worth
    /// a flush: after a restart an in-flight entry is queued again anyway, which is exactly what
    /// its last persisted (queued) state says.
    fn dirty_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for e in lock(&self.inner.outbox).take_dirty() {
            match e.state {
                crate::delivery::EntryState::InFlight { .. } => continue,
                // An entry becomes expired once; that is the moment to record it.
                crate::delivery::EntryState::Expired { .. } => {
                    warn!(packet_id = %e.packet_id, to = %e.recipient, "expired before a receipt came");
                    ops.push(Op::Audit(AuditEvent::Expired { packet_id: e.packet_id, to: e.recipient.clone() }));
                }
                _ => {}
            }
            ops.push(store::put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &e));
        }
        ops
    }

    async fn persist_dirty(&self) {
        let ops = self.dirty_ops();
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.commit(ops).await {
            // The in-memory state is ahead of the disk; after a restart the older state is
            // retried, which is safe (the receiver dedups).
            warn!(error = %e, "could not persist outbox state");
        }
    }
}

/// Refusals as audit decisions.
fn denied_decisions(denied: &[Refused]) -> Vec<Decided> {
    denied
        .iter()
        .map(|r| Decided {
            to: r.recipient.clone(),
            decision: "deny".into(),
            rules: vec![r.denial.rule.clone()],
            redacted: Vec::new(),
            policy: r.policy,
            sealed: None,
        })
        .collect()
}

/// A receipt item as the audit trail records it.
fn receipted(i: &ReceiptItem) -> Receipted {
    Receipted {
        packet_id: i.packet_id,
        digest: i.sealed_digest,
        outcome: match &i.outcome {
            ReceiptOutcome::Accepted => "accepted".into(),
            ReceiptOutcome::Rejected { code, .. } => code.clone(),
        },
        sent: None,
    }
}

/// A copy handed to a lane, holding its slot in the lane's window until receipted or failed.
struct Job {
    t: Transmit,
    _permit: OwnedSemaphorePermit,
    /// When it was written to the stream (0: not yet).
    written_at: Millis,
}

/// The copies a lane has written and not yet seen receipted, with their write order.
#[derive(Default)]
struct InFlight {
    next: u64,
    jobs: HashMap<PacketId, (u64, Job)>,
}

impl InFlight {
    fn written(&mut self, mut job: Job, at: Millis) {
        self.next += 1;
        job.written_at = at;
        self.jobs.insert(job.t.packet_id, (self.next, job));
    }
}

/// The sender loop's handle on a lane task.
struct LaneHandle {
    jobs: mpsc::UnboundedSender<Job>,
    window: Arc<Semaphore>,
}

/// Refused client certificates, logged within the budget for unauthenticated events.
fn refusals_logged() -> transport::OnRefusal {
    Arc::new(|reason: &str| crate::limits::log_refusal("refused connection: client certificate", reason))
}

/// The QUIC stream priority of a lane: FLASH highest.
fn lane_priority(lane: Priority) -> i32 {
    match lane {
        Priority::Flash => 2,
        Priority::Urgent => 1,
        Priority::Routine => 0,
    }
}

/// A receipt item refusing a copy: the check's code and why.
fn rejection(
    packet_id: PacketId,
    at: Timestamp,
    digest: Digest,
    code: String,
    reason: String,
    policy: Option<Digest>,
) -> ReceiptItem {
    ReceiptItem {
        packet_id,
        received_at: at,
        sealed_digest: digest,
        outcome: ReceiptOutcome::Rejected { code, reason },
        policy,
    }
}

/// A [`Millis`] as a receipt's (whole-second) timestamp.
fn timestamp_of(ms: Millis) -> Timestamp {
    Timestamp::from_unix((ms / 1000) as i64).unwrap_or_else(|_| Timestamp::now())
}

fn packet_id_of(key: &[u8]) -> Result<PacketId, StoreError> {
    let b: [u8; 16] = key
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or(StoreError::Corrupt { tree: "inbox", reason: "key is not a packet id".into() })?;
    Ok(PacketId::from_bytes(b))
}
