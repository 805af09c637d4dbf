//! Seal and open: every packet type round-trips, and every way a sealed packet can be wrong is
//! refused with its own error, never a panic.

use crate::common;

use ciborium::Value;
use coset::{CoseEncrypt, CoseSign1, TaggedCborSerializable};
use liaison::encoding::Digest;
use liaison::keys::Keyring;
use liaison::packet::Packet;
use liaison::seal::{
    peek_route, verify_signed, Layer, OpenError, SealContext, SealError, SignedPacket, MAX_SEALED_BYTES,
};

fn sealed_request() -> (Packet, Vec<u8>) {
    let p = common::example("information-request.json");
    let mut s = common::ctx("IT-DCSA").seal(&p, &mut common::rng(1)).unwrap();
    (p, s.remove(0).bytes)
}

fn open_at_es(bytes: &[u8]) -> Result<liaison::seal::Opened, OpenError> {
    common::ctx("ES-UDYCO").open(bytes, common::now())
}

#[test]
fn every_example_seals_and_opens_to_the_identical_packet() {
    for (name, _) in common::valid_examples() {
        let p = common::example(&name);
        let from = p.envelope.originator.node.to_string();
        let sealed = common::ctx(&from).seal(&p, &mut common::rng(2)).unwrap();
        assert_eq!(sealed.len(), p.envelope.recipients.len(), "{name}: one copy per recipient");
        for s in sealed {
            assert_eq!(peek_route(&s.bytes).unwrap(), s.route, "{name}: a relay reads the route");
            let opened = common::ctx(s.route.recipient.as_str()).open(&s.bytes, common::now()).unwrap();
            assert_eq!(opened.signed.packet, p, "{name}");
            assert_eq!(opened.route, s.route);
            assert_eq!(opened.sealed_digest, Digest::of(&s.bytes));
            assert_eq!(opened.signed.signer, common::keys(&from).public().signing_kid);
            // The evidence (COSE_Sign1) verifies on its own with only public keys.
            let again = verify_signed(&common::keyring(), &opened.signed.bytes).unwrap();
            assert_eq!(again.packet, p);
        }
    }
}

#[test]
fn multi_recipient_copies_open_only_at_their_recipient() {
    let p = common::example("controlled-delivery-alert.json");
    let sealed = common::ctx("CO-DIJIN").seal(&p, &mut common::rng(4)).unwrap();
    assert_eq!(sealed.len(), 2);
    let (es, it) = (common::ctx("ES-UDYCO"), common::ctx("IT-DCSA"));
    assert!(es.open(&sealed[0].bytes, common::now()).is_ok());
    assert!(it.open(&sealed[1].bytes, common::now()).is_ok());
    let err = it.open(&sealed[0].bytes, common::now()).unwrap_err();
    assert!(matches!(err, OpenError::NotForMe { .. }), "{err}");
    assert_eq!(err.to_string(), "addressed to ES-UDYCO, but this node is IT-DCSA");
}

#[test]
fn truncated_at_every_length_is_refused() {
    let (_, bytes) = sealed_request();
    for len in 0..bytes.len() {
        let err = open_at_es(&bytes[..len]).expect_err("a truncated packet opened");
        assert!(matches!(err, OpenError::Malformed { .. }), "len {len}: {err}");
    }
}

#[test]
fn oversized_is_refused_before_parsing() {
    let big = vec![0u8; MAX_SEALED_BYTES + 1];
    assert!(matches!(open_at_es(&big), Err(OpenError::TooLarge { .. })));
    assert!(matches!(verify_signed(&common::keyring(), &big), Err(OpenError::TooLarge { .. })));
}

#[test]
fn deeply_nested_is_refused() {
    let mut deep = vec![0xd8, 0x60];
    deep.extend(std::iter::repeat_n(0x81, 100_000));
    deep.push(0x00);
    let err = open_at_es(&deep).unwrap_err();
    assert!(matches!(err, OpenError::Malformed { layer: Layer::Encrypted, .. }), "{err}");
    // Nesting inside the packet payload is refused too (by type, or by the depth limit).
    let mut payload = vec![0xa1, 0x67];
    payload.extend_from_slice(b"version");
    payload.extend(std::iter::repeat_n(0x81, 100_000));
    payload.push(0);
    assert!(Packet::from_cbor(&payload).is_err());
    let err = liaison::encoding::from_cbor_exact::<Value>(&payload, MAX_SEALED_BYTES).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}

