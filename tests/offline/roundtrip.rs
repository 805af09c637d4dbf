//! Property tests: random valid packets survive JSON -> packet -> CBOR -> sealed -> opened
//! unchanged; random bytes and random mutations of sealed packets never open and never panic.

use crate::common;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use liaison::encoding::{Blob, Digest};
use liaison::ids::{CountryCode, NodeId, PacketId};
use liaison::markings::{Classification, Grading, Handling, HandlingCode, Priority, Tlp, UrgencyReason};
use liaison::packet::*;
use liaison::timestamp::{Date, Timestamp};

const COUNTRIES: [&str; 8] = ["IT", "ES", "CO", "FR", "DE", "NL", "PT", "EU"];
const IBANS: [&str; 3] = ["IT60X0542811101000000123456", "ES9121000418450200051332", "DE89370400440532013000"];

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}[a-zA-Zà-ÿα-ω0-9]"
}
fn grading() -> impl Strategy<Value = Grading> {
    ("[ABCX]", 1..=4u8).prop_map(|(s, i)| format!("{s}{i}").parse().unwrap())
}
fn country() -> impl Strategy<Value = CountryCode> {
    prop::sample::select(COUNTRIES.to_vec()).prop_map(|c| c.parse().unwrap())
}
fn time() -> impl Strategy<Value = Timestamp> {
    (1_780_000_000i64..1_900_000_000).prop_map(|s| Timestamp::from_unix(s).unwrap())
}
fn date() -> impl Strategy<Value = Date> {
    (1950..2040i32, 1..=12u32, 1..=28u32).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}").parse().unwrap())
}
fn phone() -> impl Strategy<Value = String> {
    "\\+[1-9][0-9]{7,14}"
}
fn packet_id() -> impl Strategy<Value = PacketId> {
    "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}".prop_map(|s| s.parse().unwrap())
}
fn enum_of<T: Clone + std::fmt::Debug + 'static>(v: Vec<T>) -> impl Strategy<Value = T> {
    prop::sample::select(v)
}

fn person() -> impl Strategy<Value = Person> {
    (
        grading(),
        text(),
        option::of(text()),
        vec(text(), 0..3),
        option::of(date()),
        option::of(text()),
        vec(country(), 0..3),
        option::of(enum_of(vec![Sex::Female, Sex::Male, Sex::Unknown])),
        option::of(text()),
        vec(
            (enum_of(vec![BiometricKind::FacialImage, BiometricKind::Fingerprints, BiometricKind::DnaProfile]), text()),
            0..2,
        ),
    )
        .prop_map(
            |(
                grading,
                family_name,
                given_names,
                aliases,
                date_of_birth,
                place_of_birth,
                nationalities,
                sex,
                role,
                bio,
            )| {
                Person {
                    grading,
                    family_name,
                    given_names,
                    aliases,
                    date_of_birth,
                    place_of_birth,
                    nationalities,
                    sex,
                    role,
                    biometrics: bio.into_iter().map(|(kind, reference)| Biometric { kind, reference }).collect(),
                }
            },
        )
}

fn entity() -> impl Strategy<Value = Entity> {
    prop_oneof![
        person().prop_map(Entity::Person),
        (grading(), text(), option::of(country()), option::of(text())).prop_map(
            |(grading, name, country, registration_number)| {
                Entity::Organisation(Organisation { grading, name, country, registration_number })
            }
        ),
        (
            grading(),
            text(),
            option::of(country()),
            option::of("[A-HJ-NPR-Z0-9]{17}"),
            option::of(text()),
            option::of(text()),
            option::of(text())
        )
            .prop_map(|(grading, registration, registration_country, vin, make, model, colour)| {
                Entity::Vehicle(Vehicle {
                    grading,
                    kind: VehicleKind::Truck,
                    registration: Some(registration),
                    registration_country,
                    vin,
                    make,
                    model,
                    colour,
                })
            }),
        (grading(), text(), country(), option::of(date())).prop_map(
            |(grading, number, issuing_country, expires_on)| {
                Entity::Document(Document {
                    grading,
                    kind: DocumentKind::Passport,
                    number,
                    issuing_country,
                    expires_on,
                })
            }
        ),
        (
            grading(),
            text(),
            option::of(text()),
            option::of(country()),
            option::of((-90.0..=90.0f64, -180.0..=180.0f64))
        )
            .prop_map(|(grading, description, address, country, c)| Entity::Location(Location {
                grading,
                description,
                address,
                country,
                coordinates: c.map(|(lat, lon)| Coordinates { lat, lon })
            })),
        (grading(), phone(), option::of("[0-9]{15}"), option::of("[0-9]{15}"))
            .prop_map(|(grading, number, imei, imsi)| Entity::Phone(Phone { grading, number, imei, imsi })),
        (grading(), prop::bool::ANY, text(), 0..3usize, option::of(text())).prop_map(
            |(grading, iban, id, which, holder)| {
                let (scheme, identifier) = if iban {
                    (AccountScheme::Iban, IBANS[which].to_owned())
                } else {
                    (AccountScheme::CryptoWallet, id)
                };
                Entity::Account(Account { grading, scheme, identifier, institution: None, country: None, holder })
            }
        ),
    ]
}

