//! Nodes in one process, over real QUIC on loopback, with real sled stores and certificates:
//! submit, delivery, signed receipts, inbox, acknowledgement, restart.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use liaison::delivery::{EntryState, RetryPolicy};
use liaison::encoding::Digest;
use liaison::keys::{Keyring, NodeKeys};
use liaison::node::{Node, NodeConfig, Partner};
use liaison::packet::{Packet, PacketType};
use liaison::pki::Ca;
use liaison::seal::SealContext;
use liaison::store::{MemoryBackend, Store, Tree};
use liaison::transport::TlsMaterial;
use time::OffsetDateTime;
use tokio::sync::watch;

const NODES: [&str; 3] = ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"];

use common::node;

struct Federation {
    dir: tempfile::TempDir,
    ca: Ca,
    keys: Vec<(String, [u8; 32], [u8; 32])>,
    sockets: Vec<(String, std::net::SocketAddr)>,
    stop: watch::Sender<bool>,
    /// The certificate each started node runs with.
    certs: std::sync::Mutex<std::collections::HashMap<String, liaison::pki::NodeCert>>,
}

impl Federation {
    fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let ca =
            Ca::generate("test federation", now - time::Duration::days(1), now + time::Duration::days(30)).unwrap();
        let keys = NODES
            .iter()
            .map(|n| {
                use sha2::Digest as _;
                (
                    n.to_string(),
                    sha2::Sha256::digest(format!("s{n}")).into(),
                    sha2::Sha256::digest(format!("e{n}")).into(),
                )
            })
            .collect();
        let sockets = NODES
            .iter()
            .map(|n| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                (n.to_string(), s.local_addr().unwrap())
            })
            .collect();
        let (stop, _) = watch::channel(false);
        Self { dir: tempfile::tempdir().unwrap(), ca, keys, sockets, stop, certs: Default::default() }
    }

    fn node_keys(&self, name: &str) -> NodeKeys {
        let (_, s, e) = self.keys.iter().find(|(n, _, _)| n == name).unwrap();
        NodeKeys::from_secret_bytes(node(name), s, *e)
    }

    async fn start(&self, name: &str) -> Node {
        self.start_with(name, demo_policies(name)).await
    }

    async fn start_with(&self, name: &str, policies: liaison::policy::PolicyBook) -> Node {
        let store = Store::open(&self.dir.path().join(name)).unwrap();
        self.start_on(name, policies, store, self.stop.subscribe()).await
    }

    /// `name` on an in-memory disk that the test can make fail or crash, with its own stop.
    async fn start_faulty(&self, name: &str) -> (Node, Arc<MemoryBackend>, watch::Sender<bool>) {
        let disk = Arc::new(MemoryBackend::default());
        let (stop, rx) = watch::channel(false);
        let store = Store::with_backend(disk.clone()).unwrap();
        (self.start_on(name, demo_policies(name), store, rx).await, disk, stop)
    }

    /// Stops `node`, crashes its disk (everything not flushed is lost) and starts it again on
    /// what is left.
    async fn crash_and_restart(
        &self,
        node: Node,
        disk: &Arc<MemoryBackend>,
        stop: watch::Sender<bool>,
    ) -> (Node, watch::Sender<bool>) {
        let name = node.id().to_string();
        let _ = stop.send(true);
        node.shutdown().await;
        disk.crash();
        let (stop, rx) = watch::channel(false);
        let store = Store::with_backend(disk.clone()).unwrap();
        (self.start_on(&name, demo_policies(&name), store, rx).await, stop)
    }

    /// IT-DCSA on a disk the test controls, ES-UDYCO, and an alert from the first delivered to
    /// the second.
    async fn alert_delivered(&self) -> (Node, Arc<MemoryBackend>, watch::Sender<bool>, Node, liaison::ids::PacketId) {
        let (it, disk, it_stop) = self.start_faulty("IT-DCSA").await;
        let es = self.start("ES-UDYCO").await;
        let p = example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO"]);
        let id = it.submit(&p).await.unwrap().id;
        until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
        (it, disk, it_stop, es, id)
    }

    async fn start_on(
        &self,
        name: &str,
        policies: liaison::policy::PolicyBook,
        store: Store,
        stop: watch::Receiver<bool>,
    ) -> Node {
        let now = OffsetDateTime::now_utc();
        let cert = self.ca.issue(&node(name), now - time::Duration::days(1), now + time::Duration::days(30)).unwrap();
        let tls = TlsMaterial::from_pem(self.ca.cert_pem(), &[], &cert.cert_pem, &cert.key_pem).unwrap();
        self.certs.lock().unwrap().insert(name.to_owned(), cert);
        let mut ring = Keyring::new();
        for n in NODES {
            ring.add(self.node_keys(n).public().clone()).unwrap();
        }
        let addr = self.sockets.iter().find(|(n, _)| n == name).unwrap().1;
        let socket = bind_again(addr);
        let partners =
            self.sockets.iter().filter(|(n, _)| n != name).map(|(n, a)| Partner { node: node(n), addr: *a }).collect();
        let config = NodeConfig {
            transport: Default::default(),
            seal: SealContext::new(self.node_keys(name), ring).unwrap(),
            tls,
            listen: addr,
            socket: Some(socket),
            store,
            partners,
            policies,
            retry: RetryPolicy { initial_backoff: 50, max_backoff: 500, receipt_timeout: 10_000 },
            limits: liaison::limits::Limits::default(),
            partners_dir: None,
        };
        Node::start(config, stop).await.unwrap()
    }
}

