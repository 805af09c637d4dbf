//! The node runtime: drives the delivery core with QUIC, the store and the clock.
//!
//! This is the I/O shell around [`crate::delivery`]: it moves bytes and time into the state
//! machines and carries out what they ask. It never decides delivery policy itself.
//!
//! One packet copy travels on its own bidirectional QUIC stream: the sender writes the sealed
//! bytes and finishes the stream; the receiver answers on the same stream with a sealed, signed
//! `DeliveryReceipt` and finishes. A FLASH copy's stream gets a higher QUIC stream priority, so
//! it is not stuck behind a large ROUTINE one on the same connection.
//!
//! Durability, in order:
//! - submit: the sealed copies and their outbox entries are committed (flushed) before the
//!   packet id is returned and before anything is sent;
//! - receive: the packet and the receipt are committed before the receipt leaves the node;
//! - receipt at the sender: stored (with the new entry state) as soon as it is verified.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::delivery::{Entry, Inbox, Incoming, Millis, Outbox, ReceiptOutcome as Outcome, RetryPolicy, Transmit};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;
use crate::packet::{Body, Packet, ReceiptOutcome};
use crate::seal::{peek_route, OpenError, SealContext, MAX_SEALED_BYTES};
use crate::store::{self, pair_key, InboxRecord, Op, Store, StoreError, Tree};
use crate::timestamp::Timestamp;
use crate::transport::{self, TlsMaterial};

/// Most copies in flight to one partner at a time.
const WINDOW: usize = 256;

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
    /// Retry spacing.
    pub retry: RetryPolicy,
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
    shutdown: watch::Receiver<bool>,
    retry: RetryPolicy,
}

