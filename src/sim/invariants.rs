//! What the simulator checks: after every step, every ten steps and after each crash, every
//! 250 steps, and at the end (see the module doc of [`super`]).

use super::*;
use crate::packet::RejectionKind;

impl Sim {
    /// After every step: what the senders show (acknowledged copies present, terminal states
    /// unchanged, receipts stored and verified for every new terminal state).
    pub(super) fn check_cheap(&mut self) -> Res {
        for a in 0..self.nodes.len() {
            self.check_sender(a)?;
        }
        Ok(())
    }

    /// Every ten steps, after each crash and at the end: also the stores read whole.
    pub(super) fn check(&mut self) -> Res {
        for a in 0..self.nodes.len() {
            self.check_sender(a)?;
            self.check_inbox(a)?;
            self.check_outbox_on_disk(a)?;
            self.check_deadlines(a)?;
        }
        Ok(())
    }

    fn check_sender(&mut self, a: usize) -> Res {
        // No acknowledged submit lost (after a crash, memory is what the disk kept): each copy
        // is held by its machine, or on disk with its terminal state (out of the pending index,
        // which is checked against the entries every ten steps).
        for (origin, id, to) in self.ledger.keys() {
            if *origin != a {
                continue;
            }
            let (node, peer) = (&self.nodes[a], self.nodes[*to].id);
            if node.senders.get(&peer).is_some_and(|s| s.entry(*id).is_some()) {
                continue;
            }
            let key = pair_key(*id, &peer);
            if node.store.get(Tree::Outbox, &key).map_err(err("outbox"))?.is_none() {
                return Err(format!("{} lost the acknowledged copy of {id} for {peer}", node.id));
            }
            // Listed in the index under its lane: one of the three.
            let mut listed = false;
            for lane in 0..3u8 {
                listed |= node
                    .store
                    .get(Tree::Pending, &[&[lane], key.as_slice()].concat())
                    .map_err(err("pending"))?
                    .is_some();
            }
            if listed {
                return Err(format!(
                    "{} let go of the copy of {id} for {peer} before its outcome was on disk (pending there)",
                    node.id
                ));
            }
        }
        // The counts `/v1/outbox` shows, kept without reading every entry, agree with them.
        for (peer, s) in &self.nodes[a].senders {
            let mut held = crate::delivery::Counts { done: s.finished(), ..Default::default() };
            for e in s.entries() {
                match e.state {
                    EntryState::Queued { .. } => held.queued += 1,
                    EntryState::InFlight { .. } => held.in_flight += 1,
                    EntryState::Delivered { .. } => held.done.delivered += 1,
                    EntryState::Rejected { .. } => held.done.rejected += 1,
                    EntryState::Expired { .. } => held.done.expired += 1,
                }
            }
            if held != s.counts() {
                return Err(format!("{}: counts for {peer} {:?}, entries say {held:?}", self.nodes[a].id, s.counts()));
            }
        }
        // Terminal entries not yet on disk (the machines drop them once they are: those are
        // checked from the store every ten steps).
        let mut done = Vec::new();
        for (peer, s) in &self.nodes[a].senders {
            for e in s.entries() {
                if e.state.is_terminal() {
                    done.push((*peer, e.clone()));
                }
            }
        }
        for (peer, e) in done {
            self.check_terminal(a, peer, &e)?;
        }
        Ok(())
    }

    /// A terminal entry's state never changes, and a delivered or rejected one has its receipt
    /// ([`Sim::check_receipt`], once per entry and run).
    fn check_terminal(&mut self, a: usize, peer: NodeId, e: &Entry) -> Res {
        let key = (a, e.packet_id, peer);
        match self.terminal.get(&key) {
            Some(before) if *before != e.state => {
                return Err(format!(
                    "{}: the terminal state of {} for {peer} changed: {before:?} -> {:?}",
                    self.nodes[a].id, e.packet_id, e.state
                ))
            }
            Some(_) => {}
            None => {
                self.terminal.insert(key, e.state.clone());
            }
        }
        if !self.verified.contains(&key) && !matches!(e.state, EntryState::Expired { .. }) {
            self.check_receipt(a, &peer, e)?;
            self.verified.insert(key);
        }
        Ok(())
    }

