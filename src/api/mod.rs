//! The local API for officers and case systems: HTTP + JSON on a loopback address, each client
//! with its own bearer token (only its SHA-256 is configured). Anything unauthenticated is
//! refused with 401 before it is read. Every request and answer is a type in [`types`], shared
//! with the client, the CLI and the demo.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | POST | `/v1/packets?to=A,B` | submit a JSON packet (a draft: id, created, due_by, originator node may be left out); 201 [`types::SubmitAnswer`] once on disk |
//! | GET | `/v1/packets/{id}` | per-recipient status, answers awaited ([`types::PacketStatus`]) |
//! | GET | `/v1/packets/{id}/receipts` | each recipient's signed receipt, verified again from the store ([`types::ReceiptView`]) |
//! | POST | `/v1/packets/{id}/consent` | [`types::ConsentRequest`]: a holder may pass a packet this node sent on |
//! | POST | `/v1/policy/check?to=A,B` | dry run of a draft against each recipient's policy ([`types::PolicyCheck`]) |
//! | GET | `/v1/policy/{partner}` | the policy in force with a partner ([`types::PolicyView`]) |
//! | GET | `/v1/deadlines` | open answer deadlines on both sides ([`types::DeadlinesView`]) |
//! | GET | `/v1/outbox` | copies queued, in flight, delivered, rejected, expired, read ([`types::OutboxSummary`]) |
//! | GET | `/v1/inbox?unread=1&flash=1&partner=&case=&type=&overdue=1&q=&limit=&offset=` | packets received, with their case, summary and markings ([`types::InboxItem`]); system packets only with `?system=1` |
//! | GET | `/v1/sent?limit=&offset=` | packets officers sent, newest first, with each recipient's policy decision ([`types::SentList`]) |
//! | GET | `/v1/sent/{id}` | one: decisions (redactions), delivery, receipts, reads, deadlines, the packet as sent ([`types::SentView`]) |
//! | GET | `/v1/inbox/{id}` | one received packet, verified again from the stored evidence ([`types::Shown`]) |
//! | POST | `/v1/inbox/{id}/ack` | [`types::AckRequest`]: acknowledge it; a signed ReadAck goes to the originator |
//! | POST | `/v1/inbox/{id}/forward` | [`types::ForwardRequest`]: pass it on to further partners |
//! | GET | `/v1/audit/verify` | verify the audit trail ([`types::AuditVerify`]) |
//! | GET | `/v1/health` | the store's condition: disk space, a stuck or failing disk ([`crate::store::Health`]) |
//! | GET | `/v1/audit/export?from=T&to=T` | an offline-verifiable excerpt ([`crate::audit::Export`]); recorded in the trail |
//! | GET | `/v1/audit/entries?from=T&to=T` | the entries of a range, decoded, at most 10,000 ([`types::AuditEntries`]); a read, recorded nowhere |
//! | GET | `/v1/peers`, `/v1/peers/{node}` | each partner's link, last error in words, certificate, keys, policy, copies waiting ([`types::PeerView`]) |
//! | POST | `/v1/peers` | admin clients: [`types::EnrolRequest`]: enrol a partner now, its files kept in the partners directory; 201 [`types::PeerChange`] |
//! | POST | `/v1/peers/{node}/keys/accept` | admin clients: take the keys the partner announced into the keyring ([`types::PeerChange`]) |
//! | DELETE | `/v1/peers/{node}` | admin clients: remove a partner enrolled through the API, now ([`types::PeerChange`]); its queued copies stay on disk |
//! | GET | `/v1/users` | admin clients: every officer's account ([`crate::accounts::Account`]) |
//! | POST | `/v1/users` | admin clients: [`crate::accounts::NewAccount`]; 201 [`crate::accounts::Credentials`], shown once |
//! | POST | `/v1/users/{name}/disable`, `/enable` | admin clients: the account can (not) sign in ([`crate::accounts::Account`]) |
//! | POST | `/v1/users/{name}/certificates` | admin clients: [`types::CertificateChange`]: a smart-card certificate (fingerprint) added or removed |
//! | POST | `/v1/users/{name}/reset` | admin clients: [`types::ResetRequest`]: a new password and TOTP secret, unlocked ([`crate::accounts::Credentials`]) |
//! | GET | `/metrics` | Prometheus text ([`crate::metrics`]) |
//! | GET | `/healthz`, `/readyz` | probes, without a token: `ok`; `ready` or 503 saying why not |
//!
//! A received packet is identified by its id and its sender: where two partners used one id (a
//! collision, or one squatting the other's id; both packets are kept and listed with
//! `also_from`), the `/v1/inbox/{id}...` routes take `?from=NODE`, and answer 409 naming the
//! senders without it.
//!
//! Errors are [`types::ErrorBody`] `{"error": "...", "field": "..."}`: 400 for a bad packet or
//! request body (the field named), 403 when policy refused every recipient (each named) or the
//! client is not an admin client for an admin route, 401 unauthenticated, 404 unknown id, 409 for an ambiguous id or a repeated acknowledgement, 422
//! for a packet that cannot go where asked, 507 when the node's disk is full (nothing was stored;
//! submit again once space is freed: the node resumes by itself), 503 when the store cannot take
//! it for another reason (nothing was accepted).

