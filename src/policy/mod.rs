//! Per-partner sharing policies, and the one function that applies them.
//!
//! Every bilateral agreement says what may be shared with whom. A node holds one [`Policy`] per
//! partner (a TOML file named from the node config), with two sets of [`Rules`]: `send` (what
//! this node may send to the partner) and `receive` (what it accepts from the partner). A
//! partner without a policy gets nothing and sends nothing.
//!
//! [`evaluate`] is the **only** code path that decides: the node calls it before sealing, for
//! each recipient separately ([`Direction::Send`]), and after opening, for each arriving packet
//! ([`Direction::Receive`]); the dry run (`liaison policy check`) calls it too. It walks every
//! nested entity wherever a body carries one (the walk matches every body variant explicitly, so
//! a new body with entities cannot be forgotten silently). Sending, a field the rules redact is
//! removed from the packet before it is signed, so it is absent from the bytes sent; receiving,
//! the same field's presence is a violation (the receiver cannot redact what the originator
//! signed, and will not store what it agreed not to receive).
//!
//! The policy's version hash ([`Policy::hash`], SHA-256 of its canonical form, so comments and
//! layout do not change it) travels in the signed packet's protected header and in receipts, so
//! both sides can prove which rules applied.
//!
//! This module never does I/O beyond reading a policy file, and never logs packet contents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::delivery::Millis;
use crate::encoding::Digest;
use crate::ids::NodeId;
use crate::markings::{Classification, HandlingCode, Tlp};
use crate::packet::{Body, Entity, Packet, PacketType, Person};

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid policy; every problem found is listed.
    #[error("policy {path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, each naming the key.
        problems: Vec<String>,
    },
}

/// Which way a packet goes, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// To the partner (egress): the `send` rules.
    Send,
    /// From the partner (ingress): the `receive` rules.
    Receive,
}

impl Direction {
    /// The policy section name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Receive => "receive",
        }
    }
}

/// The agreement with one partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The partner this policy is about.
    pub partner: NodeId,
    /// A label for people (the agreement's name).
    pub title: Option<String>,
    /// What this node may send to the partner.
    pub send: Rules,
    /// What this node accepts from the partner.
    pub receive: Rules,
    /// Passing packets on to third nodes.
    pub onward: Onward,
    /// How long packets received from the partner are kept, in days; then they are deleted
    /// (their audit entries, which hold no content, stay).
    pub retention_days: u32,
    /// What this node does with the partner's announced keys (`[keys]`, optional). Left out of
    /// the canonical form when it is the default, so that policies without it keep their hash.
    #[serde(skip_serializing_if = "KeyRules::is_default")]
    pub keys: KeyRules,
    /// SHA-256 of the canonical form (everything above, as JSON with sorted keys).
    #[serde(skip)]
    pub hash: Digest,
}

/// The onward-transmission rules with one partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Onward {
    /// What this node may do with packets this partner originated: pass them on to third nodes
    /// freely (H2 packets still need the originator's consent), only with the originator's
    /// signed consent, or never.
    pub from_partner: OnwardRule,
    /// Whether this node accepts packets this partner passes on from other originators.
    pub accept_forwarded: bool,
}

/// The partner's keys (`[keys]` in a policy file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRules {
    /// Whether keys the partner announces (a KeyAnnouncement signed with its key in force) are
    /// taken into the keyring at once; `false` (the default): they wait for this node's
    /// administrator (`liaison peers accept-keys`).
    #[serde(default)]
    pub accept_announced: bool,
}

impl KeyRules {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// May a packet be passed on?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnwardRule {
    /// Yes (H2 still needs consent).
    Free,
    /// Only with the originator's signed consent.
    Consent,
    /// No.
    Never,
}

