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
    /// The TLS certificate it carried, as checked here (from the CA, naming the partner, not
    /// expired), or why it is not acceptable.
    pub certificate: Option<Result<crate::pki::inspect::CertInfo, String>>,
    /// Whether taking it (by the policy) is under way: one at a time per partner.
    pub accepting: bool,
    /// SHA-256 of the certificate it carried (an unacceptable one too).
    pub certificate_der: Option<Digest>,
}

/// Most generations of a partner's keys held, retired ones included.
const MAX_HELD_GENERATIONS: usize = 32;

/// The meta key naming `peer`'s latest key announcement.
fn announced_key(peer: &NodeId) -> Vec<u8> {
    format!("announced/{peer}").into_bytes()
}

/// Puts back the key files of a refused acceptance.
fn put_back(before: &crate::files::Snapshot) {
    if let Err((path, e)) = before.restore() {
        tracing::error!(path = %path.display(), error = %e, "could not put back a key file; check the partners directory");
    }
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
        let certificate = self
            .inner
            .tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .certificate_der()
            .map(<[u8]>::to_vec)
            .filter(|c| c.len() <= KeyAnnouncement::MAX_CERTIFICATE);
        let mut sent = 0;
        for p in self.partner_states() {
            if self.policies().policy(&p.node).is_none() {
                continue;
            }
            let packet = Packet::key_announcement(
                &self.inner.me,
                &p.node,
                keys.clone(),
                certificate.clone(),
                now,
                &mut rand_core::OsRng,
            );
            match self.submit(&packet).await {
                Ok(_) => sent += 1,
                Err(e) => warn!(peer = %p.node, error = %e, "could not announce this node's keys"),
            }
        }
        info!(partners = sent, generations = keys.len(), "this node's keys announced to its partners");
        sent
    }

    /// A partner's announcement, stored: remembered for `peers show` (its keys, and the TLS
    /// certificate it carries, checked: from the CA, naming the partner), and its keys taken at
    /// once if the policy with the partner says so.
    /// `restoring`: read again at start, stored at that time (no new record).
    pub(super) fn take_announcement(
        &self,
        peer: NodeId,
        packet_id: PacketId,
        a: KeyAnnouncement,
        restoring: Option<Millis>,
    ) {
        let keys = match a.public_keys(&peer) {
            Ok(k) => k,
            Err(e) => {
                warn!(%peer, %packet_id, error = %e, "key announcement not usable");
                return;
            }
        };
        if !self.is_partner(&peer) {
            return;
        }
        let seal = self.seal();
        let known = seal.keyring().generations(&peer);
        // A generation already retired and not held here is of no use on live traffic: left out
        // (a partner cannot grow the keyring with dead keys).
        let now = Timestamp::now();
        let keys: Vec<PublicKeys> = keys
            .into_iter()
            .filter(|k| k.valid_until.is_none_or(|u| u > now) || known.iter().any(|g| g.signing_kid == k.signing_kid))
            .collect();
        // New: a generation not held, or a narrower window for one held (a retirement). A wider
        // window is not taken (a key once retired stays retired).
        let narrower = |k: &PublicKeys, g: &PublicKeys| {
            k.valid_from.is_some_and(|f| g.valid_from.is_none_or(|gf| f > gf))
                || k.valid_until.is_some_and(|u| g.valid_until.is_none_or(|gu| u < gu))
        };
        let keys_known = keys.iter().all(|k| {
            known
                .iter()
                .any(|g| g.signing_kid == k.signing_kid && g.encryption_kid == k.encryption_kid && !narrower(k, g))
        });
        let certificate = a.certificate.as_ref().map(|c| {
            let tls = self.inner.tls.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            tls.vouch_for(&c.0, &peer, Timestamp::now())
        });
        let fingerprint = |c: &Option<Result<crate::pki::inspect::CertInfo, String>>| {
            c.as_ref().and_then(|r| r.as_ref().ok()).map(|i| i.sha256.clone())
        };
        let announced_before =
            lock(&self.inner.announced).get(&peer).map(|x| (fingerprint(&x.certificate), x.certificate_der));
        let der = a.certificate.as_ref().map(|c| Digest::of(&c.0));
        let new_certificate = match certificate.as_ref() {
            Some(Ok(c)) => announced_before.as_ref().and_then(|(f, _)| f.as_ref()) != Some(&c.sha256),
            // The same unacceptable certificate again is nothing new.
            Some(Err(_)) => announced_before.as_ref().map(|(_, d)| *d) != Some(der),
            None => false,
        };
        if keys_known && !new_certificate {
            return; // nothing new (announced again, or already taken)
        }
        if let Some(suppressed) = self.partner_log(&peer, "announcements") {
            match &certificate {
                Some(Ok(c)) if new_certificate => info!(
                    %peer, serial = %c.serial, not_before = %c.not_before, not_after = %c.not_after, suppressed,
                    "the partner announced its TLS certificate (from the federation CA, naming it)"
                ),
                Some(Err(why)) => warn!(
                    %peer, %packet_id, reason = %why, suppressed,
                    "the partner announced a TLS certificate that is not acceptable"
                ),
                _ => {}
            }
        }
        // Remembered across restarts: the announcement is in the inbox as evidence; this says
        // which one is the partner's latest (read at start, `restore_announcements`). Enqueued
        // here, so records land in the order the announcements came.
        if restoring.is_none() {
            let pending = self.inner.store.enqueue(vec![Op::Put(
                Tree::Meta,
                announced_key(&peer),
                packet_id.as_bytes().to_vec(),
            )]);
            self.spawn(async move {
                if let Err(e) = pending.durable().await {
                    warn!(%peer, error = %e, "could not record the partner's latest key announcement");
                }
            });
        }
        let list: Vec<String> = keys.iter().map(partners::describe_keys).collect();
        let auto = self.policies().policy(&peer).is_some_and(|p| p.keys.accept_announced) && !keys_known;
        let already = {
            let mut map = lock(&self.inner.announced);
            let already = map.get(&peer).is_some_and(|x| x.accepting);
            let entry = Announced {
                packet_id,
                at: restoring.unwrap_or_else(now_ms),
                keys,
                accepted: keys_known,
                certificate,
                certificate_der: der,
                accepting: already || auto,
            };
            map.insert(peer, entry);
            already
        };
        if keys_known {
            return;
        }
        if !auto {
            if let Some(suppressed) = self.partner_log(&peer, "announcements") {
                warn!(%peer, %packet_id, keys = %list.join("; "), suppressed, "the partner announced new keys; they wait for the administrator: liaison peers accept-keys {peer}");
            }
            return;
        }
        if already {
            return; // the one under way takes the latest announcement
        }
        let node = self.clone();
        self.spawn(async move {
            // Until the latest announcement is taken (one that came while this ran, too), or
            // taking it fails; the flag is cleared on every way out.
            loop {
                // The policy may have changed since: then the administrator takes the keys.
                if !node.policies().policy(&peer).is_some_and(|p| p.keys.accept_announced) {
                    if let Some(x) = lock(&node.inner.announced).get_mut(&peer) {
                        x.accepting = false;
                    }
                    return;
                }
                let latest = node.announcement(&peer).map(|x| x.packet_id);
                let by = format!(
                    "announcement {} (policy: accept_announced)",
                    latest.map(|i| i.to_string()).unwrap_or_default()
                );
                let result = node.accept_keys(&peer, &by).await;
                let again = {
                    let mut map = lock(&node.inner.announced);
                    match map.get_mut(&peer) {
                        Some(x) if result.is_ok() && Some(x.packet_id) != latest && !x.accepted => true,
                        Some(x) => {
                            x.accepting = false;
                            false
                        }
                        None => false,
                    }
                };
                if let Err(e) = result {
                    if let Some(suppressed) = node.partner_log(&peer, "announcements") {
                        warn!(%peer, error = %e, suppressed, "could not take the partner's announced keys");
                    }
                }
                if !again {
                    return;
                }
            }
        });
    }

    /// Takes `peer`'s announced keys into the keyring (and the partners directory, each
    /// generation as the keyring now holds it: a window is only ever narrowed). At most
    /// [`KeyAnnouncement::MAX_GENERATIONS`] generations of a partner may be in force or to
    /// come. Refused whole, files put back, if the change is.
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
        target.keyring.add_all(a.keys.clone()).map_err(|e| refuse(e.to_string()))?;
        let now = Timestamp::now();
        let gens = target.keyring.generations(peer);
        let live = gens.iter().filter(|g| g.valid_until.is_none_or(|u| u > now)).count();
        if live > KeyAnnouncement::MAX_GENERATIONS || gens.len() > MAX_HELD_GENERATIONS {
            return Err(refuse(format!(
                "{peer} would have {live} generations of keys in force or to come and {} in all; at most {} and {MAX_HELD_GENERATIONS} (move the files of retired ones, {peer}.<kid>.pub.toml in the partners directory, to an archive, then SIGHUP)",
                gens.len(),
                KeyAnnouncement::MAX_GENERATIONS
            )));
        }
        self.check_partners(&target)?;
        // The files: what the keyring now holds for each announced generation; what was there
        // before is put back if the change is refused.
        let mut before = crate::files::Snapshot::default();
        if let Some(dir) = &self.inner.partners_dir {
            std::fs::create_dir_all(dir).map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
            for k in &a.keys {
                let Some((merged, _)) = target.keyring.kid(k.signing_kid.as_bytes()) else { continue };
                let path = partners::key_file(dir, merged);
                before.add(&path);
                if let Err(e) = crate::files::write_replacing(&path, merged.to_toml().as_bytes()) {
                    put_back(&before);
                    return Err(refuse(format!("{}: {e}", path.display())));
                }
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
                put_back(&before);
                Err(e)
            }
        }
    }

    /// At start: each partner's latest announcement of its keys, read again from the stored
    /// evidence (one its administrator had not accepted before the restart still waits).
    pub(super) fn restore_announcements(&self) {
        for p in self.partner_states() {
            let Ok(Some(id)) = self.inner.store.get(Tree::Meta, &announced_key(&p.node)) else { continue };
            let Ok(id) = <[u8; 16]>::try_from(id.as_slice()).map(PacketId::from_bytes) else { continue };
            let Ok(Some(bytes)) = self.inner.store.get(Tree::Evidence, &pair_key(id, &p.node)) else { continue };
            match crate::seal::verify_signed(self.seal().keyring(), &bytes) {
                Ok(signed) => {
                    if let crate::packet::Body::KeyAnnouncement(a) = signed.packet.body {
                        let at = id.unix_millis().unwrap_or_else(now_ms);
                        self.take_announcement(p.node, id, a, Some(at));
                    }
                }
                Err(e) => {
                    warn!(peer = %p.node, packet_id = %id, error = %e, "a stored key announcement does not verify")
                }
            }
        }
    }

    /// `peer`'s latest announcement since the start, if any.
    pub fn announcement(&self, peer: &NodeId) -> Option<Announced> {
        lock(&self.inner.announced).get(peer).cloned()
    }
}