fn contact() -> impl Strategy<Value = Contact> {
    (text(), option::of(text()), phone()).prop_map(|(name, unit, phone)| Contact { name, unit, phone, email: None })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            text(),
            1..1_000_000u64,
            text(),
            vec(text(), 1..3),
            vec(person(), 0..2),
            vec((text(), text(), time(), 0..86_400i64, country()), 1..4),
            contact(),
            contact()
        )
            .prop_map(
                |(
                    description,
                    quantity,
                    packaging,
                    identifiers,
                    couriers,
                    legs,
                    authorising_officer,
                    contact_point,
                )| {
                    Body::ControlledDeliveryAlert(Box::new(ControlledDeliveryAlert {
                        consignment: Consignment {
                            goods: GoodsKind::Narcotics,
                            description,
                            quantity,
                            unit: QuantityUnit::Kg,
                            packaging,
                            substitution: Substitution::Partial,
                        },
                        transport: Transport { means: TransportMeans::Road, identifiers, description: None },
                        couriers,
                        route: legs
                            .into_iter()
                            .map(|(from, to, earliest, span, controlling_state)| RouteLeg {
                                from,
                                to,
                                crossing_point: None,
                                earliest,
                                latest: earliest.plus_secs(span),
                                controlling_state,
                            })
                            .collect(),
                        interception: Interception::NotAllowed,
                        authorising_officer,
                        contact_point,
                    }))
                }
            ),
        (text(), date(), 0..400i64, text()).prop_map(|(name, start, days, leader)| {
            let end: Date =
                Timestamp::from_unix(start.start().unix() + days * 86400).unwrap().to_string()[..10].parse().unwrap();
            let es = JitParty::State("ES".parse().unwrap());
            Body::JitNotice(Box::new(JitNotice {
                name,
                parties: vec![es, JitParty::Eurojust],
                start,
                end,
                extensions: vec![],
                states_of_operation: vec!["ES".parse().unwrap()],
                leaders: vec![JitMember { name: leader, party: es, role: None }],
                members: vec![],
                contacts: vec![],
            }))
        }),
        (text(), vec(text(), 1..3), text(), prop::bool::ANY, vec(entity(), 0..4)).prop_map(
            |(subject, questions, reasons, direct, entities)| {
                Body::InformationRequest(InformationRequest {
                    subject,
                    questions,
                    reasons,
                    data_access: if direct { DataAccess::Direct } else { DataAccess::Indirect },
                    entities,
                })
            }
        ),
        (
            text(),
            vec(entity(), 0..8),
            vec((text(), prop_oneof![vec(any::<u8>(), 0..64), vec(any::<u8>(), 4_000..9_000)]), 0..2)
        )
            .prop_map(|(summary, entities, files)| {
                Body::InformationResponse(InformationResponse {
                    summary,
                    entities,
                    attachments: files
                        .into_iter()
                        .map(|(name, bytes)| Attachment {
                            name: name.replace(['/', '\\'], "_"),
                            media_type: "application/octet-stream".into(),
                            digest: Digest::of(&bytes),
                            content: Blob(bytes),
                        })
                        .collect(),
                })
            }),
        text().prop_map(|explanation| Body::Refusal(Refusal { ground: RefusalGround::NotAvailable, explanation })),
        vec(text(), 1..3).prop_map(|questions| Body::ClarificationRequest(ClarificationRequest { questions })),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        body(),
        (0..3usize, prop::bool::ANY),
        (packet_id(), packet_id()),
        time(),
        60..(366 * 86400i64),
        enum_of(vec![Priority::Flash, Priority::Urgent, Priority::Routine]),
        option::of(enum_of(vec![UrgencyReason::ThreatToLife, UrgencyReason::LossOfRelevance])),
        enum_of(vec![
            Classification::Unclassified,
            Classification::BasicProtection,
            Classification::EuRestricted,
            Classification::EuConfidential,
        ]),
        option::of(enum_of(vec![Tlp::Clear, Tlp::Green, Tlp::Amber, Tlp::AmberStrict, Tlp::Red])),
        (prop::bool::ANY, prop::bool::ANY, prop::bool::ANY, option::of(text())),
        option::of(grading()),
        (text(), text(), "[a-z]{2}", "[A-Z]{2,8}/[0-9]{4}"),
    )
        .prop_map(
            |(
                body,
                (from, both),
                (id, reply_to),
                created,
                ttl,
                priority,
                urgency,
                classification,
                tlp,
                (h1, h2, h3, h3_text),
                grading,
                (basis, purpose, lang, case),
            )| {
                let nodes: Vec<NodeId> = common::DEMO_NODES.iter().map(|n| common::node(n)).collect();
                let originator = nodes[from];
                let others: Vec<NodeId> = nodes.iter().filter(|n| **n != originator).cloned().collect();
                let recipients = if both { others } else { vec![others[0]] };
                let mut codes: std::collections::BTreeSet<_> = [HandlingCode::H0].into();
                if h1 {
                    codes.insert(HandlingCode::H1);
                }
                if h2 {
                    codes.insert(HandlingCode::H2);
                }
                let h3_text = if h3 {
                    codes.insert(HandlingCode::H3);
                    Some(h3_text.unwrap_or_else(|| "restricted".into()))
                } else {
                    None
                };
                let urgency = if priority == Priority::Routine { None } else { urgency };
                let kind = body.packet_type();
                let mut p = Packet {
                    version: PACKET_VERSION,
                    envelope: Envelope {
                        id,
                        case_ref: Some(case.parse().unwrap()),
                        in_reply_to: kind.is_reply().then_some(reply_to),
                        related: vec![],
                        originator: Originator { node: originator, officer: Some("Officer 7".parse().unwrap()) },
                        recipients,
                        created,
                        expires: created.plus_secs(ttl),
                        priority,
                        urgency_reason: urgency,
                        due_by: None,
                        classification,
                        tlp,
                        handling: Handling { codes, h3_text },
                        grading,
                        legal_basis: Some(basis),
                        purpose: Some(purpose),
                        language: lang.parse().unwrap(),
                    },
                    body,
                };
                p.envelope.due_by = p.computed_due_by();
                p
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_cbor_sealed_opened_round_trip(p in packet()) {
        p.check().map_err(|e| TestCaseError::fail(format!("generator made an invalid packet: {e}")))?;
        let from_json = Packet::from_json(&p.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_json, &p);
        let from_cbor = Packet::from_cbor(&from_json.to_cbor()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_cbor, &p);
        let sender = common::ctx(p.envelope.originator.node.as_str());
        let sealed = sender.seal(&from_cbor, &mut common::rng(p.envelope.created.unix() as u64)).unwrap();
        prop_assert_eq!(sealed.len(), p.envelope.recipients.len());
        for s in sealed {
            let receiver = common::ctx(s.route.recipient.as_str());
            let opened = receiver.open(&s.bytes, p.envelope.created).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&opened.signed.packet, &p);
            let back = Packet::from_json(&opened.signed.packet.to_json()).unwrap();
            prop_assert_eq!(&back, &p);
        }
    }

    #[test]
    fn random_bytes_never_open(bytes in vec(any::<u8>(), 0..4096), tag in prop::bool::ANY) {
        let mut b = bytes;
        if tag { b.splice(0..0, [0xd8, 0x60]); }
        let es = common::ctx("ES-UDYCO");
        prop_assert!(es.open(&b, common::now()).is_err());
        let _ = Packet::from_cbor(&b);
    }

    #[test]
    fn mutated_sealed_packets_never_open(edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>(), truncate in prop::bool::ANY) {
        let p = common::example("information-request.json");
        let sealed = common::ctx("IT-DCSA").seal(&p, &mut common::rng(1)).unwrap().remove(0).bytes;
        let mut b = sealed.clone();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        prop_assume!(b != sealed);
        prop_assert!(common::ctx("ES-UDYCO").open(&b, common::now()).is_err());
    }
}