pub mod types;

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tracing::info;

use crate::config::ApiClient;
use crate::deadlines::Role;
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::node::{Node, NodeError};
use crate::packet::{Checked, Packet, PacketError};
use crate::policy::{Decision, Direction};
use crate::timestamp::Timestamp;
use types::{
    AckAnswer, AckRequest, AuditVerify, ConsentRequest, DeadlineView, DeadlinesView, DryRun, DryRunDecision, ErrorBody,
    ForwardRequest, InboxItem, PolicyCheck, PolicyView, Shown, SubmitAnswer,
};

/// Largest request body accepted.
const MAX_BODY: usize = crate::packet::MAX_PACKET_BYTES;

#[derive(Clone)]
struct Api {
    node: Node,
    clients: Arc<Vec<ApiClient>>,
}

/// The API's routes over a running node.
pub fn router(node: Node, clients: Vec<ApiClient>) -> Router {
    let api = Api { node, clients: Arc::new(clients) };
    Router::new()
        .route("/v1/packets", post(submit))
        .route("/v1/packets/{id}", get(status))
        .route("/v1/packets/{id}/receipts", get(receipts))
        .route("/v1/packets/{id}/consent", post(consent))
        .route("/v1/inbox/{id}/forward", post(forward))
        .route("/v1/policy/check", post(policy_check))
        .route("/v1/deadlines", get(deadlines))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/audit/entries", get(audit_entries))
        .route("/v1/policy/{partner}", get(policy_show))
        .route("/v1/outbox", get(outbox_summary))
        .route("/v1/peers", get(peers).post(enrol))
        .route("/v1/peers/{node}", get(peer).delete(unenrol))
        .route("/v1/peers/{node}/keys/accept", post(accept_keys))
        .route("/v1/users", get(users).post(user_add))
        .route("/v1/users/{name}/disable", post(user_disable))
        .route("/v1/users/{name}/enable", post(user_enable))
        .route("/v1/users/{name}/reset", post(user_reset))
        .route("/v1/users/{name}/certificates", post(user_certificate))
        .route("/v1/health", get(health))
        .route("/v1/inbox", get(inbox))
        .route("/v1/sent", get(sent_list))
        .route("/v1/sent/{id}", get(sent_one))
        .route("/v1/inbox/{id}", get(show))
        .route("/v1/inbox/{id}/ack", post(ack))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        // Probes, without a token: they say "ok" or why not, nothing of the node's content.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

struct ApiError(StatusCode, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1, field: self.2, denied: Vec::new() })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            // 507: the disk is full, nothing was stored; the client may submit again later.
            NodeError::Store(crate::store::StoreError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            NodeError::Store(_) | NodeError::Pool(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::UnknownPacket(_) => StatusCode::NOT_FOUND,
            NodeError::Ambiguous { .. }
            | NodeError::AckRefused(_)
            | NodeError::NotDelivered { .. }
            | NodeError::IdInUse(_) => StatusCode::CONFLICT,
            NodeError::NotAPartner(_) | NodeError::NotARecipient { .. } | NodeError::Seal(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            NodeError::PartnerChange(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string(), None)
    }
}

fn bad_packet(e: PacketError) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string(), e.field().map(str::to_owned))
}

