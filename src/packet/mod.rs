//! Typed intelligence packets: the common envelope, the bodies, and their two faces.
//!
//! - The **JSON face** is what officers' case systems and the CLI write and read
//!   ([`Packet::from_json`], [`Packet::from_json_draft`], [`Packet::to_json`]).
//! - The **CBOR face** is what is signed and crosses a border ([`Packet::from_cbor`],
//!   [`Packet::to_cbor`]). Its schema is `schemas/packet.cddl`.
//!
//! Both faces come from the same serde types; the only differences are timestamps (RFC 3339 text
//! vs. CBOR epoch tag) and byte strings (base64 vs. CBOR bstr). Parsing either face runs
//! [`Packet::check`], so an invalid packet cannot be built from input: every error names the
//! field at fault (`envelope.recipients[1]`, `body.InformationResponse.entities[0].phone.number`).
//!
//! This module does no I/O and knows nothing of keys, QUIC or storage.

mod bodies;
mod check;
mod checked;
mod decision;
mod entity;

use std::collections::BTreeSet;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

pub use bodies::*;
pub use checked::Checked;
pub use decision::{ControlledDeliveryDecision, DeliveryDecision};
pub use entity::*;

use crate::encoding::{self, CborError};
use crate::ids::{CaseRef, Language, NodeId, OfficerId, PacketId};
use crate::markings::{Classification, Grading, Handling, Priority, Tlp, UrgencyReason};
use crate::timestamp::Timestamp;
use check::{opt_text, Check, LONG};

/// The packet format version this crate writes and reads.
pub const PACKET_VERSION: u8 = 1;

/// Largest encoded packet accepted (CBOR payload or JSON text). Bulk case files travel as
/// several packets or, later, as streamed attachments.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Largest ReadAck or OnwardConsent (its CBOR): they carry ids, an officer's name, a node list.
/// A node's own are well under 2 KiB; a bigger one is not one a node made.
pub const MAX_SMALL_SYSTEM_PACKET_BYTES: usize = 8 * 1024;

/// Most recipients one packet may name.
pub const MAX_RECIPIENTS: usize = 64;

/// Longest life of a packet: an undelivered packet older than this is stale intelligence.
pub const MAX_TTL_SECS: i64 = 366 * 24 * 3600;

/// Life of a system packet (receipt, read acknowledgement): 30 days.
pub const SYSTEM_TTL_SECS: i64 = 30 * 24 * 3600;

/// Answer deadline for an urgent request on directly accessible data: 8 hours.
pub const DUE_URGENT_DIRECT_SECS: i64 = 8 * 3600;
/// Answer deadline for an urgent request on indirectly accessible data: 3 days.
pub const DUE_URGENT_INDIRECT_SECS: i64 = 3 * 24 * 3600;
/// Answer deadline for any other request: 7 days.
pub const DUE_ROUTINE_SECS: i64 = 7 * 24 * 3600;

/// Why bytes or text are not a valid packet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacketError {
    /// The JSON is not a packet: syntax, a wrong type, an unknown field or value. `field` is the
    /// path of the value at fault (empty for the whole document).
    #[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Json {
        /// Path to the offending value, e.g. `envelope.priority`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The CBOR is not a packet (malformed, truncated, too deep, trailing bytes...).
    #[error("packet CBOR: {0}")]
    Cbor(#[from] CborError),
    /// The CBOR is well-formed but a value has the wrong type or is unknown; `field` is its path.
    #[error("packet CBOR: {field}: {reason}")]
    CborField {
        /// Path to the offending value.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The packet is well-formed but breaks a rule; `field` names the field at fault.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path to the offending field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl PacketError {
    /// The path of the field at fault, if the error concerns one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Json { field, .. } | Self::Invalid { field, .. } | Self::CborField { field, .. }
                if !field.is_empty() =>
            {
                Some(field)
            }
            _ => None,
        }
    }
}

/// An intelligence packet: envelope and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packet {
    /// Format version; always [`PACKET_VERSION`].
    pub version: u8,
    /// Who, to whom, when, how urgent, how sensitive, on what legal basis.
    pub envelope: Envelope,
    /// What the packet says; the variant is the packet type.
    pub body: Body,
}