#[test]
fn trailing_bytes_are_refused() {
    let (_, mut bytes) = sealed_request();
    bytes.push(0x00);
    assert!(matches!(open_at_es(&bytes), Err(OpenError::TrailingBytes(Layer::Encrypted))));

    let (p, _) = sealed_request();
    let (seed, _) = common::secret_bytes("IT-DCSA");
    let kid = common::keys("IT-DCSA").public().signing_kid.clone();
    let mut inner = common::forge_sign1(&seed, kid.as_bytes(), p.to_cbor(), common::genuine_headers(&p));
    inner.push(0x00);
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
    assert!(matches!(err, OpenError::TrailingBytes(Layer::Signed)), "{err}");

    let mut payload = p.to_cbor();
    payload.push(0xff);
    let err = Packet::from_cbor(&payload).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
}

#[test]
fn wrong_types_are_refused() {
    let mut text = Vec::new();
    ciborium::into_writer(&Value::Tag(96, Box::new(Value::Text("hello".into()))), &mut text).unwrap();
    assert!(matches!(open_at_es(&text), Err(OpenError::Malformed { .. })));
    // A bare COSE_Sign1 is not a sealed packet.
    let (p, _) = sealed_request();
    let signed = common::ctx("IT-DCSA").sign(&p).unwrap();
    let err = open_at_es(&signed.bytes).unwrap_err();
    assert_eq!(err.code(), "cbor_unknown_tag", "tag 18 where tag 96 belongs: {err}");
    // A packet whose fields have the wrong CBOR types.
    let mut v: Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
    v.as_map_mut().unwrap()[0].1 = Value::Text("one".into());
    let mut wrong = Vec::new();
    ciborium::into_writer(&v, &mut wrong).unwrap();
    assert!(Packet::from_cbor(&wrong).is_err());
    // Timestamps must carry the epoch tag.
    let mut v: Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
    for (k, val) in v.as_map_mut().unwrap()[1].1.as_map_mut().unwrap() {
        if k.as_text() == Some("created") {
            *val = Value::Integer(1_764_150_000.into());
        }
    }
    let mut untagged = Vec::new();
    ciborium::into_writer(&v, &mut untagged).unwrap();
    assert!(Packet::from_cbor(&untagged).is_err());
}

#[test]
fn unknown_packet_type_inside_a_valid_signature_is_refused() {
    let (p, _) = sealed_request();
    let mut v: Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
    let map = v.as_map_mut().unwrap();
    map[2].1 = Value::Map(vec![(Value::Text("CashCourierAlert".into()), Value::Map(vec![]))]);
    let mut payload = Vec::new();
    ciborium::into_writer(&v, &mut payload).unwrap();
    let (seed, _) = common::secret_bytes("IT-DCSA");
    let kid = common::keys("IT-DCSA").public().signing_kid.clone();
    let inner = common::forge_sign1(&seed, kid.as_bytes(), payload, common::genuine_headers(&p));
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
    assert!(matches!(err, OpenError::InvalidPacket(_)), "{err}");
    assert!(err.to_string().contains("unknown variant `CashCourierAlert`"), "{err}");
}

#[test]
fn any_single_byte_change_is_refused() {
    let (_, bytes) = sealed_request();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            assert!(open_at_es(&b).is_err(), "byte {i} ^ {flip:#x} was accepted");
        }
    }
}

#[test]
fn tampered_ciphertext_fails_decryption() {
    let (_, bytes) = sealed_request();
    let mut enc = CoseEncrypt::from_tagged_slice(&bytes).unwrap();
    let ct = enc.ciphertext.as_mut().unwrap();
    ct[10] ^= 1;
    let err = open_at_es(&enc.to_tagged_vec().unwrap()).unwrap_err();
    assert!(matches!(err, OpenError::DecryptionFailed), "{err}");
}

#[test]
fn tampered_routing_header_fails_decryption() {
    // A relay tries to downgrade FLASH to ROUTINE, or extend the expiry.
    let (_, bytes) = sealed_request();
    let mut enc = CoseEncrypt::from_tagged_slice(&bytes).unwrap();
    enc.protected.original_data = None;
    for (label, value) in enc.protected.header.rest.iter_mut() {
        if *label == coset::Label::Text("liaison.route".into()) {
            for (k, v) in value.as_map_mut().unwrap() {
                if k.as_text() == Some("priority") {
                    *v = Value::Text("ROUTINE".into());
                }
            }
        }
    }
    let err = open_at_es(&enc.to_tagged_vec().unwrap()).unwrap_err();
    assert!(matches!(err, OpenError::DecryptionFailed), "{err}");
}

