//! Submitting a packet, without I/O: the sharing policy decided per recipient (refused,
//! allowed, or allowed with fields removed before signing), each allowed copy signed under its
//! policy's version and encrypted for its recipient, and the writes that store the copies, their
//! outbox entries and the decisions in the audit trail. The driver commits the writes (with the
//! deadline changes it stages from [`Submission::copies`]) and, once they are on disk, hands the
//! entries to the partners' sender machines and answers the submitter.

use crate::audit::{Decided, DecisionKind, Event as AuditEvent};
use crate::encoding::{Blob, Digest};
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::HandlingCode;
use crate::packet::{Body, Checked, Envelope, Forward, Originator, Packet};
use crate::policy::{Decision, Denial, Direction, OnwardRule, PolicyBook, Redacted};
use crate::seal::{SealContext, SealError, SignedPacket};
use crate::store::{self, pair_key, Op, Tree};
use crate::timestamp::Timestamp;

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
pub fn decide(policies: &PolicyBook, packet: &Checked, now: Millis) -> (Vec<(Checked, SentCopy)>, Vec<Refused>) {
    let id = packet.envelope.id;
    let mut copies = Vec::new();
    let mut denied = Vec::new();
    // Encoded once: the size rule of every recipient, and the signature of unredacted copies.
    let size = packet.cbor().len();
    for r in &packet.envelope.recipients {
        let mut copy = packet.packet().clone();
        let verdict = policies.decide_sized(r, Direction::Send, &mut copy, now, Some(size));
        match verdict.decision {
            Decision::Deny(denial) => {
                tracing::warn!(packet_id = %id, recipient = %r, rule = %denial.rule, "refused by policy; nothing sent to this partner");
                denied.push(Refused { recipient: *r, denial, policy: verdict.policy });
            }
            Decision::Allow => {
                let sent = SentCopy { recipient: *r, redacted: Vec::new(), policy: verdict.policy };
                copies.push((packet.clone(), sent))
            }
            Decision::Redact(redacted) => {
                tracing::info!(packet_id = %id, recipient = %r, fields = redacted.len(), "redacted by policy");
                // The policy checked the redacted copy (a copy that fails is denied instead).
                let sent = SentCopy { recipient: *r, redacted, policy: verdict.policy };
                copies.push((Checked::already_checked(copy), sent));
            }
        }
    }
    (copies, denied)
}

/// Whether the recipient whose copy is `entry` may be sent a consent to pass the packet on: only
/// once it holds the packet (its copy delivered) — a consent that arrives first is refused
/// there as about a packet it does not know, and would be lost. Gives the priority the
/// consent travels at, or why not: `None` not a recipient, else the copy's state.
pub fn consent_holder(entry: Option<&Entry>) -> Result<crate::markings::Priority, Option<&'static str>> {
    match entry {
        None => Err(None),
        Some(e) if matches!(e.state, super::EntryState::Delivered { .. }) => Ok(e.priority),
        Some(e) => Err(Some(e.state.name())),
    }
}

/// Passing a received packet on: who passes it (`me`), the node it came from, the original as
/// its originator signed it, and the originator's consents this node holds about it.
pub struct Onward<'a> {
    /// This node.
    pub me: &'a NodeId,
    /// The node that sent it here (the originator, or a node that passed it on).
    pub sender: &'a NodeId,
    /// The packet, as its originator signed it.
    pub original: &'a SignedPacket,
    /// Consents of the originator about it (verified).
    pub consents: &'a [SignedPacket],
}

