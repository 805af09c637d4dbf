//! Real node processes through the project's UDP fault proxy (`liaison::faultproxy`): a link
//! that loses, duplicates and reorders datagrams, and is cut for a while. Nothing acknowledged
//! is lost, nothing is shown twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::cluster::*;
use liaison::faultproxy::{FaultProxy, Faults};
use serde_json::json;

/// IT-DCSA's link to ES-UDYCO goes through a proxy with `faults`; ES-UDYCO's address in
/// IT-DCSA's configuration is the proxy's.
fn cluster_through_proxy(faults: Faults) -> (Cluster, Arc<Mutex<Option<FaultProxy>>>) {
    let proxy: Arc<Mutex<Option<FaultProxy>>> = Arc::default();
    let slot = proxy.clone();
    let edit = move |name: &str, config: String| {
        if name != "IT-DCSA" {
            return config;
        }
        let marker = "id = \"ES-UDYCO\"\naddr = \"127.0.0.1:";
        let start = config.find(marker).unwrap() + marker.len();
        let end = start + config[start..].find('"').unwrap();
        let port: u16 = config[start..end].parse().unwrap();
        let p = FaultProxy::start("127.0.0.1:0".parse().unwrap(), ([127, 0, 0, 1], port).into(), faults, 42).unwrap();
        let rewritten = format!("{}{}{}", &config[..start], p.addr().port(), &config[end..]);
        *slot.lock().unwrap() = Some(p);
        rewritten
    };
    let setup = Setup { config: Some(Box::new(edit)), ..Setup::default() };
    (Cluster::with(&["IT-DCSA", "ES-UDYCO"], setup), proxy)
}

fn small(i: usize) -> String {
    let mut body = common::draft("clarification-request.json");
    body["envelope"]["recipients"] = json!(["ES-UDYCO"]);
    body["body"]["ClarificationRequest"]["questions"] = json!([format!("question {i}")]);
    body.to_string()
}

fn submit(it: &NodeProc, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            let (code, v) = it.api("POST", "/v1/packets", Some(&small(i)));
            assert_eq!(code, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// 5 % loss, 2 % duplicates, 10–30 ms each way (so datagrams overtake each other), and a
/// two-second cut in the middle: every packet ends delivered with its receipt, and is in
/// ES-UDYCO's inbox once.
#[test]
fn every_packet_crosses_a_lossy_link_and_a_partition_once() {
    let faults =
        Faults { loss: 0.05, delay: Duration::from_millis(10), jitter: Duration::from_millis(20), duplicate: 0.02 };
    let (mut c, proxy) = cluster_through_proxy(faults);
    let it = c.node("IT-DCSA");
    let mut sent = submit(it, 0..60);
    proxy.lock().unwrap().as_ref().unwrap().set_partitioned(true);
    sent.extend(submit(it, 60..120));
    // Hold the cut long enough for the link to be declared dead and dialled again.
    std::thread::sleep(Duration::from_secs(2));
    proxy.lock().unwrap().as_ref().unwrap().set_partitioned(false);
    wait_for("every copy receipted", Duration::from_secs(120), || it.summary()["delivered"] == 120);

    let es = c.node("ES-UDYCO");
    let mut inbox = es.inbox_ids();
    inbox.sort();
    sent.sort();
    assert_eq!(inbox, sent, "each packet once in the inbox");
    let counts = proxy.lock().unwrap().as_ref().unwrap().counts();
    assert!(counts.lost > 0 && counts.duplicated > 0 && counts.partitioned > 0, "{counts:?}");
}