/// The rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Packet types allowed. System packets (receipts, read acknowledgements) and consents are
    /// not listed: every partner exchanges them, in one fixed shape (ids only); the marking, size
    /// and (receiving) rate rules apply to them too.
    pub packet_types: BTreeSet<PacketType>,
    /// Highest classification allowed.
    pub max_classification: Classification,
    /// Highest TLP allowed (a packet without TLP passes this rule).
    pub max_tlp: Tlp,
    /// Handling codes allowed: every code on the packet must be listed.
    pub handling_codes: BTreeSet<HandlingCode>,
    /// Whether the envelope must carry a grading.
    pub require_grading: bool,
    /// Whether the envelope must name its legal basis.
    pub require_legal_basis: bool,
    /// Whether attachments (files) may be included.
    pub attachments: bool,
    /// Largest packet (its CBOR encoding), in bytes.
    pub max_packet_bytes: usize,
    /// Most packets per minute in this direction (0: none).
    pub max_packets_per_minute: u32,
    /// Per entity kind: fields removed when sending (refused when receiving); `*` = the whole
    /// entity.
    pub redact: BTreeMap<String, Redaction>,
}

/// What to take out of one kind of entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redaction {
    /// The whole entity (for example: no bank accounts at all).
    Entity,
    /// These optional fields.
    Fields(BTreeSet<String>),
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Allowed as it is.
    Allow,
    /// Allowed once the listed fields are removed (sending); the packet has been redacted.
    Redact(Vec<Redacted>),
    /// Refused.
    Deny(Denial),
}

/// One field or entity a send rule removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted {
    /// Where it was: `body.InformationResponse.entities[2].person.date_of_birth`.
    pub path: String,
    /// The rule: `send.redact.person`.
    pub rule: String,
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The rule, as its key in the policy file: `send.max_classification`, or `no_policy`.
    pub rule: String,
    /// Why, for people.
    pub reason: String,
}

impl Denial {
    fn new(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { rule: rule.into(), reason: reason.into() }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.reason)
    }
}

/// Fields a policy may redact, per entity kind: the optional ones. A required field can only go
/// with its entity (`*`).
pub const REDACTABLE: [(&str, &[&str]); 7] = [
    (
        "person",
        &["given_names", "aliases", "date_of_birth", "place_of_birth", "nationalities", "sex", "role", "biometrics"],
    ),
    ("organisation", &["country", "registration_number"]),
    ("vehicle", &["registration", "registration_country", "vin", "make", "model", "colour"]),
    ("document", &["expires_on"]),
    ("location", &["address", "country", "coordinates"]),
    ("phone", &["imei", "imsi"]),
    ("account", &["institution", "country", "holder"]),
];

/// Decides for (packet, partner, direction). Sending, redactions are applied to `packet`;
/// receiving, `packet` is left as it was unless the decision is a denial (what a denied
/// packet contains afterwards is unspecified: it is dropped).
pub fn evaluate(rules: &Rules, direction: Direction, packet: &mut Packet) -> Decision {
    evaluate_sized(rules, direction, packet, None)
}

