//! Real node processes (`liaison serve`) on loopback with real sled stores and the demo
//! certificates: packets through the CLI and the local API, receipts, acknowledgements, kill -9
//! of either side in the middle of a stream of 1,000 packets, and the API's refusals.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::cluster::*;
use common::root;
use liaison::client::call;
use serde_json::{json, Value};

/// An example packet made current, as a draft (see `common::draft`).
fn draft(example: &str) -> Value {
    common::draft(example)
}

/// Copies delivered since the node started (`/v1/outbox` counts outcomes of this run).
fn delivered_count(n: &NodeProc) -> u64 {
    n.summary()["delivered"].as_u64().unwrap_or(0)
}

/// Copies waiting (queued or in flight): every one, whenever it was submitted, once the outbox
/// is loaded after a start (`None` before).
fn waiting_count(n: &NodeProc) -> Option<u64> {
    let s = n.summary();
    (s["loading"] == false).then(|| s["queued"].as_u64().unwrap_or(0) + s["in_flight"].as_u64().unwrap_or(0))
}

#[test]
fn two_nodes_exchange_every_packet_type_through_the_cli() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let dir = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    let types = [
        "controlled-delivery-alert.json",
        "jit-notice.json",
        "information-request.json",
        "information-response.json",
        "refusal.json",
        "delay-notice.json",
        "clarification-request.json",
    ];
    for (i, t) in types.iter().enumerate() {
        let f = dir.path().join(t);
        fs::write(&f, draft(t).to_string()).unwrap();
        let o = c.node("IT-DCSA").cli(&["send", "--to", "ES-UDYCO", "--json", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{t}: {}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        sent.push(v["id"].as_str().unwrap().to_owned());
        assert_eq!(sent.len(), i + 1);
    }
    let it = c.node("IT-DCSA");
    wait_for("all delivered", Duration::from_secs(30), || delivered_count(it) == types.len() as u64);

    // status tells the truth: delivered, with the receipt's time and digest.
    let o = it.cli(&["status", &sent[0]]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ES-UDYCO") && text.contains("delivered") && text.contains("sha256:"), "{text}");

    let es = c.node("ES-UDYCO");
    let inbox = es.inbox_ids();
    assert_eq!(inbox.iter().collect::<HashSet<_>>(), sent.iter().collect::<HashSet<_>>());
    let o = es.cli(&["inbox"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("UNREAD").count(), types.len(), "{text}");
    let o = es.cli(&["show", &sent[2]]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("InformationRequest"));
    let o = es.cli(&["ack", "--officer", "Subinspector Gómez", &sent[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    let it = c.node("IT-DCSA");
    wait_for("read ack", Duration::from_secs(20), || {
        let (_, v) = it.api("GET", &format!("/v1/packets/{}", sent[0]), None);
        v["recipients"][0]["read_by"] == "Subinspector Gómez"
    });
    let o = it.cli(&["status", &sent[0]]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("read by Subinspector Gómez"));

    // Ordered shutdown on SIGTERM.
    for n in &mut c.nodes {
        n.terminate();
        let log = fs::read_to_string(&n.log).unwrap();
        assert!(log.contains("node stopped"), "{log}");
    }
}

#[test]
fn a_flash_alert_to_two_partners_gets_two_receipts() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let co = c.node("CO-DIJIN");
    let (code, v) =
        co.api("POST", "/v1/packets?to=ES-UDYCO,IT-DCSA", Some(&draft("controlled-delivery-alert.json").to_string()));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for("both delivered", Duration::from_secs(20), || {
        let (_, s) = co.api("GET", &format!("/v1/packets/{id}"), None);
        s["recipients"].as_array().unwrap().iter().all(|r| r["state"] == "delivered")
    });
    let (_, s) = co.api("GET", &format!("/v1/packets/{id}"), None);
    let recipients: Vec<&str> =
        s["recipients"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(recipients, ["ES-UDYCO", "IT-DCSA"]);
    assert_eq!(c.node("ES-UDYCO").inbox_ids(), std::slice::from_ref(&id));
    assert_eq!(c.node("IT-DCSA").inbox_ids(), [id]);
}

/// Passing an H2 alert on, through the CLI of real processes: refused without the
/// originator's consent (naming the rule), consented by the originator, then passed on; the
/// answers parse into the API's own types (`--json`).
#[test]
fn an_h2_alert_is_passed_on_through_the_cli_once_its_originator_consents() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let dir = tempfile::tempdir().unwrap();
    let alert = dir.path().join("alert.json");
    fs::write(&alert, draft("controlled-delivery-alert.json").to_string()).unwrap();
    let co = c.node("CO-DIJIN");
    let o = co.cli(&["send", "--to", "ES-UDYCO", "--json", alert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let sent: liaison::api::types::SubmitAnswer = serde_json::from_slice(&o.stdout).unwrap();
    let id = sent.submitted.id.to_string();
    wait_for("the alert at ES-UDYCO", Duration::from_secs(30), || delivered_count(co) == 1);

    let es = c.node("ES-UDYCO");
    let forward = |es: &NodeProc| es.cli(&["forward", "--to", "IT-DCSA", "--officer", "Subinspector Gómez", &id]);
    let o = forward(es);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("IT-DCSA: onward.consent_required"), "{stderr}");

    let co = c.node("CO-DIJIN");
    let args = ["consent", "--holder", "ES-UDYCO", "--allow", "IT-DCSA", "--until", "now+1d"];
    let o = co.cli(&[&args[..], &["--officer", "My. Andrea Salcedo", "--json", &id]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let consent: liaison::api::types::SubmitAnswer = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(consent.recipients, ["ES-UDYCO".parse().unwrap()]);
    wait_for("the consent at ES-UDYCO", Duration::from_secs(30), || delivered_count(co) == 2);

    let es = c.node("ES-UDYCO");
    let o = forward(es);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let passed = out.strip_prefix("passed on as ").and_then(|r| r.split(' ').next()).unwrap().to_owned();
    assert!(out.trim_end().ends_with("to IT-DCSA"), "{out}");
    let it = c.node("IT-DCSA");
    wait_for("the alert at IT-DCSA", Duration::from_secs(30), || it.inbox_ids().contains(&passed));
    let o = it.cli(&["show", "--json", &passed]);
    let shown: liaison::api::types::Shown = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown.from.as_str(), "ES-UDYCO");
    assert_eq!(shown.packet.envelope.id.to_string(), id, "the original, as CO-DIJIN signed it");
}

#[test]
fn the_api_refuses_the_unauthenticated_and_names_bad_fields() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let it = c.node("IT-DCSA");
    for token in ["", "wrong", "test-token-ES-UDYCO"] {
        let (code, v) = call(&it.api, token, "GET", "/v1/inbox", None).unwrap();
        assert_eq!(code, 401, "{v}");
        let (code, _) = call(&it.api, token, "POST", "/v1/packets", Some(&draft("refusal.json").to_string())).unwrap();
        assert_eq!(code, 401);
    }
    let mut bad = draft("information-request.json");
    bad["envelope"]["recipients"] = json!(["es-udyco"]);
    let (code, v) = it.api("POST", "/v1/packets", Some(&bad.to_string()));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["field"], "envelope.recipients[0]");
    let (code, v) = it.api("POST", "/v1/packets", Some("{not json"));
    assert_eq!(code, 400, "{v}");
    let (code, v) = it.api("POST", "/v1/packets?to=DE-BKA", Some(&draft("refusal.json").to_string()));
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a partner"), "{v}");
    let (code, _) = it.api("GET", "/v1/packets/019ac0a1-5c00-7000-8000-00000000dead", None);
    assert_eq!(code, 404);
    // Request bodies are the API's types: the field at fault is named.
    let (code, v) = it.api("POST", &format!("/v1/inbox/{}/ack", "019ac0a1-5c00-7000-8000-00000000dead"), Some("{}"));
    assert_eq!((code, v["field"].as_str()), (400, Some("officer")), "{v}");
    let bad = json!({ "to": ["IT-DCSA", "not a node"], "officer": "Isp. Rossi" }).to_string();
    let (code, v) = it.api("POST", "/v1/inbox/019ac0a1-5c00-7000-8000-00000000dead/forward", Some(&bad));
    assert_eq!((code, v["field"].as_str()), (400, Some("to[1]")), "{v}");
    let (code, v) = it.api("GET", "/v1/packets/not-an-id", None);
    assert_eq!((code, v["field"].as_str()), (400, Some("id")), "{v}");
    // The CLI parses ids itself: a bad one is a usage error, before anything is asked.
    let o = it.cli(&["status", "not-an-id"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("invalid packet id \"not-an-id\""), "{stderr}");
}

/// A small packet from `from` to `to`, numbered `i`.
fn small(to: &str, i: usize) -> String {
    let mut body = draft("clarification-request.json");
    body["envelope"]["recipients"] = json!([to]);
    body["body"]["ClarificationRequest"]["questions"] = json!([format!("question {i}")]);
    body.to_string()
}

/// Submits packets `range` from `api` to `to`; returns the ids the node acknowledged.
fn stream(api: &str, token: &str, to: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            let (code, v) = call(api, token, "POST", "/v1/packets", Some(&small(to, i))).unwrap();
            assert_eq!(code, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn assert_exactly_once(sent: &[String], inbox: &[String]) {
    let unique: HashSet<&String> = inbox.iter().collect();
    assert_eq!(unique.len(), inbox.len(), "a packet is in the inbox twice");
    assert_eq!(unique, sent.iter().collect::<HashSet<_>>(), "inbox differs from what was sent");
}

#[test]
fn kill_9_of_the_receiver_mid_stream_loses_nothing_and_shows_nothing_twice() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let (api, token) = (c.node("IT-DCSA").api.clone(), c.node("IT-DCSA").token.clone());
    // IT-DCSA keeps submitting while ES-UDYCO is killed and restarted.
    let submitter = std::thread::spawn(move || stream(&api, &token, "ES-UDYCO", 0..1000));
    let es = c.node("ES-UDYCO");
    wait_for("the stream to start arriving", Duration::from_secs(60), || es.inbox_ids().len() >= 50);
    es.kill_9();
    let at_kill = delivered_count(c.node("IT-DCSA"));
    assert!(at_kill < 1000, "the kill came too late to test anything ({at_kill} delivered)");
    std::thread::sleep(Duration::from_millis(300));
    c.node("ES-UDYCO").start();
    let sent = submitter.join().unwrap();
    let it = c.node("IT-DCSA");
    wait_for("all delivered after restart", Duration::from_secs(120), || delivered_count(it) == 1000);
    assert_exactly_once(&sent, &c.node("ES-UDYCO").inbox_ids());
    eprintln!("receiver killed with {at_kill} of 1000 delivered");
}

#[test]
fn kill_9_of_the_sender_mid_stream_loses_nothing_and_shows_nothing_twice() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let (api, token) = (c.node("IT-DCSA").api.clone(), c.node("IT-DCSA").token.clone());
    // A backlog builds up while ES-UDYCO is down; IT-DCSA is killed while it drains it.
    c.node("ES-UDYCO").kill_9();
    let mut sent = stream(&api, &token, "ES-UDYCO", 0..600);
    c.node("ES-UDYCO").start();
    let es = c.node("ES-UDYCO");
    wait_for("the backlog to start arriving", Duration::from_secs(60), || !es.inbox_ids().is_empty());
    c.node("IT-DCSA").kill_9();
    let at_kill = c.node("ES-UDYCO").inbox_ids().len();
    assert!(at_kill < 600, "the kill came too late to test anything");
    c.node("IT-DCSA").start();
    sent.extend(stream(&api, &token, "ES-UDYCO", 600..1000));
    let it = c.node("IT-DCSA");
    // What was delivered before the kill is on disk and counted no more: each copy's state is.
    wait_for("nothing waiting after restart", Duration::from_secs(120), || waiting_count(it) == Some(0));
    assert!(sent.iter().all(|id| state_of(it, id) == "delivered"), "every copy delivered");
    assert_exactly_once(&sent, &c.node("ES-UDYCO").inbox_ids());
    eprintln!("sender killed with {at_kill} of a 600-packet backlog delivered");
}

#[test]
fn a_bad_configuration_is_refused_with_every_problem_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    fs::write(&f, "[node]\nid = \"italy\"\nlisten = \"x\"\ndata_dir = \"d\"\n[keys]\ndir = \"k\"\nkeyring = []\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[api]\nlisten = \"0.0.0.0:1\"\n").unwrap();
    let o = Command::new(BIN).args(["serve", "--config"]).arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["node.id", "node.listen", "keys.dir", "tls.ca", "loopback"] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    assert!(!dir.path().join("d").exists(), "nothing was created");
    let o = Command::new(BIN).args(["serve", "--config", "/nonexistent.toml"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64));
}

/// The self-check: a node whose certificate is from a foreign CA, expired, or names another
/// node, or whose key files others may read, does not start, and says every problem at once;
/// `liaison config check` says the same offline.
#[test]
fn a_node_with_bad_files_refuses_to_start_naming_every_problem() {
    let c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], Setup { stopped: vec!["IT-DCSA", "ES-UDYCO"], ..Setup::default() });
    let it = c.get("IT-DCSA");
    let tls = it.config.parent().unwrap().join("certs/tls");
    let keys = it.config.parent().unwrap().join("certs/nodes/IT-DCSA");
    let put = |from: &str, to: &str| fs::copy(tls.join(from), tls.join(to)).map(|_| ()).unwrap();
    #[cfg(unix)]
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |wants: &[&str]| {
        let o = Command::new(BIN).args(["serve", "--config"]).arg(&it.config).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(64), "{err}");
        let check = Command::new(BIN).args(["config", "check", "--config"]).arg(&it.config).output().unwrap();
        let said = String::from_utf8_lossy(&check.stdout).into_owned();
        assert_eq!(check.status.code(), Some(1), "{said}");
        for want in wants {
            assert!(err.contains(want), "serve does not say {want:?}:\n{err}");
            assert!(said.contains(want), "config check does not say {want:?}:\n{said}");
        }
        assert!(!it.data_dir.exists(), "nothing was created");
    };
    // From another CA, and both key files readable by others: three problems, one run.
    put("bad/foreign.crt", "IT-DCSA.crt");
    put("bad/foreign.key", "IT-DCSA.key");
    #[cfg(unix)]
    {
        chmod(&tls.join("IT-DCSA.key"), 0o644);
        chmod(&keys.join("IT-DCSA.sign.key"), 0o644);
    }
    refused(&["not issued by the federation CA", "IT-DCSA.key: permissions 644", "IT-DCSA.sign.key: permissions 644"]);
    #[cfg(unix)]
    {
        chmod(&tls.join("IT-DCSA.key"), 0o600);
        chmod(&keys.join("IT-DCSA.sign.key"), 0o600);
    }
    // Expired; then another node's certificate (and its key).
    put("bad/expired.crt", "IT-DCSA.crt");
    put("bad/expired.key", "IT-DCSA.key");
    refused(&["tls.cert", "expired on"]);
    put("ES-UDYCO.crt", "IT-DCSA.crt");
    put("ES-UDYCO.key", "IT-DCSA.key");
    refused(&["does not name this node IT-DCSA", "es-udyco.node.liaison"]);
    // A key that is not the certificate's, and a revoked certificate.
    put("bad/revoked.crt", "IT-DCSA.crt");
    refused(&["is not the key of tls.cert", "revoked (serial"]);
    // Put right, the check passes.
    for f in ["IT-DCSA.crt", "IT-DCSA.key"] {
        fs::copy(root().join("certs-example/tls").join(f), tls.join(f)).unwrap();
    }
    #[cfg(unix)]
    chmod(&tls.join("IT-DCSA.key"), 0o600);
    let check = Command::new(BIN).args(["config", "check", "--config"]).arg(&it.config).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(said.contains("IT-DCSA ok (0 warning(s))"), "{said}");
    // A CRL past its next update: a warning by default, a refusal where the config says so.
    let ca = liaison::pki::Ca::from_pem(
        &fs::read_to_string(tls.join("ca.crt")).unwrap(),
        &fs::read_to_string(tls.join("ca.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let stale = ca.crl(&[], now - time::Duration::days(10), now - time::Duration::days(3), 99).unwrap();
    fs::write(tls.join("crl.pem"), stale).unwrap();
    let check = Command::new(BIN).args(["config", "check", "--config"]).arg(&it.config).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(said.contains("warning  tls.crls") && said.contains("stale"), "{said}");
    let check = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&it.config)
        .env("LIAISON__TLS__STALE_CRL", "refuse")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains("PROBLEM  tls.crls") && said.contains("stale"), "{said}");
}

#[test]
fn a_second_node_on_the_same_data_directory_is_told_so() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let it = c.node("IT-DCSA");
    // The same data directory, another port: refused before anything is touched.
    let text = fs::read_to_string(&it.config).unwrap();
    let other = it.config.with_file_name("second.toml");
    fs::write(&other, text.replace(&format!(":{}\"", it.quic), ":1\"")).unwrap();
    let o = Command::new(BIN).args(["serve", "--config"]).arg(&other).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("data directory is in use by another process"), "{err}");
    // The running node is untouched: it still sends.
    let (code, v) = it.api("POST", "/v1/packets?to=ES-UDYCO", Some(&draft("information-request.json").to_string()));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for("delivered", Duration::from_secs(20), || state_of(it, &id) == "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_spoofed_and_replayed_packets() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    c.node("ES-UDYCO").kill_9(); // this test speaks for ES-UDYCO itself
    let port = c.node("IT-DCSA").quic;
    let es = seal_context("ES-UDYCO");
    let peer = RawPeer::new(
        liaison::transport::client_config(&demo_material("ES-UDYCO.crt", "ES-UDYCO.key"), Default::default()).unwrap(),
    );

    // Tampered in transit: a signed rejection naming the check, and nothing stored.
    let mut tampered = es.seal(&packet_from("ES-UDYCO", "IT-DCSA"), &mut rand_core::OsRng).unwrap().remove(0).bytes;
    let at = tampered.len() - 30;
    tampered[at] ^= 0x01;
    let answer = peer.send(port, "IT-DCSA", &tampered).await.unwrap();
    match receipt_outcome(&es, &answer) {
        liaison::packet::ReceiptOutcome::Rejected { code, .. } => assert_eq!(code, "decryption_failed"),
        other => panic!("{other:?}"),
    }
    assert!(c.node("IT-DCSA").inbox_ids().is_empty());

    // A packet sealed by CO-DIJIN, pushed over ES-UDYCO's connection: refused.
    let co = seal_context("CO-DIJIN");
    let foreign = co.seal(&packet_from("CO-DIJIN", "IT-DCSA"), &mut rand_core::OsRng).unwrap().remove(0).bytes;
    let answer = peer.send(port, "IT-DCSA", &foreign).await.unwrap();
    match receipt_outcome(&es, &answer) {
        liaison::packet::ReceiptOutcome::Rejected { code, reason } => {
            assert_eq!(code, "header_mismatch");
            assert!(reason.contains("over the connection of ES-UDYCO"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // A valid packet, replayed: receipted both times with the same statement, shown once.
    let good = es.seal(&packet_from("ES-UDYCO", "IT-DCSA"), &mut rand_core::OsRng).unwrap().remove(0).bytes;
    let first = receipt_item(&es, &peer.send(port, "IT-DCSA", &good).await.unwrap());
    assert_eq!(first.outcome, liaison::packet::ReceiptOutcome::Accepted);
    assert_eq!(first.sealed_digest, liaison::encoding::Digest::of(&good));
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later second, so a new time would show
    let again = receipt_item(&es, &peer.send(port, "IT-DCSA", &good).await.unwrap());
    assert_eq!(again, first, "the replay is receipted as the first arrival (same time, same digest)");
    assert_eq!(c.node("IT-DCSA").inbox_ids().len(), 1);
    let log = fs::read_to_string(&c.node("IT-DCSA").log).unwrap();
    assert!(
        log.contains("decryption_failed") && log.contains("header_mismatch"),
        "rejections are logged with their reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_valid_enrolled_certificate_are_refused() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    c.node("ES-UDYCO").kill_9();
    let port = c.node("IT-DCSA").quic;
    let es = seal_context("ES-UDYCO");
    let packet = es.seal(&packet_from("ES-UDYCO", "IT-DCSA"), &mut rand_core::OsRng).unwrap().remove(0).bytes;
    let clients = [
        (
            "another CA",
            liaison::transport::client_config(&demo_material("bad/foreign.crt", "bad/foreign.key"), Default::default())
                .unwrap(),
        ),
        (
            "another node id",
            liaison::transport::client_config(
                &demo_material("bad/not-enrolled.crt", "bad/not-enrolled.key"),
                Default::default(),
            )
            .unwrap(),
        ),
        (
            "expired",
            liaison::transport::client_config(&demo_material("bad/expired.crt", "bad/expired.key"), Default::default())
                .unwrap(),
        ),
        (
            "revoked",
            liaison::transport::client_config(&demo_material("bad/revoked.crt", "bad/revoked.key"), Default::default())
                .unwrap(),
        ),
        (
            "no certificate",
            liaison::transport::client_config_without_certificate(&demo_material("ES-UDYCO.crt", "ES-UDYCO.key"))
                .unwrap(),
        ),
    ];
    for (what, client) in clients {
        let result = RawPeer::new(client).send(port, "IT-DCSA", &packet).await;
        assert!(result.is_err(), "{what}: got an answer");
    }
    assert!(c.node("IT-DCSA").inbox_ids().is_empty());
    // The client may see its refusal before the node has written the log line: wait for it.
    let log_file = c.node("IT-DCSA").log.clone();
    wait_for("five refusals logged", Duration::from_secs(10), || {
        fs::read_to_string(&log_file).unwrap().matches("refused connection").count() >= 5
    });
    let log = fs::read_to_string(&log_file).unwrap();
    assert_eq!(log.matches("refused connection").count(), 5, "each refusal is logged with its reason:\n{log}");
    for reason in ["UnknownIssuer", "names no enrolled partner", "expired", "Revoked", "no certificates"] {
        assert!(log.contains(reason), "{reason} missing from the log");
    }
    // The genuine ES-UDYCO certificate still gets in.
    let ok = RawPeer::new(
        liaison::transport::client_config(&demo_material("ES-UDYCO.crt", "ES-UDYCO.key"), Default::default()).unwrap(),
    );
    assert!(ok.send(port, "IT-DCSA", &packet).await.is_ok());
}

fn state_of(n: &NodeProc, id: &str) -> String {
    let (code, v) = n.api("GET", &format!("/v1/packets/{id}"), None);
    assert_eq!(code, 200, "{v}");
    v["recipients"][0]["state"].as_str().unwrap().to_owned()
}

/// Guarantee 5 with real processes: 200 MiB of ROUTINE case files (50 × 4 MiB) are queued at
/// IT-DCSA while ES-UDYCO is down. ES-UDYCO comes back, the transfer starts, and a FLASH alert
/// submitted then is receipted while most of the bulk is still on its way (the FLASH lane's
/// stream has the higher QUIC priority and its own receipts).
#[test]
fn flash_is_receipted_ahead_of_200_mib_of_queued_routine_traffic() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    c.node("ES-UDYCO").kill_9();
    let it = c.node("IT-DCSA");
    let mut routine = Vec::new();
    for i in 0..50usize {
        let p = case_file(i, 4 * 1024 * 1024);
        let (code, v) = it.api("POST", "/v1/packets?to=ES-UDYCO", Some(&p.to_string()));
        assert_eq!(code, 201, "{v}");
        routine.push(v["id"].as_str().unwrap().to_owned());
    }
    c.node("ES-UDYCO").start();
    let it = c.node("IT-DCSA");
    wait_for("the bulk transfer to start", Duration::from_secs(120), || delivered_count(it) > 0);
    let mut alert = draft("controlled-delivery-alert.json");
    alert["envelope"]["recipients"] = json!(["ES-UDYCO"]);
    let (code, v) = it.api("POST", "/v1/packets?to=ES-UDYCO", Some(&alert.to_string()));
    assert_eq!(code, 201, "{v}");
    let flash = v["id"].as_str().unwrap().to_owned();
    wait_for("the FLASH receipt", Duration::from_secs(60), || state_of(it, &flash) == "delivered");
    let routine_done = routine.iter().filter(|id| state_of(it, id) == "delivered").count();
    eprintln!("FLASH receipted when {routine_done} of 50 routine files (4 MiB each) were");
    assert!(routine_done < 25, "the FLASH waited behind {routine_done} of 50 bulk files");
    wait_for("the whole bulk", Duration::from_secs(300), || delivered_count(it) == 51);
    let order = c.node("ES-UDYCO").inbox_ids();
    let pos = order.iter().position(|id| *id == flash).unwrap();
    assert!(pos < 25, "FLASH stored at position {pos} of 51");
}

/// The policies through the CLI: the dry run names the rule and the redactions, `policy show`
/// prints the agreement with its version hash, and `send` refuses one partner while the other
/// gets the packet.
#[test]
fn policy_dry_run_show_and_refusals_through_the_cli() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let dir = tempfile::tempdir().unwrap();
    let alert = dir.path().join("alert.json");
    fs::write(&alert, draft("controlled-delivery-alert.json").to_string()).unwrap();
    let mut answer = draft("information-response.json");
    answer["body"]["InformationResponse"].as_object_mut().unwrap().remove("attachments");
    let answer_file = dir.path().join("answer.json");
    fs::write(&answer_file, answer.to_string()).unwrap();
    let it = c.node("IT-DCSA");

    let o = it.cli(&["policy", "check", "--to", "ES-UDYCO,CO-DIJIN", alert.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ES-UDYCO: allow "), "{out}");
    assert!(out.contains("CO-DIJIN: deny (send.max_classification: EU_RESTRICTED is above BASIC_PROTECTION)"), "{out}");
    let o = it.cli(&["policy", "check", "--to", "CO-DIJIN", answer_file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("CO-DIJIN: allow with redactions"), "{out}");
    assert!(
        out.contains("removes body.InformationResponse.entities[0].person.date_of_birth (send.redact.person)"),
        "{out}"
    );
    assert_eq!(delivered_count(it), 0, "a dry run sends nothing");

    let o = it.cli(&["policy", "show", "CO-DIJIN"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("policy with CO-DIJIN  sha256:"), "{out}");
    assert!(out.contains("person            removed: biometrics, date_of_birth"), "{out}");
    assert!(out.contains("account           removed: the whole entity"), "{out}");
    assert!(out.contains("\nonward:\n  from CO-DIJIN") && out.contains("\nretention         "), "{out}");
    let o = it.cli(&["policy", "show", "DE-BKA"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no sharing policy with DE-BKA"));

    // One partner refused, the other served; the officer is told which and why.
    let o = it.cli(&["send", "--to", "ES-UDYCO,CO-DIJIN", alert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("for ES-UDYCO"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused by policy, nothing sent to: CO-DIJIN: send.max_classification"), "{err}");
    let o = it.cli(&["send", "--to", "CO-DIJIN", answer_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CO-DIJIN: removed body.InformationResponse.entities[6].account")
    );
    wait_for("both delivered", Duration::from_secs(30), || delivered_count(it) == 2);
    assert_eq!(c.node("CO-DIJIN").inbox_ids().len(), 1, "only the redacted answer reached CO-DIJIN");
}

/// Opens a stopped node's sled store directly (what an intruder with disk access could do).
fn with_audit_tree(n: &NodeProc, f: impl FnOnce(&sled::Tree)) {
    let dir = n.config.parent().unwrap().join("data").join(&n.name);
    let db = sled::open(&dir).unwrap();
    f(&db.open_tree("audit").unwrap());
    db.flush().unwrap();
}

/// The audit trail records what happened, verifies while intact, and `liaison audit verify`
/// names the entry when one is changed, deleted, or two are swapped on disk; an export verifies
/// offline with the node's published key, and not once altered.
#[test]
fn the_audit_trail_detects_tampering_deletion_and_reordering() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("request.json");
    fs::write(&f, draft("information-request.json").to_string()).unwrap();
    for _ in 0..3 {
        let o = c.node("IT-DCSA").cli(&["send", "--to", "ES-UDYCO", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    wait_for("delivered", Duration::from_secs(30), || delivered_count(c.node("IT-DCSA")) == 3);
    let o = c.node("IT-DCSA").cli(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("intact: entries 1.."));

    // Export everything and check it offline with the key the federation published.
    let export = dir.path().join("audit.json");
    let o = c.node("IT-DCSA").cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let key = root().join("certs-example/federation/IT-DCSA.pub.toml");
    let offline = |file: &Path| {
        Command::new(BIN).args(["audit", "verify", "--file"]).arg(file).arg("--key").arg(&key).output().unwrap()
    };
    let o = offline(&export);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("signed by IT-DCSA/sig/"));
    // A time range: from an hour ago to now, extended to the next signed checkpoint.
    let ranged = dir.path().join("ranged.json");
    let o = c.node("IT-DCSA").cli(&[
        "audit",
        "export",
        "--from",
        "now-1h",
        "--to",
        &liaison::timestamp::Timestamp::now().to_string(),
        "--out",
        ranged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = offline(&ranged);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.node("IT-DCSA").cli(&["audit", "export", "--from", "yesterday", "--out", "/dev/null"]);
    assert_eq!(o.status.code(), Some(64), "a bad time is a usage error");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--from: invalid time"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, v) = c.node("IT-DCSA").api("GET", "/v1/audit/export?from=yesterday", None);
    assert_eq!(code, 400, "the API refuses it too: {v}");
    assert!(v.to_string().contains("from"), "{v}");
    let text = fs::read_to_string(&export).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let bytes = liaison::encoding::Blob(base64_decode(e[1].as_str().unwrap()));
            let entry: liaison::audit::Entry = liaison::encoding::from_cbor_exact(&bytes.0, usize::MAX).unwrap();
            serde_json::to_value(&entry.event).unwrap().as_object().unwrap().keys().next().unwrap().clone()
        })
        .collect();
    for k in ["started", "submitted", "receipts"] {
        assert!(kinds.iter().any(|x| x == k), "{k} not in {kinds:?}");
    }
    assert!(!text.contains("Subject of the request"), "no payload in the audit trail");
    let mut altered: Value = v.clone();
    let s = altered["entries"][2][1].as_str().unwrap().to_owned();
    let mut b = base64_decode(&s);
    let at = b.len() - 2;
    b[at] ^= 1;
    altered["entries"][2][1] = base64_encode(&b).into();
    let altered_file = dir.path().join("altered.json");
    fs::write(&altered_file, altered.to_string()).unwrap();
    let o = offline(&altered_file);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BROKEN: audit entry 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // On disk: change entry 2, delete entry 4, swap entries 5 and 6 — each named.
    type Tamper = fn(&sled::Tree);
    let cases: [(Tamper, &str); 3] = [
        (
            |t| {
                let mut v = t.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
                let at = v.len() - 2;
                v[at] ^= 1;
                t.insert(2u64.to_be_bytes(), v).unwrap();
            },
            "BROKEN: audit entry 2",
        ),
        (
            |t| {
                t.remove(4u64.to_be_bytes()).unwrap();
            },
            "BROKEN: audit entry 4: missing",
        ),
        (
            |t| {
                let a = t.get(5u64.to_be_bytes()).unwrap().unwrap();
                let b = t.get(6u64.to_be_bytes()).unwrap().unwrap();
                t.insert(5u64.to_be_bytes(), b).unwrap();
                t.insert(6u64.to_be_bytes(), a).unwrap();
            },
            "BROKEN: audit entry 5",
        ),
    ];
    for (tamper, expect) in cases {
        let it = c.node("IT-DCSA");
        it.terminate();
        let saved: Vec<(sled::IVec, sled::IVec)> = {
            let mut v = Vec::new();
            with_audit_tree(it, |t| v = t.iter().map(Result::unwrap).collect());
            v
        };
        with_audit_tree(it, tamper);
        it.start();
        let o = it.cli(&["audit", "verify"]);
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{expect:?} not in {err}");
        // Put the trail back as it was (the restart and the verification added entries after it).
        it.terminate();
        with_audit_tree(it, |t| {
            for (k, v) in &saved {
                t.insert(k, v.clone()).unwrap();
            }
        });
        it.start();
    }
}

/// Answer deadlines (Directive 2023/977): an urgent request is due in 8 hours at both ends; a
/// delay notice moves it, a clarification request pauses it until the requester replies, the
/// answer closes it. `inbox` and `status` show where it stands.
#[test]
fn answer_deadlines_move_pause_and_close_through_the_cli() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, v: &Value| {
        let p = dir.path().join(name);
        fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let send = |n: &NodeProc, f: &str| -> String {
        let o = n.cli(&["send", "--json", f]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let reply = |example: &str, to: &str, in_reply_to: &str| -> Value {
        let mut v = draft(example);
        v["envelope"]["recipients"] = json!([to]);
        v["envelope"]["in_reply_to"] = json!(in_reply_to);
        v
    };
    let mut request = draft("information-request.json");
    request["envelope"]["recipients"] = json!(["ES-UDYCO"]);
    let request_id = send(c.node("IT-DCSA"), &file("request.json", &request));
    wait_for("delivered", Duration::from_secs(30), || delivered_count(c.node("IT-DCSA")) == 1);

    let es_inbox = |c: &mut Cluster| String::from_utf8_lossy(&c.node("ES-UDYCO").cli(&["inbox"]).stdout).into_owned();
    let it_status = |c: &mut Cluster| String::from_utf8_lossy(&c.node("IT-DCSA").cli(&["status"]).stdout).into_owned();
    let out = es_inbox(&mut c);
    assert!(out.contains("answer due") && out.contains("left)"), "{out}");
    let out = it_status(&mut c);
    assert!(out.contains("awaiting answers: 1") && out.contains(&request_id), "{out}");

    // A delay notice from ES-UDYCO moves the deadline by two days, at both ends.
    let new_due = liaison::timestamp::Timestamp::now().plus_secs(2 * 86_400);
    let mut delay = reply("delay-notice.json", "IT-DCSA", &request_id);
    delay["body"]["DelayNotice"]["new_due_by"] = json!(new_due.to_string());
    send(c.node("ES-UDYCO"), &file("delay.json", &delay));
    wait_for("delay at IT", Duration::from_secs(30), || it_status(&mut c).contains(&format!("due {new_due}")));
    assert!(es_inbox(&mut c).contains(&format!("answer due {new_due}")));

    // A clarification request pauses it; IT-DCSA's reply resumes it.
    let clarification =
        send(c.node("ES-UDYCO"), &file("clar.json", &reply("clarification-request.json", "IT-DCSA", &request_id)));
    wait_for("paused at IT", Duration::from_secs(30), || {
        it_status(&mut c).contains("paused (clarification requested)")
    });
    assert!(es_inbox(&mut c).contains("paused"));
    let mut clarified = reply("information-response.json", "ES-UDYCO", &clarification);
    clarified["body"]["InformationResponse"].as_object_mut().unwrap().remove("attachments");
    send(c.node("IT-DCSA"), &file("clarified.json", &clarified));
    wait_for("resumed at ES", Duration::from_secs(30), || !es_inbox(&mut c).contains("paused"));

    // The answer closes it at both ends.
    let mut answer = reply("information-response.json", "IT-DCSA", &request_id);
    answer["body"]["InformationResponse"].as_object_mut().unwrap().remove("attachments");
    send(c.node("ES-UDYCO"), &file("answer.json", &answer));
    wait_for("answered at IT", Duration::from_secs(30), || it_status(&mut c).contains("awaiting answers: none"));
    let o = c.node("IT-DCSA").cli(&["status", &request_id]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("answer from ES-UDYCO due"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("answered"));
    assert!(String::from_utf8_lossy(&c.node("ES-UDYCO").cli(&["status"]).stdout).contains("to answer: none"));
}

/// An administrator edits a policy and sends SIGHUP: the new rules apply at once, with their new
/// version, and the reload is in the audit trail; a broken policy file is refused as a whole and
/// the rules in force stay.
#[test]
fn sighup_reloads_the_sharing_policies() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let dir = tempfile::tempdir().unwrap();
    let alert = dir.path().join("alert.json");
    fs::write(&alert, draft("controlled-delivery-alert.json").to_string()).unwrap();
    let it = c.node("IT-DCSA");
    let policy_file = it.config.parent().unwrap().join("policies/IT-DCSA/ES-UDYCO.toml");
    let version = |n: &NodeProc| n.api("GET", "/v1/policy/ES-UDYCO", None).1["hash"].as_str().unwrap().to_owned();
    let hup = |n: &NodeProc| {
        let pid = n.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    };
    let before = version(it);
    let o = it.cli(&["policy", "check", "--to", "ES-UDYCO", alert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));

    // Nothing above BASIC PROTECTION may go to ES-UDYCO any more.
    let text = fs::read_to_string(&policy_file).unwrap();
    fs::write(
        &policy_file,
        text.replacen("max_classification = \"EU_RESTRICTED\"", "max_classification = \"BASIC_PROTECTION\"", 1),
    )
    .unwrap();
    hup(it);
    wait_for("the new policy", Duration::from_secs(10), || version(it) != before);
    let after = version(it);
    let o = it.cli(&["policy", "check", "--to", "ES-UDYCO", alert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("deny (send.max_classification"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // A broken file: refused, every problem logged, the policy in force stays.
    fs::write(&policy_file, text.replacen("max_tlp = \"RED\"", "max_tlp = \"PURPLE\"", 1)).unwrap();
    hup(it);
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        fs::read_to_string(&it.log).unwrap().contains("reload refused")
    });
    // The problem is named by file, line and column (the file's content is not echoed).
    let log = fs::read_to_string(&it.log).unwrap();
    assert!(log.contains("ES-UDYCO.toml") && log.contains("unknown variant") && !log.contains("PURPLE"), "{log}");
    assert_eq!(version(it), after);

    // The reload is on record, with both versions, and the trail verifies.
    let export = dir.path().join("audit.json");
    let o = it.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(&fs::read_to_string(&export).unwrap()).unwrap();
    let reloads: Vec<String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let entry: liaison::audit::Entry =
                liaison::encoding::from_cbor_exact(&base64_decode(e[1].as_str().unwrap()), usize::MAX).unwrap();
            match entry.event {
                liaison::audit::Event::Admin { action: liaison::audit::AdminAction::PolicyReload, detail, .. } => {
                    Some(detail)
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert!(reloads[0].contains(&format!("ES-UDYCO: {before} -> {after}")), "{reloads:?}");
    assert_eq!(it.cli(&["audit", "verify"]).status.code(), Some(0));
}

/// `pki revoke` + `pki crl` + SIGHUP at IT-DCSA: ES-UDYCO is cut off, and each side says why in
/// words: ES-UDYCO's `status` and `peers show` that IT-DCSA refuses its certificate, IT-DCSA's
/// that ES-UDYCO's certificate is revoked; IT-DCSA's log names the refused certificate.
#[test]
fn a_revoked_partner_is_cut_off_and_both_senders_say_why() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let base = c.get("IT-DCSA").config.parent().unwrap().to_owned();
    let ca = base.join("certs/tls/ca");
    // Connected and delivering both ways first.
    for (from, to) in [("IT-DCSA", "ES-UDYCO"), ("ES-UDYCO", "IT-DCSA")] {
        let n = c.get(from);
        let (code, v) =
            n.api("POST", &format!("/v1/packets?to={to}"), Some(&draft("information-request.json").to_string()));
        assert_eq!(code, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        wait_for("delivered", Duration::from_secs(20), || state_of(n, &id) == "delivered");
    }
    let peer = |n: &NodeProc, p: &str| n.api("GET", &format!("/v1/peers/{p}"), None).1;
    let es_seen = peer(c.get("IT-DCSA"), "ES-UDYCO");
    assert_eq!(es_seen["state"], "connected", "{es_seen}");
    assert_eq!(es_seen["certificate"]["subject"], "ES-UDYCO", "{es_seen}");
    assert!(es_seen["certificate_days_left"].as_i64().unwrap() > 300, "{es_seen}");

    // The federation CA revokes ES-UDYCO's certificate; IT-DCSA takes the new CRL.
    let pki = |args: &[&str]| {
        let o = Command::new(BIN).current_dir(&base).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let revoked = pki(&["pki", "revoke", "--ca", ca.to_str().unwrap(), "--node", "ES-UDYCO"]);
    let serial = revoked.split_whitespace().nth(1).unwrap().to_owned();
    pki(&["pki", "crl", "--ca", ca.to_str().unwrap(), "--out", "certs/tls/crl.pem"]);
    let it = c.get("IT-DCSA");
    let pid = it.child.as_ref().unwrap().id().to_string();
    let reloads = it.log_text().matches("TLS material reloaded; live connections are made again").count();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_for("IT-DCSA reloaded", Duration::from_secs(20), || {
        it.log_text().matches("TLS material reloaded; live connections are made again").count() > reloads
    });

    // ES-UDYCO (which does not know) sends to IT-DCSA: refused, and it says so.
    let es = c.get("ES-UDYCO");
    let (code, v) = es.api("POST", "/v1/packets?to=IT-DCSA", Some(&draft("information-request.json").to_string()));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let reason_of = |n: &NodeProc, id: &str| {
        n.api("GET", &format!("/v1/packets/{id}"), None).1["recipients"][0]["reason"].as_str().unwrap_or("").to_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reason_of(es, &id).contains("IT-DCSA refuses this node's certificate") {
        if std::time::Instant::now() > deadline {
            let log = es.log_text();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            panic!(
                "ES-UDYCO's status says {:?}; peers: {}; log: {}",
                reason_of(es, &id),
                peer(es, "IT-DCSA"),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not delivered: queued, or for a moment in flight on a connection the partner is about to
    // refuse (TLS 1.3 ends the client's handshake before the server checks its certificate).
    let state = state_of(es, &id);
    assert!(state == "queued" || state == "in_flight", "{state}");
    let seen = peer(es, "IT-DCSA");
    assert_eq!(seen["problem"], "refused_by_partner", "{seen}");
    assert!(seen["last_error"].as_str().unwrap().contains("refuses this node's certificate"), "{seen}");
    let shown = String::from_utf8_lossy(&es.cli(&["peers", "show", "IT-DCSA"]).stdout).into_owned();
    assert!(shown.contains("holding up     IT-DCSA refuses this node's certificate"), "{shown}");

    // IT-DCSA sends to ES-UDYCO: ES-UDYCO's certificate is revoked in IT-DCSA's CRL.
    let it = c.get("IT-DCSA");
    let (code, v) = it.api("POST", "/v1/packets?to=ES-UDYCO", Some(&draft("information-request.json").to_string()));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for("IT-DCSA's status names the revocation", Duration::from_secs(20), || {
        reason_of(it, &id).contains("ES-UDYCO's certificate is revoked in this node's CRL")
    });
    let list = String::from_utf8_lossy(&it.cli(&["peers", "list"]).stdout).into_owned();
    let row = list.lines().find(|l| l.starts_with("ES-UDYCO")).unwrap_or_default().to_owned();
    assert!(row.contains("not connected") && row.contains("certificate is revoked"), "{list}");
    // IT-DCSA's log names the certificate it refused.
    wait_for("the refusal logged", Duration::from_secs(10), || {
        let log = it.log_text();
        log.contains("revoked (in this node's CRL)") && log.contains(&format!("serial {serial}"))
    });
    // A reload whose new certificate names another node is refused, and says why.
    for f in ["IT-DCSA.crt", "IT-DCSA.key"] {
        fs::copy(base.join("certs/tls").join(f.replace("IT-DCSA", "CO-DIJIN")), base.join("certs/tls").join(f))
            .unwrap();
    }
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_for("the bad reload refused", Duration::from_secs(10), || {
        let log = it.log_text();
        log.contains("reload refused") && log.contains("does not name this node IT-DCSA")
    });
    let (code, _) = it.api("GET", "/v1/peers", None);
    assert_eq!(code, 200, "the node runs on with the material in force");
}

/// A fourth node, FR-OFAST, is enrolled while IT-DCSA and ES-UDYCO run: its keys and
/// certificate request made on its side, signed by the federation CA; IT-DCSA takes it through
/// the API (`peers add`), ES-UDYCO through its files and SIGHUP. Packets go both ways with no
/// running node restarted; then it is removed the same two ways, and is cut off at once.
#[test]
fn a_fourth_node_is_enrolled_and_removed_without_a_restart() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let base = c.get("IT-DCSA").config.parent().unwrap().to_owned();
    let run = |args: &[&str]| {
        let o = Command::new(BIN).current_dir(&base).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // On FR-OFAST's side: its keys, its TLS key and request. At the CA: the certificate.
    run(&["keys", "generate", "--node", "FR-OFAST", "--out", "fr/keys"]);
    run(&["pki", "csr", "--node", "FR-OFAST", "--out", "fr/tls"]);
    run(&[
        "pki",
        "sign-csr",
        "--ca",
        "certs/tls/ca",
        "--node",
        "FR-OFAST",
        "--csr",
        "fr/tls/FR-OFAST.csr",
        "--out",
        "fr/tls/FR-OFAST.crt",
    ]);
    // The agreements: each side's policy with FR-OFAST, as with ES-UDYCO.
    let policy = |of: &str, with: &str| {
        let text = fs::read_to_string(base.join(format!("policies/{of}/ES-UDYCO.toml")))
            .or_else(|_| fs::read_to_string(base.join(format!("policies/{of}/IT-DCSA.toml"))))
            .unwrap();
        let text = text.replace("partner = \"ES-UDYCO\"", &format!("partner = \"{with}\""));
        text.replace("partner = \"IT-DCSA\"", &format!("partner = \"{with}\""))
    };
    fs::create_dir_all(base.join("policies/FR-OFAST")).unwrap();
    for (of, with) in
        [("IT-DCSA", "FR-OFAST"), ("ES-UDYCO", "FR-OFAST"), ("FR-OFAST", "IT-DCSA"), ("FR-OFAST", "ES-UDYCO")]
    {
        let src = if of == "FR-OFAST" { "IT-DCSA" } else { of };
        fs::write(base.join(format!("policies/{of}/{with}.toml")), policy(src, with)).unwrap();
    }
    let fr_quic = free_udp();
    let fr_api = free_tcp();

    // IT-DCSA: through the API, in force at once.
    let it = c.get("IT-DCSA");
    let it_pid = it.pid();
    let o = it.cli(&[
        "peers",
        "add",
        "FR-OFAST",
        "--addr",
        &format!("127.0.0.1:{fr_quic}"),
        "--keys",
        base.join("fr/keys/FR-OFAST.pub.toml").to_str().unwrap(),
        "--policy",
        base.join("policies/IT-DCSA/FR-OFAST.toml").to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(&format!("FR-OFAST enrolled at 127.0.0.1:{fr_quic}")), "{out}");
    assert!(it.data_dir.join("partners/FR-OFAST.partner.toml").exists(), "kept for the next start");
    // Twice: refused, and said why.
    let o = it.cli(&[
        "peers",
        "add",
        "FR-OFAST",
        "--addr",
        "127.0.0.1:9",
        "--keys",
        base.join("fr/keys/FR-OFAST.pub.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already a partner"), "{}", String::from_utf8_lossy(&o.stderr));
    // A partner of the configuration file is not removed through the API.
    let (code, v) = it.api("DELETE", "/v1/peers/ES-UDYCO", None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("[[partners]]"), "{v}");

    // ES-UDYCO: its files, then SIGHUP.
    let es = c.get("ES-UDYCO");
    let es_pid = es.pid();
    fs::copy(base.join("fr/keys/FR-OFAST.pub.toml"), base.join("certs/federation/FR-OFAST.pub.toml")).unwrap();
    let es_config = fs::read_to_string(&es.config).unwrap();
    let fr_entry = format!("[[partners]]\nid = \"FR-OFAST\"\naddr = \"127.0.0.1:{fr_quic}\"\npolicy = \"policies/ES-UDYCO/FR-OFAST.toml\"\n");
    fs::write(&es.config, es_config.replacen("[delivery]", &format!("{fr_entry}[delivery]"), 1)).unwrap();
    let hup =
        |n: &NodeProc| assert!(Command::new("kill").args(["-HUP", &n.pid().to_string()]).status().unwrap().success());
    hup(es);
    wait_for("ES-UDYCO enrols FR-OFAST", Duration::from_secs(20), || es.log_text().contains("FR-OFAST enrolled at"));

    // FR-OFAST starts (a new node, not a restart), with both as partners.
    let fr_token = "test-token-FR-OFAST".to_owned();
    let hash = liaison::encoding::hex(&liaison::encoding::Digest::of(fr_token.as_bytes()).0);
    let partners: String = [("IT-DCSA", c.get("IT-DCSA").quic), ("ES-UDYCO", c.get("ES-UDYCO").quic)]
        .iter()
        .map(|(n, q)| {
            format!("[[partners]]\nid = \"{n}\"\naddr = \"127.0.0.1:{q}\"\npolicy = \"policies/FR-OFAST/{n}.toml\"\n")
        })
        .collect();
    let config = format!(
        "[node]\nid = \"FR-OFAST\"\nlisten = \"127.0.0.1:{fr_quic}\"\ndata_dir = \"data/FR-OFAST\"\n\
         [keys]\ndir = \"fr/keys\"\nkeyring = [\"certs/federation\"]\n\
         [tls]\nca = \"certs/tls/ca.crt\"\ncert = \"fr/tls/FR-OFAST.crt\"\nkey = \"fr/tls/FR-OFAST.key\"\ncrls = [\"certs/tls/crl.pem\"]\n\
         [api]\nlisten = \"127.0.0.1:{fr_api}\"\nclients = [{{ name = \"test\", token_sha256 = \"{hash}\", names_officers = true }}]\n{partners}\
         [delivery]\ninitial_backoff_ms = 50\nmax_backoff_ms = 1000\nreceipt_timeout_ms = 3000\n[log]\nformat = \"json\"\nlevel = \"info\"\n"
    );
    fs::write(base.join("FR-OFAST.toml"), config).unwrap();
    c.nodes.push(NodeProc {
        name: "FR-OFAST".into(),
        quic: fr_quic,
        config: base.join("FR-OFAST.toml"),
        log: base.join("FR-OFAST.log"),
        data_dir: base.join("data/FR-OFAST"),
        api: format!("http://127.0.0.1:{fr_api}"),
        token: fr_token,
        web: String::new(),
        child: None,
    });
    c.node("FR-OFAST").start();

    // Packets to and from FR-OFAST, delivered and receipted.
    let send = |from: &str, to: &str| {
        let n = c.get(from);
        let mut d = draft("information-request.json");
        d["envelope"]["recipients"] = json!([to]);
        let (code, v) = n.api("POST", &format!("/v1/packets?to={to}"), Some(&d.to_string()));
        assert_eq!(code, 201, "{from} -> {to}: {v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let mut arrived = Vec::new();
    for (from, to) in
        [("IT-DCSA", "FR-OFAST"), ("FR-OFAST", "IT-DCSA"), ("ES-UDYCO", "FR-OFAST"), ("FR-OFAST", "ES-UDYCO")]
    {
        let id = send(from, to);
        let n = c.get(from);
        wait_for(&format!("{from} -> {to} delivered"), Duration::from_secs(30), || state_of(n, &id) == "delivered");
        arrived.push((to, id));
    }
    for (to, id) in &arrived {
        assert!(c.get(to).inbox_ids().contains(id), "{to} holds {id}");
    }
    // FR-OFAST's API client is not an admin client: it may not change the node.
    let (code, v) = c.get("FR-OFAST").api("DELETE", "/v1/peers/IT-DCSA", None);
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not an admin client"), "{v}");
    let shown = String::from_utf8_lossy(&c.get("IT-DCSA").cli(&["peers", "show", "FR-OFAST"]).stdout).into_owned();
    assert!(
        shown.contains("FR-OFAST  127.0.0.1:")
            && shown.contains("FR-OFAST/sig/")
            && shown.contains("certificate    FR-OFAST"),
        "{shown}"
    );
    assert_eq!((c.get("IT-DCSA").pid(), c.get("ES-UDYCO").pid()), (it_pid, es_pid), "no running node restarted");

    // Removed at IT-DCSA through the API: nothing more goes to it, and it is refused.
    let it = c.get("IT-DCSA");
    let o = it.cli(&["peers", "remove", "FR-OFAST"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("FR-OFAST removed"), "{out}");
    assert!(!it.data_dir.join("partners/FR-OFAST.partner.toml").exists());
    assert!(it.data_dir.join("partners/FR-OFAST.pub.toml").exists(), "kept, to verify what it sent");
    let (code, v) = it.api("POST", "/v1/packets?to=FR-OFAST", Some(&draft("information-request.json").to_string()));
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a partner"), "{v}");
    // What it received from FR-OFAST before still verifies (its keys are kept).
    let from_fr = &arrived[1].1;
    let (code, v) = it.api("GET", &format!("/v1/inbox/{from_fr}"), None);
    assert_eq!(code, 200, "{v}");
    let id = send("FR-OFAST", "IT-DCSA");
    let fr = c.get("FR-OFAST");
    wait_for("FR-OFAST's status says IT-DCSA refuses it", Duration::from_secs(30), || {
        fr.api("GET", &format!("/v1/packets/{id}"), None).1["recipients"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("IT-DCSA refuses this node's certificate"))
    });
    assert_ne!(state_of(fr, &id), "delivered");
    wait_for("IT-DCSA logs the refusal", Duration::from_secs(10), || {
        it.log_text().contains("names no enrolled partner")
    });

    // Removed at ES-UDYCO through its files and SIGHUP.
    let es = c.get("ES-UDYCO");
    fs::write(&es.config, es_config).unwrap();
    hup(es);
    wait_for("ES-UDYCO removes FR-OFAST", Duration::from_secs(20), || es.log_text().contains("FR-OFAST removed"));
    let (code, _) = es.api("GET", "/v1/peers/FR-OFAST", None);
    assert_eq!(code, 404);

    // Both on record in IT-DCSA's audit trail, which verifies.
    let changes: Vec<String> = it
        .audit_events()
        .iter()
        .filter(|e| e["admin"]["action"] == "partners changed")
        .map(|e| e["admin"]["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0].contains("FR-OFAST enrolled") && changes[1].contains("FR-OFAST removed"), "{changes:?}");
    assert_eq!(it.cli(&["audit", "verify"]).status.code(), Some(0));
}

/// IT-DCSA rotates its signing and encryption keys with overlap while packets flow both ways:
/// `keys rotate` + SIGHUP; it announces the new keys in a packet signed with its old ones, and
/// ES-UDYCO (whose policy takes announced keys) takes them. Nothing is lost or rejected; packets
/// after the switch are signed with the new key; every receipt IT-DCSA issued (signed with the
/// generation ES-UDYCO sealed to: old, then new) verifies at ES-UDYCO; IT-DCSA's audit trail, with checkpoints under
/// both keys, verifies live and exported (offline: with both keys, not with the old one alone).
#[test]
fn keys_rotate_with_overlap_while_packets_flow_both_ways() {
    let c = Cluster::with(
        &["IT-DCSA", "ES-UDYCO"],
        Setup {
            policy: Some(Box::new(|node: &str, partner: &str, text: String| {
                if (node, partner) == ("ES-UDYCO", "IT-DCSA") {
                    format!("{text}\n[keys]\naccept_announced = true\n")
                } else {
                    text
                }
            })),
            ..Default::default()
        },
    );
    let base = c.get("IT-DCSA").config.parent().unwrap().to_owned();
    let (it, es) = (c.get("IT-DCSA"), c.get("ES-UDYCO"));
    let send = |n: &NodeProc, to: &str| {
        let (code, v) =
            n.api("POST", &format!("/v1/packets?to={to}"), Some(&draft("information-request.json").to_string()));
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let old_kid = es.api("GET", "/v1/peers/IT-DCSA", None).1["signing_kid"].as_str().unwrap().to_owned();
    // Before: traffic both ways, and a checkpoint signed with the old key (an export signs one).
    let early: Vec<(String, &str)> =
        (0..5).flat_map(|_| [(send(it, "ES-UDYCO"), "IT-DCSA"), (send(es, "IT-DCSA"), "ES-UDYCO")]).collect();
    let dir = tempfile::tempdir().unwrap();
    let before_export = dir.path().join("before.json");
    assert_eq!(it.cli(&["audit", "export", "--out", before_export.to_str().unwrap()]).status.code(), Some(0));

    // Packets both ways for the whole rotation, paced.
    let stream = |n: &NodeProc, to: &'static str| {
        let mut ids = Vec::new();
        for _ in 0..60 {
            ids.push(send(n, to));
            std::thread::sleep(Duration::from_millis(100));
        }
        ids
    };
    let stream = &stream;
    let (sent_it, sent_es) = std::thread::scope(|scope| {
        let a = scope.spawn(move || stream(it, "ES-UDYCO"));
        let b = scope.spawn(move || stream(es, "IT-DCSA"));
        std::thread::sleep(Duration::from_millis(500));
        // The rotation: new keys in force in 3 s, the old ones accepted 30 days more.
        let o = Command::new(BIN)
            .current_dir(&base)
            .args(["keys", "rotate", "--node", "IT-DCSA", "--dir", "certs/nodes/IT-DCSA", "--from", "now+3s"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("generation 2 of IT-DCSA's keys"), "{out}");
        assert!(Command::new("kill").args(["-HUP", &it.pid().to_string()]).status().unwrap().success());
        wait_for("IT-DCSA takes its new keys", Duration::from_secs(20), || {
            it.log_text().contains("keys announced to its partners")
        });
        wait_for("ES-UDYCO takes IT-DCSA's announced keys", Duration::from_secs(20), || {
            let v = es.api("GET", "/v1/peers/IT-DCSA", None).1;
            v["announced"]["accepted"] == true && v["key_generations"].as_array().is_some_and(|g| g.len() == 2)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    // Everything delivered, nothing rejected, each shown once.
    let all: Vec<(String, &str)> = early
        .into_iter()
        .chain(sent_it.into_iter().map(|id| (id, "IT-DCSA")))
        .chain(sent_es.into_iter().map(|id| (id, "ES-UDYCO")))
        .collect();
    for (id, from) in &all {
        let n = c.get(from);
        wait_for(&format!("{from}'s {id} delivered"), Duration::from_secs(30), || state_of(n, id) == "delivered");
    }
    let it_sent: Vec<&String> = all.iter().filter(|(_, f)| *f == "IT-DCSA").map(|(id, _)| id).collect();
    let inbox = es.inbox();
    let kinds = |k: &str| inbox.iter().filter(|p| p["type"] == k).count();
    assert_eq!(kinds("InformationRequest"), it_sent.len(), "each shown once");
    assert_eq!(kinds("KeyAnnouncement"), 1, "the announcement, kept as evidence");
    let es_inbox: HashSet<&str> = inbox.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert!(it_sent.iter().all(|id| es_inbox.contains(id.as_str())));
    // The later packets are signed with the new key; the early ones, with the old, still verify.
    let signer = |id: &str| es.api("GET", &format!("/v1/inbox/{id}"), None).1["signer"].as_str().unwrap().to_owned();
    let new_kid = es.api("GET", "/v1/peers/IT-DCSA", None).1["signing_kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid, "IT-DCSA's keys in force are the new ones");
    assert_eq!(signer(it_sent[0]), old_kid);
    assert_eq!(signer(it_sent.last().unwrap()), new_kid);
    // Receipts IT-DCSA signed, before and after the switch, verify at ES-UDYCO.
    let es_sent: Vec<&String> = all.iter().filter(|(_, f)| *f == "ES-UDYCO").map(|(id, _)| id).collect();
    let mut signers = HashSet::new();
    for id in &es_sent {
        let (code, v) = es.api("GET", &format!("/v1/packets/{id}/receipts"), None);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v[0]["verified"], true, "{v}");
        assert_eq!(v[0]["outcome"], "accepted", "{v}");
        signers.insert(v[0]["signer"].as_str().unwrap().to_owned());
    }
    // A receipt is signed with the generation the partner sealed its copies to (one it holds):
    // the old key before ES-UDYCO took the new one, the new after; all verify.
    assert_eq!(signers, HashSet::from([old_kid.clone(), new_kid.clone()]), "receipts under both keys");

    // The audit trail: a checkpoint under the new key now, and the whole trail verifies.
    let after_export = dir.path().join("after.json");
    assert_eq!(it.cli(&["audit", "export", "--out", after_export.to_str().unwrap()]).status.code(), Some(0));
    let o = it.cli(&["audit", "verify"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let keys_dir = base.join("certs/nodes/IT-DCSA");
    let offline = |file: &Path, keys: &[&Path]| {
        let mut args = vec!["audit".to_owned(), "verify".into(), "--file".into(), file.display().to_string()];
        for k in keys {
            args.extend(["--key".to_owned(), k.display().to_string()]);
        }
        Command::new(BIN).args(&args).output().unwrap()
    };
    let full = dir.path().join("full.json");
    assert_eq!(
        it.cli(&["audit", "export", "--from", "now-1d", "--out", full.to_str().unwrap()]).status.code(),
        Some(0)
    );
    for f in [&before_export, &after_export, &full] {
        let o = offline(f, &[&keys_dir]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", f.display(), String::from_utf8_lossy(&o.stderr));
    }
    let o = offline(&full, &[&keys_dir.join("IT-DCSA.pub.toml")]);
    assert_eq!(o.status.code(), Some(1), "the old key alone does not verify what the new one signed");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("checkpoint signature"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The announcement carried IT-DCSA's TLS certificate, checked at ES-UDYCO against its CA.
    let seen = es.api("GET", "/v1/peers/IT-DCSA", None).1;
    assert!(seen["announced"]["certificate"]["serial"].is_string(), "{seen}");
    // A TLS renewal (a new certificate from the CA, SIGHUP): partners are told of it.
    let run = |args: &[&str]| {
        let o = Command::new(BIN).current_dir(&base).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(&["pki", "issue", "--ca", "certs/tls/ca", "--node", "IT-DCSA", "--out", "renewed"]);
    for f in ["IT-DCSA.crt", "IT-DCSA.key"] {
        fs::copy(base.join("renewed").join(f), base.join("certs/tls").join(f)).unwrap();
    }
    let renewed = run(&["pki", "show", "renewed/IT-DCSA.crt"]);
    assert!(Command::new("kill").args(["-HUP", &it.pid().to_string()]).status().unwrap().success());
    wait_for("ES-UDYCO is told of the renewal", Duration::from_secs(20), || {
        let v = es.api("GET", "/v1/peers/IT-DCSA", None).1;
        v["announced"]["certificate"]["serial"].as_str().is_some_and(|s| renewed.contains(s))
            && v["announced"]["accepted"] == true
    });
    // On record at both ends.
    let changes: Vec<String> = es
        .audit_events()
        .iter()
        .filter(|e| e["admin"]["action"] == "partners changed")
        .map(|e| e["admin"]["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(changes.iter().any(|c| c.contains("IT-DCSA: keys now") && c.contains(&new_kid)), "{changes:?}");
}

/// Announced keys wait for the partner's administrator (the default policy): meanwhile the
/// rotating node's new-key packets and receipts are not taken, and not rejected either (no
/// receipt: sent again); the waiting announcement survives the partner's restart; once the
/// administrator accepts, everything held up is delivered, each exactly once.
#[test]
fn announced_keys_wait_for_the_administrator_and_nothing_is_rejected_meanwhile() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let base = c.get("IT-DCSA").config.parent().unwrap().to_owned();
    let o = Command::new(BIN)
        .current_dir(&base)
        .args(["keys", "rotate", "--node", "IT-DCSA", "--dir", "certs/nodes/IT-DCSA", "--from", "now+2s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let it = c.get("IT-DCSA");
    assert!(Command::new("kill").args(["-HUP", &it.pid().to_string()]).status().unwrap().success());
    let es = c.get("ES-UDYCO");
    wait_for("ES-UDYCO holds the announcement for its administrator", Duration::from_secs(20), || {
        es.log_text().contains("they wait for the administrator")
    });
    std::thread::sleep(Duration::from_secs(3)); // past valid_from: IT-DCSA signs with its new key
    let send = |n: &NodeProc, to: &str| {
        let (code, v) =
            n.api("POST", &format!("/v1/packets?to={to}"), Some(&draft("information-request.json").to_string()));
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let from_it: Vec<String> = (0..3).map(|_| send(it, "ES-UDYCO")).collect();
    let from_es: Vec<String> = (0..3).map(|_| send(es, "IT-DCSA")).collect();
    std::thread::sleep(Duration::from_secs(3));
    for id in &from_it {
        let s = state_of(it, id);
        assert!(s == "queued" || s == "in_flight", "held up, not rejected: {s}");
    }
    assert!(es.inbox_ids().iter().all(|id| !from_it.contains(id)), "not stored at ES-UDYCO yet");
    // ES-UDYCO restarts: the announcement still waits.
    c.node("ES-UDYCO").terminate();
    c.node("ES-UDYCO").start();
    let es = c.get("ES-UDYCO");
    let seen = es.api("GET", "/v1/peers/IT-DCSA", None).1;
    assert_eq!(seen["announced"]["accepted"], false, "{seen}");
    let shown = String::from_utf8_lossy(&es.cli(&["peers", "show", "IT-DCSA"]).stdout).into_owned();
    assert!(shown.contains("WAITING: liaison peers accept-keys"), "{shown}");
    // The administrator accepts: everything goes through, once.
    let o = es.cli(&["peers", "accept-keys", "IT-DCSA"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("IT-DCSA: keys now"), "{out}");
    let it = c.get("IT-DCSA");
    for (n, ids) in [(it, &from_it), (es, &from_es)] {
        for id in ids {
            wait_for("delivered after the acceptance", Duration::from_secs(30), || state_of(n, id) == "delivered");
        }
    }
    let inbox = es.inbox_ids();
    for id in &from_it {
        assert_eq!(inbox.iter().filter(|x| *x == id).count(), 1);
    }
    assert_eq!(es.cli(&["audit", "verify"]).status.code(), Some(0));
    assert_eq!(it.cli(&["audit", "verify"]).status.code(), Some(0));
}

/// `GET path` on a node's API with `token` (or none): the status code and the body as text.
fn http_get(api: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let host = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Prometheus metrics (with the API token) and the probes (without): after a delivery, the
/// counters, the latency histogram, the link, the expiries and the store are there.
#[test]
fn metrics_and_probes() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let it = c.get("IT-DCSA");
    let (code, v) = it.api("POST", "/v1/packets?to=ES-UDYCO", Some(&draft("information-request.json").to_string()));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for("delivered", Duration::from_secs(20), || state_of(it, &id) == "delivered");
    assert_eq!(http_get(&it.api, "/healthz", None), (200, "ok\n".to_owned()));
    assert_eq!(http_get(&it.api, "/readyz", None), (200, "ready\n".to_owned()));
    assert_eq!(http_get(&it.api, "/metrics", None).0, 401, "metrics need the token");
    let (code, text) = http_get(&it.api, "/metrics", Some(&it.token));
    assert_eq!(code, 200, "{text}");
    let value = |line_start: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("liaison_delivered_total{partner=\"ES-UDYCO\"}"), 1.0);
    assert_eq!(value("liaison_queued{partner=\"ES-UDYCO\"}"), 0.0);
    assert_eq!(value("liaison_queue_ready{partner=\"ES-UDYCO\",lane=\"FLASH\"}"), 0.0);
    assert_eq!(value("liaison_submit_to_receipt_seconds_count"), 1.0);
    assert_eq!(value("liaison_submit_to_receipt_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert_eq!(value("liaison_partner_connected{partner=\"ES-UDYCO\"}"), 1.0);
    assert!(value("liaison_partner_certificate_expiry_seconds{partner=\"ES-UDYCO\"") > 86_400.0 * 300.0);
    assert!(value("liaison_expiry_seconds{what=\"certificate\",name=\"IT-DCSA\"}") > 86_400.0 * 300.0);
    assert!(value("liaison_expiry_seconds{what=\"crl\"") > 0.0);
    assert!(value("liaison_audit_head_seq") >= 2.0);
    assert_eq!(value("liaison_store_space{state=\"ok\"}"), 1.0);
    assert_eq!(value("liaison_key_exchange_info{group=\"X25519MLKEM768\"}"), 1.0);
    for family in
        ["liaison_in_flight", "liaison_rejected_total", "liaison_store_free_bytes", "liaison_store_segment_bytes"]
    {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing");
    }
    // The audit trail, readable, filtered by partner (a read: it adds no entry); and the
    // outbox's summary.
    let head = |n: &NodeProc| {
        let text = http_get(&n.api, "/metrics", Some(&n.token)).1;
        text.lines().find(|l| l.starts_with("liaison_audit_head_seq")).unwrap().to_owned()
    };
    let before = head(it);
    let shown = String::from_utf8_lossy(&it.cli(&["audit", "show", "--partner", "ES-UDYCO"]).stdout).into_owned();
    let line = shown.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{id} not in:\n{shown}"));
    assert!(line.contains("submitted"), "{shown}");
    let other = String::from_utf8_lossy(&it.cli(&["audit", "show", "--partner", "CO-DIJIN"]).stdout).into_owned();
    assert!(!other.contains(&id), "{other}");
    let all = String::from_utf8_lossy(&it.cli(&["audit", "show"]).stdout).into_owned();
    assert!(all.lines().count() >= 4 && all.contains(" started "), "{all}");
    assert_eq!(other.lines().count(), 0, "no entry of this run names CO-DIJIN:\n{other}");
    assert_eq!(head(it), before, "showing the trail records nothing");
    let outbox = String::from_utf8_lossy(&it.cli(&["outbox"]).stdout).into_owned();
    assert!(outbox.contains("waiting 0  in flight 0") && outbox.contains("delivered 1"), "{outbox}");
}

/// The expiry watch: a node whose certificate expires in five days says so when it starts (the
/// self-check and the watch), and `/metrics` has the date.
#[test]
fn a_certificate_close_to_expiry_is_said_at_start() {
    let mut c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], Setup { stopped: vec!["IT-DCSA"], ..Setup::default() });
    let base = c.get("IT-DCSA").config.parent().unwrap().to_owned();
    let out = base.join("short");
    let o = Command::new(BIN)
        .current_dir(&base)
        .args(["pki", "issue", "--ca", "certs/tls/ca", "--node", "IT-DCSA", "--days", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["IT-DCSA.crt", "IT-DCSA.key"] {
        fs::copy(out.join(f), base.join("certs/tls").join(f)).unwrap();
    }
    let it = c.node("IT-DCSA");
    it.start();
    let said = || {
        let log = it.log_text();
        // Five days less the seconds since the issue: 5 or 4, as the clock's second falls.
        ["4", "5"].iter().any(|d| log.contains(&format!("this node's TLS certificate (IT-DCSA) expires in {d} day(s)")))
            && log.contains("self-check")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !said() {
        let log = it.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("expire") || l.contains("self-check")).collect();
        assert!(std::time::Instant::now() < deadline, "not said; the log has:\n{}", lines.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, text) = http_get(&it.api, "/metrics", Some(&it.token));
    let line = text.lines().find(|l| l.starts_with("liaison_expiry_seconds{what=\"certificate\"")).unwrap();
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs > 4.0 * 86_400.0 && secs <= 5.0 * 86_400.0, "{line}");
}
