//! The packet's way to one partner: a sender task per partner keeps a connection while there
//! is something to send and feeds its three lanes; each lane writes copies and applies the
//! receipts that come back.

use super::*;

impl Node {
    /// Keeps a connection to `peer` while there is something to send, and feeds its lanes.
    pub(super) async fn sender_loop(self, peer: NodeId) {
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
        // Entries this receipt completes: in force once it is on disk.
        let mut prepared = Vec::new();
        let mut dirty = Vec::new();
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
                match outbox.prepare_receipt(now_ms(), item.packet_id, peer, item.sealed_digest, outcome) {
                    (crate::delivery::ReceiptMatch::Completed, will_be) => {
                        if let Some((_, job)) = waiting.jobs.remove(&item.packet_id) {
                            done.push(job);
                        }
                        last = last.max(Some(seq));
                        prepared.push(item.packet_id);
                        if let Some(e) = will_be {
                            ops.push(store::put(Tree::Outbox, pair_key(e.packet_id, &e.recipient), &e));
                        }
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
                    (crate::delivery::ReceiptMatch::DigestMismatch, _) => {
                        // Not the bytes sent: the copy stays in flight and is sent again when
                        // its receipt does not come.
                        warn!("receipt names other bytes than were sent; will send again")
                    }
                    (other, _) => {
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
            let (more, keys) = self.dirty_ops();
            ops.extend(more);
            dirty = keys;
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
        let committed = self.inner.store.commit(ops).await;
        {
            let mut outbox = lock(&self.inner.outbox);
            for id in &prepared {
                match committed {
                    Ok(()) => outbox.apply_prepared(*id, peer),
                    Err(_) => outbox.abandon_prepared(*id, peer),
                }
            }
            if committed.is_err() {
                outbox.mark_dirty(dirty);
            }
        }
        committed.map_err(|e| e.to_string())?;
        drop(done);
        self.inner.receipts_applied.send_modify(|n| *n += 1);
        if let Some(w) = self.inner.wake.get(peer) {
            w.notify_one();
        }
        Ok(())
    }

    /// Store writes for the outbox entries changed since the last call, and their keys (to
    /// mark them dirty again if the commit fails). In-flight is not worth a flush: after a
    /// restart an in-flight entry is queued again anyway, which is exactly what its last
    /// persisted (queued) state says.
    fn dirty_ops(&self) -> (Vec<Op>, Vec<(PacketId, NodeId)>) {
        let mut ops = Vec::new();
        let mut keys = Vec::new();
        for e in lock(&self.inner.outbox).take_dirty() {
            keys.push((e.packet_id, e.recipient.clone()));
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
        (ops, keys)
    }

    /// Persists the outbox entries changed since the last call; if the store fails they stay
    /// dirty and are written by a later call.
    async fn persist_dirty(&self) {
        let (ops, keys) = self.dirty_ops();
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.commit(ops).await {
            warn!(error = %e, "could not persist outbox state; kept to write again");
            lock(&self.inner.outbox).mark_dirty(keys);
        }
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
