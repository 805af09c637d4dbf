//! What the simulated officers do: submit alerts, requests and notices (some expiring soon),
//! acknowledge what they received, answer requests — through the node's own submit path.

use super::*;

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
        let now = self.now;
        let (copies, denied) = submit::decide(&self.nodes[i].policies, packet, now);
        let prepared =
            submit::seal(&self.nodes[i].seal, packet, copies, denied, now, &mut self.rng).map_err(err("seal"))?;
        let sub = match prepared {
            Prepared::Copies(sub) => sub,
            Prepared::AllDenied { ops, .. } => {
                self.report.refused_submits += 1;
                let _ = self.commit(i, ops);
                return Ok(());
            }
        };
        let mut ops = sub.ops;
        let mut staged = Staged::default();
        for (copy, to) in &sub.copies {
            self.nodes[i].deadlines.stage(&mut staged, copy, Flow::Sent, to, now);
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        if self.commit(i, ops).is_err() {
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

    /// An officer acknowledges a received packet: the record first, then a ReadAck to its
    /// sender (as `Node::ack`).
    pub(super) fn ack_random(&mut self) -> Res {
        let i = self.below(self.nodes.len() as u64) as usize;
        let list = self.received(i)?;
        if list.is_empty() {
            return Ok(());
        }
        let (id, mut rec) = list[self.below(list.len() as u64) as usize].clone();
        let officer: OfficerId = OFFICERS[self.below(3) as usize].parse().map_err(err("officer"))?;
        if rec.reads.iter().any(|(o, _)| *o == officer) || rec.reads.len() >= store::MAX_READS {
            return Ok(());
        }
        rec.reads.push((officer.clone(), self.now));
        let sender = rec.sender.clone();
        let ops = vec![
            store::put(Tree::Inbox, pair_key(id, &sender), &rec),
            Op::Audit(crate::audit::Event::Acknowledged {
                packet_id: id,
                officer: officer.clone(),
                from: Some(sender.clone()),
            }),
        ];
        if self.commit(i, ops).is_err() {
            return Ok(());
        }
        let ts = self.ts();
        let ack = Packet::read_ack(&self.nodes[i].id, &sender, id, rec.priority, officer, ts, &mut self.rng);
        self.report.acks += 1;
        self.submit(i, &ack)
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
}