/// The demo sharing policies of `name` (configs/policies/<name>/*.toml).
fn demo_policies(name: &str) -> liaison::policy::PolicyBook {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/policies").join(name);
    liaison::policy::PolicyBook::new(
        NODES
            .iter()
            .filter(|n| **n != name)
            .map(|n| liaison::policy::Policy::load(&dir.join(format!("{n}.toml")), Some(&node(n))).unwrap()),
    )
}

/// The port was learnt by binding once; bind it again (retrying briefly if the OS is slow to free it).
fn bind_again(addr: std::net::SocketAddr) -> UdpSocket {
    for _ in 0..50 {
        if let Ok(s) = UdpSocket::bind(addr) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot bind {addr}");
}

/// An example made current (`common::draft`) as a packet from `from` to `to`, created now.
fn example(name: &str, from: &str, to: &[&str]) -> Packet {
    let mut v = common::draft(name);
    v["envelope"]["originator"]["node"] = from.into();
    v["envelope"]["recipients"] = serde_json::json!(to);
    Packet::from_json_draft(&v.to_string(), common::now(), &mut rand_core::OsRng).unwrap()
}

/// Polls `f` until it is true or 20 s pass.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state(n: &Node, id: liaison::ids::PacketId, to: &str) -> EntryState {
    n.status(id).unwrap().into_iter().find(|e| e.recipient.as_str() == to).unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_is_delivered_receipted_read_and_acknowledged() {
    let fed = Federation::new();
    let it_store = Store::open(&fed.dir.path().join("IT-DCSA")).unwrap();
    let it = fed.start_on("IT-DCSA", demo_policies("IT-DCSA"), it_store.clone(), fed.stop.subscribe()).await;
    let es = fed.start("ES-UDYCO").await;

    let p = example("information-request.json", "IT-DCSA", &["ES-UDYCO"]);
    let id = it.submit(&p).await.unwrap().id;
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;

    let inbox = es.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].0, id);
    let (shown, rec, _) = es.show(id, None).unwrap();
    assert_eq!(shown, p);
    assert_eq!(rec.sender, node("IT-DCSA"));
    let EntryState::Delivered { digest, .. } = state(&it, id, "ES-UDYCO") else { unreachable!() };
    assert_eq!(digest, rec.sealed_digest, "the receipt names the bytes ES stored");
    // It also names the signed packet inside them, which IT keeps; the sealed copy is gone.
    let es_id = node("ES-UDYCO");
    let (_, item) = it.receipt(id, &es_id).unwrap().unwrap();
    let sent = it.sent(id, &es_id).unwrap().expect("the signed packet sent is kept");
    assert_eq!(sent.packet, p);
    assert_eq!(item.signed_digest, Some(Digest::of(&sent.bytes)));
    let key = liaison::store::pair_key(id, &es_id);
    assert_eq!(it_store.get(Tree::Sealed, &key).unwrap(), None, "the delivered sealed copy is deleted");
    assert!(it_store.get(Tree::Sent, &key).unwrap().is_some());

    es.ack(id, None, "Subinspector Gómez".parse().unwrap()).await.unwrap();
    until("read ack", || !it.status(id).unwrap()[0].reads.is_empty()).await;
    assert_eq!(it.status(id).unwrap()[0].reads[0].0.as_str(), "Subinspector Gómez");
    // The ReadAck itself was delivered with its own receipt.
    let _ = fed.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packet_type_and_a_multi_recipient_alert() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let es = fed.start("ES-UDYCO").await;
    let co = fed.start("CO-DIJIN").await;

    let alert = example("controlled-delivery-alert.json", "CO-DIJIN", &["ES-UDYCO", "IT-DCSA"]);
    let alert_id = co.submit(&alert).await.unwrap().id;
    let mut sent = vec![];
    for f in [
        "jit-notice.json",
        "information-request.json",
        "information-response.json",
        "refusal.json",
        "delay-notice.json",
        "clarification-request.json",
    ] {
        let p = example(f, "ES-UDYCO", &["IT-DCSA"]);
        sent.push(es.submit(&p).await.unwrap().id);
    }
    until("alert at both", || {
        co.status(alert_id).unwrap().iter().all(|e| matches!(e.state, EntryState::Delivered { .. }))
    })
    .await;
    until("all at IT", || sent.iter().all(|id| matches!(state(&es, *id, "IT-DCSA"), EntryState::Delivered { .. })))
        .await;
    assert_eq!(it.inbox().unwrap().len(), 7);
    assert_eq!(es.inbox().unwrap().len(), 1);
    assert_eq!(co.status(alert_id).unwrap().len(), 2, "one state per recipient");
    let _ = fed.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_it_after_restart_exactly_once() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    // ES-UDYCO is not running yet.
    let p = example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO"]);
    let id = it.submit(&p).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(state(&it, id, "ES-UDYCO"), EntryState::Queued { .. } | EntryState::InFlight { .. }));
    let es = fed.start("ES-UDYCO").await;
    until("delivered after the receiver came up", || {
        matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })
    })
    .await;
    assert_eq!(es.inbox().unwrap().len(), 1);
    let _ = fed.stop.send(true);
}

