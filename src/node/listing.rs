//! The node's [`Catalogue`] of received packets, for the web workspace and `GET /v1/inbox`.
//!
//! Nothing that receives, acknowledges or deletes packets ever waits for the catalogue: those
//! paths only note what happened in a small queue ([`Listing`], a lock held for a push).
//! Readers bring the catalogue up to date first, on the blocking pool and one at a time: the
//! first read of a run loads every stored packet (each read back from its evidence and verified
//! again), later reads apply the queued changes (an arrival is read back the same way). Pages
//! are then read under a read lock, concurrently. A queue that grows past [`MAX_QUEUED`] (a
//! busy node that nobody looks at) is dropped and the next read loads everything again, so
//! memory stays bounded whatever the traffic.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use super::{lock, Node, NodeError};
use crate::catalogue::{listed, Catalogue, Row};
use crate::delivery::Millis;
use crate::ids::{NodeId, PacketId};
use crate::store::{self, InboxRecord, Tree};

/// Changes queued before the next read loads everything again instead.
pub const MAX_QUEUED: usize = 100_000;

/// One change to apply.
#[derive(Debug, Clone)]
enum Change {
    Arrived(PacketId, NodeId),
    Read(PacketId, NodeId),
    Removed(HashSet<(PacketId, NodeId)>),
}

/// The catalogue and the changes not applied to it yet.
#[derive(Default)]
pub(super) struct Listing {
    /// Changes noted since the last read (short holds only).
    queue: Mutex<Queue>,
    /// The catalogue (read concurrently; written only by the reader bringing it up to date).
    catalogue: RwLock<Catalogue>,
    /// One reader brings it up to date at a time.
    updating: Mutex<()>,
}

#[derive(Default)]
struct Queue {
    changes: Vec<Change>,
    /// Everything must be loaded again (never loaded, or the queue overflowed).
    reload: bool,
    loaded: bool,
}

impl Listing {
    fn note(&self, c: Change) {
        let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !q.loaded || q.reload {
            return;
        }
        if q.changes.len() >= MAX_QUEUED {
            q.changes.clear();
            q.reload = true;
            return;
        }
        q.changes.push(c);
    }

    /// Notes packets just stored.
    pub(super) fn arrived(&self, id: PacketId, from: NodeId, _at: Millis) {
        self.note(Change::Arrived(id, from));
    }

    /// Notes an acknowledgement.
    pub(super) fn read(&self, id: PacketId, from: &NodeId) {
        self.note(Change::Read(id, *from));
    }

    /// Notes packets deleted by retention.
    pub(super) fn removed(&self, gone: HashSet<(PacketId, NodeId)>) {
        self.note(Change::Removed(gone));
    }
}

impl Node {
    /// Reads the catalogue of received packets, brought up to date first (on the blocking
    /// pool: the first read of a run loads every stored packet).
    pub async fn catalogue<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Catalogue) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let listing = &node.inner.listing;
            node.bring_up_to_date(listing)?;
            let c = listing.catalogue.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(f(&c))
        })
        .await
        .map_err(|_| NodeError::Store(crate::store::StoreError::Closed))?
    }

    fn bring_up_to_date(&self, listing: &Listing) -> Result<(), NodeError> {
        let _one = lock(&listing.updating);
        let (changes, reload) = {
            let mut q = lock(&listing.queue);
            let reload = q.reload || !q.loaded;
            if reload {
                // From here on, changes are queued: whatever happens during the load is
                // applied after it (a packet listed twice is listed once).
                q.loaded = true;
                q.reload = false;
                q.changes.clear();
            }
            (std::mem::take(&mut q.changes), reload)
        };
        let ring = self.seal();
        let ring = ring.keyring();
        if reload {
            let rows = match self.load_rows(ring) {
                Ok(rows) => rows,
                Err(e) => {
                    lock(&listing.queue).reload = true;
                    return Err(e);
                }
            };
            let mut fresh = Catalogue::default();
            fresh.extend(rows);
            *listing.catalogue.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
        if changes.is_empty() {
            return Ok(());
        }
        // Read back what arrived before taking the write lock: readers go on meanwhile.
        let mut rows = Vec::new();
        let mut left = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if let Change::Arrived(id, from) = c {
                match self.inner.store.inbox_record(*id, from) {
                    Ok(Some(rec)) if listed(rec.packet_type) => {
                        if let Some(row) = row_of(&self.inner.store, ring, *id, &rec) {
                            rows.push(row);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Kept for the next read, with everything after it.
                        tracing::warn!(error = %e, "cannot read the inbox now; the listing catches up at the next read");
                        left = changes[i..].to_vec();
                        break;
                    }
                }
            }
        }
        let applied = changes.len() - left.len();
        {
            let mut c = listing.catalogue.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.extend(rows);
            for change in &changes[..applied] {
                match change {
                    Change::Arrived(..) => {}
                    Change::Read(id, from) => c.mark_read(*id, from),
                    Change::Removed(gone) => c.remove(gone),
                }
            }
        }
        if !left.is_empty() {
            let mut q = lock(&listing.queue);
            left.append(&mut q.changes);
            q.changes = left;
        }
        Ok(())
    }

    /// Every listed packet's row, from the store; a record that cannot be read is left out
    /// (logged), not a reason to show nothing.
    fn load_rows(&self, ring: &crate::keys::Keyring) -> Result<Vec<Row>, NodeError> {
        let mut rows = Vec::new();
        for (k, v) in self.inner.store.scan(Tree::Inbox, &[])? {
            let Ok(id) = super::packet_id_of(&k) else { continue };
            let rec: InboxRecord = match store::decode(Tree::Inbox, &v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(packet_id = %id, error = %e, "an inbox record is left out of the listing");
                    continue;
                }
            };
            if listed(rec.packet_type) {
                if let Some(row) = row_of(&self.inner.store, ring, id, &rec) {
                    rows.push(row);
                }
            }
        }
        Ok(rows)
    }
}

/// A stored packet's row (under the id it was stored as: a forward's own id, the packet it
/// carries shown); `None` (logged) if its evidence no longer verifies.
fn row_of(store: &crate::store::Store, ring: &crate::keys::Keyring, id: PacketId, rec: &InboxRecord) -> Option<Row> {
    match super::queries::held(store, ring, id, &rec.sender) {
        Ok((original, _)) => Some(Row::of(&original.packet, id, rec.sender, rec.received_at, !rec.reads.is_empty())),
        Err(e) => {
            tracing::warn!(packet_id = %id, from = %rec.sender, error = %e, "a stored packet is left out of the inbox listing");
            None
        }
    }
}
