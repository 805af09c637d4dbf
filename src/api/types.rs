//! The API's requests and answers, shared by the server ([`crate::api`]), the client
//! ([`crate::client`]), the CLI and the demo: one definition of every JSON document, so that
//! nobody builds or indexes JSON by hand and a field renamed on one side fails to compile on
//! the other. Ids, times, digests, priorities and packet types are the crate's own types; they
//! parse (and refuse) where the JSON is read.
//!
//! Times for people are RFC 3339 UTC (`Timestamp`); a node's internal clock is milliseconds.

use serde::{Deserialize, Serialize};

use crate::audit::Verified;
use crate::deadlines::{Deadline, Due, Role};
use crate::delivery::receiver::timestamp_of;
use crate::delivery::{Entry, EntryState, Millis};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;
use crate::packet::{Packet, PacketType, RejectionCode, RejectionKind};
use crate::policy::{Denial, Onward, Policy, Redacted, Rules};
use crate::store::InboxRecord;
use crate::timestamp::Timestamp;

pub use crate::delivery::submit::{Refused, SentCopy, Submitted};

/// Every error answer: what is wrong, the field if one is to blame, and for a submit that
/// nothing could be sent for (403), each recipient's refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong, for people.
    pub error: String,
    /// The field to blame (`envelope.recipients`, `officer`), if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Recipients refused by policy (403 on a submit, forward or consent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<Refused>,
}

/// `POST /v1/packets` (201): what was accepted, for whom, and the answer deadline it carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitAnswer {
    /// The packet id, the copies sealed and the recipients refused.
    #[serde(flatten)]
    pub submitted: Submitted,
    /// The recipients a copy was stored for.
    pub recipients: Vec<NodeId>,
    /// When an answer is due, for a request.
    #[serde(default)]
    pub due_by: Option<Timestamp>,
}

impl SubmitAnswer {
    /// The answer to a submit (forward and consent answer the same, without a deadline).
    pub fn new(submitted: Submitted, due_by: Option<Timestamp>) -> Self {
        let recipients = submitted.sent.iter().map(|c| c.recipient).collect();
        Self { submitted, recipients, due_by }
    }
}

/// A delivery state as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting to be sent (again).
    Queued,
    /// Written to the partner, no receipt yet.
    InFlight,
    /// A signed receipt says it was stored.
    Delivered,
    /// A signed receipt says a rule refused it.
    Rejected,
    /// Expired before a receipt came.
    Expired,
}

impl DeliveryState {
    /// The state of an outbox entry.
    pub fn of(state: &EntryState) -> Self {
        match state {
            EntryState::Queued { .. } => Self::Queued,
            EntryState::InFlight { .. } => Self::InFlight,
            EntryState::Delivered { .. } => Self::Delivered,
            EntryState::Rejected { .. } => Self::Rejected,
            EntryState::Expired { .. } => Self::Expired,
        }
    }

    /// Its name (`in_flight`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }
}

/// One officer's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadBy {
    /// Who.
    pub officer: OfficerId,
    /// When.
    pub at: Timestamp,
}

impl ReadBy {
    /// A stored list of acknowledgements, for the API.
    pub fn list(reads: &[(OfficerId, Millis)]) -> Vec<Self> {
        reads.iter().map(|(o, t)| Self { officer: o.clone(), at: timestamp_of(*t) }).collect()
    }
}

/// One recipient's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// The recipient.
    pub node: NodeId,
    /// Where the copy stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// When the receipt says it was stored.
    pub delivered_at: Option<Timestamp>,
    /// The digest the receipt names.
    pub digest: Option<Digest>,
    /// The rule that rejected it (`policy.receive.max_classification`, `expired`).
    pub code: Option<RejectionCode>,
    /// What kind of refusal that is (a policy rule, onward rules, time, integrity...).
    pub rejection: Option<RejectionKind>,
    /// Why it was rejected, for people: `code: reason`; for a copy still on its way, why it
    /// waits (the partner's disk is full, it cannot be reached...), if anything is known.
    pub reason: Option<String>,
    /// For a copy still on its way: what holds it up, if anything is known.
    #[serde(default)]
    pub waiting: Option<crate::delivery::Problem>,
    /// The first officer who acknowledged it.
    pub read_by: Option<OfficerId>,
    /// When they did.
    pub read_at: Option<Timestamp>,
    /// Every officer's acknowledgement, in order.
    #[serde(default)]
    pub reads: Vec<ReadBy>,
}

