//! `liaison demo`: the local demo federation, as real node processes.
//!
//! Starts IT-DCSA (Rome), ES-UDYCO (Madrid) and CO-DIJIN (Bogotá) as `liaison serve` processes on
//! loopback, from the demo keys and certificates embedded from `certs-example/` and configs like
//! those in `configs/`, each with its own sled store in a private temporary directory. CO-DIJIN
//! sends a FLASH controlled-delivery alert to ES-UDYCO and IT-DCSA through its local API; the
//! signed receipts come back; an officer at IT-DCSA acknowledges it; CO-DIJIN's status is printed;
//! the nodes are shut down with SIGTERM. Every step is checked, and the demo fails (exit 1) if one
//! does not hold.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::types::{AckRequest, DeliveryState, ForwardRequest};
use crate::client::{CallError, Client};
use crate::encoding::{hex, Digest};
use crate::ids::{NodeId, OfficerId, PacketId};

/// The five embedded files of a demo node.
macro_rules! material {
    ($n:literal) => {
        [
            include_str!(concat!("../certs-example/nodes/", $n, "/", $n, ".sign.key")),
            include_str!(concat!("../certs-example/nodes/", $n, "/", $n, ".enc.key")),
            include_str!(concat!("../certs-example/nodes/", $n, "/", $n, ".pub.toml")),
            include_str!(concat!("../certs-example/tls/", $n, ".crt")),
            include_str!(concat!("../certs-example/tls/", $n, ".key")),
        ]
    };
}

/// Embedded demo material (public test material, see certs-example/README.md): per node its
/// signing key, encryption key, public keys, TLS certificate and TLS key.
const NODES: [(&str, [&str; 5]); 3] =
    [("CO-DIJIN", material!("CO-DIJIN")), ("ES-UDYCO", material!("ES-UDYCO")), ("IT-DCSA", material!("IT-DCSA"))];
use crate::federation::POLICIES;
const CA: &str = include_str!("../certs-example/tls/ca.crt");
const CRL: &str = include_str!("../certs-example/tls/crl.pem");
const ALERT: &str = include_str!("../schemas/examples/controlled-delivery-alert.json");
const RESPONSE: &str = include_str!("../schemas/examples/information-response.json");

