//! The compose forms: one per packet type an officer writes, described as fields whose names
//! are the packet's own field paths (`envelope.case_ref`, `body.Refusal.explanation`,
//! `body.InformationRequest.entities[0].person.family_name`), so that an error the packet model
//! names by its path lands on the field that caused it. [`build`] turns a submitted form into a
//! packet draft (JSON), checking each field as it goes: every field's problem is reported at
//! once, before the packet model checks the whole.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::packet::PacketType;

/// How a field is entered and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line of text.
    Text,
    /// Several lines of text.
    Long,
    /// One item per line (a list of texts).
    Lines,
    /// One of these values.
    Select(&'static [&'static str]),
    /// A date and time (`2026-12-01T10:00`, UTC).
    DateTime,
    /// A date (`2026-12-01`).
    Date,
    /// A whole number.
    Number,
}

/// One field of a form.
#[derive(Debug, Clone)]
pub struct Field {
    /// The packet field path it fills.
    pub path: String,
    /// What the officer reads.
    pub label: &'static str,
    /// How it is entered.
    pub kind: Kind,
    /// Whether it must be filled.
    pub required: bool,
}

/// A titled group of fields.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its title.
    pub title: String,
    /// Its fields.
    pub fields: Vec<Field>,
}

fn f(path: impl Into<String>, label: &'static str, kind: Kind, required: bool) -> Field {
    Field { path: path.into(), label, kind, required }
}

/// Packet types officers write, in the order the compose page offers them.
pub const WRITABLE: [PacketType; 8] = [
    PacketType::ControlledDeliveryAlert,
    PacketType::ControlledDeliveryDecision,
    PacketType::JitNotice,
    PacketType::InformationRequest,
    PacketType::InformationResponse,
    PacketType::Refusal,
    PacketType::DelayNotice,
    PacketType::ClarificationRequest,
];

const PRIORITY: &[&str] = &["ROUTINE", "URGENT", "FLASH"];
const URGENCY: &[&str] = &["", "threat_to_public_security", "threat_to_life", "liberty_decision", "loss_of_relevance"];
const CLASSIFICATION: &[&str] = &["UNCLASSIFIED", "BASIC_PROTECTION", "EU_RESTRICTED", "EU_CONFIDENTIAL"];
const TLP: &[&str] = &["", "CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"];
/// Europol's 4x4 grading.
pub const GRADING: &[&str] =
    &["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4", "C1", "C2", "C3", "C4", "X1", "X2", "X3", "X4"];
const OPT_GRADING: &[&str] =
    &["", "A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4", "C1", "C2", "C3", "C4", "X1", "X2", "X3", "X4"];
const LANGUAGES: &[&str] = &["en", "es", "it", "fr", "de", "pt", "nl", "pl", "ro", "el"];
const INTERCEPTION: &[&str] = &["not_allowed", "allowed", "only_if_control_lost"];
/// Entity kinds, as the packet names them.
pub const ENTITY_KINDS: &[&str] = &["person", "organisation", "vehicle", "document", "location", "phone", "account"];
/// Entity slots on a form.
pub const ENTITY_SLOTS: usize = 3;
/// Attachment slots on a response form.
pub const ATTACHMENT_SLOTS: usize = 3;

/// The envelope's fields (recipients are chosen apart, from the partners in scope).
pub fn envelope() -> Group {
    let e = |p: &str| format!("envelope.{p}");
    Group {
        title: "Envelope and markings".into(),
        fields: vec![
            f(e("case_ref"), "Case reference", Kind::Text, true),
            f(e("priority"), "Priority", Kind::Select(PRIORITY), true),
            f(e("urgency_reason"), "Why urgent (FLASH and URGENT)", Kind::Select(URGENCY), false),
            f(e("classification"), "Classification", Kind::Select(CLASSIFICATION), true),
            f(e("tlp"), "TLP", Kind::Select(TLP), false),
            f(e("handling.h3_text"), "H3 restriction (with H3)", Kind::Text, false),
            f(e("grading"), "Grading of the whole", Kind::Select(OPT_GRADING), false),
            f(e("legal_basis"), "Legal basis", Kind::Text, false),
            f(e("purpose"), "Purpose", Kind::Long, false),
            f(e("language"), "Language of the text", Kind::Select(LANGUAGES), true),
            f(e("expires"), "Expires (UTC; empty: in 180 days)", Kind::DateTime, false),
        ],
    }
}