impl Onward<'_> {
    /// Each of `to` on its own: the original still valid, not already a recipient, the
    /// `[onward]` rule and H2 (with a consent covering it where needed), and this node's send
    /// policy for it applied to the original — which cannot be redacted, since another node
    /// signed it, so a policy that would remove anything refuses it. The allowed get a
    /// [`Body::Forward`] (id `id`) carrying the original and the consent.
    pub fn decide(
        &self,
        policies: &PolicyBook,
        to: &[NodeId],
        officer: &OfficerId,
        id: PacketId,
        now: Millis,
        now_ts: Timestamp,
    ) -> (Vec<(Checked, SentCopy)>, Vec<Refused>) {
        let p = &self.original.packet;
        let originator = &p.envelope.originator.node;
        // The `[onward]` rule of the agreement with the originator, or with whoever passed it on.
        let rule = policies
            .policy(originator)
            .or_else(|| policies.policy(self.sender))
            .map_or(OnwardRule::Never, |p| p.onward.from_partner);
        let mut copies = Vec::new();
        let mut denied = Vec::new();
        let deny = |denied: &mut Vec<Refused>, r: &NodeId, rule: &str, reason: String, policy: Option<Digest>| {
            denied.push(Refused { recipient: *r, denial: Denial { rule: rule.into(), reason }, policy });
        };
        // A node named twice gets one copy.
        let mut seen = std::collections::BTreeSet::new();
        for r in to.iter().filter(|r| seen.insert(*r)) {
            let policy_hash = policies.policy(r).map(|x| x.hash);
            if let Err(e) = crate::seal::check_times(p, now_ts) {
                deny(&mut denied, r, "onward.original_expired", e.to_string(), policy_hash);
                continue;
            }
            if r == originator || p.envelope.recipients.contains(r) {
                let reason = format!("{r} already had it from {originator}");
                deny(&mut denied, r, "onward.already_a_recipient", reason, policy_hash);
                continue;
            }
            let needed = match crate::onward::consent_needed(p, rule) {
                Ok(n) => n,
                Err(d) => {
                    deny(&mut denied, r, &d.rule, d.reason, policy_hash);
                    continue;
                }
            };
            let consent = self.consents.iter().find(|c| crate::onward::consent_for(c, p, self.me, r, now_ts).is_ok());
            if needed && consent.is_none() {
                let why = if p.envelope.handling.codes.contains(&HandlingCode::H2) {
                    "it is marked H2"
                } else {
                    "the policy with its originator requires consent"
                };
                let reason = format!("{why}, and no consent of {originator} covering {r} was received");
                deny(&mut denied, r, "onward.consent_required", reason, policy_hash);
                continue;
            }
            let mut check = p.clone();
            let verdict = policies.decide(r, Direction::Send, &mut check, now);
            match verdict.decision {
                Decision::Deny(d) => {
                    deny(&mut denied, r, &d.rule, d.reason, verdict.policy);
                    continue;
                }
                Decision::Redact(list) => {
                    let fields: Vec<String> = list.iter().map(|x| x.path.clone()).collect();
                    let reason =
                        format!("{} would have to be removed, but {originator} signed the packet", fields.join(", "));
                    deny(&mut denied, r, &list[0].rule, reason, verdict.policy);
                    continue;
                }
                Decision::Allow => {}
            }
            let e = &p.envelope;
            let forward = Packet {
                version: p.version,
                envelope: Envelope {
                    id,
                    case_ref: e.case_ref.clone(),
                    in_reply_to: None,
                    related: vec![e.id],
                    originator: Originator { node: *self.me, officer: Some(officer.clone()) },
                    recipients: vec![*r],
                    created: now_ts,
                    expires: e.expires,
                    priority: e.priority,
                    urgency_reason: e.urgency_reason,
                    due_by: None,
                    classification: e.classification,
                    tlp: e.tlp,
                    handling: e.handling.clone(),
                    grading: e.grading,
                    legal_basis: e.legal_basis.clone(),
                    purpose: e.purpose.clone(),
                    language: e.language,
                },
                body: Body::Forward(Forward {
                    original: Blob(self.original.bytes.clone()),
                    consent: consent.map(|c| Blob(c.bytes.clone())),
                }),
            };
            match Checked::new(forward) {
                Ok(forward) => {
                    let sent = SentCopy { recipient: *r, redacted: Vec::new(), policy: verdict.policy };
                    copies.push((forward, sent));
                }
                // Built here from a valid original: a failure is a bug, refused rather than sent.
                Err(e) => deny(&mut denied, r, "onward.invalid_forward", e.to_string(), verdict.policy),
            }
        }
        (copies, denied)
    }
}

