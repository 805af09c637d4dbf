//! The receiver's dedup: a packet is shown once, however often it arrives.
//!
//! A packet's identity is its originator and its id: two partners choose their packet ids
//! independently, and a partner that learnt another's packet id (as a co-recipient, say) must
//! not be able to take that id over. So the index is keyed by (packet id, sender) — on this
//! node's connections the sender is the originator: `open` refuses anything else, and a packet
//! passed on travels as a `Forward` the forwarder originates. A second sender using an id
//! already seen is a collision: both packets are kept and shown, each marked with the other
//! sender, and the node records it in the audit trail.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Millis;
use crate::encoding::Digest;
use crate::ids::{NodeId, PacketId};

/// What to do with a packet that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// First time from this sender: store it, flush, then sign and send a receipt, then
    /// [`Inbox::record`] it. `also_from` lists other senders that used the same packet id
    /// before (a collision, or an attempt to squat the id): empty normally.
    New {
        /// Other senders of a packet with this id.
        also_from: Vec<NodeId>,
    },
    /// Already stored: receipt it again as the first time; do not show it again.
    Duplicate {
        /// When it was stored the first time.
        received_at: Millis,
    },
    /// The same packet id from the same sender, but other sealed bytes than the first time
    /// (a sender that re-sealed after losing its state, or a replay of another copy). Shown once:
    /// answered as the first time, and logged.
    DuplicateWithOtherBytes {
        /// When it was stored the first time.
        received_at: Millis,
        /// The digest stored the first time.
        first: Digest,
    },
}

/// Why an officer's acknowledgement of a received packet is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefusal {
    /// This officer already acknowledged it, at this time (ms): nothing is sent again.
    Already(Millis),
    /// It holds as many acknowledgements as are kept ([`crate::store::MAX_READS`]).
    Full,
}

/// An officer acknowledges a received packet: added to its record (each officer once, a
/// bounded number), or why not. The driver stores the record, then sends the ReadAck.
pub fn acknowledge(
    rec: &mut crate::store::InboxRecord,
    officer: &crate::ids::OfficerId,
    now: Millis,
) -> Result<(), AckRefusal> {
    if let Some((_, at)) = rec.reads.iter().find(|(o, _)| o == officer) {
        return Err(AckRefusal::Already(*at));
    }
    if rec.reads.len() >= crate::store::MAX_READS {
        return Err(AckRefusal::Full);
    }
    rec.reads.push((officer.clone(), now));
    Ok(())
}

/// Packets received, by (packet id, sender), with when each was stored (what its receipt
/// says). Backed by the store: the driver loads it at start-up and persists each record before
/// the receipt leaves the node.
#[derive(Debug, Default)]
pub struct Inbox {
    seen: HashMap<PacketId, BTreeMap<NodeId, Seen>>,
}

#[derive(Debug, Clone)]
struct Seen {
    digest: Digest,
    received_at: Millis,
}

