//! Packet bodies: what each kind of packet says, beyond the common envelope.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::check::{non_empty, opt_text, text, texts, Check, LONG, SHORT};
use super::entity::{e164, Entity, Person};
use super::PacketError;
use crate::encoding::{Blob, Digest};
use crate::ids::{CountryCode, NodeId, OfficerId, PacketId};
use crate::timestamp::{Date, Timestamp};

/// Controlled delivery alert (1988 UN Convention art. 11, Schengen art. 73): a consignment is
/// travelling on under surveillance, and every state on its route must know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlledDeliveryAlert {
    /// What is travelling.
    pub consignment: Consignment,
    /// How it travels.
    pub transport: Transport,
    /// Couriers, if known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub couriers: Vec<Person>,
    /// The legs of the route, in order.
    pub route: Vec<RouteLeg>,
    /// Whether the consignment may be intercepted.
    pub interception: Interception,
    /// The officer or magistrate who authorised the controlled delivery.
    pub authorising_officer: Contact,
    /// The 24/7 contact point for this operation.
    pub contact_point: Contact,
}

/// The goods under surveillance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consignment {
    /// Category of goods.
    pub goods: GoodsKind,
    /// What exactly (e.g. "cocaine hydrochloride, ~85 % purity").
    pub description: String,
    /// Amount, in `unit`.
    pub quantity: u64,
    /// Unit of `quantity`.
    pub unit: QuantityUnit,
    /// Packaging (e.g. "40 bricks in banana boxes").
    pub packaging: String,
    /// Whether the illicit goods were replaced by a harmless substitute.
    pub substitution: Substitution,
}

/// Categories of goods in a controlled delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoodsKind {
    /// Narcotic drugs and psychotropic substances.
    Narcotics,
    /// Drug precursors.
    Precursors,
    /// Firearms, parts and ammunition.
    Firearms,
    /// Counterfeit goods or currency.
    Counterfeit,
    /// Cash.
    Cash,
    /// Protected species (CITES).
    ProtectedSpecies,
    /// Stolen goods.
    StolenGoods,
    /// Anything else (say what in the description).
    Other,
}

/// Units of quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantityUnit {
    /// Grams.
    G,
    /// Kilograms.
    Kg,
    /// Millilitres.
    Ml,
    /// Litres.
    L,
    /// Individual items (pills, weapons, banknotes).
    Items,
    /// Parcels, boxes, pallets.
    Packages,
}

/// Whether the goods were substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Substitution {
    /// The real goods travel.
    None,
    /// Part was replaced.
    Partial,
    /// All was replaced.
    Full,
}

/// Means of transport and its identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transport {
    /// Means of transport.
    pub means: TransportMeans,
    /// Plates, container numbers, flight numbers, airway bills, tracking numbers.
    pub identifiers: Vec<String>,
    /// Free description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Means of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportMeans {
    /// Road.
    Road,
    /// Rail.
    Rail,
    /// Air.
    Air,
    /// Sea.
    Sea,
    /// Inland waterway.
    InlandWaterway,
    /// Postal service.
    Postal,
    /// Express courier service.
    ExpressCourier,
    /// On foot.
    OnFoot,
}

/// One leg of the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLeg {
    /// Where the leg starts.
    pub from: String,
    /// Where the leg ends.
    pub to: String,
    /// Border crossing point at the end of the leg, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing_point: Option<String>,
    /// Earliest expected time on this leg.
    pub earliest: Timestamp,
    /// Latest expected time on this leg.
    pub latest: Timestamp,
    /// The state whose authorities control this leg.
    pub controlling_state: CountryCode,
}

/// Whether the consignment may be intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interception {
    /// Must not be intercepted.
    NotAllowed,
    /// May be intercepted at any time.
    Allowed,
    /// Only if surveillance is lost or life is in danger.
    OnlyIfControlLost,
}

