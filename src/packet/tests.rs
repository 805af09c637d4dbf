use super::*;

#[test]
fn cbor_type_errors_name_the_field() {
    let text = include_str!("../../schemas/examples/information-request.json");
    let p = Packet::from_json(text).unwrap();
    let mut v: ciborium::Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
    let env = &mut v.as_map_mut().unwrap()[1].1;
    for (k, val) in env.as_map_mut().unwrap() {
        if k.as_text() == Some("recipients") {
            *val = ciborium::Value::Array(vec![ciborium::Value::Text("es-udyco".into())]);
        }
    }
    let bytes = crate::encoding::to_cbor(&v);
    let err = Packet::from_cbor(&bytes).unwrap_err();
    assert_eq!(err.field(), Some("envelope.recipients[0]"), "{err}");
    assert!(err.to_string().contains("invalid node id"), "{err}");
}

/// A checked packet is encoded once, keeps its encoding for the same recipients, and is
/// checked (and encoded) again only for a list that is not a subset of its own.
#[test]
fn checked_packets_are_encoded_once_and_narrowed_without_a_check() {
    let text = include_str!("../../schemas/examples/controlled-delivery-alert.json");
    let c = Checked::new(Packet::from_json(text).unwrap()).unwrap();
    assert!(c.envelope.recipients.len() >= 2, "the example has several recipients");
    let first = c.cbor().as_ptr();
    assert_eq!(c.cbor().as_ptr(), first, "encoded once");
    assert_eq!(c.cbor(), c.to_cbor().as_slice());
    let all = c.envelope.recipients.clone();
    let same = c.clone().for_recipients(&all).unwrap();
    assert_eq!(same.cbor().as_ptr(), first, "the clone shares the encoding");
    let one = c.clone().for_recipients(&all[..1]).unwrap();
    assert_eq!(one.envelope.recipients, all[..1]);
    assert_eq!(one.cbor(), one.to_cbor().as_slice(), "encoded again for the new list");
    let me = c.envelope.originator.node;
    let err = c.clone().for_recipients(&[me]).unwrap_err();
    assert_eq!(err.field(), Some("envelope.recipients[0]"), "{err}");
    assert!(c.clone().for_recipients(&[]).is_err(), "an empty list is checked, and refused");
    let twice = [all[0], all[0]];
    assert!(c.clone().for_recipients(&twice).is_err(), "a node listed twice is checked, and refused");
}

/// ReadAcks, receipts and consents have one shape, whoever made them.
#[test]
fn system_packets_have_one_shape() {
    let ack = Packet::from_json(include_str!("../../schemas/examples/read-ack.json")).unwrap();
    let consent = Packet::from_json(include_str!("../../schemas/examples/onward-consent.json")).unwrap();
    type Spoil = (&'static str, fn(&mut Packet));
    let bad: [Spoil; 8] = [
        ("envelope.classification", |p| p.envelope.classification = Classification::EuConfidential),
        ("envelope.tlp", |p| p.envelope.tlp = Some(Tlp::Amber)),
        ("envelope.handling", |p| {
            p.envelope.handling.codes.insert(crate::markings::HandlingCode::H2).then_some(()).map_or((), drop)
        }),
        ("envelope.purpose", |p| p.envelope.purpose = Some("free text".parse().unwrap())),
        ("envelope.case_ref", |p| p.envelope.case_ref = Some("IT-DCSA/2026/0042".parse().unwrap())),
        ("envelope.legal_basis", |p| p.envelope.legal_basis = Some("art. 4".parse().unwrap())),
        ("envelope.grading", |p| p.envelope.grading = Some("B2".parse().unwrap())),
        ("envelope.related", |p| p.envelope.related.push(PacketId::from_bytes([9; 16]))),
    ];
    for base in [&ack, &consent] {
        assert!(base.check().is_ok());
        for (field, spoil) in &bad {
            let mut p = base.clone();
            spoil(&mut p);
            let err = p.check().unwrap_err();
            assert_eq!(err.field(), Some(*field), "{}: {err}", base.packet_type());
        }
    }
}

#[test]
fn deadlines_follow_the_directive() {
    let t = Timestamp::from_unix(1_000_000).unwrap();
    assert_eq!(answer_due(t, true, DataAccess::Direct).unix() - t.unix(), 8 * 3600);
    assert_eq!(answer_due(t, true, DataAccess::Indirect).unix() - t.unix(), 3 * 86400);
    assert_eq!(answer_due(t, false, DataAccess::Direct).unix() - t.unix(), 7 * 86400);
    assert_eq!(answer_due(t, false, DataAccess::Indirect).unix() - t.unix(), 7 * 86400);
}
