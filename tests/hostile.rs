//! A hostile partner: a node that holds a valid certificate and its own keys, and turns on the
//! federation. Each test runs one attack against real `liaison serve` processes over QUIC —
//! the hostile side built from the crate's own sealing code, speaking raw frames with the demo
//! material of CO-DIJIN (or ES-UDYCO) — and asserts the outcome: refused with which code, stored
//! or not, memory within budget, and the other partners' traffic delivered meanwhile.
//!
//! The threat model these tests stand behind is in ARCHITECTURE.md ("Threat model").

mod common;

use std::time::Duration;

use common::cluster::*;
use liaison::ids::PacketId;
use liaison::packet::ReceiptOutcome;
use serde_json::{json, Value};

const ALL: [&str; 3] = ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"];

/// IT-DCSA and ES-UDYCO run as node processes; CO-DIJIN is configured everywhere but played
/// by the test.
fn with_hostile_co() -> Cluster {
    Cluster::with(&ALL, Setup { stopped: vec!["CO-DIJIN"], ..Setup::default() })
}

/// The seal context of demo node `who`, with its keys from certs-example (what the node
/// processes use).
fn ctx(who: &str) -> liaison::seal::SealContext {
    seal_context(who)
}

fn sealed(who: &str, p: &liaison::packet::Packet) -> Vec<u8> {
    ctx(who).seal(p, &mut rand_core::OsRng).unwrap().remove(0).bytes
}

fn state(n: &NodeProc, id: &str, to: &str) -> Value {
    let (code, v) = n.api("GET", &format!("/v1/packets/{id}"), None);
    assert_eq!(code, 200, "{v}");
    v["recipients"].as_array().unwrap().iter().find(|r| r["node"] == to).cloned().unwrap()
}