/// Seals the copies decided for `packet` (each names the recipients that actually get the
/// packet) and works out the writes. With no copy, only the refusal is recorded.
pub fn seal(
    seal: &SealContext,
    packet: &Packet,
    copies: Vec<(Checked, SentCopy)>,
    denied: Vec<Refused>,
    now: Millis,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Result<Prepared, SealError> {
    let id = packet.envelope.id;
    let mut decisions = denied_decisions(&denied);
    let kind = packet.packet_type().as_str().to_owned();
    if copies.is_empty() {
        // Nothing is sent, but the refusal is on record, and in the sender's list.
        let mut ops = sent_record(packet, now, &decisions);
        ops.push(Op::Audit(AuditEvent::Submitted { packet_id: id, kind, decisions }));
        return Ok(Prepared::AllDenied { ops, denied });
    }
    let receiving: Vec<NodeId> = copies.iter().map(|(_, c)| c.recipient).collect();
    let expires = super::millis(packet.envelope.expires);
    let mut ops = Vec::new();
    let mut entries = Vec::new();
    let mut narrowed = Vec::with_capacity(copies.len());
    for (copy, sent) in copies {
        let copy = copy.for_recipients(&receiving)?;
        let signed = seal.sign_checked(&copy, sent.policy)?;
        let s = seal.encrypt_for(&signed, &sent.recipient, rng)?;
        let e = Entry {
            signed_digest: Some(Digest::of(&signed.bytes)),
            ..Outbox::new_entry(
                now,
                s.route.packet_id,
                s.route.recipient,
                s.route.priority,
                expires,
                Digest::of(&s.bytes),
            )
        };
        let key = pair_key(e.packet_id, &e.recipient);
        let mut rules: Vec<String> = sent.redacted.iter().map(|r| r.rule.clone()).collect();
        rules.dedup();
        decisions.push(Decided {
            to: sent.recipient,
            decision: if sent.redacted.is_empty() { DecisionKind::Allow } else { DecisionKind::Redact },
            rules,
            redacted: sent.redacted.iter().map(|r| r.path.clone()).collect(),
            policy: sent.policy,
            sealed: Some(e.sealed_digest),
            signed: e.signed_digest,
        });
        ops.push(Op::Put(Tree::Sent, key.clone(), signed.bytes));
        ops.push(Op::Put(Tree::Sealed, key, s.bytes));
        ops.extend(store::entry_write(&e));
        entries.push(e);
        narrowed.push((copy.into_packet(), sent));
    }
    ops.extend(sent_record(packet, now, &decisions));
    ops.push(Op::Audit(AuditEvent::Submitted { packet_id: id, kind, decisions }));
    let (packets, sent): (Vec<Packet>, Vec<SentCopy>) = narrowed.into_iter().unzip();
    let copies = packets.into_iter().zip(receiving).collect();
    Ok(Prepared::Copies(Submission { submitted: Submitted { id, sent, denied }, ops, entries, copies }))
}

/// The sent listing's record of an officer's packet (none for the packets nodes make).
fn sent_record(packet: &Packet, now: Millis, decisions: &[Decided]) -> Vec<Op> {
    if packet.packet_type().is_system() {
        return Vec::new();
    }
    let record = crate::catalogue::SentRecord::of(packet, now, decisions.to_vec());
    vec![store::put(Tree::Submissions, packet.envelope.id.as_bytes().to_vec(), &record)]
}

/// Refusals as audit decisions.
pub fn denied_decisions(denied: &[Refused]) -> Vec<Decided> {
    denied
        .iter()
        .map(|r| Decided {
            to: r.recipient,
            decision: DecisionKind::Deny,
            rules: vec![r.denial.rule.clone()],
            redacted: Vec::new(),
            policy: r.policy,
            sealed: None,
            signed: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::EntryState;
    use crate::markings::Priority;

    /// A consent goes only to a recipient that holds the packet: one sent ahead of it would be
    /// refused there, and lost.
    #[test]
    fn consent_goes_only_to_a_holder_whose_copy_is_delivered() {
        let mut e = Entry {
            packet_id: PacketId::from_bytes([1; 16]),
            recipient: "ES-UDYCO".parse().unwrap(),
            priority: Priority::Urgent,
            expires: 1_000,
            sealed_digest: Digest::of(b"x"),
            signed_digest: None,
            submitted: 0,
            attempts: 1,
            state: EntryState::Queued { not_before: 0 },
            reads: Vec::new(),
        };
        assert_eq!(consent_holder(None), Err(None));
        assert_eq!(consent_holder(Some(&e)), Err(Some("queued")));
        e.state = EntryState::Delivered { at: 5, digest: Digest::of(b"x"), receipted: Some(6) };
        assert_eq!(consent_holder(Some(&e)), Ok(Priority::Urgent));
    }
}
