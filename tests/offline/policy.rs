//! Property: for random packets and random policies, nothing the policy forbids reaches the
//! partner, and every redacted field is absent from the bytes the partner receives (the signed
//! payload it decrypts), not only from the displayed packet.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use liaison::markings::{Classification, HandlingCode, Tlp};
use liaison::packet::{Packet, PacketType};
use liaison::policy::{evaluate, Decision, Direction, Redaction, Rules, REDACTABLE};

fn subset<T: Clone + Ord + std::fmt::Debug + 'static>(all: Vec<T>) -> impl Strategy<Value = BTreeSet<T>> {
    proptest::sample::subsequence(all.clone(), 0..=all.len()).prop_map(|v| v.into_iter().collect())
}

fn redactions() -> impl Strategy<Value = BTreeMap<String, Redaction>> {
    let per_kind: Vec<_> = REDACTABLE
        .iter()
        .map(|(kind, fields)| {
            let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            let kind = kind.to_string();
            prop_oneof![
                2 => Just(None),
                1 => Just(Some((kind.clone(), Redaction::Entity))),
                2 => subset(fields).prop_filter("non-empty", |s| !s.is_empty())
                    .prop_map(move |s| Some((kind.clone(), Redaction::Fields(s)))),
            ]
        })
        .collect();
    per_kind.prop_map(|v| v.into_iter().flatten().collect())
}

fn rules() -> impl Strategy<Value = Rules> {
    use Classification::*;
    let types: Vec<PacketType> = PacketType::ALL.iter().copied().filter(|t| !t.is_policy_exempt()).collect();
    (
        subset(types),
        proptest::sample::select(vec![Unclassified, BasicProtection, EuRestricted, EuConfidential]),
        proptest::sample::select(vec![Tlp::Clear, Tlp::Green, Tlp::Amber, Tlp::AmberStrict, Tlp::Red]),
        subset(vec![HandlingCode::H0, HandlingCode::H1, HandlingCode::H2, HandlingCode::H3])
            .prop_filter("non-empty", |s| !s.is_empty()),
        any::<(bool, bool, bool)>(),
        proptest::sample::select(vec![2_000usize, 8_000, 16 * 1024 * 1024]),
        redactions(),
    )
        .prop_map(
            |(packet_types, max_classification, max_tlp, handling_codes, (g, l, a), max_packet_bytes, redact)| Rules {
                packet_types,
                max_classification,
                max_tlp,
                handling_codes,
                require_grading: g,
                require_legal_basis: l,
                attachments: a,
                max_packet_bytes,
                max_packets_per_minute: 1000,
                redact,
            },
        )
}

/// An example with entities (a response with every kind and an attachment, a request, an alert
/// with a courier), with random markings. (These types require a legal basis, so the
/// `require_legal_basis` rule is covered by the table tests in `policy.rs` instead.)
fn packet() -> impl Strategy<Value = Packet> {
    use Classification::*;
    (
        proptest::sample::select(vec![
            "information-response.json",
            "information-request.json",
            "controlled-delivery-alert.json",
        ]),
        proptest::sample::select(vec![Unclassified, BasicProtection, EuRestricted, EuConfidential]),
        proptest::option::of(proptest::sample::select(vec![
            Tlp::Clear,
            Tlp::Green,
            Tlp::Amber,
            Tlp::AmberStrict,
            Tlp::Red,
        ])),
        subset(vec![HandlingCode::H0, HandlingCode::H1, HandlingCode::H2]).prop_filter("non-empty", |s| !s.is_empty()),
        any::<bool>(),
    )
        .prop_map(|(name, classification, tlp, codes, drop_grading)| {
            let mut p = common::example(name);
            p.envelope.classification = classification;
            p.envelope.tlp = tlp;
            p.envelope.handling.codes = codes;
            if drop_grading {
                p.envelope.grading = None;
            }
            p
        })
}

