//! The officers' web workspace at 100,000 stored packets: a real node (in this process) over a
//! real sled store holding 100,000 received requests, each with its signed evidence, and the
//! workspace on loopback answering a signed-in officer over HTTP: the first inbox page of a run
//! (the listing loaded from the store, every packet verified again), then the inbox page and
//! searches (a phone number that one packet names, a case reference, a word most packets
//! share), each answer timed from request to last byte.
//!
//! `cargo bench --bench inbox` (`-- --packets N` for another count). Prints figures; asserts
//! nothing (shared machines are noisy).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use liaison::delivery::RetryPolicy;
use liaison::encoding::Digest;
use liaison::ids::{NodeId, PacketId};
use liaison::keys::{Keyring, NodeKeys};
use liaison::node::{Node, NodeConfig, Partner};
use liaison::packet::Packet;
use liaison::pki::Ca;
use liaison::seal::SealContext;
use liaison::store::{pair_key, InboxRecord, Op, Store, Tree};
use liaison::timestamp::Timestamp;
use rand_core::OsRng;
use time::OffsetDateTime;

/// The tests' HTTP client (one request a connection, bodies read to the end).
#[allow(dead_code)]
#[path = "../tests/common/http.rs"]
mod http;

fn node_id(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn main() {
    let packets: usize =
        std::env::args().skip_while(|a| a != "--packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let (it, ring, store_dir) = fill(dir.path(), packets);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(packets, it, ring, store_dir));
}

/// The store of IT-DCSA, filled as a node that received `packets` requests from CO-DIJIN would
/// hold it: its keys, the keyring, where the store is.
fn fill(dir: &std::path::Path, packets: usize) -> (NodeKeys, Keyring, std::path::PathBuf) {
    let it = NodeKeys::generate(node_id("IT-DCSA"), &mut OsRng);
    let co = NodeKeys::generate(node_id("CO-DIJIN"), &mut OsRng);
    let mut ring = Keyring::new();
    ring.add(it.public().clone()).unwrap();
    ring.add(co.public().clone()).unwrap();
    let co_seal = SealContext::new(co, ring.clone()).unwrap();

    let started = Instant::now();
    let store_dir = dir.join("IT-DCSA");
    {
        let store = Store::open(&store_dir).unwrap();
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/information-request.json"),
        )
        .unwrap();
        let template: serde_json::Value = serde_json::from_str(&example).unwrap();
        let now = Timestamp::now();
        let mut ops = Vec::new();
        for i in 0..packets {
            let mut v = template.clone();
            let created = now.plus_secs(-((packets - i) as i64));
            let e = &mut v["envelope"];
            let id = PacketId::new_v7(created.unix() as u64 * 1000, &mut OsRng);
            e["id"] = id.to_string().into();
            e["case_ref"] = format!("CO-DIJIN/2026/{i:06}").into();
            e["originator"] = serde_json::json!({"node": "CO-DIJIN", "officer": "My. Andrea Salcedo"});
            e["recipients"] = serde_json::json!(["IT-DCSA"]);
            e["created"] = created.to_string().into();
            e["expires"] = created.plus_secs(30 * 86_400).to_string().into();
            e["due_by"] = created.plus_secs(8 * 3600).to_string().into();
            e.as_object_mut().unwrap().remove("related");
            let body = &mut v["body"]["InformationRequest"];
            body["subject"] = format!("Subscriber of a phone used by suspect {i}").into();
            body["entities"][0]["phone"]["number"] = format!("+3461{:07}", i).into();
            let packet = Packet::from_json(&v.to_string()).unwrap();
            let signed = co_seal.sign(&packet).unwrap();
            let rec = InboxRecord {
                sender: node_id("CO-DIJIN"),
                sealed_digest: Digest::of(&signed.bytes),
                received_at: created.unix() as u64 * 1000,
                packet_type: packet.packet_type(),
                priority: packet.envelope.priority,
                due_by: packet.envelope.due_by,
                reads: Vec::new(),
                policy: None,
                originator: None,
                run: 0,
            };
            let key = pair_key(id, &node_id("CO-DIJIN"));
            ops.push(liaison::store::put(Tree::Inbox, key.clone(), &rec));
            ops.push(Op::Put(Tree::Evidence, key, signed.bytes));
            if ops.len() >= 2_000 {
                store.commit_blocking(std::mem::take(&mut ops)).unwrap();
            }
        }
        store.commit_blocking(ops).unwrap();
        store.close();
    }
    println!("stored {packets} received requests with their evidence in {:.1} s", started.elapsed().as_secs_f64());
    (it, ring, store_dir)
}

async fn run(packets: usize, it: NodeKeys, ring: Keyring, store_dir: std::path::PathBuf) {
    // The node, its workspace, an officer signed in.
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate("bench", now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    let cert = ca.issue(&node_id("IT-DCSA"), now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    let tls = liaison::transport::TlsMaterial::from_pem(ca.cert_pem(), &[], &cert.cert_pem, &cert.key_pem).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = socket.local_addr().unwrap();
    let (stop, _) = tokio::sync::watch::channel(false);
    let config = NodeConfig {
        transport: Default::default(),
        seal: SealContext::new(it, ring).unwrap(),
        tls,
        listen,
        socket: Some(socket),
        store: Store::open(&store_dir).unwrap(),
        partners: vec![Partner { node: node_id("CO-DIJIN"), addr: "127.0.0.1:9".parse().unwrap() }],
        policies: liaison::policy::PolicyBook::new([]),
        retry: RetryPolicy { initial_backoff: 100, max_backoff: 2_000, receipt_timeout: 30_000 },
        limits: liaison::limits::Limits::default(),
        partners_dir: None,
    };
    let node = Node::start(config, stop.subscribe()).await.unwrap();
    let password = "a bench passphrase of some length";
    let creds = node
        .accounts()
        .add(
            liaison::accounts::NewAccount {
                name: "bench.officer".parse().unwrap(),
                display_name: "Bench Officer".into(),
                role: liaison::accounts::Role::Officer,
                partners: vec![],
                cases: vec![],
                password: Some(password.into()),
                certificates: Vec::new(),
            },
            "bench",
            liaison::node::now_ms(),
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = liaison::config::WebSettings {
        listen: addr,
        idle: Duration::from_secs(3600),
        lifetime: Duration::from_secs(3600),
        secure_cookies: false,
        hosts: Vec::new(),
        tls: None,
    };
    let app = liaison::web::router(node.clone(), &settings, tokio_util::sync::CancellationToken::new());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap();
    });
    let base = addr.to_string();
    let cookie = tokio::task::spawn_blocking(move || {
        let secret = liaison::accounts::totp::TotpSecret::from_bytes(
            &liaison::accounts::totp::base32_decode(&creds.totp_secret).unwrap(),
        );
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let code = format!("{:06}", secret.code_at(unix / 30));
        let signed = http::sign_in(&format!("http://{base}"), "bench.officer", password, &code);
        assert_eq!(signed.status, 303, "signed in");
        let (_, session) = signed.cookies().into_iter().find(|(k, _)| k == "liaison_session").unwrap();
        format!("liaison_session={session}")
    })
    .await
    .unwrap();

    let base = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let a = http::request(&base, "GET", "/inbox", &[("Cookie", &cookie)], None);
        let (status, body) = (a.status, a.body);
        assert_eq!(status, 200);
        assert!(body.contains(&format!("{packets} packet(s)")), "every packet listed");
        println!(
            "first inbox page of the run (listing loaded from the store, {packets} packets verified again): {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        let probes = [
            ("inbox page (50 newest, unfiltered)", "/inbox".to_owned(), None),
            ("inbox page 1,000 (older)", "/inbox?page=1000".to_owned(), None),
            ("search: a phone number one packet names", format!("/inbox?q=%2B3461{:07}", packets / 2), Some(1)),
            ("search: a case reference", format!("/inbox?q=CO-DIJIN%2F2026%2F{:06}", packets / 3), Some(1)),
            ("search: a word every packet has (50 shown)", "/inbox?q=subscriber".to_owned(), Some(packets)),
            ("filter: unread, from CO-DIJIN", "/inbox?unread=1&partner=CO-DIJIN".to_owned(), Some(packets)),
        ];
        for (what, path, expect) in probes {
            let mut times = Vec::new();
            for _ in 0..30 {
                let t = Instant::now();
                let a = http::request(&base, "GET", &path, &[("Cookie", &cookie)], None);
                let (status, body) = (a.status, a.body);
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(status, 200);
                if let Some(n) = expect {
                    assert!(body.contains(&format!("{n} packet(s)")), "{what}: {n} found");
                }
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{what:<46} p50 {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms",
                times[times.len() / 2],
                times[times.len() * 9 / 10],
                times[times.len() - 1]
            );
        }
    })
    .await
    .unwrap();
    let _ = stop.send(true);
    node.shutdown().await;
}
