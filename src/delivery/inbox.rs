//! The receiver's dedup: a packet is shown once, however often it arrives.

use std::collections::HashMap;

use super::Millis;
use crate::encoding::Digest;
use crate::ids::{NodeId, PacketId};

/// What to do with a packet that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// First time: store it, flush, then sign and send a receipt, then [`Inbox::record`] it.
    New,
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

/// Packet ids received, with when each was stored (what its receipt says). Backed by the store: the driver loads
/// it at start-up and persists each record before the receipt leaves the node.
#[derive(Debug, Default)]
pub struct Inbox {
    seen: HashMap<PacketId, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    sender: NodeId,
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
        match self.seen.get(&packet_id) {
            None => Incoming::New,
            Some(s) if s.sender == *sender && s.digest.ct_eq(digest) => {
                Incoming::Duplicate { received_at: s.received_at }
            }
            Some(s) => Incoming::DuplicateWithOtherBytes { received_at: s.received_at, first: s.digest },
        }
    }

    /// Records that `packet_id` was stored at `received_at`. Called with what was persisted, at
    /// start-up and after each new packet.
    pub fn record(&mut self, packet_id: PacketId, sender: NodeId, digest: Digest, received_at: Millis) {
        self.seen.entry(packet_id).or_insert(Seen { sender, digest, received_at });
    }

    /// How many packets have been received.
    pub fn len(&self) -> usize {
        self.seen.len()
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
        assert_eq!(inbox.classify(id, &it, &d), Incoming::New);
        inbox.record(id, it.clone(), d, 1);
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { received_at: 1 });
        let other = Digest::of(b"resealed");
        assert_eq!(inbox.classify(id, &it, &other), Incoming::DuplicateWithOtherBytes { received_at: 1, first: d });
        inbox.record(id, it.clone(), other, 2);
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { received_at: 1 }, "first wins");
        assert_eq!(inbox.len(), 1);
    }
}
