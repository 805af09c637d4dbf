//! `liaison keys`: a node's keys made (`generate`) and rotated with overlap (`rotate`).

use std::path::PathBuf;

use clap::Subcommand;

use super::{when, CliError};
use crate::ids::NodeId;
use crate::keys::NodeKeys;
use crate::timestamp::Timestamp;

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Generate a node's Ed25519 signing key and X25519 encryption key.
    Generate {
        /// The node id, e.g. IT-DCSA.
        #[arg(long)]
        node: NodeId,
        /// Directory to write NODE.sign.key, NODE.enc.key (mode 0600) and NODE.pub.toml into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Key rotation with overlap: make the next generation of a node's keys, in force from
    /// --from, and retire the newest one there --overlap-days after. Then SIGHUP the node: it
    /// takes the new keys and announces them to its partners, signed with its key in force.
    Rotate {
        /// The node id.
        #[arg(long)]
        node: NodeId,
        /// The node's key directory (keys.dir).
        #[arg(long)]
        dir: PathBuf,
        /// When the new keys come into force: RFC 3339 or relative (now+1d). Leave the partners
        /// time to take the announcement (those whose policy does not take it at once).
        #[arg(long, default_value = "now+1d")]
        from: String,
        /// How long the old keys stay accepted after that, in days.
        #[arg(long, default_value_t = 30)]
        overlap_days: i64,
    },
}

pub(super) fn run(cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate { node, out } => {
            let keys = NodeKeys::generate(node, &mut rand_core::OsRng);
            let paths = keys.write_to_dir(&out)?;
            let p = keys.public();
            println!("generated keys for {}", p.node);
            println!("  signing key    {}  ({}, secret, mode 0600)", p.signing_kid, paths[0].display());
            println!("  encryption key {}  ({}, secret, mode 0600)", p.encryption_kid, paths[1].display());
            println!("  public keys    {}  (give this file to partner nodes)", paths[2].display());
            Ok(())
        }
        KeysCommand::Rotate { node, dir, from, overlap_days } => {
            let from = when("--from", &from)?;
            if from <= Timestamp::now() {
                return Err(CliError::Usage(
                    "--from: in the future (now+1d: partners take the announcement before the switch)".into(),
                ));
            }
            if !(1..=3650).contains(&overlap_days) {
                return Err(CliError::Usage("--overlap-days: 1 to 3650".into()));
            }
            let (gen, keys) = NodeKeys::rotate(&dir, &node, from, overlap_days * 86_400, &mut rand_core::OsRng)?;
            let p = keys.public();
            println!("generation {gen} of {node}'s keys, in force from {from}");
            println!("  signing key    {}", p.signing_kid);
            println!("  encryption key {}", p.encryption_kid);
            println!("the keys before it are accepted until {}", from.plus_secs(overlap_days * 86_400));
            println!("now send the node SIGHUP: it takes them and announces them to its partners");
            Ok(())
        }
    }
}
