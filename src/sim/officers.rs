//! What the simulated officers do: submit alerts, requests and notices (some expiring soon),
//! acknowledge what they received, answer requests, pass packets on to a third node and consent
//! that their own be passed on — through the node's own submit and forward decisions.

use super::*;
use crate::delivery::submit::{Refused, SentCopy};
use crate::markings::Priority;

impl Sim {
    /// An example packet as an officer of `from` would write it now to `to`; some expire soon.
    pub(super) fn draft(&mut self, example: &str, from: usize, to: &[usize]) -> Res<Value> {
        let mut v: Value = serde_json::from_str(example).map_err(err("example"))?;
        let created: Timestamp = v
            .pointer("/envelope/created")
            .and_then(Value::as_str)
            .ok_or("example without created")?
            .parse()
            .map_err(err("example created"))?;
        crate::packet::shift_times(&mut v, self.ts().unix() - created.unix()).map_err(err("shift"))?;
        let short = self.chance(0.15);
        let ttl_secs = 5 + self.below(60) as i64;
        let env = v.get_mut("envelope").and_then(Value::as_object_mut).ok_or("example without envelope")?;
        for k in ["id", "created", "due_by", "in_reply_to"] {
            env.remove(k);
        }
        env.insert(
            "originator".into(),
            serde_json::json!({"node": self.nodes[from].id.as_str(), "officer": OFFICERS[from % 3]}),
        );
        let to: Vec<&str> = to.iter().map(|i| self.nodes[*i].id.as_str()).collect();
        env.insert("recipients".into(), serde_json::json!(to));
        if short {
            let expires = Timestamp::from_unix(self.ts().unix() + ttl_secs).map_err(err("expiry"))?;
            env.insert("expires".into(), Value::String(expires.to_string()));
        }
        Ok(v)
    }

    pub(super) fn submit_random(&mut self) -> Res {
        let from = self.below(self.nodes.len() as u64) as usize;
        let mut to: Vec<usize> = (0..self.nodes.len()).filter(|i| *i != from && self.chance(0.7)).collect();
        if to.is_empty() {
            to.push(self.other_than(from));
        }
        let example = EXAMPLES[self.below(3) as usize];
        let v = self.draft(example, from, &to)?;
        let ts = self.ts();
        let Ok(packet) = Packet::from_json_draft(&v.to_string(), ts, &mut self.rng) else {
            // A short expiry that the packet's own dates do not allow: the officer is told.
            return Ok(());
        };
        self.submit(from, &packet)
    }

    /// The node's submit: policy per recipient, sealing, one commit with the deadline changes,
    /// then the entries to the sender machines. Only an `Ok` commit is an acknowledged submit.
    pub(super) fn submit(&mut self, i: usize, packet: &Packet) -> Res {
        self.submit_with(i, packet, Vec::new())
    }

    /// [`Sim::submit`] with `with` in the same commit (as `Node::submit_with`).
    fn submit_with(&mut self, i: usize, packet: &Packet, with: Vec<Op>) -> Res {
        let checked = crate::packet::Checked::new(packet.clone()).map_err(err("check"))?;
        let (copies, denied) = submit::decide(&self.nodes[i].policies, &checked, self.now);
        if !matches!(
            packet.body,
            Body::ReadAck(_)
                | Body::OnwardConsent(_)
                | Body::DeliveryReceipt(_)
                | Body::Forward(_)
                | Body::KeyAnnouncement(_)
        ) {
            self.originated.insert((i, packet.envelope.id));
        }
        self.store_copies(i, packet, copies, denied, with)
    }

