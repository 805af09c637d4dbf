//! Submitting a packet, without I/O: the sharing policy decided per recipient (refused,
//! allowed, or allowed with fields removed before signing), each allowed copy signed under its
//! policy's version and encrypted for its recipient, and the writes that store the copies, their
//! outbox entries and the decisions in the audit trail. The driver commits the writes (with the
//! deadline changes it stages from [`Submission::copies`]) and, once they are on disk, hands the
//! entries to the partners' sender machines and answers the submitter.

use crate::audit::{Decided, DecisionKind, Event as AuditEvent};
use crate::encoding::Digest;
use crate::ids::{NodeId, PacketId};
use crate::packet::Packet;
use crate::policy::{Decision, Denial, Direction, PolicyBook, Redacted};
use crate::seal::{SealContext, SealError};
use crate::store::{self, pair_key, Op, Tree};

use super::{Entry, Millis, Outbox};

/// What a submit did, recipient by recipient.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Submitted {
    /// The packet id.
    pub id: PacketId,
    /// Recipients a copy was sealed and stored for.
    pub sent: Vec<SentCopy>,
    /// Recipients the policy refused: nothing was sealed for them.
    pub denied: Vec<Refused>,
}

/// A copy sealed for one recipient.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SentCopy {
    /// The recipient.
    pub recipient: NodeId,
    /// What its policy removed before signing.
    pub redacted: Vec<Redacted>,
    /// The version hash of the policy applied.
    pub policy: Option<Digest>,
}

/// A recipient refused by policy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    /// The recipient.
    pub recipient: NodeId,
    /// The rule and why.
    pub denial: Denial,
    /// The version hash of the policy applied (`None`: no policy with this partner).
    pub policy: Option<Digest>,
}

/// A submit worked out.
#[derive(Debug)]
pub enum Prepared {
    /// At least one recipient gets a copy.
    Copies(Submission),
    /// Every recipient was refused: nothing is sent; `ops` records the refusal.
    AllDenied {
        /// The audit entry of the refusal.
        ops: Vec<Op>,
        /// Who was refused and why.
        denied: Vec<Refused>,
    },
}

/// The copies of a submit, sealed, and what to store.
#[derive(Debug)]
pub struct Submission {
    /// What to answer the submitter once the writes are on disk.
    pub submitted: Submitted,
    /// The writes: sealed copies, outbox entries, the audit entry.
    pub ops: Vec<Op>,
    /// The outbox entries, for the sender machines once on disk.
    pub entries: Vec<Entry>,
    /// Each copy as sent (redacted for its recipient), for the deadlines.
    pub copies: Vec<(Packet, NodeId)>,
}

/// Decides `packet` for each recipient under the send rules of `policies` at `now`: the copy each
/// allowed recipient gets (redacted where its policy says so) and the refusals.
pub fn decide(policies: &PolicyBook, packet: &Packet, now: Millis) -> (Vec<(Packet, SentCopy)>, Vec<Refused>) {
    let id = packet.envelope.id;
    let mut copies = Vec::new();
    let mut denied = Vec::new();
    for r in &packet.envelope.recipients {
        let mut copy = packet.clone();
        let verdict = policies.decide(r, Direction::Send, &mut copy, now);
        match verdict.decision {
            Decision::Deny(denial) => {
                tracing::warn!(packet_id = %id, recipient = %r, rule = %denial.rule, "refused by policy; nothing sent to this partner");
                denied.push(Refused { recipient: r.clone(), denial, policy: verdict.policy });
            }
            Decision::Allow => {
                copies.push((copy, SentCopy { recipient: r.clone(), redacted: Vec::new(), policy: verdict.policy }))
            }
            Decision::Redact(redacted) => {
                tracing::info!(packet_id = %id, recipient = %r, fields = redacted.len(), "redacted by policy");
                copies.push((copy, SentCopy { recipient: r.clone(), redacted, policy: verdict.policy }));
            }
        }
    }
    (copies, denied)
}

/// Seals the copies decided for `packet` (each names the recipients that actually get the
/// packet) and works out the writes. With no copy, only the refusal is recorded.
pub fn seal(
    seal: &SealContext,
    packet: &Packet,
    mut copies: Vec<(Packet, SentCopy)>,
    denied: Vec<Refused>,
    now: Millis,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Result<Prepared, SealError> {
    let id = packet.envelope.id;
    let mut decisions = denied_decisions(&denied);
    let kind = packet.packet_type().as_str().to_owned();
    if copies.is_empty() {
        // Nothing is sent, but the refusal is on record.
        let ops = vec![Op::Audit(AuditEvent::Submitted { packet_id: id, kind, decisions })];
        return Ok(Prepared::AllDenied { ops, denied });
    }
    let receiving: Vec<NodeId> = copies.iter().map(|(_, c)| c.recipient.clone()).collect();
    let expires = super::millis(packet.envelope.expires);
    let mut ops = Vec::new();
    let mut entries = Vec::new();
    for (copy, sent) in &mut copies {
        copy.envelope.recipients.clone_from(&receiving);
        let signed = seal.sign_under(copy, sent.policy)?;
        let s = seal.encrypt_for(&signed, &sent.recipient, rng)?;
        let e = Outbox::new_entry(
            now,
            s.route.packet_id,
            s.route.recipient.clone(),
            s.route.priority,
            expires,
            Digest::of(&s.bytes),
        );
        let key = pair_key(e.packet_id, &e.recipient);
        let mut rules: Vec<String> = sent.redacted.iter().map(|r| r.rule.clone()).collect();
        rules.dedup();
        decisions.push(Decided {
            to: sent.recipient.clone(),
            decision: if sent.redacted.is_empty() { DecisionKind::Allow } else { DecisionKind::Redact },
            rules,
            redacted: sent.redacted.iter().map(|r| r.path.clone()).collect(),
            policy: sent.policy,
            sealed: Some(e.sealed_digest),
        });
        ops.push(Op::Put(Tree::Sealed, key.clone(), s.bytes));
        ops.push(store::put(Tree::Outbox, key, &e));
        entries.push(e);
    }
    ops.push(Op::Audit(AuditEvent::Submitted { packet_id: id, kind, decisions }));
    let (packets, sent): (Vec<Packet>, Vec<SentCopy>) = copies.into_iter().unzip();
    let copies = packets.into_iter().zip(receiving).collect();
    Ok(Prepared::Copies(Submission { submitted: Submitted { id, sent, denied }, ops, entries, copies }))
}

/// Refusals as audit decisions.
pub fn denied_decisions(denied: &[Refused]) -> Vec<Decided> {
    denied
        .iter()
        .map(|r| Decided {
            to: r.recipient.clone(),
            decision: DecisionKind::Deny,
            rules: vec![r.denial.rule.clone()],
            redacted: Vec::new(),
            policy: r.policy,
            sealed: None,
        })
        .collect()
}