/// Item 1. CO-DIJIN learnt the id of a packet ES-UDYCO is about to send IT-DCSA (as a
/// co-recipient, or while ES-UDYCO could not reach IT-DCSA) and sends its own packet under that
/// id first. The genuine packet is still delivered and receipted with its own digest; both
/// packets are kept, each marked with the other sender; the collision is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_packet_id_does_not_block_the_genuine_packet() {
    let mut c = with_hostile_co();
    let it_port = c.node("IT-DCSA").quic;
    let id = PacketId::new_v7(liaison::node::now_ms(), &mut rand_core::OsRng);

    let mut squat = packet_from("CO-DIJIN", "IT-DCSA");
    squat.envelope.id = id;
    squat.envelope.purpose = Some("squatter".parse().unwrap());
    let answer = RawPeer::as_node("CO-DIJIN").send(it_port, "IT-DCSA", &sealed("CO-DIJIN", &squat)).await.unwrap();
    assert_eq!(receipt_items(&ctx("CO-DIJIN"), "IT-DCSA", &answer)[0].outcome, ReceiptOutcome::Accepted);

    let mut genuine = common::draft("information-request.json");
    genuine["envelope"]["id"] = json!(id.to_string());
    genuine["envelope"]["purpose"] = json!("genuine");
    let (code, v) = c.node("ES-UDYCO").api("POST", "/v1/packets?to=IT-DCSA", Some(&genuine.to_string()));
    assert_eq!(code, 201, "{v}");
    let es = c.node("ES-UDYCO");
    wait_for("the genuine packet delivered", Duration::from_secs(20), || {
        state(es, &id.to_string(), "IT-DCSA")["state"] == "delivered"
    });

    let it = c.node("IT-DCSA");
    let inbox: Vec<Value> = it.inbox().into_iter().filter(|p| p["id"] == id.to_string().as_str()).collect();
    assert_eq!(inbox.len(), 2, "both kept: {inbox:?}");
    for p in &inbox {
        let other = if p["from"] == "ES-UDYCO" { "CO-DIJIN" } else { "ES-UDYCO" };
        assert_eq!(p["also_from"], json!([other]), "each shown as suspicious: {p}");
    }
    let (code, v) = it.api("GET", &format!("/v1/inbox/{id}"), None);
    assert_eq!(code, 409, "ambiguous without the sender: {v}");
    assert!(v["error"].as_str().unwrap().contains("CO-DIJIN and ES-UDYCO"), "{v}");
    let (code, v) = it.api("GET", &format!("/v1/inbox/{id}?from=ES-UDYCO"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["packet"]["envelope"]["purpose"], "genuine");
    let (_, v) = it.api("GET", &format!("/v1/inbox/{id}?from=CO-DIJIN"), None);
    assert_eq!(v["packet"]["envelope"]["purpose"], "squatter");
    let o = it.cli(&["inbox"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("SUSPICIOUS").count(), 2, "{text}");
    let collisions: Vec<Value> = it.audit_events().into_iter().filter(|e| e.get("id_collision").is_some()).collect();
    assert_eq!(collisions.len(), 1, "{collisions:?}");
    assert_eq!(collisions[0]["id_collision"]["from"], "ES-UDYCO");
    assert_eq!(collisions[0]["id_collision"]["also_from"], json!(["CO-DIJIN"]));
}

/// A restarted node loads nothing of what it received (1,000,000 packets start as fast as
/// none) and reads it from the store as copies arrive: a copy sent again after the restart is
/// receipted as the first time, at the first time, and not stored twice; the officer's
/// acknowledgement stays; the same id with other bytes is answered as the first copy.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_a_copy_sent_again_is_receipted_as_the_first_time() {
    let mut c = with_hostile_co();
    let co = ctx("CO-DIJIN");
    let p = packet_from("CO-DIJIN", "IT-DCSA");
    let copy = sealed("CO-DIJIN", &p);
    let send = |port: u16, bytes: Vec<u8>| async move {
        let answer = RawPeer::as_node("CO-DIJIN").send(port, "IT-DCSA", &bytes).await.unwrap();
        receipt_items(&ctx("CO-DIJIN"), "IT-DCSA", &answer).remove(0)
    };
    let first = send(c.node("IT-DCSA").quic, copy.clone()).await;
    assert_eq!(first.outcome, ReceiptOutcome::Accepted);
    let id = p.envelope.id.to_string();
    let o = c.node("IT-DCSA").cli(&["ack", "--officer", "Isp. Rossi", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    c.node("IT-DCSA").terminate();
    std::thread::sleep(Duration::from_millis(20));
    c.node("IT-DCSA").start();
    let again = send(c.node("IT-DCSA").quic, copy).await;
    assert_eq!(again.outcome, ReceiptOutcome::Accepted);
    assert_eq!(again.received_at, first.received_at, "receipted as the first time");
    assert_eq!(again.signed_digest, first.signed_digest);
    let resealed = co.seal(&p, &mut rand_core::OsRng).unwrap().remove(0).bytes;
    let other = send(c.node("IT-DCSA").quic, resealed).await;
    assert_eq!((other.received_at, other.sealed_digest), (first.received_at, first.sealed_digest), "the first copy's");

    let it = c.node("IT-DCSA");
    let shown: Vec<Value> = it.inbox().into_iter().filter(|v| v["id"] == id.as_str()).collect();
    assert_eq!(shown.len(), 1, "shown once: {shown:?}");
    let (_, v) = it.api("GET", &format!("/v1/inbox/{id}"), None);
    assert_eq!(v["reads"][0]["officer"], "Isp. Rossi", "the acknowledgement stays (stored again, it would not): {v}");
}

/// Item 10. Every officer who reads a packet may acknowledge it once: both acknowledgements are
/// recorded at the receiver and reach the originator; an officer's second acknowledgement is
/// refused with a clear message, and nothing is sent again.
#[test]
fn several_officers_acknowledge_and_a_repeat_is_refused() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let (code, v) = c.node("IT-DCSA").api(
        "POST",
        "/v1/packets?to=ES-UDYCO",
        Some(&common::draft("controlled-delivery-alert.json").to_string()),
    );
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let es = c.node("ES-UDYCO");
    wait_for("delivered", Duration::from_secs(20), || es.inbox_ids().contains(&id));
    for officer in ["Subinspector Gómez", "Inspectora Ruiz"] {
        let o = es.cli(&["ack", "--officer", officer, &id]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = es.cli(&["ack", "--officer", "Subinspector Gómez", &id]);
    assert_eq!(o.status.code(), Some(1), "a repeat is refused");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already acknowledged") && err.contains("nothing was sent again"), "{err}");
    let (_, shown) = es.api("GET", &format!("/v1/inbox/{id}"), None);
    let officers: Vec<&str> =
        shown["reads"].as_array().unwrap().iter().map(|r| r["officer"].as_str().unwrap()).collect();
    assert_eq!(officers, ["Subinspector Gómez", "Inspectora Ruiz"]);

    let it = c.node("IT-DCSA");
    wait_for("both acknowledgements at the originator", Duration::from_secs(20), || {
        state(it, &id, "ES-UDYCO")["reads"].as_array().is_some_and(|r| r.len() == 2)
    });
    let o = it.cli(&["status", &id]);
    let text = String::from_utf8_lossy(&o.stdout);
    // In time order (a ReadAck's time has seconds: two in the same second by name).
    assert!(
        text.contains("read by") && text.contains("Inspectora Ruiz at") && text.contains("Subinspector Gómez at"),
        "{text}"
    );
    // The repeat sent nothing: two ReadAcks were stored at IT-DCSA, no third.
    std::thread::sleep(Duration::from_millis(500));
    let acks = it.inbox().into_iter().filter(|p| p["type"] == "ReadAck").count();
    assert_eq!(acks, 2);
}

// ---------------------------------------------------------------------------------------------
// Helpers

use liaison::packet::{Body, Packet, ReceiptItem};
use liaison::seal::SignedPacket;
use liaison::timestamp::Timestamp;

/// Every receipt item the node answers `frames` with, sent as `who` on one new lane of a new
/// connection: until there is an item per frame, or nothing more comes for `idle`, or `idle`
/// three times over has passed.
async fn exchange(who: &str, port: u16, frames: &[Vec<u8>], idle: Duration) -> Vec<ReceiptItem> {
    let deadline = tokio::time::Instant::now() + idle * 3;
    let peer = RawPeer::as_node(who);
    let conn = peer.connect(port, "IT-DCSA").await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let owned: Vec<Vec<u8>> = frames.to_vec();
    let writer = tokio::spawn(async move {
        for f in &owned {
            if liaison::wire::write_frame(&mut send, f).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
        std::future::pending::<()>().await;
    });
    let me = ctx(who);
    let mut items = Vec::new();
    while items.len() < frames.len() {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, liaison::wire::read_frame(&mut recv, 1 << 24, idle)).await {
            Ok(Ok(Some(answer))) => items.extend(receipt_items(&me, "IT-DCSA", &answer)),
            _ => break,
        }
    }
    writer.abort();
    items
}

fn code(item: &ReceiptItem) -> String {
    match &item.outcome {
        ReceiptOutcome::Accepted => "accepted".into(),
        ReceiptOutcome::Rejected { code, .. } => code.to_string(),
    }
}

/// `p` signed by `who` as it is (whatever `Packet::check` would say) and sealed for `to`:
/// what a partner holding its own keys can send.
fn forged(who: &str, to: &str, p: &Packet) -> Vec<u8> {
    let c = ctx(who);
    common::encrypt_as(&c, to, p, common::sign_as(&c, p, p.to_cbor(), |_| {}))
}

/// The policy `text` with its receive rate set to `per_minute`.
fn receive_rate(text: String, per_minute: u32) -> String {
    let at = text.find("[receive]").unwrap();
    let (head, tail) = text.split_at(at);
    let tail = tail
        .lines()
        .map(|l| {
            if l.starts_with("max_packets_per_minute") {
                format!("max_packets_per_minute = {per_minute}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("{head}{tail}")
}

/// IT-DCSA's policy for CO-DIJIN receives at most `per_minute` packets a minute.
fn co_limited_to(per_minute: u32) -> Setup {
    Setup {
        stopped: vec!["CO-DIJIN"],
        policy: Some(Box::new(move |node: &str, partner: &str, text: String| {
            if node == "IT-DCSA" && partner == "CO-DIJIN" {
                receive_rate(text, per_minute)
            } else {
                text
            }
        })),
        ..Setup::default()
    }
}

/// Submits a draft at `from` to `to`; returns the packet id.
fn submit(n: &NodeProc, example: &str, to: &str) -> String {
    let (code, v) = n.api("POST", &format!("/v1/packets?to={to}"), Some(&common::draft(example).to_string()));
    assert_eq!(code, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn delivered(n: &NodeProc, id: &str, to: &str) -> bool {
    state(n, id, to)["state"] == "delivered"
}

/// A packet from CO-DIJIN to IT-DCSA: the request example, made current.
fn co_request() -> Packet {
    packet_from("CO-DIJIN", "IT-DCSA")
}

// ---------------------------------------------------------------------------------------------
// Item 2: no packet type is exempt from the receive rules

/// ReadAcks and consents have one strict shape (no classification but UNCLASSIFIED, no free
/// text, small), and count against the partner's rate like everything else: CO-DIJIN's ReadAcks
/// beyond its agreed rate are refused, and so is its next alert; a flood of 1 MB ReadAcks stores
/// nothing. ES-UDYCO's traffic is delivered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_packets_follow_the_receive_rules() {
    let mut c = Cluster::with(&ALL, co_limited_to(40));
    let port = c.node("IT-DCSA").quic;
    // A packet IT-DCSA really sent to CO-DIJIN (it stays queued: CO-DIJIN's node is not running),
    // so that ReadAcks about it are well addressed.
    let sent: PacketId = submit(c.node("IT-DCSA"), "information-request.json", "CO-DIJIN").parse().unwrap();
    let (co, it) = (common::node("CO-DIJIN"), common::node("IT-DCSA"));
    let ack = |officer: &str| {
        Packet::read_ack(
            &co,
            &it,
            sent,
            liaison::markings::Priority::Flash,
            officer.parse().unwrap(),
            Timestamp::now(),
            &mut rand_core::OsRng,
        )
    };

    let mut confidential = ack("Officer A");
    confidential.envelope.classification = liaison::markings::Classification::EuConfidential;
    let mut chatty = ack("Officer B");
    chatty.envelope.purpose = Some("Anything at all, in free text".parse().unwrap());
    let mut consent = Packet::from_json(&common::example_json("onward-consent.json").to_string()).unwrap();
    consent.envelope.originator.node = co;
    consent.envelope.recipients = vec![it];
    consent.envelope.classification = liaison::markings::Classification::EuConfidential;
    let shapes: Vec<Vec<u8>> =
        [confidential, chatty, consent].iter().map(|p| forged("CO-DIJIN", "IT-DCSA", p)).collect();
    let items = exchange("CO-DIJIN", port, &shapes, Duration::from_secs(5)).await;
    assert_eq!(items.iter().map(code).collect::<Vec<_>>(), ["invalid_packet"; 3]);

    // ReadAcks padded to 1 MB: refused, nothing stored.
    let before = c.node("IT-DCSA").data_bytes();
    let big: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let mut p = ack(&format!("Padder {i}"));
            p.envelope.related = (0..60_000u32).map(|j| PacketId::from_bytes([(j % 251) as u8; 16])).collect();
            forged("CO-DIJIN", "IT-DCSA", &p)
        })
        .collect();
    assert!(big[0].len() > 1_000_000);
    let items = exchange("CO-DIJIN", port, &big, Duration::from_secs(10)).await;
    assert_eq!(items.len(), 30);
    assert!(items.iter().all(|i| code(i) == "invalid_packet"), "{:?}", items.iter().map(code).collect::<Vec<_>>());
    let grown = c.node("IT-DCSA").data_bytes().saturating_sub(before);
    assert!(grown < 4 << 20, "30 MB of ReadAcks grew the store by {grown} bytes");

    // Well-formed ReadAcks count against the rate (40 a minute): 32 officers are recorded (as
    // many as are kept), then the rest are refused, and the partner's next alert too.
    let acks: Vec<Vec<u8>> = (0..45).map(|i| sealed("CO-DIJIN", &ack(&format!("Officer {i:02}")))).collect();
    let items = exchange("CO-DIJIN", port, &acks, Duration::from_secs(5)).await;
    let codes: Vec<String> = items.iter().map(code).collect();
    assert_eq!(codes.iter().filter(|c| *c == "accepted").count(), 32, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "system.too_many_acks").count(), 8, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "policy.receive.max_packets_per_minute").count(), 5, "{codes:?}");
    let alert = exchange("CO-DIJIN", port, &[sealed("CO-DIJIN", &co_request())], Duration::from_secs(5)).await;
    assert_eq!(code(&alert[0]), "policy.receive.max_packets_per_minute", "ReadAcks took the room of alerts");
    assert_eq!(state(c.node("IT-DCSA"), &sent.to_string(), "CO-DIJIN")["reads"].as_array().unwrap().len(), 32);

    // ES-UDYCO is not touched by any of it.
    let id = submit(c.node("ES-UDYCO"), "controlled-delivery-alert.json", "IT-DCSA");
    let es = c.node("ES-UDYCO");
    wait_for("ES-UDYCO's alert delivered", Duration::from_secs(20), || delivered(es, &id, "IT-DCSA"));
}

/// Beyond twice its agreed rate, nothing more is read from a partner until the minute allows:
/// a flood costs no CPU, no receipts, no disk, and another partner's traffic flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_paced_at_twice_the_agreed_rate() {
    let mut c = Cluster::with(&ALL, co_limited_to(30));
    let port = c.node("IT-DCSA").quic;
    let flood: Vec<Vec<u8>> = (0..150).map(|_| sealed("CO-DIJIN", &co_request())).collect();
    let started = std::time::Instant::now();
    let items = exchange("CO-DIJIN", port, &flood, Duration::from_secs(2)).await;
    let secs = started.elapsed().as_secs() + 1;
    // 60 a minute: a minute's worth at once, then one a second.
    assert!(items.len() as u64 <= 60 + secs, "{} answered in {secs} s", items.len());
    assert!(items.len() >= 60, "the agreed rate and its margin are read: {}", items.len());
    assert!(c.node("IT-DCSA").log_text().contains("reading from it is paced"));
    let id = submit(c.node("ES-UDYCO"), "controlled-delivery-alert.json", "IT-DCSA");
    let es = c.node("ES-UDYCO");
    wait_for("ES-UDYCO's alert delivered", Duration::from_secs(20), || delivered(es, &id, "IT-DCSA"));
}

// ---------------------------------------------------------------------------------------------
// Items 4 and 5: consent bound to its holder; times checked against the clock

/// `original`, signed by its originator, passed on by `by` to `to` with `consent`.
fn forward(by: &str, to: &str, original: &SignedPacket, consent: Option<&SignedPacket>) -> Packet {
    let o = &original.packet.envelope;
    let mut e = o.clone();
    e.id = PacketId::new_v7(liaison::node::now_ms(), &mut rand_core::OsRng);
    e.in_reply_to = None;
    e.related = vec![o.id];
    e.originator =
        liaison::packet::Originator { node: by.parse().unwrap(), officer: Some("Officer 1".parse().unwrap()) };
    e.recipients = vec![to.parse().unwrap()];
    e.created = Timestamp::now();
    e.due_by = None;
    Packet {
        version: 1,
        envelope: e,
        body: Body::Forward(liaison::packet::Forward {
            original: liaison::encoding::Blob(original.bytes.clone()),
            consent: consent.map(|c| liaison::encoding::Blob(c.bytes.clone())),
        }),
    }
}

/// CO-DIJIN's H2 request to ES-UDYCO, signed; `created`/`expires` as given.
fn co_original(created: Timestamp, expires: Timestamp, h2: bool) -> SignedPacket {
    let mut p = packet_from("CO-DIJIN", "ES-UDYCO");
    p.envelope.created = created;
    p.envelope.expires = expires;
    p.envelope.due_by = p.computed_due_by();
    if h2 {
        p.envelope.handling.codes.insert(liaison::markings::HandlingCode::H2);
    }
    ctx("CO-DIJIN").sign(&p).unwrap()
}

/// CO-DIJIN's consent, given to `holder`, that `original` may go to IT-DCSA.
fn co_consent(original: &SignedPacket, holder: &str) -> SignedPacket {
    let mut p = Packet::from_json(&common::example_json("onward-consent.json").to_string()).unwrap();
    p.envelope.id = PacketId::new_v7(liaison::node::now_ms(), &mut rand_core::OsRng);
    p.envelope.originator.node = common::node("CO-DIJIN");
    p.envelope.recipients = vec![common::node(holder)];
    p.envelope.in_reply_to = Some(original.packet.envelope.id);
    p.envelope.created = Timestamp::now();
    p.envelope.expires = Timestamp::now().plus_secs(86_400);
    p.body = Body::OnwardConsent(liaison::packet::OnwardConsent {
        packet_id: original.packet.envelope.id,
        allowed: vec![common::node("IT-DCSA")],
        until: Timestamp::now().plus_secs(86_400),
    });
    ctx("CO-DIJIN").sign(&p).unwrap()
}

/// Item 4: a consent is given to one holder. ES-UDYCO (hostile) passes CO-DIJIN's H2 packet to
/// IT-DCSA with a valid CO-DIJIN consent that was given to another node: refused. The same with
/// a consent given to ES-UDYCO is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_given_to_another_node_does_not_cover_a_forward() {
    let mut c = Cluster::with(&ALL, Setup { stopped: vec!["ES-UDYCO", "CO-DIJIN"], ..Setup::default() });
    let port = c.node("IT-DCSA").quic;
    let now = Timestamp::now();
    let original = co_original(now.plus_secs(-60), now.plus_secs(86_400), true);
    let stolen = co_consent(&original, "IT-DCSA");
    let f = forward("ES-UDYCO", "IT-DCSA", &original, Some(&stolen));
    let items = exchange("ES-UDYCO", port, &[sealed("ES-UDYCO", &f)], Duration::from_secs(5)).await;
    assert_eq!(code(&items[0]), "onward.consent_invalid");
    let ReceiptOutcome::Rejected { reason, .. } = &items[0].outcome else { unreachable!() };
    assert!(reason.contains("given to IT-DCSA, not to ES-UDYCO"), "{reason}");

    let own = co_consent(&original, "ES-UDYCO");
    let f = forward("ES-UDYCO", "IT-DCSA", &original, Some(&own));
    let items = exchange("ES-UDYCO", port, &[sealed("ES-UDYCO", &f)], Duration::from_secs(5)).await;
    assert_eq!(code(&items[0]), "accepted");
    assert_eq!(c.node("IT-DCSA").inbox().len(), 1, "only the covered forward is stored");
}

/// Item 5: times are checked against the clock — a forwarded original that expired ten days ago
/// is refused; a packet dated 200 days ahead is refused with its own code; a request dated ten
/// days back is taken, and its answer deadline counts from when IT-DCSA stored it (the
/// requester's due_by is shown as what it expects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_are_checked_against_the_clock() {
    let mut c = Cluster::with(&ALL, Setup { stopped: vec!["ES-UDYCO", "CO-DIJIN"], ..Setup::default() });
    let port = c.node("IT-DCSA").quic;
    let now = Timestamp::now();
    let day = 86_400;

    let stale = co_original(now.plus_secs(-40 * day), now.plus_secs(-10 * day), false);
    let mut f = forward("ES-UDYCO", "IT-DCSA", &stale, None);
    f.envelope.expires = now.plus_secs(day); // the forward itself is fresh: the hostile hop says so
    let items = exchange("ES-UDYCO", port, &[sealed("ES-UDYCO", &f)], Duration::from_secs(5)).await;
    assert_eq!(code(&items[0]), "onward.original_expired");

    let mut ahead = co_request();
    ahead.envelope.created = now.plus_secs(200 * day);
    ahead.envelope.expires = now.plus_secs(230 * day);
    ahead.envelope.due_by = ahead.computed_due_by();
    let mut back = co_request();
    back.envelope.created = now.plus_secs(-10 * day);
    back.envelope.due_by = back.computed_due_by();
    let frames = [sealed("CO-DIJIN", &ahead), sealed("CO-DIJIN", &back)];
    let items = exchange("CO-DIJIN", port, &frames, Duration::from_secs(5)).await;
    assert_eq!(items.iter().map(code).collect::<Vec<_>>(), ["created_in_future", "accepted"]);

    let it = c.node("IT-DCSA");
    let entry = it.inbox().into_iter().find(|p| p["id"] == back.envelope.id.to_string().as_str()).unwrap();
    let deadline = &entry["deadline"];
    assert_eq!(deadline["due"]["state"], "open", "not overdue on arrival: {entry}");
    let due: Timestamp = deadline["due_by"].as_str().unwrap().parse().unwrap();
    assert!((due.unix() - now.unix() - 8 * 3600).abs() < 120, "8 hours from storage: {due}");
    assert_eq!(deadline["sender_due_by"], back.envelope.due_by.unwrap().to_string());
    assert_eq!(entry["sender_due_by"], back.envelope.due_by.unwrap().to_string());
}

// ---------------------------------------------------------------------------------------------
// Item 8: strict CBOR

/// Bytes a lenient CBOR reader would take: a bignum for the version, an unknown tag, an
/// indefinite length, an integer not in its shortest form, a COSE `crit` naming a parameter the
/// node does not process. Each is refused with its own stable code, though validly signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_cbor_and_unknown_critical_headers_are_refused() {
    let mut c = with_hostile_co();
    let port = c.node("IT-DCSA").quic;
    let co = ctx("CO-DIJIN");
    let p = co_request();
    let good = p.to_cbor();
    assert_eq!(&good[1..9], b"\x67version");
    let payloads: [(&str, Vec<u8>); 4] = [
        ("cbor_unknown_tag", [&good[..9], &[0xc2, 0x41, 0x01], &good[10..]].concat()),
        ("cbor_unknown_tag", [&good[..9], &[0xd9, 0xd9, 0xf7, 0x01], &good[10..]].concat()),
        ("cbor_indefinite_length", [&[0xbf], &good[1..], &[0xff]].concat()),
        ("cbor_not_preferred", [&good[..9], &[0x18, 0x01], &good[10..]].concat()),
    ];
    let mut frames: Vec<Vec<u8>> = payloads
        .iter()
        .map(|(_, payload)| common::encrypt_as(&co, "IT-DCSA", &p, common::sign_as(&co, &p, payload.clone(), |_| {})))
        .collect();
    let crit = common::sign_as(&co, &p, good.clone(), |h| {
        h.crit.push(coset::RegisteredLabelWithPrivate::PrivateUse(-65_537));
        h.rest.push((coset::Label::Int(-65_537), ciborium::Value::Bool(true)));
    });
    frames.push(common::encrypt_as(&co, "IT-DCSA", &p, crit));
    let items = exchange("CO-DIJIN", port, &frames, Duration::from_secs(5)).await;
    let want: Vec<&str> = payloads.iter().map(|(c, _)| *c).chain(["cose_unknown_crit"]).collect();
    assert_eq!(items.iter().map(code).collect::<Vec<_>>(), want);
    assert!(c.node("IT-DCSA").inbox().is_empty());
    // The same packet, well-formed, is taken.
    let items = exchange("CO-DIJIN", port, &[sealed("CO-DIJIN", &p)], Duration::from_secs(5)).await;
    assert_eq!(code(&items[0]), "accepted");
}