impl RecipientStatus {
    /// An outbox entry, for the API, with what holds its partner's copies up (shown only while
    /// the copy is on its way).
    pub fn waiting(e: &Entry, problem: Option<crate::delivery::Problem>) -> Self {
        let mut s = Self::of(e);
        if let (false, Some(p)) = (e.state.is_terminal(), problem) {
            s.waiting = Some(p);
            s.reason = Some(p.text(&e.recipient));
        }
        s
    }

    /// An outbox entry, for the API.
    pub fn of(e: &Entry) -> Self {
        let (delivered_at, digest, code, reason) = match &e.state {
            EntryState::Delivered { at, digest, .. } => (Some(timestamp_of(*at)), Some(*digest), None, None),
            EntryState::Rejected { code, reason, .. } => {
                (None, None, Some(code.clone()), Some(format!("{code}: {reason}")))
            }
            _ => (None, None, None, None),
        };
        Self {
            node: e.recipient,
            state: DeliveryState::of(&e.state),
            attempts: e.attempts,
            delivered_at,
            digest,
            rejection: code.as_ref().map(RejectionCode::kind),
            code,
            reason,
            waiting: None,
            read_by: e.reads.first().map(|(o, _)| o.clone()),
            read_at: e.reads.first().map(|(_, t)| timestamp_of(*t)),
            reads: ReadBy::list(&e.reads),
        }
    }
}

/// `GET /v1/packets/{id}`: a packet this node sent, per recipient, and the answers it awaits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketStatus {
    /// The packet.
    pub id: PacketId,
    /// Each recipient's copy.
    pub recipients: Vec<RecipientStatus>,
    /// Answers this node awaits for it.
    pub deadlines: Vec<DeadlineView>,
}

/// A deadline: where it stands now, and what moved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineView {
    /// The request.
    pub request: PacketId,
    /// Who owes the answer, or is owed it.
    pub counterpart: NodeId,
    /// Whether this node answers or awaits.
    pub role: Role,
    /// When the answer is due.
    pub due_by: Timestamp,
    /// Where it stands now.
    pub due: Due,
    /// The clarification request that paused it.
    pub paused_by: Option<PacketId>,
    /// The packet that answered it.
    pub answered_by: Option<PacketId>,
    /// Delay notices that moved it.
    #[serde(default)]
    pub delays: Vec<PacketId>,
    /// When the requester said it wanted the answer, where that differs.
    pub sender_due_by: Option<Timestamp>,
    /// The deadline that had already passed when a delay notice moved it: late, for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Timestamp>,
}

impl DeadlineView {
    /// A deadline as it stands at `now`.
    pub fn of(d: &Deadline, now: Millis) -> Self {
        Self {
            request: d.request,
            counterpart: d.counterpart,
            role: d.role,
            due_by: timestamp_of(d.due_by),
            due: d.due(now),
            paused_by: d.paused.map(|(_, c)| c),
            answered_by: d.answered.map(|(a, _)| a),
            delays: d.delays.clone(),
            sender_due_by: d.sender_due_by.map(timestamp_of),
            missed: d.missed.map(timestamp_of),
        }
    }
}

/// `GET /v1/deadlines`: open deadlines on both sides, soonest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlinesView {
    /// What this node must answer.
    pub answer: Vec<DeadlineView>,
    /// What this node awaits.
    #[serde(rename = "await")]
    pub awaiting: Vec<DeadlineView>,
}

/// `GET /v1/outbox`: how many copies wait (every one), and how many were delivered, rejected,
/// expired and first read since the node started (terminal copies are kept on disk, not
/// counted at each start). (A state missing from an answer counts none: older nodes left zeros
/// out.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxSummary {
    /// Waiting to be sent.
    pub queued: usize,
    /// Written, no receipt yet.
    pub in_flight: usize,
    /// Receipted as stored (since the node started).
    pub delivered: usize,
    /// Receipted as refused (since the node started).
    pub rejected: usize,
    /// Expired without a receipt (since the node started).
    pub expired: usize,
    /// Acknowledged by a first officer (since the node started).
    pub read: usize,
    /// The outbox is still being loaded after the start: the copies waiting are not all
    /// counted yet.
    pub loading: bool,
}

