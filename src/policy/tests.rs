use super::*;

const OPEN: &str = r#"
partner = "ES-UDYCO"
retention_days = 365
[send]
packet_types = ["ControlledDeliveryAlert", "JitNotice", "InformationRequest", "InformationResponse", "Refusal", "DelayNotice", "ClarificationRequest"]
max_classification = "EU_CONFIDENTIAL"
max_tlp = "RED"
handling_codes = ["H0", "H1", "H2", "H3"]
require_grading = false
require_legal_basis = false
attachments = true
max_packet_bytes = 16777216
max_packets_per_minute = 100000
[receive]
packet_types = ["ControlledDeliveryAlert", "JitNotice", "InformationRequest", "InformationResponse", "Refusal", "DelayNotice", "ClarificationRequest"]
max_classification = "EU_CONFIDENTIAL"
max_tlp = "RED"
handling_codes = ["H0", "H1", "H2", "H3"]
require_grading = false
require_legal_basis = false
attachments = true
max_packet_bytes = 16777216
max_packets_per_minute = 100000
[onward]
from_partner = "free"
accept_forwarded = true
"#;

fn open_rules() -> Rules {
    Policy::from_toml(OPEN, None).unwrap().send
}

fn example(name: &str) -> Packet {
    let text = match name {
        "response" => include_str!("../../schemas/examples/information-response.json"),
        "alert" => include_str!("../../schemas/examples/controlled-delivery-alert.json"),
        "request" => include_str!("../../schemas/examples/information-request.json"),
        "ack" => include_str!("../../schemas/examples/read-ack.json"),
        other => panic!("{other}"),
    };
    Packet::from_json(text).unwrap()
}

fn denied_by(d: &Decision) -> Option<&str> {
    match d {
        Decision::Deny(d) => Some(d.rule.as_str()),
        _ => None,
    }
}

/// Every rule that refuses, in both directions: (what to change in the rules, what to change
/// in the packet, the rule that must be named).
#[test]
fn every_refusing_rule_is_named() {
    type Case = (&'static str, fn(&mut Rules), fn(&mut Packet), &'static str);
    let cases: &[Case] = &[
        (
            "type",
            |r| {
                r.packet_types.remove(&PacketType::InformationResponse);
            },
            |_| {},
            "packet_types",
        ),
        ("classification", |r| r.max_classification = Classification::Unclassified, |_| {}, "max_classification"),
        ("tlp", |r| r.max_tlp = Tlp::Green, |_| {}, "max_tlp"),
        (
            "handling",
            |r| {
                r.handling_codes.remove(&HandlingCode::H2);
            },
            |_| {},
            "handling_codes",
        ),
        ("grading", |r| r.require_grading = true, |p| p.envelope.grading = None, "require_grading"),
        ("legal basis", |r| r.require_legal_basis = true, |p| p.envelope.legal_basis = None, "require_legal_basis"),
        ("attachments", |r| r.attachments = false, |_| {}, "attachments"),
        ("size", |r| r.max_packet_bytes = 1000, |_| {}, "max_packet_bytes"),
    ];
    for direction in [Direction::Send, Direction::Receive] {
        for (what, rules_change, packet_change, rule) in cases {
            let mut rules = open_rules();
            let mut p = example("response");
            assert_eq!(evaluate(&rules, direction, &mut p.clone()), Decision::Allow, "{what}: open rules allow");
            rules_change(&mut rules);
            packet_change(&mut p);
            let d = evaluate(&rules, direction, &mut p);
            assert_eq!(denied_by(&d), Some(format!("{}.{rule}", direction.as_str()).as_str()), "{what}: {d:?}");
        }
    }
}

/// Every classification and TLP against every ceiling: allowed exactly when not above it.
#[test]
fn every_marking_against_every_ceiling() {
    use Classification::*;
    let classes = [Unclassified, BasicProtection, EuRestricted, EuConfidential];
    for (i, have) in classes.iter().enumerate() {
        for (j, max) in classes.iter().enumerate() {
            let mut r = open_rules();
            r.max_classification = *max;
            let mut p = example("request");
            p.envelope.classification = *have;
            let d = evaluate(&r, Direction::Send, &mut p);
            assert_eq!(d == Decision::Allow, i <= j, "{have:?} under {max:?}: {d:?}");
        }
    }
    let tlps = [Tlp::Clear, Tlp::Green, Tlp::Amber, Tlp::AmberStrict, Tlp::Red];
    for (i, have) in tlps.iter().enumerate() {
        for (j, max) in tlps.iter().enumerate() {
            let mut r = open_rules();
            r.max_tlp = *max;
            let mut p = example("request");
            p.envelope.tlp = Some(*have);
            assert_eq!(evaluate(&r, Direction::Send, &mut p) == Decision::Allow, i <= j, "{have:?} under {max:?}");
        }
    }
    let mut p = example("request");
    p.envelope.tlp = None;
    let mut r = open_rules();
    r.max_tlp = Tlp::Clear;
    assert_eq!(evaluate(&r, Direction::Send, &mut p), Decision::Allow, "no TLP passes the TLP rule");
    let codes = [HandlingCode::H0, HandlingCode::H1, HandlingCode::H2, HandlingCode::H3];
    for code in codes {
        let mut r = open_rules();
        r.handling_codes = codes.iter().copied().filter(|c| *c != code).collect();
        let mut p = example("request");
        p.envelope.handling.codes = [code].into();
        let d = evaluate(&r, Direction::Receive, &mut p);
        assert_eq!(denied_by(&d), Some("receive.handling_codes"), "{code:?}");
        r.handling_codes.insert(code);
        assert_eq!(evaluate(&r, Direction::Receive, &mut p), Decision::Allow, "{code:?}");
    }
}

