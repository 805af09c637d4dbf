//! The local API for officers and case systems: HTTP + JSON on a loopback address, each client
//! with its own bearer token (only its SHA-256 is configured). Anything unauthenticated is
//! refused with 401 before it is read.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | POST | `/v1/packets?to=A,B` | submit a JSON packet (a draft: id, created, due_by, originator node may be left out); 201 once on disk |
//! | GET | `/v1/packets/{id}` | per-recipient status |
//! | GET | `/v1/outbox` | how many copies are queued, in flight, delivered, rejected, expired, read |
//! | GET | `/v1/inbox` | packets received |
//! | GET | `/v1/inbox/{id}` | one received packet, verified again from the stored evidence |
//! | POST | `/v1/inbox/{id}/ack` | `{"officer": "..."}`: acknowledge it; a signed ReadAck goes to the originator |
//!
//! A received packet is identified by its id and its sender: where two partners used one id (a
//! collision, or one squatting the other's id; both packets are kept and listed with
//! `also_from`), the `/v1/inbox/{id}...` routes take `?from=NODE`, and answer 409 naming the
//! senders without it.
//!
//! Errors are JSON `{"error": "...", "field": "..."}`: 400 for a bad packet (the field named), 401
//! unauthenticated, 404 unknown id, 409 for an ambiguous id or a repeated acknowledgement, 422
//! for a packet that cannot go where asked, 503 when the store cannot take it (nothing was
//! accepted).

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::info;

use crate::config::ApiClient;
use crate::deadlines::{Deadline, Role};
use crate::delivery::{Entry, EntryState};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::node::{Node, NodeError};
use crate::packet::{Packet, PacketError};
use crate::policy::{Decision, Direction};
use crate::timestamp::Timestamp;

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
        .route("/v1/packets/{id}/consent", post(consent))
        .route("/v1/inbox/{id}/forward", post(forward))
        .route("/v1/policy/check", post(policy_check))
        .route("/v1/deadlines", get(deadlines))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/policy/{partner}", get(policy_show))
        .route("/v1/outbox", get(outbox_summary))
        .route("/v1/inbox", get(inbox))
        .route("/v1/inbox/{id}", get(show))
        .route("/v1/inbox/{id}/ack", post(ack))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

struct ApiError(StatusCode, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.1 });
        if let Some(f) = self.2 {
            body["field"] = f.into();
        }
        (self.0, Json(body)).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::UnknownPacket(_) => StatusCode::NOT_FOUND,
            NodeError::Ambiguous { .. } | NodeError::AckRefused(_) => StatusCode::CONFLICT,
            NodeError::NotAPartner(_) | NodeError::NotARecipient { .. } | NodeError::Seal(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string(), None)
    }
}

fn bad_packet(e: PacketError) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string(), e.field().map(str::to_owned))
}

/// The authenticated API client's name (from the config), for the audit trail.
#[derive(Clone)]
struct Client(String);

async fn authenticate(State(api): State<Api>, headers: HeaderMap, mut req: Request, next: Next) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let client = token.and_then(|t| {
        let d = Digest::of(t.as_bytes());
        // Compare against every client, in constant time each, without stopping early.
        api.clients.iter().fold(None, |found, c| if c.token_sha256.ct_eq(&d) { Some(c.name.clone()) } else { found })
    });
    match client {
        Some(name) => {
            tracing::debug!(client = %name, method = %req.method(), path = %req.uri().path(), "api request");
            req.extensions_mut().insert(Client(name));
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
/// recipients.
fn draft_packet(api: &Api, q: &SubmitQuery, body: &str) -> Result<Packet, ApiError> {
    let mut v: Value = serde_json::from_str(body)
        .map_err(|e| bad_packet(PacketError::Json { field: String::new(), reason: e.to_string() }))?;
    if let Some(env) = v.get_mut("envelope").and_then(Value::as_object_mut) {
        if let Some(o) = env.get_mut("originator").and_then(Value::as_object_mut) {
            o.entry("node").or_insert(api.node.id().to_string().into());
        }
        if let Some(to) = &q.to {
            let list: Vec<Value> = to.split(',').map(|s| Value::String(s.trim().to_owned())).collect();
            env.insert("recipients".into(), Value::Array(list));
        }
    }
    let packet =
        Packet::from_json_draft(&v.to_string(), Timestamp::now(), &mut rand_core::OsRng).map_err(bad_packet)?;
    if &packet.envelope.originator.node != api.node.id() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("this node is {}; it cannot send as {}", api.node.id(), packet.envelope.originator.node),
            Some("envelope.originator.node".into()),
        ));
    }
    Ok(packet)
}

