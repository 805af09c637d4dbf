//! The command line: argument parsing and the offline commands (`keys`, `packet`, `demo`).
//!
//! Exit codes: 0 success; 1 the input was read and rejected (invalid packet, bad signature, not
//! for this node...), with the reason on stderr; 64 usage error (bad arguments, or a file named
//! on the command line that cannot be read or holds no usable keys).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::encoding::Digest;
use crate::ids::NodeId;
use crate::keys::{KeyError, Keyring, NodeKeys};
use crate::packet::Packet;
use crate::seal::{verify_signed, SealContext};
use crate::timestamp::Timestamp;

/// Secure cross-border intelligence exchange broker.
#[derive(Debug, Parser)]
#[command(name = "liaison", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local demo federation (IT-DCSA, ES-UDYCO, CO-DIJIN) on embedded demo keys.
    Demo,
    /// Manage node keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Work with packets offline: validate, seal, open, verify.
    #[command(subcommand)]
    Packet(PacketCommand),
    /// Make federation TLS material.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Generate a demo federation: a CA, a certificate per node, a CRL, and the negative cases
    /// the tests use (expired, revoked, foreign CA, a node that is not enrolled). Demo only: the
    /// CA key is written next to the certificates.
    Demo {
        /// Directory to write into (must not exist yet).
        #[arg(long)]
        out: PathBuf,
        /// The nodes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "IT-DCSA,ES-UDYCO,CO-DIJIN")]
        nodes: Vec<String>,
        /// Validity of the CA and node certificates, in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a node's Ed25519 signing key and X25519 encryption key.
    Generate {
        /// The node id, e.g. IT-DCSA.
        #[arg(long)]
        node: String,
        /// Directory to write NODE.sign.key, NODE.enc.key (mode 0600) and NODE.pub.toml into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// Directory holding this node's NODE.sign.key and NODE.enc.key.
    #[arg(long)]
    keys: PathBuf,
    /// Public key files (NODE.pub.toml) or directories of them: the known nodes. Defaults to
    /// the --keys directory.
    #[arg(long)]
    keyring: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PacketCommand {
    /// Check a JSON packet; print its type and id, or what is wrong with it.
    Validate {
        /// The JSON packet ("-" for stdin).
        file: PathBuf,
        /// Accept a draft: fill in a missing id, created and due_by.
        #[arg(long)]
        draft: bool,
    },
    /// Sign a JSON packet and encrypt one copy per recipient.
    Seal {
        #[command(flatten)]
        keys: KeyArgs,
        /// Directory to write ID.RECIPIENT.cose files into.
        #[arg(long)]
        out: PathBuf,
        /// Accept a draft: fill in a missing id, created and due_by.
        #[arg(long)]
        draft: bool,
        /// The JSON packet ("-" for stdin).
        file: PathBuf,
    },
    /// Decrypt and verify a sealed packet addressed to this node; print it as JSON.
    Open {
        #[command(flatten)]
        keys: KeyArgs,
        /// Check expiry at this time (RFC 3339) instead of now, e.g. to re-open stored evidence.
        #[arg(long)]
        at: Option<String>,
        /// Also write the inner signed packet (COSE_Sign1, the evidence) to this file.
        #[arg(long)]
        signed_out: Option<PathBuf>,
        /// The sealed packet ("-" for stdin).
        file: PathBuf,
    },
    /// Verify a signed packet (COSE_Sign1) with public keys only, or a sealed packet with this
    /// node's keys; print who signed what, without the content.
    Verify {
        /// Public key files or directories (the known nodes).
        #[arg(long, required = true)]
        keyring: Vec<PathBuf>,
        /// This node's key directory: needed for a sealed (encrypted) packet.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Check expiry of a sealed packet at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// The signed or sealed packet ("-" for stdin).
        file: PathBuf,
    },
}

/// What went wrong, and which exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line cannot be acted on (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The input was read and rejected (exit 1).
    #[error("{0}")]
    Rejected(String),
}

impl From<KeyError> for CliError {
    fn from(e: KeyError) -> Self {
        Self::Usage(e.to_string())
    }
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(64),
            Self::Rejected(_) => ExitCode::from(1),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(64),
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liaison: {e}");
            e.exit_code()
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Demo => crate::demo::run(&mut std::io::stdout().lock()).map_err(CliError::Rejected),
        Command::Keys(KeysCommand::Generate { node, out }) => {
            let node: NodeId = node.parse().map_err(|e: crate::ids::IdError| CliError::Usage(e.to_string()))?;
            let keys = NodeKeys::generate(node, &mut rand_core::OsRng);
            let paths = keys.write_to_dir(&out)?;
            let p = keys.public();
            println!("generated keys for {}", p.node);
            println!("  signing key    {}  ({}, secret, mode 0600)", p.signing_kid, paths[0].display());
            println!("  encryption key {}  ({}, secret, mode 0600)", p.encryption_kid, paths[1].display());
            println!("  public keys    {}  (give this file to partner nodes)", paths[2].display());
            Ok(())
        }
        Command::Packet(cmd) => packet(cmd),
        Command::Pki(PkiCommand::Demo { out, nodes, days }) => {
            let nodes = nodes
                .iter()
                .map(|n| n.parse::<NodeId>().map_err(|e| CliError::Usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let written = crate::pki::write_demo(&out, &nodes, days).map_err(|e| CliError::Usage(e.to_string()))?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

fn packet(cmd: PacketCommand) -> Result<(), CliError> {
    match cmd {
        PacketCommand::Validate { file, draft } => {
            let p = parse_json(&read_input(&file)?, draft)?;
            let e = &p.envelope;
            let due = e.due_by.map(|d| format!(", due by {d}")).unwrap_or_default();
            println!("valid {} {} from {} to {}{due}", p.packet_type(), e.id, e.originator.node, join(&e.recipients));
            Ok(())
        }
        PacketCommand::Seal { keys, out, draft, file } => {
            let p = parse_json(&read_input(&file)?, draft)?;
            let ctx = context(&keys)?;
            let sealed = ctx.seal(&p, &mut rand_core::OsRng).map_err(|e| CliError::Rejected(e.to_string()))?;
            std::fs::create_dir_all(&out).map_err(|e| CliError::Usage(format!("{}: {e}", out.display())))?;
            for s in sealed {
                let path = out.join(format!("{}.{}.cose", s.route.packet_id, s.route.recipient));
                std::fs::write(&path, &s.bytes).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                println!("{}  {} bytes  for {}", path.display(), s.bytes.len(), s.route.recipient);
            }
            Ok(())
        }
        PacketCommand::Open { keys, at, signed_out, file } => {
            let now = at_or_now(at.as_deref())?;
            let ctx = context(&keys)?;
            let bytes = read_input(&file)?;
            let opened =
                ctx.open(&bytes, now).map_err(|e| CliError::Rejected(format!("rejected ({}): {e}", e.code())))?;
            if let Some(path) = signed_out {
                std::fs::write(&path, &opened.signed.bytes)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            }
            eprintln!(
                "verified: {} from {}, signed by {}, sealed digest {}",
                opened.signed.packet.packet_type(),
                opened.route.sender,
                opened.signed.signer,
                opened.sealed_digest
            );
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", opened.signed.packet.to_json()).map_err(|e| CliError::Usage(e.to_string()))
        }
        PacketCommand::Verify { keyring, keys, at, file } => {
            let bytes = read_input(&file)?;
            let ring = Keyring::load(&keyring)?;
            let signed = if bytes.starts_with(&[0xd2]) {
                // Tag 18: a bare COSE_Sign1.
                verify_signed(&ring, &bytes).map_err(|e| CliError::Rejected(format!("rejected ({}): {e}", e.code())))?
            } else {
                let Some(dir) = keys else {
                    return Err(CliError::Usage(
                        "a sealed packet needs --keys to decrypt; a signed one (COSE_Sign1) does not".into(),
                    ));
                };
                let ctx = SealContext::new(NodeKeys::load_single(&dir)?, ring)?;
                let now = at_or_now(at.as_deref())?;
                ctx.open(&bytes, now).map_err(|e| CliError::Rejected(format!("rejected ({}): {e}", e.code())))?.signed
            };
            let e = &signed.packet.envelope;
            println!("signature valid");
            println!("  signer     {}", signed.signer);
            println!("  packet     {} {}", signed.packet.packet_type(), e.id);
            println!(
                "  originator {} ({})",
                e.originator.node,
                e.originator.officer.as_ref().map_or("system", |o| o.as_str())
            );
            println!("  recipients {}", join(&e.recipients));
            println!("  created    {}  expires {}", e.created, e.expires);
            println!("  signed     {}", Digest::of(&signed.bytes));
            Ok(())
        }
    }
}

fn context(k: &KeyArgs) -> Result<SealContext, CliError> {
    let keys = NodeKeys::load_single(&k.keys)?;
    let paths = if k.keyring.is_empty() { vec![k.keys.clone()] } else { k.keyring.clone() };
    Ok(SealContext::new(keys, Keyring::load(&paths)?)?)
}

fn parse_json(bytes: &[u8], draft: bool) -> Result<Packet, CliError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CliError::Rejected("input is not UTF-8 text".into()))?;
    let parsed = if draft {
        Packet::from_json_draft(text, Timestamp::now(), &mut rand_core::OsRng)
    } else {
        Packet::from_json(text)
    };
    parsed.map_err(|e| CliError::Rejected(format!("invalid packet: {e}")))
}

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    let limit = crate::seal::MAX_SEALED_BYTES as u64;
    let mut buf = Vec::new();
    let res = if path == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
    };
    res.map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > limit {
        return Err(CliError::Rejected(format!("{}: larger than the limit of {limit} bytes", path.display())));
    }
    Ok(buf)
}

fn at_or_now(at: Option<&str>) -> Result<Timestamp, CliError> {
    match at {
        None => Ok(Timestamp::now()),
        Some(s) => s.parse().map_err(|e: crate::timestamp::TimeError| CliError::Usage(format!("--at: {e}"))),
    }
}

fn join(nodes: &[NodeId]) -> String {
    nodes.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
}
