//! `liaison pki`: the federation CA and the node's side of enrolment.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;
use crate::ids::NodeId;
use crate::pki::authority::Which;
use crate::pki::inspect::{Certificate, CrlInfo};
use crate::pki::{Authority, PkiError, Reason};
use crate::timestamp::Timestamp;

#[derive(Debug, Subcommand)]
pub(super) enum PkiCommand {
    /// Make a federation CA in a new directory: ca.crt (give it to every node), ca.key (0600;
    /// keep the directory on the CA's own machine), and the records of what it issues.
    InitCa {
        /// The CA's directory (must not exist, or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its certificate's common name).
        #[arg(long, default_value = "liaison federation CA")]
        name: String,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a node's TLS certificate and a new key for it (the node's DNS name
    /// <node>.node.liaison, client and server authentication). Prefer `csr` + `sign-csr`: then
    /// the key never leaves the node.
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node, e.g. FR-OFAST.
        #[arg(long)]
        node: NodeId,
        /// How long it is valid, in days (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Directory to write NODE.crt and NODE.key (0600) into; an existing key is never
        /// overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// On the node: make its TLS key (NODE.key, 0600) and a certificate request (NODE.csr) to
    /// send to the federation CA.
    Csr {
        /// The node, e.g. FR-OFAST.
        #[arg(long)]
        node: NodeId,
        /// Directory to write NODE.key and NODE.csr into.
        #[arg(long)]
        out: PathBuf,
    },
    /// At the CA: sign a node's certificate request. The request's signature is checked; the
    /// names and key usages are the CA's own, for --node, whatever the request asked.
    SignCsr {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node the certificate is for.
        #[arg(long)]
        node: NodeId,
        /// The request (NODE.csr).
        #[arg(long)]
        csr: PathBuf,
        /// How long it is valid, in days (at most 3650).
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the certificate (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a certificate (by serial, as `pki list` or `openssl x509 -serial` print it), or
    /// every certificate of a node. Then sign a CRL (`pki crl`) and give it to every node.
    Revoke {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The certificate's serial (hex; colons allowed).
        #[arg(long, conflicts_with = "node", required_unless_present = "node")]
        serial: Option<String>,
        /// Every unrevoked certificate of this node.
        #[arg(long)]
        node: Option<NodeId>,
        /// Why.
        #[arg(long, value_enum, default_value_t = Reason::KeyCompromise)]
        reason: Reason,
    },
    /// Sign a CRL of every certificate revoked so far, with its next update; kept in the CA's
    /// directory as crl.pem, and written to --out if given.
    Crl {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// Days until its nextUpdate (nodes warn about, or refuse, a CRL past it).
        #[arg(long, default_value_t = 7)]
        days: i64,
        /// Also write it here (replaced whole if it exists: the file nodes read).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What the CA issued: serial, node, validity, state (valid, expired, revoked).
    List {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// JSON, one object per certificate.
        #[arg(long)]
        json: bool,
    },
    /// What a certificate or CRL file says: names, serial, validity, issuer, fingerprint; a
    /// CRL's next update and what it revokes.
    Show {
        /// A PEM certificate or CRL.
        file: PathBuf,
    },
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

impl From<PkiError> for CliError {
    fn from(e: PkiError) -> Self {
        match e {
            // What was read and refused: a request that does not verify, a serial the CA never
            // issued.
            PkiError::Invalid(_) => Self::Rejected(e.to_string()),
            _ => Self::Usage(e.to_string()),
        }
    }
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub(super) fn run(cmd: PkiCommand) -> Result<(), CliError> {
    let now = Timestamp::now();
    match cmd {
        PkiCommand::InitCa { dir, name, days } => {
            let ca = Authority::init(&dir, &name, days, now)?;
            println!("CA \"{}\" made in {}, valid {days} days", ca.name(), dir.display());
            println!("give every node {}; keep {} on this machine only", dir.join("ca.crt").display(), dir.display());
        }
        PkiCommand::Issue { ca, node, days, out } => {
            let mut ca = Authority::open(&ca)?;
            crate::keys::create_private_dir(&out)?;
            let (key_path, cert_path) = (out.join(format!("{node}.key")), out.join(format!("{node}.crt")));
            for p in [&key_path, &cert_path] {
                if p.exists() {
                    return Err(CliError::Usage(format!("{}: already exists; refusing to overwrite it", p.display())));
                }
            }
            let (issued, cert) = ca.issue(&node, days, now)?;
            crate::keys::write_new(&key_path, cert.key_pem.as_bytes(), 0o600)?;
            crate::keys::write_new(&cert_path, cert.cert_pem.as_bytes(), 0o644)?;
            println!("{}  serial {}  valid until {}", cert_path.display(), issued.serial, issued.not_after);
            println!("{}  (0600)", key_path.display());
        }
        PkiCommand::Csr { node, out } => {
            crate::keys::create_private_dir(&out)?;
            let (key_path, csr_path) = (out.join(format!("{node}.key")), out.join(format!("{node}.csr")));
            if key_path.exists() {
                return Err(CliError::Usage(format!(
                    "{}: already exists; refusing to overwrite a key",
                    key_path.display()
                )));
            }
            let (key_pem, csr_pem) = crate::pki::request(&node)?;
            crate::keys::write_new(&key_path, key_pem.as_bytes(), 0o600)?;
            crate::pki::authority::write_replacing(&csr_path, csr_pem.as_bytes())?;
            println!("{}  (0600: stays on this node)", key_path.display());
            println!("{}  (send it to the federation CA: liaison pki sign-csr --node {node})", csr_path.display());
        }
        PkiCommand::SignCsr { ca, node, csr, days, out } => {
            let text = read(&csr)?;
            if out.exists() {
                return Err(CliError::Usage(format!("{}: already exists; refusing to overwrite it", out.display())));
            }
            let mut ca = Authority::open(&ca)?;
            let (issued, pem) = ca.sign_request(&text, &node, days, now)?;
            crate::keys::write_new(&out, pem.as_bytes(), 0o644)?;
            println!("{}  {node}  serial {}  valid until {}", out.display(), issued.serial, issued.not_after);
        }
        PkiCommand::Revoke { ca, serial, node, reason } => {
            let which = match (serial, node) {
                (Some(s), _) => Which::Serial(s),
                (None, Some(n)) => Which::Node(n),
                (None, None) => return Err(CliError::Usage("--serial or --node".into())),
            };
            let mut ca = Authority::open(&ca)?;
            for i in ca.revoke(&which, reason, now)? {
                println!("revoked {}  {}  ({})", i.serial, i.node, reason.as_str());
            }
            println!("now sign a CRL (liaison pki crl) and give it to every node");
        }
        PkiCommand::Crl { ca, days, out } => {
            let mut ca = Authority::open(&ca)?;
            let pem = ca.crl(days, now)?;
            let revoked = ca.issued().iter().filter(|i| i.revoked.is_some()).count();
            if let Some(out) = &out {
                crate::pki::authority::write_replacing(out, pem.as_bytes())?;
            }
            let next = now.plus_secs(days * 86_400);
            let at =
                out.as_deref().map_or_else(|| "crl.pem in the CA's directory".to_owned(), |p| p.display().to_string());
            println!("{at}: {revoked} revoked, next update {next}");
        }
        PkiCommand::List { ca, json } => {
            let ca = Authority::open(&ca)?;
            if json {
                for i in ca.issued() {
                    let mut v = serde_json::to_value(i).map_err(|e| CliError::Usage(e.to_string()))?;
                    v["state"] = serde_json::to_value(i.state(now)).map_err(|e| CliError::Usage(e.to_string()))?;
                    println!("{v}");
                }
            } else {
                println!("{:<32}  {:<12}  {:<20}  {:<20}  state", "serial", "node", "valid from", "valid until");
                for i in ca.issued() {
                    let mut state = i.state(now).as_str().to_owned();
                    if let Some(r) = &i.revoked {
                        state = format!("{state} {} ({})", r.at, r.reason.as_str());
                    }
                    println!(
                        "{:<32}  {:<12}  {:<20}  {:<20}  {state}",
                        i.serial,
                        i.node.as_str(),
                        i.not_before,
                        i.not_after
                    );
                }
            }
        }
        PkiCommand::Show { file } => {
            let text = read(&file)?;
            if text.contains("-----BEGIN X509 CRL-----") {
                for c in CrlInfo::all_from_pem(&text, &[])? {
                    println!("CRL of {}  number {}", c.issuer, c.number.map_or("-".into(), |n| n.to_string()));
                    let stale = c.next_update.is_some_and(|n| n < now);
                    let next = c.next_update.map_or("none".into(), |n| n.to_string());
                    println!("  signed {}  next update {next}{}", c.this_update, if stale { "  STALE" } else { "" });
                    for s in &c.revoked {
                        println!("  revokes {s}");
                    }
                }
            } else {
                for c in Certificate::all_from_pem(&text)? {
                    let i = &c.info;
                    let days = (i.not_after.unix() - now.unix()) / 86_400;
                    let state = if now > i.not_after {
                        "EXPIRED".to_owned()
                    } else if now < i.not_before {
                        "NOT YET VALID".to_owned()
                    } else {
                        format!("{days} days left")
                    };
                    println!("{}{}", i.subject, if i.is_ca { "  (CA)" } else { "" });
                    println!(
                        "  names     {}",
                        if i.dns_names.is_empty() { "-".into() } else { i.dns_names.join(", ") }
                    );
                    println!("  issuer    {}", i.issuer);
                    println!("  serial    {}", i.serial);
                    println!("  valid     {} to {}  ({state})", i.not_before, i.not_after);
                    println!("  sha256    {}", i.sha256);
                }
            }
        }
        PkiCommand::Demo { out, nodes, days } => {
            let nodes = nodes
                .iter()
                .map(|n| n.parse::<NodeId>().map_err(|e| CliError::Usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            for path in crate::pki::write_demo(&out, &nodes, days)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}
