//! The receiver's machine: a batch of frames from one partner in, a verdict per copy, the
//! receipt and the writes to make out. No I/O: the time, the random source and what the node
//! already holds ([`Known`]) are passed in.
//!
//! Each copy is opened (every check of [`SealContext::open`](crate::seal::SealContext::open), plus: the routing sender must be
//! the partner the connection identified), deduplicated (against the inbox and within the
//! batch), checked against the receiving side of the agreement (a forward as the original it
//! carries, after the hop's checks of [`crate::onward::unwrap`]), and, for system packets,
//! against what they are about. What passes is written (evidence and inbox record); everything
//! gets a receipt item, except a copy whose routing header cannot be read. The driver commits
//! [`Batch::ops`] (plus the deadline changes it stages from [`Batch::about_deadlines`]) with one
//! flush, then puts [`Batch::stored`] and [`Batch::acked`] in force, and only then sends
//! [`Batch::receipt`].

use std::collections::HashMap;

use super::{Entry, Incoming, Millis, Outbox, ReadAckMatch};
use crate::audit::{Event as AuditEvent, Receipted};
use crate::deadlines::Deadlines;
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;
use crate::packet::{Body, Packet, ReceiptItem, ReceiptOutcome, RejectionCode};
use crate::policy::{Decision, Direction, PolicyBook};
use crate::seal::{peek_route, OpenError, SealContext, SealError};
use crate::store::{self, pair_key, InboxRecord, Op, Tree};
use crate::timestamp::Timestamp;

/// An officer's acknowledgement of a copy sent: the packet, who, when (ms), and whether it is
/// the copy's first.
pub type Read = (PacketId, OfficerId, Millis, bool);

/// A copy sent that a batch acknowledges: the entry with the batch's acknowledgements added,
/// and those acknowledgements.
type Acked = (Entry, Vec<Read>);

/// The notice for a copy left without a receipt item because the store could not be read to
/// classify it ([`Known::classify`], [`Known::has_received`], [`Known::sent_to`]).
const UNREADABLE: &str = "the store could not be read; no receipt for this copy, it comes again";

/// What the receiver reads of the node's state. Each call may take a lock briefly; nothing is
/// held across the batch.
pub trait Known {
    /// The inbox's classification of a verified packet (see [`super::Inbox::classify`]);
    /// `None` if the store could not be read to tell (the copy then gets no receipt item, and
    /// its sender sends it again).
    fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest) -> Option<Incoming>;
    /// Whether a packet with this id from `sender` is stored; `None` if the store could not be
    /// read to tell.
    fn has_received(&self, packet_id: PacketId, sender: &NodeId) -> Option<bool>;
    /// This run's id, written in each inbox record stored ([`super::Inbox::run`]).
    fn run(&self) -> u64;
    /// The outbox entry of the copy of `packet_id` sent to `peer` (held in memory, or read from
    /// the store), with its acknowledgements; `Err` if the store could not be read to tell.
    fn sent_to(&self, packet_id: PacketId, peer: &NodeId) -> Result<Option<Entry>, store::StoreError>;
    /// The policy version under which the stored packet was admitted.
    fn admitted_under(&self, packet_id: PacketId, sender: &NodeId) -> Option<Digest>;
}