#[test]
fn tampered_signed_header_fails_the_signature() {
    let (p, _) = sealed_request();
    let signed = common::ctx("IT-DCSA").sign(&p).unwrap();
    let mut s1 = CoseSign1::from_tagged_slice(&signed.bytes).unwrap();
    s1.protected.original_data = None;
    s1.protected.header.content_type = Some(coset::ContentType::Text("text/plain".into()));
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, s1.to_tagged_vec().unwrap())).unwrap_err();
    assert!(matches!(err, OpenError::SignatureInvalid { .. }), "{err}");
    // And a tampered payload under an intact header.
    let mut s1 = CoseSign1::from_tagged_slice(&signed.bytes).unwrap();
    let payload = s1.payload.as_mut().unwrap();
    let at = payload.len() - 3;
    payload[at] ^= 1;
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, s1.to_tagged_vec().unwrap())).unwrap_err();
    assert!(matches!(err, OpenError::SignatureInvalid { .. }), "{err}");
}

#[test]
fn signature_by_an_unknown_key_is_refused() {
    let (p, _) = sealed_request();
    // A stranger's key, claiming a kid nobody enrolled.
    let stranger = [7u8; 32];
    let inner = common::forge_sign1(
        &stranger,
        b"IT-DCSA/sig/00000000000000000000000000000000",
        p.to_cbor(),
        common::genuine_headers(&p),
    );
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
    // In IT-DCSA's own namespace: a key it may have rotated to and ES-UDYCO not taken yet, so
    // not a rejection (no receipt: the copy comes again, and never verifies with this key).
    assert!(matches!(err, OpenError::KeyNotYetKnown { .. }), "{err}");
    assert_eq!(err.code(), "key_not_yet_known");
    // A stranger's key under IT-DCSA's real kid: the signature does not verify.
    let kid = common::keys("IT-DCSA").public().signing_kid.clone();
    let inner = common::forge_sign1(&stranger, kid.as_bytes(), p.to_cbor(), common::genuine_headers(&p));
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
    assert!(matches!(err, OpenError::SignatureInvalid { .. }), "{err}");
    // A known node's encryption kid used as a signing kid.
    let ekid = common::keys("IT-DCSA").public().encryption_kid.clone();
    let inner = common::forge_sign1(&stranger, ekid.as_bytes(), p.to_cbor(), common::genuine_headers(&p));
    let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
    assert!(matches!(err, OpenError::UnknownKey { .. }), "{err}");
}

#[test]
fn a_sender_outside_the_keyring_is_refused() {
    // DE-BKA knows ES-UDYCO's keys, but ES-UDYCO never enrolled DE-BKA.
    let mut ring = common::keyring();
    let bka = {
        let (s, e) = common::secret_bytes("DE-BKA");
        liaison::keys::NodeKeys::from_secret_bytes(common::node("DE-BKA"), &s, e)
    };
    ring.add(bka.public().clone()).unwrap();
    let ctx = SealContext::new(bka, ring).unwrap();
    let mut p = common::example("information-request.json");
    p.envelope.originator.node = common::node("DE-BKA");
    let sealed = ctx.seal(&p, &mut common::rng(5)).unwrap();
    let err = open_at_es(&sealed[0].bytes).unwrap_err();
    assert!(matches!(err, OpenError::UnknownKey { .. }), "{err}");
    assert!(err.to_string().contains("not in the keyring"), "{err}");
}

#[test]
fn signer_must_be_the_originator() {
    // ES-UDYCO signs a packet claiming to come from IT-DCSA.
    let (p, _) = sealed_request();
    let (seed, _) = common::secret_bytes("ES-UDYCO");
    let kid = common::keys("ES-UDYCO").public().signing_kid.clone();
    let inner = common::forge_sign1(&seed, kid.as_bytes(), p.to_cbor(), common::genuine_headers(&p));
    let mut q = p.clone();
    q.envelope.recipients = vec![common::node("CO-DIJIN")];
    let err = common::ctx("CO-DIJIN").open(&common::encrypt_raw("IT-DCSA", "CO-DIJIN", &q, inner), common::now());
    // IT-DCSA encrypts, but the routing header's packet matches; the signature is by ES-UDYCO.
    assert!(matches!(err, Err(OpenError::HeaderMismatch(_))), "{err:?}");
    // And SealContext refuses to sign for another originator in the first place.
    let err = common::ctx("ES-UDYCO").sign(&p).unwrap_err();
    assert!(matches!(err, SealError::NotOriginator { .. }), "{err}");
}

