//! Real node processes (`liaison serve`) in a temporary directory, and a raw QUIC peer that
//! speaks for a partner with its demo certificate and keys (to send what a real node never
//! would). Shared by the process-level tests (`tests/serve.rs`, `tests/hostile.rs`).

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use liaison::client::call;
use serde_json::Value;

use super::root;

/// The token of every test node's second API client, `terminal-7`: neither an admin client nor
/// one that names officers (it acts under its own name).
pub const TERMINAL_TOKEN: &str = "test-terminal-token";

/// The `liaison` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_liaison");

/// One `liaison serve` process.
pub struct NodeProc {
    pub name: String,
    pub quic: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    pub api: String,
    pub token: String,
    /// The web workspace (`http://127.0.0.1:PORT`).
    pub web: String,
    pub child: Option<Child>,
}

impl NodeProc {
    /// Starts the process and waits until it logs that it is ready.
    pub fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let starts = self.log_text().matches("\"message\":\"ready\"").count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_text().matches("\"message\":\"ready\"").count() <= starts {
            if Instant::now() > deadline {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                panic!("timed out waiting for {} ready; its log ends:\n{}", self.name, tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            c.kill().unwrap();
            panic!("{} did not stop on SIGTERM", self.name);
        }
    }

    /// The process id (the node must be running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_of(self.pid()).expect("VmRSS in /proc/PID/status")
    }