    /// A delivered or rejected copy has the partner's signed receipt stored, verified, naming
    /// the bytes sent and the same outcome; a delivered one is stored at the partner.
    fn check_receipt(&self, a: usize, peer: &NodeId, e: &Entry) -> Res {
        let me = &self.nodes[a];
        let what = format!("{}: {} to {peer} is {}", me.id, e.packet_id, e.state.name());
        let receipt_id = me
            .store
            .get(Tree::ReceiptIndex, &pair_key(e.packet_id, peer))
            .map_err(err("receipt index"))?
            .ok_or_else(|| format!("{what} without a stored receipt"))?;
        let bytes = me
            .store
            .get(Tree::Receipts, &receipt_id)
            .map_err(err("receipts"))?
            .ok_or_else(|| format!("{what}: its receipt is indexed but not stored"))?;
        let signed = crate::seal::verify_signed(&self.keyring, &bytes)
            .map_err(|x| format!("{what}: receipt does not verify: {x}"))?;
        let Body::DeliveryReceipt(r) = &signed.packet.body else { return Err(format!("{what}: not a receipt")) };
        if r.receiver != *peer || signed.packet.envelope.originator.node != *peer {
            return Err(format!("{what}: receipt not signed by the partner"));
        }
        let item = r
            .receipts
            .iter()
            .find(|i| i.packet_id == e.packet_id)
            .ok_or_else(|| format!("{what}: receipt has no item for it"))?;
        if item.sealed_digest != e.sealed_digest {
            return Err(format!("{what}: receipt names other bytes"));
        }
        match (&e.state, &item.outcome) {
            (EntryState::Delivered { .. }, ReceiptOutcome::Accepted) => {
                let b = self.index(peer)?;
                let stored = self.nodes[b].store.inbox_record(e.packet_id, &me.id).map_err(err("inbox"))?;
                if stored.is_none() {
                    return Err(format!("{what}, but {peer} has not stored it"));
                }
                Ok(())
            }
            (EntryState::Rejected { code, .. }, ReceiptOutcome::Rejected { code: signed_code, .. })
                if code == signed_code =>
            {
                Ok(())
            }
            _ => Err(format!("{what}, but the receipt says {:?}", item.outcome)),
        }
    }

    /// The outbox on disk: every terminal entry as [`Sim::check_terminal`] wants it, and the
    /// indexes list exactly the entries that are neither delivered, rejected nor expired
    /// (`pending`: what a start reads) and the others by outcome (`outcomes`: what retention
    /// walks).
    fn check_outbox_on_disk(&mut self, a: usize) -> Res {
        let mut pending = BTreeSet::new();
        let mut outcomes = BTreeSet::new();
        let mut done = Vec::new();
        for (k, v) in self.nodes[a].store.scan(Tree::Outbox, &[]).map_err(err("scan"))? {
            let e: Entry = store::decode(Tree::Outbox, &v).map_err(err("outbox entry"))?;
            if k != pair_key(e.packet_id, &e.recipient) {
                return Err(format!("{}: an outbox entry under another key", self.nodes[a].id));
            }
            match e.retention_from() {
                None => {
                    pending.insert(store::pending_key(&e));
                }
                Some(from) => {
                    outcomes.insert(store::outcome_key(&e.recipient, from, e.packet_id));
                    done.push(e);
                }
            }
        }
        for e in done {
            self.check_terminal(a, e.recipient, &e)?;
        }
        let node = &self.nodes[a];
        for (name, tree, want) in [("pending", Tree::Pending, pending), ("outcome", Tree::Outcomes, outcomes)] {
            let indexed: BTreeSet<Vec<u8>> =
                node.store.scan(tree, &[]).map_err(err("scan"))?.into_iter().map(|(k, _)| k).collect();
            if want != indexed {
                return Err(format!(
                    "{}: {} {name} entries on disk, {} in the {name} index ({} not indexed, {} indexed but not there)",
                    node.id,
                    want.len(),
                    indexed.len(),
                    want.difference(&indexed).count(),
                    indexed.difference(&want).count()
                ));
            }
        }
        Ok(())
    }

