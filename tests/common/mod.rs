//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod http;

use std::path::{Path, PathBuf};

use coset::TaggedCborSerializable as _;
use liaison::ids::NodeId;
use liaison::keys::{Keyring, NodeKeys};
use liaison::packet::Packet;
use liaison::seal::SealContext;
use liaison::timestamp::Timestamp;
use rand_core::SeedableRng;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(file name, text)` of every valid example, sorted by name.
pub fn valid_examples() -> Vec<(String, String)> {
    read_dir_json(&root().join("schemas/examples"))
}

/// `(file name, text)` of every invalid example, sorted by name.
pub fn invalid_examples() -> Vec<(String, String)> {
    read_dir_json(&root().join("schemas/examples/invalid"))
}

fn read_dir_json(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// When the examples in `schemas/examples/` were written: each of them is alive then.
pub const EXAMPLES_WRITTEN: &str = "2026-11-26T17:00:00Z";

/// The moment the test vectors in `tests/vectors/` are opened at, as `--at` on the command line
/// does: they are signed bytes, so their dates cannot be moved (tests/vectors/README.md).
pub fn vectors_at() -> Timestamp {
    EXAMPLES_WRITTEN.parse().unwrap()
}

/// Now, from the real clock. No test may depend on today's date: take every time from here or
/// from [`example`] / [`draft`], which move the examples' dates to it.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// The JSON of example `name` made current: every date and time in it (envelope and body) moved
/// by the same amount, so that it is as old now as it was when the examples were written. The one
/// way tests take dates from the examples.
pub fn example_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("schemas/examples").join(name)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let written: Timestamp = EXAMPLES_WRITTEN.parse().unwrap();
    liaison::packet::shift_times(&mut v, now().unix() - written.unix()).unwrap();
    v
}

/// Example `name`, made current (see [`example_json`]).
pub fn example(name: &str) -> Packet {
    Packet::from_json(&example_json(name).to_string()).unwrap()
}

/// Example `name` made current, as a draft a node completes: id, created, due_by and the
/// originator's node are left out for the node to fill in.
pub fn draft(name: &str) -> serde_json::Value {
    let mut v = example_json(name);
    let env = v["envelope"].as_object_mut().unwrap();
    for k in ["id", "created", "due_by"] {
        env.remove(k);
    }
    env["originator"].as_object_mut().unwrap().remove("node");
    v
}

pub fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

pub const DEMO_NODES: [&str; 3] = ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"];

/// Deterministic secret key bytes for a node: (Ed25519 seed, X25519 secret).
pub fn secret_bytes(name: &str) -> ([u8; 32], [u8; 32]) {
    use sha2::Digest as _;
    (sha2::Sha256::digest(format!("sig {name}")).into(), sha2::Sha256::digest(format!("enc {name}")).into())
}

/// Deterministic keys for a node (derived from its name).
pub fn keys(name: &str) -> NodeKeys {
    let (s, e) = secret_bytes(name);
    NodeKeys::from_secret_bytes(node(name), &s, e)
}

/// The keyring of the three demo nodes.
pub fn keyring() -> Keyring {
    let mut k = Keyring::new();
    for n in DEMO_NODES {
        k.add(keys(n).public().clone()).unwrap();
    }
    k
}

/// A seal context for `name` knowing the three demo nodes.
pub fn ctx(name: &str) -> SealContext {
    SealContext::new(keys(name), keyring()).unwrap()
}

pub fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}

/// A COSE_Sign1 over `payload` with any protected header, signed by the Ed25519 seed `seed`.
pub fn forge_sign1(seed: &[u8; 32], kid: &[u8], payload: Vec<u8>, tweak: impl FnOnce(&mut coset::Header)) -> Vec<u8> {
    let sk = ed25519_dalek::SigningKey::from_bytes(seed);
    let mut h = coset::HeaderBuilder::new().algorithm(coset::iana::Algorithm::Ed25519).key_id(kid.to_vec()).build();
    tweak(&mut h);
    coset::CoseSign1Builder::new()
        .protected(h)
        .payload(payload)
        .create_signature(b"", |tbs| ed25519_dalek::Signer::sign(&sk, tbs).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap()
}

/// Encrypts arbitrary inner bytes from `from` to `to`, with the routing header of `packet`.
pub fn encrypt_raw(from: &str, to: &str, packet: &Packet, inner: Vec<u8>) -> Vec<u8> {
    encrypt_as(&ctx(from), to, packet, inner)
}

/// Encrypts arbitrary inner bytes with `ctx`'s keys for `to`, with the routing header of
/// `packet`: what a partner holding its own keys can send.
pub fn encrypt_as(ctx: &SealContext, to: &str, packet: &Packet, inner: Vec<u8>) -> Vec<u8> {
    let signed = liaison::seal::SignedPacket {
        bytes: inner,
        packet: packet.clone(),
        signer: ctx.public().signing_kid.clone(),
        policy: None,
    };
    ctx.encrypt_for(&signed, &node(to), &mut rand_core::OsRng).unwrap().bytes
}

/// The headers a genuine signature carries, for a packet.
pub fn genuine_headers(p: &Packet) -> impl FnOnce(&mut coset::Header) + '_ {
    move |h| {
        h.rest.push((coset::Label::Text("liaison.pid".into()), ciborium::Value::Text(p.envelope.id.to_string())));
        h.rest.push((
            coset::Label::Text("liaison.orig".into()),
            ciborium::Value::Text(p.envelope.originator.node.to_string()),
        ));
        h.rest
            .push((coset::Label::Text("liaison.type".into()), ciborium::Value::Text(p.packet_type().as_str().into())));
    }
}

/// A COSE_Sign1 by `ctx`'s node over `payload` (any bytes), with the headers a genuine
/// signature of `p` carries plus `tweak`: what a partner, which holds its own keys, can sign.
pub fn sign_as(ctx: &SealContext, p: &Packet, payload: Vec<u8>, tweak: impl FnOnce(&mut coset::Header)) -> Vec<u8> {
    let mut h = coset::HeaderBuilder::new()
        .algorithm(coset::iana::Algorithm::Ed25519)
        .key_id(ctx.public().signing_kid.as_bytes().to_vec())
        .build();
    genuine_headers(p)(&mut h);
    tweak(&mut h);
    coset::CoseSign1Builder::new()
        .protected(h)
        .payload(payload)
        .create_signature(b"", |tbs| ctx.sign_detached(tbs).to_vec())
        .build()
        .to_tagged_vec()
        .unwrap()
}