/// Every string leaf under a JSON value.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// `body.X.entities[2].person.date_of_birth` as a JSON pointer.
fn pointer(path: &str) -> String {
    path.split('.')
        .flat_map(|seg| match seg.split_once('[') {
            Some((name, idx)) => vec![name.to_owned(), idx.trim_end_matches(']').to_owned()],
            None => vec![seg.to_owned()],
        })
        .fold(String::new(), |acc, s| format!("{acc}/{s}"))
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn nothing_forbidden_reaches_the_partner_and_redactions_are_absent_from_the_bytes(
        rules in rules(),
        original in packet(),
        seed in any::<u64>(),
    ) {
        let mut p = original.clone();
        let decision = evaluate(&rules, Direction::Send, &mut p);
        let redacted = match decision {
            Decision::Deny(_) => return Ok(()), // nothing is sealed for this partner
            Decision::Allow => Vec::new(),
            Decision::Redact(list) => list,
        };
        // What the partner receives: sealed by IT-DCSA (CO-DIJIN's examples are re-originated),
        // opened by ES-UDYCO.
        p.envelope.originator.node = common::node("IT-DCSA");
        p.envelope.recipients = vec![common::node("ES-UDYCO")];
        let sealed = common::ctx("IT-DCSA").seal(&p, &mut common::rng(seed)).unwrap().remove(0);
        let opened = common::ctx("ES-UDYCO").open(&sealed.bytes, common::now()).unwrap();
        // The receiver holding the same rules finds nothing to object to.
        let mut received = opened.signed.packet.clone();
        prop_assert_eq!(evaluate(&rules, Direction::Receive, &mut received), Decision::Allow);
        // Every redacted value is absent from the signed bytes the partner decrypted. (Values
        // that occur more than once in the original, e.g. a make also named in a file, are
        // skipped: their other occurrence may rightly stay.)
        let before = serde_json::to_value(&original).unwrap();
        let original_cbor = original.to_cbor();
        for r in &redacted {
            let gone = before.pointer(&pointer(&r.path)).unwrap_or_else(|| panic!("{} not in the original", r.path));
            let mut leaves = Vec::new();
            strings(gone, &mut leaves);
            for s in leaves.iter().filter(|s| s.len() >= 4 && count(&original_cbor, s.as_bytes()) == 1) {
                prop_assert!(count(&opened.signed.bytes, s.as_bytes()) == 0, "{} ({s:?}) is in the bytes sent", r.path);
            }
        }
    }
}

/// The property above skips values that occur twice; this pins the common cases down exactly.
#[test]
fn named_values_are_gone_from_the_bytes_sent() {
    let mut rules = Rules {
        packet_types: PacketType::ALL.iter().copied().filter(|t| !t.is_policy_exempt()).collect(),
        max_classification: Classification::EuConfidential,
        max_tlp: Tlp::Red,
        handling_codes: [HandlingCode::H0, HandlingCode::H1, HandlingCode::H2, HandlingCode::H3].into(),
        require_grading: false,
        require_legal_basis: false,
        attachments: true,
        max_packet_bytes: 16 * 1024 * 1024,
        max_packets_per_minute: 1000,
        redact: BTreeMap::new(),
    };
    rules.redact.insert("person".into(), Redaction::Fields(["date_of_birth".to_owned(), "aliases".to_owned()].into()));
    rules.redact.insert("account".into(), Redaction::Entity);
    let original = common::example("information-response.json");
    let json = serde_json::to_value(&original).unwrap();
    let person = &json["body"]["InformationResponse"]["entities"][0]["person"];
    let account = &json["body"]["InformationResponse"]["entities"][6]["account"];
    let secrets: Vec<String> = [&person["date_of_birth"], &person["aliases"][0], &account["identifier"]]
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut p = original.clone();
    p.envelope.originator.node = common::node("IT-DCSA");
    p.envelope.recipients = vec![common::node("ES-UDYCO")];
    let before = common::ctx("IT-DCSA").seal(&p, &mut common::rng(1)).unwrap().remove(0);
    let before = common::ctx("ES-UDYCO").open(&before.bytes, common::now()).unwrap();
    assert!(matches!(evaluate(&rules, Direction::Send, &mut p), Decision::Redact(_)));
    let after = common::ctx("IT-DCSA").seal(&p, &mut common::rng(2)).unwrap().remove(0);
    let after = common::ctx("ES-UDYCO").open(&after.bytes, common::now()).unwrap();
    for s in &secrets {
        assert!(count(&before.signed.bytes, s.as_bytes()) > 0, "{s} was there before");
        assert_eq!(count(&after.signed.bytes, s.as_bytes()), 0, "{s} is still in the bytes sent");
    }
}