/// One packet in `GET /v1/inbox`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxItem {
    /// The packet.
    pub id: PacketId,
    /// Its sender.
    pub from: NodeId,
    /// Its type.
    #[serde(rename = "type")]
    pub packet_type: PacketType,
    /// Its priority.
    pub priority: Priority,
    /// When the sender wants an answer, for a request.
    pub sender_due_by: Option<Timestamp>,
    /// This node's deadline to answer it.
    pub deadline: Option<DeadlineView>,
    /// When it was stored.
    pub received_at: Timestamp,
    /// The first officer who acknowledged it.
    pub read_by: Option<OfficerId>,
    /// Every acknowledgement, in order.
    #[serde(default)]
    pub reads: Vec<ReadBy>,
    /// Other partners that sent a packet with the same id (suspicious).
    #[serde(default)]
    pub also_from: Vec<NodeId>,
    /// What a listing shows of its content (absent for system packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<Listing>,
}

/// What the inbox shows of a packet's content: the case, a line saying what it is about, and its
/// markings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// Its case reference.
    pub case_ref: Option<crate::ids::CaseRef>,
    /// One line saying what it is about.
    pub summary: String,
    /// Its classification.
    pub classification: crate::markings::Classification,
    /// Its TLP marking.
    pub tlp: Option<crate::markings::Tlp>,
    /// Its handling codes.
    pub handling: crate::markings::Handling,
    /// Its grading as a whole.
    pub grading: Option<crate::markings::Grading>,
    /// Its originator, where another node passed it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator: Option<NodeId>,
}

impl From<&crate::catalogue::Row> for Listing {
    fn from(r: &crate::catalogue::Row) -> Self {
        Self {
            case_ref: r.case_ref.clone(),
            summary: r.summary.clone(),
            classification: r.classification,
            tlp: r.tlp,
            handling: r.handling.clone(),
            grading: r.grading,
            originator: (r.originator != r.from).then_some(r.originator),
        }
    }
}

impl InboxItem {
    /// A stored record, with this node's deadline to answer it and other senders of its id.
    pub fn of(id: PacketId, rec: &InboxRecord, deadline: Option<DeadlineView>, also_from: Vec<NodeId>) -> Self {
        Self {
            id,
            from: rec.sender,
            packet_type: rec.packet_type,
            priority: rec.priority,
            sender_due_by: rec.due_by,
            deadline,
            received_at: timestamp_of(rec.received_at),
            read_by: rec.reads.first().map(|(o, _)| o.clone()),
            reads: ReadBy::list(&rec.reads),
            also_from,
            listing: None,
        }
    }
}

/// `GET /v1/inbox/{id}`: one received packet, verified again from the stored evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shown {
    /// The packet.
    pub packet: Packet,
    /// Its sender.
    pub from: NodeId,
    /// When it was stored.
    pub received_at: Timestamp,
    /// SHA-256 of the sealed bytes received.
    pub sealed_digest: Digest,
    /// The first officer who acknowledged it.
    pub read_by: Option<OfficerId>,
    /// Every acknowledgement, in order.
    #[serde(default)]
    pub reads: Vec<ReadBy>,
    /// Other partners that sent a packet with the same id (suspicious).
    #[serde(default)]
    pub also_from: Vec<NodeId>,
    /// The key that signed it (its originator's; verified again from the stored evidence).
    #[serde(default)]
    pub signer: Option<String>,
}

/// `POST /v1/inbox/{id}/ack`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The officer who read it: named only by a case-system client (`names_officers = true`);
    /// any other client acknowledges under its own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officer: Option<OfficerId>,
}

/// The answer to an acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckAnswer {
    /// The packet.
    pub id: PacketId,
    /// Always true: a refused acknowledgement is an error (409).
    pub acknowledged: bool,
    /// Who.
    pub officer: OfficerId,
}

/// `POST /v1/inbox/{id}/forward`: pass a received packet on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// To whom.
    pub to: Vec<NodeId>,
    /// The officer passing it on (named only by a case-system client, as for [`AckRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officer: Option<OfficerId>,
}

/// `POST /v1/packets/{id}/consent`: the originator's consent that a holder pass a packet on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// The partner holding the packet.
    pub holder: NodeId,
    /// Where it may pass it.
    pub allowed: Vec<NodeId>,
    /// Until when.
    pub until: Timestamp,
    /// The officer consenting (named only by a case-system client, as for [`AckRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officer: Option<OfficerId>,
}