/// Something about the partner's traffic for the log (the driver writes it within the
/// partner's log budget for `kind`).
#[derive(Debug, Clone)]
pub struct Notice {
    /// The kind of event (the log budget it counts against).
    pub kind: &'static str,
    /// The packet, if its id could be read.
    pub packet_id: Option<PacketId>,
    /// The check's code.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

/// What a batch does.
#[derive(Debug)]
pub struct Batch {
    /// The sealed, signed receipt to send once the commit is on disk.
    pub receipt: Vec<u8>,
    /// Its id.
    pub receipt_id: PacketId,
    /// The highest priority in the batch (the receipt's, and the lane's).
    pub lane: Priority,
    /// What the commit may use of the store's headroom: essential only if every packet stored
    /// is FLASH (counted on the packets opened, never on a routing header, which anyone can
    /// write: one junk FLASH frame must not carry a batch of bulk into the headroom).
    pub class: crate::store::Class,
    /// The writes: evidence, inbox records, acknowledgements of copies sent, the issued
    /// receipt, audit events.
    pub ops: Vec<Op>,
    /// Packets stored: put in the inbox index once on disk.
    pub stored: Vec<(PacketId, Digest, Millis)>,
    /// Officers' acknowledgements of copies this node sent the partner, new in this batch:
    /// put in force once on disk.
    pub acked: Vec<Read>,
    /// Stored packets that may change a deadline, in order: the driver stages them.
    pub about_deadlines: Vec<Packet>,
    /// Key announcements stored (the partner's next keys): the driver takes them, or shows
    /// them for its administrator to, as the policy says, once on disk.
    pub announced: Vec<(PacketId, crate::packet::KeyAnnouncement)>,
    /// Receipt items.
    pub copies: usize,
}

/// What a batch of frames came to: the batch to commit and receipt, if any copy could be
/// receipted, and what to log either way (a batch whose copies all wait for keys not taken yet
/// has notices and no batch).
#[derive(Debug)]
pub struct Received {
    /// The batch, if any copy is receipted.
    pub batch: Option<Batch>,
    /// For the log.
    pub notices: Vec<Notice>,
}

/// Where the receiver stands: who it is, what it checks with.
pub struct Receiver<'a> {
    /// This node's keys and keyring.
    pub seal: &'a SealContext,
    /// The policies in force.
    pub policies: &'a PolicyBook,
    /// What the node holds.
    pub known: &'a dyn Known,
}