/// The authenticated API client's name (from the config), for the audit trail, whether it
/// is an admin client, and whether it names the officers it acts for.
#[derive(Clone)]
struct Client(String, bool, bool);

impl Client {
    /// The officer a request acts for. A case system that signs its own users in and names them
    /// (`names_officers = true`) must name one; any other client acts under its own name, and a
    /// request naming someone else is refused (403): people sign in to the web workspace as
    /// themselves, nobody types another's name.
    fn officer(&self, named: Option<OfficerId>) -> Result<OfficerId, ApiError> {
        let own = || {
            self.0.parse::<OfficerId>().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))
        };
        match (self.2, named) {
            (true, Some(o)) => Ok(o),
            (true, None) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("API client {} names the officers it acts for: name one (officer)", self.0),
                Some("officer".into()),
            )),
            (false, None) => own(),
            (false, Some(o)) if o.as_str() == self.0 => own(),
            (false, Some(o)) => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "API client {} acts under its own name and cannot act for {o}: officers sign in to the web workspace as themselves (a case system that signs its users in may name them: names_officers = true in [api] clients)",
                    self.0
                ),
                Some("officer".into()),
            )),
        }
    }

    /// Refuses (403) a client that is not an admin client.
    fn admin(&self) -> Result<(), ApiError> {
        if self.1 {
            return Ok(());
        }
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("API client {} is not an admin client (admin = true in [api] clients)", self.0),
            None,
        ))
    }
}

async fn authenticate(State(api): State<Api>, headers: HeaderMap, mut req: Request, next: Next) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let client = token.and_then(|t| {
        let d = Digest::of(t.as_bytes());
        // Compare against every client, in constant time each, without stopping early.
        api.clients.iter().fold(None, |found, c| if c.token_sha256.ct_eq(&d) { Some(c) } else { found })
    });
    match client {
        Some(c) => {
            tracing::debug!(client = %c.name, method = %req.method(), path = %req.uri().path(), "api request");
            req.extensions_mut().insert(Client(c.name.clone(), c.admin, c.names_officers));
            next.run(req).await
        }
        None => {
            // Anyone on the machine can cause this: logged within the budget for
            // unauthenticated events, never one line per request without end.
            crate::limits::log_refusal(
                "api request refused: no valid bearer token",
                &format!("{} {}", req.method(), req.uri().path()),
            );
            ApiError(StatusCode::UNAUTHORIZED, "a valid bearer token is required".into(), None).into_response()
        }
    }
}

#[derive(Deserialize)]
struct SubmitQuery {
    to: Option<String>,
}