/// [`evaluate`], given the size of `packet`'s CBOR face if the caller has it (encoded once for
/// signing): it is then not encoded again unless a redaction changed it.
pub fn evaluate_sized(rules: &Rules, direction: Direction, packet: &mut Packet, size: Option<usize>) -> Decision {
    let d = direction.as_str();
    let kind = packet.packet_type();
    if kind == PacketType::Forward {
        return Decision::Deny(Denial::new(
            "onward",
            "a forward is checked as the packet it carries, through forwarding, not as a packet of its own",
        ));
    }
    // No packet type is exempt. System packets and consents are not listed in `packet_types`
    // (every partner exchanges them; their shape is fixed by `Packet::check`: UNCLASSIFIED, H0,
    // no free text, small), but the marking and size rules below apply to them as to anything
    // else, and receiving, they count against the rate limit.
    if kind == PacketType::DeliveryReceipt && direction == Direction::Receive {
        return Decision::Deny(Denial::new(
            "receive.system",
            "a delivery receipt travels only as the answer on the lane that carried the copies, never as a packet",
        ));
    }
    let system = kind.is_policy_exempt();
    let env = &packet.envelope;
    if !system && !rules.packet_types.contains(&kind) {
        return Decision::Deny(Denial::new(format!("{d}.packet_types"), format!("{kind} is not allowed")));
    }
    if env.classification > rules.max_classification {
        return Decision::Deny(Denial::new(
            format!("{d}.max_classification"),
            format!("{} is above {}", marking_name(&env.classification), marking_name(&rules.max_classification)),
        ));
    }
    if let Some(tlp) = env.tlp {
        if tlp > rules.max_tlp {
            return Decision::Deny(Denial::new(
                format!("{d}.max_tlp"),
                format!("TLP:{} is above TLP:{}", marking_name(&tlp), marking_name(&rules.max_tlp)),
            ));
        }
    }
    // System packets carry H0 alone by their fixed shape; the handling codes a policy accepts
    // restrict the use of information, which they do not carry.
    if let Some(code) = env.handling.codes.iter().find(|c| !system && !rules.handling_codes.contains(c)) {
        return Decision::Deny(Denial::new(format!("{d}.handling_codes"), format!("{code:?} is not accepted")));
    }
    if rules.require_grading && env.grading.is_none() && !system {
        return Decision::Deny(Denial::new(format!("{d}.require_grading"), "the envelope carries no grading"));
    }
    if rules.require_legal_basis && env.legal_basis.is_none() && !system {
        return Decision::Deny(Denial::new(format!("{d}.require_legal_basis"), "the envelope names no legal basis"));
    }
    if !rules.attachments {
        if let Body::InformationResponse(r) = &packet.body {
            if !r.attachments.is_empty() {
                return Decision::Deny(Denial::new(
                    format!("{d}.attachments"),
                    format!("{} attachment(s); none are allowed", r.attachments.len()),
                ));
            }
        }
    }
    let redacted = redact(rules, direction, packet);
    if direction == Direction::Receive {
        if let Some(r) = redacted.first() {
            return Decision::Deny(Denial::new(
                format!("receive.redact.{}", r.rule.rsplit('.').next().unwrap_or_default()),
                format!("{} is present; this node does not receive it from this partner", r.path),
            ));
        }
    }
    let size = match size {
        Some(n) if redacted.is_empty() => n,
        _ => crate::encoding::cbor_len(packet),
    };
    if size > rules.max_packet_bytes {
        return Decision::Deny(Denial::new(
            format!("{d}.max_packet_bytes"),
            format!("{size} bytes is more than {}", rules.max_packet_bytes),
        ));
    }
    if redacted.is_empty() {
        return Decision::Allow;
    }
    // Safety net: whatever the redactions did, what is sealed must be a valid packet.
    if let Err(e) = packet.check() {
        return Decision::Deny(Denial::new(format!("{d}.redact"), format!("the redacted packet is not valid: {e}")));
    }
    Decision::Redact(redacted)
}

/// A marking as it is written in packets and policy files (`EU_RESTRICTED`, `AMBER+STRICT`).
pub fn marking_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Removes what `rules.redact` names from every entity of `packet`, wherever it sits; returns
/// what was removed.
fn redact(rules: &Rules, direction: Direction, packet: &mut Packet) -> Vec<Redacted> {
    let mut out = Vec::new();
    if rules.redact.is_empty() {
        return out;
    }
    let d = direction.as_str();
    // Every body variant is listed, so a new body must say whether it carries entities.
    let (entities, couriers, at): (Option<&mut Vec<Entity>>, Option<&mut Vec<Person>>, &str) = match &mut packet.body {
        Body::ControlledDeliveryAlert(a) => (None, Some(&mut a.couriers), "body.ControlledDeliveryAlert.couriers"),
        Body::InformationRequest(r) => (Some(&mut r.entities), None, "body.InformationRequest.entities"),
        Body::InformationResponse(r) => (Some(&mut r.entities), None, "body.InformationResponse.entities"),
        Body::JitNotice(_)
        | Body::ControlledDeliveryDecision(_)
        | Body::Refusal(_)
        | Body::DelayNotice(_)
        | Body::ClarificationRequest(_)
        | Body::DeliveryReceipt(_)
        | Body::ReadAck(_)
        | Body::OnwardConsent(_)
        | Body::KeyAnnouncement(_) => (None, None, ""),
        // A forward's entities are inside the originator's signed packet: the node evaluates
        // that packet itself (and cannot redact what another node signed).
        Body::Forward(_) => (None, None, ""),
    };
    if let Some(list) = entities {
        redact_list(
            list,
            rules,
            d,
            &mut out,
            |i, e| (format!("{at}[{i}].{}", e.kind()), e.kind()),
            clear,
            Entity::is_valid,
        );
    }
    if let Some(list) = couriers {
        redact_list(list, rules, d, &mut out, |i, _| (format!("{at}[{i}]"), "person"), clear_person, Person::is_valid);
    }
    out
}

