//! A minimal HTTP/1.1 client for the node's local API (plain HTTP on loopback; no TLS, no
//! redirects, one request per connection). Kept small on purpose: the CLI needs nothing more,
//! and a full HTTP client would add a second TLS stack to the tree.
//!
//! [`Client`] speaks the API in its own types ([`crate::api::types`]): every answer is parsed
//! into the type the server serialised, every error into [`ErrorBody`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::types::{
    AckAnswer, AckRequest, AuditVerify, ConsentRequest, DeadlinesView, ErrorBody, ForwardRequest, InboxItem,
    OutboxSummary, PacketStatus, PolicyCheck, PolicyView, Shown, SubmitAnswer,
};
use crate::audit::Export;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::timestamp::Timestamp;

/// Why a call failed before an HTTP answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API URL is not `http://HOST:PORT`.
    #[error("invalid API URL {0:?}: expected http://HOST:PORT")]
    Url(String),
    /// The node could not be reached.
    #[error("cannot reach the node API at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The OS error.
        reason: String,
    },
    /// The answer was not HTTP or not JSON.
    #[error("unexpected answer from the node API: {0}")]
    Protocol(String),
}

/// Why a typed call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No HTTP answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node answered with an error.
    #[error("{status}: {}", body.error)]
    Api {
        /// The HTTP status.
        status: u16,
        /// What the node said.
        body: ErrorBody,
    },
}

/// The node's API, for one client (its bearer token).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
}

impl Client {
    /// The API at `base` (`http://127.0.0.1:7481`), called with `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self { base: base.into(), token: token.into() }
    }

    /// Submits a packet draft (JSON text), to `to` if given (else the draft's recipients).
    pub fn submit(&self, draft: &str, to: &[NodeId]) -> Result<SubmitAnswer, CallError> {
        self.call("POST", &format!("/v1/packets{}", to_query(to)), Some(draft))
    }

    /// What each recipient's policy would decide for a draft; nothing is sent.
    pub fn policy_check(&self, draft: &str, to: &[NodeId]) -> Result<PolicyCheck, CallError> {
        self.call("POST", &format!("/v1/policy/check{}", to_query(to)), Some(draft))
    }

    /// A packet this node sent, per recipient.
    pub fn status(&self, id: PacketId) -> Result<PacketStatus, CallError> {
        self.call("GET", &format!("/v1/packets/{id}"), None)
    }

    /// Open deadlines on both sides.
    pub fn deadlines(&self) -> Result<DeadlinesView, CallError> {
        self.call("GET", "/v1/deadlines", None)
    }

    /// Copies per state.
    pub fn outbox(&self) -> Result<OutboxSummary, CallError> {
        self.call("GET", "/v1/outbox", None)
    }

    /// Packets received.
    pub fn inbox(&self) -> Result<Vec<InboxItem>, CallError> {
        self.call("GET", "/v1/inbox", None)
    }

    /// Packets received matching a query string (`unread=1&partner=ES-UDYCO&q=ortega`; see
    /// `GET /v1/inbox`).
    pub fn inbox_where(&self, query: &str) -> Result<Vec<InboxItem>, CallError> {
        self.call("GET", &format!("/v1/inbox?{query}"), None)
    }

    /// A packet officers of this node sent: decisions, delivery, receipts, the packet as sent.
    pub fn sent(&self, id: PacketId) -> Result<crate::api::types::SentView, CallError> {
        self.call("GET", &format!("/v1/sent/{id}"), None)
    }

    /// One received packet (`from`: which sender's, where two used one id).
    pub fn show(&self, id: PacketId, from: Option<&NodeId>) -> Result<Shown, CallError> {
        self.call("GET", &format!("/v1/inbox/{id}{}", from_query(from)), None)
    }

    /// An officer acknowledges a received packet.
    pub fn ack(&self, id: PacketId, from: Option<&NodeId>, req: &AckRequest) -> Result<AckAnswer, CallError> {
        self.call_with("POST", &format!("/v1/inbox/{id}/ack{}", from_query(from)), req)
    }

    /// Passes a received packet on.
    pub fn forward(
        &self,
        id: PacketId,
        from: Option<&NodeId>,
        req: &ForwardRequest,
    ) -> Result<SubmitAnswer, CallError> {
        self.call_with("POST", &format!("/v1/inbox/{id}/forward{}", from_query(from)), req)
    }

    /// Consents that a holder pass on a packet this node sent.
    pub fn consent(&self, id: PacketId, req: &ConsentRequest) -> Result<SubmitAnswer, CallError> {
        self.call_with("POST", &format!("/v1/packets/{id}/consent"), req)
    }

    /// The policy in force with `partner`.
    pub fn policy(&self, partner: &NodeId) -> Result<PolicyView, CallError> {
        self.call("GET", &format!("/v1/policy/{partner}"), None)
    }

    /// Every partner's link, keys, policy and waiting copies.
    pub fn peers(&self) -> Result<Vec<crate::api::types::PeerView>, CallError> {
        self.call("GET", "/v1/peers", None)
    }

    /// One partner's.
    pub fn peer(&self, node: &NodeId) -> Result<crate::api::types::PeerView, CallError> {
        self.call("GET", &format!("/v1/peers/{node}"), None)
    }

    /// Enrols a partner now (an admin client).
    pub fn enrol(&self, req: &crate::api::types::EnrolRequest) -> Result<crate::api::types::PeerChange, CallError> {
        self.call_with("POST", "/v1/peers", req)
    }

    /// Takes a partner's announced keys into the keyring (an admin client).
    pub fn accept_keys(&self, node: &NodeId) -> Result<crate::api::types::PeerChange, CallError> {
        self.call("POST", &format!("/v1/peers/{node}/keys/accept"), None)
    }

    /// Removes a partner enrolled through the API (an admin client).
    pub fn unenrol(&self, node: &NodeId) -> Result<crate::api::types::PeerChange, CallError> {
        self.call("DELETE", &format!("/v1/peers/{node}"), None)
    }

    /// Every officer's account (an admin client).
    pub fn users(&self) -> Result<Vec<crate::accounts::Account>, CallError> {
        self.call("GET", "/v1/users", None)
    }

    /// Adds an officer's account (an admin client); its credentials come back once.
    pub fn user_add(&self, req: &crate::accounts::NewAccount) -> Result<crate::accounts::Credentials, CallError> {
        self.call_with("POST", "/v1/users", req)
    }

    /// Disables an account, or enables it again (an admin client).
    pub fn user_disable(&self, name: &OfficerId, disabled: bool) -> Result<crate::accounts::Account, CallError> {
        let verb = if disabled { "disable" } else { "enable" };
        self.call("POST", &format!("/v1/users/{}/{verb}", crate::encoding::percent(name.as_str())), None)
    }

    /// Adds a smart-card certificate to an account, or removes one (an admin client).
    pub fn user_certificate(
        &self,
        name: &OfficerId,
        req: &crate::api::types::CertificateChange,
    ) -> Result<crate::accounts::Account, CallError> {
        self.call_with("POST", &format!("/v1/users/{}/certificates", crate::encoding::percent(name.as_str())), req)
    }

    /// Gives an account a new password and TOTP secret and unlocks it (an admin client).
    pub fn user_reset(
        &self,
        name: &OfficerId,
        req: &crate::api::types::ResetRequest,
    ) -> Result<crate::accounts::Credentials, CallError> {
        self.call_with("POST", &format!("/v1/users/{}/reset", crate::encoding::percent(name.as_str())), req)
    }

    /// Verifies the node's audit trail.
    pub fn audit_verify(&self) -> Result<AuditVerify, CallError> {
        self.call("GET", "/v1/audit/verify", None)
    }

    /// An offline-verifiable excerpt of the audit trail.
    pub fn audit_export(&self, from: Option<Timestamp>, to: Option<Timestamp>) -> Result<Export, CallError> {
        self.call("GET", &format!("/v1/audit/export?{}", range_query(from, to)), None)
    }

    /// The audit entries of a range, decoded (a read: nothing is recorded).
    pub fn audit_entries(
        &self,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<crate::api::types::AuditEntries, CallError> {
        self.call("GET", &format!("/v1/audit/entries?{}", range_query(from, to)), None)
    }

    fn call_with<T: DeserializeOwned>(&self, method: &str, path: &str, body: &impl Serialize) -> Result<T, CallError> {
        let text = serde_json::to_string(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call(method, path, Some(&text))
    }

    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&str>) -> Result<T, CallError> {
        let (status, bytes) = request(&self.base, &self.token, method, path, body)?;
        let parse_error = |e: serde_json::Error| {
            ClientError::Protocol(format!("status {status}, {method} {path}: unexpected answer: {e}"))
        };
        if (200..300).contains(&status) {
            Ok(serde_json::from_slice(&bytes).map_err(parse_error)?)
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                field: None,
                denied: Vec::new(),
            });
            Err(CallError::Api { status, body })
        }
    }
}

