//! The receiver's dedup: a packet is shown once, however often it arrives.
//!
//! A packet's identity is its originator and its id: two partners choose their packet ids
//! independently, and a partner that learnt another's packet id (as a co-recipient, say) must
//! not be able to take that id over. So the index is keyed by (packet id, sender) — on this
//! node's connections the sender is the originator: `open` refuses anything else, and a packet
//! passed on travels as a `Forward` the forwarder originates. A second sender using an id
//! already seen is a collision: both packets are kept and shown, each marked with the other
//! sender, and the node records it in the audit trail.
//!
//! Nothing is loaded at start: a node that has received 1,000,000 packets starts as fast as an
//! empty one. The index in memory holds what this run stored; what earlier runs stored is read
//! from the store when a packet arrives ([`crate::store::Store::inbox_records`]) and passed in.
//! A stored record counts only if an earlier run wrote it (each run draws its own `run` id,
//! and every record names the run that stored it): what is on disk at start is durable, while a
//! record this run is writing may sit in the store before its flush, and be taken back if the
//! flush fails. This run's records count once their commit is answered ([`Inbox::record`]), as
//! before.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Millis;
use crate::encoding::Digest;
use crate::ids::{NodeId, PacketId};
use crate::store::InboxRecord;

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

/// Packets received in this run, by (packet id, sender), with when each was stored (what its
/// receipt says); together with the records of earlier runs the caller reads from the store,
/// every packet received. The driver persists each record before the receipt leaves the node.
#[derive(Debug)]
pub struct Inbox {
    /// This run's id (never 0: records written before runs were named read as run 0).
    run: u64,
    seen: HashMap<PacketId, BTreeMap<NodeId, Seen>>,
}

#[derive(Debug, Clone)]
struct Seen {
    digest: Digest,
    received_at: Millis,
}

impl Inbox {
    /// An empty index for the run `run` (drawn at random at each start; 0 is taken as 1).
    pub fn new(run: u64) -> Self {
        Self { run: run.max(1), seen: HashMap::new() }
    }

    /// This run's id: the receiver writes it in each record it stores.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// What this run stored of `packet_id` from `sender`, else what an earlier run did
    /// (`stored`: the store's records of `packet_id`).
    fn find(&self, packet_id: PacketId, sender: &NodeId, stored: &[InboxRecord]) -> Option<Seen> {
        self.seen.get(&packet_id).and_then(|by| by.get(sender)).cloned().or_else(|| {
            stored
                .iter()
                .find(|r| r.run != self.run && r.sender == *sender)
                .map(|r| Seen { digest: r.sealed_digest, received_at: r.received_at })
        })
    }

