//! What officers and clients read: delivery status and receipts of sent packets, the inbox,
//! received packets verified again from their evidence, deadlines.

use super::*;

impl Node {
    /// Per-recipient delivery status of a packet this node sent.
    pub fn status(&self, packet_id: PacketId) -> Result<Status, NodeError> {
        // The machines first: an entry leaves one only once its terminal state is on disk, so
        // each copy is either held (and newer than the store's) or read from the store.
        let held: Vec<Entry> =
            self.partner_states().iter().filter_map(|p| lock(&p.sender).entry(packet_id).cloned()).collect();
        let mut by_recipient: std::collections::BTreeMap<NodeId, Entry> =
            self.inner.store.outbox_entries_of(packet_id)?.into_iter().map(|e| (e.recipient, e)).collect();
        for e in held {
            by_recipient.insert(e.recipient, e);
        }
        if by_recipient.is_empty() {
            return Err(NodeError::UnknownPacket(packet_id));
        }
        Ok(by_recipient.into_values().collect())
    }

    /// The store's condition: disk space, a stuck or failing disk.
    pub fn store_health(&self) -> crate::store::Health {
        self.inner.store.health()
    }

    /// Why copies to `peer` wait, and since when, if anything is known against it (a node that
    /// is no longer a partner: that).
    pub fn partner_problem(&self, peer: &NodeId) -> Option<(crate::delivery::Problem, Millis)> {
        match self.partner(peer) {
            Some(p) => lock(&p.sender).problem(),
            None => Some((crate::delivery::Problem::NotAPartner, now_ms())),
        }
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
        let signed =
            crate::seal::verify_signed(self.seal().keyring(), &bytes).map_err(|e| NodeError::Evidence(packet_id, e))?;
        let item = match &signed.packet.body {
            Body::DeliveryReceipt(r) if r.receiver == *recipient => {
                r.receipts.iter().find(|i| i.packet_id == packet_id).cloned()
            }
            _ => None,
        };
        Ok(item.map(|i| (signed, i)))
    }

    /// The signed packet this node sent `recipient` as `packet_id` (verified again from the
    /// store): what the recipient's receipt names by its digest. `None` for a copy sent before
    /// store format 5, or deleted by retention.
    pub fn sent(
        &self,
        packet_id: PacketId,
        recipient: &NodeId,
    ) -> Result<Option<crate::seal::SignedPacket>, NodeError> {
        let Some(bytes) = self.inner.store.get(Tree::Sent, &pair_key(packet_id, recipient))? else {
            return Ok(None);
        };
        crate::seal::verify_signed(self.seal().keyring(), &bytes)
            .map(Some)
            .map_err(|e| NodeError::Evidence(packet_id, e))
    }

    /// The answer deadlines of `request` (one per counterpart).
    pub fn deadlines_of(&self, request: PacketId) -> Vec<Deadline> {
        lock(&self.inner.deadlines).of(request).into_iter().cloned().collect()
    }