/// The common envelope of every packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique packet id.
    pub id: PacketId,
    /// The originator's case reference (required except on system packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<CaseRef>,
    /// The packet this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<PacketId>,
    /// Other related packets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<PacketId>,
    /// Originating node and officer.
    pub originator: Originator,
    /// Receiving nodes (at least one; never the originator).
    pub recipients: Vec<NodeId>,
    /// When the packet was created.
    pub created: Timestamp,
    /// After this, the packet must not be delivered.
    pub expires: Timestamp,
    /// Delivery priority.
    pub priority: Priority,
    /// Why the matter is urgent; present exactly when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency_reason: Option<UrgencyReason>,
    /// When an answer is due; computed for information requests, absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_by: Option<Timestamp>,
    /// Security classification.
    pub classification: Classification,
    /// TLP marking, if the originator uses TLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlp: Option<Tlp>,
    /// Europol handling codes.
    pub handling: Handling,
    /// Europol 4x4 grading of the packet as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grading: Option<Grading>,
    /// Legal basis for the exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// Purpose for which the information is provided or requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Language of the free text.
    pub language: Language,
}

/// Who sent a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Originator {
    /// The originating node.
    pub node: NodeId,
    /// The officer who wrote it (absent on system packets, which the node itself issues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officer: Option<OfficerId>,
}

/// The body of a packet; the variant name is the packet type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Controlled delivery alert.
    ControlledDeliveryAlert(Box<ControlledDeliveryAlert>),
    /// A state's decision on a controlled delivery alert (a reply to it).
    ControlledDeliveryDecision(Box<ControlledDeliveryDecision>),
    /// Joint investigation team notice.
    JitNotice(Box<JitNotice>),
    /// Information request.
    InformationRequest(InformationRequest),
    /// Answer to an information request.
    InformationResponse(InformationResponse),
    /// Refusal of a request.
    Refusal(Refusal),
    /// Notice that an answer will be late.
    DelayNotice(DelayNotice),
    /// Request for clarification.
    ClarificationRequest(ClarificationRequest),
    /// Signed delivery receipt (system packet).
    DeliveryReceipt(DeliveryReceipt),
    /// An officer acknowledged a packet (system packet).
    ReadAck(ReadAck),
    /// The originator's consent to pass one of its packets on to further nodes.
    OnwardConsent(OnwardConsent),
    /// A packet of another originator passed on, with its originator's consent where needed.
    Forward(Forward),
    /// A node's keys, every generation in force or to come (system packet): how partners learn
    /// its next keys without a file copy (key rotation with overlap).
    KeyAnnouncement(KeyAnnouncement),
}

/// The type of a packet, without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketType {
    /// See [`Body::ControlledDeliveryAlert`].
    ControlledDeliveryAlert,
    /// See [`Body::JitNotice`].
    JitNotice,
    /// See [`Body::InformationRequest`].
    InformationRequest,
    /// See [`Body::InformationResponse`].
    InformationResponse,
    /// See [`Body::Refusal`].
    Refusal,
    /// See [`Body::DelayNotice`].
    DelayNotice,
    /// See [`Body::ClarificationRequest`].
    ClarificationRequest,
    /// See [`Body::DeliveryReceipt`].
    DeliveryReceipt,
    /// See [`Body::ReadAck`].
    ReadAck,
    /// See [`Body::OnwardConsent`].
    OnwardConsent,
    /// See [`Body::Forward`].
    Forward,
    /// See [`Body::KeyAnnouncement`].
    KeyAnnouncement,
    /// See [`Body::ControlledDeliveryDecision`].
    ControlledDeliveryDecision,
}

impl Serialize for PacketType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PacketType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for PacketType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown packet type {s:?}"))
    }
}

impl PacketType {
    /// Every packet type.
    pub const ALL: [PacketType; 13] = [
        Self::ControlledDeliveryAlert,
        Self::JitNotice,
        Self::InformationRequest,
        Self::InformationResponse,
        Self::Refusal,
        Self::DelayNotice,
        Self::ClarificationRequest,
        Self::DeliveryReceipt,
        Self::ReadAck,
        Self::OnwardConsent,
        Self::Forward,
        Self::KeyAnnouncement,
        Self::ControlledDeliveryDecision,
    ];