/// `?to=A,B`, or nothing.
fn to_query(to: &[NodeId]) -> String {
    if to.is_empty() {
        String::new()
    } else {
        format!("?to={}", to.iter().map(NodeId::as_str).collect::<Vec<_>>().join(","))
    }
}

/// `?from=NODE`, or nothing.
fn from_query(from: Option<&NodeId>) -> String {
    from.map(|f| format!("?from={f}")).unwrap_or_default()
}

/// One call, untyped: the status code and the body as JSON (`Null` if empty). For tools and
/// tests that check the API's wire format itself; everything else uses [`Client`].
pub fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let (status, bytes) = request(base, token, method, path, body)?;
    if bytes.is_empty() {
        return Ok((status, serde_json::Value::Null));
    }
    let json = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("status {status}, body not JSON: {e}")))?;
    Ok((status, json))
}

/// Calls `method path` on the API at `base` (`http://127.0.0.1:7481`) with a bearer token and an
/// optional JSON body. Returns the status code and the body.
fn request(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let host =
        base.strip_prefix("http://").map(|h| h.trim_end_matches('/')).filter(|h| !h.is_empty() && !h.contains('/'));
    let host = host.ok_or_else(|| ClientError::Url(base.to_owned()))?;
    let unreachable = |e: std::io::Error| ClientError::Unreachable { url: base.to_owned(), reason: e.to_string() };
    let mut stream = TcpStream::connect(host).map_err(unreachable)?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(unreachable)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| ClientError::Protocol("no header end".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(head.lines().next().unwrap_or("").to_owned()))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        payload = dechunk(&payload).ok_or_else(|| ClientError::Protocol("bad chunked body".into()))?;
    }
    Ok((status, payload))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// `from=…&to=…` for the times given.
fn range_query(from: Option<Timestamp>, to: Option<Timestamp>) -> String {
    let q: Vec<String> =
        [("from", from), ("to", to)].iter().filter_map(|(k, t)| t.map(|t| format!("{k}={t}"))).collect();
    q.join("&")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk_reassembles() {
        assert_eq!(super::dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(super::dechunk(b"zz\r\n").is_none());
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(super::request("https://x", "t", "GET", "/", None), Err(super::ClientError::Url(_))));
        assert!(matches!(
            super::Client::new("http://127.0.0.1:1", "t").outbox(),
            Err(super::CallError::Client(super::ClientError::Unreachable { .. }))
        ));
    }
}