    /// Open deadlines in `role`, soonest first.
    pub fn open_deadlines(&self, role: Role) -> Vec<Deadline> {
        lock(&self.inner.deadlines).open(role).into_iter().cloned().collect()
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

    /// How many copies wait (queued, in flight: all of them), and how many were delivered,
    /// rejected, expired and first acknowledged since this node started (terminal entries are
    /// on disk, not in memory: counting those of earlier runs would mean reading them all).
    pub fn outbox_summary(&self) -> crate::api::types::OutboxSummary {
        let mut m = crate::api::types::OutboxSummary::default();
        for p in self.partner_states() {
            let s = lock(&p.sender);
            let c = s.counts();
            m.queued += c.queued;
            m.in_flight += c.in_flight;
            m.delivered += c.done.delivered;
            m.rejected += c.done.rejected;
            m.expired += c.done.expired;
            m.read += s.first_reads();
            m.loading |= s.is_loading();
        }
        m
    }

    /// Whether the node takes work (`GET /readyz`): `Err` says why not (the disk full or
    /// failing, the outbox still loading).
    pub fn ready(&self) -> Result<(), String> {
        let h = self.store_health();
        if h.space == crate::store::SpaceState::Full {
            return Err("the disk is full: nothing can be stored".into());
        }
        if let Some(ms) = h.stuck_ms.filter(|ms| *ms >= 5_000) {
            return Err(format!("the store has not completed a write for {} s", ms / 1000));
        }
        if let Some(ms) = h.failing_ms {
            return Err(format!("the store's writes have failed for {} s", ms / 1000));
        }
        if self.partner_states().iter().any(|p| lock(&p.sender).is_loading()) {
            return Err("the outbox is still loading".into());
        }
        Ok(())
    }

    /// The node's metrics, in Prometheus's text format (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        use crate::markings::Priority;
        let mut e = crate::metrics::Exposition::default();
        let peers = self.peers();
        let now_s = (now_ms() / 1000) as f64;
        e.family("liaison_queued", "gauge", "Copies waiting to be sent to the partner (backoff included).");
        for p in &peers {
            e.sample("liaison_queued", &[("partner", p.node.as_str())], p.queued as f64);
        }
        e.family("liaison_queue_ready", "gauge", "Copies ready to send now, per partner and lane.");
        for p in self.partner_states() {
            let (node, s) = (p.node, lock(&p.sender));
            for lane in [Priority::Flash, Priority::Urgent, Priority::Routine] {
                e.sample(
                    "liaison_queue_ready",
                    &[("partner", node.as_str()), ("lane", lane.as_str())],
                    s.ready_in(lane) as f64,
                );
            }
        }
        e.family("liaison_in_flight", "gauge", "Copies sent to the partner, receipt awaited.");
        for p in &peers {
            e.sample("liaison_in_flight", &[("partner", p.node.as_str())], p.in_flight as f64);
        }
        for (name, help) in [
            ("liaison_delivered_total", "Copies receipted as stored by the partner, since the node started."),
            ("liaison_rejected_total", "Copies receipted as refused by the partner, since the node started."),
            ("liaison_expired_total", "Copies expired without a receipt, since the node started."),
        ] {
            e.family(name, "counter", help);
            for p in self.partner_states() {
                let (node, done) = (p.node, lock(&p.sender).counts().done);
                let v = match name {
                    "liaison_delivered_total" => done.delivered,
                    "liaison_rejected_total" => done.rejected,
                    _ => done.expired,
                };
                e.sample(name, &[("partner", node.as_str())], v as f64);
            }
        }
        e.histogram(
            "liaison_submit_to_receipt_seconds",
            "Submit to the partner's verified receipt stored, per delivered copy.",
            &self.inner.receipt_latency,
        );
        e.family("liaison_partner_connected", "gauge", "1 while a connection this node dialled to the partner is up.");
        for p in &peers {
            e.sample(
                "liaison_partner_connected",
                &[("partner", p.node.as_str())],
                f64::from(u8::from(p.state == "connected")),
            );
        }
        e.family("liaison_partner_problem", "gauge", "1 for what holds the partner's copies up, if anything.");
        for p in &peers {
            if let Some(problem) = p.problem {
                let code =
                    serde_json::to_value(problem).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                e.sample("liaison_partner_problem", &[("partner", p.node.as_str()), ("problem", &code)], 1.0);
            }
        }
        e.family(
            "liaison_partner_certificate_expiry_seconds",
            "gauge",
            "Seconds until the partner's TLS certificate (as last seen) expires.",
        );
        for p in &peers {
            if let Some(c) = &p.certificate {
                e.sample(
                    "liaison_partner_certificate_expiry_seconds",
                    &[("partner", p.node.as_str()), ("serial", &c.serial)],
                    c.not_after.unix() as f64 - now_s,
                );
            }
        }
        e.family(
            "liaison_expiry_seconds",
            "gauge",
            "Seconds until this node's certificate, a CA certificate, a CRL's next update, or keys in force (with no next generation) are retired.",
        );
        for (what, name, at) in self.inner.expiries.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            e.sample("liaison_expiry_seconds", &[("what", what), ("name", name)], at.unix() as f64 - now_s);
        }
        for (_, kid, at) in self.key_expiries() {
            e.sample("liaison_expiry_seconds", &[("what", "keys"), ("name", &kid)], at.unix() as f64 - now_s);
        }
        let h = self.store_health();
        e.family("liaison_store_segment_bytes", "gauge", "Bytes of the store's segment files (large content).");
        e.sample("liaison_store_segment_bytes", &[], self.inner.store.segment_bytes() as f64);
        e.family("liaison_store_free_bytes", "gauge", "Bytes free on the store's file system.");
        if let Some(free) = h.free_bytes {
            e.sample("liaison_store_free_bytes", &[], free as f64);
        }
        e.family("liaison_store_headroom_bytes", "gauge", "Bytes the store keeps free (for FLASH and receipts).");
        e.sample("liaison_store_headroom_bytes", &[], h.headroom_bytes as f64);
        e.family("liaison_store_space", "gauge", "1 for the store's disk state (ok, low, full).");
        let space = serde_json::to_value(h.space).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        e.sample("liaison_store_space", &[("state", &space)], 1.0);
        e.family("liaison_audit_head_seq", "gauge", "Sequence number of the last audit trail entry.");
        if let Ok(head) = self.inner.store.audit_head() {
            e.sample("liaison_audit_head_seq", &[], head.seq as f64);
        }
        e.family("liaison_key_exchange_info", "gauge", "The TLS key exchange this node does with its partners.");
        let kx = self.inner.transport.key_exchange.describe();
        e.sample("liaison_key_exchange_info", &[("group", kx)], 1.0);
        e.finish()
    }

    /// Every partner's link, keys, policy and waiting copies (`GET /v1/peers`), by node id.
    pub fn peers(&self) -> Vec<crate::api::types::PeerView> {
        let book = self.policies();
        let seal = self.seal();
        let ring = seal.keyring();
        let now = now_ms();
        let mut out: Vec<_> = self
            .partner_states()
            .iter()
            .map(|p| {
                let (node, addr) = (&p.node, p.addr());
                let link = lock(&p.link).clone();
                let (counts, problem, ready) = {
                    let s = lock(&p.sender);
                    let lanes = [Priority::Flash, Priority::Urgent, Priority::Routine];
                    (Some(s.counts()), s.problem().map(|(p, _)| p), lanes.map(|l| s.ready_in(l)))
                };
                let keys = ring.node(node);
                let policy = book.policy(node);
                let ts = crate::delivery::receiver::timestamp_of;
                crate::api::types::PeerView {
                    node: *node,
                    addr: addr.to_string(),
                    state: if link.connected_since.is_some() { "connected" } else { "not connected" }.into(),
                    connected_since: link.connected_since.map(ts),
                    last_contact: link.last_contact.map(ts),
                    reason: problem.map(|p| p.text(node)),
                    problem,
                    last_error: link.last_error.as_ref().map(|(_, e)| e.clone()),
                    last_error_at: link.last_error.as_ref().map(|(t, _)| ts(*t)),
                    certificate_days_left: link
                        .certificate
                        .as_ref()
                        .map(|c| (c.not_after.unix() - (now / 1000) as i64).div_euclid(86_400)),
                    certificate: link.certificate,
                    signing_kid: keys.map(|k| k.signing_kid.as_str().to_owned()),
                    encryption_kid: keys.map(|k| k.encryption_kid.as_str().to_owned()),
                    policy: policy.map(|p| p.hash),
                    policy_title: policy.and_then(|p| p.title.clone()),
                    queued: counts.map_or(0, |c| c.queued),
                    in_flight: counts.map_or(0, |c| c.in_flight),
                    key_exchange: self.inner.transport.key_exchange.describe().to_owned(),
                    ready_by_lane: ready,
                    key_generations: ring.generations(node).iter().map(|k| partners::describe_keys(k)).collect(),
                    announced: self.announcement(node).map(|a| crate::api::types::AnnouncedView {
                        packet_id: a.packet_id,
                        at: ts(a.at),
                        keys: a.keys.iter().map(partners::describe_keys).collect(),
                        accepted: a.accepted,
                        certificate: a.certificate.as_ref().and_then(|c| c.as_ref().ok()).cloned(),
                        certificate_problem: a.certificate.as_ref().and_then(|c| c.as_ref().err()).cloned(),
                    }),
                }
            })
            .collect();
        out.sort_by_key(|p| p.node);
        out
    }

    /// Packets officers sent, newest first (packet ids are time-ordered): `limit` after
    /// skipping `offset`, and how many there are.
    pub fn sent_records(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<crate::catalogue::SentRecord>, usize), NodeError> {
        let all = self.inner.store.scan(Tree::Submissions, &[])?;
        let total = all.len();
        let mut out = Vec::new();
        for (_, v) in all.iter().rev().skip(offset).take(limit) {
            out.push(store::decode(Tree::Submissions, v)?);
        }
        Ok((out, total))
    }

    /// Each recipient's delivery of a packet this node sent, and the answers it awaits.
    pub fn packet_status(&self, id: PacketId) -> Result<crate::api::types::PacketStatus, NodeError> {
        use crate::api::types::{DeadlineView, PacketStatus, RecipientStatus};
        let entries = self.status(id)?;
        let now = now_ms();
        Ok(PacketStatus {
            id,
            recipients: entries
                .iter()
                .map(|e| RecipientStatus::waiting(e, self.partner_problem(&e.recipient).map(|(p, _)| p)))
                .collect(),
            deadlines: self.deadlines_of(id).iter().map(|d| DeadlineView::of(d, now)).collect(),
        })
    }

    /// Each recipient's signed receipt for a packet this node sent, verified again.
    pub fn receipt_views(&self, id: PacketId) -> Result<Vec<crate::api::types::ReceiptView>, NodeError> {
        use crate::api::types::ReceiptView;
        let mut out = Vec::new();
        for e in &self.status(id)? {
            out.push(match self.receipt(id, &e.recipient)? {
                Some((signed, item)) => ReceiptView {
                    recipient: e.recipient,
                    receipt_id: Some(signed.packet.envelope.id),
                    signer: Some(signed.signer.to_string()),
                    verified: true,
                    received_at: Some(item.received_at),
                    sealed_digest: Some(item.sealed_digest),
                    outcome: Some(item.outcome),
                },
                None => ReceiptView {
                    recipient: e.recipient,
                    receipt_id: None,
                    signer: None,
                    verified: false,
                    received_at: None,
                    sealed_digest: None,
                    outcome: None,
                },
            });
        }
        Ok(out)
    }

    /// A packet officers sent, as the sender follows it; `None` if there is no such record. The
    /// packet shown is the copy of one of the recipients `shown` lets through.
    pub fn sent_view(
        &self,
        id: PacketId,
        shown: impl Fn(&NodeId) -> bool,
    ) -> Result<Option<crate::api::types::SentView>, NodeError> {
        let Some(record) = self.sent_record(id)? else { return Ok(None) };
        // Refused for every recipient: no copy, no status.
        let status = match self.packet_status(id) {
            Ok(s) => s,
            Err(NodeError::UnknownPacket(_)) => {
                crate::api::types::PacketStatus { id, recipients: Vec::new(), deadlines: Vec::new() }
            }
            Err(e) => return Err(e),
        };
        let receipts = if status.recipients.is_empty() { Vec::new() } else { self.receipt_views(id)? };
        // The copy that lost least to redaction.
        let mut order: Vec<&crate::audit::Decided> = record
            .decisions
            .iter()
            .filter(|d| d.decision != crate::audit::DecisionKind::Deny && shown(&d.to))
            .collect();
        order.sort_by_key(|d| d.redacted.len());
        let mut packet = None;
        for d in order {
            if let Some(signed) = self.sent(id, &d.to)? {
                packet = Some(signed.packet);
                break;
            }
        }
        Ok(Some(crate::api::types::SentView { record, status, receipts, packet }))
    }

    /// The sent listing's record of a packet officers sent.
    pub fn sent_record(&self, id: PacketId) -> Result<Option<crate::catalogue::SentRecord>, NodeError> {
        match self.inner.store.get(Tree::Submissions, id.as_bytes())? {
            Some(v) => Ok(Some(store::decode(Tree::Submissions, &v)?)),
            None => Ok(None),
        }
    }

    /// The requests this node answers late at `now` (overdue, or missed before a delay notice
    /// moved them): (request, requester).
    pub fn overdue_answers(&self, now: Millis) -> std::collections::HashSet<(PacketId, NodeId)> {
        self.open_deadlines(Role::Answer)
            .into_iter()
            .filter(|d| d.late(now))
            .map(|d| (d.request, d.counterpart))
            .collect()
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
        let stored = self.stored_of(packet_id).unwrap_or_default();
        lock(&self.inner.inbox).senders(packet_id, &stored).into_iter().filter(|n| n != sender).collect()
    }

    /// A received packet, verified again from the stored evidence.
    pub fn show(
        &self,
        packet_id: PacketId,
        from: Option<&NodeId>,
    ) -> Result<(Packet, InboxRecord, crate::keys::KeyId), NodeError> {
        let rec = self.received(packet_id, from)?;
        let (original, _) = self.held(packet_id, &rec.sender)?;
        Ok((original.packet, rec, original.signer))
    }

    /// A received packet as its originator signed it (for a forward: the original it carried,
    /// verified again), and the consent that came with it.
    pub(super) fn held(
        &self,
        packet_id: PacketId,
        sender: &NodeId,
    ) -> Result<(SignedPacket, Option<SignedPacket>), NodeError> {
        held(&self.inner.store, self.seal().keyring(), packet_id, sender)
    }
}

