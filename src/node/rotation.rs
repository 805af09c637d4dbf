//! Key rotation with overlap, between nodes: this node announces its keys (every generation
//! still in force or to come) to each partner in a `KeyAnnouncement` signed with its key in
//! force, when its keys change (`liaison keys rotate`, then SIGHUP) and at start while a
//! rotation is under way; a partner's announcement, once stored, is taken into the keyring at
//! once if the policy with it says `[keys] accept_announced = true`, else it waits for the
//! administrator (`liaison peers accept-keys NODE`), shown in `peers show`. Taken keys are kept
//! in the partners directory (`NODE.<kid>.pub.toml`), so a restart or SIGHUP keeps them.

use super::*;
use crate::keys::PublicKeys;
use crate::packet::{AnnouncedKeys, KeyAnnouncement};

/// A partner's latest announcement of its keys.
#[derive(Debug, Clone)]
pub struct Announced {
    /// The packet that carried it.
    pub packet_id: PacketId,
    /// When it was stored here.
    pub at: Millis,
    /// The generations announced.
    pub keys: Vec<PublicKeys>,
    /// Whether they are in the keyring.
    pub accepted: bool,
}

impl Node {
    /// Sends each partner with a policy a [`KeyAnnouncement`] of this node's keys still in force
    /// or to come. Returns to how many partners it went.
    pub(super) async fn announce_keys(&self) -> usize {
        let now = Timestamp::now();
        let keys: Vec<AnnouncedKeys> = self
            .seal()
            .generations()
            .iter()
            .map(|k| k.public())
            .filter(|k| k.valid_until.is_none_or(|u| u > now))
            .map(AnnouncedKeys::of)
            .collect();
        let mut sent = 0;
        for p in self.partner_states() {
            if self.policies().policy(&p.node).is_none() {
                continue;
            }
            let packet = Packet::key_announcement(&self.inner.me, &p.node, keys.clone(), now, &mut rand_core::OsRng);
            match self.submit(&packet).await {
                Ok(_) => sent += 1,
                Err(e) => warn!(peer = %p.node, error = %e, "could not announce this node's keys"),
            }
        }
        info!(partners = sent, generations = keys.len(), "this node's keys announced to its partners");
        sent
    }

    /// A partner's announcement, stored: remembered for `peers show`, and taken at once if the
    /// policy with the partner says so.
    pub(super) fn take_announcement(&self, peer: NodeId, packet_id: PacketId, a: KeyAnnouncement) {
        let keys = match a.public_keys(&peer) {
            Ok(k) => k,
            Err(e) => {
                warn!(%peer, %packet_id, error = %e, "key announcement not usable");
                return;
            }
        };
        let seal = self.seal();
        let known = seal.keyring().generations(&peer);
        if keys.iter().all(|k| known.iter().any(|g| **g == *k)) {
            return; // nothing new (announced again, or already taken)
        }
        let list: Vec<String> = keys.iter().map(partners::describe_keys).collect();
        lock(&self.inner.announced).insert(peer, Announced { packet_id, at: now_ms(), keys, accepted: false });
        let auto = self.policies().policy(&peer).is_some_and(|p| p.keys.accept_announced);
        if !auto {
            warn!(%peer, %packet_id, keys = %list.join("; "), "the partner announced new keys; they wait for the administrator: liaison peers accept-keys {peer}");
            return;
        }
        let node = self.clone();
        self.spawn(async move {
            let by = format!("announcement {packet_id} (policy: accept_announced)");
            if let Err(e) = node.accept_keys(&peer, &by).await {
                warn!(%peer, error = %e, "could not take the partner's announced keys");
            }
        });
    }

    /// Takes `peer`'s announced keys into the keyring (and the partners directory).
    pub async fn accept_keys(&self, peer: &NodeId, by: &str) -> Result<Vec<String>, NodeError> {
        let refuse = |why: String| NodeError::PartnerChange(why);
        let held = self.admin_lock().await;
        if !self.is_partner(peer) {
            return Err(NodeError::NotAPartner(*peer));
        }
        let Some(a) = lock(&self.inner.announced).get(peer).cloned() else {
            return Err(refuse(format!("{peer} has announced no keys since this node started")));
        };
        let mut target = self.partner_set();
        for k in &a.keys {
            target.keyring.add(k.clone()).map_err(|e| refuse(e.to_string()))?;
        }
        self.check_partners(&target)?;
        let mut written = Vec::new();
        if let Some(dir) = &self.inner.partners_dir {
            std::fs::create_dir_all(dir).map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
            for k in &a.keys {
                let kid = k.signing_kid.as_str();
                let tail = kid.rsplit('/').next().unwrap_or(kid).get(..12).unwrap_or("key");
                let path = dir.join(format!("{peer}.{tail}.pub.toml"));
                crate::files::write_replacing(&path, k.to_toml().as_bytes())
                    .map_err(|e| refuse(format!("{}: {e}", path.display())))?;
                written.push(path);
            }
        }
        match self.set_partners_locked(&held, target, by).await {
            Ok(changes) => {
                if let Some(x) = lock(&self.inner.announced).get_mut(peer) {
                    if x.packet_id == a.packet_id {
                        x.accepted = true;
                    }
                }
                Ok(changes)
            }
            Err(e) => {
                for p in written {
                    let _ = crate::files::remove_durably(&p);
                }
                Err(e)
            }
        }
    }

    /// `peer`'s latest announcement since the start, if any.
    pub fn announcement(&self, peer: &NodeId) -> Option<Announced> {
        lock(&self.inner.announced).get(peer).cloned()
    }
}
