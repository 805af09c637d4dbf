//! The packet's way in: accept (identify the partner, enforce its limits), one task per lane
//! stream reading frames within the partner's budgets, and the receiving of a batch: open,
//! check, dedup, commit with one flush, and one signed receipt.

use super::*;
use crate::delivery::receiver::{Known, Receiver};

impl Node {
    pub(super) async fn accept_loop(self) {
        let cancel = self.inner.cancel.clone();
        loop {
            let incoming = tokio::select! {
                i = self.inner.endpoint.accept() => i,
                _ = cancel.cancelled() => None,
            };
            let Some(incoming) = incoming else { break };
            let node = self.clone();
            self.spawn(async move {
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
                let enrolled: Vec<NodeId> = node.partner_states().iter().map(|p| p.node).collect();
                let found = transport::identify_peer(&conn, enrolled.iter()).map(|peer| node.partner(&peer));
                let partner = match found {
                    Ok(Some(p)) => p,
                    // Removed between the two reads.
                    Ok(None) => {
                        conn.close(quinn::VarInt::from_u32(1), b"refused");
                        return;
                    }
                    Err(e) => {
                        crate::limits::log_refusal("refused connection", &format!("{remote}: {e}"));
                        conn.close(quinn::VarInt::from_u32(1), b"refused");
                        return;
                    }
                };
                let peer = partner.node;
                debug!(%remote, %peer, "partner connected");
                lock(&partner.link).contact(crate::node::now_ms());
                let budget = &partner.budget;
                let id = conn.stable_id() as u64;
                for old in budget.admit(id, conn.clone(), node.inner.limits.connections_per_partner) {
                    // A partner can open connections as fast as it likes: logged within a budget.
                    if let Some(suppressed) = node.partner_log(&peer, "connections") {
                        info!(%peer, max = node.inner.limits.connections_per_partner, suppressed, "closing the partner's oldest connection: a newer one replaces it");
                    }
                    old.close(quinn::VarInt::from_u32(6), b"replaced by a newer connection");
                }
                node.clone().serve_connection(conn, partner.clone()).instrument(info_span!("conn", %peer)).await;
                budget.release(id);
            });
        }
    }

    async fn serve_connection(self, conn: quinn::Connection, partner: Arc<PartnerState>) {
        let mut reloaded = self.inner.tls_generation.subscribe();
        loop {
            let accepted = tokio::select! {
                a = conn.accept_bi() => a,
                _ = reloaded.changed() => {
                    info!("closing the connection: TLS material reloaded");
                    conn.close(quinn::VarInt::from_u32(4), b"TLS material reloaded; reconnect");
                    return;
                }
                _ = partner.gone.cancelled() => {
                    if !self.inner.cancel.is_cancelled() {
                        info!("closing the connection: no longer a partner");
                        conn.close(quinn::VarInt::from_u32(7), b"no longer a partner");
                    }
                    return;
                }
            };
            let Ok((send, recv)) = accepted else { return };
            let (node, p) = (self.clone(), partner.clone());
            self.spawn(async move { node.serve_stream(p, send, recv).await });
        }
    }