// ---------------------------------------------------------------------------------------------
// Item 3: stalled frames pin no more than the partner's budget

/// The most RSS the node process reached while `f` ran, sampled every 50 ms.
async fn peak_rss<F: std::future::Future>(pid: u32, f: F) -> (u64, F::Output) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_of(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    let out = f.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (sampler.join().unwrap(), out)
}

/// What a stall attack got from the node.
struct Stalled {
    /// Connections still open once the node has dealt with them all.
    open: usize,
    /// The most streams the node let it open on one connection.
    most_streams: usize,
    /// Streams opened in all.
    streams: usize,
    writers: Vec<tokio::task::JoinHandle<()>>,
    _conns: Vec<quinn::Connection>,
}

/// Opens `connections` connections as CO-DIJIN and tries `streams` streams across the last
/// eight; on each stream it gets, announces a frame of the largest size and sends all of it but
/// the last byte, then holds.
async fn stall_attack(port: u16, connections: usize, streams: usize) -> Stalled {
    let peer = RawPeer::as_node("CO-DIJIN");
    let mut conns = Vec::new();
    for _ in 0..connections {
        if let Ok(c) = peer.connect(port, "IT-DCSA").await {
            conns.push(c);
        }
    }
    let len = liaison::seal::MAX_SEALED_BYTES;
    let mut writers = Vec::new();
    let mut per_conn = vec![0usize; conns.len()];
    for i in 0..streams {
        let at = conns.len() - 1 - i % conns.len().min(8);
        let Ok(Ok((mut send, recv))) = tokio::time::timeout(Duration::from_millis(20), conns[at].open_bi()).await
        else {
            continue;
        };
        per_conn[at] += 1;
        writers.push(tokio::spawn(async move {
            let _recv = recv;
            let _ = send.write_all(&(len as u32).to_be_bytes()).await;
            let chunk = vec![0x5a; 64 * 1024];
            let mut left = len - 1;
            while left > 0 {
                let n = left.min(chunk.len());
                if send.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            std::future::pending::<()>().await;
        }));
    }
    // The node closes the oldest connections as newer ones arrive; give its closes time to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Stalled {
        open: conns.iter().filter(|c| c.close_reason().is_none()).count(),
        most_streams: per_conn.iter().copied().max().unwrap_or(0),
        streams: per_conn.iter().sum(),
        writers,
        _conns: conns,
    }
}