impl Receiver<'_> {
    /// Receives one batch of `frames` from `peer` at `received_ms`. No batch if no copy can be
    /// receipted (none could be attributed to a packet, or all wait for keys not taken yet).
    pub fn receive<B: AsRef<[u8]>>(
        &self,
        peer: &NodeId,
        frames: &[B],
        received_ms: Millis,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    ) -> Result<Received, SealError> {
        let me = self.seal.node();
        let now = timestamp_of(received_ms);
        let mut items = Vec::with_capacity(frames.len());
        let mut ops = Vec::new();
        let mut notices = Vec::new();
        let mut new: HashMap<PacketId, (Digest, InboxRecord)> = HashMap::new();
        // Outbox entries that ReadAcks of this batch change, written with the batch and put in
        // force once it is on disk.
        let mut acked: HashMap<PacketId, Acked> = HashMap::new();
        let mut lane = Priority::Routine;
        let mut about_deadlines: Vec<Packet> = Vec::new();
        let mut announced = Vec::new();
        let mut sealed_to: Option<String> = None;
        let mut notice = |kind, packet_id, code: Option<String>, message: String| {
            notices.push(Notice { kind, packet_id, code, message })
        };
        for bytes in frames {
            let bytes = bytes.as_ref();
            // `open` hashes the bytes it opened; hash here only what it could not open. The keys'
            // windows are checked once the copy is known to be new (below).
            let opened = self.seal.open_any_window(bytes, now);
            let digest = match &opened {
                Ok(o) => o.sealed_digest,
                Err(_) => Digest::of(bytes),
            };
            let opened = opened.and_then(|o| {
                if o.route.sender == *peer {
                    Ok(o)
                } else {
                    Err(OpenError::HeaderMismatch(format!("sent by {} over the connection of {peer}", o.route.sender)))
                }
            });
            if let Ok(o) = &opened {
                sealed_to = Some(o.recipient_key.clone());
            }
            let mut opened = match opened {
                Ok(o) => o,
                Err(e @ OpenError::KeyNotYetKnown { .. }) if peek_route(bytes).is_ok_and(|r| r.sender == *peer) => {
                    // Keys the partner rotated to, not taken here yet: no receipt, so it sends
                    // the copy again until they are (a rejection would be final).
                    notice(
                        "keys",
                        peek_route(bytes).ok().map(|r| r.packet_id),
                        Some(e.code().into()),
                        format!("not receipted yet: {e}"),
                    );
                    continue;
                }
                Err(e) => {
                    let Ok(route) = peek_route(bytes) else {
                        notice(
                            "unreadable",
                            None,
                            Some(e.code().into()),
                            format!("unreadable packet; no receipt possible: {e}"),
                        );
                        continue;
                    };
                    notice("rejected", Some(route.packet_id), Some(e.code().into()), format!("rejected: {e}"));
                    lane = lane.min(route.priority);
                    items.push(rejection(route.packet_id, now, digest, e.code(), e.to_string(), None));
                    continue;
                }
            };
            let id = opened.signed.packet.envelope.id;
            lane = lane.min(opened.signed.packet.envelope.priority);
            let class = match new.get(&id) {
                // A copy sent twice within one batch.
                Some((first, rec)) if first.ct_eq(&digest) => Incoming::Duplicate { received_at: rec.received_at },
                Some((first, rec)) => Incoming::DuplicateWithOtherBytes { received_at: rec.received_at, first: *first },
                None => match self.known.classify(id, peer, &digest) {
                    Some(class) => class,
                    None => {
                        notice("store", Some(id), None, UNREADABLE.into());
                        continue;
                    }
                },
            };
            let admitted_under = |new: &HashMap<PacketId, (Digest, InboxRecord)>| match new.get(&id) {
                Some((_, rec)) => rec.policy,
                None => self.known.admitted_under(id, peer),
            };
            let also_from = match class {
                Incoming::Duplicate { received_at } => {
                    // The same sealed bytes carry the same signed packet.
                    let signed = Digest::of(&opened.signed.bytes);
                    items.push(accepted(id, timestamp_of(received_at), digest, Some(signed), admitted_under(&new)));
                    continue;
                }
                Incoming::DuplicateWithOtherBytes { received_at, first } => {
                    notice(
                        "resealed",
                        Some(id),
                        None,
                        "same packet id with other bytes; receipted as the first copy".into(),
                    );
                    items.push(accepted(id, timestamp_of(received_at), first, None, admitted_under(&new)));
                    continue;
                }
                Incoming::New { also_from } => also_from,
            };
            // New: its keys must be within their windows now.
            match self.seal.check_windows(&opened, now) {
                Ok(()) => {}
                Err(e @ OpenError::KeyNotYetKnown { .. }) => {
                    notice("keys", Some(id), Some(e.code().into()), format!("not receipted yet: {e}"));
                    continue;
                }
                Err(e) => {
                    notice("rejected", Some(id), Some(e.code().into()), format!("rejected: {e}"));
                    items.push(rejection(id, now, digest, e.code(), e.to_string(), None));
                    continue;
                }
            }
            // The receiving side of the agreement: checked once, on first arrival (a
            // retransmission gets the answer the first copy got). A forward is checked as the
            // packet it carries (and its consent), under the rules for the partner that passed
            // it on.
            let mut forwarded_from = None;
            let mut forwarded_kind = None;
            let verdict = match self.unwrap_forward(peer, &opened.signed.packet, now) {
                Ok(Some(mut original)) => {
                    forwarded_from = Some(original.envelope.originator.node);
                    forwarded_kind = Some(original.packet_type());
                    self.policies.decide(peer, Direction::Receive, &mut original, received_ms)
                }
                Ok(None) => self.policies.decide(peer, Direction::Receive, &mut opened.signed.packet, received_ms),
                Err((code, reason)) if code == "onward.key_not_yet_known" => {
                    // As for a direct copy: not receipted, sent again until the key is taken.
                    notice("keys", Some(id), Some(code), format!("forward not receipted yet: {reason}"));
                    continue;
                }
                Err((code, reason)) => {
                    notice("forwards", Some(id), Some(code.clone()), "forward refused; not stored".into());
                    let policy = self.policies.policy(peer).map(|p| p.hash);
                    items.push(rejection(id, now, digest, code, reason, policy));
                    continue;
                }
            };
            if let Decision::Deny(denial) = verdict.decision {
                let code = format!("policy.{}", denial.rule);
                notice("policy", Some(id), Some(code.clone()), "refused by policy; not stored".into());
                items.push(rejection(id, now, digest, code, denial.reason, verdict.policy));
                continue;
            }
            let packet = &opened.signed.packet;
            match self.system_context(packet, peer, &new, &mut acked) {
                Ok(()) => {}
                Err(Some((code, reason))) => {
                    notice("system", Some(id), Some(code.into()), "system packet refused; not stored".into());
                    items.push(rejection(id, now, digest, code, reason, verdict.policy));
                    continue;
                }
                Err(None) => {
                    notice("store", Some(id), None, UNREADABLE.into());
                    continue;
                }
            }
            if !also_from.is_empty() {
                // Kept apart from the other sender's packet, and recorded: someone may be
                // squatting another partner's packet id.
                let others = also_from.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ");
                notice(
                    "collisions",
                    Some(id),
                    None,
                    format!("packet id already used by {others}; both kept, both shown as suspicious"),
                );
                ops.push(Op::Audit(AuditEvent::IdCollision { packet_id: id, from: *peer, also_from }));
            }
            let rec = InboxRecord {
                sender: *peer,
                sealed_digest: digest,
                received_at: received_ms,
                packet_type: forwarded_kind.unwrap_or(packet.packet_type()),
                priority: packet.envelope.priority,
                due_by: packet.envelope.due_by,
                reads: Vec::new(),
                policy: verdict.policy,
                originator: forwarded_from,
                run: self.known.run(),
            };
            let planted_skip = {
                #[cfg(test)]
                {
                    super::plant::is(super::plant::Bug::ReceiptWithoutStoring)
                }
                #[cfg(not(test))]
                {
                    false
                }
            };
            let signed = Digest::of(&opened.signed.bytes);
            if !planted_skip {
                ops.push(store::put(Tree::Inbox, pair_key(id, peer), &rec));
                ops.push(Op::Put(Tree::Evidence, pair_key(id, peer), opened.signed.bytes));
            }
            if Deadlines::concerns(packet) {
                about_deadlines.push(packet.clone());
            }
            if let Body::KeyAnnouncement(a) = &packet.body {
                announced.push((id, a.clone()));
            }
            items.push(accepted(id, now, digest, Some(signed), verdict.policy));
            new.insert(id, (digest, rec));
        }
        if items.is_empty() {
            return Ok(Received { batch: None, notices });
        }
        let acked: Vec<Read> = acked.into_values().flat_map(|(_, new)| new.into_iter()).collect();
        for (id, officer, at, _) in &acked {
            ops.push(store::put_read(*id, peer, officer, *at));
        }
        let copies = items.len();
        let audited: Vec<Receipted> = items.iter().map(receipted).collect();
        let receipt = Packet::delivery_receipt(me, peer, lane, items, now, rng);
        let receipt_id = receipt.envelope.id;
        ops.push(Op::Audit(AuditEvent::Received {
            from: *peer,
            receipt: receipt_id,
            items: audited,
            policy: self.policies.policy(peer).map(|p| p.hash),
        }));
        // Signed with the generation the partner sealed its copies to (it holds that one), else
        // the oldest in force: a partner that has not taken this node's newer keys yet, or
        // enrolled it with the newest only, can complete its copies either way.
        let sealed = match &sealed_to {
            Some(kid) => self.seal.with_key_of(kid),
            None => self.seal.with_oldest_key(),
        }
        .seal(&receipt, rng)?
        .pop()
        .map(|s| s.bytes)
        .unwrap_or_default();
        ops.push(Op::Put(Tree::Issued, receipt_id.as_bytes().to_vec(), sealed.clone()));
        let bulk = new.values().any(|(_, rec)| rec.priority != Priority::Flash);
        let batch = Batch {
            receipt: sealed,
            receipt_id,
            lane,
            class: if bulk { crate::store::Class::Bulk } else { crate::store::Class::Essential },
            ops,
            stored: new.into_iter().map(|(id, (digest, rec))| (id, digest, rec.received_at)).collect(),
            acked,
            about_deadlines,
            announced,
            copies,
        };
        Ok(Received { batch: Some(batch), notices })
    }

    /// System packets are about something this node holds: a ReadAck about a copy it sent to
    /// `peer` (each officer once, a bounded number), a consent about a packet `peer` sent it.
    /// Anything else is refused (`Some`: the code and why) and not stored; `None`: the store
    /// could not be read to tell (no answer now, the copy comes again). A ReadAck that is taken
    /// adds its officer to `acked` (the entry as the batch has it, and what it adds), which the
    /// batch writes and, once on disk, puts in force.
    fn system_context(
        &self,
        packet: &Packet,
        peer: &NodeId,
        batch: &HashMap<PacketId, (Digest, InboxRecord)>,
        acked: &mut HashMap<PacketId, Acked>,
    ) -> Result<(), Option<(&'static str, String)>> {
        match &packet.body {
            Body::ReadAck(ack) => {
                let known = acked.remove(&ack.packet_id);
                let known = match known {
                    Some(k) => Some(k),
                    None => self.known.sent_to(ack.packet_id, peer).map_err(|_| None)?.map(|e| (e, Vec::new())),
                };
                let m = Outbox::read_ack_match(known.as_ref().map(|(e, _)| e), &ack.officer);
                if let Some((mut e, mut new)) = known {
                    if m == ReadAckMatch::New {
                        let at = super::millis(ack.read_at);
                        new.push((ack.packet_id, ack.officer.clone(), at, e.reads.is_empty()));
                        e.reads.push((ack.officer.clone(), at));
                    }
                    acked.insert(ack.packet_id, (e, new));
                }
                match m {
                    ReadAckMatch::New => Ok(()),
                    ReadAckMatch::Unknown => Err(Some((
                        "system.unknown_packet",
                        format!("acknowledges {}, which this node did not send to {peer}", ack.packet_id),
                    ))),
                    ReadAckMatch::Already => Err(Some((
                        "system.duplicate_ack",
                        format!("{} already acknowledged {}", ack.officer, ack.packet_id),
                    ))),
                    ReadAckMatch::Full => Err(Some((
                        "system.too_many_acks",
                        format!("{} already holds {} acknowledgements", ack.packet_id, store::MAX_READS),
                    ))),
                }
            }
            Body::OnwardConsent(c) => {
                if batch.contains_key(&c.packet_id) || self.known.has_received(c.packet_id, peer).ok_or(None)? {
                    Ok(())
                } else {
                    Err(Some((
                        "system.unknown_packet",
                        format!("a consent about {}, which {peer} did not send this node", c.packet_id),
                    )))
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
        match self.policies.policy(peer) {
            Some(p) if p.onward.accept_forwarded => {}
            Some(_) => {
                return Err((
                    "policy.onward.accept_forwarded".into(),
                    format!("this node does not take packets {peer} passes on from other originators"),
                ))
            }
            None => return Err(("policy.no_policy".into(), format!("no sharing policy with {peer}"))),
        }
        crate::onward::unwrap(self.seal.keyring(), packet, peer, self.seal.node(), now)
            .map(|u| Some(u.original.packet))
            .map_err(|e| (e.code().to_owned(), e.to_string()))
    }
}

/// A receipt item accepting a copy (`signed`: the digest of the signed packet it carried).
fn accepted(
    packet_id: PacketId,
    at: Timestamp,
    digest: Digest,
    signed: Option<Digest>,
    policy: Option<Digest>,
) -> ReceiptItem {
    ReceiptItem {
        packet_id,
        received_at: at,
        sealed_digest: digest,
        signed_digest: signed,
        outcome: ReceiptOutcome::Accepted,
        policy,
    }
}

/// A receipt item refusing a copy: the check's code and why.
pub fn rejection(
    packet_id: PacketId,
    at: Timestamp,
    digest: Digest,
    code: impl Into<RejectionCode>,
    reason: String,
    policy: Option<Digest>,
) -> ReceiptItem {
    ReceiptItem {
        packet_id,
        received_at: at,
        sealed_digest: digest,
        signed_digest: None,
        outcome: ReceiptOutcome::Rejected { code: code.into(), reason },
        policy,
    }
}

/// A receipt item as the audit trail records it.
pub fn receipted(i: &ReceiptItem) -> Receipted {
    Receipted {
        packet_id: i.packet_id,
        digest: i.sealed_digest,
        outcome: match &i.outcome {
            ReceiptOutcome::Accepted => "accepted".into(),
            ReceiptOutcome::Rejected { code, .. } => code.to_string(),
        },
        sent: None,
    }
}

/// A [`Millis`] as a receipt's (whole-second) timestamp.
pub fn timestamp_of(ms: Millis) -> Timestamp {
    Timestamp::from_unix((ms / 1000) as i64).unwrap_or_else(|_| Timestamp::now())
}
