//! The committed test vectors open, verify, and match their JSON; and an independent
//! implementation (Python, cbor2 + cryptography, tests/vectors/verify_independent.py) agrees.

use crate::common;

use std::fs;
use std::path::PathBuf;

use liaison::keys::{Keyring, NodeKeys};
use liaison::packet::Packet;
use liaison::seal::{peek_route, verify_signed, SealContext};

fn dir() -> PathBuf {
    common::root().join("tests/vectors")
}

fn names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".cose").map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn keyring() -> Keyring {
    Keyring::load(&[common::root().join("certs-example/federation")]).unwrap()
}

/// Key files lose their 0600 mode in a git checkout: load the secrets from a private copy.
fn node_keys(node: &str) -> NodeKeys {
    let tmp = tempfile::tempdir().unwrap();
    for f in fs::read_dir(dir().join("keys").join(node)).unwrap() {
        let f = f.unwrap().path();
        let to = tmp.path().join(f.file_name().unwrap());
        fs::copy(&f, &to).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    NodeKeys::load_single(tmp.path()).unwrap()
}

#[test]
fn vectors_open_and_match_their_json() {
    let names = names();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let sealed = fs::read(dir().join(format!("{name}.cose"))).unwrap();
        let route = peek_route(&sealed).unwrap();
        let ctx = SealContext::new(node_keys(route.recipient.as_str()), keyring()).unwrap();
        let opened = ctx.open(&sealed, common::vectors_at()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let json = fs::read_to_string(dir().join(format!("{name}.json"))).unwrap();
        assert_eq!(opened.signed.packet, Packet::from_json(&json).unwrap(), "{name}");
        let sign1 = fs::read(dir().join(format!("{name}.sign1.cbor"))).unwrap();
        assert_eq!(opened.signed.bytes, sign1, "{name}: the inner COSE_Sign1 is the .sign1.cbor file");
        let verified = verify_signed(&keyring(), &sign1).unwrap();
        assert_eq!(verified.packet, opened.signed.packet);
    }
}

#[test]
fn vector_keys_are_the_demo_keys() {
    for node in common::DEMO_NODES {
        let k = node_keys(node);
        assert_eq!(**keyring().node(&common::node(node)).unwrap(), *k.public(), "{node}");
    }
}

#[test]
fn an_independent_cose_implementation_agrees() {
    let out = std::process::Command::new("python3")
        .arg(dir().join("verify_independent.py"))
        .output()
        .expect("python3 is needed (with cbor2 and cryptography; .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{} vectors verified independently", names().len())), "{stdout}");
}