/// One partner holding 1,000 stalled streams over 400 connections keeps the node within its
/// configured budget (32 MiB here) plus a stated overhead; the stalled frames are abandoned
/// after `frame_stall_secs`, and the memory is given back. ES-UDYCO's alerts are delivered
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_pin_no_more_than_the_partner_budget() {
    let setup = Setup {
        stopped: vec!["CO-DIJIN"],
        config: Some(Box::new(|name: &str, text: String| {
            if name == "IT-DCSA" {
                format!("{text}\n[limits]\npartner_memory_mib = 32\nframe_stall_secs = 4\n")
            } else {
                text
            }
        })),
        ..Setup::default()
    };
    let mut c = Cluster::with(&ALL, setup);
    let port = c.node("IT-DCSA").quic;
    // Warm up: a few packets each way, so the baseline includes what normal traffic allocates.
    for _ in 0..3 {
        let id = submit(c.node("ES-UDYCO"), "controlled-delivery-alert.json", "IT-DCSA");
        let es = c.node("ES-UDYCO");
        wait_for("warm-up delivered", Duration::from_secs(20), || delivered(es, &id, "IT-DCSA"));
    }
    let baseline = c.get("IT-DCSA").rss_kib();
    let (peak, attack) = peak_rss(c.get("IT-DCSA").pid(), async {
        let attack = stall_attack(port, 400, 1000).await;
        // The node reads what its budget allows; the stall limit (4 s) abandons those frames,
        // and the next ones are read in their place: the budget holds throughout.
        let id = submit(c.get("ES-UDYCO"), "controlled-delivery-alert.json", "IT-DCSA");
        let es = c.get("ES-UDYCO");
        wait_for("ES-UDYCO's alert delivered during the attack", Duration::from_secs(20), || {
            delivered(es, &id, "IT-DCSA")
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        attack
    })
    .await;
    let Stalled { open, most_streams, streams, writers, _conns: attack_conns } = attack;
    eprintln!(
        "RSS: baseline {baseline} KiB, peak {peak} KiB; of 400 connections and 1,000 streams tried, {open} connections stayed open, {streams} streams were opened, at most {most_streams} on one connection"
    );
    // Two connections stay open (the node closes the oldest as newer ones come), with at most
    // three streams on each.
    assert!(open <= 2 && most_streams <= 3, "{open} connections, {most_streams} streams on one");
    // The stated overhead: QUIC buffers at most 3 × 1.25 MB per connection, plus connection and
    // task state; 16 MiB covers them with room.
    let (budget, overhead) = (32 << 10, 16 << 10);
    assert!(peak <= baseline + budget + overhead, "peak {peak} KiB over baseline {baseline} KiB + budget + overhead");
    let it = c.node("IT-DCSA");
    assert!(it.log_text().contains("partner stopped sending a frame; stream reset"));
    // The partner goes away: everything it made the node hold is given back.
    for w in writers {
        w.abort();
    }
    drop(attack_conns);
    let it = c.node("IT-DCSA");
    // The frames (the budget's 27 MiB at the peak) are given back to the operating system;
    // what may stay is within the stated overhead: QUIC's small receive buffers and connection
    // state, freed to the allocator (which keeps small blocks for reuse), 8-11 MiB in our runs.
    let given_back = baseline + overhead;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while it.rss_kib() > given_back && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = it.rss_kib();
    eprintln!("RSS after the partner left: {after} KiB");
    assert!(after <= given_back, "{after} KiB after the partner left, baseline {baseline} KiB");
}

// ---------------------------------------------------------------------------------------------
// Items 6, 7, 9: the node's own files, logs and error messages

/// Item 6: the TLS private key is held to the node keys' rule: readable by group or others, the
/// node does not start, and says why.
#[test]
fn a_tls_key_readable_by_others_stops_the_node() {
    let c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], Setup { stopped: vec!["IT-DCSA", "ES-UDYCO"], ..Setup::default() });
    let key = c.dir.path().join("certs/tls/IT-DCSA.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = serve_expecting_refusal(&c.get("IT-DCSA").config);
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("IT-DCSA.key") && err.contains("644") && err.contains("chmod 600"), "{err}");
}

