//! `liaison audit`: verify the trail (live or an export), show its entries, export a range.

use std::path::PathBuf;

use clap::Subcommand;

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check the whole trail of the running node (every link, the head, every signed
    /// checkpoint) and name the first broken entry; or, with --file, check an export offline.
    /// Exit 1 if anything is broken.
    Verify {
        #[command(flatten)]
        api: ApiArgs,
        /// An export (from `liaison audit export`) to check offline instead.
        #[arg(long, requires = "key")]
        file: Option<PathBuf>,
        /// The node's public key file (NODE.pub.toml, as the federation published it), or a
        /// directory of them; repeat for each generation of its keys (after a rotation).
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// The entries recorded between two times, decoded, one a line: sequence number, time,
    /// what happened and its ids and parties; --partner keeps those that name a partner.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        range: TimeRange,
        /// Only entries that name this node (a partner, a recipient, a sender).
        #[arg(long)]
        partner: Option<NodeId>,
    },
    /// Write the entries recorded between two times, up to a signed checkpoint, to a
    /// self-contained JSON file.
    Export {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        range: TimeRange,
        /// Where to write it (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// A range of the audit trail.
#[derive(Debug, clap::Args)]
pub(super) struct TimeRange {
    /// From: RFC 3339 (2026-11-01T00:00:00Z) or relative to now (now-7d); default: the
    /// beginning.
    #[arg(long)]
    from: Option<String>,
    /// To: RFC 3339 or relative to now (now-1h); default: now.
    #[arg(long)]
    to: Option<String>,
}

impl TimeRange {
    fn parse(&self) -> Result<(Option<Timestamp>, Option<Timestamp>), CliError> {
        let from = self.from.as_deref().map(|f| when("--from", f)).transpose()?;
        let to = self.to.as_deref().map(|t| when("--to", t)).transpose()?;
        Ok((from, to))
    }
}

pub(super) fn audit(cmd: AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify { file: Some(file), key, api } => {
            let ring = crate::keys::Keyring::load(&key).map_err(|e| CliError::Usage(e.to_string()))?;
            let text =
                std::fs::read_to_string(&file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let export: crate::audit::Export = serde_json::from_str(&text)
                .map_err(|e| CliError::Rejected(format!("{}: not an audit export: {e}", file.display())))?;
            let generations = ring.generations(&export.node);
            if generations.is_empty() {
                let whose: Vec<&str> = ring.nodes().map(NodeId::as_str).collect();
                return Err(CliError::Rejected(format!(
                    "the export is from {}; the keys given are {}'s",
                    export.node,
                    whose.join(", ")
                )));
            }
            let verifying: Vec<_> = generations.iter().map(|k| k.signing).collect();
            let kids: Vec<&str> = generations.iter().map(|k| k.signing_kid.as_str()).collect();
            match export.verify(&verifying) {
                Ok(v) => {
                    if api.json {
                        println!("{}", serde_json::json!({ "ok": true, "verified": v }));
                    } else {
                        println!(
                            "intact: {} entries ({}..{}) of {}, {} signed checkpoint(s), signed by {}",
                            v.last + 1 - v.first.min(v.last + 1),
                            v.first,
                            v.last,
                            export.node,
                            v.checkpoints,
                            kids.join(" or ")
                        );
                    }
                    Ok(())
                }
                Err(b) => Err(CliError::Rejected(format!("BROKEN: {b}"))),
            }
        }
        AuditCommand::Verify { api, .. } => {
            let v = called(client(&api)?.audit_verify())?;
            if api.json {
                print_json(&v);
            }
            match (v.verified, v.broken) {
                (Some(x), _) if v.ok => {
                    if !api.json {
                        println!(
                            "intact: entries {}..{}, {} signed checkpoint(s), signed up to entry {}",
                            x.first, x.last, x.checkpoints, x.signed_up_to
                        );
                    }
                    Ok(())
                }
                (_, Some(b)) => Err(CliError::Rejected(format!("BROKEN: audit entry {}: {}", b.seq, b.reason))),
                _ => Err(CliError::Rejected("BROKEN: the node said neither intact nor where".into())),
            }
        }
        AuditCommand::Show { api, range, partner } => {
            let (from, to) = range.parse()?;
            let answer = called(client(&api)?.audit_entries(from, to))?;
            let mut shown = Vec::new();
            for e in answer.entries {
                let event = serde_json::to_value(&e.event).unwrap_or_default();
                if let Some(p) = &partner {
                    if !names(&event, p.as_str()) {
                        continue;
                    }
                }
                shown.push((e, event));
            }
            if api.json {
                let rows: Vec<_> = shown
                    .iter()
                    .map(|(e, ev)| serde_json::json!({"seq": e.seq, "at": crate::delivery::receiver::timestamp_of(e.at), "event": ev}))
                    .collect();
                print_json(&rows);
                return Ok(());
            }
            for (e, event) in &shown {
                let (kind, detail) = match event {
                    serde_json::Value::Object(m) if m.len() == 1 => {
                        let (k, v) = m.iter().next().map(|(k, v)| (k.clone(), v.to_string())).unwrap_or_default();
                        (k, v)
                    }
                    other => (other.as_str().unwrap_or("?").to_owned(), String::new()),
                };
                println!("{:>6}  {}  {:<20} {detail}", e.seq, crate::delivery::receiver::timestamp_of(e.at), kind);
            }
            if answer.more {
                println!("(more entries in this range: narrow it with --from / --to)");
            }
            Ok(())
        }
        AuditCommand::Export { api, range, out } => {
            let (from, to) = range.parse()?;
            let export = called(client(&api)?.audit_export(from, to))?;
            let text = serde_json::to_string_pretty(&export).map_err(|e| CliError::Rejected(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .map_err(|e| CliError::Usage(format!("{}: {e}", out.display())))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| CliError::Usage(e.to_string()))?;
            println!("wrote {} audit entries to {}", export.entries.len(), out.display());
            Ok(())
        }
    }
}

/// Whether a JSON value holds `s` as a string anywhere (an audit event naming a node).
fn names(v: &serde_json::Value, s: &str) -> bool {
    match v {
        serde_json::Value::String(x) => x == s,
        serde_json::Value::Array(a) => a.iter().any(|x| names(x, s)),
        serde_json::Value::Object(m) => m.values().any(|x| names(x, s)),
        _ => false,
    }
}
