//! The node's [`Catalogue`] of received packets, for the web workspace: loaded from the store
//! the first time it is read, then brought up to date with the packets stored since, each read
//! back from its evidence (verified again) when it is first listed. Nothing is done on the
//! receiving path but noting the arrival: a node exchanging thousands of packets a second with
//! nobody looking at its inbox pays nothing for the listing.

use super::{lock, Node, NodeError};
use crate::catalogue::{listed, Catalogue, Row};
use crate::delivery::Millis;
use crate::ids::{NodeId, PacketId};
use crate::store::{self, InboxRecord, Tree};

/// The catalogue and the arrivals not in it yet.
#[derive(Default)]
pub(super) struct Listing {
    catalogue: Catalogue,
    /// Stored since the catalogue was last brought up to date: (packet, sender, when).
    pending: Vec<(PacketId, NodeId, Millis)>,
    loaded: bool,
}

impl Listing {
    /// Notes packets just stored.
    pub(super) fn arrived(&mut self, id: PacketId, from: NodeId, at: Millis) {
        if self.loaded {
            self.pending.push((id, from, at));
        }
    }

    /// Notes an acknowledgement.
    pub(super) fn read(&mut self, id: PacketId, from: &NodeId) {
        self.catalogue.mark_read(id, from);
    }

    /// Notes packets deleted by retention.
    pub(super) fn removed(&mut self, gone: std::collections::HashSet<(PacketId, NodeId)>) {
        self.pending.retain(|(i, f, _)| !gone.contains(&(*i, *f)));
        self.catalogue.remove(&gone);
    }
}

impl Node {
    /// Reads the catalogue of received packets, brought up to date first (on the blocking pool:
    /// the first read of a run loads every stored packet).
    pub async fn catalogue<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Catalogue) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        self.slow(move |node| {
            let mut listing = lock(&node.inner.listing);
            node.bring_up_to_date(&mut listing)?;
            Ok(f(&listing.catalogue))
        })
        .await?
    }

    fn bring_up_to_date(&self, listing: &mut Listing) -> Result<(), NodeError> {
        let ring = self.seal();
        let ring = ring.keyring();
        if !listing.loaded {
            let mut rows = Vec::new();
            for (k, v) in self.inner.store.scan(Tree::Inbox, &[])? {
                let rec: InboxRecord = store::decode(Tree::Inbox, &v)?;
                if !listed(rec.packet_type) {
                    continue;
                }
                let id = super::packet_id_of(&k)?;
                if let Some(row) = row_of(&self.inner.store, ring, id, &rec) {
                    rows.push(row);
                }
            }
            listing.catalogue.extend(rows);
            listing.loaded = true;
            listing.pending.clear();
            return Ok(());
        }
        for (id, from, _) in std::mem::take(&mut listing.pending) {
            let Some(rec) = self.inner.store.inbox_record(id, &from)? else { continue };
            if listed(rec.packet_type) {
                if let Some(row) = row_of(&self.inner.store, ring, id, &rec) {
                    listing.catalogue.add(row);
                }
            }
        }
        Ok(())
    }
}

/// A stored packet's row; `None` (logged) if its evidence no longer verifies.
fn row_of(store: &crate::store::Store, ring: &crate::keys::Keyring, id: PacketId, rec: &InboxRecord) -> Option<Row> {
    match super::queries::held(store, ring, id, &rec.sender) {
        Ok((original, _)) => Some(Row::of(&original.packet, rec.sender, rec.received_at, !rec.reads.is_empty())),
        Err(e) => {
            tracing::warn!(packet_id = %id, from = %rec.sender, error = %e, "a stored packet is left out of the inbox listing");
            None
        }
    }
}