/// A packet draft from an API body: the originator node defaults to this node, `?to=` sets the
/// recipients. Checked here, once: the submit does not check it again.
fn draft_packet(api: &Api, client: &Client, q: &SubmitQuery, body: &str) -> Result<Checked, ApiError> {
    let mut v: Value = serde_json::from_str(body)
        .map_err(|e| bad_packet(PacketError::Json { field: String::new(), reason: e.to_string() }))?;
    if let Some(env) = v.get_mut("envelope").and_then(Value::as_object_mut) {
        if let Some(o) = env.get_mut("originator").and_then(Value::as_object_mut) {
            o.entry("node").or_insert(api.node.id().to_string().into());
            // The officer: the one a case system names, or this client itself.
            let named = match o.get("officer") {
                Some(Value::String(s)) => Some(s.parse::<OfficerId>().map_err(|e| {
                    ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("envelope.originator.officer".into()))
                })?),
                _ => None,
            };
            let officer = client
                .officer(named)
                .map_err(|e| ApiError(e.0, e.1, e.2.map(|_| "envelope.originator.officer".to_owned())))?;
            o.insert("officer".into(), officer.as_str().into());
        }
        if let Some(to) = &q.to {
            let list: Vec<Value> = to.split(',').map(|s| Value::String(s.trim().to_owned())).collect();
            env.insert("recipients".into(), Value::Array(list));
        }
    }
    let packet = Packet::draft(&v.to_string(), Timestamp::now(), &mut rand_core::OsRng).map_err(bad_packet)?;
    if &packet.envelope.originator.node != api.node.id() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("this node is {}; it cannot send as {}", api.node.id(), packet.envelope.originator.node),
            Some("envelope.originator.node".into()),
        ));
    }
    Ok(packet)
}

/// [`draft_packet`]; a draft of megabytes (base64 attachments) takes milliseconds to parse and
/// check, so it runs on the node's bulk pool, below the threads a FLASH alert needs. Its priority
/// is not known before it is parsed: large drafts take the URGENT line (ahead of ROUTINE
/// sealing).
async fn parse_draft(api: &Api, client: &Client, q: SubmitQuery, body: String) -> Result<Checked, ApiError> {
    if body.len() < crate::node::LARGE {
        return draft_packet(api, client, &q, &body);
    }
    let (api, client) = (api.clone(), client.clone());
    crate::node::run_bulk_bounded(crate::markings::Priority::Urgent, move || draft_packet(&api, &client, &q, &body))
        .await
        .map_err(|e| ApiError::from(NodeError::from(e)))?
}

async fn submit(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Query(q): Query<SubmitQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let packet = parse_draft(&api, &client, q, body).await?;
    let (id, due_by) = (packet.envelope.id, packet.envelope.due_by);
    let result = api.node.submit_checked(packet).await;
    if result.is_ok() {
        info!(packet_id = %id, "accepted from api");
    }
    submitted(result, due_by)
}

/// The dry run: what each recipient's policy would decide, without sending or counting.
async fn policy_check(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Query(q): Query<SubmitQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let packet = parse_draft(&api, &client, q, body).await?;
    Ok(Json(dry_run(&api.node, &packet)))
}

/// What each recipient's sending policy would do with `packet`: nothing is sent or counted.
pub fn dry_run(node: &Node, packet: &Checked) -> PolicyCheck {
    let mut out = Vec::new();
    for r in &packet.envelope.recipients {
        let mut copy = packet.packet().clone();
        let v = node.policies().dry_run(r, Direction::Send, &mut copy);
        let (decision, redacted, denied) = match v.decision {
            Decision::Allow => (DryRunDecision::Allow, Vec::new(), None),
            Decision::Redact(list) => (DryRunDecision::AllowWithRedactions, list, None),
            Decision::Deny(d) => (DryRunDecision::Deny, Vec::new(), Some(d)),
        };
        out.push(DryRun { recipient: *r, decision, redacted, denied, policy: v.policy });
    }
    PolicyCheck { packet_type: packet.packet_type(), recipients: out }
}

/// Verifies the whole audit trail; the check itself is recorded.
async fn audit_verify(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
) -> Result<impl IntoResponse, ApiError> {
    let result = api.node.slow(Node::audit_verify).await??;
    let body = AuditVerify::of(&result);
    let detail = match &result {
        Ok(v) => format!("intact: entries {}..{}, {} checkpoints", v.first, v.last, v.checkpoints),
        Err(b) => format!("BROKEN: {b}"),
    };
    api.node.audit_admin(crate::audit::AdminAction::AuditVerify, &client.0, detail).await?;
    Ok(Json(body))
}