#[test]
fn onward_transmission_without_consent_is_refused() {
    // ES-UDYCO received IT-DCSA's request and re-encrypts it, untouched, for CO-DIJIN.
    let (p, bytes) = sealed_request();
    let opened = open_at_es(&bytes).unwrap();
    let mut q = p.clone();
    q.envelope.recipients.push(common::node("CO-DIJIN"));
    let forwarded = SignedPacket { packet: q, ..opened.signed };
    let sealed =
        common::ctx("ES-UDYCO").encrypt_for(&forwarded, &common::node("CO-DIJIN"), &mut common::rng(6)).unwrap();
    let err = common::ctx("CO-DIJIN").open(&sealed.bytes, common::now()).unwrap_err();
    assert!(matches!(err, OpenError::HeaderMismatch(_)), "{err}");
}

#[test]
fn expired_packets_are_refused() {
    let (p, bytes) = sealed_request();
    let es = common::ctx("ES-UDYCO");
    let just_before = p.envelope.expires.plus_secs(-1);
    assert!(es.open(&bytes, just_before).is_ok());
    let err = es.open(&bytes, p.envelope.expires).unwrap_err();
    assert!(matches!(err, OpenError::Expired { .. }), "{err}");
    assert_eq!(err.code(), "expired");
}

/// A packet dated further ahead of the receiver's clock than clocks differ is refused with its
/// own code; within the window it is taken.
#[test]
fn packets_created_ahead_of_the_clock_are_refused() {
    let (p, bytes) = sealed_request();
    let es = common::ctx("ES-UDYCO");
    let skew = liaison::seal::MAX_CLOCK_SKEW_SECS;
    assert!(es.open(&bytes, p.envelope.created.plus_secs(-skew)).is_ok(), "within the window");
    let err = es.open(&bytes, p.envelope.created.plus_secs(-skew - 1)).unwrap_err();
    assert!(matches!(err, OpenError::CreatedInFuture { .. }), "{err}");
    assert_eq!(err.code(), "created_in_future");
}

#[test]
fn sealing_checks_recipients_and_validity() {
    let mut p = common::example("information-request.json");
    let it = common::ctx("IT-DCSA");
    let lonely = SealContext::new(common::keys("IT-DCSA"), Keyring::new()).unwrap();
    assert!(matches!(lonely.seal(&p, &mut common::rng(1)), Err(SealError::UnknownRecipient(_))));
    let signed = it.sign(&p).unwrap();
    assert!(matches!(
        it.encrypt_for(&signed, &common::node("CO-DIJIN"), &mut common::rng(1)),
        Err(SealError::NotARecipient(_))
    ));
    p.envelope.purpose = None;
    assert!(matches!(it.seal(&p, &mut common::rng(1)), Err(SealError::InvalidPacket(_))));
}

#[test]
fn two_seals_of_one_packet_differ_but_both_open() {
    let p = common::example("read-ack.json");
    let it = common::ctx("IT-DCSA");
    let a = it.seal(&p, &mut common::rng(10)).unwrap().remove(0).bytes;
    let b = it.seal(&p, &mut common::rng(11)).unwrap().remove(0).bytes;
    assert_ne!(a, b, "fresh salt and IV per seal");
    let co = common::ctx("CO-DIJIN");
    assert_eq!(co.open(&a, common::now()).unwrap().signed.packet, co.open(&b, common::now()).unwrap().signed.packet);
}

#[test]
fn error_codes_are_distinct() {
    use std::collections::HashSet;
    let errs = [
        OpenError::TooLarge { len: 1, limit: 0 },
        OpenError::Malformed { layer: Layer::Signed, reason: String::new() },
        OpenError::TrailingBytes(Layer::Signed),
        OpenError::Unsupported(String::new()),
        OpenError::NotForMe { recipient: common::node("IT-DCSA"), me: common::node("ES-UDYCO") },
        OpenError::UnknownKey { kid: String::new(), reason: String::new() },
        OpenError::DecryptionFailed,
        OpenError::SignatureInvalid { kid: common::keys("IT-DCSA").public().signing_kid.clone() },
        OpenError::InvalidPacket(liaison::packet::PacketError::Invalid { field: "x".into(), reason: "y".into() }),
        OpenError::HeaderMismatch(String::new()),
        OpenError::Expired { expires: common::now(), now: common::now() },
        OpenError::CreatedInFuture { created: common::now(), now: common::now() },
        OpenError::NotStrict { layer: Layer::Signed, error: liaison::encoding::CborError::Indefinite(0) },
        OpenError::UnknownCritical { layer: Layer::Signed, label: String::new() },
    ];
    let codes: HashSet<_> = errs.iter().map(OpenError::code).collect();
    assert_eq!(codes.len(), errs.len());
}

