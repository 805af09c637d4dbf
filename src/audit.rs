//! The audit trail: a hash-chained, append-only log of what the node did, with signed
//! checkpoints, verifiable offline with the node's public key.
//!
//! Every entry holds its sequence number, the time, the SHA-256 of the previous entry's exact
//! bytes, and one [`Event`]: a submit with each recipient's policy decision, a batch of receipts
//! received, a batch of copies received (stored or rejected, with the rule), an officer's
//! acknowledgement, an administrative action. Entries hold ids, digests, parties, rules and
//! policy versions — **never packet contents** (redactions are listed by field path, not value).
//!
//! The chain is extended by the store's writer thread as it applies each commit
//! (the store's `Op::Audit`: this module knows nothing of the store), so an entry is on disk together with the change it records, in
//! the order the changes were applied, and a failed commit leaves no gap. Periodically (and at
//! shutdown and before an export) the node signs a [`Checkpoint`] of the head with its Ed25519
//! key. [`verify`] walks the chain and names the first entry that was changed, removed,
//! inserted or moved; [`Export`] is a self-contained range of entries ending at a signed
//! checkpoint, which anyone holding the node's public key can check.
//!
//! This module is pure: no I/O, no clock.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::delivery::Millis;
use crate::encoding::{self, Digest};
use crate::ids::{NodeId, OfficerId, PacketId};

/// An entry as the store holds it: its key (the sequence number, big-endian) and its bytes.
pub type StoredEntry = (Vec<u8>, Vec<u8>);

/// Domain separation for checkpoint signatures.
pub const CHECKPOINT_CONTEXT: &str = "liaison/audit-checkpoint/v1";

/// One audit entry as stored (its exact CBOR bytes are what the next entry's `prev` hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When (ms since the Unix epoch, the node's clock).
    pub at: Millis,
    /// SHA-256 of the previous entry's bytes (zeros for the first).
    pub prev: Digest,
    /// What happened.
    pub event: Event,
}

/// What the node did. Ids, digests, parties and decisions only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The node started, with these policies in force.
    Started {
        /// This node.
        node: NodeId,
        /// (partner, policy version) for each partner with a policy.
        policies: Vec<(NodeId, Digest)>,
        /// Partners without a policy (nothing is exchanged with them).
        without_policy: Vec<NodeId>,
    },
    /// The node stopped in order.
    Stopped,
    /// A packet was submitted; each recipient's policy decision.
    Submitted {
        /// The packet.
        packet_id: PacketId,
        /// Its type.
        kind: String,
        /// Per recipient.
        decisions: Vec<Decided>,
    },
    /// A signed receipt came back for copies this node sent.
    Receipts {
        /// From whom.
        from: NodeId,
        /// The receipt's own packet id (the receipt is kept in the store as evidence).
        receipt: PacketId,
        /// SHA-256 of the signed receipt.
        digest: Digest,
        /// What it says about each copy.
        items: Vec<Receipted>,
    },
    /// Copies arrived from a partner and were answered with one signed receipt.
    Received {
        /// From whom.
        from: NodeId,
        /// The receipt issued.
        receipt: PacketId,
        /// Each copy.
        items: Vec<Receipted>,
        /// The version of this node's policy for `from` that was applied.
        policy: Option<Digest>,
    },
    /// Copies were written to a partner (every attempt; a burst per entry).
    Sent {
        /// The partner.
        to: NodeId,
        /// What was written.
        copies: Vec<SentCopy>,
    },
    /// A copy expired before a receipt came: it will not be sent again.
    Expired {
        /// The packet.
        packet_id: PacketId,
        /// The recipient.
        to: NodeId,
    },
    /// An officer acknowledged a received packet.
    Acknowledged {
        /// The packet.
        packet_id: PacketId,
        /// Who.
        officer: OfficerId,
        /// The partner that sent it (absent in entries written before packets were identified
        /// by id and sender).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<NodeId>,
    },
    /// A partner sent a packet under an id another partner had already used: both are kept
    /// (a packet is identified by its id and its sender), and both are shown as suspicious. A
    /// partner that learnt another's packet id and sent first is squatting it.
    IdCollision {
        /// The packet id.
        packet_id: PacketId,
        /// The partner whose packet just arrived.
        from: NodeId,
        /// The partners that used the id before.
        also_from: Vec<NodeId>,
    },
    /// An officer's account: added, disabled, reset by an administrator; a sign-in, a refusal,
    /// a lock; an action in the web workspace under the account.
    Account {
        /// The account (absent: a sign-in under a name no account has; the name typed is not
        /// recorded, it may be a password typed in the wrong field).
        account: Option<OfficerId>,
        /// What happened.
        action: AccountAction,
        /// Who did it: the admin client or account for a change, the account itself for its
        /// actions, the address a sign-in came from.
        by: String,
        /// Details (scopes, the packet concerned, why refused); never a password, code or secret.
        detail: String,
    },
    /// An administrative action (audit export, verification...).
    Admin {
        /// What.
        action: AdminAction,
        /// By whom (API client name).
        by: String,
        /// Details (ranges, results); never secrets.
        detail: String,
    },
}