    /// Bytes the node's data directory takes on disk.
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.data_dir)
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        call(&self.api, &self.token, method, path, body).unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("LIAISON_API", &self.api).env("LIAISON_TOKEN", &self.token).output().unwrap()
    }

    pub fn summary(&self) -> Value {
        self.api("GET", "/v1/outbox", None).1
    }

    pub fn inbox(&self) -> Vec<Value> {
        // Everything stored, system packets included.
        let (code, v) = self.api("GET", "/v1/inbox?system=1", None);
        assert_eq!(code, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    pub fn inbox_ids(&self) -> Vec<String> {
        self.inbox().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
    }

    /// The audit trail's entries as JSON (through an export of everything).
    pub fn audit_events(&self) -> Vec<Value> {
        let (code, v) = self.api("GET", "/v1/audit/export", None);
        assert_eq!(code, 200, "{v}");
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let bytes = base64_decode(e[1].as_str().unwrap());
                let entry: liaison::audit::Entry = liaison::encoding::from_cbor_exact(&bytes, usize::MAX).unwrap();
                serde_json::to_value(&entry.event).unwrap()
            })
            .collect()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Resident memory of process `pid`, in KiB, while it runs.
pub fn rss_of(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A ROUTINE answer from IT-DCSA to ES-UDYCO carrying a case file of `size` bytes (its content
/// numbered by `i`, with its digest), as a draft.
pub fn case_file(i: usize, size: usize) -> Value {
    let content: Vec<u8> = (0..size).map(|j: usize| (j * 31 + i) as u8).collect();
    let mut p = super::draft("information-response.json");
    p["envelope"]["recipients"] = serde_json::json!(["ES-UDYCO"]);
    p["envelope"]["priority"] = serde_json::json!("ROUTINE");
    p["envelope"].as_object_mut().unwrap().remove("urgency_reason");
    p["body"]["InformationResponse"]["attachments"] = serde_json::json!([{
        "name": format!("case-file-{i}.bin"),
        "media_type": "application/octet-stream",
        "digest": liaison::encoding::Digest::of(&content).to_string(),
        "content": base64_encode(&content),
    }]);
    p
}

/// A tmpfs of `mib` MiB mounted on a directory (root only: the tests of a full disk), unmounted
/// when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, mib: u64) -> Self {
        fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(dir).output();
        let o = o.expect("mount(8)");
        assert!(
            o.status.success(),
            "cannot mount a tmpfs on {} (the full-disk tests need root, as CI runs): {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(&self.0).unwrap()
    }

    /// Writes a ballast file `name` that leaves about `leave` bytes free; returns its path.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join(name);
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while self.free() > leave + chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Polls `f` until it is true; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Copies a directory tree; key files get mode 0600 (git does not keep modes).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            fs::copy(&p, &dest).unwrap();
            #[cfg(unix)]
            if p.extension().is_some_and(|x| x == "key") {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
}

/// A federation of node processes in a temporary directory, with fast retries.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

/// Edits a node's configuration text: (node, text) -> text.
pub type ConfigEdit = Box<dyn Fn(&str, String) -> String>;
/// Edits a sharing policy's text: (node, partner, text) -> text.
pub type PolicyEdit = Box<dyn Fn(&str, &str, String) -> String>;

/// How to set a cluster up before its nodes start.
#[derive(Default)]
pub struct Setup {
    /// Nodes that are configured (so the others know them) but not started.
    pub stopped: Vec<&'static str>,
    /// Lines appended to every node's configuration file (name, text) -> text.
    pub config: Option<ConfigEdit>,
    /// Changes to the sharing policies: (node, partner, text) -> text.
    pub policy: Option<PolicyEdit>,
}

impl Cluster {
    /// `names` configured with each other as partners, every one started.
    pub fn new(names: &[&str]) -> Self {
        Self::with(names, Setup::default())
    }

    pub fn with(names: &[&str], setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let material = dir.path().join("certs");
        copy_dir(&root().join("certs-example"), &material);
        // The demo sharing policies (configs/policies): IT-DCSA and ES-UDYCO share everything up
        // to EU RESTRICTED; CO-DIJIN gets less, and redacted.
        copy_dir(&root().join("configs/policies"), &dir.path().join("policies"));
        let ports: Vec<(String, u16, u16)> = names.iter().map(|n| (n.to_string(), free_udp(), free_tcp())).collect();
        let mut nodes = Vec::new();
        for (name, quic, api) in &ports {
            let web = free_tcp();
            let token = format!("test-token-{name}");
            let partners: String = ports
                .iter()
                .filter(|(n, _, _)| n != name)
                .map(|(n, q, _)| {
                    format!(
                        "[[partners]]\nid = \"{n}\"\naddr = \"127.0.0.1:{q}\"\npolicy = \"policies/{name}/{n}.toml\"\n"
                    )
                })
                .collect();
            if let Some(edit) = &setup.policy {
                for (n, _, _) in ports.iter().filter(|(n, _, _)| n != name) {
                    let path = dir.path().join(format!("policies/{name}/{n}.toml"));
                    let text = fs::read_to_string(&path).unwrap();
                    fs::write(&path, edit(name, n, text)).unwrap();
                }
            }
            let hash = liaison::encoding::hex(&liaison::encoding::Digest::of(token.as_bytes()).0);
            let terminal = liaison::encoding::hex(&liaison::encoding::Digest::of(TERMINAL_TOKEN.as_bytes()).0);
            let config = format!(
                r#"[node]
id = "{name}"
listen = "127.0.0.1:{quic}"
data_dir = "data/{name}"
[keys]
dir = "certs/nodes/{name}"
keyring = ["certs/federation"]
[tls]
ca = "certs/tls/ca.crt"
cert = "certs/tls/{name}.crt"
key = "certs/tls/{name}.key"
crls = ["certs/tls/crl.pem"]
[api]
listen = "127.0.0.1:{api}"
clients = [
  {{ name = "test", token_sha256 = "{hash}", admin = true, names_officers = true }},
  {{ name = "terminal-7", token_sha256 = "{terminal}" }},
]
[web]
listen = "127.0.0.1:{web}"
{partners}
[delivery]
initial_backoff_ms = 50
max_backoff_ms = 1000
receipt_timeout_ms = 3000
[log]
format = "json"
level = "info"
"#
            );
            let config = match &setup.config {
                Some(edit) => edit(name, config),
                None => config,
            };
            let path = dir.path().join(format!("{name}.toml"));
            fs::write(&path, config).unwrap();
            nodes.push(NodeProc {
                name: name.clone(),
                quic: *quic,
                config: path,
                log: dir.path().join(format!("{name}.log")),
                data_dir: dir.path().join(format!("data/{name}")),
                api: format!("http://127.0.0.1:{api}"),
                token,
                web: format!("http://127.0.0.1:{web}"),
                child: None,
            });
        }
        for n in nodes.iter_mut().filter(|n| !setup.stopped.contains(&n.name.as_str())) {
            n.start();
        }
        Cluster { dir, nodes }
    }

    /// A node, to read from.
    pub fn get(&self, name: &str) -> &NodeProc {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node(&mut self, name: &str) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }
}

/// TLS material from certs-example/tls (`cert` and `key` relative to it).
pub fn demo_material(cert: &str, key: &str) -> liaison::transport::TlsMaterial {
    let tls = root().join("certs-example/tls");
    let tmp = tempfile::tempdir().unwrap();
    // The key file must be private (0600), which git does not keep.
    let key_copy = tmp.path().join("tls.key");
    fs::copy(tls.join(key), &key_copy).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&key_copy, fs::Permissions::from_mode(0o600)).unwrap();
    }
    liaison::transport::TlsMaterial::load(&tls.join("ca.crt"), &[&tls.join("crl.pem")], &tls.join(cert), &key_copy)
        .unwrap()
}

/// The seal context of demo node `who` (its keys from certs-example, the demo keyring).
pub fn seal_context(who: &str) -> liaison::seal::SealContext {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&root().join("certs-example/nodes").join(who), tmp.path());
    let keys = liaison::keys::NodeKeys::load_single(tmp.path()).unwrap();
    let ring = liaison::keys::Keyring::load(&[root().join("certs-example/federation")]).unwrap();
    liaison::seal::SealContext::new(keys, ring).unwrap()
}