/// A person to call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Name and rank.
    pub name: String,
    /// Unit or office.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Phone in E.164 form.
    pub phone: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Contact {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("name"), &self.name, SHORT)?;
        opt_text(&c.at("unit"), &self.unit, SHORT)?;
        e164(&c.at("phone"), &self.phone)?;
        if let Some(e) = &self.email {
            let ok = e.len() <= SHORT
                && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !e.chars().any(char::is_whitespace);
            if !ok {
                return Err(c.at("email").invalid("not an e-mail address"));
            }
        }
        Ok(())
    }
}

impl ControlledDeliveryAlert {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        let k = c.at("consignment");
        text(&k.at("description"), &self.consignment.description, LONG)?;
        text(&k.at("packaging"), &self.consignment.packaging, SHORT)?;
        if self.consignment.quantity == 0 {
            return Err(k.at("quantity").invalid("must be greater than zero"));
        }
        texts(&c.at("transport").at("identifiers"), &self.transport.identifiers, SHORT)?;
        opt_text(&c.at("transport").at("description"), &self.transport.description, LONG)?;
        for (i, p) in self.couriers.iter().enumerate() {
            p.check(&c.at("couriers").idx(i))?;
        }
        let r = c.at("route");
        non_empty(&r, &self.route)?;
        for (i, leg) in self.route.iter().enumerate() {
            let l = r.idx(i);
            text(&l.at("from"), &leg.from, SHORT)?;
            text(&l.at("to"), &leg.to, SHORT)?;
            opt_text(&l.at("crossing_point"), &leg.crossing_point, SHORT)?;
            if leg.latest < leg.earliest {
                return Err(l.at("latest").invalid("must not be before earliest"));
            }
        }
        self.authorising_officer.check(&c.at("authorising_officer"))?;
        self.contact_point.check(&c.at("contact_point"))
    }
}

/// Joint investigation team notice: who is in the team, on what basis, where and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitNotice {
    /// The team's name or operation name.
    pub name: String,
    /// Parties to the agreement (at least two).
    pub parties: Vec<JitParty>,
    /// First day of the team's mandate.
    pub start: Date,
    /// Last day of the original mandate.
    pub end: Date,
    /// Agreed extensions, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<JitExtension>,
    /// States where the team operates.
    pub states_of_operation: Vec<CountryCode>,
    /// Team leaders (at least one).
    pub leaders: Vec<JitMember>,
    /// Other members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<JitMember>,
    /// Contacts for the team.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
}

/// A party to a JIT agreement: a state, or a Union body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JitParty {
    /// A state, by ISO 3166 alpha-2 code.
    State(CountryCode),
    /// Eurojust.
    Eurojust,
    /// Europol.
    Europol,
    /// European Public Prosecutor's Office.
    Eppo,
    /// European Anti-Fraud Office.
    Olaf,
}

impl fmt::Display for JitParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::State(c) => c.as_str(),
            Self::Eurojust => "EUROJUST",
            Self::Europol => "EUROPOL",
            Self::Eppo => "EPPO",
            Self::Olaf => "OLAF",
        })
    }
}

impl FromStr for JitParty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "EUROJUST" => Self::Eurojust,
            "EUROPOL" => Self::Europol,
            "EPPO" => Self::Eppo,
            "OLAF" => Self::Olaf,
            _ => Self::State(s.parse().map_err(|_| {
                format!("invalid JIT party {s:?}: expected a country code or EUROJUST, EUROPOL, EPPO, OLAF")
            })?),
        })
    }
}

impl Serialize for JitParty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JitParty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An extension of a JIT's mandate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitExtension {
    /// New last day.
    pub until: Date,
    /// When the parties agreed it.
    pub agreed_on: Date,
}