/// A start loads the outbox behind it, a page at a time, FLASH first: with more copies queued
/// than a page holds, every one is delivered once the receiver is up, the FLASH alert among
/// them, and a submit made while the load runs goes out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_loads_a_large_outbox_behind_it_and_delivers_everything() {
    let fed = Federation::new();
    let (it, disk, it_stop) = fed.start_faulty("IT-DCSA").await;
    let mut ids = Vec::new();
    for _ in 0..1_100 {
        ids.push(it.submit(&example("jit-notice.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id);
    }
    let flash = it.submit(&example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id;
    let (it, _it_stop) = fed.crash_and_restart(it, &disk, it_stop).await;
    ids.push(it.submit(&example("jit-notice.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id);
    ids.push(flash);
    let es = fed.start("ES-UDYCO").await;
    until("FLASH delivered", || matches!(state(&it, flash, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while es.inbox().unwrap().len() < ids.len() {
        assert!(tokio::time::Instant::now() < deadline, "{} of {} delivered", es.inbox().unwrap().len(), ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until("nothing waiting", || {
        let s = it.outbox_summary();
        !s.loading && s.queued + s.in_flight == 0
    })
    .await;
    assert!(ids.iter().all(|id| matches!(state(&it, *id, "ES-UDYCO"), EntryState::Delivered { .. })));
    assert_eq!(es.inbox().unwrap().len(), ids.len(), "each once");
    let _ = fed.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitting_to_a_node_that_is_not_a_partner_is_refused() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let mut p = example("information-request.json", "IT-DCSA", &["ES-UDYCO"]);
    p.envelope.recipients = vec![node("DE-BKA")];
    let err = it.submit(&p).await.unwrap_err();
    assert_eq!(err.to_string(), "DE-BKA is not a partner of this node");
    let _ = fed.stop.send(true);
}

/// A draft may carry its own packet id: one this node already sent is refused before anything
/// is written, so a delivered copy is never queued again under it (its receipt orphaned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_id_already_sent_is_refused() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let es = fed.start("ES-UDYCO").await;
    let p = example("information-request.json", "IT-DCSA", &["ES-UDYCO"]);
    let id = it.submit(&p).await.unwrap().id;
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let err = it.submit(&p).await.unwrap_err();
    assert!(matches!(err, liaison::node::NodeError::IdInUse(i) if i == id), "{err}");
    assert!(matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. }), "still delivered");
    assert_eq!(es.inbox().unwrap().len(), 1);
    let _ = fed.stop.send(true);
}

/// Egress: one recipient refused by its policy gets nothing, the other recipient is unaffected
/// and its copy does not even name the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_denial_refuses_one_partner_and_not_the_other() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let es = fed.start("ES-UDYCO").await;
    let co = fed.start("CO-DIJIN").await;
    // EU RESTRICTED, TLP:RED: fine for ES-UDYCO, above what IT-DCSA may send to CO-DIJIN.
    let alert = example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO", "CO-DIJIN"]);
    let done = it.submit(&alert).await.unwrap();
    assert_eq!(done.sent.iter().map(|c| c.recipient.as_str()).collect::<Vec<_>>(), ["ES-UDYCO"]);
    assert_eq!(done.denied.len(), 1);
    assert_eq!(done.denied[0].recipient.as_str(), "CO-DIJIN");
    assert_eq!(done.denied[0].denial.rule, "send.max_classification");
    assert_eq!(it.status(done.id).unwrap().len(), 1, "no outbox entry for the refused partner");
    until("delivered to ES", || matches!(state(&it, done.id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let (shown, _, _) = es.show(done.id, None).unwrap();
    assert_eq!(shown.envelope.recipients, [node("ES-UDYCO")], "the copy names only who gets it");
    assert!(co.inbox().unwrap().is_empty());
    // Refused for every recipient: the submit fails and nothing is stored.
    let alert = example("controlled-delivery-alert.json", "IT-DCSA", &["CO-DIJIN"]);
    let err = it.submit(&alert).await.unwrap_err();
    assert!(err.to_string().contains("CO-DIJIN: send.max_classification"), "{err}");
    assert!(it.status(alert.envelope.id).is_err());
    let _ = fed.stop.send(true);
}

/// Ingress: a sender whose own policy is laxer than the receiver's gets a signed rejection
/// naming the receiver's rule, and the packet is neither stored nor shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_rejects_what_the_receiver_does_not_accept() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    // CO-DIJIN believes it may send JIT notices to IT-DCSA (IT-DCSA's policy says no).
    let lax =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/policies/CO-DIJIN/IT-DCSA.toml"))
            .unwrap()
            .replacen(
                "packet_types = [\"ControlledDeliveryAlert\"",
                "packet_types = [\"JitNotice\", \"ControlledDeliveryAlert\"",
                1,
            );
    let lax = liaison::policy::Policy::from_toml(&lax, Some(&node("IT-DCSA"))).unwrap();
    let co = fed.start_with("CO-DIJIN", liaison::policy::PolicyBook::new([lax])).await;
    let mut notice = example("jit-notice.json", "CO-DIJIN", &["IT-DCSA"]);
    notice.envelope.classification = liaison::markings::Classification::BasicProtection;
    let id = co.submit(&notice).await.unwrap().id;
    until("answered", || state(&co, id, "IT-DCSA").is_terminal()).await;
    let EntryState::Rejected { code, reason, .. } = state(&co, id, "IT-DCSA") else {
        panic!("{:?}", state(&co, id, "IT-DCSA"))
    };
    assert_eq!(code, "policy.receive.packet_types");
    assert!(reason.contains("JitNotice"), "{reason}");
    let (receipt, item) = co.receipt(id, &node("IT-DCSA")).unwrap().expect("the rejection is a stored, signed receipt");
    assert_eq!(receipt.packet.envelope.originator.node.as_str(), "IT-DCSA", "signed by the receiver");
    let it_policy = it.policies().policy(&node("CO-DIJIN")).unwrap().hash;
    assert_eq!(item.policy, Some(it_policy), "the receipt names the receiver's policy version");
    assert!(it.inbox().unwrap().is_empty(), "not stored, not shown");
    let _ = fed.stop.send(true);
}

/// Redaction: what the policy removes is not in the packet the partner stores, the copy is
/// signed naming the sender's policy, and the receipt names the receiver's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_fields_never_reach_the_partner() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let co = fed.start("CO-DIJIN").await;
    let mut answer = example("information-response.json", "IT-DCSA", &["CO-DIJIN"]);
    if let liaison::packet::Body::InformationResponse(r) = &mut answer.body {
        r.attachments.clear(); // IT-DCSA sends no files to CO-DIJIN
    }
    let done = it.submit(&answer).await.unwrap();
    let paths: Vec<&str> = done.sent[0].redacted.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "body.InformationResponse.entities[0].person.biometrics",
            "body.InformationResponse.entities[0].person.date_of_birth",
            "body.InformationResponse.entities[6].account",
        ]
    );
    until("delivered", || matches!(state(&it, done.id, "CO-DIJIN"), EntryState::Delivered { .. })).await;
    let (shown, _, _) = co.show(done.id, None).unwrap();
    let liaison::packet::Body::InformationResponse(r) = &shown.body else { panic!() };
    assert!(r.entities.iter().all(|e| e.kind() != "account"));
    let liaison::packet::Entity::Person(p) = &r.entities[0] else { panic!() };
    assert!(p.date_of_birth.is_none() && p.biometrics.is_empty() && p.given_names.is_some());
    let (_, item) = it.receipt(done.id, &node("CO-DIJIN")).unwrap().unwrap();
    assert_eq!(item.policy, Some(co.policies().policy(&node("IT-DCSA")).unwrap().hash));
    assert_eq!(done.sent[0].policy, Some(it.policies().policy(&node("CO-DIJIN")).unwrap().hash));
    let _ = fed.stop.send(true);
}

impl Federation {
    /// Sends `bytes` as one frame over a fresh connection with `from`'s certificate to `to`,
    /// bypassing `from`'s node (what a faulty or hostile partner could do); returns the answer.
    async fn raw_send(&self, from: &str, to: &str, bytes: &[u8]) -> Vec<u8> {
        let conn = self.raw_connection(from, to).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        liaison::wire::write_frame(&mut send, bytes).await.unwrap();
        send.finish().unwrap();
        liaison::wire::read_frame(&mut recv, 1 << 24, Duration::from_secs(10)).await.unwrap().unwrap().to_vec()
    }

    /// A QUIC connection to `to` with a fresh certificate for `from`, outside `from`'s node.
    async fn raw_connection(&self, from: &str, to: &str) -> quinn::Connection {
        let now = OffsetDateTime::now_utc();
        let cert = self.ca.issue(&node(from), now - time::Duration::days(1), now + time::Duration::days(30)).unwrap();
        let tls = TlsMaterial::from_pem(self.ca.cert_pem(), &[], &cert.cert_pem, &cert.key_pem).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(liaison::transport::client_config(&tls, Default::default()).unwrap());
        let addr = self.sockets.iter().find(|(n, _)| n == to).unwrap().1;
        endpoint.connect(addr, &liaison::transport::server_name(&node(to))).unwrap().await.unwrap()
    }

    fn seal_context(&self, name: &str) -> SealContext {
        let mut ring = Keyring::new();
        for n in NODES {
            ring.add(self.node_keys(n).public().clone()).unwrap();
        }
        SealContext::new(self.node_keys(name), ring).unwrap()
    }
}

/// Onward transmission of H2 material: refused without the originator's consent, allowed with
/// it, and checked again by the receiving hop (a forward that skipped the check is rejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_passed_on_only_with_the_originators_consent() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let es = fed.start("ES-UDYCO").await;
    let co = fed.start("CO-DIJIN").await;
    // CO-DIJIN alerts ES-UDYCO only; the alert is marked H0 + H2.
    let alert = example("controlled-delivery-alert.json", "CO-DIJIN", &["ES-UDYCO"]);
    assert!(alert.envelope.handling.codes.contains(&liaison::markings::HandlingCode::H2));
    let alert_id = co.submit(&alert).await.unwrap().id;
    until("alert at ES", || matches!(state(&co, alert_id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let officer: liaison::ids::OfficerId = "Subinspector Gómez".parse().unwrap();

    // Without consent: refused at ES-UDYCO, nothing reaches IT-DCSA.
    let err = es.forward(alert_id, None, &[node("IT-DCSA")], officer.clone()).await.unwrap_err();
    assert!(err.to_string().contains("IT-DCSA: onward.consent_required"), "{err}");

    // A hop that skips the check (a forward built by hand with ES-UDYCO's keys) is refused by
    // IT-DCSA itself, with a signed rejection naming the rule.
    let original = es.show(alert_id, None).unwrap().0;
    let signed_original = fed.seal_context("CO-DIJIN").sign(&original).unwrap();
    let mut forged = example("controlled-delivery-alert.json", "ES-UDYCO", &["IT-DCSA"]);
    forged.envelope.related = vec![alert_id];
    forged.envelope.handling = original.envelope.handling.clone();
    forged.body = liaison::packet::Body::Forward(liaison::packet::Forward {
        original: liaison::encoding::Blob(signed_original.bytes.clone()),
        consent: None,
    });
    let es_ctx = fed.seal_context("ES-UDYCO");
    let sealed = es_ctx.seal(&forged, &mut rand_core::OsRng).unwrap().remove(0);
    let answer = fed.raw_send("ES-UDYCO", "IT-DCSA", &sealed.bytes).await;
    let opened = es_ctx.open(&answer, liaison::timestamp::Timestamp::now()).unwrap();
    let liaison::packet::Body::DeliveryReceipt(r) = opened.signed.packet.body else { panic!() };
    match &r.receipts[0].outcome {
        liaison::packet::ReceiptOutcome::Rejected { code, .. } => assert_eq!(code, "onward.consent_required"),
        other => panic!("{other:?}"),
    }
    assert!(it.inbox().unwrap().is_empty());

    // CO-DIJIN consents to IT-DCSA; ES-UDYCO can now pass it on, and IT-DCSA shows the original.
    let until_ts = liaison::timestamp::Timestamp::now().plus_secs(86_400);
    let consent = co
        .consent(alert_id, &node("ES-UDYCO"), vec![node("IT-DCSA")], until_ts, "My. Andrea Salcedo".parse().unwrap())
        .await
        .unwrap();
    until("consent at ES", || matches!(state(&co, consent.id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    // Named twice, passed on once.
    let done = es.forward(alert_id, None, &[node("IT-DCSA"), node("IT-DCSA")], officer.clone()).await.unwrap();
    assert_eq!(done.sent.len(), 1, "{done:?}");
    until("forward at IT", || matches!(state(&es, done.id, "IT-DCSA"), EntryState::Delivered { .. })).await;
    let (shown, rec, _) = it.show(done.id, None).unwrap();
    assert_eq!(shown, original, "IT-DCSA sees the original exactly as CO-DIJIN signed it");
    assert_eq!((rec.sender.as_str(), rec.originator.as_ref().map(|n| n.as_str())), ("ES-UDYCO", Some("CO-DIJIN")));
    assert_eq!(rec.packet_type, liaison::packet::PacketType::ControlledDeliveryAlert);
    // The consent names IT-DCSA only: CO-DIJIN itself is not a "new" recipient either way.
    let err = es.forward(alert_id, None, &[node("CO-DIJIN")], officer).await.unwrap_err();
    assert!(err.to_string().contains("onward.already_a_recipient"), "{err}");
    let _ = fed.stop.send(true);
}

/// Retention, at both ends: past the policy's `retention_days`, the receiver deletes the
/// packet (inbox, evidence, deadline) and the receipt it issued; the sender deletes the copy's
/// entry, the signed packet, the receipt it got and the deadline, in memory as on disk. The
/// deletions are in each audit trail, and both trails still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_exchanged_is_deleted_after_its_retention_at_both_ends() {
    let fed = Federation::new();
    let it_store = Store::open(&fed.dir.path().join("IT-DCSA")).unwrap();
    let it = fed.start_on("IT-DCSA", demo_policies("IT-DCSA"), it_store.clone(), fed.stop.subscribe()).await;
    let es_store = Store::open(&fed.dir.path().join("ES-UDYCO")).unwrap();
    let es = fed.start_on("ES-UDYCO", demo_policies("ES-UDYCO"), es_store.clone(), fed.stop.subscribe()).await;
    let id = it.submit(&example("information-request.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id;
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let (es_id, it_id) = (node("ES-UDYCO"), node("IT-DCSA"));
    assert_eq!(es_store.scan(Tree::Issued, &[]).unwrap().len(), 1);
    assert_eq!(it_store.scan(Tree::Receipts, &[]).unwrap().len(), 1);

    let days = es.policies().policy(&it_id).unwrap().retention_days;
    let now = liaison::node::now_ms();
    let day = 86_400_000;
    assert_eq!(es.purge_expired(now + u64::from(days - 1) * day).await.unwrap(), 0, "not yet");
    assert_eq!(es.deadlines_of(id).len(), 1);
    assert_eq!(es.purge_expired(now + u64::from(days + 1) * day).await.unwrap(), 2, "the packet and the receipt");
    assert!(es.inbox().unwrap().is_empty());
    assert!(es.deadlines_of(id).is_empty(), "its deadline goes with it, in memory as on disk");
    assert!(matches!(es.show(id, None), Err(liaison::node::NodeError::UnknownPacket(_))));
    for tree in [Tree::Inbox, Tree::Evidence, Tree::Issued, Tree::Deadlines] {
        assert!(es_store.scan(tree, &[]).unwrap().is_empty(), "{tree:?} at ES");
    }

    let days = it.policies().policy(&es_id).unwrap().retention_days;
    // An officer's acknowledgement of the copy (as a ReadAck from ES-UDYCO writes it).
    let rossi: liaison::ids::OfficerId = "Isp. Rossi".parse().unwrap();
    it_store.commit(vec![liaison::store::put_read(id, &es_id, &rossi, now)]).await.unwrap();
    assert_eq!(it.purge_expired(now + u64::from(days - 1) * day).await.unwrap(), 0, "not yet");
    assert!(it.sent(id, &es_id).unwrap().is_some());
    assert_eq!(it_store.scan(Tree::Reads, &[]).unwrap().len(), 1, "the acknowledgement of a kept copy stays");
    assert_eq!(
        it.purge_expired(now + u64::from(days + 1) * day).await.unwrap(),
        2,
        "the copy sent, and its record in the sent listing"
    );
    assert!(it.sent_record(id).unwrap().is_none());
    assert!(it_store.scan(Tree::Reads, &[]).unwrap().is_empty(), "its acknowledgement with it");
    // A ReadAck whose commit lands just after the purge: the next purge deletes what it wrote.
    it_store.commit(vec![liaison::store::put_read(id, &es_id, &rossi, now)]).await.unwrap();
    assert_eq!(it.purge_expired(now + u64::from(days + 1) * day).await.unwrap(), 1, "the late acknowledgement");
    assert!(it.status(id).is_err() || it.status(id).unwrap().is_empty(), "{:?}", it.status(id));
    assert!(it.sent(id, &es_id).unwrap().is_none());
    assert!(it.receipt(id, &es_id).unwrap().is_none());
    assert!(it.deadlines_of(id).is_empty());
    for tree in [
        Tree::Outbox,
        Tree::Sent,
        Tree::Sealed,
        Tree::Receipts,
        Tree::ReceiptIndex,
        Tree::Deadlines,
        Tree::Reads,
        Tree::Submissions,
    ] {
        assert!(it_store.scan(tree, &[]).unwrap().is_empty(), "{tree:?} at IT");
    }
    for n in [&es, &it] {
        let verified = n.audit_verify().unwrap().expect("the trail still verifies");
        assert!(verified.last >= 3, "{verified:?}");
    }
    let _ = fed.stop.send(true);
}

/// The sender's audit trail records each copy's fate: the attempt that was receipted and when
/// it was written, and a copy that expired undelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_sends_and_expiries() {
    use liaison::audit::Event;
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    // CO-DIJIN is down: a packet that expires in 2 s is never delivered.
    let mut doomed = example("information-request.json", "IT-DCSA", &["CO-DIJIN"]);
    doomed.envelope.expires = liaison::timestamp::Timestamp::now().plus_secs(2);
    let doomed = it.submit(&doomed).await.unwrap().id;
    let es = fed.start("ES-UDYCO").await;
    let sent = it.submit(&example("information-request.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id;
    until("delivered and expired", || {
        matches!(state(&it, sent, "ES-UDYCO"), EntryState::Delivered { .. })
            && matches!(state(&it, doomed, "CO-DIJIN"), EntryState::Expired { .. })
    })
    .await;
    // The state changes are in memory first; their audit entries follow with the next commit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (export, events) = loop {
        let export = it.audit_export(0, u64::MAX).await.unwrap();
        let events: Vec<Event> = export.decoded().into_iter().map(|e| e.event).collect();
        let expired = events.iter().any(|e| matches!(e, Event::Expired { packet_id, .. } if *packet_id == doomed));
        let sent_recorded = events.iter().any(|e| matches!(e, Event::Sent { .. }));
        if (expired && sent_recorded) || tokio::time::Instant::now() > deadline {
            break (export, events);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let receipted = events.iter().find_map(|e| match e {
        Event::Receipts { items, .. } => items.iter().find(|i| i.packet_id == sent).cloned(),
        _ => None,
    });
    assert!(
        events.iter().any(|e| matches!(e, Event::Sent { to, copies } if to.as_str() == "ES-UDYCO" && copies.iter().any(|c| c.packet_id == sent && c.attempt == 1))),
        "the send itself is recorded: {events:?}"
    );
    let sent_info = receipted.expect("the receipt is recorded").sent.expect("with the send");
    assert_eq!(sent_info.attempt, 1);
    assert!(sent_info.at > 0);
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Expired { packet_id, to } if *packet_id == doomed && to.as_str() == "CO-DIJIN")
        ),
        "{events:?}"
    );
    assert!(export.verify(&[fed.node_keys("IT-DCSA").public().signing]).is_ok());
    let _ = es;
    let _ = fed.stop.send(true);
}

/// Hostile framing on a lane: a frame announcing more than any packet may be, and a stream that
/// ends inside a frame, are refused (the stream is reset, nothing is stored) and the node keeps
/// serving the same partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_truncated_frames_are_refused_and_the_node_carries_on() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let conn = fed.raw_connection("ES-UDYCO", "IT-DCSA").await;
    let answer = |bytes: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            send.finish().unwrap();
            tokio::time::timeout(
                Duration::from_secs(10),
                liaison::wire::read_frame(&mut recv, 1 << 24, Duration::from_secs(10)),
            )
            .await
            .unwrap()
        }
    };
    // 1 GiB announced: refused before anything is allocated.
    let r = answer((1u32 << 30).to_be_bytes().to_vec()).await;
    assert!(r.is_err(), "{r:?}");
    // 100 bytes announced, 10 sent, then the stream ends.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([0u8; 10]);
    let r = answer(truncated).await;
    assert!(matches!(r, Err(_) | Ok(None)), "{r:?}");
    // The same connection still delivers a real packet.
    let p = example("information-request.json", "ES-UDYCO", &["IT-DCSA"]);
    let sealed = fed.seal_context("ES-UDYCO").seal(&p, &mut rand_core::OsRng).unwrap().remove(0);
    let mut frame = (sealed.bytes.len() as u32).to_be_bytes().to_vec();
    frame.extend(&sealed.bytes);
    let receipt = answer(frame).await.unwrap().expect("a receipt");
    let opened = fed.seal_context("ES-UDYCO").open(&receipt, liaison::timestamp::Timestamp::now()).unwrap();
    assert!(matches!(opened.signed.packet.body, liaison::packet::Body::DeliveryReceipt(_)));
    assert_eq!(it.inbox().unwrap().len(), 1, "only the real packet was stored");
    let _ = fed.stop.send(true);
}

/// Revoking a partner takes effect at once: after a TLS reload with the new CRL, the live
/// connections are closed, the revoked partner cannot connect again, and this node no longer
/// accepts the revoked partner's certificate when it dials out either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_reload_with_a_new_crl_cuts_off_a_revoked_partner_at_once() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let es = fed.start("ES-UDYCO").await;
    let first = es.submit(&example("information-request.json", "ES-UDYCO", &["IT-DCSA"])).await.unwrap().id;
    until("connected and delivered", || matches!(state(&es, first, "IT-DCSA"), EntryState::Delivered { .. })).await;

    // ES-UDYCO's key is compromised: the CA revokes its certificate; IT-DCSA reloads.
    let now = OffsetDateTime::now_utc();
    let (crl, it_cert) = {
        let certs = fed.certs.lock().unwrap();
        let crl = fed
            .ca
            .crl(
                &[certs["ES-UDYCO"].serial.clone()],
                now - time::Duration::minutes(1),
                now + time::Duration::days(7),
                2,
            )
            .unwrap();
        (crl, (certs["IT-DCSA"].cert_pem.clone(), certs["IT-DCSA"].key_pem.clone()))
    };
    let tls = TlsMaterial::from_pem(fed.ca.cert_pem(), &[&crl], &it_cert.0, &it_cert.1).unwrap();
    it.reload_tls(tls, "test", "CRL 2 revokes ES-UDYCO".into()).await.unwrap();

    // Nothing from ES-UDYCO gets in any more, and IT-DCSA does not deliver to it either.
    let refused = es.submit(&example("information-request.json", "ES-UDYCO", &["IT-DCSA"])).await.unwrap().id;
    let outgoing = it.submit(&example("information-request.json", "IT-DCSA", &["ES-UDYCO"])).await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(2)).await; // give a revoked partner every chance to get through
    assert!(!matches!(state(&es, refused, "IT-DCSA"), EntryState::Delivered { .. }), "the revoked partner got in");
    assert!(
        !matches!(state(&it, outgoing, "ES-UDYCO"), EntryState::Delivered { .. }),
        "delivered to a revoked partner"
    );
    assert_eq!(it.inbox().unwrap().len(), 1, "only what came before the revocation");
    let export = it.audit_export(0, u64::MAX).await.unwrap();
    assert!(export
        .decoded()
        .iter()
        .any(|e| matches!(&e.event, liaison::audit::Event::Admin { action, .. } if *action == liaison::audit::AdminAction::TlsReload)));
    let _ = fed.stop.send(true);
}

/// A commit that fails must leave nothing behind in memory that the retransmission then takes
/// for done. ES's disk refuses the batch carrying an information request; IT sends it again;
/// ES must persist the request's answer deadline with it, so that it survives a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_persisted_when_a_failed_batch_comes_again() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let (es, disk, es_stop) = fed.start_faulty("ES-UDYCO").await;
    disk.set_failing(true);
    let p = example("information-request.json", "IT-DCSA", &["ES-UDYCO"]);
    let id = it.submit(&p).await.unwrap().id;
    until("ES refused to store the batch", || disk.refused() > 0).await;
    disk.set_failing(false);
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    assert_eq!(es.deadlines_of(id).len(), 1);
    let (es, _es_stop) = fed.crash_and_restart(es, &disk, es_stop).await;
    assert_eq!(es.inbox().unwrap().len(), 1, "the request was stored once");
    assert_eq!(es.deadlines_of(id).len(), 1, "its deadline was stored with it");
    let _ = fed.stop.send(true);
}

/// The same for a submit: a submit the disk refused leaves no deadline behind, and submitting
/// the packet again stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_submit_leaves_no_deadline_behind() {
    let fed = Federation::new();
    let (it, disk, it_stop) = fed.start_faulty("IT-DCSA").await;
    let p = example("information-request.json", "IT-DCSA", &["ES-UDYCO"]);
    disk.set_failing(true);
    assert!(it.submit(&p).await.is_err(), "nothing is acknowledged that is not on disk");
    assert!(it.deadlines_of(p.envelope.id).is_empty(), "nor is a deadline kept for it");
    disk.set_failing(false);
    it.submit(&p).await.unwrap();
    let (it, _it_stop) = fed.crash_and_restart(it, &disk, it_stop).await;
    assert_eq!(it.deadlines_of(p.envelope.id).len(), 1, "the deadline is stored with the submit");
    let _ = fed.stop.send(true);
}

/// A receipt whose commit fails changes nothing: the copy is not shown as delivered without its
/// receipt on disk, and once the disk works again the copy ends delivered with its receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_is_never_shown_without_the_receipt_on_disk() {
    let fed = Federation::new();
    let (it, disk, it_stop) = fed.start_faulty("IT-DCSA").await;
    let p = example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO"]);
    let id = it.submit(&p).await.unwrap().id;
    disk.set_failing(true);
    let es = fed.start("ES-UDYCO").await;
    until("ES stored it", || es.inbox().unwrap().len() == 1).await;
    // The receipt reaches IT within milliseconds on loopback; for two seconds IT must not say
    // delivered, since it cannot store the receipt.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch_until {
        let delivered = matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. });
        assert!(
            !delivered || it.receipt(id, &node("ES-UDYCO")).unwrap().is_some(),
            "delivered without a stored receipt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.set_failing(false);
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    assert!(it.receipt(id, &node("ES-UDYCO")).unwrap().is_some());
    let (it, _it_stop) = fed.crash_and_restart(it, &disk, it_stop).await;
    assert!(matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. }), "and so it stays after a crash");
    assert!(it.receipt(id, &node("ES-UDYCO")).unwrap().is_some());
    assert_eq!(es.inbox().unwrap().len(), 1, "shown once");
    let _ = fed.stop.send(true);
}