#[test]
fn sending_redacts_every_nested_entity_and_names_each_field() {
    let mut r = open_rules();
    r.redact.insert("person".into(), Redaction::Fields(["date_of_birth".into(), "biometrics".into()].into()));
    r.redact.insert("account".into(), Redaction::Entity);
    let mut p = example("response");
    let Decision::Redact(list) = evaluate(&r, Direction::Send, &mut p) else { panic!() };
    let paths: Vec<&str> = list.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "body.InformationResponse.entities[0].person.biometrics",
            "body.InformationResponse.entities[0].person.date_of_birth",
            "body.InformationResponse.entities[6].account",
        ]
    );
    let Body::InformationResponse(body) = &p.body else { panic!() };
    assert!(body.entities.iter().all(|e| e.kind() != "account"));
    let Entity::Person(person) = &body.entities[0] else { panic!() };
    assert!(person.date_of_birth.is_none() && person.biometrics.is_empty());
    assert!(person.given_names.is_some(), "only what the rule names goes");
    p.check().expect("a redacted packet is still a valid packet");

    // Couriers of an alert are persons too.
    let mut alert = example("alert");
    let Decision::Redact(list) = evaluate(&r, Direction::Send, &mut alert) else { panic!() };
    assert_eq!(list[0].path, "body.ControlledDeliveryAlert.couriers[0].date_of_birth");
    // Receiving, the same field is a violation instead.
    let mut alert = example("alert");
    let d = evaluate(&r, Direction::Receive, &mut alert);
    assert_eq!(denied_by(&d), Some("receive.redact.person"), "{d:?}");
}

/// Every field a policy may name is really removed by `clear` (a name `clear` did not know
/// would be silently kept: the worst failure a redaction can have).
#[test]
fn every_redactable_field_is_really_cleared() {
    let Body::InformationResponse(r) = example("response").body else { panic!() };
    for (kind, fields) in REDACTABLE {
        let mut e = r.entities.iter().find(|e| e.kind() == kind).cloned().unwrap_or_else(|| panic!("{kind}"));
        if let Entity::Phone(p) = &mut e {
            p.imsi = Some("214070123456789".into());
        }
        for f in fields {
            let mut x = e.clone();
            assert!(clear(&mut x, f), "{kind}.{f} was not cleared");
            assert!(!clear(&mut x, f), "{kind}.{f} is still there");
        }
        assert!(!clear(&mut e.clone(), "no_such_field"));
    }
}

#[test]
fn system_packets_pass_and_a_partner_without_policy_gets_nothing() {
    let mut r = open_rules();
    r.packet_types.clear();
    r.max_classification = Classification::Unclassified;
    assert_eq!(evaluate(&r, Direction::Receive, &mut example("ack")), Decision::Allow);
    let book = PolicyBook::new([Policy::from_toml(OPEN, None).unwrap()]);
    let v = book.decide(&"CO-DIJIN".parse().unwrap(), Direction::Send, &mut example("ack"), 0);
    assert_eq!(denied_by(&v.decision), Some("no_policy"));
    assert_eq!(v.policy, None);
}

