//! `liaison peers`: every partner's link as this node sees it.

use clap::Subcommand;

use super::{called, client, print_json, ApiArgs, CliError};
use crate::api::types::PeerView;
use crate::ids::NodeId;

#[derive(Debug, Subcommand)]
pub(super) enum PeersCommand {
    /// Every partner: connection state, last contact, what holds its copies up, certificate
    /// expiry, copies waiting.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One partner in full: address, link, last error in words, its certificate (subject,
    /// serial, expiry), key ids, policy version, key exchange, copies waiting.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The partner.
        node: NodeId,
    },
    /// Enrols a partner now, without a restart (an admin client): its public key file, its
    /// address and the sharing policy agreed with it. The node keeps the files in its partners
    /// directory, so the partner stays enrolled after a restart.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The partner's node id.
        node: NodeId,
        /// Its QUIC address (host:port).
        #[arg(long)]
        addr: String,
        /// Its public key file (NODE.pub.toml, from `liaison keys generate` there).
        #[arg(long)]
        keys: std::path::PathBuf,
        /// The sharing policy agreed with it (TOML). Without one, nothing is sent to it or
        /// accepted from it.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
    },
    /// Takes the keys a partner announced (a key rotation) into the keyring, now (an admin
    /// client); `peers show` lists them first.
    AcceptKeys {
        #[command(flatten)]
        api: ApiArgs,
        /// The partner.
        node: NodeId,
    },
    /// Removes a partner enrolled with `peers add`, now (an admin client). Its connections
    /// close and it can no longer connect; copies queued for it stay on disk and go out if it
    /// is enrolled again. A partner of the configuration file is removed there, then SIGHUP.
    Remove {
        #[command(flatten)]
        api: ApiArgs,
        /// The partner.
        node: NodeId,
    },
}

/// What a change of partners or keys did, one line each (or the API's JSON).
fn print_change(done: &crate::api::types::PeerChange, json: bool) {
    if json {
        print_json(done);
    } else if done.changes.is_empty() {
        println!("nothing changed");
    } else {
        for c in &done.changes {
            println!("{c}");
        }
    }
}

fn ago(t: Option<crate::timestamp::Timestamp>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| t.to_string())
}

pub(super) fn run(cmd: PeersCommand) -> Result<(), CliError> {
    match cmd {
        PeersCommand::Add { api, node, addr, keys, policy } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p).map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))
            };
            let req = crate::api::types::EnrolRequest {
                node,
                addr,
                public_keys: read(&keys)?,
                policy: policy.as_deref().map(read).transpose()?,
            };
            print_change(&called(client(&api)?.enrol(&req))?, api.json);
        }
        PeersCommand::AcceptKeys { api, node } => {
            print_change(&called(client(&api)?.accept_keys(&node))?, api.json);
        }
        PeersCommand::Remove { api, node } => {
            print_change(&called(client(&api)?.unenrol(&node))?, api.json);
        }
        PeersCommand::List { api } => {
            let peers = called(client(&api)?.peers())?;
            if api.json {
                print_json(&peers);
                return Ok(());
            }
            println!(
                "{:<10}  {:<14}  {:<20}  {:>6}  {:>9}  {:<10}  holding up",
                "partner", "state", "last contact", "queued", "in flight", "cert"
            );
            for p in &peers {
                let cert = p.certificate_days_left.map_or_else(|| "-".to_owned(), |d| format!("{d} days"));
                println!(
                    "{:<10}  {:<14}  {:<20}  {:>6}  {:>9}  {:<10}  {}",
                    p.node.as_str(),
                    p.state,
                    ago(p.last_contact),
                    p.queued,
                    p.in_flight,
                    cert,
                    p.reason.as_deref().unwrap_or("-")
                );
            }
        }
        PeersCommand::Show { api, node } => {
            let p: PeerView = called(client(&api)?.peer(&node))?;
            if api.json {
                print_json(&p);
                return Ok(());
            }
            println!("{}  {}", p.node, p.addr);
            println!(
                "  state          {}{}",
                p.state,
                p.connected_since.map(|t| format!(" since {t}")).unwrap_or_default()
            );
            println!("  last contact   {}", ago(p.last_contact));
            println!("  holding up     {}", p.reason.as_deref().unwrap_or("nothing"));
            match (&p.last_error, p.last_error_at) {
                (Some(e), Some(at)) => println!("  last error     {at}: {e}"),
                _ => println!("  last error     none"),
            }
            match &p.certificate {
                Some(c) => {
                    println!("  certificate    {} (issuer {}), serial {}", c.subject, c.issuer, c.serial);
                    let left = p.certificate_days_left.map(|d| format!(", {d} days left")).unwrap_or_default();
                    println!("                 valid {} to {}{left}", c.not_before, c.not_after);
                }
                None => println!("  certificate    not seen yet (seen when this node connects to it)"),
            }
            println!("  signing key    {}", p.signing_kid.as_deref().unwrap_or("NONE in the keyring"));
            println!("  encryption key {}", p.encryption_kid.as_deref().unwrap_or("NONE in the keyring"));
            if p.key_generations.len() > 1 {
                for (i, g) in p.key_generations.iter().enumerate() {
                    println!("  generation {}   {g}", i + 1);
                }
            }
            if let Some(a) = &p.announced {
                let state = if a.accepted { "taken" } else { "WAITING: liaison peers accept-keys" };
                println!("  announced      {} (packet {}): {state}", a.at, a.packet_id);
                for k in &a.keys {
                    println!("                 {k}");
                }
                if let Some(c) = &a.certificate {
                    println!(
                        "                 TLS certificate serial {}, valid {} to {} (from the federation CA, names {})",
                        c.serial, c.not_before, c.not_after, p.node
                    );
                }
                if let Some(why) = &a.certificate_problem {
                    println!("                 TLS certificate NOT ACCEPTABLE: {why}");
                }
            }
            match p.policy {
                Some(h) => {
                    println!("  policy         {}{}", h, p.policy_title.map(|t| format!("  ({t})")).unwrap_or_default())
                }
                None => println!("  policy         NONE: nothing is sent to it or accepted from it"),
            }
            println!("  key exchange   {}", p.key_exchange);
            println!("  waiting        {} queued, {} in flight", p.queued, p.in_flight);
            let [f, u, r] = p.ready_by_lane;
            println!("  ready now      FLASH {f}, URGENT {u}, ROUTINE {r}");
        }
    }
    Ok(())
}
