//! Node configuration: a TOML file plus `LIAISON__SECTION__KEY` environment overrides, parsed
//! into raw settings and then validated into [`Settings`] before anything is bound or opened.
//!
//! Every problem is collected and reported at once (the binary exits 64). A missing file is an
//! error, never a silent default. Relative paths are relative to the config file's directory.
//! Every key is documented in `configs/IT-DCSA.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::delivery::RetryPolicy;
use crate::encoding::{unhex, Digest};
use crate::ids::{NodeId, OfficerId};
use crate::policy::Policy;

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {file}:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Each problem, naming the key.
    pub problems: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: RawNode,
    keys: RawKeys,
    tls: RawTls,
    api: RawApi,
    #[serde(default)]
    partners: Vec<RawPartner>,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    transport: crate::transport::Options,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    web: Option<RawWeb>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: String,
    #[serde(default = "d_idle_minutes")]
    idle_minutes: u64,
    #[serde(default = "d_session_hours")]
    session_hours: u64,
    #[serde(default)]
    secure_cookies: bool,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    client_ca: Option<PathBuf>,
}

fn d_idle_minutes() -> u64 {
    15
}

fn d_session_hours() -> u64 {
    12
}

/// The officers' web workspace (`[web]`).
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Where it listens (a loopback address).
    pub listen: SocketAddr,
    /// A session unused this long ends (`idle_minutes`, 15 by default).
    pub idle: std::time::Duration,
    /// A session ends this long after its sign-in, used or not (`session_hours`, 12 by default).
    pub lifetime: std::time::Duration,
    /// Cookies marked `Secure` (named `__Host-...`): behind a TLS-terminating proxy on this
    /// machine (`secure_cookies`, off by default: plain HTTP on loopback).
    pub secure_cookies: bool,
    /// Host names (`host` or `host:port`) the workspace answers to besides its own address and
    /// `localhost`: a proxy's public name (`hosts`). Any other Host is refused (DNS rebinding).
    pub hosts: Vec<String>,
    /// The workspace served over TLS by the node itself (`tls_cert`, `tls_key`; any address),
    /// with officers' smart-card certificates from `client_ca` accepted for sign-in.
    pub tls: Option<WebTls>,
}

/// The workspace's own TLS.
#[derive(Debug, Clone)]
pub struct WebTls {
    /// Its certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
    /// The CA that issues officers' smart-card certificates (PEM): a browser presenting one of
    /// its certificates may sign in with it, if an account holds its fingerprint.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "d_headroom")]
    headroom_mib: u64,
}

fn d_headroom() -> u64 {
    crate::store::space::mib(crate::store::Headroom::DEFAULT.bytes)
}

impl Default for RawStore {
    fn default() -> Self {
        Self { headroom_mib: d_headroom() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "d_partner_memory")]
    partner_memory_mib: u64,
    #[serde(default = "d_frame_stall")]
    frame_stall_secs: u64,
    #[serde(default = "d_connections")]
    connections_per_partner: u64,
}

fn d_partner_memory() -> u64 {
    (crate::limits::Limits::default().partner_memory >> 20) as u64
}
fn d_frame_stall() -> u64 {
    crate::limits::Limits::default().frame_stall.as_secs()
}
fn d_connections() -> u64 {
    crate::limits::Limits::default().connections_per_partner as u64
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            partner_memory_mib: d_partner_memory(),
            frame_stall_secs: d_frame_stall(),
            connections_per_partner: d_connections(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    listen: String,
    data_dir: PathBuf,
    #[serde(default)]
    partners_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    dir: PathBuf,
    keyring: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    crls: Vec<PathBuf>,
    #[serde(default)]
    stale_crl: StaleCrl,
}

/// What the node does with a CRL past its next update (`[tls] stale_crl`).
///
/// Decision: warn by default. A CA that publishes late would otherwise stop every node of the
/// federation at its next start, FLASH alerts included; the warning is logged at start and
/// shown by `liaison config check`. A federation that prefers to stop sets "refuse".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleCrl {
    /// Start, and say so.
    #[default]
    Warn,
    /// Do not start.
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    token_sha256: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    names_officers: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: String,
    addr: String,
    #[serde(default)]
    policy: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    #[serde(default = "d_initial")]
    initial_backoff_ms: u64,
    #[serde(default = "d_max")]
    max_backoff_ms: u64,
    #[serde(default = "d_receipt")]
    receipt_timeout_ms: u64,
}