/// The issue's case: an officer's acknowledgement arrives in a batch whose commit fails; the
/// partner sends it again, and it is persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ack_is_persisted_when_a_failed_batch_comes_again() {
    let fed = Federation::new();
    let (it, disk, it_stop, es, id) = fed.alert_delivered().await;
    disk.set_failing(true);
    es.ack(id, None, "Subinspector Gómez".parse().unwrap()).await.unwrap();
    until("IT refused to store the batch", || disk.refused() > 0).await;
    disk.set_failing(false);
    until("read", || !it.status(id).unwrap()[0].reads.is_empty()).await;
    let (it, _it_stop) = fed.crash_and_restart(it, &disk, it_stop).await;
    assert_eq!(it.status(id).unwrap()[0].reads.len(), 1, "the acknowledgement was persisted");
    let _ = fed.stop.send(true);
}

/// A delivered copy leaves the sender's memory once its receipt is on disk, and a start reads
/// only pending copies: after a restart, what was delivered before is read from disk (status,
/// an officer's acknowledgement that comes days later, a consent to pass it on), and the
/// summary counts what happened since the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_delivered_before_a_restart_are_read_from_disk() {
    let fed = Federation::new();
    let (it, disk, it_stop, es, id) = fed.alert_delivered().await;
    until("counted", || it.outbox_summary().delivered == 1).await;
    let (it, _it_stop) = fed.crash_and_restart(it, &disk, it_stop).await;
    let summary = it.outbox_summary();
    assert_eq!((summary.queued, summary.in_flight, summary.delivered), (0, 0, 0), "nothing held: {summary:?}");
    assert!(matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. }), "read from disk");

    es.ack(id, None, "Subinspector Gómez".parse().unwrap()).await.unwrap();
    until("read ack at the originator", || !it.status(id).unwrap()[0].reads.is_empty()).await;
    assert_eq!(it.outbox_summary().read, 1);
    let acks = it.inbox().unwrap().into_iter().filter(|(_, r)| r.packet_type == PacketType::ReadAck).count();
    assert_eq!(acks, 1, "the ReadAck was taken, not refused as about an unknown packet");

    let until_ts = liaison::timestamp::Timestamp::now().plus_secs(86_400);
    let officer: liaison::ids::OfficerId = "Isp. Rossi".parse().unwrap();
    it.consent(id, &node("ES-UDYCO"), vec![node("CO-DIJIN")], until_ts, officer).await.unwrap();
    let _ = fed.stop.send(true);
}

