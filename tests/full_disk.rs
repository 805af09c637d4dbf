//! A full disk with real processes: each node's data directory on a small tmpfs of its own,
//! filled and freed behind its back by a ballast file (root only; CI runs as root).
//!
//! What must hold (issue 11): the node refuses what it cannot store and says so (HTTP 507, CLI
//! exit 75, the sender's status names the partner's full disk), keeps FLASH alerts and receipts
//! going in its headroom, loses nothing acknowledged, stops on SIGTERM while full, and resumes
//! by itself when space returns, without a restart.

use std::time::Duration;

mod common;

use common::cluster::*;
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

/// Every node keeps 16 MiB free: bulk stops below 16 MiB, everything below 4 MiB.
fn cluster(full: &'static str, tmpfs_mib: u64) -> (Cluster, Tmpfs) {
    let setup = Setup {
        stopped: vec![full],
        config: Some(Box::new(|_, text| text + "[store]\nheadroom_mib = 16\n")),
        ..Default::default()
    };
    let mut c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], setup);
    let fs = Tmpfs::mount(&c.get(full).data_dir, tmpfs_mib);
    c.node(full).start();
    (c, fs)
}

/// A ROUTINE answer with a case file of `size` bytes, numbered `i`.
fn routine(i: usize, size: usize) -> String {
    case_file(i, size).to_string()
}

fn flash() -> String {
    let mut alert = common::draft("controlled-delivery-alert.json");
    alert["envelope"]["recipients"] = json!(["ES-UDYCO"]);
    alert.to_string()
}

fn submit(n: &NodeProc, body: &str) -> (u16, Value) {
    n.api("POST", "/v1/packets", Some(body))
}

fn submitted(n: &NodeProc, body: &str) -> String {
    let (code, v) = submit(n, body);
    assert_eq!(code, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn recipient(n: &NodeProc, id: &str) -> Value {
    let (code, v) = n.api("GET", &format!("/v1/packets/{id}"), None);
    assert_eq!(code, 200, "{v}");
    v["recipients"][0].clone()
}

fn space(n: &NodeProc) -> String {
    n.api("GET", "/v1/health", None).1["space"].as_str().unwrap().to_owned()
}

fn assert_exactly_once(sent: &[String], inbox: &[String]) {
    let mut got = inbox.to_vec();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), inbox.len(), "a packet is in the inbox twice");
    let mut want = sent.to_vec();
    want.sort();
    assert_eq!(got, want, "the inbox differs from what was sent");
}