fn contact(base: &str, title: &str) -> Group {
    let c = |p: &str| format!("{base}.{p}");
    Group {
        title: title.into(),
        fields: vec![
            f(c("name"), "Name and rank", Kind::Text, true),
            f(c("unit"), "Unit", Kind::Text, false),
            f(c("phone"), "Phone (+E.164)", Kind::Text, true),
            f(c("email"), "E-mail", Kind::Text, false),
        ],
    }
}

/// The body's groups for a packet type.
pub fn body(t: PacketType) -> Vec<Group> {
    let b = format!("body.{}", t.as_str());
    let p = |x: &str| format!("{b}.{x}");
    let one = |fields: Vec<Field>| vec![Group { title: "Content".into(), fields }];
    match t {
        PacketType::ControlledDeliveryAlert => {
            let mut groups = vec![
                Group {
                    title: "Consignment".into(),
                    fields: vec![
                        f(
                            p("consignment.goods"),
                            "Goods",
                            Kind::Select(&[
                                "narcotics",
                                "precursors",
                                "firearms",
                                "counterfeit",
                                "cash",
                                "protected_species",
                                "stolen_goods",
                                "other",
                            ]),
                            true,
                        ),
                        f(p("consignment.description"), "Description", Kind::Long, true),
                        f(p("consignment.quantity"), "Quantity", Kind::Number, true),
                        f(
                            p("consignment.unit"),
                            "Unit",
                            Kind::Select(&["kg", "g", "l", "ml", "items", "packages"]),
                            true,
                        ),
                        f(p("consignment.packaging"), "Packaging", Kind::Text, true),
                        f(
                            p("consignment.substitution"),
                            "Substituted",
                            Kind::Select(&["none", "partial", "full"]),
                            true,
                        ),
                    ],
                },
                Group {
                    title: "Transport".into(),
                    fields: vec![
                        f(
                            p("transport.means"),
                            "Means",
                            Kind::Select(&[
                                "road",
                                "rail",
                                "air",
                                "sea",
                                "inland_waterway",
                                "postal",
                                "express_courier",
                                "on_foot",
                            ]),
                            true,
                        ),
                        f(
                            p("transport.identifiers"),
                            "Identifiers (plates, container, B/L; one a line)",
                            Kind::Lines,
                            true,
                        ),
                        f(p("transport.description"), "Description", Kind::Long, false),
                        f(p("interception"), "Interception", Kind::Select(INTERCEPTION), true),
                    ],
                },
            ];
            for i in 0..3 {
                let l = |x: &str| p(&format!("route[{i}].{x}"));
                groups.push(Group {
                    title: format!("Route, leg {}", i + 1),
                    fields: vec![
                        f(l("from"), "From", Kind::Text, i == 0),
                        f(l("to"), "To", Kind::Text, i == 0),
                        f(l("crossing_point"), "Border crossing point", Kind::Text, false),
                        f(l("earliest"), "Earliest (UTC)", Kind::DateTime, i == 0),
                        f(l("latest"), "Latest (UTC)", Kind::DateTime, i == 0),
                        f(l("controlling_state"), "Controlling state (ES, IT...)", Kind::Text, i == 0),
                    ],
                });
            }
            groups.push(contact(&p("authorising_officer"), "Authorising officer"));
            groups.push(contact(&p("contact_point"), "24/7 contact point"));
            groups
        }
        PacketType::ControlledDeliveryDecision => {
            let mut groups = one(vec![
                f(p("decision"), "Decision", Kind::Select(&["authorised", "conditions", "declined"]), true),
                f(p("conditions"), "Conditions (one a line; with 'conditions')", Kind::Lines, false),
                f(p("valid_until"), "Valid until (UTC; not when declined)", Kind::DateTime, false),
                f(
                    p("interception"),
                    "Interception on our territory",
                    Kind::Select(&["", "not_allowed", "allowed", "only_if_control_lost"]),
                    false,
                ),
                f(p("remarks"), "Remarks", Kind::Long, false),
            ]);
            groups.push(contact(&p("authorising_authority"), "Authorising authority"));
            groups.push(contact(&p("contact_point"), "24/7 contact point"));
            groups
        }
        PacketType::JitNotice => {
            let mut groups = one(vec![
                f(p("name"), "Team name", Kind::Text, true),
                f(p("parties"), "Parties (ES, IT, EUROJUST, EUROPOL...; one a line)", Kind::Lines, true),
                f(p("start"), "Start", Kind::Date, true),
                f(p("end"), "End", Kind::Date, true),
                f(p("states_of_operation"), "States of operation (one a line)", Kind::Lines, true),
            ]);
            for i in 0..2 {
                let m = |x: &str| p(&format!("leaders[{i}].{x}"));
                groups.push(Group {
                    title: format!("Leader {}", i + 1),
                    fields: vec![
                        f(m("name"), "Name", Kind::Text, i == 0),
                        f(m("party"), "Party", Kind::Text, i == 0),
                        f(m("role"), "Role", Kind::Text, false),
                    ],
                });
            }
            groups.push(contact(&p("contacts[0]"), "Contact"));
            groups
        }
        PacketType::InformationRequest => one(vec![
            f(p("subject"), "Subject", Kind::Text, true),
            f(p("questions"), "Questions (one a line)", Kind::Lines, true),
            f(p("reasons"), "Reasons", Kind::Long, true),
            f(p("data_access"), "The data is", Kind::Select(&["direct", "indirect"]), true),
        ]),
        PacketType::InformationResponse => one(vec![f(p("summary"), "Answer", Kind::Long, true)]),
        PacketType::Refusal => one(vec![
            f(
                p("ground"),
                "Ground (Directive 2023/977 art. 6)",
                Kind::Select(&[
                    "not_available",
                    "requirements_not_met",
                    "judicial_authorisation_refused",
                    "national_security",
                    "jeopardises_investigation_or_safety",
                    "minor_offence",
                    "third_state_consent_missing",
                    "disproportionate",
                ]),
                true,
            ),
            f(p("explanation"), "Explanation", Kind::Long, true),
        ]),
        PacketType::DelayNotice => one(vec![
            f(p("reason"), "Why the answer is late", Kind::Long, true),
            f(p("new_due_by"), "New answer date (UTC)", Kind::DateTime, true),
        ]),
        PacketType::ClarificationRequest => {
            one(vec![f(p("questions"), "What needs clarifying (one a line)", Kind::Lines, true)])
        }
        _ => Vec::new(),
    }
}