/// A member of a JIT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitMember {
    /// Name and rank.
    pub name: String,
    /// The party the member belongs to.
    pub party: JitParty,
    /// Role in the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl JitNotice {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("name"), &self.name, SHORT)?;
        if self.parties.len() < 2 {
            return Err(c.at("parties").invalid("a JIT has at least two parties"));
        }
        if self.end < self.start {
            return Err(c.at("end").invalid("must not be before start"));
        }
        let mut last = self.end;
        for (i, x) in self.extensions.iter().enumerate() {
            if x.until <= last {
                return Err(c
                    .at("extensions")
                    .idx(i)
                    .at("until")
                    .invalid("each extension must end after the previous end"));
            }
            last = x.until;
        }
        non_empty(&c.at("states_of_operation"), &self.states_of_operation)?;
        non_empty(&c.at("leaders"), &self.leaders)?;
        for (list, name) in [(&self.leaders, "leaders"), (&self.members, "members")] {
            for (i, m) in list.iter().enumerate() {
                let mc = c.at(name).idx(i);
                text(&mc.at("name"), &m.name, SHORT)?;
                opt_text(&mc.at("role"), &m.role, SHORT)?;
                if !self.parties.contains(&m.party) {
                    return Err(mc.at("party").invalid(format!("{} is not a party to this JIT", m.party)));
                }
            }
        }
        for (i, k) in self.contacts.iter().enumerate() {
            k.check(&c.at("contacts").idx(i))?;
        }
        Ok(())
    }
}

/// Whether the requested data is directly accessible to the requested unit (Directive (EU)
/// 2023/977 art. 5: 8 hours for urgent direct, 3 days for urgent indirect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataAccess {
    /// Held in a database the requested unit can query itself.
    Direct,
    /// Must be obtained from another authority or a private party.
    Indirect,
}

/// An information request (Directive (EU) 2023/977 art. 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformationRequest {
    /// What the request is about, in one line.
    pub subject: String,
    /// The questions asked.
    pub questions: Vec<String>,
    /// Why the information is believed to be available to the requested state.
    pub reasons: String,
    /// Whether the requested data is directly accessible.
    pub data_access: DataAccess,
    /// Entities the request is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Entity>,
}

/// An answer to an information request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformationResponse {
    /// The answer in prose.
    pub summary: String,
    /// Entities found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Entity>,
    /// Photos, scans, spreadsheets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file carried inside a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// File name, without any directory.
    pub name: String,
    /// Media type, e.g. `image/jpeg`.
    pub media_type: String,
    /// SHA-256 of `content`.
    pub digest: Digest,
    /// The file's bytes.
    pub content: Blob,
}

fn check_entities(c: &Check, entities: &[Entity]) -> Result<(), PacketError> {
    for (i, e) in entities.iter().enumerate() {
        e.check(&c.idx(i))?;
    }
    Ok(())
}

impl InformationRequest {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("subject"), &self.subject, SHORT)?;
        texts(&c.at("questions"), &self.questions, LONG)?;
        text(&c.at("reasons"), &self.reasons, LONG)?;
        check_entities(&c.at("entities"), &self.entities)
    }
}

impl InformationResponse {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("summary"), &self.summary, LONG)?;
        check_entities(&c.at("entities"), &self.entities)?;
        for (i, a) in self.attachments.iter().enumerate() {
            let ac = c.at("attachments").idx(i);
            text(&ac.at("name"), &a.name, SHORT)?;
            if a.name.contains(['/', '\\']) || a.name == "." || a.name == ".." {
                return Err(ac.at("name").invalid("must be a bare file name"));
            }
            let mt_ok = a.media_type.split_once('/').is_some_and(|(t, s)| {
                !t.is_empty() && !s.is_empty() && a.media_type.bytes().all(|b| b.is_ascii_graphic())
            });
            if !mt_ok {
                return Err(ac.at("media_type").invalid("expected type/subtype, e.g. image/jpeg"));
            }
            if !Digest::of(&a.content.0).ct_eq(&a.digest) {
                return Err(ac.at("digest").invalid("does not match the SHA-256 of content"));
            }
        }
        Ok(())
    }
}