    /// One incoming lane: a reader task reads frames ahead (bounded in bytes), this task takes
    /// whatever has arrived as one batch, commits it with one flush, and answers with one receipt.
    async fn serve_stream(self, partner: Arc<PartnerState>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let (tx, mut rx) = mpsc::channel::<(wire::Frame, [OwnedSemaphorePermit; 2])>(MAX_RECEIPT_ITEMS);
        let (peer, budget) = (partner.node, &partner.budget);
        // The stream's share keeps one lane from taking the whole partner budget (its FLASH
        // lane reads on while its bulk lane waits to commit); the partner budget bounds them all.
        let stream_memory = MemoryBudget::new(self.inner.limits.stream_memory());
        let partner_memory = budget.memory.clone();
        let stall = self.inner.limits.frame_stall;
        let node = self.clone();
        let from = partner.clone();
        let reader = self.spawn(async move {
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
        let mut lane_seen = None;
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
            let (receipt, lane) = match self.receive_batch(&peer, frames, lane_seen).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    // Nothing of the batch was acknowledged; the sender will send it again, and
                    // the reset's code tells it why (its status shows it).
                    let reset = match &e {
                        NodeError::Store(StoreError::Full { .. }) => wire::Reset::StorageFull,
                        _ => wire::Reset::NotStored,
                    };
                    if let Some(suppressed) = self.partner_log(&peer, "not_stored") {
                        warn!(error = %e, suppressed, "could not store a batch; no receipt, the lane is reset and the partner sends it again");
                    }
                    let _ = send.reset(reset.code());
                    failed = true;
                    break;
                }
            };
            lane_seen = Some(lane);
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
            // (The stream was reset above with its reason, or is already gone.)
            let _ = send.reset(wire::Reset::NotStored.code());
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
                let _ = send.reset(wire::Reset::Broken.code());
            }
            _ => {
                let _ = send.finish();
            }
        }
    }

    /// Whether a line about something `peer` sent may be written now, within its log budget
    /// for that `kind` of event: `Some(n)` with the `n` events of the minute before that were
    /// only counted.
    pub(super) fn partner_log(&self, peer: &NodeId, kind: &'static str) -> Option<u64> {
        self.partner(peer)?.budget.log(kind, now_ms())
    }

    /// Waits until `peer` may send another frame (see [`crate::limits`]: twice its agreed
    /// receive rate).
    async fn pace(&self, partner: &PartnerState) {
        let (peer, budget) = (&partner.node, &partner.budget);
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

    /// One batch of incoming copies: the receiver machine opens and checks each copy (up to
    /// 1,024 signatures and decryptions: on the blocking pool, or on the bulk pool if the batch
    /// is [`LARGE`] and its lane, known from the lane's first batch, is not FLASH), then the
    /// batch is committed with one flush (deadline changes staged with it), put in force, and
    /// its receipt returned.
    async fn receive_batch(
        &self,
        peer: &NodeId,
        frames: Vec<wire::Frame>,
        lane: Option<Priority>,
    ) -> Result<Option<(Vec<u8>, Priority)>, NodeError> {
        let received_ms = now_ms();
        let node = self.clone();
        let from = *peer;
        let large = frames.iter().map(|f| f.len()).sum::<usize>() >= LARGE;
        let work = move || {
            let policies = node.policies();
            let seal = node.seal();
            let receiver = Receiver { seal: &seal, policies: &policies, known: &node };
            receiver.receive(&from, &frames, received_ms, &mut rand_core::OsRng)
        };
        let received = match lane {
            Some(lane) if large => bulk::run(lane, work).await?,
            _ => tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| NodeError::Store(StoreError::Backend(format!("the batch task failed: {e}"))))?,
        }?;
        // Logged whether or not anything is receipted (copies all waiting for keys not taken
        // yet make notices and no batch).
        for n in &received.notices {
            if let Some(suppressed) = self.partner_log(peer, n.kind) {
                match n.packet_id {
                    Some(id) => {
                        warn!(packet_id = %id, code = n.code.as_deref().unwrap_or(""), suppressed, "{}", n.message)
                    }
                    None => warn!(code = n.code.as_deref().unwrap_or(""), suppressed, "{}", n.message),
                }
            }
        }
        let Some(batch) = received.batch else { return Ok(None) };
        let mut ops = batch.ops;
        // Deadline changes go to disk with the packets and into force after them; a failed
        // commit leaves them as they were, and the retransmission stages them again.
        let _reserved = self.reserve_deadlines(&batch.about_deadlines).await;
        let mut staged = crate::deadlines::Staged::default();
        {
            let deadlines = lock(&self.inner.deadlines);
            for packet in &batch.about_deadlines {
                deadlines.stage(&mut staged, packet, Flow::Received, peer, received_ms);
            }
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        // A batch of FLASH alerts may use the store's headroom; bulk stops where it begins (its
        // copies get no receipt and are sent again later).
        self.inner.store.commit_as(batch.class, ops).await?;
        // On disk now: put in force.
        lock(&self.inner.deadlines).apply(staged);
        {
            let mut inbox = lock(&self.inner.inbox);
            for (id, digest, at) in &batch.stored {
                inbox.record(*id, *peer, *digest, *at);
            }
        }
        for (id, _, at) in &batch.stored {
            self.inner.listing.arrived(*id, *peer, *at);
        }
        for (id, _, _) in &batch.stored {
            // Nobody listening is fine.
            let _ = self.inner.arrivals.send(super::Arrival { id: *id, from: *peer });
        }
        if let (false, Some(p)) = (batch.acked.is_empty(), self.partner(peer)) {
            let mut sender = lock(&p.sender);
            for (id, officer, at, first) in batch.acked {
                sender.add_read(id, officer, at, first);
            }
        }
        for (id, a) in batch.announced {
            self.take_announcement(*peer, id, a, None);
        }
        info!(from = %peer, copies = batch.copies, stored = batch.stored.len(), receipt = %batch.receipt_id, "batch stored and receipted");
        Ok(Some((batch.receipt, batch.lane)))
    }
}

impl Node {
    /// The store's inbox records of `packet_id` (what earlier runs received counts from there:
    /// [`crate::delivery::Inbox`]); `None`, logged, if the store cannot be read.
    pub(super) fn stored_of(&self, packet_id: PacketId) -> Option<Vec<InboxRecord>> {
        match self.inner.store.inbox_records(packet_id) {
            Ok(stored) => Some(stored),
            Err(e) => {
                warn!(%packet_id, error = %e, "cannot read the inbox records of a packet");
                None
            }
        }
    }
}

/// What the receiver machine reads of the node: each answer under a brief lock.
impl Known for Node {
    fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest) -> Option<Incoming> {
        let stored = self.stored_of(packet_id)?;
        Some(lock(&self.inner.inbox).classify(packet_id, sender, digest, &stored))
    }

    fn has_received(&self, packet_id: PacketId, sender: &NodeId) -> Option<bool> {
        let stored = self.stored_of(packet_id)?;
        Some(lock(&self.inner.inbox).has(packet_id, sender, &stored))
    }

    fn run(&self) -> u64 {
        lock(&self.inner.inbox).run()
    }

    fn sent_to(&self, packet_id: PacketId, peer: &NodeId) -> Result<Option<Entry>, StoreError> {
        let held = self.partner(peer).and_then(|p| lock(&p.sender).entry(packet_id).cloned());
        super::sent_entry(held, &self.inner.store, packet_id, peer)
            .inspect_err(|e| warn!(error = %e, %packet_id, "the outbox could not be read"))
    }

    fn admitted_under(&self, packet_id: PacketId, sender: &NodeId) -> Option<Digest> {
        self.inner.store.inbox_record(packet_id, sender).ok().flatten().and_then(|r| r.policy)
    }
}