/// An acknowledgement and the ReadAck that announces it are stored together or not at all: on a
/// full disk the officer is told, nothing is recorded, and acknowledging again once space is back
/// reaches the originator. A ROUTINE packet's ReadAck is not held back as bulk on a low disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_and_its_read_ack_are_stored_together_or_not_at_all() {
    let fed = Federation::new();
    let it = fed.start("IT-DCSA").await;
    let (es, disk, _es_stop) = fed.start_faulty("ES-UDYCO").await;
    let p = example("jit-notice.json", "IT-DCSA", &["ES-UDYCO"]);
    assert_eq!(p.envelope.priority, liaison::markings::Priority::Routine);
    let id = it.submit(&p).await.unwrap().id;
    until("delivered", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;

    let officer: liaison::ids::OfficerId = "Subinspector Gómez".parse().unwrap();
    disk.set_free(Some(1 << 20)); // below the last quarter of the 256 MiB headroom
    let e = es.ack(id, None, officer.clone()).await.unwrap_err();
    assert!(e.to_string().contains("the disk is full"), "{e}");
    assert!(es.show(id, None).unwrap().1.reads.is_empty(), "nothing recorded");

    disk.set_free(Some(100 << 20)); // low: bulk refused, the ReadAck is not bulk
    es.ack(id, None, officer).await.unwrap();
    until("read ack at the originator", || !it.status(id).unwrap()[0].reads.is_empty()).await;
    let _ = fed.stop.send(true);
}