fn d_initial() -> u64 {
    RetryPolicy::default().initial_backoff
}
fn d_max() -> u64 {
    RetryPolicy::default().max_backoff
}
fn d_receipt() -> u64 {
    RetryPolicy::default().receipt_timeout
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self { initial_backoff_ms: d_initial(), max_backoff_ms: d_max(), receipt_timeout_ms: d_receipt() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "d_format")]
    format: String,
    #[serde(default = "d_level")]
    level: String,
}

fn d_format() -> String {
    "text".into()
}
fn d_level() -> String {
    "info".into()
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: d_format(), level: d_level() }
    }
}

/// A local API client: a name for the logs and the SHA-256 of its bearer token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// Who it is (a case system, an officer's terminal).
    pub name: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub token_sha256: Digest,
    /// Whether it may change the node (enrol and remove partners): `admin = true`.
    pub admin: bool,
    /// Whether it is a case system that signs its own users in and names the officer each
    /// request acts for (`names_officers = true`); any other client acts under its own name.
    pub names_officers: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node.
    pub node: NodeId,
    /// QUIC address.
    pub listen: SocketAddr,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Directory with NODE.sign.key and NODE.enc.key.
    pub keys_dir: PathBuf,
    /// Public key files or directories of known nodes.
    pub keyring: Vec<PathBuf>,
    /// Federation CA certificate(s).
    pub tls_ca: PathBuf,
    /// This node's certificate chain.
    pub tls_cert: PathBuf,
    /// This node's TLS key.
    pub tls_key: PathBuf,
    /// CRLs.
    pub tls_crls: Vec<PathBuf>,
    /// What a CRL past its next update does (`tls.stale_crl`).
    pub tls_stale_crl: StaleCrl,
    /// Local API address (loopback only).
    pub api_listen: SocketAddr,
    /// Local API clients.
    pub api_clients: Vec<ApiClient>,
    /// Partners, where to reach them, and the sharing policy agreed with each: those of the
    /// file's `[[partners]]`, then those enrolled through the API ([`crate::enrolment`]).
    pub partners: Vec<PartnerSettings>,
    /// Where partners enrolled through the API are kept (`[node] partners_dir`, by default
    /// `<data_dir>/partners`); its `*.pub.toml` are part of the keyring.
    pub partners_dir: PathBuf,
    /// Retry spacing.
    pub retry: RetryPolicy,
    /// What each partner may make the node hold or do.
    pub limits: crate::limits::Limits,
    /// How QUIC paces sending under loss and which TLS key exchange it does (`[transport]
    /// congestion`, `key_exchange`).
    pub transport: crate::transport::Options,
    /// Space the store keeps free on its disk (`[store] headroom_mib`).
    pub headroom: crate::store::Headroom,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `liaison=debug`...).
    pub log_level: String,
    /// The officers' web workspace, if `[web]` is configured.
    pub web: Option<WebSettings>,
}

/// One enrolled partner.
#[derive(Debug, Clone)]
pub struct PartnerSettings {
    /// Its node id.
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// The sharing policy with it; `None`: nothing is exchanged (deny by default).
    pub policy: Option<Policy>,
    /// Its partner file, if it was enrolled through the API (else it is in the configuration
    /// file).
    pub enrolled: Option<PathBuf>,
}

