//! The example packets in schemas/examples: every valid one parses and survives both faces, every
//! invalid one is refused with an error naming the field at fault.

use crate::common;

use liaison::packet::{Packet, PacketError, PacketType};
use liaison::timestamp::{Date, Timestamp};

#[test]
fn one_valid_example_per_packet_type() {
    let mut seen: Vec<PacketType> = common::valid_examples()
        .iter()
        .map(|(name, text)| Packet::from_json(text).unwrap_or_else(|e| panic!("{name}: {e}")).packet_type())
        .collect();
    seen.sort();
    assert_eq!(seen, PacketType::ALL.to_vec());
}

#[test]
fn valid_examples_round_trip_through_json_and_cbor() {
    for (name, text) in common::valid_examples() {
        let p = Packet::from_json(&text).unwrap();
        let cbor = p.to_cbor();
        assert_eq!(Packet::from_cbor(&cbor).unwrap(), p, "{name}: CBOR round trip");
        assert_eq!(Packet::from_json(&p.to_json()).unwrap(), p, "{name}: JSON round trip");
        assert_eq!(p.to_cbor(), cbor, "{name}: encoding is stable");
        assert!(cbor.len() < text.len(), "{name}: CBOR is smaller than the JSON");
    }
}

/// The one way tests make an example current: every date and time in it, envelope and body,
/// moves by the same amount, so the rules that relate two of them still hold years later, and
/// signed bytes inside (a Forward's original) are untouched.
#[test]
fn examples_moved_in_time_keep_every_gap() {
    let shift = 3 * 366 * 86_400 + 12_345;
    for (name, text) in common::valid_examples() {
        let before = Packet::from_json(&text).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        liaison::packet::shift_times(&mut v, shift).unwrap();
        let after = Packet::from_json(&v.to_string()).unwrap_or_else(|e| panic!("{name} moved: {e}"));
        let (b, a) = (&before.envelope, &after.envelope);
        assert_eq!(a.created.unix() - b.created.unix(), shift, "{name}: created");
        assert_eq!(a.expires.unix() - b.expires.unix(), shift, "{name}: expires");
        assert_eq!(a.due_by.map(|t| t.unix() - shift), b.due_by.map(|t| t.unix()), "{name}: due_by");
        assert_eq!(a.id, b.id, "{name}: ids are not times");
        let moved = |p: &Packet| {
            let mut strings = Vec::new();
            collect_strings(&serde_json::to_value(p).unwrap(), &mut strings);
            strings
        };
        let (sb, sa) = (moved(&before), moved(&after));
        assert_eq!(sb.len(), sa.len());
        for (x, y) in sb.iter().zip(&sa) {
            if let (Ok(x), Ok(y)) = (x.parse::<Timestamp>(), y.parse::<Timestamp>()) {
                assert_eq!(y.unix() - x.unix(), shift, "{name}: every timestamp moves by the same amount");
            } else if let (Ok(x), Ok(y)) = (x.parse::<Date>(), y.parse::<Date>()) {
                let days = (y.start().unix() - x.start().unix()) / 86_400;
                assert_eq!(days, (shift as f64 / 86_400.0).round() as i64, "{name}: dates move by whole days");
            } else {
                assert_eq!(x, y, "{name}: what is not a time is untouched");
            }
        }
    }
    assert!(liaison::packet::shift_times(&mut serde_json::json!(["9999-12-31T00:00:00Z"]), 86_400).is_err());
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

#[test]
fn invalid_examples_name_the_field() {
    let expected = [
        ("attachment-digest-mismatch.json", "body.InformationResponse.attachments[0].digest"),
        ("bad-entity-grading.json", "body.InformationResponse.entities[2].vehicle.grading"),
        ("bad-iban.json", "body.InformationResponse.entities[6].account.identifier"),
        ("bad-node-id.json", "envelope.recipients[1]"),
        ("conditions-missing.json", "body.ControlledDeliveryDecision.conditions"),
        ("expires-before-created.json", "envelope.expires"),
        ("h3-without-text.json", "envelope.handling"),
        ("originator-as-recipient.json", "envelope.recipients[1]"),
        ("reply-without-in-reply-to.json", "envelope.in_reply_to"),
        ("route-window-reversed.json", "body.ControlledDeliveryAlert.route[1].latest"),
        ("unknown-field.json", "envelope.informant_name"),
        ("unknown-marking.json", "envelope.tlp"),
        ("unknown-packet-type.json", "body"),
        ("urgent-but-routine.json", "envelope.priority"),
        ("wrong-due-by.json", "envelope.due_by"),
    ];
    let files = common::invalid_examples();
    assert_eq!(files.len(), expected.len(), "every invalid example has an expectation");
    for ((name, text), (want_name, want_field)) in files.iter().zip(expected) {
        assert_eq!(name, want_name);
        let err = Packet::from_json(text).expect_err(name);
        assert_eq!(err.field(), Some(want_field), "{name}: {err}");
        assert!(err.to_string().starts_with(want_field), "{name}: message names the field: {err}");
    }
}

#[test]
fn unknown_packet_type_is_reported_as_such() {
    let text = &common::invalid_examples().into_iter().find(|(n, _)| n == "unknown-packet-type.json").unwrap().1;
    let err = Packet::from_json(text).unwrap_err().to_string();
    assert!(err.contains("unknown variant `CashCourierAlert`"), "{err}");
}

#[test]
fn draft_gets_id_created_and_due_by() {
    let mut v = common::draft("information-request.json");
    v["envelope"]["originator"]["node"] = "IT-DCSA".into();
    v.as_object_mut().unwrap().remove("version");
    let now = common::now();
    let p = Packet::from_json_draft(&v.to_string(), now, &mut common::rng(1)).unwrap();
    assert_eq!(p.envelope.created, now);
    assert_eq!(p.envelope.due_by.unwrap().unix() - now.unix(), 8 * 3600, "urgent + direct = 8 h");
    assert_eq!(p.envelope.id.to_string().as_bytes()[14], b'7', "UUIDv7");

    // Indirect data: 3 days. Not urgent: 7 days.
    v["body"]["InformationRequest"]["data_access"] = "indirect".into();
    let p = Packet::from_json_draft(&v.to_string(), now, &mut common::rng(1)).unwrap();
    assert_eq!(p.envelope.due_by.unwrap().unix() - now.unix(), 3 * 86400);
    v["envelope"].as_object_mut().unwrap().remove("urgency_reason");
    v["envelope"]["priority"] = "ROUTINE".into();
    let p = Packet::from_json_draft(&v.to_string(), now, &mut common::rng(1)).unwrap();
    assert_eq!(p.envelope.due_by.unwrap().unix() - now.unix(), 7 * 86400);
}

#[test]
fn strict_json_refuses_missing_id_and_trailing_text() {
    let text = std::fs::read_to_string(common::root().join("schemas/examples/read-ack.json")).unwrap();
    let err = Packet::from_json(&format!("{text} {{}}")).unwrap_err();
    assert!(matches!(err, PacketError::Json { .. }), "{err}");
    let no_id = text.replace("\"id\": \"019ac0a1-5c00-7000-8000-000000000009\",", "");
    let err = Packet::from_json(&no_id).unwrap_err().to_string();
    assert!(err.contains("missing field `id`"), "{err}");
}

/// A decision on a controlled delivery: authorised and declined carry no conditions, a declined
/// one no validity; conditions need their list.
#[test]
fn controlled_delivery_decisions_of_every_kind() {
    let base = common::example_json("controlled-delivery-decision.json");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        f(&mut v["body"]["ControlledDeliveryDecision"]);
        Packet::from_json(&v.to_string())
    };
    assert!(with(&|_| {}).is_ok(), "on conditions");
    let authorised = with(&|d| {
        d["decision"] = "authorised".into();
        d.as_object_mut().unwrap().remove("conditions");
    });
    assert!(authorised.is_ok(), "{authorised:?}");
    let declined = with(&|d| {
        d["decision"] = "declined".into();
        d.as_object_mut().unwrap().remove("conditions");
        d.as_object_mut().unwrap().remove("valid_until");
        d.as_object_mut().unwrap().remove("interception");
    });
    assert!(declined.is_ok(), "{declined:?}");
    let field = |r: Result<Packet, liaison::packet::PacketError>| r.unwrap_err().field().map(str::to_owned);
    let d = "body.ControlledDeliveryDecision";
    assert_eq!(field(with(&|d| d["decision"] = "authorised".into())), Some(format!("{d}.conditions")));
    assert_eq!(
        field(with(&|d| {
            d["decision"] = "declined".into();
            d.as_object_mut().unwrap().remove("conditions");
        })),
        Some(format!("{d}.valid_until"))
    );
    assert_eq!(field(with(&|d| d["conditions"] = serde_json::json!([""]))), Some(format!("{d}.conditions[0]")));
}
