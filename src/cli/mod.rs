//! The command line: argument parsing and the offline commands (`keys`, `packet`, `demo`).
//!
//! Exit codes: 0 success; 1 the input was read and rejected (invalid packet, bad signature, not
//! for this node...), with the reason on stderr; 64 usage error (bad arguments, or a file named
//! on the command line that cannot be read or holds no usable keys, or a bad configuration);
//! 69 the node or its API is unavailable; 75 the node's disk is full (nothing was stored; try again
//! once space is freed).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod inbox;
mod keys;
mod peers;
mod pki;
mod users;
use audit::{audit, AuditCommand};
use inbox::InboxFilter;
use keys::KeysCommand;
use peers::PeersCommand;
use pki::PkiCommand;
use users::UsersCommand;

use crate::api::types::{
    AckRequest, ConsentRequest, DeliveryState, DryRunDecision, ForwardRequest, ReadBy, SubmitAnswer,
};
use crate::client::{CallError, Client};
use crate::deadlines::Due;
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
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
    #[cfg(feature = "demo")]
    Demo {
        /// Then keep the nodes running with an officer account each in the web workspace
        /// (addresses, passwords and TOTP codes printed) until Enter is pressed.
        #[arg(long)]
        web: bool,
    },
    /// Run a node until SIGINT or SIGTERM; SIGHUP reloads the sharing policies.
    Serve {
        /// The node's configuration file (TOML; LIAISON__SECTION__KEY overrides).
        #[arg(long)]
        config: PathBuf,
    },
    /// Send a JSON packet through the node (a draft: id, created and due_by may be left out).
    Send {
        #[command(flatten)]
        api: ApiArgs,
        /// Recipients, comma separated (replaces the packet's recipients).
        #[arg(long, value_delimiter = ',')]
        to: Vec<NodeId>,
        /// The JSON packet ("-" for stdin).
        file: PathBuf,
    },
    /// Delivery status of a packet this node sent, per recipient, with its answer deadline;
    /// without an id, every open answer deadline (what this node must answer and what it
    /// awaits), overdue and due-soon first.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// The packet id.
        id: Option<PacketId>,
    },
    /// The outbox: copies waiting, in flight, and the outcomes since the node started; then
    /// per partner (as `peers list`).
    Outbox {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Packets received from partners.
    Inbox {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filter: InboxFilter,
        /// Keep watching and print new packets as they arrive (poll every second).
        #[arg(long)]
        watch: bool,
    },
    /// One received packet, verified again from the stored evidence.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The sender, where two partners sent packets with this id (the inbox marks them).
        #[arg(long)]
        from: Option<NodeId>,
        /// The packet id.
        id: PacketId,
    },
    /// Acknowledge a received packet; the originator gets a signed ReadAck naming who (this
    /// client, or the officer a case-system client names). Each acknowledges once.
    Ack {
        #[command(flatten)]
        api: ApiArgs,
        /// The officer, for a case-system client that names the officers it acts for
        /// (`names_officers = true`); any other client acts under its own name (officers sign in
        /// to the web workspace as themselves).
        #[arg(long, env = "LIAISON_OFFICER")]
        officer: Option<OfficerId>,
        /// The sender, where two partners sent packets with this id (the inbox marks them).
        #[arg(long)]
        from: Option<NodeId>,
        /// The packet id.
        id: PacketId,
    },
    /// Pass a received packet on to further partners (with its originator's consent where
    /// needed: H2, or the policy with the originator says so).
    Forward {
        #[command(flatten)]
        api: ApiArgs,
        /// The new recipients, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<NodeId>,
        /// The officer, for a case-system client that names the officers it acts for
        /// (`names_officers = true`); any other client acts under its own name (officers sign in
        /// to the web workspace as themselves).
        #[arg(long, env = "LIAISON_OFFICER")]
        officer: Option<OfficerId>,
        /// The sender, where two partners sent packets with this id (the inbox marks them).
        #[arg(long)]
        from: Option<NodeId>,
        /// The received packet's id.
        id: PacketId,
    },
    /// Consent that a packet this node sent may be passed on by one of its recipients.
    Consent {
        #[command(flatten)]
        api: ApiArgs,
        /// The recipient that holds the packet and may pass it on.
        #[arg(long)]
        holder: NodeId,
        /// The nodes it may be passed on to, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<NodeId>,
        /// Until when: RFC 3339, or relative to now (now+30d, now+12h).
        #[arg(long)]
        until: String,
        /// The officer, for a case-system client that names the officers it acts for
        /// (`names_officers = true`); any other client acts under its own name (officers sign in
        /// to the web workspace as themselves).
        #[arg(long, env = "LIAISON_OFFICER")]
        officer: Option<OfficerId>,
        /// The packet's id.
        id: PacketId,
    },
    /// The partners as this node sees them: link state, last contact, the last error in words,
    /// their certificates, keys and policy, the copies waiting.
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Officers' accounts for the web workspace (an admin client): add, list, disable, enable,
    /// reset.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Sharing policies: dry-run a packet against them, or print one.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail: verify it, or export a range that can be verified offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage node keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a node's configuration and every file it names, offline, as `serve` does before
    /// it starts: every problem at once, then what to act on soon. Exit 1 if the node would not
    /// start.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with packets offline: validate, seal, open, verify.
    #[command(subcommand)]
    Packet(PacketCommand),
    /// The federation CA (init-ca, issue, sign-csr, revoke, crl, list), a node's certificate
    /// request (csr), reading a certificate or CRL (show), the demo material (demo).
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// What the policies would decide for a JSON packet, per recipient (allow, allow with
    /// redactions, or deny naming the rule), without sending anything. Exit 1 if any recipient
    /// would be refused.
    Check {
        #[command(flatten)]
        api: ApiArgs,
        /// Recipients, comma separated (replaces the packet's recipients).
        #[arg(long, value_delimiter = ',')]
        to: Vec<NodeId>,
        /// The JSON packet ("-" for stdin).
        file: PathBuf,
    },
    /// The effective policy with a partner, and its version hash.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The partner node id.
        partner: NodeId,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// The configuration, the keys, the TLS certificate, the CA and the CRLs.
    Check {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The node's local API.
    #[arg(long, env = "LIAISON_API", default_value = "http://127.0.0.1:7481")]
    api: String,
    /// This client's bearer token (required for every command that talks to the node).
    #[arg(long, env = "LIAISON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
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
        /// Check expiry at this time instead of now (RFC 3339, or relative: now+400d), e.g. to
        /// re-open stored evidence.
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
        /// Check expiry of a sealed packet at this time instead of now (RFC 3339, or now±N[smhd]).
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
    /// The node (or its API) is unavailable (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// The node's disk is full: nothing was stored; try again once space is freed. Or (`serve`)
    /// the store stopped completing writes and the node stopped to be started again. Exit 75,
    /// `EX_TEMPFAIL`.
    #[error("{0}")]
    DiskFull(String),
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
            Self::Unavailable(_) => ExitCode::from(69),
            Self::DiskFull(_) => ExitCode::from(75),
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
        #[cfg(feature = "demo")]
        Command::Demo { web } => crate::demo::run(&mut std::io::stdout().lock(), web).map_err(CliError::Rejected),
        Command::Serve { config } => serve(&config),
        Command::Send { api, to, file } => {
            let body =
                String::from_utf8(read_input(&file)?).map_err(|_| CliError::Rejected("input is not UTF-8".into()))?;
            let answer = called(client(&api)?.submit(&body, &to))?;
            if api.json {
                print_json(&answer);
            } else {
                let due = answer.due_by.map(|d| format!(", answer due by {d}")).unwrap_or_default();
                println!("accepted {} for {}{due}", answer.submitted.id, join(&answer.recipients));
                for c in &answer.submitted.sent {
                    for r in &c.redacted {
                        println!("  {}: removed {} ({})", c.recipient, r.path, r.rule);
                    }
                }
            }
            refusals(&answer)
        }
        Command::Status { api, id: None } => {
            let v = called(client(&api)?.deadlines())?;
            if api.json {
                print_json(&v);
                return Ok(());
            }
            for (list, title) in [(&v.answer, "to answer"), (&v.awaiting, "awaiting answers")] {
                println!("{title}: {}", if list.is_empty() { "none".to_owned() } else { list.len().to_string() });
                for d in list {
                    let late =
                        d.missed.map(|m| format!("  LATE: missed {m}, before a delay notice")).unwrap_or_default();
                    println!("  {}  {:<9} due {}  {}{late}", d.request, d.counterpart, d.due_by, due_text(&d.due));
                }
            }
            Ok(())
        }
        Command::Status { api, id: Some(id) } => {
            let v = called(client(&api)?.status(id))?;
            if api.json {
                print_json(&v);
                return Ok(());
            }
            println!("packet {}", v.id);
            for r in &v.recipients {
                let mut line = format!("  {:<10} {:<10}", r.node, r.state.as_str());
                match r.state {
                    DeliveryState::Delivered => {
                        let at = r.delivered_at.map(|t| t.to_string()).unwrap_or_default();
                        let digest = r.digest.map(|d| d.to_string()).unwrap_or_default();
                        line += &format!(" at {at}  {digest}");
                    }
                    DeliveryState::Rejected => line += &format!(" {}", r.reason.as_deref().unwrap_or("")),
                    DeliveryState::Queued | DeliveryState::InFlight => {
                        line += &format!(" after {} attempt(s)", r.attempts);
                        if let Some(why) = &r.reason {
                            line += &format!(": {why}");
                        }
                    }
                    DeliveryState::Expired => {}
                }
                if !r.reads.is_empty() {
                    line += &format!("  read by {}", reads_text(&r.reads));
                }
                println!("{line}");
            }
            for d in &v.deadlines {
                println!("  answer from {} due {}  {}", d.counterpart, d.due_by, due_text(&d.due));
            }
            Ok(())
        }
        Command::Inbox { api, filter, watch } => inbox::inbox(&api, &filter, watch),
        Command::Outbox { api } => {
            let c = client(&api)?;
            let o = called(c.outbox())?;
            if api.json {
                print_json(&o);
                return Ok(());
            }
            let loading = if o.loading { "  (still loading after the start: more may wait)" } else { "" };
            println!("waiting {}  in flight {}{loading}", o.queued, o.in_flight);
            println!(
                "since the start: delivered {}  rejected {}  expired {}  read {}",
                o.delivered, o.rejected, o.expired, o.read
            );
            for p in called(c.peers())? {
                if p.queued + p.in_flight > 0 || p.reason.is_some() {
                    println!(
                        "  {:<10} {} waiting, {} in flight{}",
                        p.node.as_str(),
                        p.queued,
                        p.in_flight,
                        p.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Command::Show { api, from, id } => inbox::show(&api, from.as_ref(), id),
        Command::Ack { api, officer, from, id } => {
            let v = called(client(&api)?.ack(id, from.as_ref(), &AckRequest { officer }))?;
            if api.json {
                print_json(&v);
            } else {
                println!("acknowledged {} as {}; the originator is told", v.id, v.officer);
            }
            Ok(())
        }
        Command::Keys(cmd) => keys::run(cmd),
        Command::Packet(cmd) => packet(cmd),
        Command::Policy(cmd) => policy(cmd),
        Command::Forward { api, to, officer, from, id } => {
            let answer = called(client(&api)?.forward(id, from.as_ref(), &ForwardRequest { to, officer }))?;
            if api.json {
                print_json(&answer);
            } else {
                println!("passed on as {} to {}", answer.submitted.id, join(&answer.recipients));
            }
            refusals(&answer)
        }
        Command::Consent { api, holder, allow, until, officer, id } => {
            let until = when("--until", &until)?;
            let req = ConsentRequest { holder, allowed: allow, until, officer };
            let answer = called(client(&api)?.consent(id, &req))?;
            if api.json {
                print_json(&answer);
            } else {
                println!(
                    "consent {} sent to {}: {id} may go to {} until {until}",
                    answer.submitted.id,
                    req.holder,
                    join(&req.allowed)
                );
            }
            refusals(&answer)
        }
        Command::Audit(cmd) => audit(cmd),
        Command::Pki(cmd) => pki::run(cmd),
        Command::Peers(cmd) => peers::run(cmd),
        Command::Users(cmd) => users::run(cmd),
        Command::Config(ConfigCommand::Check { config }) => config_check(&config),
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

fn serve(config: &Path) -> Result<(), CliError> {
    let settings = crate::config::Settings::load(config).map_err(|e| CliError::Usage(e.to_string()))?;
    init_tracing(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unavailable(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(crate::serve::run(settings, Some(config.to_owned()), crate::serve::signals()));
    // A read stuck on a disk that does not answer must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result.map_err(|e| match e {
        e if e.is_configuration() => CliError::Usage(e.to_string()),
        e @ crate::serve::ServeError::StoreFailed(_) => CliError::DiskFull(e.to_string()),
        e => CliError::Unavailable(e.to_string()),
    })
}

fn init_tracing(s: &crate::config::Settings) -> Result<(), CliError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .map_err(|e| CliError::Usage(format!("log.level {:?}: {e}", s.log_level)))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match s.log_format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| CliError::Usage(format!("logging: {e}")))
}

/// `A at T, B at T2`.
fn reads_text(reads: &[ReadBy]) -> String {
    reads.iter().map(|r| format!("{} at {}", r.officer, r.at)).collect::<Vec<_>>().join(", ")
}

/// The API client for `api`'s address and token.
fn client(api: &ApiArgs) -> Result<Client, CliError> {
    let token = api
        .token
        .as_deref()
        .ok_or_else(|| CliError::Usage("a bearer token is required: --token or LIAISON_TOKEN".into()))?;
    Ok(Client::new(api.api.clone(), token))
}

/// A call's error as the CLI reports it (and its exit code).
fn called<T>(result: Result<T, CallError>) -> Result<T, CliError> {
    result.map_err(|e| match e {
        CallError::Client(e @ crate::client::ClientError::Url(_)) => CliError::Usage(e.to_string()),
        CallError::Client(e) => CliError::Unavailable(e.to_string()),
        CallError::Api { status: 401, body } => {
            CliError::Usage(format!("refused by the node: {}; check --token / LIAISON_TOKEN", body.error))
        }
        CallError::Api { status: 503, body } => {
            CliError::Unavailable(format!("the node cannot take it now: {}", body.error))
        }
        CallError::Api { status: 507, body } => CliError::DiskFull(format!(
            "not stored: the node's disk is full ({}); nothing was sent, submit again once space is freed",
            body.error
        )),
        CallError::Api { body, .. } if !body.denied.is_empty() => CliError::Rejected(refused_text(&body.denied)),
        CallError::Api { status, body } => {
            let field = body.field.map(|f| format!(" (field {f})")).unwrap_or_default();
            CliError::Rejected(format!("rejected ({status}): {}{field}", body.error))
        }
    })
}

/// An API answer as JSON on stdout (`--json`): the document the node sent, field for field.
fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

/// A deadline's state for people: `OVERDUE by 2h10m`, `due soon (1h05m left)`...
fn due_text(due: &Due) -> String {
    let span = |ms: u64| {
        let m = ms / 60_000;
        if m >= 48 * 60 {
            format!("{}d{}h", m / 1440, m % 1440 / 60)
        } else {
            format!("{}h{:02}m", m / 60, m % 60)
        }
    };
    match *due {
        Due::Answered { late: true } => "answered (late)".into(),
        Due::Answered { late: false } => "answered".into(),
        Due::Paused => "paused (clarification requested)".into(),
        Due::Overdue { by } => format!("OVERDUE by {}", span(by)),
        Due::DueSoon { left } => format!("DUE SOON ({} left)", span(left)),
        Due::Open { left } => format!("({} left)", span(left)),
    }
}

/// Recipients refused by policy in a submit-like answer: an error naming each.
fn refusals(answer: &SubmitAnswer) -> Result<(), CliError> {
    if answer.submitted.denied.is_empty() {
        Ok(())
    } else {
        Err(CliError::Rejected(refused_text(&answer.submitted.denied)))
    }
}

fn refused_text(denied: &[crate::api::types::Refused]) -> String {
    let each: Vec<String> =
        denied.iter().map(|d| format!("{}: {}: {}", d.recipient, d.denial.rule, d.denial.reason)).collect();
    format!("refused by policy, nothing sent to: {}", each.join("; "))
}

fn policy(cmd: PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Check { api, to, file } => {
            let body =
                String::from_utf8(read_input(&file)?).map_err(|_| CliError::Rejected("input is not UTF-8".into()))?;
            let v = called(client(&api)?.policy_check(&body, &to))?;
            if api.json {
                print_json(&v);
            }
            let mut denied = Vec::new();
            for r in &v.recipients {
                let hash = r.policy.map_or_else(|| "no policy".to_owned(), |h| h.to_string());
                match (r.decision, &r.denied) {
                    (DryRunDecision::Deny, d) => {
                        let (rule, reason) = d.as_ref().map_or(("?", "?"), |d| (d.rule.as_str(), d.reason.as_str()));
                        let line = format!("{}: deny ({rule}: {reason})", r.recipient);
                        if !api.json {
                            println!("{line}  [policy {hash}]");
                        }
                        denied.push(line);
                    }
                    (DryRunDecision::Allow, _) if !api.json => println!("{}: allow  [policy {hash}]", r.recipient),
                    (DryRunDecision::AllowWithRedactions, _) if !api.json => {
                        println!("{}: allow with redactions  [policy {hash}]", r.recipient);
                        for x in &r.redacted {
                            println!("  removes {} ({})", x.path, x.rule);
                        }
                    }
                    _ => {}
                }
            }
            if denied.is_empty() {
                Ok(())
            } else {
                Err(CliError::Rejected(format!("would be refused: {}", denied.join("; "))))
            }
        }
        PolicyCommand::Show { api, partner } => {
            let v = called(client(&api)?.policy(&partner))?;
            if api.json {
                print_json(&v);
                return Ok(());
            }
            println!("policy with {}  {}", v.partner, v.hash);
            if let Some(t) = &v.title {
                println!("  {t}");
            }
            for (dir, r) in [("send", &v.send), ("receive", &v.receive)] {
                let names = |items: Vec<String>| items.join(", ");
                println!("{dir}:");
                println!("  packet types      {}", names(r.packet_types.iter().map(|t| t.to_string()).collect()));
                println!(
                    "  at most           {} / TLP:{}",
                    crate::policy::marking_name(&r.max_classification),
                    crate::policy::marking_name(&r.max_tlp)
                );
                println!(
                    "  handling codes    {}",
                    names(r.handling_codes.iter().map(crate::policy::marking_name).collect())
                );
                println!(
                    "  requires          grading: {}, legal basis: {}; attachments allowed: {}",
                    r.require_grading, r.require_legal_basis, r.attachments
                );
                println!(
                    "  limits            {} bytes per packet, {} packets per minute",
                    r.max_packet_bytes, r.max_packets_per_minute
                );
                for (kind, red) in &r.redact {
                    let what = match red {
                        crate::policy::Redaction::Entity => "the whole entity".to_owned(),
                        crate::policy::Redaction::Fields(f) => f.iter().cloned().collect::<Vec<_>>().join(", "),
                    };
                    let verb = if dir == "send" { "removed" } else { "refused" };
                    println!("  {kind:<17} {verb}: {what}");
                }
            }
            let onward = &v.onward;
            println!("onward:");
            println!(
                "  from {}       {}; passed-on packets from others accepted: {}",
                v.partner,
                crate::policy::marking_name(&onward.from_partner),
                onward.accept_forwarded
            );
            println!("retention         {} days", v.retention_days);
            println!(
                "announced keys    {}",
                if v.keys.accept_announced {
                    "taken at once"
                } else {
                    "wait for the administrator (liaison peers accept-keys)"
                }
            );
            Ok(())
        }
    }
}

fn config_check(file: &Path) -> Result<(), CliError> {
    let settings = match crate::config::Settings::load(file) {
        Ok(s) => s,
        Err(e) => {
            println!("{e}");
            return Err(CliError::Rejected(format!("{}: the node would not start", file.display())));
        }
    };
    let f = crate::selfcheck::check(&settings, Timestamp::now());
    for p in &f.problems {
        println!("PROBLEM  {p}");
    }
    for w in &f.warnings {
        println!("warning  {w}");
    }
    if !f.ok() {
        return Err(CliError::Rejected(format!(
            "{}: {} problem(s); the node would not start",
            file.display(),
            f.problems.len()
        )));
    }
    println!("{}: {} ok ({} warning(s))", file.display(), settings.node, f.warnings.len());
    Ok(())
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
        Some(s) => when("--at", s),
    }
}

/// A time given on the command line: RFC 3339, `now`, or `now±N[smhd]` (see
/// [`Timestamp::parse_relative`]).
fn when(flag: &str, s: &str) -> Result<Timestamp, CliError> {
    Timestamp::parse_relative(s, Timestamp::now()).map_err(|e| CliError::Usage(format!("{flag}: {e}")))
}

fn join(nodes: &[NodeId]) -> String {
    nodes.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadlines::{Deadline, Role};

    /// What an officer reads for each state of a deadline.
    #[test]
    fn deadlines_read_as_overdue_due_soon_paused_and_answered() {
        let h = 3_600_000;
        let d = Deadline {
            request: crate::ids::PacketId::from_bytes([1; 16]),
            role: Role::Answer,
            counterpart: "IT-DCSA".parse().unwrap(),
            due_by: 100 * h,
            window: 8 * h,
            paused: None,
            answered: None,
            delays: Vec::new(),
            missed: None,
            sender_due_by: None,
        };
        let text = |d: &Deadline, now| due_text(&d.due(now));
        assert_eq!(text(&d, 90 * h), "(10h00m left)");
        assert_eq!(text(&d, 99 * h), "DUE SOON (1h00m left)");
        assert_eq!(text(&d, 102 * h + 10 * 60_000), "OVERDUE by 2h10m");
        assert_eq!(text(&d, 200 * h), "OVERDUE by 4d4h");
        let paused = Deadline { paused: Some((95 * h, d.request)), ..d.clone() };
        assert_eq!(text(&paused, 200 * h), "paused (clarification requested)");
        let late = Deadline { answered: Some((d.request, 101 * h)), ..d.clone() };
        assert_eq!(text(&late, 200 * h), "answered (late)");
        let on_time = Deadline { answered: Some((d.request, 99 * h)), ..d };
        assert_eq!(text(&on_time, 200 * h), "answered");
    }
}