impl Settings {
    /// Reads `file` (TOML) with environment overrides and validates it.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let lists = env_lists(|name| std::env::var(name).ok());
        Self::load_with(file, config::Environment::with_prefix("LIAISON").prefix_separator("__").separator("__"), lists)
    }

    #[cfg(test)]
    fn load_with_env(file: &Path, env: config::Environment) -> Result<Self, ConfigError> {
        Self::load_with(file, env, Vec::new())
    }

    /// `lists`: list keys set from the environment ([`env_lists`]), over the file and `env`.
    fn load_with(
        file: &Path,
        env: config::Environment,
        lists: Vec<(&'static str, Vec<String>)>,
    ) -> Result<Self, ConfigError> {
        let fail = |p: String| ConfigError { file: file.to_owned(), problems: vec![p] };
        if !file.is_file() {
            return Err(fail("the file does not exist or is not a regular file".into()));
        }
        // Syntax first, with our own message: the TOML parser's would quote the offending line,
        // and a path that points at the wrong file (a secret one) must not echo its content.
        let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot be read: {e}")))?;
        if let Err(e) = toml::from_str::<toml::Table>(&text) {
            return Err(fail(toml_problem(&e, &text)));
        }
        // Every unknown key and wrong value of the file at once, each with its line (the
        // `config` crate below stops at the first).
        let shape = shape_problems::<Raw>(&text);
        if !shape.is_empty() {
            return Err(ConfigError { file: file.to_owned(), problems: shape });
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml).required(true))
            .add_source(env);
        for (key, values) in lists {
            builder = builder.set_override(key, values).map_err(|e| fail(e.to_string()))?;
        }
        let raw: Raw = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| fail(quoted_values_hidden(&e.to_string())))?;
        let base = file.parent().unwrap_or(Path::new("."));
        validate(raw, base).map_err(|problems| ConfigError {
            file: file.to_owned(),
            problems: problems.into_iter().map(|p| with_line(&text, p)).collect(),
        })
    }
}

/// The problems of the file's shape (unknown keys, values of the wrong type or out of range),
/// all of them: the file is read, the line of each problem found is blanked out and the file
/// read again, up to 32 times. A missing key ends the walk (the environment may set it; the
/// `config` crate's pass says so).
pub(crate) fn shape_problems<T: serde::de::DeserializeOwned>(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut problems = Vec::new();
    // Lines of unknown keys blanked out, with the keys their table expects, not yet used.
    let mut unknown: Vec<(usize, String, String)> = Vec::new();
    // Keys whose line was blanked for a wrong value: missing now, and no misspelling of theirs.
    let mut wrong: Vec<String> = Vec::new();
    for _ in 0..32 {
        let current = lines.join("\n");
        // A blanked line of a value spread over several lines breaks the syntax: stop there.
        if toml::from_str::<toml::Table>(&current).is_err() {
            break;
        }
        let Err(e) = toml::from_str::<T>(&current) else { break };
        let Some(span) = e.span() else { break };
        if let Some(field) = e.message().strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            // A key that is missing because it was misspelt (reported as unknown above): read
            // the misspelt line under the right name, so its value is checked and the walk
            // goes on. Otherwise the walk ends here.
            if wrong.iter().any(|k| k == field) {
                break;
            }
            let wanted = format!("`{field}`");
            let Some(i) = unknown.iter().position(|(_, _, expected)| expected.contains(&wanted)) else { break };
            let (at, original, _) = unknown.remove(i);
            let Some((_, value)) = original.split_once('=') else { break };
            lines[at] = format!("{field} ={value}");
            continue;
        }
        let line = current.as_bytes()[..span.start.min(current.len())].iter().filter(|b| **b == b'\n').count();
        problems.push(toml_problem(&e, &current));
        match lines.get_mut(line) {
            Some(l) if !l.trim_start().starts_with('[') => {
                match e.message().strip_prefix("unknown field").and_then(|m| m.split_once("expected")) {
                    Some((_, expected)) => unknown.push((line, l.clone(), expected.to_owned())),
                    None => wrong.extend(l.split_once('=').map(|(k, _)| k.trim().to_owned())),
                }
                *l = String::new();
            }
            _ => break,
        }
    }
    problems.sort_by_key(|p| {
        p.strip_prefix("line ").and_then(|r| r.split(',').next()).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)
    });
    problems
}

/// `problem`, which starts with the key it is about (`partners[1].addr: ...`), with the line
/// of that key in the TOML `text` when it is there: `line 12: partners[1].addr: ...`.
pub(crate) fn with_line(text: &str, problem: String) -> String {
    let key = problem.split([':', ' ']).next().unwrap_or_default();
    match line_of(text, key) {
        Some(n) => format!("line {n}: {problem}"),
        None => problem,
    }
}