#[derive(Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A self-contained, offline-verifiable excerpt of the audit trail.
/// The `from` / `to` of an audit query, in ms (the whole trail by default).
fn export_range(q: &ExportQuery) -> Result<(u64, u64), ApiError> {
    let bound = |name: &str, v: &Option<String>, default: u64| -> Result<u64, ApiError> {
        match v {
            None => Ok(default),
            Some(t) => t
                .parse::<Timestamp>()
                .map(crate::delivery::millis)
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{t:?}: {e}"), Some(name.into()))),
        }
    };
    let (from, to) = (bound("from", &q.from, 0)?, bound("to", &q.to, u64::MAX)?);
    if from > to {
        return Err(ApiError(StatusCode::BAD_REQUEST, "from is after to".into(), Some("from".into())));
    }
    Ok((from, to))
}

/// Most entries `GET /v1/audit/entries` returns at once.
const AUDIT_ENTRIES_AT_MOST: usize = 10_000;

/// The entries of a range, decoded: a read (unlike an export, nothing is recorded or signed).
async fn audit_entries(State(api): State<Api>, Query(q): Query<ExportQuery>) -> Result<impl IntoResponse, ApiError> {
    let (from, to) = export_range(&q)?;
    let (entries, more) = api.node.audit_entries(from, to, AUDIT_ENTRIES_AT_MOST).await?;
    Ok(Json(crate::api::types::AuditEntries { entries, more }))
}

async fn audit_export(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Query(q): Query<ExportQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (from, to) = export_range(&q)?;
    let range = format!("from {} to {}", q.from.as_deref().unwrap_or("the start"), q.to.as_deref().unwrap_or("now"));
    api.node.audit_admin(crate::audit::AdminAction::AuditExport, &client.0, range).await?;
    Ok(Json(api.node.audit_export(from, to).await?))
}

/// The effective policy with a partner.
async fn policy_show(State(api): State<Api>, Path(partner): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let node: NodeId = partner
        .parse()
        .map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("partner".into())))?;
    let book = api.node.policies();
    let Some(policy) = book.policy(&node) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no sharing policy with {node}: nothing is sent to or accepted from it"),
            None,
        ));
    };
    Ok(Json(PolicyView::from(policy)))
}

async fn peers(State(api): State<Api>) -> impl IntoResponse {
    Json(api.node.peers())
}

async fn peer(State(api): State<Api>, Path(node): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let node = node_param(&node)?;
    match api.node.peers().into_iter().find(|p| p.node == node) {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("{node} is not a partner of this node"), None)),
    }
}

/// Enrols a partner now (admin clients).
async fn enrol(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    text: String,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let req: types::EnrolRequest = body(&text)?;
    let addr = req.addr.parse().map_err(|e: std::net::AddrParseError| {
        ApiError(StatusCode::BAD_REQUEST, format!("addr {:?}: {e}", req.addr), Some("addr".into()))
    })?;
    let node = req.node;
    let e = crate::node::Enrolment { node, addr, public_keys: req.public_keys, policy: req.policy };
    let changes = api.node.enrol(e, &client.0).await?;
    info!(client = %client.0, %node, "partner enrolled through the API");
    let peer = api.node.peers().into_iter().find(|p| p.node == node);
    Ok((StatusCode::CREATED, Json(types::PeerChange { node, changes, peer })))
}

/// Every officer's account (admin clients).
async fn users(State(api): State<Api>, Extension(client): Extension<Client>) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    Ok(Json(api.node.accounts().list()))
}

