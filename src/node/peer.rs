//! The packet's way to one partner: the I/O shell around its [`Sender`] machine.
//!
//! A task per partner asks the machine whether to dial, dials, and hands each copy the machine
//! polls to the task of its lane; a lane task writes copies on its stream (when the machine
//! still wants them written) and reads the receipts coming back, verifies them, lets the machine
//! prepare them, stores them, and tells the machine the outcome. Every decision — window, order,
//! backoff, timeouts, what a receipt completes — is the machine's.

use super::*;
use crate::delivery::{sender, LaneId, Problem};

/// Pending entries read per page while the outbox loads behind the start.
const LOAD_PAGE: usize = 1024;

impl Node {
    /// Loads the pending outbox entries behind the start, a page at a time, FLASH first (the
    /// `pending` index is ordered by lane), each partner's machine woken as its copies come: a
    /// node with a million copies queued listens and takes submits at once. FLASH pages are
    /// read at the node's priority, the others on the bulk pool. A page that cannot be read is
    /// read again (logged); a stop ends the walk. Copies for a node that is no longer a
    /// partner stay on disk (logged): they go out if it is enrolled again.
    pub(super) async fn load_outbox(self) {
        let started = std::time::Instant::now();
        let cancel = self.inner.cancel.clone();
        // The partners of the start: one enrolled later reads its own copies
        // (`Node::set_partners`), and one removed meanwhile is fed for nothing.
        let machines: HashMap<NodeId, Arc<PartnerState>> =
            self.partner_states().into_iter().filter(|p| lock(&p.sender).is_loading()).map(|p| (p.node, p)).collect();
        let mut after: Option<Vec<u8>> = None;
        let (mut loaded, mut elsewhere) = (0usize, std::collections::BTreeMap::<NodeId, usize>::new());
        loop {
            // The lane of the last key read (`store::pending_key` starts with its rank).
            let lane = Priority::of_rank(after.as_ref().and_then(|k| k.first()).copied().unwrap_or(0));
            let (store, from) = (self.inner.store.clone(), after.clone());
            let page = match bulk::run(lane, move || store.pending_after(from.as_deref(), LOAD_PAGE)).await {
                Ok(read) => read.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (entries, last) = match page {
                Ok(page) => page,
                Err(error) => {
                    warn!(%error, loaded, "could not read the outbox; trying again in 2 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = cancel.cancelled() => return,
                    }
                }
            };
            if cancel.is_cancelled() {
                return;
            }
            let Some(last) = last else { break };
            after = Some(last);
            let mut by_peer: HashMap<NodeId, Vec<Entry>> = HashMap::new();
            for e in entries {
                by_peer.entry(e.recipient).or_default().push(e);
            }
            let now = now_ms();
            for (peer, entries) in by_peer {
                match machines.get(&peer) {
                    Some(p) => {
                        loaded += lock(&p.sender).load(now, entries);
                        p.wake.notify_one();
                    }
                    None => *elsewhere.entry(peer).or_default() += entries.len(),
                }
            }
        }
        for p in machines.values() {
            lock(&p.sender).end_loading();
        }
        for (peer, copies) in elsewhere {
            warn!(%peer, copies, "copies queued for a node that is no longer a partner: kept on disk, sent if it is enrolled again");
        }
        info!(pending = loaded, ms = started.elapsed().as_millis() as u64, "outbox loaded");
    }

    /// Keeps a connection to partner `p` while there is something to send, and feeds its
    /// lanes; ends when the node stops or the partner is removed.
    pub(super) async fn sender_loop(self, p: Arc<PartnerState>) {
        let (peer, wake, machine, cancel) = (p.node, p.wake.clone(), &p.sender, p.gone.clone());
        let mut conn: Option<quinn::Connection> = None;
        let mut dialled = p.addr();
        let mut tls_seen = *self.inner.tls_generation.borrow();
        let mut lanes: HashMap<Priority, LaneHandle> = HashMap::new();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if tls_seen != *self.inner.tls_generation.borrow() {
                tls_seen = *self.inner.tls_generation.borrow();
                if let Some(c) = &conn {
                    info!("closing the connection: TLS material reloaded");
                    c.close(quinn::VarInt::from_u32(4), b"TLS material reloaded; reconnect");
                }
            }
            if dialled != p.addr() {
                dialled = p.addr();
                if let Some(c) = &conn {
                    info!(addr = %dialled, "closing the connection: the partner's address changed");
                    c.close(quinn::VarInt::from_u32(4), b"address changed; reconnect");
                }
            }
            if let Some(reason) = conn.as_ref().and_then(quinn::Connection::close_reason) {
                // Gone (closed by the partner, idle, a reload): everything on it is queued again.
                conn = None;
                lanes.clear();
                let now = now_ms();
                let new = lock(machine).connection_is_new(now);
                lock(machine).handle_connection_lost(now);
                // Closed in the handshake: the partner refused this node (TLS 1.3 ends the
                // client's handshake before the server checks the client's certificate). A
                // failed dial, with its backoff, not a lost connection to dial again at once.
                let problem = links::dial_problem(&reason);
                if new && matches!(problem, Problem::RefusedByPartner | Problem::HandshakeFailed) {
                    let wait = lock(machine).handle_connect_failed(now, problem);
                    warn!(error = %links::printable(&reason.to_string(), 200), reason = %problem.text(&peer), retry_in_ms = wait, "refused by the partner");
                }
                let what =
                    if problem == Problem::Unreachable { "connection lost".to_owned() } else { problem.text(&peer) };
                lock(&p.link).failed(now, format!("{what} ({})", links::printable(&reason.to_string(), 200)));
            }
            let (timed_out, dial) = {
                let mut m = lock(machine);
                let now = now_ms();
                (m.handle_timeout(now), m.poll_connect(now))
            };
            for lane in timed_out {
                debug!(
                    lane = lane.priority.as_str(),
                    "no receipt in time; the lane is closed and its copies sent again"
                );
                if lanes.get(&lane.priority).is_some_and(|h| h.id == lane) {
                    lanes.remove(&lane.priority);
                }
            }
            self.persist_dirty(&p).await;
            if dial {
                match self.connect(dialled, &peer).await {
                    Ok(c) => {
                        lock(machine).handle_connected(now_ms());
                        lock(&p.link).connected(now_ms(), &c);
                        lanes.clear();
                        conn = Some(c);
                    }
                    Err((problem, e)) => {
                        let now = now_ms();
                        let wait = lock(machine).handle_connect_failed(now, problem);
                        lock(&p.link).failed(now, format!("{} ({})", problem.text(&peer), links::printable(&e, 200)));
                        warn!(error = %links::printable(&e, 200), reason = %problem.text(&peer), retry_in_ms = wait, "cannot reach partner");
                    }
                }
                continue;
            }
            if let Some(c) = &conn {
                loop {
                    let polled = lock(machine).poll_transmit(now_ms());
                    let Some((lane, t)) = polled else { break };
                    let handle = match lanes.get(&lane.priority) {
                        Some(h) if h.id == lane => h,
                        _ => {
                            let h = self.open_lane(c.clone(), &p, lane);
                            lanes.insert(lane.priority, h);
                            &lanes[&lane.priority]
                        }
                    };
                    if handle.jobs.send(t).is_err() {
                        // The lane ended between the poll and the send: its copies come again.
                        lock(machine).handle_lane_failed(now_ms(), lane);
                        lanes.remove(&lane.priority);
                        break;
                    }
                }
            }
            self.persist_dirty(&p).await;
            let next = lock(machine).poll_timeout();
            let idle = next
                .map_or(Duration::from_secs(1), |t| Duration::from_millis(t.saturating_sub(now_ms()).clamp(1, 1000)));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = cancel.cancelled() => {}
            }
        }
        if let Some(c) = &conn {
            if !self.inner.cancel.is_cancelled() {
                c.close(quinn::VarInt::from_u32(7), b"no longer a partner");
            }
        }
    }

    /// Dials `peer`; on failure, what holds it up ([`links::dial_problem`]) and the error.
    async fn connect(&self, addr: SocketAddr, peer: &NodeId) -> Result<quinn::Connection, (Problem, String)> {
        let client = self.inner.client.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let connecting = self
            .inner
            .endpoint
            .connect_with(client, addr, &transport::server_name(peer))
            .map_err(|e| (Problem::Unreachable, e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| (Problem::Unreachable, "no answer within 10 s".to_owned()))?
            .map_err(|e| (links::dial_problem(&e), e.to_string()))?;
        info!(%addr, key_exchange = self.inner.transport.key_exchange.describe(), "connected");
        Ok(conn)
    }

    /// Starts a lane task; its stream is opened with the first copy. Dropping the handle stops
    /// the task.
    fn open_lane(&self, conn: quinn::Connection, p: &Arc<PartnerState>, lane: LaneId) -> LaneHandle {
        let (jobs, rx) = mpsc::unbounded_channel();
        let span = info_span!("lane", peer = %p.node, lane = lane.priority.as_str());
        let task = self.spawn_for(p, self.clone().run_lane(conn, p.clone(), lane, rx).instrument(span));
        LaneHandle { id: lane, jobs, task: task.abort_handle() }
    }

    /// One outgoing lane: writes copies as they come, reads the receipts as they come back.
    /// When the stream fails, the machine queues its copies again.
    async fn run_lane(
        self,
        conn: quinn::Connection,
        p: Arc<PartnerState>,
        lane: LaneId,
        mut jobs: mpsc::UnboundedReceiver<Transmit>,
    ) {
        let (peer, machine) = (p.node, &p.sender);
        let result = async {
            let Some(first) = jobs.recv().await else { return Ok(()) };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let _ = send.set_priority(lane_priority(lane.priority));
            let writer = async {
                let mut next = Some(first);
                let mut sent = Vec::new();
                while let Some(t) = next {
                    if self.write_copy(&p, &mut send, lane, &t).await? {
                        sent.push(crate::audit::SentCopy { packet_id: t.packet_id, attempt: t.attempt, at: now_ms() });
                    } else {
                        // Its window slot is free again.
                        p.wake.notify_one();
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
                loop {
                    let frame = match wire::read_frame(&mut recv, MAX_RECEIPT_FRAME, self.inner.limits.frame_stall).await {
                        Ok(frame) => frame,
                        // The partner says why it stored nothing: the status will say it too.
                        Err(e @ wire::WireError::Reset(reset)) => {
                            let problem = match reset {
                                wire::Reset::StorageFull => Some(Problem::PartnerStorageFull),
                                wire::Reset::NotStored => Some(Problem::PartnerStoreFailed),
                                wire::Reset::Broken => None,
                            };
                            if let Some(p) = problem {
                                lock(machine).handle_lane_refused(now_ms(), lane, p);
                            }
                            return Err(e.to_string());
                        }
                        Err(e) => return Err(e.to_string()),
                    };
                    let Some(frame) = frame else { return Ok(()) };
                    lock(&p.link).contact(now_ms());
                    // Stored and applied in a task of its own: stopping the lane (a timeout, a
                    // reload) must not cut a commit off between the store and the machine.
                    let (node, from) = (self.clone(), p.clone());
                    let applied = self.spawn_for(&p, async move { node.apply_receipt(&from, lane, &frame).await });
                    let outcome = applied.await.unwrap_or_else(|e| Err(format!("receipt task failed: {e}")));
                    if let Err(e) = outcome {
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
        lock(machine).handle_lane_failed(now_ms(), lane);
        self.persist_dirty(&p).await;
        p.wake.notify_one();
    }

    /// Appends the sends of a burst to the audit trail, without holding up the lane (the record
    /// is a log of what was done, not a condition for doing it).
    fn record_sends(&self, to: &NodeId, copies: Vec<crate::audit::SentCopy>) {
        let store = self.inner.store.clone();
        let event = AuditEvent::Sent { to: *to, copies };
        self.spawn(async move {
            if let Err(e) = store.commit(vec![Op::Audit(event)]).await {
                warn!(error = %e, "could not record sends in the audit trail");
            }
        });
    }

    /// Writes one copy on its lane, if the machine still wants it written; returns whether it
    /// was written.
    async fn write_copy(
        &self,
        p: &PartnerState,
        send: &mut quinn::SendStream,
        lane: LaneId,
        t: &Transmit,
    ) -> Result<bool, String> {
        let machine = &p.sender;
        // A copy's first write takes the bytes kept from its submit; later ones read the store.
        let kept = lock(&p.fresh).take(&t.packet_id);
        let bytes = match kept {
            Some(b) => b,
            None => {
                let key = pair_key(t.packet_id, &t.recipient);
                // A copy in a segment file may be megabytes: read off the async workers.
                let read = match self.inner.store.get_stored(Tree::Sealed, &key) {
                    Ok(Some(crate::store::Stored::External(r))) => {
                        // Mostly a disk read (and a checksum): on the blocking pool, at the
                        // node's priority, never refused as busy (it holds a reference only).
                        let store = self.inner.store.clone();
                        let read = tokio::task::spawn_blocking(move || store.read_external(Tree::Sealed, &key, &r));
                        read.await.map_err(|e| e.to_string())?
                    }
                    Ok(Some(crate::store::Stored::Inline(v))) => Ok(Some(v)),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                let Some(bytes) = read.map_err(|e| e.to_string())? else {
                    // The lane fails, so the copy's window slot is given back with the others'.
                    warn!(packet_id = %t.packet_id, "sealed copy missing from the store; cannot send");
                    return Err(format!("sealed copy of {} missing from the store", t.packet_id));
                };
                bytes
            }
        };
        if !lock(machine).begin_write(now_ms(), lane, t) {
            return Ok(false);
        }
        wire::write_frame(send, &bytes).await.map_err(|e| e.to_string())?;
        lock(machine).handle_written(now_ms(), lane, t);
        debug!(packet_id = %t.packet_id, attempt = t.attempt, bytes = bytes.len(), "copy written");
        Ok(true)
    }

    /// A receipt came back on a lane: verify it, let the machine prepare it, store it with the
    /// new entry states in one commit, then put it in force (or, if the store failed, abandon
    /// it: the lane closes and its copies are sent again).
    async fn apply_receipt(&self, p: &PartnerState, lane: LaneId, bytes: &[u8]) -> Result<(), String> {
        let (peer, machine) = (&p.node, &p.sender);
        let store = &self.inner.store;
        let receipt = sender::open_receipt(&self.seal(), peer, bytes, Timestamp::now(), |id| {
            store.get(Tree::Receipts, id.as_bytes()).map(|r| r.is_some()).map_err(|e| e.to_string())
        })?;
        // Prepared, snapshot taken and handed to the store under one lock: no older snapshot
        // of these entries can land after this one (see `Outbox::take_dirty`).
        let (prepared, (dirty_keys, done), pending) = {
            let mut m = lock(machine);
            let prepared = m
                .prepare_receipt(now_ms(), lane, &receipt.items)
                .map_err(|e| format!("receipt {}: {e}; refused", receipt.id))?;
            let dirty = m.take_dirty();
            let dirty_keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient)).collect();
            let done = crate::delivery::terminal_keys(&dirty);
            let pending = store.enqueue(sender::receipt_ops(peer, &receipt, &prepared, dirty));
            (prepared, (dirty_keys, done), pending)
        };
        for id in prepared.mismatched() {
            warn!(packet_id = %id, receipt = %receipt.id, "receipt names other bytes than were sent; will send again");
        }
        for e in prepared.entries() {
            let span = info_span!("receipt", packet_id = %e.packet_id, receipt = %receipt.id);
            let _enter = span.enter();
            match &e.state {
                crate::delivery::EntryState::Rejected { code, .. } => warn!(%code, "rejected by the partner"),
                _ => info!("delivered"),
            }
        }
        let committed = pending.durable().await;
        {
            let mut m = lock(machine);
            match &committed {
                Ok(()) => {
                    let now = now_ms();
                    for e in prepared.entries() {
                        if matches!(e.state, crate::delivery::EntryState::Delivered { .. }) {
                            self.inner.receipt_latency.observe_ms(now.saturating_sub(e.submitted));
                        }
                    }
                    m.apply_receipt(now, prepared);
                    m.committed(done);
                }
                Err(_) => {
                    m.abandon_receipt(now_ms(), prepared);
                    m.mark_dirty(dirty_keys);
                }
            }
        }
        committed.map_err(|e| e.to_string())?;
        self.inner.receipts_applied.send_modify(|n| *n += 1);
        p.wake.notify_one();
        Ok(())
    }

    /// Persists the entries of `p`'s machine changed since the last call; if the store
    /// fails they stay dirty and are written by a later call.
    pub(super) async fn persist_dirty(&self, p: &PartnerState) {
        let machine = &p.sender;
        // Taken and handed to the store under one lock, so snapshots land in the order taken.
        let (keys, done, pending) = {
            let mut m = lock(machine);
            let dirty = m.take_dirty();
            let keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient)).collect();
            let done = crate::delivery::terminal_keys(&dirty);
            let ops = sender::entry_ops(dirty);
            if ops.is_empty() {
                return;
            }
            (keys, done, self.inner.store.enqueue(ops))
        };
        match pending.durable().await {
            Ok(()) => lock(machine).committed(done),
            Err(e) => {
                warn!(error = %e, "could not persist outbox state; kept to write again");
                lock(machine).mark_dirty(keys);
            }
        }
    }
}

/// The sender loop's handle on a lane task; dropping it stops the task.
struct LaneHandle {
    id: LaneId,
    jobs: mpsc::UnboundedSender<Transmit>,
    task: tokio::task::AbortHandle,
}

impl Drop for LaneHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sealed copies just submitted, kept in memory for their first write so that it does not read
/// back from the store what was just written to it. Bounded: copies up to [`Fresh::MAX_COPY`]
/// bytes, [`Fresh::MAX_TOTAL`] bytes per partner, the oldest dropped first (a dropped or
/// retransmitted copy is read from the store, as always).
#[derive(Default)]
pub(super) struct Fresh {
    copies: std::collections::HashMap<PacketId, Vec<u8>>,
    order: std::collections::VecDeque<PacketId>,
    total: usize,
}

impl Fresh {
    /// Largest copy kept.
    pub(super) const MAX_COPY: usize = 256 * 1024;
    /// Most bytes kept per partner.
    pub(super) const MAX_TOTAL: usize = 8 * 1024 * 1024;

    /// Keeps `bytes` (already on disk) for the first write of `packet_id`.
    pub(super) fn keep(&mut self, packet_id: PacketId, bytes: Vec<u8>) {
        if bytes.len() > Self::MAX_COPY {
            return;
        }
        self.total += bytes.len();
        if let Some(old) = self.copies.insert(packet_id, bytes) {
            self.total -= old.len();
        } else {
            self.order.push_back(packet_id);
        }
        while self.total > Self::MAX_TOTAL {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(b) = self.copies.remove(&oldest) {
                self.total -= b.len();
            }
        }
    }

    /// The bytes kept for `packet_id`, if any; they are not kept after.
    pub(super) fn take(&mut self, packet_id: &PacketId) -> Option<Vec<u8>> {
        let b = self.copies.remove(packet_id)?;
        self.total -= b.len();
        // `order` keeps the id until it reaches the front; then it is found missing and skipped.
        if self.order.len() > 2 * self.copies.len() + 64 {
            let copies = &self.copies;
            self.order.retain(|id| copies.contains_key(id));
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PacketId {
        format!("019ac0a1-5c00-7000-8000-00000000{n:04x}").parse().unwrap()
    }

    #[test]
    fn fresh_copies_are_bounded_and_taken_once() {
        let mut f = Fresh::default();
        f.keep(id(0), vec![0; Fresh::MAX_COPY + 1]);
        assert!(f.take(&id(0)).is_none(), "too large to keep");
        let n = Fresh::MAX_TOTAL / Fresh::MAX_COPY;
        for i in 0..=n as u16 {
            f.keep(id(i + 1), vec![1; Fresh::MAX_COPY]);
        }
        assert!(f.total <= Fresh::MAX_TOTAL);
        assert!(f.take(&id(1)).is_none(), "the oldest went first");
        assert_eq!(f.take(&id(2)).map(|b| b.len()), Some(Fresh::MAX_COPY));
        assert!(f.take(&id(2)).is_none(), "taken once");
    }
}