/// The line (from 1) of the key `path` (`node.listen`, `partners[1].addr`) in `text`.
fn line_of(text: &str, path: &str) -> Option<usize> {
    use toml::de::DeValue;
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut at: Option<&DeValue<'_>> = None;
    let mut start = None;
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (seg, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let table = match at {
            None => doc.get_ref(),
            Some(DeValue::Table(t)) => t,
            Some(_) => return None,
        };
        let (k, mut v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        start = Some(k.span().start);
        if let Some(i) = index {
            let DeValue::Array(items) = v.get_ref() else { return None };
            v = items.get(i)?;
            start = Some(v.span().start);
        }
        at = Some(v.get_ref());
    }
    Some(text.as_bytes()[..start?.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1)
}

/// The configuration's list keys, which the environment sets comma separated
/// (`LIAISON__KEYS__KEYRING=a.pub.toml,b.pub.toml`): the `config` crate reads every variable as
/// one string, and its own list parsing would also turn `0123` into the number 123 (a token).
const LIST_KEYS: [&str; 2] = ["keys.keyring", "tls.crls"];

/// The list keys set in the environment (`get` reads a variable), split at commas.
fn env_lists(get: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, Vec<String>)> {
    LIST_KEYS
        .iter()
        .filter_map(|key| {
            let name = format!("LIAISON__{}", key.to_ascii_uppercase().replace('.', "__"));
            let value = get(&name)?;
            let items: Vec<String> =
                value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect();
            // An empty variable (a template whose value was unset) is no setting: it must not
            // empty the file's list (no CRLs would switch revocation checking off).
            (!items.is_empty()).then_some((*key, items))
        })
        .collect()
}

/// A TOML error as "line L, column C: what", without the excerpt of the file the parser's own
/// message carries and without the values it quotes: a path that names the wrong file (say a
/// secret one) must not put that file's content into an error message or a log.
pub fn toml_problem(e: &toml::de::Error, text: &str) -> String {
    let message = quoted_values_hidden(e.message().trim());
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// `message` without the values serde quotes from the file: `invalid type: string "…"`,
/// `invalid value: integer `…``, `unknown variant `…``. Key names (`unknown field`, `missing
/// field`) stay: they are what the reader must fix, and the line and column say where.
fn quoted_values_hidden(message: &str) -> String {
    let mut out = message.to_owned();
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(at) = out.find(lead) {
            let start = at + lead.len();
            let end = out[start..].find(", expected").map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "a value from the file");
        }
    }
    if let Some(at) = out.find("unknown variant `") {
        let start = at + "unknown variant `".len();
        if let Some(len) = out[start..].find('`') {
            out.replace_range(start..start + len, "…");
        }
    }
    out
}

fn validate(raw: Raw, base: &Path) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let rel = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };
    let node: Option<NodeId> = raw.node.id.parse().map_err(|e| problems.push(format!("node.id: {e}"))).ok();
    let listen: Option<SocketAddr> =
        raw.node.listen.parse().map_err(|e| problems.push(format!("node.listen {:?}: {e}", raw.node.listen))).ok();
    let api_listen: Option<SocketAddr> =
        raw.api.listen.parse().map_err(|e| problems.push(format!("api.listen {:?}: {e}", raw.api.listen))).ok();
    if let Some(a) = api_listen {
        if !a.ip().is_loopback() {
            problems.push(format!("api.listen {a}: the local API must listen on a loopback address"));
        }
    }
    let mut must_exist = |key: &str, p: &Path| {
        if !p.exists() {
            problems.push(format!("{key}: {} does not exist", p.display()));
        }
    };
    let keys_dir = rel(&raw.keys.dir);
    must_exist("keys.dir", &keys_dir);
    let mut keyring: Vec<PathBuf> = raw.keys.keyring.iter().map(|p| rel(p)).collect();
    for p in &keyring {
        must_exist("keys.keyring", p);
    }
    let (tls_ca, tls_cert, tls_key) = (rel(&raw.tls.ca), rel(&raw.tls.cert), rel(&raw.tls.key));
    must_exist("tls.ca", &tls_ca);
    must_exist("tls.cert", &tls_cert);
    must_exist("tls.key", &tls_key);
    let tls_crls: Vec<PathBuf> = raw.tls.crls.iter().map(|p| rel(p)).collect();
    for p in &tls_crls {
        must_exist("tls.crls", p);
    }
    if keyring.is_empty() {
        problems.push("keys.keyring: name at least the partners' public key files".into());
    }
    let mut api_clients = Vec::new();
    for (i, c) in raw.api.clients.iter().enumerate() {
        match unhex::<32>(&c.token_sha256) {
            Some(h) if c.name.parse::<OfficerId>().is_ok() => api_clients.push(ApiClient {
                name: c.name.clone(),
                token_sha256: Digest(h),
                admin: c.admin,
                names_officers: c.names_officers,
            }),
            Some(_) => problems.push(format!(
                "api.clients[{i}].name {:?}: 1 to 64 characters, no control characters or surrounding spaces (it is the name the client acts under)",
                c.name
            )),
            None => {
                problems.push(format!("api.clients[{i}].token_sha256: expected 64 hex digits (sha256 of the token)"))
            }
        }
    }
    if api_clients.is_empty() && problems.is_empty() {
        problems.push("api.clients: no client is configured; the local API would refuse everyone".into());
    }
    let mut partners = Vec::new();
    for (i, p) in raw.partners.iter().enumerate() {
        let id = p.id.parse::<NodeId>().map_err(|e| problems.push(format!("partners[{i}].id: {e}"))).ok();
        let addr = p
            .addr
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("partners[{i}].addr {:?}: {e}", p.addr)))
            .ok();
        let policy = match (&p.policy, &id) {
            (Some(file), Some(id)) => {
                Policy::load(&rel(file), Some(id)).map_err(|e| problems.push(format!("partners[{i}].policy: {e}"))).ok()
            }
            _ => None,
        };
        if let (Some(id), Some(addr)) = (id, addr) {
            if Some(&id) == node.as_ref() {
                problems.push(format!("partners[{i}].id: {id} is this node"));
            } else if partners.iter().any(|p: &PartnerSettings| p.id == id) {
                problems.push(format!("partners[{i}].id: {id} is listed twice"));
            } else {
                partners.push(PartnerSettings { id, addr, policy, enrolled: None });
            }
        }
    }
    let data_dir = rel(&raw.node.data_dir);
    let partners_dir = raw.node.partners_dir.as_deref().map_or_else(|| data_dir.join("partners"), rel);
    match crate::enrolment::read_dir(&partners_dir) {
        Err(p) => problems.extend(p.into_iter().map(|p| format!("node.partners_dir: {p}"))),
        Ok(enrolled) => {
            for e in enrolled {
                let file = e.file.display().to_string();
                let policy = e.policy.as_ref().and_then(|p| {
                    Policy::load(p, Some(&e.id)).map_err(|err| problems.push(format!("{file}: policy: {err}"))).ok()
                });
                if Some(&e.id) == node.as_ref() {
                    problems.push(format!("{file}: {} is this node", e.id));
                } else if partners.iter().any(|p| p.id == e.id) {
                    problems.push(format!(
                        "{file}: {} is also among the configuration's [[partners]]; keep one of the two",
                        e.id
                    ));
                } else {
                    partners.push(PartnerSettings { id: e.id, addr: e.addr, policy, enrolled: Some(e.file) });
                }
            }
        }
    }
    if partners_dir.is_dir() {
        keyring.push(partners_dir.clone());
    }
    let d = &raw.delivery;
    if d.initial_backoff_ms == 0 || d.max_backoff_ms < d.initial_backoff_ms {
        problems.push("delivery: need 0 < initial_backoff_ms <= max_backoff_ms".into());
    }
    if d.receipt_timeout_ms < 100 {
        problems.push("delivery.receipt_timeout_ms: at least 100".into());
    }
    let l = &raw.limits;
    let min_mib = crate::limits::Limits::MIN_PARTNER_MEMORY.div_ceil(1 << 20) as u64;
    if !(min_mib..=65_536).contains(&l.partner_memory_mib) {
        problems.push(format!(
            "limits.partner_memory_mib: {min_mib} to 65536 (at least one frame of the largest packet must fit)"
        ));
    }
    if !(1..=3600).contains(&l.frame_stall_secs) {
        problems.push("limits.frame_stall_secs: 1 to 3600".into());
    }
    if !(1..=16).contains(&l.connections_per_partner) {
        problems.push("limits.connections_per_partner: 1 to 16".into());
    }
    let limits = crate::limits::Limits {
        partner_memory: (l.partner_memory_mib.min(65_536) as usize) << 20,
        frame_stall: std::time::Duration::from_secs(l.frame_stall_secs),
        connections_per_partner: l.connections_per_partner as usize,
    };
    if !(4..=1_048_576).contains(&raw.store.headroom_mib) {
        problems.push("store.headroom_mib: 4 to 1048576 (MiB kept free on the data directory's disk)".into());
    }
    let log_format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problems.push(format!("log.format {other:?}: expected \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    let web = raw.web.as_ref().and_then(|w| {
        let listen = w
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("web.listen {:?}: {e}", w.listen)))
            .ok()?;
        let tls = match (&w.tls_cert, &w.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (rel(cert), rel(key));
                for (k, f) in [("web.tls_cert", &cert), ("web.tls_key", &key)] {
                    if !f.exists() {
                        problems.push(format!("{k}: {} does not exist", f.display()));
                    }
                }
                let client_ca = w.client_ca.as_ref().map(|c| rel(c));
                if let Some(c) = client_ca.as_ref().filter(|c| !c.exists()) {
                    problems.push(format!("web.client_ca: {} does not exist", c.display()));
                }
                Some(WebTls { cert, key, client_ca })
            }
            (None, None) => {
                if w.client_ca.is_some() {
                    problems.push("web.client_ca: smart-card sign-in needs the workspace over TLS (web.tls_cert, web.tls_key)".into());
                }
                None
            }
            _ => {
                problems.push("web.tls_cert and web.tls_key: both, or neither".into());
                None
            }
        };
        if !listen.ip().is_loopback() && tls.is_none() {
            // Plain HTTP only on this machine: another address needs TLS.
            problems.push(format!(
                "web.listen {listen}: an address other than loopback needs TLS (web.tls_cert, web.tls_key), or a TLS-terminating proxy on this machine in front of a loopback address"
            ));
            return None;
        }
        if !(1..=24 * 60).contains(&w.idle_minutes) {
            problems.push(format!("web.idle_minutes {}: expected 1 to 1440", w.idle_minutes));
        }
        if !(1..=24).contains(&w.session_hours) {
            problems.push(format!("web.session_hours {}: expected 1 to 24", w.session_hours));
        }
        for (i, h) in w.hosts.iter().enumerate() {
            if h.is_empty() || h.len() > 253 || !h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) {
                problems.push(format!("web.hosts[{i}] {h:?}: a host name, or host:port"));
            }
        }
        Some(WebSettings {
            listen,
            idle: std::time::Duration::from_secs(w.idle_minutes * 60),
            lifetime: std::time::Duration::from_secs(w.session_hours * 3600),
            // Over TLS the cookies are `Secure` (and `__Host-`), whatever the file says.
            secure_cookies: w.secure_cookies || tls.is_some(),
            hosts: w.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            tls,
        })
    });
    match (node, listen, api_listen) {
        (Some(node), Some(listen), Some(api_listen)) if problems.is_empty() => Ok(Settings {
            node,
            listen,
            data_dir,
            partners_dir,
            keys_dir,
            keyring,
            tls_ca,
            tls_cert,
            tls_key,
            tls_crls,
            tls_stale_crl: raw.tls.stale_crl,
            api_listen,
            api_clients,
            partners,
            retry: RetryPolicy {
                initial_backoff: d.initial_backoff_ms,
                max_backoff: d.max_backoff_ms,
                receipt_timeout: d.receipt_timeout_ms,
            },
            limits,
            transport: raw.transport,
            headroom: crate::store::Headroom::mib(raw.store.headroom_mib),
            log_format,
            log_level: raw.log.level,
            web,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests;