impl From<crate::accounts::AccountError> for ApiError {
    fn from(e: crate::accounts::AccountError) -> Self {
        use crate::accounts::AccountError as E;
        let code = match &e {
            E::Unknown(_) => StatusCode::NOT_FOUND,
            E::Exists(_) | E::Full => StatusCode::CONFLICT,
            E::Invalid(_) | E::Password(_) => StatusCode::BAD_REQUEST,
            E::Store(crate::store::StoreError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let field = matches!(e, E::Password(_)).then(|| "password".to_owned());
        ApiError(code, e.to_string(), field)
    }
}

/// Adds an officer's account (admin clients): 201 with its credentials, shown this once.
async fn user_add(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    text: String,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let req: crate::accounts::NewAccount = body(&text)?;
    // An API client acts under its own name: an account under the same name would share it.
    if api.clients.iter().any(|c| c.name == req.name.as_str()) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("{} is the name of an API client of this node: choose another account name", req.name),
            Some("name".into()),
        ));
    }
    let creds = api.node.accounts().add(req, &client.0, crate::node::now_ms()).await?;
    Ok((StatusCode::CREATED, Json(creds)))
}

fn officer_param(name: &str) -> Result<crate::ids::OfficerId, ApiError> {
    name.parse().map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("name".into())))
}

/// Disables an account (admin clients): it cannot sign in, its sessions end.
async fn user_disable(
    api: State<Api>,
    client: Extension<Client>,
    name: Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_disabled(api, client, name, true).await
}

/// Enables a disabled account again (admin clients).
async fn user_enable(
    api: State<Api>,
    client: Extension<Client>,
    name: Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_disabled(api, client, name, false).await
}

async fn set_disabled(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    disabled: bool,
) -> Result<Json<crate::accounts::Account>, ApiError> {
    client.admin()?;
    let name = officer_param(&name)?;
    Ok(Json(api.node.accounts().set_disabled(&name, disabled, &client.0, crate::node::now_ms()).await?))
}

/// Adds a smart-card certificate to an account, or removes one (admin clients).
async fn user_certificate(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    text: String,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let name = officer_param(&name)?;
    let req: types::CertificateChange = body(&text)?;
    Ok(Json(api.node.accounts().set_certificate(&name, req.fingerprint, !req.remove, &client.0).await?))
}

/// Gives an account a new password and TOTP secret and unlocks it (admin clients); the body
/// may name the password (`{"password": "..."}`), else one is made.
async fn user_reset(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    text: String,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let name = officer_param(&name)?;
    let req: types::ResetRequest = if text.trim().is_empty() { types::ResetRequest::default() } else { body(&text)? };
    Ok(Json(api.node.accounts().reset(&name, req.password, &client.0).await?))
}

/// Takes a partner's announced keys into the keyring (admin clients).
async fn accept_keys(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(node): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let node = node_param(&node)?;
    let changes = api.node.accept_keys(&node, &client.0).await?;
    let peer = api.node.peers().into_iter().find(|p| p.node == node);
    Ok(Json(types::PeerChange { node, changes, peer }))
}

/// Removes a partner enrolled through the API (admin clients).
async fn unenrol(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(node): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    client.admin()?;
    let node = node_param(&node)?;
    let changes = api.node.unenrol(&node, &client.0).await?;
    info!(client = %client.0, %node, "partner removed through the API");
    Ok(Json(types::PeerChange { node, changes, peer: None }))
}

/// A node id from the path, or 400 naming it.
fn node_param(s: &str) -> Result<NodeId, ApiError> {
    s.parse().map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("node".into())))
}

fn parse_id(s: &str) -> Result<PacketId, ApiError> {
    s.parse().map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("id".into())))
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(api.node.packet_status(id)?))
}