async fn submit(
    State(api): State<Api>,
    Query(q): Query<SubmitQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let packet = draft_packet(&api, &q, &body)?;
    let (code, Json(mut v)) = submitted(api.node.submit(&packet).await)?;
    if code == StatusCode::CREATED {
        info!(packet_id = %packet.envelope.id, "accepted from api");
        v["due_by"] = json!(packet.envelope.due_by);
    }
    Ok((code, Json(v)))
}

/// The dry run: what each recipient's policy would decide, without sending or counting.
async fn policy_check(
    State(api): State<Api>,
    Query(q): Query<SubmitQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let packet = draft_packet(&api, &q, &body)?;
    let mut out = Vec::new();
    for r in &packet.envelope.recipients {
        let mut copy = packet.clone();
        let v = api.node.policies().dry_run(r, Direction::Send, &mut copy);
        let (decision, redacted, denial) = match v.decision {
            Decision::Allow => ("allow", Vec::new(), None),
            Decision::Redact(list) => ("allow_with_redactions", list, None),
            Decision::Deny(d) => ("deny", Vec::new(), Some(d)),
        };
        out.push(
            json!({ "recipient": r, "decision": decision, "redacted": redacted, "denied": denial, "policy": v.policy }),
        );
    }
    Ok(Json(json!({ "packet_type": packet.packet_type().as_str(), "recipients": out })))
}

/// Verifies the whole audit trail; the check itself is recorded.
async fn audit_verify(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
) -> Result<impl IntoResponse, ApiError> {
    let result = api.node.slow(Node::audit_verify).await??;
    let body = match &result {
        Ok(v) => json!({ "ok": true, "verified": v }),
        Err(b) => json!({ "ok": false, "broken": { "seq": b.seq, "reason": b.reason } }),
    };
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
async fn audit_export(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Query(q): Query<ExportQuery>,
) -> Result<impl IntoResponse, ApiError> {
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
    let mut v =
        serde_json::to_value(policy).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    v["hash"] = policy.hash.to_string().into();
    Ok(Json(v))
}

fn parse_id(s: &str) -> Result<PacketId, ApiError> {
    s.parse().map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("id".into())))
}

/// One recipient's status, as the API and the CLI show it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// The recipient.
    pub node: String,
    /// queued, in_flight, delivered, rejected, expired.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the receipt says it was stored.
    pub delivered_at: Option<String>,
    /// The digest the receipt names.
    pub digest: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The first officer who acknowledged it.
    pub read_by: Option<String>,
    /// When they did.
    pub read_at: Option<String>,
    /// Every officer's acknowledgement, in order.
    #[serde(default)]
    pub reads: Vec<ReadBy>,
}

/// One officer's acknowledgement.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadBy {
    /// Who.
    pub officer: String,
    /// When.
    pub at: String,
}

fn reads_json(reads: &[(OfficerId, u64)]) -> Vec<ReadBy> {
    reads.iter().map(|(o, t)| ReadBy { officer: o.to_string(), at: ms_to_text(*t) }).collect()
}

