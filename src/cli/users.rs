//! `liaison users`: officers' accounts for the web workspace (an admin client).

use clap::Subcommand;

use super::{called, client, print_json, ApiArgs, CliError};
use crate::accounts::{Account, Credentials, NewAccount, Role};
use crate::api::types::ResetRequest;
use crate::ids::{NodeId, OfficerId};

#[derive(Debug, Subcommand)]
pub(super) enum UsersCommand {
    /// Adds an officer's account and prints, once, what the officer needs to sign in: the
    /// password (made by the node unless `--password-stdin`) and the TOTP secret for an
    /// authenticator app (also as an otpauth:// URI).
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The officer id the account acts under (a login, a badge number): acknowledgements,
        /// replies, forwards and consents name it.
        name: OfficerId,
        /// The officer's full name, as shown.
        #[arg(long = "display-name")]
        display_name: String,
        /// officer (read, acknowledge, answer, write), supervisor (also consent to onward
        /// transmission, the whole deadlines board), admin (also manage accounts).
        #[arg(long, default_value = "officer")]
        role: Role,
        /// Partners the account may see (repeat, or comma-separated); every partner if none.
        #[arg(long, value_delimiter = ',')]
        partners: Vec<NodeId>,
        /// Case references it may see, or prefixes ending in * (`ES-2026-*`); every case if none.
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        /// Read the first password from standard input (one line) instead of having one made.
        #[arg(long)]
        password_stdin: bool,
        /// The officer's smart-card certificate (PEM, from the officers' CA of `[web]
        /// client_ca`): the account signs in with it over the workspace's TLS. Repeatable.
        #[arg(long)]
        certificate: Vec<std::path::PathBuf>,
    },
    /// Adds a smart-card certificate to an account, or removes one (its sessions then end).
    Certificate {
        #[command(flatten)]
        api: ApiArgs,
        /// The account.
        name: OfficerId,
        /// The certificate (PEM).
        file: std::path::PathBuf,
        /// Remove it instead.
        #[arg(long)]
        remove: bool,
    },
    /// Every account: role, scopes, state (active, locked, disabled), last sign-in.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Disables an account: it cannot sign in, and its open sessions end at their next request.
    Disable {
        #[command(flatten)]
        api: ApiArgs,
        /// The account.
        name: OfficerId,
    },
    /// Enables a disabled account again.
    Enable {
        #[command(flatten)]
        api: ApiArgs,
        /// The account.
        name: OfficerId,
    },
    /// Gives an account a new password and a new TOTP secret, and unlocks it (a lost phone, a
    /// forgotten password, an account locked by failed sign-ins); prints them once.
    Reset {
        #[command(flatten)]
        api: ApiArgs,
        /// The account.
        name: OfficerId,
        /// Read the new password from standard input (one line) instead of having one made.
        #[arg(long)]
        password_stdin: bool,
    },
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        &[Role::Officer, Role::Supervisor, Role::Admin]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Role::Officer => "officer",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }))
    }
}

fn password_from_stdin(wanted: bool) -> Result<Option<String>, CliError> {
    if !wanted {
        return Ok(None);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| CliError::Usage(format!("reading the password: {e}")))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    Ok(Some(pw))
}

/// The SHA-256 fingerprint of the (first) certificate of a PEM file.
fn fingerprint(file: &std::path::Path) -> Result<crate::encoding::Digest, CliError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(&bytes)
        .map_err(|e| CliError::Usage(format!("{}: not a PEM certificate: {e}", file.display())))?;
    Ok(crate::encoding::Digest::of(cert.as_ref()))
}

fn print_credentials(c: &Credentials, json: bool) {
    if json {
        print_json(c);
        return;
    }
    println!("account        {}", c.name);
    match &c.password {
        Some(p) => println!("password       {p}"),
        None => println!("password       (the one given)"),
    }
    println!("TOTP secret    {}", c.totp_secret);
    println!("TOTP URI       {}", c.totp_uri);
    println!("Hand these to the officer in person; they are not shown again (`users reset` makes new ones).");
}

fn state(a: &Account) -> &'static str {
    match (a.disabled_at, a.locked_at) {
        (Some(_), _) => "disabled",
        (None, Some(_)) => "locked",
        (None, None) => "active",
    }
}

fn when(ms: Option<u64>) -> String {
    ms.and_then(|m| crate::timestamp::Timestamp::from_unix((m / 1000) as i64).ok())
        .map_or_else(|| "never".to_owned(), |t| t.to_string())
}

pub(super) fn run(cmd: UsersCommand) -> Result<(), CliError> {
    match cmd {
        UsersCommand::Add { api, name, display_name, role, partners, cases, password_stdin, certificate } => {
            let password = password_from_stdin(password_stdin)?;
            let certificates = certificate.iter().map(|f| fingerprint(f)).collect::<Result<_, _>>()?;
            let req = NewAccount { name, display_name, role, partners, cases, password, certificates };
            print_credentials(&called(client(&api)?.user_add(&req))?, api.json);
        }
        UsersCommand::List { api } => {
            let users = called(client(&api)?.users())?;
            if api.json {
                print_json(&users);
                return Ok(());
            }
            println!(
                "{:<20}  {:<24}  {:<10}  {:<8}  {:<20}  scopes",
                "account", "name", "role", "state", "last sign-in"
            );
            for a in &users {
                let partners = a.partners.partners().map_or_else(
                    || "every partner".to_owned(),
                    |p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                );
                let cases = a.cases.patterns().map_or_else(|| "every case".to_owned(), |c| c.join(","));
                println!(
                    "{:<20}  {:<24}  {:<10}  {:<8}  {:<20}  {partners}; {cases}",
                    a.name.as_str(),
                    a.display_name,
                    a.role.to_string(),
                    state(a),
                    when(a.last_sign_in)
                );
            }
        }
        UsersCommand::Disable { api, name } => {
            let a = called(client(&api)?.user_disable(&name, true))?;
            if api.json {
                print_json(&a);
            } else {
                println!("{} disabled", a.name);
            }
        }
        UsersCommand::Enable { api, name } => {
            let a = called(client(&api)?.user_disable(&name, false))?;
            if api.json {
                print_json(&a);
            } else {
                println!("{} enabled ({})", a.name, state(&a));
            }
        }
        UsersCommand::Certificate { api, name, file, remove } => {
            let req = crate::api::types::CertificateChange { fingerprint: fingerprint(&file)?, remove };
            let a = called(client(&api)?.user_certificate(&name, &req))?;
            if api.json {
                print_json(&a);
            } else {
                println!("{}: {} certificate(s)", a.name, a.certificates.len());
            }
        }
        UsersCommand::Reset { api, name, password_stdin } => {
            let password = password_from_stdin(password_stdin)?;
            print_credentials(&called(client(&api)?.user_reset(&name, &ResetRequest { password }))?, api.json);
        }
    }
    Ok(())
}
