//! `liaison demo`: the local demo federation, offline.
//!
//! Until the node (QUIC transport, outbox, sled) exists, the demo runs the packet core end to end
//! between the three demo nodes — IT-DCSA (Rome), ES-UDYCO (Madrid), CO-DIJIN (Bogotá) — on the
//! demo keys embedded from `certs-example/`: CO-DIJIN seals a FLASH controlled-delivery alert for
//! ES-UDYCO and IT-DCSA, each recipient opens and verifies it and returns a signed, sealed delivery
//! receipt, an officer at IT-DCSA acknowledges it, a tampered copy is refused, and CO-DIJIN prints
//! the status per recipient. Every step is checked; the demo fails (exit 1) if one does not hold.
//!
//! The keys are written to a private temporary directory (mode 0700, files 0600) and loaded
//! through the same code a real node uses; the directory is removed afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::encoding::Digest;
use crate::ids::NodeId;
use crate::keys::{Keyring, NodeKeys};
use crate::packet::{Body, Packet, ReceiptOutcome};
use crate::seal::{peek_route, SealContext};
use crate::timestamp::Timestamp;

/// The demo nodes and their embedded key files (public test material, see certs-example/README.md).
const NODES: [(&str, &str, &str, &str); 3] = [
    (
        "CO-DIJIN",
        include_str!("../certs-example/nodes/CO-DIJIN/CO-DIJIN.sign.key"),
        include_str!("../certs-example/nodes/CO-DIJIN/CO-DIJIN.enc.key"),
        include_str!("../certs-example/nodes/CO-DIJIN/CO-DIJIN.pub.toml"),
    ),
    (
        "ES-UDYCO",
        include_str!("../certs-example/nodes/ES-UDYCO/ES-UDYCO.sign.key"),
        include_str!("../certs-example/nodes/ES-UDYCO/ES-UDYCO.enc.key"),
        include_str!("../certs-example/nodes/ES-UDYCO/ES-UDYCO.pub.toml"),
    ),
    (
        "IT-DCSA",
        include_str!("../certs-example/nodes/IT-DCSA/IT-DCSA.sign.key"),
        include_str!("../certs-example/nodes/IT-DCSA/IT-DCSA.enc.key"),
        include_str!("../certs-example/nodes/IT-DCSA/IT-DCSA.pub.toml"),
    ),
];

const ALERT: &str = include_str!("../schemas/examples/controlled-delivery-alert.json");