/// Applies `rules.redact` to each item of `list`: `locate` gives an item's path and entity
/// kind, `clear` removes one named field, `valid` says whether what is left still stands on its
/// own (if not, the item goes as a whole, like one the rules remove entirely).
fn redact_list<T>(
    list: &mut Vec<T>,
    rules: &Rules,
    d: &str,
    out: &mut Vec<Redacted>,
    locate: impl Fn(usize, &T) -> (String, &'static str),
    clear: impl Fn(&mut T, &str) -> bool,
    valid: impl Fn(&T) -> bool,
) {
    let mut index = 0;
    list.retain_mut(|item| {
        let (path, kind) = locate(index, item);
        index += 1;
        let rule = format!("{d}.redact.{kind}");
        match rules.redact.get(kind) {
            None => true,
            Some(Redaction::Entity) => {
                out.push(Redacted { path, rule });
                false
            }
            Some(Redaction::Fields(fields)) => {
                for f in fields {
                    if clear(item, f) {
                        out.push(Redacted { path: format!("{path}.{f}"), rule: rule.clone() });
                    }
                }
                // What is left may no longer identify anything (a vehicle without registration,
                // VIN or make): then it goes as a whole.
                if valid(item) {
                    true
                } else {
                    out.push(Redacted { path, rule });
                    false
                }
            }
        }
    });
}

/// Clears one optional field; returns whether it held something.
fn clear(e: &mut Entity, field: &str) -> bool {
    fn take<T>(v: &mut Option<T>) -> bool {
        v.take().is_some()
    }
    match e {
        Entity::Person(p) => clear_person(p, field),
        Entity::Organisation(o) => match field {
            "country" => take(&mut o.country),
            "registration_number" => take(&mut o.registration_number),
            _ => false,
        },
        Entity::Vehicle(v) => match field {
            "registration" => take(&mut v.registration),
            "registration_country" => take(&mut v.registration_country),
            "vin" => take(&mut v.vin),
            "make" => take(&mut v.make),
            "model" => take(&mut v.model),
            "colour" => take(&mut v.colour),
            _ => false,
        },
        Entity::Document(d) => match field {
            "expires_on" => take(&mut d.expires_on),
            _ => false,
        },
        Entity::Location(l) => match field {
            "address" => take(&mut l.address),
            "country" => take(&mut l.country),
            "coordinates" => take(&mut l.coordinates),
            _ => false,
        },
        Entity::Phone(p) => match field {
            "imei" => take(&mut p.imei),
            "imsi" => take(&mut p.imsi),
            _ => false,
        },
        Entity::Account(a) => match field {
            "institution" => take(&mut a.institution),
            "country" => take(&mut a.country),
            "holder" => take(&mut a.holder),
            _ => false,
        },
    }
}

fn clear_person(p: &mut Person, field: &str) -> bool {
    fn take<T>(v: &mut Option<T>) -> bool {
        v.take().is_some()
    }
    fn drain<T>(v: &mut Vec<T>) -> bool {
        !std::mem::take(v).is_empty()
    }
    match field {
        "given_names" => take(&mut p.given_names),
        "aliases" => drain(&mut p.aliases),
        "date_of_birth" => take(&mut p.date_of_birth),
        "place_of_birth" => take(&mut p.place_of_birth),
        "nationalities" => drain(&mut p.nationalities),
        "sex" => take(&mut p.sex),
        "role" => take(&mut p.role),
        "biometrics" => drain(&mut p.biometrics),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Policy files

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    partner: String,
    #[serde(default)]
    title: Option<String>,
    retention_days: u32,
    send: RawRules,
    receive: RawRules,
    onward: Onward,
    #[serde(default)]
    keys: KeyRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    packet_types: Vec<String>,
    max_classification: Classification,
    max_tlp: Tlp,
    handling_codes: Vec<HandlingCode>,
    require_grading: bool,
    require_legal_basis: bool,
    attachments: bool,
    max_packet_bytes: usize,
    max_packets_per_minute: u32,
    #[serde(default)]
    redact: BTreeMap<String, Vec<String>>,
}

impl Policy {
    /// Loads a policy file; `partner`, when given, must be the partner the file names.
    pub fn load(path: &Path, partner: Option<&NodeId>) -> Result<Policy, PolicyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: p.clone(), source })?;
        Self::from_toml(&text, partner).map_err(|problems| PolicyError::Invalid { path: p, problems })
    }

    /// Parses a policy; every problem is reported, each naming its key.
    pub fn from_toml(text: &str, partner: Option<&NodeId>) -> Result<Policy, Vec<String>> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            // Every problem of the file's shape at once, each with its line.
            let all = crate::config::shape_problems::<RawPolicy>(text);
            if all.is_empty() {
                vec![crate::config::toml_problem(&e, text)]
            } else {
                all
            }
        })?;
        let mut problems = Vec::new();
        let node = raw.partner.parse::<NodeId>().map_err(|e| problems.push(format!("partner: {e}"))).ok();
        if let (Some(node), Some(expected)) = (&node, partner) {
            if node != expected {
                problems.push(format!("partner: the file is about {node}, but is configured for {expected}"));
            }
        }
        if raw.retention_days == 0 || raw.retention_days > 36_500 {
            problems.push("retention_days: must be 1 to 36500".into());
        }
        let send = rules(raw.send, "send", &mut problems);
        let receive = rules(raw.receive, "receive", &mut problems);
        let problems: Vec<String> = problems.into_iter().map(|p| crate::config::with_line(text, p)).collect();
        match (node, problems.is_empty()) {
            (Some(partner), true) => {
                let mut policy = Policy {
                    partner,
                    title: raw.title,
                    send,
                    receive,
                    onward: raw.onward,
                    retention_days: raw.retention_days,
                    keys: raw.keys,
                    hash: Digest([0; 32]),
                };
                let canonical = serde_json::to_vec(&policy).map_err(|e| vec![e.to_string()])?;
                policy.hash = Digest::of(&canonical);
                Ok(policy)
            }
            _ => Err(problems),
        }
    }

    /// The rules for `direction`.
    pub fn rules(&self, direction: Direction) -> &Rules {
        match direction {
            Direction::Send => &self.send,
            Direction::Receive => &self.receive,
        }
    }
}