/// What one recipient's policy would decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunDecision {
    /// Sent as it is.
    Allow,
    /// Sent with fields or entities removed.
    AllowWithRedactions,
    /// Not sent.
    Deny,
}

/// One recipient in a policy dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRun {
    /// The recipient.
    pub recipient: NodeId,
    /// The decision.
    pub decision: DryRunDecision,
    /// What would be removed.
    #[serde(default)]
    pub redacted: Vec<Redacted>,
    /// Why it would be refused.
    pub denied: Option<Denial>,
    /// The version hash of the policy applied (`None`: no policy with this partner).
    pub policy: Option<Digest>,
}

/// `POST /v1/policy/check`: what each recipient's policy would decide, nothing sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyCheck {
    /// The packet's type.
    pub packet_type: PacketType,
    /// Per recipient.
    pub recipients: Vec<DryRun>,
}

/// `GET /v1/policy/{partner}`: the policy in force with a partner, all of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// The partner.
    pub partner: NodeId,
    /// The agreement's name.
    pub title: Option<String>,
    /// What this node may send to it.
    pub send: Rules,
    /// What this node accepts from it.
    pub receive: Rules,
    /// Passing packets on.
    pub onward: Onward,
    /// Days packets from it are kept.
    pub retention_days: u32,
    /// Its announced keys: taken at once or by the administrator.
    #[serde(default)]
    pub keys: crate::policy::KeyRules,
    /// The policy's version hash.
    pub hash: Digest,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        Self {
            partner: p.partner,
            title: p.title.clone(),
            send: p.send.clone(),
            receive: p.receive.clone(),
            onward: p.onward,
            retention_days: p.retention_days,
            keys: p.keys,
            hash: p.hash,
        }
    }
}

/// Where a broken audit trail breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broken {
    /// The first entry that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// `GET /v1/audit/verify`: intact (what was covered) or broken (where).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {
    /// Whether the trail is intact.
    pub ok: bool,
    /// What an intact check covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Where a broken trail breaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<Broken>,
}

impl AuditVerify {
    /// The outcome of a verification.
    pub fn of(result: &Result<Verified, crate::audit::Broken>) -> Self {
        match result {
            Ok(v) => Self { ok: true, verified: Some(v.clone()), broken: None },
            Err(b) => Self { ok: false, verified: None, broken: Some(Broken { seq: b.seq, reason: b.reason.clone() }) },
        }
    }
}

/// One recipient's receipt for a packet this node sent (`GET /v1/packets/{id}/receipts`),
/// verified again from the store; all `None` while no receipt is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptView {
    /// The recipient.
    pub recipient: NodeId,
    /// The receipt's own id.
    pub receipt_id: Option<PacketId>,
    /// The key that signed it.
    pub signer: Option<String>,
    /// Whether its signature was verified now (a receipt that no longer verifies is an error,
    /// not `false`).
    pub verified: bool,
    /// When the recipient stored the copy.
    pub received_at: Option<Timestamp>,
    /// The digest of the sealed bytes it names.
    pub sealed_digest: Option<Digest>,
    /// Accepted, or the rule that rejected it.
    pub outcome: Option<crate::packet::ReceiptOutcome>,
}

/// A partner's announcement of its keys, in `peers show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnouncedView {
    /// The packet that carried it.
    pub packet_id: PacketId,
    /// When it was stored here.
    pub at: Timestamp,
    /// The generations announced (kids and window).
    pub keys: Vec<String>,
    /// Whether they are in the keyring (else: `liaison peers accept-keys`).
    pub accepted: bool,
    /// The TLS certificate it carried (a renewal to come), checked here: from the federation
    /// CA and naming the partner.
    #[serde(default)]
    pub certificate: Option<crate::pki::inspect::CertInfo>,
    /// Why the certificate it carried is not acceptable, if it is not.
    #[serde(default)]
    pub certificate_problem: Option<String>,
}

/// `POST /v1/peers`: a partner to enrol now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The partner.
    pub node: NodeId,
    /// Its QUIC address (`host:port`).
    pub addr: String,
    /// Its public key file (`NODE.pub.toml`), as text.
    pub public_keys: String,
    /// The sharing policy agreed with it (TOML text); without one nothing is exchanged.
    #[serde(default)]
    pub policy: Option<String>,
}

