//! Schema and code cannot drift apart: every example packet, encoded by the code, validates
//! against the CDDL in schemas/, and so does real sealed output (both COSE layers).

use crate::common;

use std::fs;

use liaison::packet::Packet;

/// Map keys in the schemas are quoted (`"number": ...`): a bare `number` or `grading` would be
/// read by the cddl crate as the prelude type or the rule of that name.
///
/// The packet schema: packet.cddl first (its first rule, `packet`, is the root), then the rest.
fn packet_schema() -> String {
    let dir = common::root().join("schemas");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cddl"))
        .filter(|p| !p.ends_with("packet.cddl") && !p.ends_with("sealed.cddl"))
        .collect();
    files.sort();
    let mut doc = fs::read_to_string(dir.join("packet.cddl")).unwrap();
    for f in files {
        doc.push('\n');
        doc.push_str(&fs::read_to_string(f).unwrap());
    }
    doc
}

/// sealed.cddl with `root` made the first rule.
fn sealed_schema(root: &str) -> String {
    format!("start = {root}\n{}", fs::read_to_string(common::root().join("schemas/sealed.cddl")).unwrap())
}

fn validate(schema: &str, cbor: &[u8]) -> Result<(), String> {
    cddl::validate_cbor_from_slice(schema, cbor, None).map_err(|e| e.to_string())
}

#[test]
fn every_body_type_has_a_schema_file() {
    let doc = packet_schema();
    for t in liaison::packet::PacketType::ALL {
        let rule = t
            .as_str()
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let lower = c.to_ascii_lowercase();
                if c.is_ascii_uppercase() && i > 0 {
                    vec!['-', lower]
                } else {
                    vec![lower]
                }
            })
            .collect::<String>();
        assert!(doc.contains(&format!("\n{rule} = {{")), "no rule `{rule}` for {t}");
        assert!(common::root().join(format!("schemas/{rule}.cddl")).exists(), "no schemas/{rule}.cddl");
    }
}

#[test]
fn every_example_validates_against_the_cddl() {
    let schema = packet_schema();
    for (name, text) in common::valid_examples() {
        let p = Packet::from_json(&text).unwrap();
        validate(&schema, &p.to_cbor()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_schema_rejects_what_the_code_rejects() {
    // A sample of structural violations: the CDDL must not be looser than a map of anything.
    let schema = packet_schema();
    let p = common::example("information-request.json");
    let mut v: ciborium::Value = ciborium::from_reader(&p.to_cbor()[..]).unwrap();
    let env = v.as_map_mut().unwrap().iter_mut().find(|(k, _)| k.as_text() == Some("envelope")).unwrap();
    let fields = env.1.as_map_mut().unwrap();
    let prio = fields.iter_mut().find(|(k, _)| k.as_text() == Some("priority")).unwrap();
    prio.1 = ciborium::Value::Text("IMMEDIATE".into());
    let mut bad = Vec::new();
    ciborium::into_writer(&v, &mut bad).unwrap();
    assert!(validate(&schema, &bad).is_err(), "unknown priority accepted by the CDDL");
    assert!(Packet::from_cbor(&bad).is_err(), "unknown priority accepted by the code");
}

#[test]
fn sealed_output_validates_against_the_cddl() {
    let it = common::ctx("IT-DCSA");
    let es = common::ctx("ES-UDYCO");
    let p = common::example("information-request.json");
    let sealed = it.seal(&p, &mut common::rng(9)).unwrap();
    assert_eq!(sealed.len(), 1);
    validate(&sealed_schema("liaison-sealed"), &sealed[0].bytes).unwrap();
    let opened = es.open(&sealed[0].bytes, common::now()).unwrap();
    validate(&sealed_schema("liaison-signed"), &opened.signed.bytes).unwrap();
}
