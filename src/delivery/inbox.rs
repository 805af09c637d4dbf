//! The receiver's dedup: a packet is shown once, however often it arrives.

use std::collections::HashMap;

use crate::encoding::Digest;
use crate::ids::{NodeId, PacketId};

/// What to do with a packet that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// First time: store it, flush, then sign and send a receipt, then [`Inbox::record`] it.
    New,
    /// Already stored: send the receipt issued the first time; do not show it again.
    Duplicate {
        /// The receipt issued the first time (sealed bytes, as stored).
        receipt: Vec<u8>,
    },
    /// The same packet id from the same sender, but other sealed bytes than the first time
    /// (a sender that re-sealed after losing its state, or a replay of another copy). Shown once:
    /// answered with the first receipt, and logged.
    DuplicateWithOtherBytes {
        /// The receipt issued the first time.
        receipt: Vec<u8>,
        /// The digest stored the first time.
        first: Digest,
    },
}

/// Packet ids received, with the receipt issued for each. Backed by the store: the driver loads
/// it at start-up and persists each record before the receipt leaves the node.
#[derive(Debug, Default)]
pub struct Inbox {
    seen: HashMap<PacketId, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    sender: NodeId,
    digest: Digest,
    receipt: Vec<u8>,
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
                Incoming::Duplicate { receipt: s.receipt.clone() }
            }
            Some(s) => Incoming::DuplicateWithOtherBytes { receipt: s.receipt.clone(), first: s.digest },
        }
    }

    /// Records that `packet_id` was stored and receipted with `receipt`. Called with what was
    /// persisted, at start-up and after each new packet.
    pub fn record(&mut self, packet_id: PacketId, sender: NodeId, digest: Digest, receipt: Vec<u8>) {
        self.seen.entry(packet_id).or_insert(Seen { sender, digest, receipt });
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
        inbox.record(id, it.clone(), d, b"receipt-1".to_vec());
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { receipt: b"receipt-1".to_vec() });
        let other = Digest::of(b"resealed");
        assert_eq!(
            inbox.classify(id, &it, &other),
            Incoming::DuplicateWithOtherBytes { receipt: b"receipt-1".to_vec(), first: d }
        );
        inbox.record(id, it.clone(), other, b"receipt-2".to_vec());
        assert_eq!(inbox.classify(id, &it, &d), Incoming::Duplicate { receipt: b"receipt-1".to_vec() }, "first wins");
        assert_eq!(inbox.len(), 1);
    }
}
