//! A packet that passed the rules, with its CBOR face encoded at most once: what the send path
//! carries from the parse (or the policy's check of a redacted copy) to the signature.

use super::{Packet, PacketError};
use crate::ids::NodeId;

/// A packet that passed [`Packet::check`], and its CBOR face, encoded at most once: the send
/// path checks a packet once and encodes it once, for the size rule and the signature alike.
/// It cannot be changed (no `DerefMut`): a changed packet is checked again
/// ([`Checked::new`]).
#[derive(Debug, Clone)]
pub struct Checked {
    packet: Packet,
    cbor: std::sync::OnceLock<std::sync::Arc<[u8]>>,
}

impl Checked {
    /// Checks `packet`.
    pub fn new(packet: Packet) -> Result<Self, PacketError> {
        packet.check()?;
        Ok(Self { packet, cbor: std::sync::OnceLock::new() })
    }

    /// A packet the caller has just checked itself (the policy's check of a redacted copy).
    pub(crate) fn already_checked(packet: Packet) -> Self {
        Self { packet, cbor: std::sync::OnceLock::new() }
    }

    /// The packet.
    pub fn packet(&self) -> &Packet {
        &self.packet
    }

    /// The packet, to change (it must be checked again to be sent).
    pub fn into_packet(self) -> Packet {
        self.packet
    }

    /// Its CBOR face, encoded on first use.
    pub fn cbor(&self) -> &[u8] {
        self.cbor.get_or_init(|| self.packet.to_cbor().into())
    }

    /// The length of [`Checked::cbor`], counted without encoding if it is not encoded yet.
    pub fn encoded_len(&self) -> usize {
        self.cbor.get().map_or_else(|| crate::encoding::cbor_len(&self.packet), |c| c.len())
    }

    /// The same packet for fewer of its recipients (those the policies allow). Still valid: the
    /// envelope rules hold for any non-empty subset of a valid recipient list, each listed once.
    /// Checked again otherwise (a repeated node, one not in the list), and encoded again if the
    /// list changed.
    pub fn for_recipients(self, recipients: &[NodeId]) -> Result<Self, PacketError> {
        if self.packet.envelope.recipients == recipients {
            return Ok(self);
        }
        let mut seen = std::collections::BTreeSet::new();
        let subset = !recipients.is_empty()
            && recipients.iter().all(|r| seen.insert(r) && self.packet.envelope.recipients.contains(r));
        let mut packet = self.packet;
        packet.envelope.recipients = recipients.to_vec();
        if subset {
            Ok(Self::already_checked(packet))
        } else {
            Self::new(packet)
        }
    }
}

impl std::ops::Deref for Checked {
    type Target = Packet;

    fn deref(&self) -> &Packet {
        &self.packet
    }
}
