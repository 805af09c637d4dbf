//! The example packets in schemas/examples: every valid one parses and survives both faces, every
//! invalid one is refused with an error naming the field at fault.

mod common;

use liaison::packet::{Packet, PacketError, PacketType};

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

#[test]
fn invalid_examples_name_the_field() {
    let expected = [
        ("attachment-digest-mismatch.json", "body.InformationResponse.attachments[0].digest"),
        ("bad-entity-grading.json", "body.InformationResponse.entities[2].vehicle.grading"),
        ("bad-iban.json", "body.InformationResponse.entities[6].account.identifier"),
        ("bad-node-id.json", "envelope.recipients[1]"),
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
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("schemas/examples/information-request.json")).unwrap(),
    )
    .unwrap();
    let env = v["envelope"].as_object_mut().unwrap();
    env.remove("id");
    env.remove("created");
    env.remove("due_by");
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