/// One recipient's policy decision at submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The recipient.
    pub to: NodeId,
    /// Allowed, allowed with fields removed, or refused.
    pub decision: DecisionKind,
    /// The denying rule, or the rules that redacted.
    pub rules: Vec<String>,
    /// Field paths removed (no values).
    pub redacted: Vec<String>,
    /// The policy version applied.
    pub policy: Option<Digest>,
    /// SHA-256 of the sealed copy, when one was made.
    pub sealed: Option<Digest>,
    /// SHA-256 of the signed packet in it (what the recipient's receipt names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Digest>,
}

/// What the sharing policy decided for one recipient (recorded as `allow`, `redact`, `deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// Sent as submitted.
    Allow,
    /// Sent with fields removed.
    Redact,
    /// Not sent.
    Deny,
}

/// An administrative action (recorded by its name, e.g. `tls reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAction {
    /// New TLS material put in force.
    #[serde(rename = "tls reload")]
    TlsReload,
    /// New sharing policies put in force.
    #[serde(rename = "policy reload")]
    PolicyReload,
    /// Partners enrolled, removed or moved, or their keys changed, while the node ran.
    #[serde(rename = "partners changed")]
    PartnersChanged,
    /// Received packets past their retention deleted.
    #[serde(rename = "retention purge")]
    RetentionPurge,
    /// The whole trail verified on request.
    #[serde(rename = "audit verify")]
    AuditVerify,
    /// Part of the trail exported on request.
    #[serde(rename = "audit export")]
    AuditExport,
}

impl std::fmt::Display for AdminAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TlsReload => "tls reload",
            Self::PolicyReload => "policy reload",
            Self::PartnersChanged => "partners changed",
            Self::RetentionPurge => "retention purge",
            Self::AuditVerify => "audit verify",
            Self::AuditExport => "audit export",
        })
    }
}

/// What happened to or under an account (recorded by its name, e.g. `signed in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountAction {
    /// An administrator added it.
    #[serde(rename = "added")]
    Added,
    /// An administrator disabled it.
    #[serde(rename = "disabled")]
    Disabled,
    /// An administrator enabled it again.
    #[serde(rename = "enabled")]
    Enabled,
    /// An administrator gave it a new password and TOTP secret (and unlocked it).
    #[serde(rename = "reset")]
    Reset,
    /// Signed in.
    #[serde(rename = "signed in")]
    SignedIn,
    /// A sign-in was refused (wrong password or code, locked, disabled, unknown name).
    #[serde(rename = "sign-in refused")]
    SignInRefused,
    /// Locked by failed sign-ins.
    #[serde(rename = "locked")]
    Locked,
    /// Signed out (or the session ended: idle, too old, account changed).
    #[serde(rename = "signed out")]
    SignedOut,
    /// Opened a packet (a received one, or one this node sent).
    #[serde(rename = "viewed")]
    Viewed,
    /// Searched the inbox (the terms are in the detail).
    #[serde(rename = "searched")]
    Searched,
    /// Downloaded an attachment.
    #[serde(rename = "downloaded")]
    Downloaded,
    /// A request refused for the account's scope or role.
    #[serde(rename = "refused")]
    Refused,
    /// Sent a packet it wrote in the workspace.
    #[serde(rename = "sent")]
    Sent,
    /// An administrator added or removed a smart-card certificate.
    #[serde(rename = "certificate")]
    Certificate,
}

impl std::fmt::Display for AccountAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Reset => "reset",
            Self::SignedIn => "signed in",
            Self::SignInRefused => "sign-in refused",
            Self::Locked => "locked",
            Self::SignedOut => "signed out",
            Self::Viewed => "viewed",
            Self::Searched => "searched",
            Self::Downloaded => "downloaded",
            Self::Refused => "refused",
            Self::Sent => "sent",
            Self::Certificate => "certificate",
        })
    }
}

