//! The packet's way out, up to the store: submit (policy per recipient, redaction, sealing),
//! forward, consent and acknowledgement. A submit returns once every copy is on disk; the
//! per-partner sender ([`super::peer`]) takes it from there.

use super::*;
use crate::delivery::submit::Onward;
use crate::delivery::AckRefusal;
use crate::packet::Checked;

impl Node {
    /// Checks `packet` against the sharing policy of each recipient, seals the copy each may
    /// have (redacted where its policy says so, signed naming that policy), and stores the
    /// copies; returns once they are on disk. Recipients the policy refuses get nothing and are
    /// listed in [`Submitted::denied`]; if every recipient is refused the submit fails.
    pub async fn submit(&self, packet: &Packet) -> Result<Submitted, NodeError> {
        // Counting the encoded size walks the packet without copying its content; the check of a
        // large one then runs on the bulk pool.
        let large = crate::encoding::cbor_len(packet) >= LARGE;
        let owned = packet.clone();
        let checked = bulk::run_if(large, packet.envelope.priority, move || Checked::new(owned))
            .await?
            .map_err(crate::seal::SealError::from)?;
        self.submit_checked(checked).await
    }

    /// [`Node::submit`] for a packet already checked (a draft parsed by the API): it is checked
    /// and encoded no more on its way to the signature.
    pub async fn submit_checked(&self, packet: Checked) -> Result<Submitted, NodeError> {
        self.submit_with(packet, Vec::new()).await
    }

    /// [`Node::submit_checked`], with `with` written in the same commit as the copies.
    async fn submit_with(&self, packet: Checked, with: Vec<Op>) -> Result<Submitted, NodeError> {
        let id = packet.envelope.id;
        for r in &packet.envelope.recipients {
            if !self.is_partner(r) {
                return Err(NodeError::NotAPartner(*r));
            }
            // A draft may carry its own id: one already sent would overwrite the copy's state
            // (a delivered copy queued again, its receipt orphaned).
            if self.inner.store.get(Tree::Outbox, &pair_key(id, r))?.is_some() {
                return Err(NodeError::IdInUse(id));
            }
        }
        let now = now_ms();
        // The policy walk, the encoding, the signature and the encryption of a large packet run
        // on the bulk pool, below the threads a FLASH alert needs.
        let large = packet.encoded_len() >= LARGE;
        let policies = self.policies();
        let node = self.clone();
        let (packet, sealed) = bulk::run_if(large, packet.envelope.priority, move || {
            let (copies, denied) = crate::delivery::submit::decide(&policies, &packet, now);
            let sealed = node.seal_copies(&packet, copies, denied, now);
            (packet, sealed)
        })
        .await?;
        self.store_sealed(&packet, sealed?, now, with).await
    }

    /// Signs and encrypts the copies decided for `packet` (one per allowed recipient; each names
    /// the recipients that actually get the packet).
    fn seal_copies(
        &self,
        packet: &Packet,
        copies: Vec<(Checked, SentCopy)>,
        denied: Vec<Refused>,
        now: Millis,
    ) -> Result<crate::delivery::submit::Prepared, crate::seal::SealError> {
        let seal = self.seal();
        // A key announcement is signed with the oldest key in force, which every partner holds.
        let seal = match packet.body {
            crate::packet::Body::KeyAnnouncement(_) => Arc::new(seal.with_oldest_key()),
            _ => seal,
        };
        crate::delivery::submit::seal(&seal, packet, copies, denied, now, &mut rand_core::OsRng)
    }