/// Whether a type carries entities (entity slots on its form).
pub fn has_entities(t: PacketType) -> bool {
    matches!(t, PacketType::InformationRequest | PacketType::InformationResponse)
}

/// The fields of an entity of `kind` (besides its grading).
pub fn entity_fields(kind: &str) -> Vec<(&'static str, &'static str, Kind)> {
    match kind {
        "person" => vec![
            ("family_name", "Family name", Kind::Text),
            ("given_names", "Given names", Kind::Text),
            ("date_of_birth", "Date of birth", Kind::Date),
            ("nationalities", "Nationalities (ES, IT...; one a line)", Kind::Lines),
            ("role", "Role", Kind::Text),
        ],
        "organisation" => vec![("name", "Name", Kind::Text), ("country", "Country", Kind::Text)],
        "vehicle" => vec![
            (
                "kind",
                "Kind",
                Kind::Select(&[
                    "car",
                    "van",
                    "truck",
                    "trailer",
                    "motorcycle",
                    "bus",
                    "vessel",
                    "aircraft",
                    "container",
                ]),
            ),
            ("registration", "Registration", Kind::Text),
            ("registration_country", "Registration country", Kind::Text),
            ("vin", "VIN", Kind::Text),
        ],
        "document" => vec![
            (
                "kind",
                "Kind",
                Kind::Select(&["passport", "identity_card", "driving_licence", "residence_permit", "visa", "other"]),
            ),
            ("number", "Number", Kind::Text),
            ("issuing_country", "Issuing country", Kind::Text),
        ],
        "location" => vec![
            ("description", "Description", Kind::Text),
            ("address", "Address", Kind::Text),
            ("country", "Country", Kind::Text),
        ],
        "phone" => vec![("number", "Number (+E.164)", Kind::Text), ("imei", "IMEI", Kind::Text)],
        "account" => vec![
            ("scheme", "Scheme", Kind::Select(&["iban", "bank_account", "payment_service", "crypto_wallet"])),
            ("identifier", "Identifier (IBAN...)", Kind::Text),
            ("holder", "Holder", Kind::Text),
        ],
        _ => Vec::new(),
    }
}