/// A received packet as its originator signed it, verified again from the stored evidence (for
/// a forward: the original it carried), and the consent that came with it. Shared by the node
/// and the simulator.
pub fn held(
    store: &Store,
    ring: &crate::keys::Keyring,
    packet_id: PacketId,
    sender: &NodeId,
) -> Result<(SignedPacket, Option<SignedPacket>), NodeError> {
    let evidence =
        store.get(Tree::Evidence, &pair_key(packet_id, sender))?.ok_or(NodeError::UnknownPacket(packet_id))?;
    let signed = crate::seal::verify_signed(ring, &evidence).map_err(|e| NodeError::Evidence(packet_id, e))?;
    let Body::Forward(f) = &signed.packet.body else { return Ok((signed, None)) };
    let original = crate::seal::verify_signed(ring, &f.original.0).map_err(|e| NodeError::Evidence(packet_id, e))?;
    let consent = match &f.consent {
        Some(c) => Some(crate::seal::verify_signed(ring, &c.0).map_err(|e| NodeError::Evidence(packet_id, e))?),
        None => None,
    };
    Ok((original, consent))
}

/// Verified consents of `originator` about `packet`: `carried` (the one that came with it), and
/// any it sent this node. Scans the inbox: run it off the async workers.
pub fn consents_about(
    store: &Store,
    ring: &crate::keys::Keyring,
    packet: PacketId,
    originator: &NodeId,
    carried: Option<SignedPacket>,
) -> Result<Vec<SignedPacket>, NodeError> {
    let mut out: Vec<SignedPacket> = carried.into_iter().collect();
    for (k, v) in store.scan(Tree::Inbox, &[])? {
        let rec: InboxRecord = store::decode(Tree::Inbox, &v)?;
        if rec.packet_type != crate::packet::PacketType::OnwardConsent || rec.sender != *originator {
            continue;
        }
        let (c, _) = held(store, ring, packet_id_of(&k)?, &rec.sender)?;
        if matches!(&c.packet.body, Body::OnwardConsent(x) if x.packet_id == packet) {
            out.push(c);
        }
    }
    Ok(out)
}