/// Grounds for refusing a request (Directive (EU) 2023/977 art. 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalGround {
    /// The information is not available to the requested unit.
    NotAvailable,
    /// The request does not meet the requirements of art. 4.
    RequirementsNotMet,
    /// A judicial authorisation required by national law was refused.
    JudicialAuthorisationRefused,
    /// Providing it would harm essential national security interests.
    NationalSecurity,
    /// It would jeopardise an ongoing investigation or a person's safety.
    JeopardisesInvestigationOrSafety,
    /// The request concerns an offence punishable by one year or less.
    MinorOffence,
    /// The information was obtained from another state and it has not consented.
    ThirdStateConsentMissing,
    /// The request is manifestly disproportionate or irrelevant.
    Disproportionate,
}

/// A refusal to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The legal ground.
    pub ground: RefusalGround,
    /// Explanation for the requesting unit.
    pub explanation: String,
}

/// Notice that an answer will be late.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayNotice {
    /// Why.
    pub reason: String,
    /// When the answer is now expected.
    pub new_due_by: Timestamp,
}

/// A request for clarification of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClarificationRequest {
    /// What needs clarifying.
    pub questions: Vec<String>,
}

/// Signed proof that a node received (and stored) or rejected packets.
///
/// A receiver signs one receipt for every batch of copies it committed together (one flush), so
/// a busy link costs one signature per batch instead of one per packet; each item is still a
/// complete statement about one packet copy, and the receipt as a whole is the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReceipt {
    /// The receiving node.
    pub receiver: NodeId,
    /// One item per packet copy, at most [`MAX_RECEIPT_ITEMS`].
    pub receipts: Vec<ReceiptItem>,
}

/// Most items in one [`DeliveryReceipt`].
pub const MAX_RECEIPT_ITEMS: usize = 1024;

/// What a receiver says about one packet copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptItem {
    /// The packet this item is about.
    pub packet_id: PacketId,
    /// When it was received (stored, for an accepted packet).
    pub received_at: Timestamp,
    /// SHA-256 of the exact sealed bytes received.
    pub sealed_digest: Digest,
    /// SHA-256 of the signed packet (the COSE_Sign1) those sealed bytes carried, for an accepted
    /// copy: with the signed packet, the receipt proves what was delivered once the sender has
    /// deleted the sealed copy. Absent where the copy could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_digest: Option<Digest>,
    /// Accepted, or rejected with the rule that rejected it.
    pub outcome: ReceiptOutcome,
    /// The version hash of the receiver's sharing policy for the sender, which this copy was
    /// checked against (absent if the copy failed before the policy check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Digest>,
}

/// What the receiver did with a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// Verified, decrypted, stored.
    Accepted,
    /// Refused.
    Rejected {
        /// Machine-readable rule or error code, e.g. `signature_invalid`.
        code: RejectionCode,
        /// Human-readable reason.
        reason: String,
    },
}

/// A receiver's machine-readable reason for refusing a copy, as signed in its receipt:
/// `policy.<rule>` (a rule of its sharing policy), `onward.<rule>`, `system.<what>`, or what
/// opening the copy found (`signature_invalid`, `expired`...). Kept exactly as the partner
/// signed it: a partner running a newer version may send a code this one does not know, which
/// is then of [`RejectionKind::Unknown`], never an error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RejectionCode(String);

/// What kind of refusal a [`RejectionCode`] is: what the sender's officer can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    /// A rule of the receiver's sharing policy: the packet was sound, the agreement says no.
    Policy,
    /// A rule of onward transmission: consent missing or not covering the hop, already a
    /// recipient, the original's markings differ.
    Onward,
    /// Out of time: the packet (or the original it carries) expired on the way, or is dated
    /// ahead of the receiver's clock.
    Time,
    /// About something the receiver does not hold or has already recorded (a ReadAck, a consent).
    System,
    /// The bytes: malformed, not for the receiver, unknown key, bad signature, failed
    /// decryption, non-canonical encoding. Between honest nodes that agree on keys: never.
    Integrity,
    /// A code this version does not know.
    Unknown,
}