/// The receiver's disk fills: it stores none of the bulk and withholds its receipts, the sender's
/// status says why, a FLASH alert still gets through; space comes back and everything is
/// delivered, once, without a restart.
#[test]
fn a_full_receiver_withholds_receipts_says_why_and_resumes_by_itself() {
    let (c, fs) = cluster("ES-UDYCO", 64);
    let (it, es) = (c.get("IT-DCSA"), c.get("ES-UDYCO"));
    assert_eq!(space(es), "ok");
    let ballast = fs.fill("ballast", 10 * MIB);
    wait_for("ES-UDYCO to see its disk low", Duration::from_secs(10), || space(es) == "low");

    let bulk: Vec<String> = (0..6).map(|i| submitted(it, &routine(i, 512 * 1024))).collect();
    wait_for("the sender's status to name the full disk", Duration::from_secs(30), || {
        recipient(it, &bulk[0])["waiting"] == json!("partner_storage_full")
    });
    let r = recipient(it, &bulk[0]);
    assert!(r["state"] == "queued" || r["state"] == "in_flight", "sent again and again, never delivered: {r}");
    assert!(r["reason"].as_str().unwrap().contains("ES-UDYCO's disk is full"), "{r}");
    let o = it.cli(&["status", &bulk[0]]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ES-UDYCO's disk is full"), "{o:?}");
    assert!(es.log_text().contains("disk nearly full"), "the receiver logs its state");

    // FLASH goes on in the headroom.
    let alert = submitted(it, &flash());
    wait_for("the FLASH alert delivered", Duration::from_secs(30), || recipient(it, &alert)["state"] == "delivered");
    for id in &bulk {
        assert_ne!(recipient(it, id)["state"], "delivered", "bulk was stored on a low disk");
    }

    std::fs::remove_file(ballast).unwrap();
    wait_for("every copy delivered once space is back", Duration::from_secs(60), || {
        bulk.iter().all(|id| recipient(it, id)["state"] == "delivered")
    });
    assert!(recipient(it, &bulk[0])["waiting"].is_null(), "the problem is cleared by the receipts");
    assert_eq!(space(es), "ok");
    assert!(es.log_text().contains("disk space is back"));
    let mut sent = bulk.clone();
    sent.push(alert);
    assert_exactly_once(&sent, &es.inbox_ids());
}

/// The sender's disk fills: bulk submits are refused with 507 (the CLI exits 75 and says the
/// disk is full), FLASH goes on until the last quarter of the headroom, then is refused too;
/// SIGTERM stops the node while full, it starts again on the full disk, and resumes by itself
/// when space is freed; nothing acknowledged is lost.
#[test]
fn a_full_sender_refuses_with_507_stops_on_sigterm_and_resumes_by_itself() {
    let (mut c, fs) = cluster("IT-DCSA", 64);
    let before: Vec<String> = (0..3).map(|i| submitted(c.get("IT-DCSA"), &routine(i, 256 * 1024))).collect();
    let low = fs.fill("ballast", 10 * MIB);
    let it = c.get("IT-DCSA");
    let (code, v) = submit(it, &routine(10, 256 * 1024));
    assert_eq!(code, 507, "{v}");
    assert!(v["error"].as_str().unwrap().contains("the disk is nearly full"), "{v}");
    let file = c.dir.path().join("routine.json");
    std::fs::write(&file, routine(11, 1024)).unwrap();
    let o = it.cli(&["send", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("disk is full"), "{stderr}");
    assert_eq!(space(it), "low");
    let alert = submitted(it, &flash());
    assert!(it.log_text().contains("disk nearly full"));

    // Below the last quarter: nothing is taken, FLASH neither.
    let full = fs.fill("ballast-2", 2 * MIB);
    let (code, v) = submit(it, &flash());
    assert_eq!(code, 507, "{v}");
    assert!(v["error"].as_str().unwrap().contains("the disk is full"), "{v}");
    assert_eq!(space(it), "full");

    // SIGTERM while full (`terminate` fails the test after 15 s), and a start on the full disk.
    c.node("IT-DCSA").terminate();
    c.node("IT-DCSA").start();
    let it = c.get("IT-DCSA");
    assert_eq!(space(it), "full");
    assert_eq!(submit(it, &flash()).0, 507);

    std::fs::remove_file(full).unwrap();
    std::fs::remove_file(low).unwrap();
    wait_for("IT-DCSA to take bulk again", Duration::from_secs(10), || space(it) == "ok");
    let after = submitted(it, &routine(12, 256 * 1024));
    let mut sent = before;
    sent.extend([alert, after]);
    wait_for("every acknowledged packet delivered", Duration::from_secs(60), || {
        sent.iter().all(|id| recipient(it, id)["state"] == "delivered")
    });
    assert_exactly_once(&sent, &c.get("ES-UDYCO").inbox_ids());
}

/// The sender gives the disk back as copies are delivered: the receipt names the signed packet
/// it keeps, so the sealed copy is deleted, and its segment file goes (or, the newest, is cut
/// back) within seconds. Three rounds of 12 MiB: the sealed copies never pile up.
#[test]
fn the_sender_gives_back_the_space_of_delivered_copies() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let it = c.get("IT-DCSA");
    let sealed = it.data_dir.join("segments/sealed");
    let kept = it.data_dir.join("segments/sent");
    let mut sent = Vec::new();
    for round in 0..3 {
        let ids: Vec<String> = (0..4).map(|i| submitted(it, &routine(round * 4 + i, 3 * MIB as usize))).collect();
        wait_for("delivered", Duration::from_secs(60), || {
            ids.iter().all(|id| recipient(it, id)["state"] == "delivered")
        });
        wait_for("the sealed copies' space given back", Duration::from_secs(20), || dir_bytes(&sealed) < MIB);
        sent.extend(ids);
        assert!(dir_bytes(&kept) >= sent.len() as u64 * 3 * MIB, "the signed packets sent are kept");
    }
    assert_exactly_once(&sent, &c.get("ES-UDYCO").inbox_ids());
}