/// Runs `liaison serve` on `config`, which must be refused: a node still running after 10 s
/// is stopped and the test fails.
fn serve_expecting_refusal(config: &std::path::Path) -> std::process::Output {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the node started: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Item 9: a path that names the wrong file (here a policy path pointing at a file of secrets)
/// is refused naming the file and the line, without echoing a byte of it.
#[test]
fn a_wrong_file_is_named_without_its_content() {
    let setup = Setup {
        stopped: vec!["IT-DCSA", "ES-UDYCO"],
        config: Some(Box::new(|_: &str, text: String| text.replace("policies/IT-DCSA/ES-UDYCO.toml", "shadow"))),
        ..Setup::default()
    };
    let c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], setup);
    std::fs::write(c.dir.path().join("shadow"), "root:$6$SECRET-HASH:19700:0:99999:7:::\nbin:*:19700:0:99999:7:::\n")
        .unwrap();
    let o = serve_expecting_refusal(&c.get("IT-DCSA").config);
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shadow") && err.contains("line 1, column"), "{err}");
    assert!(!err.contains("SECRET") && !err.contains("root"), "{err}");
}

/// Items 7 and 9: 300 handshakes with a certificate from another CA, 300 with an enrolled-looking
/// certificate of a node nobody enrolled, and 300 API requests without a token: each refused;
/// the client learns nothing but the refusal (not the server's clock, not that its certificate
/// passed the CA check); the log grows by a few lines a minute, not a line per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_learn_nothing_and_do_not_grow_the_log() {
    let mut c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], Setup { stopped: vec!["ES-UDYCO"], ..Setup::default() });
    let it = c.node("IT-DCSA");
    let (port, api) = (it.quic, it.api.clone());
    let log_before = it.log_text();
    let mut told = std::collections::BTreeSet::new();
    let peers: Vec<RawPeer> =
        [("bad/foreign.crt", "bad/foreign.key"), ("bad/not-enrolled.crt", "bad/not-enrolled.key")]
            .iter()
            .map(|(cert, key)| {
                RawPeer::new(liaison::transport::client_config(&demo_material(cert, key), Default::default()).unwrap())
            })
            .collect();
    for _ in 0..300 {
        for peer in &peers {
            let seen = match peer.connect(port, "IT-DCSA").await {
                Err(e) => e,
                Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap().to_string(),
            };
            told.insert(seen);
        }
    }
    for _ in 0..300 {
        let (code, _) = liaison::client::call(&api, "not-the-token", "GET", "/v1/inbox", None).unwrap();
        assert_eq!(code, 401);
    }
    assert_eq!(told.len(), 1, "one answer for every refusal: {told:?}");
    let answer = told.into_iter().next().unwrap();
    for secret in ["UnknownIssuer", "enrolled", "xpired", "time", "DE-BKA"] {
        assert!(!answer.contains(secret), "the client was told {answer:?}");
    }
    let log = c.node("IT-DCSA").log_text();
    let grown = &log[log_before.len()..];
    let lines = grown.lines().filter(|l| l.contains("refus")).count();
    assert!(
        lines <= 2 * liaison::limits::LogBudget::PER_MINUTE as usize + 2,
        "{lines} lines for 900 refusals:\n{grown}"
    );
    assert!(grown.contains("UnknownIssuer") && grown.contains("names no enrolled partner"), "the reasons are logged");
    assert!(grown.len() < 16 * 1024, "{} bytes of log for 900 refusals", grown.len());
}