fn ms_to_text(ms: u64) -> String {
    Timestamp::from_unix((ms / 1000) as i64).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn recipient_status(e: &Entry) -> RecipientStatus {
    let (delivered_at, digest, reason) = match &e.state {
        EntryState::Delivered { at, digest } => (Some(ms_to_text(*at)), Some(digest.to_string()), None),
        EntryState::Rejected { code, reason, .. } => (None, None, Some(format!("{code}: {reason}"))),
        _ => (None, None, None),
    };
    RecipientStatus {
        node: e.recipient.to_string(),
        state: e.state.name().into(),
        attempts: e.attempts,
        delivered_at,
        digest,
        reason,
        read_by: e.reads.first().map(|(o, _)| o.to_string()),
        read_at: e.reads.first().map(|(_, t)| ms_to_text(*t)),
        reads: reads_json(&e.reads),
    }
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let entries = api.node.status(id)?;
    let recipients: Vec<RecipientStatus> = entries.iter().map(recipient_status).collect();
    let now = crate::node::now_ms();
    let deadlines: Vec<Value> = api.node.deadlines_of(id).iter().map(|d| deadline_json(d, now)).collect();
    Ok(Json(json!({ "id": id.to_string(), "recipients": recipients, "deadlines": deadlines })))
}

async fn outbox_summary(State(api): State<Api>) -> impl IntoResponse {
    Json(json!(api.node.outbox_summary()))
}

async fn inbox(State(api): State<Api>) -> Result<impl IntoResponse, ApiError> {
    let now = crate::node::now_ms();
    let mut out = Vec::new();
    for (id, rec) in api.node.slow(Node::inbox).await?? {
        let deadline =
            api.node.deadlines_of(id).into_iter().find(|d| d.role == Role::Answer && d.counterpart == rec.sender);
        out.push(json!({
            "id": id.to_string(),
            "from": rec.sender,
            "type": rec.packet_type,
            "priority": rec.priority.as_str(),
            "sender_due_by": rec.due_by,
            "deadline": deadline.map(|d| deadline_json(&d, now)),
            "received_at": ms_to_text(rec.received_at),
            "read_by": rec.reads.first().map(|(o, _)| o.to_string()),
            "reads": reads_json(&rec.reads),
            "also_from": api.node.also_from(id, &rec.sender),
        }));
    }
    Ok(Json(Value::Array(out)))
}

/// A deadline as the API shows it: where it stands now, and what moved it.
pub fn deadline_json(d: &Deadline, now: u64) -> Value {
    json!({
        "request": d.request.to_string(),
        "counterpart": d.counterpart,
        "role": d.role,
        "due_by": ms_to_text(d.due_by),
        "due": d.due(now),
        "paused_by": d.paused.map(|(_, c)| c.to_string()),
        "answered_by": d.answered.map(|(a, _)| a.to_string()),
        "delays": d.delays.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "sender_due_by": d.sender_due_by.map(ms_to_text),
    })
}

/// Open deadlines on both sides, soonest first: what this node must answer, and what it awaits.
async fn deadlines(State(api): State<Api>) -> Result<impl IntoResponse, ApiError> {
    let now = crate::node::now_ms();
    let list = |role| api.node.open_deadlines(role).iter().map(|d| deadline_json(d, now)).collect::<Vec<_>>();
    Ok(Json(json!({ "answer": list(Role::Answer), "await": list(Role::Await) })))
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
    let (packet, rec) = api.node.show(id, q.sender()?.as_ref())?;
    let packet: Value = serde_json::from_str(&packet.to_json()).unwrap_or(Value::Null);
    Ok(Json(json!({
        "packet": packet,
        "from": rec.sender,
        "received_at": ms_to_text(rec.received_at),
        "sealed_digest": rec.sealed_digest.to_string(),
        "read_by": rec.reads.first().map(|(o, _)| o.to_string()),
        "reads": reads_json(&rec.reads),
        "also_from": api.node.also_from(id, &rec.sender),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    officer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardBody {
    to: Vec<String>,
    officer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
    holder: String,
    allowed: Vec<String>,
    until: String,
    officer: String,
}

fn field<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| ApiError(StatusCode::BAD_REQUEST, format!("{v:?}: {e}"), Some(name.into())))
}

/// A submit-like answer: 201 with what was sent and refused, or 403 when nothing was sent.
fn submitted(result: Result<crate::node::Submitted, NodeError>) -> Result<(StatusCode, Json<Value>), ApiError> {
    match result {
        Ok(done) => {
            let recipients: Vec<&NodeId> = done.sent.iter().map(|c| &c.recipient).collect();
            Ok((
                StatusCode::CREATED,
                Json(
                    json!({ "id": done.id.to_string(), "recipients": recipients, "sent": done.sent, "denied": done.denied }),
                ),
            ))
        }
        Err(NodeError::Denied(denied)) => {
            let e = NodeError::Denied(denied.clone());
            Ok((StatusCode::FORBIDDEN, Json(json!({ "error": e.to_string(), "denied": denied }))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Passes a received packet on to further partners.
async fn forward(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let from = q.sender()?;
    let b: ForwardBody =
        serde_json::from_str(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let to = b.to.iter().map(|t| field::<NodeId>("to", t)).collect::<Result<Vec<_>, _>>()?;
    let officer: OfficerId = field("officer", &b.officer)?;
    submitted(api.node.forward(id, from.as_ref(), &to, officer).await)
}

/// Consents that a packet this node sent may be passed on.
async fn consent(State(api): State<Api>, Path(id): Path<String>, body: String) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let b: ConsentBody =
        serde_json::from_str(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let holder: NodeId = field("holder", &b.holder)?;
    let allowed = b.allowed.iter().map(|t| field::<NodeId>("allowed", t)).collect::<Result<Vec<_>, _>>()?;
    let until: Timestamp = field("until", &b.until)?;
    let officer: OfficerId = field("officer", &b.officer)?;
    submitted(api.node.consent(id, &holder, allowed, until, officer).await)
}

async fn ack(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let from = q.sender()?;
    let b: AckBody = serde_json::from_str(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("officer".into())))?;
    let officer: OfficerId = b
        .officer
        .parse()
        .map_err(|e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string(), Some("officer".into())))?;
    api.node.ack(id, from.as_ref(), officer.clone()).await?;
    Ok(Json(json!({ "id": id.to_string(), "acknowledged": true, "officer": officer })))
}