    /// Classifies a verified packet from `sender` whose sealed bytes hash to `digest`
    /// (`stored`: the store's records of `packet_id`, of which those of earlier runs count).
    pub fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest, stored: &[InboxRecord]) -> Incoming {
        match self.find(packet_id, sender, stored) {
            None => Incoming::New { also_from: self.senders(packet_id, stored).into_iter().collect() },
            Some(s) if s.digest.ct_eq(digest) => Incoming::Duplicate { received_at: s.received_at },
            Some(s) => Incoming::DuplicateWithOtherBytes { received_at: s.received_at, first: s.digest },
        }
    }

    /// Every sender of a packet with this id (more than one: a collision), of this run and of
    /// earlier ones (`stored`).
    pub fn senders(&self, packet_id: PacketId, stored: &[InboxRecord]) -> BTreeSet<NodeId> {
        let mine = self.seen.get(&packet_id).into_iter().flat_map(|by| by.keys().cloned());
        mine.chain(stored.iter().filter(|r| r.run != self.run).map(|r| r.sender)).collect()
    }

    /// Whether `sender` sent a packet with this id (this run, or an earlier one: `stored`).
    pub fn has(&self, packet_id: PacketId, sender: &NodeId, stored: &[InboxRecord]) -> bool {
        self.find(packet_id, sender, stored).is_some()
    }

    /// Records that `packet_id` from `sender` was stored at `received_at`, once its commit is
    /// answered.
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

    /// How many packets this run has received.
    pub fn len(&self) -> usize {
        self.seen.values().map(BTreeMap::len).sum()
    }

    /// Whether this run has received nothing.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_arrival_is_a_duplicate_with_the_first_receipt() {
        let mut inbox = Inbox::new(7);
        let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
        let it: NodeId = "IT-DCSA".parse().unwrap();
        let d = Digest::of(b"sealed");
        assert_eq!(inbox.classify(id, &it, &d, &[]), Incoming::New { also_from: vec![] });
        inbox.record(id, it, d, 1);
        assert_eq!(inbox.classify(id, &it, &d, &[]), Incoming::Duplicate { received_at: 1 });
        let other = Digest::of(b"resealed");
        assert_eq!(
            inbox.classify(id, &it, &other, &[]),
            Incoming::DuplicateWithOtherBytes { received_at: 1, first: d }
        );
        inbox.record(id, it, other, 2);
        assert_eq!(inbox.classify(id, &it, &d, &[]), Incoming::Duplicate { received_at: 1 }, "first wins");
        assert_eq!(inbox.len(), 1);
    }

    /// Another sender's packet under an id already seen is a packet of its own: new, marked
    /// with the first sender; neither takes the other's place.
    #[test]
    fn the_same_id_from_another_sender_is_another_packet() {
        let mut inbox = Inbox::new(7);
        let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
        let (co, es): (NodeId, NodeId) = ("CO-DIJIN".parse().unwrap(), "ES-UDYCO".parse().unwrap());
        inbox.record(id, co, Digest::of(b"squatter"), 1);
        let genuine = Digest::of(b"genuine");
        assert_eq!(inbox.classify(id, &es, &genuine, &[]), Incoming::New { also_from: vec![co] });
        inbox.record(id, es, genuine, 2);
        assert_eq!(inbox.classify(id, &es, &genuine, &[]), Incoming::Duplicate { received_at: 2 });
        assert_eq!(inbox.classify(id, &co, &Digest::of(b"squatter"), &[]), Incoming::Duplicate { received_at: 1 });
        assert!(inbox.has(id, &co, &[]) && inbox.has(id, &es, &[]));
        assert_eq!(inbox.senders(id, &[]), [co, es].into_iter().collect());
        let next: PacketId = "019ac0a1-5c00-7000-8000-000000000002".parse().unwrap();
        assert!(inbox.senders(next, &[]).is_empty());
        assert_eq!(inbox.len(), 2);
    }

    fn stored(sender: &str, digest: &Digest, received_at: Millis, run: u64) -> InboxRecord {
        InboxRecord {
            sender: sender.parse().unwrap(),
            sealed_digest: *digest,
            received_at,
            packet_type: crate::packet::PacketType::InformationRequest,
            priority: crate::markings::Priority::Urgent,
            due_by: None,
            reads: Vec::new(),
            policy: None,
            originator: None,
            run,
        }
    }

    /// What an earlier run stored counts as received (the index starts empty); what this run
    /// wrote counts only once [`Inbox::record`] says its commit was answered.
    #[test]
    fn earlier_runs_count_from_the_store_this_run_from_memory() {
        let mut inbox = Inbox::new(7);
        let id: PacketId = "019ac0a1-5c00-7000-8000-000000000001".parse().unwrap();
        let it: NodeId = "IT-DCSA".parse().unwrap();
        let d = Digest::of(b"sealed");
        // Stored before runs were named (run 0), or by another run: received.
        for run in [0, 3] {
            let earlier = [stored("IT-DCSA", &d, 5, run)];
            assert_eq!(inbox.classify(id, &it, &d, &earlier), Incoming::Duplicate { received_at: 5 });
            assert!(inbox.has(id, &it, &earlier));
            let resealed = Digest::of(b"resealed");
            assert_eq!(
                inbox.classify(id, &it, &resealed, &earlier),
                Incoming::DuplicateWithOtherBytes { received_at: 5, first: d }
            );
            let es: NodeId = "ES-UDYCO".parse().unwrap();
            assert_eq!(inbox.classify(id, &es, &d, &earlier), Incoming::New { also_from: vec![it] });
        }
        // In the store with this run's id but not recorded: perhaps not flushed, perhaps taken
        // back. Not received yet.
        let unflushed = [stored("IT-DCSA", &d, 9, 7)];
        assert_eq!(inbox.classify(id, &it, &d, &unflushed), Incoming::New { also_from: vec![] });
        assert!(!inbox.has(id, &it, &unflushed) && inbox.senders(id, &unflushed).is_empty());
        inbox.record(id, it, d, 9);
        assert_eq!(inbox.classify(id, &it, &d, &unflushed), Incoming::Duplicate { received_at: 9 });
        assert_eq!(Inbox::new(0).run(), 1, "run 0 is the records written before runs were named");
    }

    /// Each officer acknowledges once, and a record holds a bounded number.
    #[test]
    fn officers_acknowledge_once_each_up_to_the_bound() {
        let mut rec = stored("IT-DCSA", &Digest::of(b"s"), 42, 0);
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