    /// The type's name as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlledDeliveryAlert => "ControlledDeliveryAlert",
            Self::JitNotice => "JitNotice",
            Self::InformationRequest => "InformationRequest",
            Self::InformationResponse => "InformationResponse",
            Self::Refusal => "Refusal",
            Self::DelayNotice => "DelayNotice",
            Self::ClarificationRequest => "ClarificationRequest",
            Self::DeliveryReceipt => "DeliveryReceipt",
            Self::ReadAck => "ReadAck",
            Self::OnwardConsent => "OnwardConsent",
            Self::Forward => "Forward",
            Self::KeyAnnouncement => "KeyAnnouncement",
            Self::ControlledDeliveryDecision => "ControlledDeliveryDecision",
        }
    }

    /// System packets are issued by nodes, not officers.
    pub fn is_system(self) -> bool {
        matches!(self, Self::DeliveryReceipt | Self::ReadAck | Self::KeyAnnouncement)
    }

    /// Replies must name the packet they answer in `in_reply_to`.
    pub fn is_reply(self) -> bool {
        matches!(
            self,
            Self::InformationResponse
                | Self::Refusal
                | Self::DelayNotice
                | Self::ClarificationRequest
                | Self::OnwardConsent
                | Self::ControlledDeliveryDecision
        ) || (self.is_system() && self != Self::KeyAnnouncement)
    }

    /// Types the sharing policies' `packet_types` do not govern: system packets (ids only),
    /// consents (ids only), and forwards (their content is checked as the packet they carry,
    /// under the `[onward]` rules).
    pub fn is_policy_exempt(self) -> bool {
        self.is_system() || matches!(self, Self::OnwardConsent | Self::Forward)
    }
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Body {
    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::ControlledDeliveryAlert(_) => PacketType::ControlledDeliveryAlert,
            Self::ControlledDeliveryDecision(_) => PacketType::ControlledDeliveryDecision,
            Self::JitNotice(_) => PacketType::JitNotice,
            Self::InformationRequest(_) => PacketType::InformationRequest,
            Self::InformationResponse(_) => PacketType::InformationResponse,
            Self::Refusal(_) => PacketType::Refusal,
            Self::DelayNotice(_) => PacketType::DelayNotice,
            Self::ClarificationRequest(_) => PacketType::ClarificationRequest,
            Self::DeliveryReceipt(_) => PacketType::DeliveryReceipt,
            Self::ReadAck(_) => PacketType::ReadAck,
            Self::OnwardConsent(_) => PacketType::OnwardConsent,
            Self::Forward(_) => PacketType::Forward,
            Self::KeyAnnouncement(_) => PacketType::KeyAnnouncement,
        }
    }
}

/// When the answer to an information request created at `created` is due (Directive (EU)
/// 2023/977 art. 5): 8 hours if urgent on directly accessible data, 3 days if urgent on
/// indirectly accessible data, 7 days otherwise.
pub fn answer_due(created: Timestamp, urgent: bool, access: DataAccess) -> Timestamp {
    let secs = match (urgent, access) {
        (true, DataAccess::Direct) => DUE_URGENT_DIRECT_SECS,
        (true, DataAccess::Indirect) => DUE_URGENT_INDIRECT_SECS,
        (false, _) => DUE_ROUTINE_SECS,
    };
    created.plus_secs(secs)
}

