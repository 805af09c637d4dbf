//! The packet's way in: accept (identify the partner, enforce its limits), one task per lane
//! stream reading frames within the partner's budgets, and the receiving of a batch: open,
//! check, dedup, commit with one flush, and one signed receipt.

use super::*;

impl Node {
    pub(super) async fn accept_loop(self) {
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
    pub(super) fn partner_log(&self, peer: &NodeId, kind: &'static str) -> Option<u64> {
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
        // Stored packets that may change a deadline, in order: staged after the loop.
        let mut about_deadlines: Vec<Packet> = Vec::new();
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
                    if Deadlines::concerns(packet) {
                        about_deadlines.push(packet.clone());
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
        // Deadline changes go to disk with the packets and into force after them; a failed
        // commit leaves them as they were, and the retransmission stages them again.
        let _writer = if about_deadlines.is_empty() { None } else { Some(self.inner.deadline_writer.lock().await) };
        let mut staged = crate::deadlines::Staged::default();
        {
            let deadlines = lock(&self.inner.deadlines);
            for packet in &about_deadlines {
                deadlines.stage(&mut staged, packet, Flow::Received, peer, received_ms);
            }
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        self.inner.store.commit(ops).await?;
        lock(&self.inner.deadlines).apply(staged);
        {
            let mut inbox = lock(&self.inner.inbox);
            for (id, (digest, rec)) in &new {
                inbox.record(*id, peer.clone(), *digest, rec.received_at);
            }
        }
        if !acked.is_empty() {
            // On disk now: the officers' acknowledgements go into memory.
            for ((id, to), e) in acked {
                if let Some(sender) = self.sender(&to) {
                    lock(sender).add_reads(id, e.reads);
                }
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
                let entry = acked
                    .get(&key)
                    .cloned()
                    .or_else(|| self.sender(peer).and_then(|s| lock(s).entry(ack.packet_id).cloned()));
                match crate::delivery::Outbox::read_ack_match(entry.as_ref(), &ack.officer) {
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