fn now_ms() -> Millis {
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
            let receipt = store.get(Tree::Issued, &k)?.unwrap_or_default();
            inbox.record(id, rec.sender, rec.sealed_digest, receipt);
        }
        let server = transport::server_config(&config.tls)?;
        let client = transport::client_config(&config.tls)?;
        let bind = |source| NodeError::Bind { addr: config.listen, source };
        let socket = match config.socket {
            Some(s) => s,
            None => std::net::UdpSocket::bind(config.listen).map_err(bind)?,
        };
        let runtime = quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime")))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(bind)?;
        endpoint.set_default_client_config(client);
        let partners: HashMap<NodeId, SocketAddr> = config.partners.iter().map(|p| (p.node.clone(), p.addr)).collect();
        let wake = partners.keys().map(|n| (n.clone(), Arc::new(Notify::new()))).collect();
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
                shutdown,
                retry: config.retry,
            }),
        };
        info!(node = %me, addr = %node.local_addr(), pending = lock(&node.inner.outbox).pending(), "node started");
        tokio::spawn(node.clone().accept_loop().instrument(info_span!("accept", node = %me)));
        for peer in node.inner.partners.keys() {
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

    /// Seals `packet` for each recipient and stores the copies; returns once they are on disk.
    pub async fn submit(&self, packet: &Packet) -> Result<PacketId, NodeError> {
        for r in &packet.envelope.recipients {
            if !self.inner.partners.contains_key(r) {
                return Err(NodeError::NotAPartner(r.clone()));
            }
        }
        let sealed = self.inner.seal.seal(packet, &mut rand_core::OsRng)?;
        let now = now_ms();
        let expires = crate::delivery::millis(packet.envelope.expires);
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        for s in &sealed {
            let e = Outbox::new_entry(
                now,
                s.route.packet_id,
                s.route.recipient.clone(),
                s.route.priority,
                expires,
                Digest::of(&s.bytes),
            );
            let key = pair_key(e.packet_id, &e.recipient);
            ops.push(Op::Put(Tree::Sealed, key.clone(), s.bytes.clone()));
            ops.push(store::put(Tree::Outbox, key, &e));
            entries.push(e);
        }
        self.inner.store.commit(ops).await?;
        {
            let mut outbox = lock(&self.inner.outbox);
            for e in entries {
                outbox.admit(now, e);
            }
        }
        for r in &packet.envelope.recipients {
            if let Some(w) = self.inner.wake.get(r) {
                w.notify_one();
            }
        }
        info!(packet_id = %packet.envelope.id, kind = %packet.packet_type(), priority = packet.envelope.priority.as_str(), recipients = sealed.len(), "submitted");
        Ok(packet.envelope.id)
    }

    /// Per-recipient delivery status of a packet this node sent.
    pub fn status(&self, packet_id: PacketId) -> Result<Status, NodeError> {
        let entries: Vec<Entry> = lock(&self.inner.outbox).entries_of(packet_id).into_iter().cloned().collect();
        if entries.is_empty() {
            return Err(NodeError::UnknownPacket(packet_id));
        }
        Ok(entries)
    }

    /// How many outbox entries are in each state (queued, in_flight, delivered, rejected,
    /// expired), and how many were read.
    pub fn outbox_summary(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let outbox = lock(&self.inner.outbox);
        let mut m = std::collections::BTreeMap::new();
        for e in outbox.entries() {
            *m.entry(e.state.name()).or_default() += 1;
            if e.read.is_some() {
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

    /// A received packet, verified again from the stored evidence.
    pub fn show(&self, packet_id: PacketId) -> Result<(Packet, InboxRecord), NodeError> {
        let rec = self.inner.store.inbox_record(packet_id)?.ok_or(NodeError::UnknownPacket(packet_id))?;
        let evidence = self.inner.store.get(Tree::Evidence, packet_id.as_bytes())?.unwrap_or_default();
        let signed = crate::seal::verify_signed(self.inner.seal.keyring(), &evidence)
            .map_err(|e| NodeError::Evidence(packet_id, e))?;
        Ok((signed.packet, rec))
    }

    /// An officer acknowledges a received packet: recorded here, and a signed `ReadAck` is sent
    /// to the originator. Acknowledging twice keeps the first acknowledgement.
    pub async fn ack(&self, packet_id: PacketId, officer: OfficerId) -> Result<(), NodeError> {
        let (packet, mut rec) = self.show(packet_id)?;
        if rec.read.is_some() {
            return Ok(());
        }
        let now = Timestamp::now();
        rec.read = Some((officer.clone(), now_ms()));
        self.inner.store.commit(vec![store::put(Tree::Inbox, packet_id.as_bytes().to_vec(), &rec)]).await?;
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

    /// Closes the endpoint (after in-flight work) and the store.
    pub async fn shutdown(self) {
        self.inner.endpoint.close(quinn::VarInt::from_u32(0), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.endpoint.wait_idle()).await;
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
                        warn!(%remote, error = %e, "refused connection: TLS handshake failed");
                        return;
                    }
                };
                let peer = match transport::identify_peer(&conn, node.inner.partners.keys()) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(%remote, error = %e, "refused connection");
                        conn.close(quinn::VarInt::from_u32(1), b"certificate names no enrolled partner");
                        return;
                    }
                };
                debug!(%remote, %peer, "partner connected");
                node.serve_connection(conn, peer.clone()).instrument(info_span!("conn", %peer)).await;
            });
        }
    }

    async fn serve_connection(self, conn: quinn::Connection, peer: NodeId) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let node = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                if let Err(e) = node.receive(peer, send, recv).await {
                    debug!(error = %e, "stream ended without a receipt");
                }
            });
        }
    }

    /// One incoming copy: open, dedup, store, flush, receipt.
    async fn receive(
        &self,
        peer: NodeId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), String> {
        let bytes = recv.read_to_end(MAX_SEALED_BYTES).await.map_err(|e| e.to_string())?;
        let digest = Digest::of(&bytes);
        let now = Timestamp::now();
        let opened = self.inner.seal.open(&bytes, now).and_then(|o| {
            if o.route.sender == peer {
                Ok(o)
            } else {
                Err(OpenError::HeaderMismatch(format!("sent by {} over the connection of {peer}", o.route.sender)))
            }
        });
        let receipt = match opened {
            Ok(opened) => {
                let packet = &opened.signed.packet;
                let id = packet.envelope.id;
                let span = info_span!("packet", packet_id = %id, kind = %packet.packet_type());
                let _enter = span.enter();
                let class = lock(&self.inner.inbox).classify(id, &peer, &digest);
                match class {
                    Incoming::Duplicate { receipt } => {
                        debug!("duplicate; receipted again");
                        receipt
                    }
                    Incoming::DuplicateWithOtherBytes { receipt, .. } => {
                        warn!("same packet id with other bytes; first receipt repeated");
                        receipt
                    }
                    Incoming::New => {
                        let receipt =
                            self.receipt(&peer, id, packet.envelope.priority, digest, ReceiptOutcome::Accepted, now)?;
                        let rec = InboxRecord {
                            sender: peer.clone(),
                            sealed_digest: digest,
                            received_at: now_ms(),
                            packet_type: packet.packet_type().as_str().into(),
                            priority: packet.envelope.priority,
                            due_by: packet.envelope.due_by,
                            read: None,
                        };
                        let mut ops = vec![
                            Op::Put(Tree::Evidence, id.as_bytes().to_vec(), opened.signed.bytes.clone()),
                            store::put(Tree::Inbox, id.as_bytes().to_vec(), &rec),
                            Op::Put(Tree::Issued, id.as_bytes().to_vec(), receipt.clone()),
                        ];
                        if let Body::ReadAck(ack) = &packet.body {
                            let mut outbox = lock(&self.inner.outbox);
                            outbox.handle_read_ack(
                                ack.packet_id,
                                &peer,
                                ack.officer.clone(),
                                crate::delivery::millis(ack.read_at),
                            );
                            ops.extend(
                                outbox
                                    .take_dirty()
                                    .iter()
                                    .map(|e| store::put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), e)),
                            );
                        }
                        drop(_enter);
                        self.inner.store.commit(ops).await.map_err(|e| e.to_string())?;
                        lock(&self.inner.inbox).record(id, peer.clone(), digest, receipt.clone());
                        info!(parent: &span, from = %peer, "stored and receipted");
                        receipt
                    }
                }
            }
            Err(e) => {
                let Ok(route) = peek_route(&bytes) else {
                    warn!(error = %e, "unreadable packet; no receipt possible");
                    let _ = send.reset(quinn::VarInt::from_u32(2));
                    return Err(e.to_string());
                };
                warn!(packet_id = %route.packet_id, code = e.code(), error = %e, "rejected");
                let outcome = ReceiptOutcome::Rejected { code: e.code().into(), reason: e.to_string() };
                self.receipt(&peer, route.packet_id, route.priority, digest, outcome, now)?
            }
        };
        send.write_all(&receipt).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn receipt(
        &self,
        to: &NodeId,
        about: PacketId,
        priority: Priority,
        digest: Digest,
        outcome: ReceiptOutcome,
        now: Timestamp,
    ) -> Result<Vec<u8>, String> {
        let p =
            Packet::delivery_receipt(&self.inner.me, to, about, priority, digest, outcome, now, &mut rand_core::OsRng);
        let mut sealed = self.inner.seal.seal(&p, &mut rand_core::OsRng).map_err(|e| e.to_string())?;
        Ok(sealed.pop().map(|s| s.bytes).unwrap_or_default())
    }

    /// Keeps a connection to `peer` while there is something to send, and sends.
    async fn sender_loop(self, peer: NodeId) {
        let Some(addr) = self.inner.partners.get(&peer).copied() else { return };
        let Some(wake) = self.inner.wake.get(&peer).cloned() else { return };
        let window = Arc::new(Semaphore::new(WINDOW));
        let mut shutdown = self.inner.shutdown.clone();
        let mut conn: Option<quinn::Connection> = None;
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
            let has_ready = lock(&self.inner.outbox).ready_recipients(now_ms()).contains(&peer);
            if !has_ready {
                let sleep = next.map_or(Duration::from_secs(1), |t| {
                    Duration::from_millis(t.saturating_sub(now_ms()).clamp(1, 1000))
                });
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let c = match &conn {
                Some(c) if c.close_reason().is_none() => c.clone(),
                _ => match self.connect(addr, &peer).await {
                    Ok(c) => {
                        failures = 0;
                        conn = Some(c.clone());
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
            loop {
                let Ok(permit) = window.clone().try_acquire_owned() else {
                    // Window full: wait for a slot.
                    let _ = window.clone().acquire_owned().await.map(drop);
                    break;
                };
                let t = lock(&self.inner.outbox).poll_transmit(now_ms(), &peer);
                let Some(t) = t else { break };
                let node = self.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    node.transmit(c, t).await;
                    drop(permit);
                });
            }
            self.persist_dirty().await;
        }
    }

    async fn connect(&self, addr: SocketAddr, peer: &NodeId) -> Result<quinn::Connection, String> {
        let connecting = self.inner.endpoint.connect(addr, &transport::server_name(peer)).map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "connection timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        info!(%addr, "connected");
        Ok(conn)
    }

    /// Sends one copy and processes its receipt.
    async fn transmit(&self, conn: quinn::Connection, t: Transmit) {
        let span = info_span!("transmit", packet_id = %t.packet_id, to = %t.recipient, attempt = t.attempt);
        let result = self.try_transmit(&conn, &t).instrument(span.clone()).await;
        let _enter = span.enter();
        match result {
            Ok(()) => {}
            Err(e) => {
                debug!(error = %e, "send failed; will retry");
                lock(&self.inner.outbox).handle_send_failed(now_ms(), t.packet_id, &t.recipient);
            }
        }
        drop(_enter);
        self.persist_dirty().await;
        if let Some(w) = self.inner.wake.get(&t.recipient) {
            w.notify_one();
        }
    }

    async fn try_transmit(&self, conn: &quinn::Connection, t: &Transmit) -> Result<(), String> {
        let key = pair_key(t.packet_id, &t.recipient);
        let bytes =
            self.inner.store.get(Tree::Sealed, &key).map_err(|e| e.to_string())?.ok_or("sealed copy missing")?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let _ = send.set_priority(match t.priority {
            Priority::Flash => 2,
            Priority::Urgent => 1,
            Priority::Routine => 0,
        });
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let wait = Duration::from_millis(self.inner.retry.receipt_timeout);
        let receipt = tokio::time::timeout(wait, recv.read_to_end(MAX_SEALED_BYTES))
            .await
            .map_err(|_| "no receipt in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let opened = self.inner.seal.open(&receipt, Timestamp::now()).map_err(|e| format!("receipt refused: {e}"))?;
        let Body::DeliveryReceipt(r) = &opened.signed.packet.body else {
            return Err("answer is not a delivery receipt".into());
        };
        if opened.route.sender != t.recipient || r.receiver != t.recipient || r.packet_id != t.packet_id {
            return Err("receipt names another packet or receiver".into());
        }
        let outcome = match &r.outcome {
            ReceiptOutcome::Accepted => Outcome::Accepted { received_at: crate::delivery::millis(r.received_at) },
            ReceiptOutcome::Rejected { code, reason } => {
                Outcome::Rejected { code: code.clone(), reason: reason.clone() }
            }
        };
        let m = lock(&self.inner.outbox).handle_receipt(now_ms(), t.packet_id, &t.recipient, r.sealed_digest, outcome);
        match m {
            crate::delivery::ReceiptMatch::Completed => {
                self.inner
                    .store
                    .commit(vec![Op::Put(Tree::Receipts, key, receipt)])
                    .await
                    .map_err(|e| e.to_string())?;
                info!(
                    outcome = if matches!(r.outcome, ReceiptOutcome::Accepted) { "delivered" } else { "rejected" },
                    "receipt verified and stored"
                );
                Ok(())
            }
            crate::delivery::ReceiptMatch::DigestMismatch => Err("receipt names other bytes than were sent".into()),
            other => {
                debug!(?other, "receipt not applied");
                Ok(())
            }
        }
    }

    /// Store writes for the outbox entries changed since the last call. In-flight is not worth
    /// a flush: after a restart an in-flight entry is queued again anyway, which is exactly what
    /// its last persisted (queued) state says.
    fn dirty_ops(&self) -> Vec<Op> {
        lock(&self.inner.outbox)
            .take_dirty()
            .iter()
            .filter(|e| !matches!(e.state, crate::delivery::EntryState::InFlight { .. }))
            .map(|e| store::put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), e))
            .collect()
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

fn packet_id_of(key: &[u8]) -> Result<PacketId, StoreError> {
    let b: [u8; 16] = key
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or(StoreError::Corrupt { tree: "inbox", reason: "key is not a packet id".into() })?;
    Ok(PacketId::from_bytes(b))
}