/// A peer speaking to a node process directly over QUIC, with the certificate and keys of a
/// demo node, to send crafted packets.
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
}

impl RawPeer {
    pub fn new(client: quinn::ClientConfig) -> Self {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        Self { endpoint }
    }

    /// A raw peer with the TLS certificate of demo node `who`.
    pub fn as_node(who: &str) -> Self {
        Self::new(
            liaison::transport::client_config(
                &demo_material(&format!("{who}.crt"), &format!("{who}.key")),
                Default::default(),
            )
            .unwrap(),
        )
    }

    /// A new connection to the node listening on `port`.
    pub async fn connect(&self, port: u16, node: &str) -> Result<quinn::Connection, String> {
        let name = liaison::transport::server_name(&node.parse().unwrap());
        let conn =
            self.endpoint.connect(format!("127.0.0.1:{port}").parse().unwrap(), &name).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), conn).await.map_err(|_| "timeout")?.map_err(|e| e.to_string())
    }

    /// Sends `bytes` as one frame on a new lane stream of a new connection to the node; returns
    /// the receipt frame it answers with.
    pub async fn send(&self, port: u16, node: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let conn = self.connect(port, node).await?;
        let answers = send_frames(&conn, &[bytes]).await?;
        answers.into_iter().next().ok_or_else(|| "lane closed without a receipt".to_owned())
    }
}

/// Sends `frames` on one new lane stream of `conn` and returns every receipt frame the node
/// answers with until it closes the stream (at most 10 s).
pub async fn send_frames(conn: &quinn::Connection, frames: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        for f in frames {
            liaison::wire::write_frame(&mut send, f).await.map_err(|e| e.to_string())?;
        }
        send.finish().map_err(|e| e.to_string())?;
        let mut answers = Vec::new();
        while let Some(a) =
            liaison::wire::read_frame(&mut recv, 1 << 24, Duration::from_secs(10)).await.map_err(|e| e.to_string())?
        {
            answers.push(a.to_vec());
            if answers.len() >= frames.len() {
                break;
            }
        }
        Ok(answers)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "timeout".to_owned())?
}

/// A packet draft from `who` to `to` (the information-request example, made current), ready
/// to seal.
pub fn packet_from(who: &str, to: &str) -> liaison::packet::Packet {
    let mut v = super::draft("information-request.json");
    v["envelope"]["originator"]["node"] = serde_json::json!(who);
    v["envelope"]["recipients"] = serde_json::json!([to]);
    liaison::packet::Packet::from_json_draft(
        &v.to_string(),
        liaison::timestamp::Timestamp::now(),
        &mut rand_core::OsRng,
    )
    .unwrap()
}

