//! The `liaison` binary, run as a user would: keys, validate, seal, open, verify, demo, and the
//! exit codes (0 ok, 1 rejected input, 64 usage error).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn liaison(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liaison")).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example(name: &str) -> String {
    common::root().join("schemas/examples").join(name).to_string_lossy().into_owned()
}

/// The demo keys of `node` in a private directory (git does not keep the 0600 mode).
fn demo_keys(tmp: &Path, node: &str) -> PathBuf {
    let to = tmp.join(node);
    fs::create_dir_all(&to).unwrap();
    for f in fs::read_dir(common::root().join("certs-example/nodes").join(node)).unwrap() {
        let f = f.unwrap().path();
        let dest = to.join(f.file_name().unwrap());
        fs::copy(&f, &dest).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    to
}

/// `liaison packet open --keys KEYS --keyring <demo federation> EXTRA... FILE`.
fn open(keys: &Path, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["packet", "open", "--keys", keys.to_str().unwrap()];
    let fed = federation();
    args.extend(["--keyring", fed.as_str()]);
    args.extend(extra);
    args.push(file.to_str().unwrap());
    liaison(&args)
}

fn federation() -> String {
    common::root().join("certs-example/federation").to_string_lossy().into_owned()
}

#[test]
fn keys_generate_writes_private_files_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("keys");
    let o = liaison(&["keys", "generate", "--node", "IT-DCSA", "--out", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("IT-DCSA/sig/"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in ["IT-DCSA.sign.key", "IT-DCSA.enc.key"] {
            assert_eq!(fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
    }
    let public = fs::read_to_string(out.join("IT-DCSA.pub.toml")).unwrap();
    assert!(public.contains("signing_key") && !public.contains("secret ="));
    let before = fs::read(out.join("IT-DCSA.sign.key")).unwrap();
    let o = liaison(&["keys", "generate", "--node", "IT-DCSA", "--out", out.to_str().unwrap()]);
    assert_eq!(code(&o), 64);
    assert!(text(&o.stderr).contains("refusing to overwrite"), "{}", text(&o.stderr));
    assert_eq!(fs::read(out.join("IT-DCSA.sign.key")).unwrap(), before, "the key survived");

    let o = liaison(&["keys", "generate", "--node", "italy", "--out", out.to_str().unwrap()]);
    assert_eq!(code(&o), 64);
    assert!(text(&o.stderr).contains("invalid node id"), "{}", text(&o.stderr));
}

#[test]
fn validate_reports_the_field_and_exit_codes() {
    let o = liaison(&["packet", "validate", &example("information-request.json")]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("valid InformationRequest 019ac0a1-5c00-7000-8000-000000000003"));
    assert!(text(&o.stdout).contains("due by 2026-11-26T18:00:00Z"));

    let o = liaison(&["packet", "validate", &example("invalid/bad-iban.json")]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stderr).contains("body.InformationResponse.entities[6].account.identifier: not a valid IBAN"),
        "{}",
        text(&o.stderr)
    );
    let o = liaison(&["packet", "validate", "/nonexistent/packet.json"]);
    assert_eq!(code(&o), 64);
    let o = liaison(&["packet", "validate"]);
    assert_eq!(code(&o), 64);
    let o = liaison(&["packet", "frobnicate"]);
    assert_eq!(code(&o), 64);
    let o = liaison(&["--help"]);
    assert_eq!(code(&o), 0);
}

#[test]
fn seal_open_verify_round_trip_through_files() {
    let tmp = tempfile::tempdir().unwrap();
    let it = demo_keys(tmp.path(), "IT-DCSA");
    let es = demo_keys(tmp.path(), "ES-UDYCO");
    let co = demo_keys(tmp.path(), "CO-DIJIN");
    let out = tmp.path().join("out");
    let request = tmp.path().join("request.json");
    let current = common::example_json("information-request.json");
    fs::write(&request, current.to_string()).unwrap();
    let o = liaison(&[
        "packet",
        "seal",
        "--keys",
        it.to_str().unwrap(),
        "--keyring",
        &federation(),
        "--out",
        out.to_str().unwrap(),
        request.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let sealed = out.join("019ac0a1-5c00-7000-8000-000000000003.ES-UDYCO.cose");
    assert!(sealed.exists(), "{}", text(&o.stdout));

    let evidence = tmp.path().join("evidence.cbor");
    let o = open(&es, &sealed, &["--signed-out", evidence.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let opened = liaison::packet::Packet::from_json(&text(&o.stdout)).unwrap();
    assert_eq!(opened, liaison::packet::Packet::from_json(&current.to_string()).unwrap());
    assert!(text(&o.stderr).contains("signed by IT-DCSA/sig/"), "{}", text(&o.stderr));

    // The evidence verifies with public keys alone, and shows no content.
    let o = liaison(&["packet", "verify", "--keyring", &federation(), evidence.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("signature valid"));
    assert!(!text(&o.stdout).contains("+34612345678"), "verify prints no payload");

    // Not for CO-DIJIN.
    let o = open(&co, &sealed, &[]);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains("rejected (not_for_me)"), "{}", text(&o.stderr));

    // Tampered in transit.
    let mut bytes = fs::read(&sealed).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = tmp.path().join("bad.cose");
    fs::write(&bad, &bytes).unwrap();
    let o = open(&es, &bad, &[]);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains("rejected ("), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("rejected (expired)"), "refused for the tampering: {}", text(&o.stderr));
    assert!(o.stdout.is_empty(), "nothing is printed from a rejected packet");

    // Expired by the time it is opened.
    let o = open(&es, &sealed, &["--at", "now+400d"]);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains("rejected (expired)"), "{}", text(&o.stderr));
}

#[test]
fn seal_a_draft_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let it = demo_keys(tmp.path(), "IT-DCSA");
    let mut v = common::draft("information-request.json");
    v["envelope"]["originator"]["node"] = "IT-DCSA".into();
    let out = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["packet", "seal", "--draft", "--keys", it.to_str().unwrap(), "--keyring", &federation(), "--out"])
        .arg(&out)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(v.to_string().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn insecure_key_permissions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let it = demo_keys(tmp.path(), "IT-DCSA");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(it.join("IT-DCSA.sign.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let o = liaison(&[
            "packet",
            "seal",
            "--keys",
            it.to_str().unwrap(),
            "--out",
            tmp.path().to_str().unwrap(),
            &example("information-request.json"),
        ]);
        assert_eq!(code(&o), 64);
        assert!(text(&o.stderr).contains("too open"), "{}", text(&o.stderr));
    }
}

#[test]
fn demo_runs_every_step() {
    let o = liaison(&["demo"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}\n{}", text(&o.stderr));
    for step in 1..=8 {
        assert!(out.contains(&format!("== {step}.")), "step {step} missing:\n{out}");
    }
    assert_eq!(out.matches(" ready").count(), 3, "three node processes started:\n{out}");
    assert!(out.contains("accepted "), "{out}");
    assert!(out.contains("RECEIPT from ES-UDYCO") && out.contains("RECEIPT from IT-DCSA"), "{out}");
    assert_eq!(out.matches("INBOX FLASH ControlledDeliveryAlert from CO-DIJIN").count(), 2, "{out}");
    assert!(out.contains("READ by Isp. Giulia Rossi at IT-DCSA"), "{out}");
    assert_eq!(out.matches(" delivered 20").count(), 2, "{out}");
    assert!(out.contains("read by Isp. Giulia Rossi"), "{out}");
    assert!(out.contains("person.date_of_birth (send.redact.person)"), "{out}");
    assert!(out.contains("entities[6].account (send.redact.account)"), "{out}");
    assert!(out.contains("REFUSED (onward."), "{out}");
    assert!(out.contains("CO-DIJIN stored the answer without the removed fields"), "{out}");
    assert_eq!(out.matches(" intact: entries 1..").count(), 3, "{out}");
    assert_eq!(out.matches("stopped cleanly").count(), 3, "{out}");
    assert!(out.trim_end().ends_with("demo complete: every step verified"), "{out}");
}

/// `openssl` with these arguments, if it is installed (CI installs it; elsewhere the check is
/// skipped with a note).
fn openssl(dir: &Path, args: &[&str]) -> Option<Output> {
    match Command::new("openssl").current_dir(dir).args(args).output() {
        Ok(o) => Some(o),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("openssl not run ({e}): its checks are skipped here; CI runs them");
            None
        }
        Err(e) => panic!("openssl: {e} (.ci/run installs it)"),
    }
}

#[test]
fn pki_makes_a_federation_that_openssl_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_liaison")).current_dir(d).args(args).output().unwrap();
        (code(&o), text(&o.stdout), text(&o.stderr))
    };
    let (c, out, err) = run(&["pki", "init-ca", "--dir", "ca", "--name", "Test federation CA"]);
    assert_eq!(c, 0, "{out}{err}");
    // The node makes its key and request; the CA signs it with the names it decides.
    assert_eq!(run(&["pki", "csr", "--node", "FR-OFAST", "--out", "fr"]).0, 0);
    let (c, out, err) = run(&[
        "pki",
        "sign-csr",
        "--ca",
        "ca",
        "--node",
        "FR-OFAST",
        "--csr",
        "fr/FR-OFAST.csr",
        "--days",
        "90",
        "--out",
        "fr/FR-OFAST.crt",
    ]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("FR-OFAST  serial "), "{out}");
    let (c, out, err) = run(&["pki", "issue", "--ca", "ca", "--node", "IT-DCSA", "--out", "it"]);
    assert_eq!(c, 0, "{out}{err}");
    #[cfg(unix)]
    for key in ["ca/ca.key", "fr/FR-OFAST.key", "it/IT-DCSA.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(d.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
    }
    // Never over an existing key.
    let (c, _, err) = run(&["pki", "issue", "--ca", "ca", "--node", "IT-DCSA", "--out", "it"]);
    assert_eq!(c, 64, "{err}");
    assert!(err.contains("already exists"), "{err}");

    let (c, show, _) = run(&["pki", "show", "it/IT-DCSA.crt"]);
    assert_eq!(c, 0);
    assert!(show.contains("it-dcsa.node.liaison") && show.contains("days left"), "{show}");
    let serial = show.lines().find_map(|l| l.trim().strip_prefix("serial")).unwrap().trim().to_owned();
    let (c, out, err) = run(&["pki", "revoke", "--ca", "ca", "--serial", &serial, "--reason", "superseded"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, _, err) = run(&["pki", "revoke", "--ca", "ca", "--serial", &serial]);
    assert_eq!(c, 1, "revoked twice: {err}");
    assert!(err.contains("revoked already"), "{err}");
    let (c, out, err) = run(&["pki", "crl", "--ca", "ca", "--days", "7", "--out", "crl.pem"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("1 revoked, next update"), "{out}");

    let (c, list, _) = run(&["pki", "list", "--ca", "ca"]);
    assert_eq!(c, 0);
    let fr = list.lines().find(|l| l.contains("FR-OFAST")).unwrap();
    let it = list.lines().find(|l| l.contains("IT-DCSA")).unwrap();
    assert!(fr.ends_with("valid"), "{list}");
    assert!(it.contains("revoked") && it.contains("superseded"), "{list}");
    let (_, json, _) = run(&["pki", "list", "--ca", "ca", "--json"]);
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["from_request"], true);
    assert_eq!(rows[1]["state"], "revoked");

    // A request that is not one, and a CA directory that is not one: clear errors.
    let (c, _, err) =
        run(&["pki", "sign-csr", "--ca", "ca", "--node", "FR-OFAST", "--csr", "ca/ca.crt", "--out", "x.crt"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("not a PEM certificate request"), "{err}");
    let (c, _, err) = run(&["pki", "list", "--ca", "fr"]);
    assert_eq!(c, 64, "{err}");
    assert!(err.contains("not a liaison CA directory"), "{err}");

    let Some(v) = openssl(d, &["verify", "-CAfile", "ca/ca.crt", "fr/FR-OFAST.crt", "it/IT-DCSA.crt"]) else {
        return;
    };
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    let crl = openssl(d, &["crl", "-in", "crl.pem", "-noout", "-text"]).unwrap();
    assert!(crl.status.success(), "{}", text(&crl.stderr));
    let crl = text(&crl.stdout);
    assert!(crl.contains(&serial.to_ascii_uppercase()) && crl.contains("Superseded"), "{crl}");
    assert!(crl.contains("Next Update"), "{crl}");
    let checked =
        openssl(d, &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "ca/ca.crt", "it/IT-DCSA.crt"]).unwrap();
    assert!(!checked.status.success(), "openssl sees the revocation");
    assert!(text(&checked.stdout).contains("revoked") || text(&checked.stderr).contains("revoked"));
    let fine = openssl(d, &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "ca/ca.crt", "fr/FR-OFAST.crt"])
        .unwrap();
    assert!(fine.status.success(), "{}", text(&fine.stderr));
    let x = text(&openssl(d, &["x509", "-in", "fr/FR-OFAST.crt", "-noout", "-text"]).unwrap().stdout);
    assert!(x.contains("DNS:fr-ofast.node.liaison") && x.contains("CA:FALSE"), "{x}");
    assert!(x.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{x}");
}

/// `demo --web` leaves the federation running with an officer account on each node's web
/// workspace, and the addresses, passwords and current codes it prints sign in.
#[test]
fn demo_with_the_web_workspace_prints_accounts_that_sign_in() {
    use std::io::{BufRead, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["demo", "--web"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let codes = loop {
        let line = lines.next().expect("the demo goes on").unwrap();
        seen.push(line.clone());
        if let Some(codes) = line.trim().strip_prefix("codes now: ") {
            break codes.to_owned();
        }
    };
    let it = seen.iter().find(|l| l.trim_start().starts_with("IT-DCSA") && l.contains("http://")).unwrap();
    let url = it.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches('/').to_owned();
    let password = it.split("password ").nth(1).unwrap().trim().to_owned();
    let code = codes.split("IT-DCSA ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let signed = common::http::sign_in(&url, "demo.officer", &password, &code);
    assert_eq!(signed.status, 303, "{}\n{}", signed.body, seen.join("\n"));
    writeln!(child.stdin.take().unwrap()).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest.iter().filter(|l| l.contains("stopped cleanly")).count(), 3, "{rest:?}");
}