/// Shutdown is ordered: every task finishes, the stop is the last entry of the audit trail and
/// is signed by a checkpoint, and the store is closed (nothing more can be written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_joins_every_task_and_closes_the_store() {
    let fed = Federation::new();
    let disk = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(disk.clone()).unwrap();
    let (_stop, rx) = watch::channel(false);
    let it = fed.start_on("IT-DCSA", demo_policies("IT-DCSA"), store.clone(), rx).await;
    let es = fed.start("ES-UDYCO").await;
    // Work under way: one partner up (lanes open), one down (its sender keeps dialling).
    let p = example("controlled-delivery-alert.json", "IT-DCSA", &["ES-UDYCO", "CO-DIJIN"]);
    let id = it.submit(&p).await.unwrap().id;
    until("delivered to ES", || matches!(state(&it, id, "ES-UDYCO"), EntryState::Delivered { .. })).await;
    let key = *it.id();
    tokio::time::timeout(Duration::from_secs(30), it.shutdown()).await.expect("shutdown hung");
    assert!(matches!(store.commit_blocking(vec![]), Err(liaison::store::StoreError::Closed)), "the store is closed");
    let head = store.audit_head().unwrap();
    let last = store.get(liaison::store::Tree::Audit, &head.seq.to_be_bytes()).unwrap().unwrap();
    let entry: liaison::audit::Entry = liaison::store::decode(liaison::store::Tree::Audit, &last).unwrap();
    assert!(matches!(entry.event, liaison::audit::Event::Stopped), "the stop is the last entry: {:?}", entry.event);
    assert!(
        store.get(liaison::store::Tree::AuditCheckpoints, &head.seq.to_be_bytes()).unwrap().is_some(),
        "and it is signed"
    );
    let verifying = fed.node_keys("IT-DCSA").public().signing;
    assert!(store.audit_verify(&key, &[verifying]).unwrap().is_ok());
    drop(es);
    let _ = fed.stop.send(true);
}
