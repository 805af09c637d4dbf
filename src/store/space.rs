//! Free space on the store's disk, and what a commit may use of it.
//!
//! sled 0.34 cannot survive a write that fails for want of space: its I/O thread records the
//! error and the flush that waits for that write waits forever (the writer thread hung on a
//! condition variable, SIGTERM ignored, memory growing with the commits queued behind it;
//! freeing space does not help). So the store never lets sled find the disk full: before a batch
//! is applied, the writer reads the free space of the data directory's file system and admits
//! each commit only if what it may write leaves the **headroom** free:
//!
//! - a [`Class::Bulk`] commit (a ROUTINE or URGENT packet submitted or received) must leave the
//!   whole headroom free;
//! - a [`Class::Essential`] commit (a FLASH alert, a receipt, an acknowledgement, outbox states,
//!   deadlines, audit entries: small, and what keeps delivery moving) may use the headroom down
//!   to its last quarter, which nothing uses.
//!
//! A commit refused is answered [`StoreError::Full`](super::StoreError::Full) at once and
//! nothing of it is written: the submitter gets HTTP 507, a partner's copy gets no receipt and is
//! sent again later. Every batch reads the free space again, so the node resumes by itself as
//! soon as space returns; the writer also looks every few seconds while the disk is low, so the
//! state it reports (and logs) comes back without waiting for a commit.
//!
//! What this cannot prevent: another process taking the last quarter of the headroom between
//! the check and sled's write. That leaves sled stuck; [`super::Store::health`] reports it and
//! `liaison serve` exits for its service manager to restart it (see `serve.rs`).

use crate::store::Op;

/// How far into the headroom a commit may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// ROUTINE and URGENT packets, submitted or received: stops where the headroom begins.
    Bulk,
    /// FLASH alerts, receipts, acknowledgements, delivery states, deadlines, audit entries: may
    /// use three quarters of the headroom.
    Essential,
}

impl Class {
    /// The class of a batch received on a lane of `priority`.
    pub fn of(priority: crate::markings::Priority) -> Self {
        match priority {
            crate::markings::Priority::Flash => Self::Essential,
            _ => Self::Bulk,
        }
    }

    /// The class of a packet's submit: FLASH, and the small packets that report on others
    /// (acknowledgements, onward consents: at most 8 KiB), are essential; the rest is bulk.
    pub fn of_packet(packet: &crate::packet::Packet) -> Self {
        use crate::packet::PacketType;
        let t = packet.packet_type();
        if t.is_system() || t == PacketType::OnwardConsent {
            Self::Essential
        } else {
            Self::of(packet.envelope.priority)
        }
    }
}

/// Space the store keeps free on its disk (`[store] headroom_mib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes.
    pub bytes: u64,
}

impl Headroom {
    /// 256 MiB: a few hundred FLASH alerts and receipts at their largest, and room for sled's
    /// own bookkeeping (segment rewrites) while the node refuses bulk.
    pub const DEFAULT: Self = Self { bytes: 256 * 1024 * 1024 };

    /// Headroom of `mib` MiB.
    pub fn mib(mib: u64) -> Self {
        Self { bytes: mib.saturating_mul(1024 * 1024) }
    }

    /// The free bytes a commit of `class` must leave.
    pub fn kept_for(self, class: Class) -> u64 {
        match class {
            Class::Bulk => self.bytes,
            Class::Essential => self.bytes / 4,
        }
    }

    /// The state of a disk with `free` bytes free.
    pub fn state(self, free: u64) -> SpaceState {
        if free < self.kept_for(Class::Essential) {
            SpaceState::Full
        } else if free < self.kept_for(Class::Bulk) {
            SpaceState::Low
        } else {
            SpaceState::Ok
        }
    }
}

/// The disk's state as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceState {
    /// Everything is taken.
    Ok,
    /// Less than the headroom is free: ROUTINE and URGENT packets are refused (submits: 507;
    /// from partners: no receipt, sent again later); FLASH and receipts go on.
    Low,
    /// Less than a quarter of the headroom is free: every write is refused.
    Full,
}

impl SpaceState {
    /// As a number, for an atomic.
    pub(super) fn to_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Low => 1,
            Self::Full => 2,
        }
    }

    /// From [`SpaceState::to_u8`].
    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Low,
            _ => Self::Full,
        }
    }
}

/// What a commit may write on disk, at most: sled writes a value into its log and may copy it
/// once more when it cleans a segment; an audit entry (chained by the writer) is under a KiB; a
/// commit's index nodes and headers are covered by a fixed 4 KiB.
pub fn estimate(ops: &[Op]) -> u64 {
    let bytes: usize = ops
        .iter()
        .map(|op| match op {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::Audit(_) => 1024,
            Op::Relocate { key, to, .. } => key.len() + to.len(),
        })
        .sum();
    (bytes as u64).saturating_mul(2).saturating_add(4096)
}

/// Mebibytes, for messages (rounded down).
pub fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_stops_at_the_headroom_and_essential_at_its_last_quarter() {
        let h = Headroom::mib(64);
        assert_eq!(h.kept_for(Class::Bulk), 64 << 20);
        assert_eq!(h.kept_for(Class::Essential), 16 << 20);
        assert_eq!(h.state(65 << 20), SpaceState::Ok);
        assert_eq!(h.state(64 << 20), SpaceState::Ok);
        assert_eq!(h.state((64 << 20) - 1), SpaceState::Low);
        assert_eq!(h.state(16 << 20), SpaceState::Low);
        assert_eq!(h.state((16 << 20) - 1), SpaceState::Full);
        for s in [SpaceState::Ok, SpaceState::Low, SpaceState::Full] {
            assert_eq!(SpaceState::from_u8(s.to_u8()), s);
        }
    }

    #[test]
    fn flash_is_essential_and_the_rest_bulk() {
        use crate::markings::Priority;
        assert_eq!(Class::of(Priority::Flash), Class::Essential);
        assert_eq!(Class::of(Priority::Urgent), Class::Bulk);
        assert_eq!(Class::of(Priority::Routine), Class::Bulk);
    }

    #[test]
    fn estimates_cover_the_values_twice() {
        let ops = vec![Op::Put(crate::store::Tree::Sealed, vec![0; 10], vec![0; 1000])];
        assert_eq!(estimate(&ops), 2 * 1010 + 4096);
        assert_eq!(estimate(&[]), 4096);
    }
}