struct Proc {
    name: &'static str,
    api: String,
    token: String,
    log: PathBuf,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the demo, writing a human-readable account to `out`.
pub fn run(out: &mut dyn Write, web: bool) -> Result<(), String> {
    let dir = TempDir::new()?;
    let p = |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(|e| e.to_string());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the liaison binary: {e}"))?;

    p(out, "== 1. Starting the demo federation (3 node processes on loopback)".into())?;
    let ports: Vec<(&str, u16, u16)> =
        NODES.iter().map(|(n, _)| Ok((*n, free_udp()?, free_tcp()?))).collect::<Result<_, String>>()?;
    let web_ports: Vec<(&str, u16)> =
        NODES.iter().map(|(n, _)| Ok((*n, free_tcp()?))).collect::<Result<_, String>>()?;
    let fed = dir.0.join("federation");
    mkdir_private(&fed)?;
    for (name, [_, _, public, _, _]) in NODES {
        write_file(&fed.join(format!("{name}.pub.toml")), public, 0o644)?;
    }
    let mut procs = Vec::new();
    for (name, [sign, enc, public, cert, key]) in NODES {
        let (_, quic, api) = ports.iter().find(|(n, _, _)| *n == name).copied().ok_or("port")?;
        let nd = dir.0.join(name);
        mkdir_private(&nd)?;
        write_file(&nd.join(format!("{name}.sign.key")), sign, 0o600)?;
        write_file(&nd.join(format!("{name}.enc.key")), enc, 0o600)?;
        write_file(&nd.join(format!("{name}.pub.toml")), public, 0o644)?;
        write_file(&nd.join("tls.crt"), cert, 0o644)?;
        write_file(&nd.join("tls.key"), key, 0o600)?;
        write_file(&nd.join("ca.crt"), CA, 0o644)?;
        write_file(&nd.join("crl.pem"), CRL, 0o644)?;
        mkdir_private(&nd.join("policies"))?;
        for (_, partner, text) in POLICIES.iter().filter(|(me, _, _)| *me == name) {
            write_file(&nd.join("policies").join(format!("{partner}.toml")), text, 0o644)?;
        }
        // A fresh token each run: with --web the nodes stay up, and the client is an admin.
        let token = {
            use rand_core::RngCore;
            let mut b = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut b);
            format!("demo-{}-{}", name.to_ascii_lowercase(), hex(&b))
        };
        let partners: String = ports
            .iter()
            .filter(|(n, _, _)| *n != name)
            .map(|(n, q, _)| {
                format!("[[partners]]\nid = \"{n}\"\naddr = \"127.0.0.1:{q}\"\npolicy = \"policies/{n}.toml\"\n")
            })
            .collect();
        let (_, web_port) = web_ports.iter().find(|(n, _)| *n == name).copied().ok_or("port")?;
        let config = format!(
            "[node]\nid = \"{name}\"\nlisten = \"127.0.0.1:{quic}\"\ndata_dir = \"data\"\n\
             [web]\nlisten = \"127.0.0.1:{web_port}\"\n\
             [keys]\ndir = \".\"\nkeyring = [\"../federation\"]\n\
             [tls]\nca = \"ca.crt\"\ncert = \"tls.crt\"\nkey = \"tls.key\"\ncrls = [\"crl.pem\"]\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\nclients = [{{ name = \"demo-case-system\", token_sha256 = \"{}\", names_officers = true, admin = {web} }}]\n\
             {partners}[delivery]\ninitial_backoff_ms = 100\nmax_backoff_ms = 2000\nreceipt_timeout_ms = 5000\n\
             [log]\nformat = \"text\"\nlevel = \"info\"\n",
            hex(&Digest::of(token.as_bytes()).0)
        );
        let cfg = nd.join("node.toml");
        write_file(&cfg, &config, 0o600)?;
        let log = nd.join("node.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        procs.push(Proc { name, api: format!("http://127.0.0.1:{api}"), token, log, child });
    }
    for pr in &mut procs {
        wait_for(&format!("{} to start", pr.name), Duration::from_secs(20), || {
            std::fs::read_to_string(&pr.log).unwrap_or_default().contains(" ready ")
        })
        .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&pr.log).unwrap_or_default()))?;
        let (_, quic, api) = ports.iter().find(|(n, _, _)| *n == pr.name).copied().ok_or("port")?;
        p(out, format!("   {:<9} QUIC 127.0.0.1:{quic}  API 127.0.0.1:{api}  ready", pr.name))?;
    }
    let node = |name: &str| procs.iter().find(|p| p.name == name).ok_or(format!("no {name}"));
    let api = |name: &str| -> Result<Client, String> {
        let pr = node(name)?;
        Ok(Client::new(pr.api.clone(), pr.token.clone()))
    };
    let nodes = |list: &[&str]| -> Result<Vec<NodeId>, String> {
        list.iter().map(|n| n.parse().map_err(|e: crate::ids::IdError| e.to_string())).collect()
    };
    let rossi: OfficerId = "Isp. Giulia Rossi".parse().map_err(|e: crate::ids::IdError| e.to_string())?;

    p(out, "== 2. CO-DIJIN sends a FLASH controlled-delivery alert to ES-UDYCO and IT-DCSA".into())?;
    let alert = draft(ALERT)?;
    let started = Instant::now();
    let v =
        api("CO-DIJIN")?.submit(&alert.to_string(), &nodes(&["ES-UDYCO", "IT-DCSA"])?).map_err(|e| e.to_string())?;
    let id: PacketId = v.submitted.id;
    p(out, format!("   accepted {id} (on disk at CO-DIJIN before this answer)"))?;

    p(out, "== 3. Signed delivery receipts come back".into())?;
    let mut shown = std::collections::HashSet::new();
    wait_for("both receipts", Duration::from_secs(30), || {
        let Ok(s) = api("CO-DIJIN").and_then(|c| c.status(id).map_err(|e| e.to_string())) else { return false };
        for r in &s.recipients {
            if r.state == DeliveryState::Delivered && shown.insert(r.node) {
                let _ = writeln!(
                    out,
                    "   RECEIPT from {:<9} verified: stored at {} {}  ({} ms after submit)",
                    r.node,
                    r.delivered_at.map(|t| t.to_string()).unwrap_or_default(),
                    r.digest.map(|d| d.to_string()).unwrap_or_default(),
                    started.elapsed().as_millis()
                );
            }
        }
        s.recipients.len() == 2 && s.recipients.iter().all(|r| r.state == DeliveryState::Delivered)
    })?;

    p(out, "== 4. The recipients' officers see it; one at IT-DCSA acknowledges it".into())?;
    for name in ["ES-UDYCO", "IT-DCSA"] {
        let inbox = api(name)?.inbox().map_err(|e| e.to_string())?;
        let entry = inbox.iter().find(|e| e.id == id).ok_or(format!("{name}: not in inbox"))?;
        p(out, format!("   {name:<9} INBOX {} {} from {}", entry.priority.as_str(), entry.packet_type, entry.from))?;
    }
    api("IT-DCSA")?.ack(id, None, &AckRequest { officer: Some(rossi.clone()) }).map_err(|e| e.to_string())?;
    wait_for("the read acknowledgement", Duration::from_secs(30), || {
        api("CO-DIJIN")
            .and_then(|c| c.status(id).map_err(|e| e.to_string()))
            .map(|s| s.recipients.iter().any(|r| r.read_by.as_ref() == Some(&rossi)))
            .unwrap_or(false)
    })?;
    p(out, "   READ by Isp. Giulia Rossi at IT-DCSA; signed ReadAck received by CO-DIJIN".into())?;

    p(out, format!("== 5. Status of {id} at CO-DIJIN"))?;
    let s = api("CO-DIJIN")?.status(id).map_err(|e| e.to_string())?;
    for r in &s.recipients {
        let read = match (&r.read_by, r.read_at) {
            (Some(w), Some(at)) => format!(", read by {w} at {at}"),
            _ => String::new(),
        };
        p(
            out,
            format!(
                "   {:<9} {} {} {}{read}",
                r.node,
                r.state.as_str(),
                r.delivered_at.map(|t| t.to_string()).unwrap_or_default(),
                r.digest.map(|d| d.to_string()).unwrap_or_default()
            ),
        )?;
    }

    p(out, "== 6. Sharing policy: IT-DCSA answers CO-DIJIN; passing the alert on is checked too".into())?;
    let mut answer = draft(RESPONSE)?;
    if let Some(env) = answer.get_mut("envelope").and_then(Value::as_object_mut) {
        env.insert("in_reply_to".into(), id.to_string().into());
        if let Some(o) = env.get_mut("originator").and_then(Value::as_object_mut) {
            o.insert("node".into(), "IT-DCSA".into());
            o.insert("officer".into(), rossi.as_str().into());
        }
    }
    if let Some(body) = answer.pointer_mut("/body/InformationResponse").and_then(Value::as_object_mut) {
        body.remove("attachments"); // the policy with CO-DIJIN allows no files
    }
    let v = api("IT-DCSA")?.submit(&answer.to_string(), &nodes(&["CO-DIJIN"])?).map_err(|e| e.to_string())?;
    let answer_id = v.submitted.id;
    let removed: Vec<String> =
        v.submitted.sent.iter().flat_map(|c| &c.redacted).map(|r| format!("{} ({})", r.path, r.rule)).collect();
    if removed.is_empty() {
        return Err("the policy with CO-DIJIN removed nothing from the answer".into());
    }
    p(
        out,
        format!("   answer {answer_id} to CO-DIJIN, signed under IT-DCSA's policy for it; removed before signing:"),
    )?;
    for r in &removed {
        p(out, format!("     - {r}"))?;
    }
    let forward = ForwardRequest { to: nodes(&["ES-UDYCO"])?, officer: Some(rossi.clone()) };
    let refusal = match api("IT-DCSA")?.forward(id, None, &forward) {
        Err(CallError::Api { status: 403, body }) => body.denied.into_iter().next().ok_or("403 without a refusal")?,
        other => return Err(format!("passing on an alert ES-UDYCO already has should be refused, got {other:?}")),
    };
    p(
        out,
        format!(
            "   passing CO-DIJIN's alert on to ES-UDYCO: REFUSED ({}: {})",
            refusal.denial.rule, refusal.denial.reason
        ),
    )?;
    wait_for("the answer's receipt", Duration::from_secs(30), || {
        api("IT-DCSA")
            .and_then(|c| c.status(answer_id).map_err(|e| e.to_string()))
            .map(|s| s.recipients.iter().all(|r| r.state == DeliveryState::Delivered))
            .unwrap_or(false)
    })?;
    let shown = api("CO-DIJIN")?.show(answer_id, None).map_err(|e| e.to_string())?;
    let crate::packet::Body::InformationResponse(body) = &shown.packet.body else {
        return Err(format!("CO-DIJIN stored a {} as the answer", shown.packet.packet_type()));
    };
    if body.entities.iter().any(|e| matches!(e, crate::packet::Entity::Person(p) if p.date_of_birth.is_some())) {
        return Err("CO-DIJIN received a date of birth the policy removes".into());
    }
    p(out, "   CO-DIJIN stored the answer without the removed fields; receipt verified at IT-DCSA".into())?;

    p(out, "== 7. Audit trails (hash-chained, signed checkpoints) verified at every node".into())?;
    for name in ["CO-DIJIN", "ES-UDYCO", "IT-DCSA"] {
        let v = api(name)?.audit_verify().map_err(|e| e.to_string())?;
        let Some(x) = v.verified.filter(|_| v.ok) else {
            return Err(format!("{name}: audit trail broken: {:?}", v.broken));
        };
        p(out, format!("   {name:<9} intact: entries {}..{}", x.first, x.last))?;
    }

    if web {
        p(out, "== 8. The officers' web workspace: one account a node (supervisor, every partner and case)".into())?;
        let mut secrets = Vec::new();
        for name in ["CO-DIJIN", "ES-UDYCO", "IT-DCSA"] {
            let account = crate::accounts::NewAccount {
                name: "demo.officer".parse().map_err(|e: crate::ids::IdError| e.to_string())?,
                display_name: format!("Demo officer ({name})"),
                role: crate::accounts::Role::Supervisor,
                partners: Vec::new(),
                cases: Vec::new(),
                password: None,
                certificates: Vec::new(),
            };
            let c = api(name)?.user_add(&account).map_err(|e| e.to_string())?;
            let (_, port) = web_ports.iter().find(|(n, _)| *n == name).copied().ok_or("port")?;
            p(
                out,
                format!(
                    "   {name:<9} http://127.0.0.1:{port}/  account demo.officer  password {}",
                    c.password.clone().unwrap_or_default()
                ),
            )?;
            p(
                out,
                format!("             TOTP secret {} (or add {} to an authenticator app)", c.totp_secret, c.totp_uri),
            )?;
            let bytes = crate::accounts::totp::base32_decode(&c.totp_secret).ok_or("a TOTP secret")?;
            secrets.push((name, crate::accounts::totp::TotpSecret::from_bytes(&bytes)));
        }
        p(out, "   The nodes keep running; the current codes follow every 30 s. Press Enter to stop.".into())?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = tx.send(());
        });
        let mut shown = u64::MAX;
        loop {
            let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let step = unix / crate::accounts::totp::STEP_SECONDS;
            if step != shown {
                shown = step;
                let codes: Vec<String> = secrets.iter().map(|(n, s)| format!("{n} {:06}", s.code_at(step))).collect();
                p(out, format!("   codes now: {}", codes.join("   ")))?;
                let _ = out.flush();
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        }
    }

    p(out, format!("== {}. Shutting down (SIGTERM)", if web { 9 } else { 8 }))?;
    for pr in &mut procs {
        #[cfg(unix)]
        let _ = Command::new("kill").args(["-TERM", &pr.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(st)) = pr.child.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(st) if st.success() => p(out, format!("   {:<9} stopped cleanly", pr.name))?,
            other => return Err(format!("{} did not stop cleanly: {other:?}", pr.name)),
        }
    }
    p(out, "demo complete: every step verified".into())?;
    Ok(())
}

/// An example packet as a draft written now: every date and time in it moved by the same amount
/// (so its route windows, deadlines and expiry lie as far ahead as when it was written), without
/// the id, creation time and deadline the node fills in.
fn draft(example: &str) -> Result<Value, String> {
    let mut v: Value = serde_json::from_str(example).map_err(|e| e.to_string())?;
    let created: crate::timestamp::Timestamp = v
        .pointer("/envelope/created")
        .and_then(Value::as_str)
        .ok_or("example without envelope.created")?
        .parse()
        .map_err(|e: crate::timestamp::TimeError| e.to_string())?;
    crate::packet::shift_times(&mut v, crate::timestamp::Timestamp::now().unix() - created.unix())
        .map_err(|e| e.to_string())?;
    if let Some(env) = v.get_mut("envelope").and_then(Value::as_object_mut) {
        for k in ["id", "created", "due_by"] {
            env.remove(k);
        }
    }
    Ok(v)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn free_udp() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

fn free_tcp() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("liaison-demo-{}-{nanos}", std::process::id()));
        mkdir_private(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkdir_private(path: &Path) -> Result<(), String> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}