/// The answer to `POST /v1/peers` and `DELETE /v1/peers/{node}`: what changed, in words, and
/// the partner as it now is (none once removed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerChange {
    /// The partner.
    pub node: NodeId,
    /// What changed, as recorded in the audit trail.
    pub changes: Vec<String>,
    /// The partner now.
    pub peer: Option<PeerView>,
}

/// One partner in `GET /v1/peers`: the link, its last error in words, the partner's certificate
/// and keys, the policy in force, the copies waiting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// The partner.
    pub node: NodeId,
    /// Its QUIC address.
    pub addr: String,
    /// `connected` (a connection this node dialled is up) or `not connected` (nothing to send,
    /// or dialling fails: see `reason`).
    pub state: String,
    /// Since when connected.
    pub connected_since: Option<Timestamp>,
    /// The last time anything came from it (a connection, a receipt).
    pub last_contact: Option<Timestamp>,
    /// What holds its copies up now, in words (as its recipients' `status` says).
    pub reason: Option<String>,
    /// The same, as a code.
    pub problem: Option<crate::delivery::Problem>,
    /// The last failure of the link, in words with the error's detail, and when.
    pub last_error: Option<String>,
    /// When that was.
    pub last_error_at: Option<Timestamp>,
    /// Its TLS certificate, as presented at the last connection this node dialled.
    pub certificate: Option<crate::pki::inspect::CertInfo>,
    /// Days until that certificate expires.
    pub certificate_days_left: Option<i64>,
    /// Its signing key id (kid), from the keyring.
    pub signing_kid: Option<String>,
    /// Its encryption key id.
    pub encryption_kid: Option<String>,
    /// The sharing policy's version hash (`None`: no policy, nothing is exchanged).
    pub policy: Option<Digest>,
    /// The agreement's name.
    pub policy_title: Option<String>,
    /// Copies waiting to be sent to it.
    pub queued: usize,
    /// Copies sent, receipt awaited.
    pub in_flight: usize,
    /// The TLS key exchange this node's configuration allows with it (`X25519MLKEM768`, or
    /// either group with `[transport] key_exchange = "prefer_post_quantum"`): quinn does not
    /// report the group a handshake agreed on.
    pub key_exchange: String,
    /// Copies ready to send now, per lane (FLASH, URGENT, ROUTINE); those waiting out a
    /// backoff are counted in `queued` only.
    #[serde(default)]
    pub ready_by_lane: [usize; 3],
    /// Every generation of its keys in the keyring (kids and window), oldest first.
    #[serde(default)]
    pub key_generations: Vec<String>,
    /// Its latest announcement of its keys since this node started, if any.
    #[serde(default)]
    pub announced: Option<AnnouncedView>,
}

/// `GET /v1/audit/entries`: the entries of a time range, decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntries {
    /// Oldest first.
    pub entries: Vec<crate::audit::Entry>,
    /// More entries are in the range than were returned (narrow it).
    pub more: bool,
}

/// `POST /v1/users/{name}/reset`: the new password, or none to have one made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The new password (at least 12 characters).
    #[serde(default)]
    pub password: Option<String>,
}

/// `GET /v1/sent`: packets officers sent, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentList {
    /// The page.
    pub records: Vec<crate::catalogue::SentRecord>,
    /// How many there are in all.
    pub total: usize,
}

/// `GET /v1/sent/{id}`: a packet officers sent, as the sender follows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentView {
    /// What it is and each recipient's policy decision (allowed, fields removed, refused).
    pub record: crate::catalogue::SentRecord,
    /// Each recipient's delivery and reads; the answers awaited.
    pub status: PacketStatus,
    /// Each recipient's signed receipt, verified again.
    pub receipts: Vec<ReceiptView>,
    /// The packet as signed for the recipient whose copy lost least to redaction (absent when
    /// no copy was sent, or retention deleted them).
    pub packet: Option<Packet>,
}

/// `POST /v1/users/{name}/certificates`: a smart-card certificate added to an account, or removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateChange {
    /// The certificate's SHA-256 fingerprint (of its DER).
    pub fingerprint: Digest,
    /// Remove it instead of adding it.
    #[serde(default)]
    pub remove: bool,
}