#[test]
fn unsupported_algorithms_are_refused() {
    let (_, bytes) = sealed_request();
    let mut enc = CoseEncrypt::from_tagged_slice(&bytes).unwrap();
    enc.protected.original_data = None;
    enc.protected.header.alg = Some(coset::RegisteredLabelWithPrivate::Assigned(coset::iana::Algorithm::A128GCM));
    let err = open_at_es(&enc.to_tagged_vec().unwrap()).unwrap_err();
    assert!(matches!(err, OpenError::Unsupported(_)), "{err}");
    let mut enc = CoseEncrypt::from_tagged_slice(&bytes).unwrap();
    enc.recipients[0].protected.original_data = None;
    enc.recipients[0].protected.header.alg =
        Some(coset::RegisteredLabelWithPrivate::Assigned(coset::iana::Algorithm::ECDH_ES_HKDF_256));
    let err = open_at_es(&enc.to_tagged_vec().unwrap()).unwrap_err();
    assert!(matches!(err, OpenError::Unsupported(_)), "{err}");
}

/// RFC 9052 §3.1: a `crit` parameter naming a label this node does not process means the
/// message must be refused; so must `crit` outside the protected header. A `crit` naming only
/// what is processed passes.
#[test]
fn critical_header_parameters_this_node_does_not_process_are_refused() {
    let (p, _) = sealed_request();
    let open = |tweak: fn(&mut coset::Header)| {
        let inner = common::sign_as(&common::ctx("IT-DCSA"), &p, p.to_cbor(), tweak);
        open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner))
    };
    let err = open(|h| {
        h.crit.push(coset::RegisteredLabelWithPrivate::PrivateUse(-65_537));
        h.rest.push((coset::Label::Int(-65_537), Value::Bool(true)));
    })
    .unwrap_err();
    assert_eq!(err.code(), "cose_unknown_crit", "{err}");
    let err = open(|h| {
        h.crit.push(coset::RegisteredLabelWithPrivate::Text("liaison.sealed-until".into()));
        h.rest.push((coset::Label::Text("liaison.sealed-until".into()), Value::Integer(5.into())));
    })
    .unwrap_err();
    assert_eq!(err.code(), "cose_unknown_crit", "{err}");
    assert!(
        open(|h| h.crit.push(coset::RegisteredLabelWithPrivate::Assigned(coset::iana::HeaderParameter::Alg))).is_ok()
    );
    assert!(open(|h| h.crit.push(coset::RegisteredLabelWithPrivate::Text("liaison.pid".into()))).is_ok());
}

/// The signed payload is read strictly too: a bignum where an integer belongs, an unknown tag,
/// an indefinite length and an integer not in its shortest form are each refused, with a
/// stable code, though the signature over them is valid.
#[test]
fn signed_payloads_in_non_strict_cbor_are_refused() {
    let (p, _) = sealed_request();
    let good = p.to_cbor();
    assert_eq!(good[0], 0xa3, "a packet is a map of three: version, envelope, body");
    assert_eq!(&good[1..9], b"\x67version", "version first");
    assert_eq!(good[9], 0x01, "version 1, one byte");
    let variants: [(&str, Vec<u8>); 4] = [
        ("cbor_unknown_tag", [&good[..9], &[0xc2, 0x41, 0x01], &good[10..]].concat()),
        ("cbor_not_preferred", [&good[..9], &[0x18, 0x01], &good[10..]].concat()),
        ("cbor_unknown_tag", [&good[..9], &[0xd8, 0x40, 0x01], &good[10..]].concat()),
        ("cbor_indefinite_length", [&[0xbf], &good[1..], &[0xff]].concat()),
    ];
    for (code, payload) in variants {
        let inner = common::sign_as(&common::ctx("IT-DCSA"), &p, payload, |_| {});
        let err = open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    // The same bytes well-formed open.
    let inner = common::sign_as(&common::ctx("IT-DCSA"), &p, good, |_| {});
    assert!(open_at_es(&common::encrypt_raw("IT-DCSA", "ES-UDYCO", &p, inner)).is_ok());
}