// ---------------------------------------------------------------------------------------------
// The receipt side

/// Waits until IT-DCSA gives up on `lane` (closes or resets it), at most 10 s.
async fn refused(lane: &mut Lane) {
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match lane.recv.read(&mut buf).await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the node did not close the lane");
}

/// CO-DIJIN receives IT-DCSA's packets and answers with false receipts: for a copy never sent,
/// naming other bytes, signed by another partner, replayed from an earlier delivery, and a
/// flood of them. Each is refused: the lane is closed, the packet is not delivered by it, no
/// receipt is stored, the audit trail does not grow with them. A genuine receipt then delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_receipts_are_refused_and_change_nothing() {
    let c = Cluster::with(&ALL, Setup { stopped: vec!["CO-DIJIN"], ..Setup::default() });
    let mut hostile = HostileReceiver::listen("CO-DIJIN", c.get("CO-DIJIN").quic, &["IT-DCSA", "ES-UDYCO"]);
    let (co, es) = (ctx("CO-DIJIN"), ctx("ES-UDYCO"));
    let it = c.get("IT-DCSA");
    let receipts_from_co =
        || it.audit_events().iter().filter(|e| e.get("receipts").is_some_and(|r| r["from"] == "CO-DIJIN")).count();
    let first = submit(it, "information-request.json", "CO-DIJIN");

    let mut lane = hostile.next_lane().await;
    let genuine = accepted(&lane.first, &co);
    assert_eq!(genuine.packet_id.to_string(), first);
    let never_sent = liaison::packet::ReceiptItem {
        packet_id: PacketId::new_v7(liaison::node::now_ms(), &mut rand_core::OsRng),
        ..genuine.clone()
    };
    let other_bytes = liaison::packet::ReceiptItem {
        sealed_digest: liaison::encoding::Digest::of(b"other bytes"),
        ..genuine.clone()
    };
    let false_receipts = [
        ("a copy never sent", receipt(&co, "IT-DCSA", vec![never_sent.clone()])),
        ("other bytes", receipt(&co, "IT-DCSA", vec![other_bytes])),
        ("signed by another partner", receipt(&es, "IT-DCSA", vec![genuine.clone()])),
    ];
    for (what, bytes) in false_receipts {
        liaison::wire::write_frame(&mut lane.send, &bytes).await.unwrap();
        refused(&mut lane).await;
        assert_ne!(state(it, &first, "CO-DIJIN")["state"], "delivered", "{what}");
        lane = hostile.next_lane().await; // the copy comes again, on a new lane
    }
    // A flood on one lane: the first is refused and the lane closed; the rest is never read.
    let flood = receipt(&co, "IT-DCSA", vec![never_sent]);
    for _ in 0..500 {
        if liaison::wire::write_frame(&mut lane.send, &flood).await.is_err() {
            break;
        }
    }
    refused(&mut lane).await;
    assert_eq!(receipts_from_co(), 0, "no false receipt is recorded");
    assert!(it.log_text().contains("completes no copy in flight on this lane"));

    // The genuine receipt delivers.
    let mut lane = hostile.next_lane().await;
    let good = receipt(&co, "IT-DCSA", vec![accepted(&lane.first, &co)]);
    liaison::wire::write_frame(&mut lane.send, &good).await.unwrap();
    wait_for("delivered by the genuine receipt", Duration::from_secs(10), || delivered(it, &first, "CO-DIJIN"));
    assert_eq!(state(it, &first, "CO-DIJIN")["digest"], liaison::encoding::Digest::of(&lane.first).to_string());

    // That receipt, replayed for the next packet, is refused.
    let second = submit(it, "information-request.json", "CO-DIJIN");
    let mut lane = loop {
        let l = hostile.next_lane().await;
        if accepted(&l.first, &co).packet_id.to_string() == second {
            break l;
        }
    };
    liaison::wire::write_frame(&mut lane.send, &good).await.unwrap();
    refused(&mut lane).await;
    assert_ne!(state(it, &second, "CO-DIJIN")["state"], "delivered");
    assert!(it.log_text().contains("already applied: a replay"));
    assert_eq!(receipts_from_co(), 1, "only the genuine receipt is recorded");
}