/// A form as submitted: field name -> value (the last one of a name wins; checkboxes collect).
pub type Submitted = BTreeMap<String, Vec<String>>;

fn one_value<'a>(form: &'a Submitted, name: &str) -> &'a str {
    form.get(name).and_then(|v| v.last()).map_or("", |s| s.trim())
}

/// Problems found, by field path (`""`: the form as a whole).
pub type Problems = BTreeMap<String, String>;

/// The draft (JSON) a form describes, with each field read by its kind and every field's
/// problem at once. The originator is left to the caller: the signed-in officer and this node,
/// a form never names anyone else.
pub fn build(t: PacketType, form: &Submitted, recipients: &[String]) -> (Value, Problems) {
    let mut problems = Problems::new();
    let mut v = json!({"version": 1, "envelope": {"originator": {}}, "body": {t.as_str(): {}}});
    let mut groups = vec![envelope()];
    groups.extend(body(t));
    for g in &groups {
        for field in &g.fields {
            let raw = one_value(form, &field.path);
            if raw.is_empty() {
                if field.required && !optional_slot(&field.path, form) {
                    problems.insert(field.path.clone(), "required".into());
                }
                continue;
            }
            match read(field.kind, raw) {
                Ok(x) => set(&mut v, &field.path, x),
                Err(e) => {
                    problems.insert(field.path.clone(), e);
                }
            }
        }
    }
    // Handling codes: checkboxes.
    let codes: Vec<Value> = form.get("envelope.handling.codes").into_iter().flatten().map(|c| json!(c)).collect();
    if codes.is_empty() {
        problems.insert("envelope.handling".into(), "choose at least one handling code".into());
    }
    set(&mut v, "envelope.handling.codes", Value::Array(codes));
    if recipients.is_empty() {
        problems.insert("envelope.recipients".into(), "choose at least one recipient".into());
    }
    set(&mut v, "envelope.recipients", json!(recipients));
    for key in ["envelope.in_reply_to", "envelope.related[0]"] {
        let x = one_value(form, key);
        if !x.is_empty() {
            set(&mut v, key, json!(x));
        }
    }
    if one_value(form, "envelope.expires").is_empty() {
        let at = crate::timestamp::Timestamp::now().plus_secs(180 * 86_400);
        set(&mut v, "envelope.expires", json!(at.to_string()));
    }
    if has_entities(t) {
        entities(t, form, &mut v, &mut problems);
    }
    (v, problems)
}

/// A required field of a repeated group (a route leg, a leader) after the first is required only
/// if something else of its group is filled.
fn optional_slot(path: &str, form: &Submitted) -> bool {
    let Some(open) = path.rfind('[') else { return false };
    let Some(close) = path[open..].find(']') else { return false };
    let slot = &path[..open + close + 1];
    let index: usize = path[open + 1..open + close].parse().unwrap_or(0);
    index > 0 && !form.iter().any(|(k, v)| k.starts_with(slot) && v.iter().any(|x| !x.trim().is_empty()))
}

fn entities(t: PacketType, form: &Submitted, v: &mut Value, problems: &mut Problems) {
    let base = format!("body.{}.entities", t.as_str());
    let mut list = Vec::new();
    for i in 0..ENTITY_SLOTS {
        let slot = format!("{base}[{i}]");
        let kind = one_value(form, &format!("{slot}#kind"));
        if kind.is_empty() {
            continue;
        }
        // Errors name the entity by its place in the packet: filled slots only, in order.
        if !ENTITY_KINDS.contains(&kind) {
            problems.insert(format!("{slot}#kind"), "not an entity kind".into());
            continue;
        }
        let mut e = Map::new();
        let grading = one_value(form, &format!("{slot}#grading"));
        if grading.is_empty() {
            problems.insert(format!("{slot}#grading"), "required".into());
        } else {
            e.insert("grading".into(), json!(grading));
        }
        for (name, _, k) in entity_fields(kind) {
            let raw = one_value(form, &format!("{slot}.{kind}.{name}"));
            if raw.is_empty() {
                continue;
            }
            match read(k, raw) {
                Ok(x) => {
                    e.insert(name.into(), x);
                }
                Err(err) => {
                    problems.insert(format!("{slot}.{kind}.{name}"), err);
                }
            }
        }
        list.push(json!({kind: Value::Object(e)}));
    }
    if !list.is_empty() {
        set(v, &base, Value::Array(list));
    }
}