/// No packet type is exempt: a ReadAck is weighed by the size rule and, receiving, counts
/// against the rate; a receipt arriving as a packet is refused; this node's own
/// acknowledgements are not held up by its send rate.
#[test]
fn system_packets_follow_the_size_and_rate_rules() {
    let mut r = open_rules();
    r.max_packet_bytes = 100;
    let denied = evaluate(&r, Direction::Receive, &mut example("ack"));
    assert_eq!(denied_by(&denied), Some("receive.max_packet_bytes"));
    let mut receipt = Packet::from_json(include_str!("../../schemas/examples/delivery-receipt.json")).unwrap();
    assert_eq!(denied_by(&evaluate(&open_rules(), Direction::Receive, &mut receipt)), Some("receive.system"));

    let text = OPEN.replace("max_packets_per_minute = 100000", "max_packets_per_minute = 2");
    let book = PolicyBook::new([Policy::from_toml(&text, None).unwrap()]);
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let receive = |t| book.decide(&es, Direction::Receive, &mut example("ack"), t).decision;
    assert_eq!((receive(0), receive(1)), (Decision::Allow, Decision::Allow));
    assert_eq!(denied_by(&receive(2)), Some("receive.max_packets_per_minute"), "ReadAcks count");
    assert_eq!(
        denied_by(&book.decide(&es, Direction::Receive, &mut example("request"), 3).decision),
        Some("receive.max_packets_per_minute"),
        "and take the room of other packets"
    );
    for t in 0..5 {
        assert_eq!(book.decide(&es, Direction::Send, &mut example("ack"), t).decision, Decision::Allow);
    }
}

#[test]
fn rate_limit_per_partner_and_direction() {
    let text = OPEN.replacen("max_packets_per_minute = 100000", "max_packets_per_minute = 2", 1);
    let book = PolicyBook::new([Policy::from_toml(&text, None).unwrap()]);
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let send = |t| book.decide(&es, Direction::Send, &mut example("request"), t).decision;
    assert_eq!(send(0), Decision::Allow);
    assert_eq!(send(1), Decision::Allow);
    assert_eq!(denied_by(&send(2)), Some("send.max_packets_per_minute"));
    assert_eq!(denied_by(&send(29_999)), Some("send.max_packets_per_minute"), "not quite 30 s yet");
    assert_eq!(send(30_001), Decision::Allow, "one token back after 30 s at 2/min");
    assert_eq!(denied_by(&send(30_002)), Some("send.max_packets_per_minute"));
    assert_eq!(
        book.decide(&es, Direction::Receive, &mut example("request"), 2).decision,
        Decision::Allow,
        "receiving has its own bucket"
    );
}

#[test]
fn policy_files_refuse_unknown_keys_markings_fields_and_the_wrong_partner() {
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let it: NodeId = "IT-DCSA".parse().unwrap();
    let bad = [
        (OPEN.replacen("[receive]", "secret = 1\n[receive]", 1), "unknown field `secret`"),
        (OPEN.replacen("EU_CONFIDENTIAL", "TOP_SECRET", 1), "column 22: unknown variant"),
        (OPEN.replacen("\"H3\"", "\"H9\"", 1), "unknown variant `…`, expected one of `H0`"),
        (OPEN.replacen("\"Refusal\"", "\"Gossip\"", 1), "send.packet_types: unknown packet type \"Gossip\""),
        (OPEN.replacen("\"Refusal\"", "\"ReadAck\"", 1), "ReadAck is not governed by packet_types"),
        (format!("{OPEN}[receive.redact]\nperson = [\"shoe_size\"]\n"), "receive.redact.person: \"shoe_size\""),
        (format!("{OPEN}[receive.redact]\nperson = [\"family_name\"]\n"), "not a redactable field"),
        (format!("{OPEN}[receive.redact]\npet = [\"*\"]\n"), "receive.redact.pet: unknown entity kind"),
        (format!("{OPEN}[receive.redact]\nperson = [\"*\", \"sex\"]\n"), "stands alone"),
        (OPEN.replacen("max_packet_bytes = 16777216", "max_packet_bytes = 0", 1), "send.max_packet_bytes"),
        (OPEN.replacen("require_grading = false", "", 1), "missing field `require_grading`"),
    ];
    for (text, expect) in bad {
        let problems = Policy::from_toml(&text, Some(&es)).unwrap_err().join("; ");
        assert!(problems.contains(expect), "{expect:?} not in {problems:?}");
    }
    let problems = Policy::from_toml(OPEN, Some(&it)).unwrap_err().join("; ");
    assert!(problems.contains("the file is about ES-UDYCO, but is configured for IT-DCSA"), "{problems}");
    // Several problems are reported together.
    let two = format!("{}[send.redact]\npet = [\"*\"]\n", OPEN.replacen("\"Refusal\"", "\"Gossip\"", 1));
    assert_eq!(Policy::from_toml(&two, None).unwrap_err().len(), 2);
}

#[test]
fn the_version_hash_follows_the_rules_not_the_layout() {
    let a = Policy::from_toml(OPEN, None).unwrap();
    let b = Policy::from_toml(&format!("# a comment\n\n{}", OPEN.replace(" = ", "=")), None).unwrap();
    assert_eq!(a.hash, b.hash);
    let c = Policy::from_toml(&OPEN.replacen("require_grading = false", "require_grading = true", 1), None).unwrap();
    assert_ne!(a.hash, c.hash);
}