/// Each recipient's signed receipt for a packet this node sent, verified again from the store
/// (against every generation of the recipient's keys: one rotated since still verifies).
async fn receipts(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(api.node.receipt_views(id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

/// Packets officers sent, newest first.
async fn sent_list(State(api): State<Api>, Query(q): Query<PageQuery>) -> Result<impl IntoResponse, ApiError> {
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100).min(1000));
    let (records, total) = api.node.slow(move |n| n.sent_records(offset, limit)).await??;
    Ok(Json(types::SentList { records, total }))
}

/// A packet officers sent: what it is, each recipient's decision, delivery, receipt and reads,
/// and the packet as sent.
async fn sent_one(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    api.node.sent_view(id, |_| true)?.map(Json).ok_or_else(|| ApiError::from(NodeError::UnknownPacket(id)))
}

async fn health(State(api): State<Api>) -> impl IntoResponse {
    Json(api.node.store_health())
}

/// Prometheus's text format (with the API token: it names partners and their queues).
async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.node.metrics_text())
}

/// Liveness: the process answers.
async fn healthz() -> impl IntoResponse {
    "ok\n"
}

/// Readiness: the node takes work (its disk takes writes, its outbox is loaded), or why not.
async fn readyz(State(api): State<Api>) -> impl IntoResponse {
    match api.node.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn outbox_summary(State(api): State<Api>) -> impl IntoResponse {
    Json(api.node.outbox_summary())
}

/// `GET /v1/inbox` filters (all optional): the web workspace's, for case systems and the CLI.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InboxQuery {
    /// `1`: only packets nobody here acknowledged.
    unread: Option<String>,
    /// `1`: only FLASH.
    flash: Option<String>,
    /// Only from this partner (sender or originator).
    partner: Option<String>,
    /// Only with this case reference.
    case: Option<String>,
    /// Only of this type.
    #[serde(rename = "type")]
    packet_type: Option<String>,
    /// `1`: only requests this node answers late.
    overdue: Option<String>,
    /// Words that must all appear (ids, case, entity names and identifiers, text).
    q: Option<String>,
    /// `1`: every stored packet, system packets (receipts, acknowledgements, consents, key
    /// announcements) included; filters do not apply.
    system: Option<String>,
    /// At most this many, newest first (without it: all, oldest first).
    limit: Option<usize>,
    /// Skip this many (with `limit`).
    offset: Option<usize>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| v == "1" || v == "true")
}

/// Packets received: officers' packets by default (system packets are states of the packets
/// they concern), filtered and searched like the web inbox; `?system=1` lists everything stored.
async fn inbox(State(api): State<Api>, Query(q): Query<InboxQuery>) -> Result<impl IntoResponse, ApiError> {
    let now = crate::node::now_ms();
    let item = |id: PacketId, rec: &crate::store::InboxRecord| {
        let deadline =
            api.node.deadlines_of(id).into_iter().find(|d| d.role == Role::Answer && d.counterpart == rec.sender);
        InboxItem::of(id, rec, deadline.map(|d| DeadlineView::of(&d, now)), api.node.also_from(id, &rec.sender))
    };
    if flag(&q.system) {
        let records = api.node.slow(Node::inbox).await??;
        let rows = api
            .node
            .catalogue(|c| {
                c.rows()
                    .map(|r| ((r.id, r.from), crate::api::types::Listing::from(r)))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .await?;
        let out: Vec<InboxItem> = records
            .iter()
            .map(|(id, rec)| InboxItem { listing: rows.get(&(*id, rec.sender)).cloned(), ..item(*id, rec) })
            .collect();
        return Ok(Json(out));
    }
    let packet_type = match q.packet_type.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(crate::packet::PacketType::ALL.iter().copied().find(|x| x.as_str() == t).ok_or_else(|| {
            ApiError(StatusCode::BAD_REQUEST, format!("type {t:?}: not a packet type"), Some("type".into()))
        })?),
    };
    let find = crate::catalogue::Query {
        unread: flag(&q.unread),
        flash: flag(&q.flash),
        partner: q.partner.as_deref().filter(|p| !p.is_empty()).map(|p| field::<NodeId>("partner", p)).transpose()?,
        case: q.case.clone().filter(|c| !c.trim().is_empty()),
        packet_type,
        only: flag(&q.overdue).then(|| api.node.overdue_answers(now)),
        text: q.q.clone().unwrap_or_default().chars().take(256).collect(),
    };
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(usize::MAX));
    let page = api.node.catalogue(move |c| c.page(&find, |_| true, offset, limit)).await?;
    let mut out = Vec::with_capacity(page.rows.len());
    for r in &page.rows {
        // Deleted by retention since it was listed: left out.
        let Ok(rec) = api.node.received(r.id, Some(&r.from)) else { continue };
        out.push(InboxItem { listing: Some(r.into()), ..item(r.id, &rec) });
    }
    if q.limit.is_none() {
        out.reverse();
    }
    Ok(Json(out))
}