/// What a receipt says about one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipted {
    /// The packet.
    pub packet_id: PacketId,
    /// SHA-256 of the sealed bytes.
    pub digest: Digest,
    /// `accepted`, or the rejection code (`decryption_failed`, `policy.receive.max_tlp`...).
    pub outcome: String,
    /// At the sender: which attempt was receipted and when it was written to the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
}

/// One copy written to the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentCopy {
    /// The packet.
    pub packet_id: PacketId,
    /// Attempt number (1 = first).
    pub attempt: u32,
    /// When (ms).
    pub at: Millis,
}

/// When a copy was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Attempt number (1 = first).
    pub attempt: u32,
    /// When it was written (ms).
    pub at: Millis,
}

/// The chain's state: what the next entry links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The sequence number of the last entry (0: none yet).
    pub seq: u64,
    /// SHA-256 of the last entry's bytes (zeros: none yet).
    pub hash: Digest,
}

impl Head {
    /// The empty chain.
    pub const GENESIS: Head = Head { seq: 0, hash: Digest([0; 32]) };

    /// Appends `event` at time `at`: returns the entry's key and bytes, and moves the head.
    pub fn append(&mut self, at: Millis, event: Event) -> (Vec<u8>, Vec<u8>) {
        let entry = Entry { seq: self.seq + 1, at, prev: self.hash, event };
        let bytes = encoding::to_cbor(&entry);
        self.seq = entry.seq;
        self.hash = Digest::of(&bytes);
        (key(entry.seq), bytes)
    }
}

/// The store key of entry `seq` (big-endian, so keys sort in chain order).
pub fn key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// A signed statement of the chain's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The node.
    pub node: NodeId,
    /// The head it signs.
    pub head: Head,
    /// When it was signed (ms).
    pub at: Millis,
    /// Ed25519 over [`Checkpoint::message`].
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The bytes signed: the context string, then the CBOR of (node, head, at).
    pub fn message(node: &NodeId, head: &Head, at: Millis) -> Vec<u8> {
        let mut m = CHECKPOINT_CONTEXT.as_bytes().to_vec();
        m.push(0);
        m.extend(encoding::to_cbor(&(node, head, at)));
        m
    }

    /// Whether the signature is `key`'s.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&Self::message(&self.node, &self.head, self.at), &sig).is_ok()
    }
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        crate::encoding::Blob(v.to_vec()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let b = crate::encoding::Blob::deserialize(d)?;
        b.0.try_into().map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}

/// Where the chain first fails, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct Broken {
    /// The first entry that is wrong (or missing).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// First and last entry checked.
    pub first: u64,
    /// Last entry checked.
    pub last: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: usize,
    /// The last entry covered by a signed checkpoint (0: none).
    pub signed_up_to: u64,
}

/// Checks a run of stored entries (`(key, bytes)` in key order) that should continue from
/// `start`, the recorded `head` after them (if known), and the checkpoints; names the first
/// entry that was altered, removed, inserted or moved.
pub fn verify(
    start: Head,
    entries: &[StoredEntry],
    head: Option<Head>,
    checkpoints: &[Checkpoint],
    node: &NodeId,
    keys: &[VerifyingKey],
) -> Result<Verified, Broken> {
    let mut at = start;
    let mut hashes = std::collections::BTreeMap::new();
    for (k, bytes) in entries {
        let expected = at.seq + 1;
        let stored_key = <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes).ok();
        if stored_key != Some(expected) {
            let found = stored_key.map_or_else(|| "a malformed key".to_owned(), |s| format!("entry {s}"));
            return Err(Broken { seq: expected, reason: format!("missing: the next stored entry is {found}") });
        }
        let entry: Entry = encoding::from_cbor_exact(bytes, usize::MAX)
            .map_err(|e| Broken { seq: expected, reason: format!("cannot be read ({e})") })?;
        if entry.seq != expected {
            return Err(Broken { seq: expected, reason: format!("holds entry {} (entries were moved)", entry.seq) });
        }
        if entry.prev != at.hash {
            return Err(Broken {
                seq: at.seq.max(1),
                reason: if at.seq == start.seq {
                    "does not follow the chain it should continue".into()
                } else {
                    format!("was changed (entry {expected} names another hash for it)")
                },
            });
        }
        at = Head { seq: expected, hash: Digest::of(bytes) };
        hashes.insert(expected, at.hash);
    }
    if let Some(head) = head {
        if head.seq != at.seq {
            return Err(Broken {
                seq: head.seq.min(at.seq + 1),
                reason: format!("the recorded head is entry {} but the chain ends at {}", head.seq, at.seq),
            });
        }
        if head.hash != at.hash {
            return Err(Broken { seq: at.seq, reason: "was changed (it does not match the recorded head)".into() });
        }
    }
    let mut signed_up_to = 0;
    let mut checked = 0;
    for c in checkpoints {
        // Any generation of the node's signing keys (a rotation changes the key mid-trail).
        if &c.node != node || !keys.iter().any(|k| c.verify(k)) {
            return Err(Broken { seq: c.head.seq, reason: "its checkpoint signature does not verify".into() });
        }
        if c.head.seq <= start.seq || c.head.seq > at.seq {
            continue; // outside the entries at hand
        }
        if hashes.get(&c.head.seq) != Some(&c.head.hash) {
            return Err(Broken {
                seq: c.head.seq,
                reason: "was changed (it does not match its signed checkpoint)".into(),
            });
        }
        signed_up_to = signed_up_to.max(c.head.seq);
        checked += 1;
    }
    Ok(Verified { first: start.seq + 1, last: at.seq, checkpoints: checked, signed_up_to })
}

