//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

pub fn example(name: &str) -> Packet {
    let text = std::fs::read_to_string(root().join("schemas/examples").join(name)).unwrap();
    Packet::from_json(&text).unwrap()
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

/// A moment when every example is alive: one hour after they were written.
pub fn now() -> Timestamp {
    "2026-11-26T17:00:00Z".parse().unwrap()
}

pub fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}