    /// The inbox index agrees with the store: nothing shown twice, nothing shown unstored.
    /// (Between steps every commit is answered: each record is this run's, in memory, or an
    /// earlier run's, read from the store; the index holds nothing the store does not.)
    fn check_inbox(&mut self, b: usize) -> Res {
        let node = &self.nodes[b];
        let stored = node.store.scan(Tree::Inbox, &[]).map_err(err("scan"))?;
        let mut this_run = 0;
        for (k, v) in stored {
            let rec: InboxRecord = store::decode(Tree::Inbox, &v).map_err(err("inbox record"))?;
            let id = PacketId::from_bytes(k.get(..16).and_then(|x| x.try_into().ok()).ok_or("inbox key")?);
            let records = node.store.inbox_records(id).map_err(err("inbox records"))?;
            if !node.inbox.has(id, &rec.sender, &records) {
                return Err(format!("{}: {id} from {} stored but not in the index", node.id, rec.sender));
            }
            this_run += usize::from(rec.run == node.inbox.run());
            let first = *self.stored_first.entry((b, id, rec.sender)).or_insert((rec.received_at, rec.sealed_digest));
            if first != (rec.received_at, rec.sealed_digest) {
                return Err(format!(
                    "{}: {id} from {} stored again: received at {} first, now {}",
                    node.id, rec.sender, first.0, rec.received_at
                ));
            }
            if node.store.get(Tree::Evidence, &k).map_err(err("evidence"))?.is_none() {
                return Err(format!("{}: {id} from {} listed without its evidence", node.id, rec.sender));
            }
        }
        if this_run != node.inbox.len() {
            return Err(format!(
                "{}: {this_run} packets stored in this run, {} in the inbox index",
                node.id,
                node.inbox.len()
            ));
        }
        Ok(())
    }

    /// Deadlines are on disk as in memory, and move only by their rules: `due_by` changes only
    /// with a new delay notice or the end of a pause; an answer, once recorded, stays.
    fn check_deadlines(&mut self, i: usize) -> Res {
        let node = &self.nodes[i];
        let mut on_disk = BTreeMap::new();
        for (_, v) in node.store.scan(Tree::Deadlines, &[]).map_err(err("scan"))? {
            let d: Deadline = store::decode(Tree::Deadlines, &v).map_err(err("deadline"))?;
            on_disk.insert((d.request, d.counterpart), d);
        }
        for role in [crate::deadlines::Role::Answer, crate::deadlines::Role::Await] {
            for d in node.deadlines.open(role) {
                if on_disk.get(&(d.request, d.counterpart)) != Some(d) {
                    return Err(format!("{}: the deadline of {} is not on disk as in memory", node.id, d.request));
                }
            }
        }
        for d in on_disk.into_values() {
            let key = (i, d.request, d.counterpart);
            if let Some(before) = self.seen_deadlines.get(&key) {
                let moved = before.due_by != d.due_by;
                let by_rule = d.delays.len() > before.delays.len() || (before.paused.is_some() && d.paused.is_none());
                if (moved && !by_rule)
                    || (before.answered.is_some() && before.answered != d.answered)
                    || before.window != d.window
                {
                    return Err(format!(
                        "{}: the deadline of {} changed against its rules: {before:?} -> {d:?}",
                        self.nodes[i].id, d.request
                    ));
                }
            }
            self.seen_deadlines.insert(key, d);
        }
        Ok(())
    }

    pub(super) fn check_audit(&self) -> Res {
        for n in &self.nodes {
            match n.store.audit_verify(&n.id, &[n.seal.public().signing]).map_err(err("audit"))? {
                Ok(_) => {}
                Err(broken) => return Err(format!("{}: the audit trail does not verify: {broken}", n.id)),
            }
        }
        Ok(())
    }

    /// After healing: every acknowledged copy delivered, rejected by a rule (a policy, onward
    /// or time rule, or about something the receiver does not hold), or expired after its expiry.
    pub(super) fn check_final(&mut self) -> Res {
        let ledger: Vec<((usize, PacketId, usize), Expected)> =
            self.ledger.iter().map(|(k, v)| (*k, v.clone())).collect();
        for ((a, id, b), expected) in ledger {
            let peer = self.nodes[b].id;
            let held = self.nodes[a].senders.get(&peer).and_then(|s| s.entry(id).cloned());
            let e =
                crate::node::sent_entry(held, &self.nodes[a].store, id, &peer).map_err(err("outbox"))?.ok_or("lost")?;
            match &e.state {
                EntryState::Delivered { .. } => self.report.delivered += 1,
                EntryState::Rejected { code, reason, .. } => {
                    // Honest nodes that agree on keys refuse by rules (policy, onward, time, what
                    // they hold), never because the bytes were wrong.
                    if matches!(code.kind(), RejectionKind::Integrity | RejectionKind::Unknown) {
                        return Err(format!("{id} to {peer} rejected for {code} ({reason}), not by a rule"));
                    }
                    self.report.rejected += 1;
                }
                EntryState::Expired { at } => {
                    if *at < expected.expires {
                        return Err(format!("{id} to {peer} expired at {at}, before its expiry {}", expected.expires));
                    }
                    self.report.expired += 1;
                }
                other => return Err(format!("{id} to {peer} still {} after the network healed", other.name())),
            }
        }
        Ok(())
    }
}