/// Runs the demo, writing a human-readable account to `out`.
pub fn run(out: &mut dyn Write) -> Result<(), String> {
    let dir = TempDir::new()?;
    let now = Timestamp::now();
    let mut rng = rand_core::OsRng;
    let p = |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(|e| e.to_string());

    // 1. The federation: three nodes, each with its own keys and everyone's public keys.
    p(out, "== 1. Demo federation (keys from certs-example/, public test material)".into())?;
    let federation = dir.0.join("federation");
    mkdir_private(&federation)?;
    let mut contexts = Vec::new();
    for (name, sign, enc, public) in NODES {
        let node: NodeId = name.parse().map_err(|e| format!("{e}"))?;
        let kdir = dir.0.join(name);
        mkdir_private(&kdir)?;
        write_file(&kdir.join(format!("{name}.sign.key")), sign, 0o600)?;
        write_file(&kdir.join(format!("{name}.enc.key")), enc, 0o600)?;
        write_file(&kdir.join(format!("{name}.pub.toml")), public, 0o644)?;
        write_file(&federation.join(format!("{name}.pub.toml")), public, 0o644)?;
        let keys = NodeKeys::load_from_dir(&kdir, &node).map_err(|e| e.to_string())?;
        p(out, format!("   {name:<9} signs with {}", keys.public().signing_kid))?;
        contexts.push((node, keys));
    }
    let ring = Keyring::load(&[federation]).map_err(|e| e.to_string())?;
    let ctx: Vec<(NodeId, SealContext)> = contexts
        .into_iter()
        .map(|(n, k)| SealContext::new(k, ring.clone()).map(|c| (n, c)).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let node_ctx =
        |name: &str| ctx.iter().find(|(n, _)| n.as_str() == name).map(|(_, c)| c).ok_or(format!("no {name}"));
    let (co, es, it) = (node_ctx("CO-DIJIN")?, node_ctx("ES-UDYCO")?, node_ctx("IT-DCSA")?);

    // 2. CO-DIJIN drafts and seals a FLASH controlled delivery alert.
    p(out, "== 2. CO-DIJIN seals a FLASH controlled-delivery alert".into())?;
    let mut draft: serde_json::Value = serde_json::from_str(ALERT).map_err(|e| e.to_string())?;
    if let Some(env) = draft.get_mut("envelope").and_then(|e| e.as_object_mut()) {
        env.remove("id");
        env.remove("created");
        env.insert("expires".into(), now.plus_secs(7 * 86400).to_string().into());
    }
    let alert = Packet::from_json_draft(&draft.to_string(), now, &mut rng).map_err(|e| e.to_string())?;
    let id = alert.envelope.id;
    let sealed = co.seal(&alert, &mut rng).map_err(|e| e.to_string())?;
    p(
        out,
        format!(
            "   packet {id}: {} {}, {} recipients",
            alert.envelope.priority.as_str(),
            alert.packet_type(),
            sealed.len()
        ),
    )?;
    for s in &sealed {
        let seen = peek_route(&s.bytes).map_err(|e| e.to_string())?;
        p(
            out,
            format!(
                "   sealed for {:<9} {:>5} bytes; a relay sees only: {} -> {}, {}, expires {}",
                s.route.recipient,
                s.bytes.len(),
                seen.sender,
                seen.recipient,
                seen.priority.as_str(),
                seen.expires
            ),
        )?;
    }

    // 3. Each recipient opens and verifies its copy, and answers with a signed receipt.
    p(out, "== 3. Recipients open, verify and return signed delivery receipts".into())?;
    let mut receipts = Vec::new();
    for s in &sealed {
        let me = if s.route.recipient.as_str() == "ES-UDYCO" { es } else { it };
        let opened = me.open(&s.bytes, now).map_err(|e| format!("{} refused its copy: {e}", s.route.recipient))?;
        if opened.signed.packet != alert {
            return Err(format!("{} opened a different packet", s.route.recipient));
        }
        let legs = match &opened.signed.packet.body {
            Body::ControlledDeliveryAlert(a) => a.route.len(),
            _ => 0,
        };
        p(
            out,
            format!(
                "   {:<9} OPENED {id}: signature by {} verified, {legs} route legs, sealed digest {}",
                me.node(),
                opened.signed.signer,
                opened.sealed_digest
            ),
        )?;
        let receipt = Packet::delivery_receipt(
            me.node(),
            co.node(),
            id,
            alert.envelope.priority,
            opened.sealed_digest,
            ReceiptOutcome::Accepted,
            now,
            &mut rng,
        );
        let mut back = me.seal(&receipt, &mut rng).map_err(|e| e.to_string())?;
        receipts.push((s.route.recipient.clone(), Digest::of(&s.bytes), back.remove(0).bytes));
    }

    // 4. A copy altered in transit is refused.
    p(out, "== 4. A copy altered in transit is refused".into())?;
    let mut tampered =
        sealed.iter().find(|s| s.route.recipient.as_str() == "IT-DCSA").ok_or("no IT copy")?.bytes.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 0x01;
    match it.open(&tampered, now) {
        Ok(_) => return Err("a tampered copy was accepted".into()),
        Err(e) => p(out, format!("   IT-DCSA   REJECTED tampered copy ({}): {e}", e.code()))?,
    }

    // 5. CO-DIJIN verifies each receipt: signature, and the digest of exactly what it sent.
    p(out, "== 5. CO-DIJIN verifies the receipts".into())?;
    let mut status = Vec::new();
    for (recipient, sent_digest, bytes) in &receipts {
        let opened = co.open(bytes, now).map_err(|e| format!("receipt from {recipient} refused: {e}"))?;
        let Body::DeliveryReceipt(r) = &opened.signed.packet.body else {
            return Err(format!("{recipient} sent something other than a receipt"));
        };
        if r.packet_id != id || &r.receiver != recipient || !r.sealed_digest.ct_eq(sent_digest) {
            return Err(format!("receipt from {recipient} does not match what was sent"));
        }
        p(
            out,
            format!(
                "   RECEIPT from {recipient:<9} signed by {} verified: accepted at {}, digest matches",
                opened.signed.signer, r.received_at
            ),
        )?;
        status.push((recipient.clone(), r.received_at, r.sealed_digest, None));
    }

    // 6. An officer at IT-DCSA acknowledges the alert.
    p(out, "== 6. An officer at IT-DCSA acknowledges the alert".into())?;
    let officer = "Isp. Giulia Rossi".parse().map_err(|e| format!("{e}"))?;
    let ack = Packet::read_ack(it.node(), co.node(), id, alert.envelope.priority, officer, now, &mut rng);
    let ack_bytes = it.seal(&ack, &mut rng).map_err(|e| e.to_string())?.remove(0).bytes;
    let opened = co.open(&ack_bytes, now).map_err(|e| e.to_string())?;
    let Body::ReadAck(a) = &opened.signed.packet.body else { return Err("not a read acknowledgement".into()) };
    p(
        out,
        format!(
            "   READ by {} at {} (signed by {})",
            a.officer, opened.signed.packet.envelope.originator.node, opened.signed.signer
        ),
    )?;
    for s in status.iter_mut() {
        if s.0 == opened.signed.packet.envelope.originator.node && a.packet_id == id {
            s.3 = Some(a.read_at);
        }
    }

    // 7. Status at CO-DIJIN.
    p(out, format!("== 7. Status of {id} at CO-DIJIN"))?;
    for (recipient, at, digest, read) in &status {
        let read = read.map(|t| format!(", read {t}")).unwrap_or_default();
        p(out, format!("   {recipient:<9} delivered {at} {digest}{read}"))?;
    }
    p(out, "demo complete: every step verified".into())?;
    Ok(())
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