/// The receipt items of a receipt frame sealed for `me`, checked to be signed by `by`.
pub fn receipt_items(me: &liaison::seal::SealContext, by: &str, answer: &[u8]) -> Vec<liaison::packet::ReceiptItem> {
    let opened = me.open(answer, liaison::timestamp::Timestamp::now()).expect("the answer is a sealed, signed packet");
    assert_eq!(opened.signed.packet.envelope.originator.node.as_str(), by, "signed by the receiver");
    match opened.signed.packet.body {
        liaison::packet::Body::DeliveryReceipt(r) => r.receipts,
        other => panic!("not a receipt: {other:?}"),
    }
}

/// The one item of a receipt for one copy, checked to be signed by IT-DCSA.
pub fn receipt_item(es: &liaison::seal::SealContext, answer: &[u8]) -> liaison::packet::ReceiptItem {
    let mut items = receipt_items(es, "IT-DCSA", answer);
    assert_eq!(items.len(), 1, "one copy sent, one item");
    items.remove(0)
}

pub fn receipt_outcome(es: &liaison::seal::SealContext, answer: &[u8]) -> liaison::packet::ReceiptOutcome {
    receipt_item(es, answer).outcome
}

/// A lane a node opened to a [`HostileReceiver`]: the first copy on it, and the stream to
/// answer on.
pub struct Lane {
    pub first: Vec<u8>,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub conn: quinn::Connection,
}

/// A partner that receives for demo node `who` on its configured port: it accepts the node's
/// connections and hands each new lane to the test, which answers with whatever receipts it
/// likes.
pub struct HostileReceiver {
    pub lanes: tokio::sync::mpsc::UnboundedReceiver<Lane>,
    _endpoint: quinn::Endpoint,
}

impl HostileReceiver {
    pub fn listen(who: &str, port: u16, enrolled: &[&str]) -> Self {
        let m = demo_material(&format!("{who}.crt"), &format!("{who}.key"));
        let enrolled: Vec<liaison::ids::NodeId> = enrolled.iter().map(|n| n.parse().unwrap()).collect();
        let config =
            liaison::transport::server_config(&m, &enrolled, std::sync::Arc::new(|_: &str| {}), Default::default())
                .unwrap();
        let endpoint = quinn::Endpoint::server(config, format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
        let (tx, lanes) = tokio::sync::mpsc::unbounded_channel();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, mut recv)) = conn.accept_bi().await {
                        let first = liaison::wire::read_frame(&mut recv, 1 << 25, Duration::from_secs(10)).await;
                        if let Ok(Some(first)) = first {
                            let _ = tx.send(Lane { first: first.to_vec(), send, recv, conn: conn.clone() });
                        }
                    }
                });
            }
        });
        Self { lanes, _endpoint: endpoint }
    }

    /// The next lane the node opens (within 20 s).
    pub async fn next_lane(&mut self) -> Lane {
        tokio::time::timeout(Duration::from_secs(20), self.lanes.recv()).await.expect("a lane within 20 s").unwrap()
    }
}

/// A receipt from `me` (a demo node's seal context) to `to` with `items`, sealed.
pub fn receipt(me: &liaison::seal::SealContext, to: &str, items: Vec<liaison::packet::ReceiptItem>) -> Vec<u8> {
    let now = liaison::timestamp::Timestamp::now();
    let r = liaison::packet::Packet::delivery_receipt(
        me.node(),
        &to.parse().unwrap(),
        liaison::markings::Priority::Routine,
        items,
        now,
        &mut rand_core::OsRng,
    );
    me.seal(&r, &mut rand_core::OsRng).unwrap().remove(0).bytes
}

/// The item a genuine receiver would write for a copy it stored.
pub fn accepted(copy: &[u8], me: &liaison::seal::SealContext) -> liaison::packet::ReceiptItem {
    let opened = me.open(copy, liaison::timestamp::Timestamp::now()).unwrap();
    liaison::packet::ReceiptItem {
        packet_id: opened.signed.packet.envelope.id,
        received_at: liaison::timestamp::Timestamp::now(),
        sealed_digest: opened.sealed_digest,
        signed_digest: Some(liaison::encoding::Digest::of(&opened.signed.bytes)),
        outcome: liaison::packet::ReceiptOutcome::Accepted,
        policy: None,
    }
}