/// Moves every date and time in a packet's JSON face by the same amount: timestamps by `secs`,
/// calendar dates (`YYYY-MM-DD`, e.g. a JIT's start and end, a date of birth) by `secs` rounded to
/// whole days. Their order and the gaps between them stay, so a packet written on one day (the
/// examples in `schemas/examples/`) can be made current on any other without breaking a rule that
/// relates two of its times (`expires` after `created`, `due_by`, a route's time windows, a delay
/// notice's `new_due_by`). Every string that parses as a time is moved, wherever it is, so a new
/// field cannot be forgotten. Signed bytes inside (a `Forward`'s original) are left as they are.
pub fn shift_times(value: &mut serde_json::Value, secs: i64) -> Result<(), crate::timestamp::TimeError> {
    use crate::timestamp::Date;
    let days = (secs as f64 / 86_400.0).round() as i64;
    match value {
        serde_json::Value::String(s) => {
            if let Ok(t) = s.parse::<Timestamp>() {
                *s = t.shifted(secs)?.to_string();
            } else if let Ok(d) = s.parse::<Date>() {
                *s = d.shifted(days)?.to_string();
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                shift_times(v, secs)?;
            }
        }
        serde_json::Value::Object(fields) => {
            for v in fields.values_mut() {
                shift_times(v, secs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Packet {
    /// Parses the JSON face of a complete packet. Nothing is filled in.
    pub fn from_json(text: &str) -> Result<Self, PacketError> {
        if text.len() > MAX_PACKET_BYTES {
            return Err(PacketError::Json {
                field: String::new(),
                reason: format!("{} bytes exceed the limit of {MAX_PACKET_BYTES}", text.len()),
            });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let packet: Packet = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(|e| PacketError::Json { field: String::new(), reason: e.to_string() })?;
        packet.check()?;
        Ok(packet)
    }

    /// Parses a JSON draft as an officer or case system writes it: `version`, `envelope.id`,
    /// `envelope.created` and (for information requests) `envelope.due_by` may be left out and
    /// are filled in here. Everything else is as strict as [`Packet::from_json`].
    pub fn from_json_draft(
        text: &str,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, PacketError> {
        Self::draft(text, now, rng).map(Checked::into_packet)
    }

    /// [`Packet::from_json_draft`], keeping the proof that it was checked (for the send path,
    /// which then checks it no more).
    pub fn draft(text: &str, now: Timestamp, rng: &mut (impl RngCore + CryptoRng)) -> Result<Checked, PacketError> {
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| PacketError::Json { field: String::new(), reason: e.to_string() })?;
        let fill_due_by = {
            let Some(obj) = value.as_object_mut() else {
                return Err(PacketError::Json { field: String::new(), reason: "expected a JSON object".into() });
            };
            obj.entry("version").or_insert(PACKET_VERSION.into());
            let Some(env) = obj.get_mut("envelope").and_then(|e| e.as_object_mut()) else {
                return Err(PacketError::Json { field: "envelope".into(), reason: "missing or not an object".into() });
            };
            let id = PacketId::new_v7(now.unix().unsigned_abs() * 1000, rng);
            env.entry("id").or_insert(id.to_string().into());
            env.entry("created").or_insert(now.to_string().into());
            !env.contains_key("due_by")
        };
        let mut packet: Packet = serde_path_to_error::deserialize(&value).map_err(json_error)?;
        if fill_due_by {
            packet.envelope.due_by = packet.computed_due_by();
        }
        Checked::new(packet)
    }

    /// A signed receipt from `receiver` to `to` for a batch of copies `to` sent; `in_reply_to`
    /// names the first. `items` must not be empty (checked when sealed).
    pub fn delivery_receipt(
        receiver: &NodeId,
        to: &NodeId,
        priority: Priority,
        items: Vec<ReceiptItem>,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let about = items.first().map_or(PacketId::from_bytes([0; 16]), |i| i.packet_id);
        let body = Body::DeliveryReceipt(DeliveryReceipt { receiver: *receiver, receipts: items });
        Self::system(receiver, to, about, priority, body, now, rng)
    }

    /// An acknowledgement that `officer` at `node` read packet `about` from `to`.
    pub fn read_ack(
        node: &NodeId,
        to: &NodeId,
        about: PacketId,
        priority: Priority,
        officer: OfficerId,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let body = Body::ReadAck(ReadAck { packet_id: about, officer, read_at: now });
        Self::system(node, to, about, priority, body, now, rng)
    }

    /// The consent of `node` (the originator of `about`, sent to `holder`) that `holder` may
    /// pass `about` on to `allowed` until `until`, given by `officer`.
    #[allow(clippy::too_many_arguments)]
    pub fn onward_consent(
        node: &NodeId,
        holder: &NodeId,
        about: PacketId,
        priority: Priority,
        allowed: Vec<NodeId>,
        until: Timestamp,
        officer: OfficerId,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let body = Body::OnwardConsent(OnwardConsent { packet_id: about, allowed, until });
        let mut p = Self::system(node, holder, about, priority, body, now, rng);
        p.envelope.originator.officer = Some(officer);
        p.envelope.expires = until;
        p
    }

    /// `node`'s announcement of its keys, every generation `keys` lists, to partner `to`.
    pub fn key_announcement(
        node: &NodeId,
        to: &NodeId,
        keys: Vec<AnnouncedKeys>,
        certificate: Option<Vec<u8>>,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let body = Body::KeyAnnouncement(KeyAnnouncement { keys, certificate: certificate.map(crate::encoding::Blob) });
        let mut p = Self::system(node, to, PacketId::from_bytes([0; 16]), Priority::Urgent, body, now, rng);
        p.envelope.in_reply_to = None;
        p
    }

    fn system(
        from: &NodeId,
        to: &NodeId,
        about: PacketId,
        priority: Priority,
        body: Body,
        now: Timestamp,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        Self {
            version: PACKET_VERSION,
            envelope: Envelope {
                id: PacketId::new_v7(now.unix().unsigned_abs() * 1000, rng),
                case_ref: None,
                in_reply_to: Some(about),
                related: Vec::new(),
                originator: Originator { node: *from, officer: None },
                recipients: vec![*to],
                created: now,
                expires: now.plus_secs(SYSTEM_TTL_SECS),
                priority,
                urgency_reason: None,
                due_by: None,
                classification: Classification::Unclassified,
                tlp: None,
                handling: Handling { codes: [crate::markings::HandlingCode::H0].into(), h3_text: None },
                grading: None,
                legal_basis: None,
                purpose: None,
                language: Language::ENGLISH,
            },
            body,
        }
    }

    /// System packets and consents carry ids, an officer's name, node lists: nothing a sharing
    /// policy would weigh. So they have one fixed shape — UNCLASSIFIED, no TLP but CLEAR, H0
    /// alone, no grading, no free text (case reference, legal basis, purpose, H3 text), no
    /// related packets — and a ReadAck or consent is small. A packet of these types in any other
    /// shape was not made by a node: it is refused wherever it is read.
    fn check_system_shape(&self, c: &Check) -> Result<(), PacketError> {
        let e = &self.envelope;
        let kind = self.packet_type();
        let why = |what: &str| format!("a {kind} carries {what} (it holds ids only)");
        if e.classification != Classification::Unclassified {
            return Err(c.at("classification").invalid(why("no classification but UNCLASSIFIED")));
        }
        if e.tlp.is_some_and(|t| t != Tlp::Clear) {
            return Err(c.at("tlp").invalid(why("no TLP but CLEAR")));
        }
        if e.handling.codes.iter().ne([crate::markings::HandlingCode::H0].iter()) || e.handling.h3_text.is_some() {
            return Err(c.at("handling").invalid(why("handling code H0 alone")));
        }
        let free_text = [
            ("case_ref", e.case_ref.is_some()),
            ("legal_basis", e.legal_basis.is_some()),
            ("purpose", e.purpose.is_some()),
            ("grading", e.grading.is_some()),
            ("urgency_reason", e.urgency_reason.is_some()),
            ("related", !e.related.is_empty()),
        ];
        if let Some((field, _)) = free_text.iter().find(|(_, present)| *present) {
            return Err(c.at(field).invalid(why(&format!("no {field}"))));
        }
        if kind != PacketType::DeliveryReceipt {
            let size = encoding::cbor_len(self);
            if size > MAX_SMALL_SYSTEM_PACKET_BYTES {
                return Err(Check::root()
                    .at("body")
                    .invalid(format!("a {kind} of {size} bytes; at most {MAX_SMALL_SYSTEM_PACKET_BYTES}")));
            }
        }
        if let Body::ReadAck(a) = &self.body {
            if a.read_at > e.created {
                return Err(Check::root()
                    .at("body")
                    .at("ReadAck")
                    .at("read_at")
                    .invalid("after the acknowledgement was made"));
            }
        }
        Ok(())
    }

    /// The JSON face, pretty-printed.
    pub fn to_json(&self) -> String {
        // Serialising these types to JSON cannot fail: no non-string map keys, no failing Serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses the CBOR face: exactly one item, at most [`MAX_PACKET_BYTES`], no trailing bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, PacketError> {
        let packet: Packet = match encoding::from_cbor_exact(bytes, MAX_PACKET_BYTES) {
            Ok(p) => p,
            Err(CborError::Semantic(reason)) => return Err(locate_cbor_error(bytes, reason)),
            Err(e) => return Err(e.into()),
        };
        packet.check()?;
        Ok(packet)
    }

    /// The CBOR face.
    pub fn to_cbor(&self) -> Vec<u8> {
        encoding::to_cbor(self)
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        self.body.packet_type()
    }

    /// The deadline the rules give this packet: the answer deadline for an information request,
    /// none for anything else.
    pub fn computed_due_by(&self) -> Option<Timestamp> {
        match &self.body {
            Body::InformationRequest(r) => {
                Some(answer_due(self.envelope.created, self.envelope.urgency_reason.is_some(), r.data_access))
            }
            _ => None,
        }
    }

    /// Checks every rule that the types alone cannot express. Parsing runs it; sealing runs it
    /// again, so a packet built in code is held to the same rules as one parsed from input.
    pub fn check(&self) -> Result<(), PacketError> {
        let root = Check::root();
        if self.version != PACKET_VERSION {
            return Err(root.at("version").invalid(format!("unsupported version, expected {PACKET_VERSION}")));
        }
        let e = &self.envelope;
        let c = root.at("envelope");
        let kind = self.packet_type();

        if let Err(m) = e.handling.check() {
            return Err(c.at("handling").invalid(m.to_string()));
        }
        if e.recipients.is_empty() {
            return Err(c.at("recipients").invalid("must name at least one recipient"));
        }
        if e.recipients.len() > MAX_RECIPIENTS {
            return Err(c.at("recipients").invalid(format!("at most {MAX_RECIPIENTS} recipients")));
        }
        let mut seen = BTreeSet::new();
        for (i, r) in e.recipients.iter().enumerate() {
            if *r == e.originator.node {
                return Err(c.at("recipients").idx(i).invalid("the originator cannot be a recipient"));
            }
            if !seen.insert(r) {
                return Err(c.at("recipients").idx(i).invalid(format!("{r} is listed twice")));
            }
        }
        if e.expires <= e.created {
            return Err(c.at("expires").invalid("must be after created"));
        }
        if e.expires.unix() - e.created.unix() > MAX_TTL_SECS {
            return Err(c.at("expires").invalid("a packet may live at most 366 days"));
        }
        if e.urgency_reason.is_some() && e.priority == Priority::Routine {
            return Err(c.at("priority").invalid("an urgent packet (urgency_reason set) cannot be ROUTINE"));
        }
        if e.due_by != self.computed_due_by() {
            let reason = match self.computed_due_by() {
                Some(t) => format!("must be {t}: computed from created and urgency (8 h / 3 days / 7 days)"),
                None => format!("only information requests carry a deadline, not {kind}"),
            };
            return Err(c.at("due_by").invalid(reason));
        }
        if e.related.contains(&e.id) || e.in_reply_to == Some(e.id) {
            return Err(c.at("related").invalid("a packet cannot refer to itself"));
        }
        opt_text(&c.at("legal_basis"), &e.legal_basis, LONG)?;
        opt_text(&c.at("purpose"), &e.purpose, LONG)?;
        if !kind.is_system() {
            // A consent is about a packet, which carries the case reference.
            if e.case_ref.is_none() && kind != PacketType::OnwardConsent {
                return Err(c.at("case_ref").invalid(format!("required on a {kind}")));
            }
            if e.originator.officer.is_none() {
                return Err(c.at("originator").at("officer").invalid(format!("required on a {kind}")));
            }
        }
        let needs_basis = matches!(
            kind,
            PacketType::ControlledDeliveryAlert
                | PacketType::JitNotice
                | PacketType::InformationRequest
                | PacketType::InformationResponse
        );
        if needs_basis && e.legal_basis.is_none() {
            return Err(c.at("legal_basis").invalid(format!("required on a {kind}")));
        }
        if needs_basis && e.purpose.is_none() {
            return Err(c.at("purpose").invalid(format!("required on a {kind}")));
        }
        if kind.is_reply() && e.in_reply_to.is_none() {
            return Err(c.at("in_reply_to").invalid(format!("a {kind} must name the packet it answers")));
        }
        if kind.is_policy_exempt() && kind != PacketType::Forward {
            self.check_system_shape(&c)?;
        }

        let b = root.at("body").at(kind.as_str());
        match &self.body {
            Body::ControlledDeliveryAlert(x) => x.check(&b),
            Body::ControlledDeliveryDecision(x) => x.check(&b, e.created),
            Body::JitNotice(x) => x.check(&b),
            Body::InformationRequest(x) => x.check(&b),
            Body::InformationResponse(x) => x.check(&b),
            Body::Refusal(x) => x.check(&b),
            Body::DelayNotice(x) => {
                if x.new_due_by <= e.created {
                    return Err(b.at("new_due_by").invalid("must be after the notice was created"));
                }
                x.check(&b)
            }
            Body::ClarificationRequest(x) => x.check(&b),
            Body::DeliveryReceipt(x) => {
                if e.in_reply_to.is_none() || e.in_reply_to != x.receipts.first().map(|i| i.packet_id) {
                    return Err(c.at("in_reply_to").invalid("must equal the first receipted packet_id"));
                }
                if x.receiver != e.originator.node {
                    return Err(b.at("receiver").invalid("a receipt is issued by the receiving node itself"));
                }
                x.check(&b)
            }
            Body::ReadAck(x) => {
                if e.in_reply_to != Some(x.packet_id) {
                    return Err(c.at("in_reply_to").invalid("must equal the acknowledged packet_id"));
                }
                Ok(())
            }
            Body::OnwardConsent(x) => {
                if e.in_reply_to != Some(x.packet_id) {
                    return Err(c.at("in_reply_to").invalid("must equal the packet the consent is about"));
                }
                if x.until <= e.created {
                    return Err(b.at("until").invalid("must be after the consent was given"));
                }
                x.check(&b)
            }
            Body::Forward(x) => x.check(&b),
            Body::KeyAnnouncement(x) => {
                if e.in_reply_to.is_some() {
                    return Err(c.at("in_reply_to").invalid("a key announcement answers nothing"));
                }
                x.check(&b, &e.originator.node)
            }
        }
    }
}

/// ciborium offers no deserializer that `serde_path_to_error` can wrap, so a CBOR type error comes
/// without its path. On that (rare) path, find the field by mirroring the CBOR into the JSON face
/// (tag 1 -> RFC 3339, bytes -> base64) and parsing that: the same serde model fails at the same
/// field. If the mirror parses (the error was specific to the CBOR face), keep the plain message.
fn locate_cbor_error(bytes: &[u8], reason: String) -> PacketError {
    let mirrored =
        encoding::from_cbor_exact::<ciborium::Value>(bytes, MAX_PACKET_BYTES).ok().and_then(|v| cbor_to_json(&v));
    let field = mirrored
        .and_then(|json| serde_path_to_error::deserialize::<_, Packet>(&json).err())
        .map(|e| e.path().to_string())
        .filter(|p| p != ".");
    match field {
        Some(field) => PacketError::CborField { field, reason },
        None => PacketError::Cbor(CborError::Semantic(reason)),
    }
}

fn cbor_to_json(v: &ciborium::Value) -> Option<serde_json::Value> {
    use base64::Engine as _;
    use ciborium::Value as C;
    Some(match v {
        C::Integer(i) => {
            let i = i128::from(*i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(n), _) => n.into(),
                (_, Ok(n)) => n.into(),
                _ => serde_json::Value::String(i.to_string()),
            }
        }
        C::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        C::Text(t) => t.clone().into(),
        C::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        C::Bool(b) => (*b).into(),
        C::Null => serde_json::Value::Null,
        C::Tag(1, inner) => match inner.as_ref() {
            C::Integer(i) => Timestamp::from_unix(i64::try_from(i128::from(*i)).ok()?).ok()?.to_string().into(),
            other => cbor_to_json(other)?,
        },
        C::Tag(_, inner) => cbor_to_json(inner)?,
        C::Array(a) => a.iter().map(cbor_to_json).collect::<Option<Vec<_>>>()?.into(),
        C::Map(m) => m
            .iter()
            .map(|(k, v)| Some((k.as_text()?.to_owned(), cbor_to_json(v)?)))
            .collect::<Option<serde_json::Map<_, _>>>()?
            .into(),
        _ => return None,
    })
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> PacketError {
    let field = e.path().to_string();
    let field = if field == "." { String::new() } else { field };
    let inner = e.into_inner().to_string();
    // serde_json appends " at line L column C"; keep it, it helps an officer find the spot.
    PacketError::Json { field, reason: inner }
}

#[cfg(test)]
mod tests;