fn rules(raw: RawRules, section: &str, problems: &mut Vec<String>) -> Rules {
    let mut packet_types = BTreeSet::new();
    for t in &raw.packet_types {
        match PacketType::ALL.iter().find(|k| k.as_str() == t) {
            Some(k) if k.is_policy_exempt() => problems.push(format!(
                "{section}.packet_types: {t} is not governed by packet_types (system packets and consents always pass; forwards follow [onward]); remove it"
            )),
            Some(k) => {
                packet_types.insert(*k);
            }
            None => problems.push(format!(
                "{section}.packet_types: unknown packet type {t:?} (known: {})",
                PacketType::ALL.iter().filter(|k| !k.is_policy_exempt()).map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    if raw.handling_codes.is_empty() {
        problems.push(format!("{section}.handling_codes: name at least one (every packet carries one)"));
    }
    if raw.max_packet_bytes == 0 || raw.max_packet_bytes > crate::packet::MAX_PACKET_BYTES {
        problems.push(format!(
            "{section}.max_packet_bytes: must be 1 to {} (the largest packet there is)",
            crate::packet::MAX_PACKET_BYTES
        ));
    }
    let mut redact = BTreeMap::new();
    for (kind, fields) in raw.redact {
        let Some((_, allowed)) = REDACTABLE.iter().find(|(k, _)| *k == kind) else {
            problems.push(format!(
                "{section}.redact.{kind}: unknown entity kind (known: {})",
                REDACTABLE.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        if fields.iter().any(|f| f == "*") {
            if fields.len() > 1 {
                problems.push(format!("{section}.redact.{kind}: \"*\" (the whole entity) stands alone"));
            }
            redact.insert(kind, Redaction::Entity);
            continue;
        }
        if fields.is_empty() {
            problems.push(format!("{section}.redact.{kind}: empty; name fields, or \"*\" for the whole entity"));
        }
        let mut set = BTreeSet::new();
        for f in fields {
            if allowed.contains(&f.as_str()) {
                set.insert(f);
            } else {
                problems.push(format!(
                    "{section}.redact.{kind}: {f:?} is not a redactable field (optional fields: {}; \"*\" removes the whole entity)",
                    allowed.join(", ")
                ));
            }
        }
        redact.insert(kind, Redaction::Fields(set));
    }
    Rules {
        packet_types,
        max_classification: raw.max_classification,
        max_tlp: raw.max_tlp,
        handling_codes: raw.handling_codes.into_iter().collect(),
        require_grading: raw.require_grading,
        require_legal_basis: raw.require_legal_basis,
        attachments: raw.attachments,
        max_packet_bytes: raw.max_packet_bytes,
        max_packets_per_minute: raw.max_packets_per_minute,
        redact,
    }
}

// ---------------------------------------------------------------------------------------------
// The node's policies

/// The policies of a node, one per partner, with the per-partner rate limits. Deny by default.
#[derive(Debug, Default)]
pub struct PolicyBook {
    policies: BTreeMap<NodeId, Policy>,
    buckets: Mutex<BTreeMap<(NodeId, &'static str), crate::limits::TokenBucket>>,
}

/// The decision of the book for one packet and one partner, with the policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What was decided.
    pub decision: Decision,
    /// The version hash of the policy applied (`None`: the partner has no policy).
    pub policy: Option<Digest>,
}

impl PolicyBook {
    /// A book with these policies.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        Self { policies: policies.into_iter().map(|p| (p.partner, p)).collect(), buckets: Mutex::default() }
    }

    /// The policy for `partner`.
    pub fn policy(&self, partner: &NodeId) -> Option<&Policy> {
        self.policies.get(partner)
    }

    /// The partners a policy is agreed with.
    pub fn partners(&self) -> impl Iterator<Item = &NodeId> {
        self.policies.keys()
    }

    /// Applies the policy for `partner` in `direction` to `packet` at time `now` (for the rate
    /// limit): [`evaluate`] plus the rate limit, or a denial if there is no policy.
    pub fn decide(&self, partner: &NodeId, direction: Direction, packet: &mut Packet, now: Millis) -> Verdict {
        self.decide_sized(partner, direction, packet, now, None)
    }

    /// [`PolicyBook::decide`], given the size of `packet`'s CBOR face (see [`evaluate_sized`]).
    pub fn decide_sized(
        &self,
        partner: &NodeId,
        direction: Direction,
        packet: &mut Packet,
        now: Millis,
        size: Option<usize>,
    ) -> Verdict {
        let mut verdict = self.dry_run_sized(partner, direction, packet, size);
        let Some(policy) = self.policies.get(partner) else { return verdict };
        // Receiving, every packet counts, system packets too (a partner's ReadAcks weigh like
        // its alerts). Sending, this node's own acknowledgements and consents do not: an officer's
        // acknowledgement must not be lost to the rate of alerts going the same way.
        let counted = direction == Direction::Receive || !packet.packet_type().is_policy_exempt();
        if !matches!(verdict.decision, Decision::Deny(_)) && counted {
            let rules = policy.rules(direction);
            let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let bucket = buckets
                .entry((*partner, direction.as_str()))
                .or_insert_with(|| crate::limits::TokenBucket::new(rules.max_packets_per_minute, now));
            if bucket.take(rules.max_packets_per_minute, now).is_some() {
                verdict.decision = Decision::Deny(Denial::new(
                    format!("{}.max_packets_per_minute", direction.as_str()),
                    format!("more than {} packets in a minute", rules.max_packets_per_minute),
                ));
            }
        }
        verdict
    }

    /// [`PolicyBook::decide`] without the rate limit and without counting: the dry run.
    pub fn dry_run(&self, partner: &NodeId, direction: Direction, packet: &mut Packet) -> Verdict {
        self.dry_run_sized(partner, direction, packet, None)
    }

    fn dry_run_sized(
        &self,
        partner: &NodeId,
        direction: Direction,
        packet: &mut Packet,
        size: Option<usize>,
    ) -> Verdict {
        let Some(policy) = self.policies.get(partner) else {
            return Verdict {
                decision: Decision::Deny(Denial::new(
                    "no_policy",
                    format!("no sharing policy with {partner}: nothing is exchanged with a partner without one"),
                )),
                policy: None,
            };
        };
        Verdict {
            decision: evaluate_sized(policy.rules(direction), direction, packet, size),
            policy: Some(policy.hash),
        }
    }
}

#[cfg(test)]
mod tests;