/// A self-contained excerpt of the trail: entries from `start.seq + 1` to a signed checkpoint,
/// with the node's public signing keys (every generation: its checkpoints may be signed by
/// several across a rotation). Verifiable offline ([`Export::verify`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Format marker.
    pub format: String,
    /// The node.
    pub node: NodeId,
    /// Its Ed25519 public key in force at the export (hex), to be compared with the one the
    /// federation published.
    pub public_key: String,
    /// Every generation of its Ed25519 public keys (hex), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// The head before the first entry (what the first entry's `prev` must be).
    pub start: Head,
    /// The entries, as stored: (seq, CBOR bytes).
    pub entries: Vec<(u64, crate::encoding::Blob)>,
    /// The signed checkpoints within the range; the last one signs the last entry.
    pub checkpoints: Vec<Checkpoint>,
}

/// The export format marker.
pub const EXPORT_FORMAT: &str = "liaison-audit-export/1";

impl Export {
    /// Checks the excerpt against `keys` (the node's published keys, not only those inside):
    /// every link, every checkpoint signature, and that the last entry is signed.
    pub fn verify(&self, keys: &[VerifyingKey]) -> Result<Verified, Broken> {
        if self.format != EXPORT_FORMAT {
            return Err(Broken { seq: self.start.seq + 1, reason: format!("not an audit export ({})", self.format) });
        }
        if self.entries.is_empty() {
            return Ok(Verified { first: self.start.seq + 1, last: self.start.seq, checkpoints: 0, signed_up_to: 0 });
        }
        let entries: Vec<StoredEntry> = self.entries.iter().map(|(s, b)| (self::key(*s), b.0.clone())).collect();
        let v = verify(self.start, &entries, None, &self.checkpoints, &self.node, keys)?;
        if v.signed_up_to != v.last {
            return Err(Broken {
                seq: v.last,
                reason: "no signed checkpoint covers the end of the export (entries may have been cut or added)".into(),
            });
        }
        Ok(v)
    }

