//! The packet's way out, up to the store: submit (policy per recipient, redaction, sealing),
//! forward, consent and acknowledgement. A submit returns once every copy is on disk; the
//! per-partner sender ([`super::peer`]) takes it from there.

use super::*;

impl Node {
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
        let (copies, denied) = crate::delivery::submit::decide(&self.policies(), packet, now);
        self.seal_and_store(packet, copies, denied, now).await
    }

    /// Seals and stores the copies decided for `packet` (one per allowed recipient; each names
    /// the recipients that actually get the packet), records the decisions in the audit trail,
    /// and hands the copies to their partners' sender machines. With no copy, only the refusal is recorded.
    async fn seal_and_store(
        &self,
        packet: &Packet,
        copies: Vec<(Packet, SentCopy)>,
        denied: Vec<Refused>,
        now: Millis,
    ) -> Result<Submitted, NodeError> {
        use crate::delivery::submit::{self, Prepared};
        let sub = match submit::seal(&self.inner.seal, packet, copies, denied, now, &mut rand_core::OsRng)? {
            Prepared::Copies(sub) => sub,
            Prepared::AllDenied { ops, denied } => {
                self.inner.store.commit(ops).await?;
                return Err(NodeError::Denied(denied));
            }
        };
        let mut ops = sub.ops;
        // The sealed copies, kept for their first write once on disk.
        let mut fresh: Vec<(NodeId, PacketId, Vec<u8>)> = Vec::new();
        for e in &sub.entries {
            let key = pair_key(e.packet_id, &e.recipient);
            let sealed = ops.iter().find_map(|op| match op {
                Op::Put(Tree::Sealed, k, v) if *k == key && v.len() <= peer::Fresh::MAX_COPY => Some(v.clone()),
                _ => None,
            });
            fresh.extend(sealed.map(|v| (e.recipient.clone(), e.packet_id, v)));
        }
        // Deadline changes go to disk with the copies and into force after them. From the
        // commit on, the work runs in a task of its own: a submitter that goes away (a client
        // hanging up) must not leave copies on disk that the sender machines never got.
        let node = self.clone();
        let concerns = Deadlines::concerns(packet);
        let copies = sub.copies;
        let entries = sub.entries;
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
            node.inner.store.commit(ops).await?;
            lock(&node.inner.deadlines).apply(staged);
            drop(reserved);
            for (to, id, bytes) in fresh {
                if let Some(f) = node.inner.fresh.get(&to) {
                    lock(f).keep(id, bytes);
                }
            }
            for e in entries {
                let to = e.recipient.clone();
                if let Some(sender) = node.sender(&to) {
                    lock(sender).admit(now, e);
                }
                if let Some(w) = node.inner.wake.get(&to) {
                    w.notify_one();
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
        // A scan of everything received: on the blocking pool.
        let (about, by) = (p.envelope.id, originator.clone());
        let consents = self.slow(move |node| node.consents_about(about, &by, carried)).await??;
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
            let event = AuditEvent::Submitted {
                packet_id: id,
                kind: "Forward".into(),
                decisions: crate::delivery::submit::denied_decisions(&denied),
            };
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
            if rec.packet_type != crate::packet::PacketType::OnwardConsent || rec.sender != *originator {
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
}