/// Open deadlines on both sides, soonest first: what this node must answer, and what it awaits.
async fn deadlines(State(api): State<Api>) -> Result<impl IntoResponse, ApiError> {
    let now = crate::node::now_ms();
    let list = |role| api.node.open_deadlines(role).iter().map(|d| DeadlineView::of(d, now)).collect::<Vec<_>>();
    Ok(Json(DeadlinesView { answer: list(Role::Answer), awaiting: list(Role::Await) }))
}

/// `?from=NODE`: which sender's packet, where two partners used one id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromQuery {
    from: Option<String>,
}

impl FromQuery {
    fn sender(&self) -> Result<Option<NodeId>, ApiError> {
        self.from.as_deref().map(|f| field::<NodeId>("from", f)).transpose()
    }
}

async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let (packet, rec, signer) = api.node.show(id, q.sender()?.as_ref())?;
    Ok(Json(Shown {
        packet,
        signer: Some(signer.to_string()),
        from: rec.sender,
        received_at: crate::delivery::receiver::timestamp_of(rec.received_at),
        sealed_digest: rec.sealed_digest,
        read_by: rec.reads.first().map(|(o, _)| o.clone()),
        reads: types::ReadBy::list(&rec.reads),
        also_from: api.node.also_from(id, &rec.sender),
    }))
}

fn field<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| ApiError(StatusCode::BAD_REQUEST, format!("{v:?}: {e}"), Some(name.into())))
}

/// A submit-like answer: 201 with what was sent and refused, or 403 (with each refusal) when
/// nothing was sent.
fn submitted(
    result: Result<crate::node::Submitted, NodeError>,
    due_by: Option<Timestamp>,
) -> Result<Response, ApiError> {
    match result {
        Ok(done) => Ok((StatusCode::CREATED, Json(SubmitAnswer::new(done, due_by))).into_response()),
        Err(NodeError::Denied(denied)) => {
            let error = NodeError::Denied(denied.clone()).to_string();
            Ok((StatusCode::FORBIDDEN, Json(ErrorBody { error, field: None, denied })).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// A JSON request body, or 400 naming the field that is wrong.
fn body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        // A missing field is reported at its parent: name the field itself.
        let missing = reason.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(str::to_owned);
        let field = if path == "." { missing } else { Some(path) };
        ApiError(StatusCode::BAD_REQUEST, reason, field)
    })
}

/// Passes a received packet on to further partners.
async fn forward(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let from = q.sender()?;
    let b: ForwardRequest = self::body(&body)?;
    let officer = client.officer(b.officer)?;
    submitted(api.node.forward(id, from.as_ref(), &b.to, officer).await, None)
}

/// Consents that a packet this node sent may be passed on.
async fn consent(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let b: ConsentRequest = self::body(&body)?;
    let officer = client.officer(b.officer)?;
    submitted(api.node.consent(id, &b.holder, b.allowed, b.until, officer).await, None)
}

async fn ack(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let from = q.sender()?;
    let b: AckRequest = if body.trim().is_empty() { AckRequest::default() } else { self::body(&body)? };
    let officer = client.officer(b.officer)?;
    api.node.ack(id, from.as_ref(), officer.clone()).await?;
    Ok(Json(AckAnswer { id, acknowledged: true, officer }))
}
