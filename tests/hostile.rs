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
    assert!(text.contains("read by Subinspector Gómez at") && text.contains("Inspectora Ruiz at"), "{text}");
    // The repeat sent nothing: two ReadAcks were stored at IT-DCSA, no third.
    std::thread::sleep(Duration::from_millis(500));
    let acks = it.inbox().into_iter().filter(|p| p["type"] == "ReadAck").count();
    assert_eq!(acks, 2);
}