impl RejectionCode {
    /// A code (as the receiver machine, a policy denial or an open error names it).
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }

    /// The code as signed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What kind of refusal it is.
    pub fn kind(&self) -> RejectionKind {
        let c = self.0.as_str();
        match c {
            "expired" | "created_in_future" | "onward.original_expired" | "onward.original_created_in_future" => {
                RejectionKind::Time
            }
            _ if c.starts_with("policy.") => RejectionKind::Policy,
            _ if c.starts_with("onward.") => RejectionKind::Onward,
            _ if c.starts_with("system.") => RejectionKind::System,
            "too_large" | "malformed" | "trailing_bytes" | "unsupported" | "not_for_me" | "unknown_key"
            | "key_not_yet_known" | "decryption_failed" | "signature_invalid" | "invalid_packet"
            | "cose_unknown_crit" | "header_mismatch" => RejectionKind::Integrity,
            _ if c.starts_with("cbor_") => RejectionKind::Integrity,
            _ => RejectionKind::Unknown,
        }
    }
}

impl std::fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for RejectionCode {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for RejectionCode {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl From<&str> for RejectionCode {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for RejectionCode {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The originator's signed consent that one of its packets may be passed on to further nodes
/// (Europol handling code H2: "not to be disseminated without the provider's permission").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnwardConsent {
    /// The packet (originated by the consenting node).
    pub packet_id: PacketId,
    /// The nodes it may now be passed on to, by whoever holds it.
    pub allowed: Vec<NodeId>,
    /// Until when the consent holds.
    pub until: Timestamp,
}

impl OnwardConsent {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        if self.allowed.is_empty() || self.allowed.len() > 64 {
            return Err(c.at("allowed").invalid("must name 1 to 64 nodes"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.allowed.iter().find(|n| !seen.insert(*n)) {
            return Err(c.at("allowed").invalid(format!("{dup} is listed twice")));
        }
        Ok(())
    }
}

/// A packet of another originator, passed on by this node: the original exactly as its
/// originator signed it, and the originator's signed consent when one is needed. The receiver
/// verifies both signatures against the originator's key, so the forwarder can neither change
/// the packet nor invent the consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The original packet's COSE_Sign1, tagged, as received.
    pub original: Blob,
    /// The originator's signed `OnwardConsent` (COSE_Sign1), if the packet needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Blob>,
}

impl Forward {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        if self.original.0.is_empty() {
            return Err(c.at("original").invalid("must not be empty"));
        }
        Ok(())
    }
}

/// A node's keys (system packet), every generation in force or to come, oldest first: signed
/// with its key in force, so a partner that trusts that key learns the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAnnouncement {
    /// The generations, oldest first (1 to [`KeyAnnouncement::MAX_GENERATIONS`]).
    pub keys: Vec<AnnouncedKeys>,
    /// The node's TLS certificate (DER) as of the announcement: partners are told of a renewal
    /// (`peers show`, their log), checked against their CA (at most
    /// [`KeyAnnouncement::MAX_CERTIFICATE`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Blob>,
}

/// One generation of keys in a [`KeyAnnouncement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnouncedKeys {
    /// Ed25519 verifying key (32 bytes).
    pub signing_key: Blob,
    /// X25519 public key (32 bytes).
    pub encryption_key: Blob,
    /// In force from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Timestamp>,
    /// Accepted on live traffic until.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
}

impl KeyAnnouncement {
    /// Most generations one announcement lists.
    pub const MAX_GENERATIONS: usize = 8;
    /// Largest certificate it carries, in bytes.
    pub const MAX_CERTIFICATE: usize = 4096;

    /// The generations as public keys of `node`.
    pub fn public_keys(&self, node: &NodeId) -> Result<Vec<crate::keys::PublicKeys>, String> {
        self.keys
            .iter()
            .map(|k| {
                let s: [u8; 32] =
                    k.signing_key.0.as_slice().try_into().map_err(|_| "signing_key: 32 bytes".to_owned())?;
                let e: [u8; 32] =
                    k.encryption_key.0.as_slice().try_into().map_err(|_| "encryption_key: 32 bytes".to_owned())?;
                Ok(crate::keys::PublicKeys::from_raw(*node, s, e)?.with_window(k.valid_from, k.valid_until))
            })
            .collect()
    }