/// The form field an error of the packet model names (its path, with entity indexes mapped back
/// to the slots they came from).
pub fn field_of(t: PacketType, form: &Submitted, path: &str) -> String {
    let base = format!("body.{}.entities[", t.as_str());
    let Some(rest) = path.strip_prefix(&base) else { return path.to_owned() };
    let Some((n, tail)) = rest.split_once(']') else { return path.to_owned() };
    let Ok(n) = n.parse::<usize>() else { return path.to_owned() };
    let filled: Vec<usize> = (0..ENTITY_SLOTS)
        .filter(|i| !one_value(form, &format!("body.{}.entities[{i}]#kind", t.as_str())).is_empty())
        .collect();
    match filled.get(n) {
        Some(slot) if tail.ends_with(".grading") => format!("{base}{slot}]#grading"),
        Some(slot) => format!("{base}{slot}]{tail}"),
        None => path.to_owned(),
    }
}

fn read(kind: Kind, raw: &str) -> Result<Value, String> {
    match kind {
        Kind::Text | Kind::Long => Ok(json!(raw)),
        Kind::Lines => {
            let items: Vec<Value> = raw.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| json!(l)).collect();
            if items.is_empty() {
                Err("at least one line".into())
            } else {
                Ok(Value::Array(items))
            }
        }
        Kind::Select(options) => {
            if options.contains(&raw) {
                Ok(json!(raw))
            } else {
                Err(format!(
                    "choose one of {}",
                    options.iter().filter(|o| !o.is_empty()).copied().collect::<Vec<_>>().join(", ")
                ))
            }
        }
        Kind::Number => raw.parse::<u64>().map(|n| json!(n)).map_err(|_| "a whole number".into()),
        Kind::Date => {
            raw.parse::<crate::timestamp::Date>().map(|_| json!(raw)).map_err(|_| "a date: 2026-12-01".into())
        }
        Kind::DateTime => {
            // `datetime-local` sends 2026-12-01T10:00; the packet wants RFC 3339 (UTC).
            let full = match raw.len() {
                16 => format!("{raw}:00Z"),
                19 => format!("{raw}Z"),
                _ => raw.to_owned(),
            };
            full.parse::<crate::timestamp::Timestamp>()
                .map(|t| json!(t.to_string()))
                .map_err(|_| "a date and time, UTC: 2026-12-01T10:00".into())
        }
    }
}

/// Sets `path` (`a.b[2].c`) in `v`, making objects and arrays on the way.
pub fn set(v: &mut Value, path: &str, x: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else { return };
        let slot = obj.entry(name.to_owned()).or_insert(Value::Null);
        cur = match index {
            None => slot,
            Some(n) => {
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                let Some(arr) = slot.as_array_mut() else { return };
                while arr.len() <= n {
                    arr.push(Value::Null);
                }
                &mut arr[n]
            }
        };
        if last {
            *cur = x;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_build_nested_json_and_errors_map_back_to_slots() {
        let mut v = json!({});
        set(&mut v, "body.X.route[1].from", json!("Cartagena"));
        set(&mut v, "envelope.handling.codes", json!(["H0"]));
        assert_eq!(v["body"]["X"]["route"][1]["from"], "Cartagena");
        assert!(v["body"]["X"]["route"][0].is_null());
        let mut form = Submitted::new();
        form.insert("body.InformationRequest.entities[2]#kind".into(), vec!["phone".into()]);
        let t = PacketType::InformationRequest;
        assert_eq!(
            field_of(t, &form, "body.InformationRequest.entities[0].phone.number"),
            "body.InformationRequest.entities[2].phone.number"
        );
        assert_eq!(
            field_of(t, &form, "body.InformationRequest.entities[0].phone.grading"),
            "body.InformationRequest.entities[2]#grading"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut form = Submitted::new();
        form.insert("envelope.priority".into(), vec!["SOON".into()]);
        form.insert("envelope.expires".into(), vec!["tomorrow".into()]);
        let (_, problems) = build(PacketType::Refusal, &form, &[]);
        for field in [
            "envelope.case_ref",
            "envelope.priority",
            "envelope.classification",
            "envelope.expires",
            "envelope.handling",
            "envelope.recipients",
            "body.Refusal.ground",
            "body.Refusal.explanation",
        ] {
            assert!(problems.contains_key(field), "{field}: {problems:?}");
        }
    }
}