    /// The entries, decoded (for display).
    pub fn decoded(&self) -> Vec<Entry> {
        self.entries.iter().filter_map(|(_, b)| encoding::from_cbor_exact(&b.0, usize::MAX).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn node() -> NodeId {
        "IT-DCSA".parse().unwrap()
    }

    fn chain(n: u64) -> (Vec<StoredEntry>, Head) {
        let mut head = Head::GENESIS;
        let mut v = Vec::new();
        for i in 0..n {
            let officer: OfficerId = format!("Officer {i}").parse().unwrap();
            let packet_id = PacketId::from_bytes([i as u8; 16]);
            v.push(head.append(1000 + i, Event::Acknowledged { packet_id, officer, from: None }));
        }
        (v, head)
    }

    fn checkpoint(sk: &SigningKey, head: Head) -> Checkpoint {
        let sig = sk.sign(&Checkpoint::message(&node(), &head, 5)).to_bytes();
        Checkpoint { node: node(), head, at: 5, signature: sig }
    }

    #[test]
    fn an_intact_chain_verifies_and_every_kind_of_tampering_is_named() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let vk = sk.verifying_key();
        let (entries, head) = chain(10);
        let cps = [checkpoint(&sk, head)];
        let ok = verify(Head::GENESIS, &entries, Some(head), &cps, &node(), &[vk]).unwrap();
        assert_eq!((ok.first, ok.last, ok.checkpoints, ok.signed_up_to), (1, 10, 1, 10));

        // A changed byte in entry 4: entry 5 no longer links to it.
        let mut t = entries.clone();
        let last = t[3].1.len() - 3;
        t[3].1[last] ^= 1;
        let e = verify(Head::GENESIS, &t, Some(head), &cps, &node(), &[vk]).unwrap_err();
        assert_eq!(e.seq, 4, "{e}");
        // A changed last entry: only the head and the checkpoint can tell.
        let mut t = entries.clone();
        let last = t[9].1.len() - 3;
        t[9].1[last] ^= 1;
        assert_eq!(verify(Head::GENESIS, &t, Some(head), &cps, &node(), &[vk]).unwrap_err().seq, 10);
        assert_eq!(verify(Head::GENESIS, &t, None, &cps, &node(), &[vk]).unwrap_err().seq, 10);
        // Entry 6 deleted.
        let mut t = entries.clone();
        t.remove(5);
        let e = verify(Head::GENESIS, &t, Some(head), &cps, &node(), &[vk]).unwrap_err();
        assert_eq!((e.seq, e.reason.as_str()), (6, "missing: the next stored entry is entry 7"));
        // Entries 3 and 4 swapped (values moved under each other's keys).
        let mut t = entries.clone();
        let (a, b) = (t[2].1.clone(), t[3].1.clone());
        t[2].1 = b;
        t[3].1 = a;
        let e = verify(Head::GENESIS, &t, Some(head), &cps, &node(), &[vk]).unwrap_err();
        assert_eq!(e.seq, 3, "{e}");
        // The last entry deleted: the head says there were 10.
        let mut t = entries.clone();
        t.pop();
        assert_eq!(verify(Head::GENESIS, &t, Some(head), &cps, &node(), &[vk]).unwrap_err().seq, 10);
        // A rewritten, re-linked tail (an attacker without the key): the checkpoint catches it.
        let mut forged_head = Head { seq: 7, hash: Digest::of(&entries[6].1) };
        let mut t = entries[..7].to_vec();
        for i in 7..10u64 {
            t.push(forged_head.append(2000 + i, Event::Stopped));
        }
        let e = verify(Head::GENESIS, &t, Some(forged_head), &cps, &node(), &[vk]).unwrap_err();
        assert_eq!(e.seq, 10, "{e}");
        // A checkpoint signed by another key.
        let other = SigningKey::from_bytes(&[8; 32]);
        let e = verify(Head::GENESIS, &entries, Some(head), &[checkpoint(&other, head)], &node(), &[vk]).unwrap_err();
        assert!(e.reason.contains("signature"), "{e}");
    }

    #[test]
    fn an_export_verifies_offline_only_up_to_a_signed_checkpoint() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let (entries, head) = chain(6);
        let start = Head { seq: 2, hash: Digest::of(&entries[1].1) };
        let export = Export {
            format: EXPORT_FORMAT.into(),
            node: node(),
            public_key: String::new(),
            public_keys: Vec::new(),
            start,
            entries: entries[2..]
                .iter()
                .enumerate()
                .map(|(i, (_, b))| (3 + i as u64, crate::encoding::Blob(b.clone())))
                .collect(),
            checkpoints: vec![checkpoint(&sk, head)],
        };
        let v = export.verify(&[sk.verifying_key()]).unwrap();
        assert_eq!((v.first, v.last, v.signed_up_to), (3, 6, 6));
        let mut cut = export.clone();
        cut.entries.pop();
        assert!(cut.verify(&[sk.verifying_key()]).unwrap_err().reason.contains("no signed checkpoint"));
        let mut forged = export.clone();
        forged.entries[1].1 .0[10] ^= 1;
        assert_eq!(forged.verify(&[sk.verifying_key()]).unwrap_err().seq, 4);
        assert!(export.verify(&[SigningKey::from_bytes(&[9; 32]).verifying_key()]).is_err());
        // No payloads: an entry is ids and names only.
        assert!(export.decoded().iter().all(|e| matches!(e.event, Event::Acknowledged { .. })));
    }
}