    pub(crate) fn check(&self, c: &Check, node: &NodeId) -> Result<(), PacketError> {
        if self.certificate.as_ref().is_some_and(|c| c.0.is_empty() || c.0.len() > Self::MAX_CERTIFICATE) {
            return Err(c.at("certificate").invalid(format!("1 to {} bytes", Self::MAX_CERTIFICATE)));
        }
        if self.keys.is_empty() || self.keys.len() > Self::MAX_GENERATIONS {
            return Err(c.at("keys").invalid(format!("1 to {} generations", Self::MAX_GENERATIONS)));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if let (Some(f), Some(u)) = (k.valid_from, k.valid_until) {
                if u <= f {
                    return Err(c.at("keys").at(&i.to_string()).at("valid_until").invalid("must be after valid_from"));
                }
            }
        }
        self.public_keys(node).map(|_| ()).map_err(|e| c.at("keys").invalid(e))
    }
}

impl AnnouncedKeys {
    /// One generation of public keys, as announced.
    pub fn of(k: &crate::keys::PublicKeys) -> Self {
        Self {
            signing_key: Blob(k.signing.as_bytes().to_vec()),
            encryption_key: Blob(k.encryption.as_bytes().to_vec()),
            valid_from: k.valid_from,
            valid_until: k.valid_until,
        }
    }
}

/// An officer at the receiving node has read the packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadAck {
    /// The packet read.
    pub packet_id: PacketId,
    /// Who read it.
    pub officer: OfficerId,
    /// When.
    pub read_at: Timestamp,
}

impl Refusal {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("explanation"), &self.explanation, LONG)
    }
}

impl DelayNotice {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        text(&c.at("reason"), &self.reason, LONG)
    }
}

impl ClarificationRequest {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        texts(&c.at("questions"), &self.questions, LONG)
    }
}

impl DeliveryReceipt {
    pub(crate) fn check(&self, c: &Check) -> Result<(), PacketError> {
        let items = c.at("receipts");
        if self.receipts.is_empty() || self.receipts.len() > MAX_RECEIPT_ITEMS {
            return Err(items.invalid(format!("must hold 1 to {MAX_RECEIPT_ITEMS} items")));
        }
        for (i, item) in self.receipts.iter().enumerate() {
            if let ReceiptOutcome::Rejected { code, reason } = &item.outcome {
                let rc = items.idx(i).at("outcome").at("rejected");
                text(&rc.at("code"), code.as_str(), SHORT)?;
                text(&rc.at("reason"), reason, LONG)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes keep their wire form (a plain string, signed by the receiver) and say what kind
    /// of refusal they are; a code from a newer version is unknown, not an error.
    #[test]
    fn rejection_codes_are_strings_on_the_wire_and_kinds_here() {
        let kinds = [
            ("policy.receive.max_classification", RejectionKind::Policy),
            ("policy.onward.accept_forwarded", RejectionKind::Policy),
            ("onward.consent_required", RejectionKind::Onward),
            ("onward.original_expired", RejectionKind::Time),
            ("expired", RejectionKind::Time),
            ("system.unknown_packet", RejectionKind::System),
            ("signature_invalid", RejectionKind::Integrity),
            ("cbor_duplicate_key", RejectionKind::Integrity),
            ("quota.exceeded", RejectionKind::Unknown),
        ];
        for (code, kind) in kinds {
            assert_eq!(RejectionCode::new(code).kind(), kind, "{code}");
        }
        let outcome = ReceiptOutcome::Rejected { code: "expired".into(), reason: "late".into() };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["rejected"]["code"], "expired");
        let back: ReceiptOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, outcome);
    }
}