impl Inbox {
    /// An empty inbox index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies a verified packet from `sender` whose sealed bytes hash to `digest`.
    pub fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest) -> Incoming {
        match self.seen.get(&packet_id).and_then(|by| by.get(sender)) {
            None => Incoming::New { also_from: self.senders(packet_id).into_iter().collect() },
            Some(s) if s.digest.ct_eq(digest) => Incoming::Duplicate { received_at: s.received_at },
            Some(s) => Incoming::DuplicateWithOtherBytes { received_at: s.received_at, first: s.digest },
        }
    }

    /// Every sender of a packet with this id (more than one: a collision).
    pub fn senders(&self, packet_id: PacketId) -> BTreeSet<NodeId> {
        self.seen.get(&packet_id).map(|by| by.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether `sender` sent a packet with this id.
    pub fn has(&self, packet_id: PacketId, sender: &NodeId) -> bool {
        self.seen.get(&packet_id).is_some_and(|by| by.contains_key(sender))
    }

    /// Records that `packet_id` from `sender` was stored at `received_at`. Called with what was
    /// persisted, at start-up and after each new packet.
    pub fn record(&mut self, packet_id: PacketId, sender: NodeId, digest: Digest, received_at: Millis) {
        self.seen.entry(packet_id).or_default().entry(sender).or_insert(Seen { digest, received_at });
    }

    /// Forgets a packet (deleted by the retention rules).
    pub fn forget(&mut self, packet_id: PacketId, sender: &NodeId) {
        if let Some(by) = self.seen.get_mut(&packet_id) {
            by.remove(sender);
            if by.is_empty() {
                self.seen.remove(&packet_id);
            }
        }
    }

    /// How many packets have been received.
    pub fn len(&self) -> usize {
        self.seen.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_arrival_is_a_duplicate_with_the_first_receipt() {
        let mut inbox = Inbox::new();
        let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
        let it: NodeId = "IT-DCSA".parse().unwrap();
        let d = Digest::of(b"sealed");
        assert_eq!(inbox.classify(id, &it, &d), Incoming::New { also_from: vec![] });
        inbox.record(id, it, d, 1);
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { received_at: 1 });
        let other = Digest::of(b"resealed");
        assert_eq!(inbox.classify(id, &it, &other), Incoming::DuplicateWithOtherBytes { received_at: 1, first: d });
        inbox.record(id, it, other, 2);
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { received_at: 1 }, "first wins");
        assert_eq!(inbox.len(), 1);
    }

    /// Another sender's packet under an id already seen is a packet of its own: new, marked
    /// with the first sender; neither takes the other's place.
    #[test]
    fn the_same_id_from_another_sender_is_another_packet() {
        let mut inbox = Inbox::new();
        let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
        let (co, es): (NodeId, NodeId) = ("CO-DIJIN".parse().unwrap(), "ES-UDYCO".parse().unwrap());
        inbox.record(id, co, Digest::of(b"squatter"), 1);
        let genuine = Digest::of(b"genuine");
        assert_eq!(inbox.classify(id, &es, &genuine), Incoming::New { also_from: vec![co] });
        inbox.record(id, es, genuine, 2);
        assert_eq!(inbox.classify(id, &es, &genuine), Incoming::Duplicate { received_at: 2 });
        assert_eq!(inbox.classify(id, &co, &Digest::of(b"squatter")), Incoming::Duplicate { received_at: 1 });
        assert!(inbox.has(id, &co) && inbox.has(id, &es));
        assert_eq!(inbox.senders(id), [co, es].into_iter().collect());
        let next: PacketId = "019ac0a1-5c00-7000-8000-000000000002".parse().unwrap();
        assert!(inbox.senders(next).is_empty());
        assert_eq!(inbox.len(), 2);
    }

    /// Each officer acknowledges once, and a record holds a bounded number.
    #[test]
    fn officers_acknowledge_once_each_up_to_the_bound() {
        let mut rec = crate::store::InboxRecord {
            sender: "IT-DCSA".parse().unwrap(),
            sealed_digest: Digest::of(b"s"),
            received_at: 42,
            packet_type: crate::packet::PacketType::InformationRequest,
            priority: crate::markings::Priority::Urgent,
            due_by: None,
            reads: Vec::new(),
            policy: None,
            originator: None,
        };
        let rossi: crate::ids::OfficerId = "Isp. Rossi".parse().unwrap();
        assert_eq!(acknowledge(&mut rec, &rossi, 50), Ok(()));
        assert_eq!(acknowledge(&mut rec, &rossi, 60), Err(AckRefusal::Already(50)));
        for i in 1..crate::store::MAX_READS {
            let o: crate::ids::OfficerId = format!("Officer {i}").parse().unwrap();
            assert_eq!(acknowledge(&mut rec, &o, 70), Ok(()));
        }
        let late: crate::ids::OfficerId = "Isp. Bianchi".parse().unwrap();
        assert_eq!(acknowledge(&mut rec, &late, 80), Err(AckRefusal::Full));
        assert_eq!(rec.reads.len(), crate::store::MAX_READS);
    }
}