    /// Stores the copies sealed for `packet`, records the decisions in the audit trail, and
    /// hands the copies to their partners' sender machines. With no copy, only the refusal is
    /// recorded. `with`: writes that go to disk in the same commit (what the packet reports,
    /// such as the acknowledgement a ReadAck announces: both or neither).
    async fn store_sealed(
        &self,
        packet: &Packet,
        sealed: crate::delivery::submit::Prepared,
        now: Millis,
        with: Vec<Op>,
    ) -> Result<Submitted, NodeError> {
        use crate::delivery::submit::Prepared;
        let mut ops = with;
        let sub = match sealed {
            Prepared::Copies(sub) => sub,
            Prepared::AllDenied { ops: refusal, denied } => {
                ops.extend(refusal);
                self.inner.store.commit(ops).await?;
                return Err(NodeError::Denied(denied));
            }
        };
        ops.extend(sub.ops);
        // The recipients' machines as they are now (told to expect the copies, so that one
        // loading behind leaves them out) and, after the commit, as they are then: a partner
        // removed meanwhile gets its copies on disk, sent if it is enrolled again; one enrolled
        // again meanwhile gets them in its new machine.
        // The sealed copies, kept for their first write once on disk.
        let mut fresh: Vec<(NodeId, PacketId, Vec<u8>)> = Vec::new();
        for e in &sub.entries {
            let key = pair_key(e.packet_id, &e.recipient);
            let sealed = ops.iter().find_map(|op| match op {
                Op::Put(Tree::Sealed, k, v) if *k == key && v.len() <= peer::Fresh::MAX_COPY => Some(v.clone()),
                _ => None,
            });
            fresh.extend(sealed.map(|v| (e.recipient, e.packet_id, v)));
        }
        // Deadline changes go to disk with the copies and into force after them. From the
        // commit on, the work runs in a task of its own: a submitter that goes away (a client
        // hanging up) must not leave copies on disk that the sender machines never got.
        let node = self.clone();
        let concerns = Deadlines::concerns(packet);
        let copies = sub.copies;
        let entries = sub.entries;
        // ROUTINE and URGENT stop where the store's headroom begins; FLASH (and the small system
        // packets) may use it.
        let class = store::Class::of_packet(packet);
        for e in &entries {
            if let Some(p) = self.partner(&e.recipient) {
                lock(&p.sender).expect(e.packet_id);
            }
        }
        let stored = self.spawn(async move {
            let reserved = node.reserve_deadlines(copies.iter().map(|(p, _)| p)).await;
            let mut staged = crate::deadlines::Staged::default();
            if concerns {
                let deadlines = lock(&node.inner.deadlines);
                for (copy, to) in &copies {
                    deadlines.stage(&mut staged, copy, Flow::Sent, to, now);
                }
            }
            ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
            node.inner.store.commit_as(class, ops).await?;
            lock(&node.inner.deadlines).apply(staged);
            drop(reserved);
            for (to, id, bytes) in fresh {
                if let Some(p) = node.partner(&to) {
                    lock(&p.fresh).keep(id, bytes);
                }
            }
            for e in entries {
                if let Some(p) = node.partner(&e.recipient) {
                    lock(&p.sender).admit(now, e);
                    p.wake.notify_one();
                }
            }
            Ok::<(), NodeError>(())
        });
        stored.await.map_err(|_| NodeError::Store(StoreError::Closed))??;
        let s = &sub.submitted;
        info!(packet_id = %s.id, kind = %packet.packet_type(), priority = packet.envelope.priority.as_str(), recipients = s.sent.len(), refused = s.denied.len(), "submitted");
        Ok(sub.submitted)
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
            if !self.is_partner(r) {
                return Err(NodeError::NotAPartner(*r));
            }
        }
        let rec = self.received(packet_id, from)?;
        let (original, carried) = self.held(packet_id, &rec.sender)?;
        // A scan of everything received: on the blocking pool.
        let (about, by) = (original.packet.envelope.id, original.packet.envelope.originator.node);
        let consents = self.slow(move |node| node.consents_about(about, &by, carried)).await??;
        let now = now_ms();
        let id = PacketId::new_v7(now, &mut rand_core::OsRng);
        let plan = Onward { me: &self.inner.me, sender: &rec.sender, original: &original, consents: &consents };
        let (copies, denied) = plan.decide(&self.policies(), to, &officer, id, now, Timestamp::now());
        for d in &denied {
            warn!(packet_id = %packet_id, recipient = %d.recipient, rule = %d.denial.rule, "not passed on");
        }
        let Some((first, _)) = copies.first() else {
            let event = AuditEvent::Submitted {
                packet_id: id,
                kind: "Forward".into(),
                decisions: crate::delivery::submit::denied_decisions(&denied),
            };
            self.inner.store.commit(vec![Op::Audit(event)]).await?;
            return Err(NodeError::Denied(denied));
        };
        // A forward carries the original whole: a large one is sealed on the bulk pool.
        let first = first.clone();
        let large = first.encoded_len() >= LARGE;
        let node = self.clone();
        let (first, sealed) = bulk::run_if(large, first.envelope.priority, move || {
            let sealed = node.seal_copies(&first, copies, denied, now);
            (first, sealed)
        })
        .await?;
        self.store_sealed(&first, sealed?, now, Vec::new()).await
    }

    /// Verified consents of `originator` about `packet`: the one that came with it, and any it
    /// sent this node (scans the inbox: run it off the async workers).
    pub fn consents_about(
        &self,
        packet: PacketId,
        originator: &NodeId,
        carried: Option<SignedPacket>,
    ) -> Result<Vec<SignedPacket>, NodeError> {
        consents_about(&self.inner.store, self.seal().keyring(), packet, originator, carried)
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
        let priority = crate::delivery::submit::consent_holder(entries.iter().find(|e| e.recipient == *holder))
            .map_err(|state| match state {
                None => NodeError::NotARecipient { packet, node: *holder },
                Some(state) => NodeError::NotDelivered { packet, node: *holder, state },
            })?;
        let consent = Packet::onward_consent(
            &self.inner.me,
            holder,
            packet,
            priority,
            allowed,
            until,
            officer,
            Timestamp::now(),
            &mut rand_core::OsRng,
        );
        self.submit(&consent).await
    }

    /// An officer acknowledges a received packet: recorded here, and a signed `ReadAck` is sent
    /// to the originator. Every officer who reads it may acknowledge it (up to
    /// [`store::MAX_READS`]); an officer's second acknowledgement is refused, and nothing is sent.
    pub async fn ack(&self, packet_id: PacketId, from: Option<&NodeId>, officer: OfficerId) -> Result<(), NodeError> {
        // Recorded here and sent on in a task of its own: a caller that goes away between the
        // two must not leave an acknowledgement recorded and never sent.
        let node = self.clone();
        let from = from.cloned();
        self.spawn(async move { node.ack_now(packet_id, from.as_ref(), officer).await })
            .await
            .map_err(|_| NodeError::Store(StoreError::Closed))?
    }

    async fn ack_now(&self, packet_id: PacketId, from: Option<&NodeId>, officer: OfficerId) -> Result<(), NodeError> {
        let _one_at_a_time = self.inner.acks.lock().await;
        let (packet, mut rec, _) = self.show(packet_id, from)?;
        let now = Timestamp::now();
        crate::delivery::acknowledge(&mut rec, &officer, now_ms()).map_err(|refusal| {
            NodeError::AckRefused(match refusal {
                AckRefusal::Already(at) => {
                    format!(
                        "{officer} already acknowledged {packet_id} at {}; nothing was sent again",
                        timestamp_of(at)
                    )
                }
                AckRefusal::Full => {
                    format!("{packet_id} already holds {} acknowledgements, as many as are kept", store::MAX_READS)
                }
            })
        })?;
        let sender = rec.sender;
        let ack = Packet::read_ack(
            &self.inner.me,
            &rec.sender,
            packet_id,
            packet.envelope.priority,
            officer.clone(),
            now,
            &mut rand_core::OsRng,
        );
        // The acknowledgement and the ReadAck that announces it go to disk in one commit: an
        // acknowledgement recorded whose ReadAck then could not be stored (a full disk) would
        // never reach the originator, and the officer could not acknowledge again.
        let record = vec![
            store::put(Tree::Inbox, pair_key(packet_id, &sender), &rec),
            Op::Audit(AuditEvent::Acknowledged { packet_id, officer, from: Some(sender) }),
        ];
        let ack = Checked::new(ack).map_err(crate::seal::SealError::from)?;
        self.submit_with(ack, record).await?;
        self.inner.listing.read(packet_id, &sender);
        Ok(())
    }
}