    /// Seals and stores the copies decided for `packet` (as `Node::seal_and_store`).
    fn store_copies(
        &mut self,
        i: usize,
        packet: &Packet,
        copies: Vec<(crate::packet::Checked, SentCopy)>,
        denied: Vec<Refused>,
        with: Vec<Op>,
    ) -> Res {
        let now = self.now;
        let prepared =
            submit::seal(&self.nodes[i].seal, packet, copies, denied, now, &mut self.rng).map_err(err("seal"))?;
        let sub = match prepared {
            Prepared::Copies(sub) => sub,
            Prepared::AllDenied { ops: refusal, .. } => {
                self.report.refused_submits += 1;
                let mut ops = with;
                ops.extend(refusal);
                let _ = self.commit(i, ops);
                return Ok(());
            }
        };
        let mut ops = with;
        ops.extend(sub.ops);
        let mut staged = Staged::default();
        for (copy, to) in &sub.copies {
            self.nodes[i].deadlines.stage(&mut staged, copy, Flow::Sent, to, now);
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        if self.commit_as(i, Class::of_packet(packet), ops).is_err() {
            self.report.failed_submits += 1;
            return Ok(());
        }
        self.nodes[i].deadlines.apply(staged);
        for e in sub.entries {
            let j = self.index(&e.recipient)?;
            self.ledger.insert((i, e.packet_id, j), Expected { expires: e.expires });
            self.report.copies += 1;
            let sender = self.nodes[i].senders.get_mut(&e.recipient).ok_or("no sender machine for a partner")?;
            sender.admit(now, e);
        }
        Ok(())
    }

    pub(super) fn index(&self, node: &NodeId) -> Res<usize> {
        self.nodes.iter().position(|n| n.id == *node).ok_or_else(|| format!("{node} is not in the federation"))
    }

    /// Received packets of `i` an officer could act on: (id, record).
    pub(super) fn received(&self, i: usize) -> Res<Vec<(PacketId, InboxRecord)>> {
        let mut v = Vec::new();
        for (k, val) in self.nodes[i].store.scan(Tree::Inbox, &[]).map_err(err("scan"))? {
            let id = PacketId::from_bytes(k.get(..16).and_then(|b| b.try_into().ok()).ok_or("inbox key")?);
            let rec: InboxRecord = store::decode(Tree::Inbox, &val).map_err(err("inbox record"))?;
            if !matches!(rec.packet_type, PacketType::ReadAck | PacketType::OnwardConsent) {
                v.push((id, rec));
            }
        }
        Ok(v)
    }

    /// An officer acknowledges a received packet: the record and a ReadAck to its sender, in one
    /// commit (as `Node::ack`).
    pub(super) fn ack_random(&mut self) -> Res {
        let i = self.below(self.nodes.len() as u64) as usize;
        let list = self.received(i)?;
        if list.is_empty() {
            return Ok(());
        }
        let (id, mut rec) = list[self.below(list.len() as u64) as usize].clone();
        let officer: OfficerId = OFFICERS[self.below(3) as usize].parse().map_err(err("officer"))?;
        // The node's own rule: each officer once, a bounded number.
        if crate::delivery::acknowledge(&mut rec, &officer, self.now).is_err() {
            return Ok(());
        }
        let sender = rec.sender;
        let ops = vec![
            store::put(Tree::Inbox, pair_key(id, &sender), &rec),
            Op::Audit(crate::audit::Event::Acknowledged {
                packet_id: id,
                officer: officer.clone(),
                from: Some(sender),
            }),
        ];
        let ts = self.ts();
        let ack = Packet::read_ack(&self.nodes[i].id, &sender, id, rec.priority, officer, ts, &mut self.rng);
        self.report.acks += 1;
        self.submit_with(i, &ack, ops)
    }

    /// An officer answers a request it received.
    pub(super) fn answer_random(&mut self) -> Res {
        let i = self.below(self.nodes.len() as u64) as usize;
        let requests: Vec<(PacketId, InboxRecord)> =
            self.received(i)?.into_iter().filter(|(_, r)| r.packet_type == PacketType::InformationRequest).collect();
        if requests.is_empty() {
            return Ok(());
        }
        let (id, rec) = requests[self.below(requests.len() as u64) as usize].clone();
        let to = self.index(&rec.sender)?;
        let mut v = self.draft(RESPONSE, i, &[to])?;
        if let Some(env) = v.get_mut("envelope").and_then(Value::as_object_mut) {
            env.insert("in_reply_to".into(), Value::String(id.to_string()));
        }
        let ts = self.ts();
        let Ok(packet) = Packet::from_json_draft(&v.to_string(), ts, &mut self.rng) else { return Ok(()) };
        self.report.answers += 1;
        self.submit(i, &packet)
    }

    /// An officer passes a received packet on to the other partners (as `Node::forward`): the
    /// original and the consents from the store, verified again, the same decisions per
    /// recipient, then the node's submit path.
    pub(super) fn forward_random(&mut self) -> Res {
        if self.nodes.len() < 3 {
            return Ok(());
        }
        let i = self.below(self.nodes.len() as u64) as usize;
        let mut list = self.received(i)?;
        // Most packets need a consent to go on: more often than by chance, one that has one.
        if self.chance(0.6) {
            let consented = self.consented(i)?;
            list.retain(|(id, rec)| consented.contains(&(*id, rec.sender)));
        }
        if list.is_empty() {
            return Ok(());
        }
        let (id, rec) = list[self.below(list.len() as u64) as usize].clone();
        let (store, ring) = (&self.nodes[i].store, self.nodes[i].seal.keyring());
        let (original, carried) = crate::node::held(store, ring, id, &rec.sender)
            .map_err(|e| format!("{}: a received packet does not verify: {e}", self.nodes[i].id))?;
        let (about, originator) = (original.packet.envelope.id, original.packet.envelope.originator.node);
        let consents = crate::node::consents_about(store, ring, about, &originator, carried)
            .map_err(|e| format!("{}: consents: {e}", self.nodes[i].id))?;
        let to: Vec<NodeId> = (0..self.nodes.len()).filter(|j| *j != i).map(|j| self.nodes[j].id).collect();
        let officer: OfficerId = OFFICERS[i % 3].parse().map_err(err("officer"))?;
        let forward_id = PacketId::new_v7(self.now, &mut self.rng);
        let me = self.nodes[i].id;
        let plan = submit::Onward { me: &me, sender: &rec.sender, original: &original, consents: &consents };
        let (copies, denied) = plan.decide(&self.nodes[i].policies, &to, &officer, forward_id, self.now, self.ts());
        let Some((first, _)) = copies.first().cloned() else {
            self.report.refused_forwards += 1;
            let event = crate::audit::Event::Submitted {
                packet_id: forward_id,
                kind: "Forward".into(),
                decisions: submit::denied_decisions(&denied),
            };
            let _ = self.commit(i, vec![Op::Audit(event)]);
            return Ok(());
        };
        self.report.forwards += 1;
        self.store_copies(i, &first, copies, denied, Vec::new())
    }

    /// Packets received at `i` that their originator consented to have passed on: (id, originator).
    fn consented(&self, i: usize) -> Res<BTreeSet<(PacketId, NodeId)>> {
        let mut out = BTreeSet::new();
        for (k, val) in self.nodes[i].store.scan(Tree::Inbox, &[]).map_err(err("scan"))? {
            let rec: InboxRecord = store::decode(Tree::Inbox, &val).map_err(err("inbox record"))?;
            if rec.packet_type != PacketType::OnwardConsent {
                continue;
            }
            let id = PacketId::from_bytes(k.get(..16).and_then(|b| b.try_into().ok()).ok_or("inbox key")?);
            let (c, _) = crate::node::held(&self.nodes[i].store, self.nodes[i].seal.keyring(), id, &rec.sender)
                .map_err(|e| format!("{}: a consent does not verify: {e}", self.nodes[i].id))?;
            if let Body::OnwardConsent(x) = &c.packet.body {
                out.insert((x.packet_id, rec.sender));
            }
        }
        Ok(out)
    }

    /// Every outbox entry of node `i`: on disk, or newer in its machines (as `Node::status`).
    fn sent_entries(&self, i: usize) -> Result<BTreeMap<(PacketId, NodeId), Entry>, String> {
        let node = &self.nodes[i];
        let mut all = BTreeMap::new();
        for (_, v) in node.store.scan(Tree::Outbox, &[]).map_err(err("scan"))? {
            let e: Entry = crate::store::decode(Tree::Outbox, &v).map_err(err("outbox entry"))?;
            all.insert((e.packet_id, e.recipient), e);
        }
        for e in node.senders.values().flat_map(|s| s.entries()) {
            all.insert((e.packet_id, e.recipient), e.clone());
        }
        Ok(all)
    }

    /// An officer consents that a recipient of a packet its node sent pass it on to the third
    /// node (as `Node::consent`).
    pub(super) fn consent_random(&mut self) -> Res {
        if self.nodes.len() < 3 {
            return Ok(());
        }
        let i = self.below(self.nodes.len() as u64) as usize;
        // Mostly for a node the packet did not go to (consent to pass it to a recipient is
        // given now and then too: the forward is then refused as already received there).
        let entries = self.sent_entries(i)?;
        let me = &self.nodes[i];
        let third_of = |holder: &NodeId| me.senders.keys().find(|n| *n != holder).cloned();
        let went_to = |about: PacketId, n: &NodeId| entries.contains_key(&(about, *n));
        // The node's own rule: only to a holder whose copy is delivered.
        let mut sent: Vec<(PacketId, NodeId, Priority, NodeId)> = entries
            .values()
            .filter(|e| self.originated.contains(&(i, e.packet_id)))
            .filter_map(|e| submit::consent_holder(Some(e)).ok().map(|p| (e, p)))
            .filter_map(|(e, p)| third_of(&e.recipient).map(|t| (e.packet_id, e.recipient, p, t)))
            .collect();
        let fresh: Vec<bool> = sent.iter().map(|(about, _, _, third)| !went_to(*about, third)).collect();
        if self.chance(0.8) {
            let mut keep = fresh.into_iter();
            sent.retain(|_| keep.next().unwrap_or(false));
        }
        if sent.is_empty() {
            return Ok(());
        }
        let (about, holder, priority, third) = sent[self.below(sent.len() as u64) as usize];
        let officer: OfficerId = OFFICERS[i % 3].parse().map_err(err("officer"))?;
        let ts = self.ts();
        let consent = Packet::onward_consent(
            &self.nodes[i].id,
            &holder,
            about,
            priority,
            vec![third],
            ts.plus_secs(86_400),
            officer,
            ts,
            &mut self.rng,
        );
        self.report.consents += 1;
        self.submit(i, &consent)
    }
}
