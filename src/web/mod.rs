//! The officers' web workspace, served by the node on a loopback address (`[web] listen`):
//! sign-in with a personal account (password and TOTP, [`crate::accounts`]), the inbox with
//! filters and search ([`crate::catalogue`]), live FLASH and URGENT alerts (server-sent
//! events), the packet view with its markings on top, acknowledgement under the officer's own
//! name.
//!
//! Server-rendered HTML ([`pages`], maud: escaped by construction) and one small script;
//! every answer carries a strict Content-Security-Policy (no inline script or style, nothing
//! from elsewhere, no framing), `no-store`, `nosniff` and `no-referrer`. Every page needs a
//! session ([`session`]); every change (a POST) needs the session's CSRF token as well, and the
//! sign-in form a token of its own (login CSRF). An account sees the partners and cases of its
//! scopes only: anything else is "not found", and the refusal is in the audit trail.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET, POST | `/signin` | the sign-in form; a session cookie once name, password and code are right |
//! | POST | `/signin/certificate` | over the workspace's TLS: sign in with the smart-card certificate the browser presented |
//! | POST | `/signout` | ends the session |
//! | GET | `/inbox?q=&partner=&case=&type=&unread=1&flash=1&overdue=1&page=N` | the inbox, 50 a page, newest first |
//! | GET | `/events` | server-sent events: `packet` for each arrival the account may see |
//! | GET | `/packets/{id}?from=NODE` | a received packet: markings banner, envelope, body, acknowledgements |
//! | POST | `/packets/{id}/ack?from=NODE` | acknowledge it as the signed-in officer (a signed ReadAck goes to the originator) |
//! | GET | `/compose?type=T[&reply_to=ID&from=NODE]` | the form of a packet type (a reply prefilled from the packet it answers) |
//! | POST | `/compose` | send it as the signed-in officer, or the form again with every problem at its field |
//! | POST | `/compose/check` | the dry run of the form as it stands: per recipient allowed / these fields removed / refused by this rule |
//! | POST | `/packets/{id}/forward?from=NODE` | pass it on to partners of the account's scope, as the officer (the onward rules decide) |
//! | POST | `/sent/{id}/consent` | supervisors: the originator's signed consent that a recipient pass it on |
//! | GET | `/deadlines` | to answer and awaiting, overdue and late first (a missed deadline stays late after a delay notice) |
//! | GET | `/sent?page=N`, `/sent/{id}` | packets this node's officers sent: each recipient's policy decision (redactions), delivery, receipt, reads, the answer awaited, the content as sent |
//! | GET | `/assets/app.js`, `/assets/app.css` | the script and the style sheet |

mod compose;
mod deadlines;
pub mod forms;
mod live;
pub mod pages;
mod received;
mod sent;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;
use tracing::warn;

use crate::accounts::Account;
use crate::audit::AccountAction;
use crate::catalogue::{Query as Find, Row};
use crate::config::WebSettings;
use crate::node::Node;
use pages::Frame;
use session::{same_token, Session, Sessions};

/// Rows on an inbox page.
pub const PER_PAGE: usize = 50;
/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const SESSION_COOKIE: &str = "liaison_session";
const SIGNIN_COOKIE: &str = "liaison_signin";

#[derive(Clone)]
struct Web {
    node: Node,
    sessions: Arc<Sessions>,
    /// Cancelled when the node stops: live-alert streams end.
    closing: tokio_util::sync::CancellationToken,
    /// Host headers answered: this address, `localhost` at its port, `[web] hosts`.
    hosts: Arc<Vec<String>>,
    /// `[web] secure_cookies`.
    secure: bool,
    /// Live-alert streams open: per session (token hash), and in all.
    streams: Arc<std::sync::Mutex<std::collections::HashMap<crate::encoding::Digest, usize>>>,
}

/// Live-alert streams a session may hold open (tabs).
pub const STREAMS_PER_SESSION: usize = 4;
/// Live-alert streams open on the node in all.
pub const STREAMS_IN_ALL: usize = 256;
/// Largest compose form (attachments in base64 included).
pub const COMPOSE_BODY: usize = 32 * 1024 * 1024;
/// Highest inbox page number taken (50 a page: 500,000 packets).
pub const MAX_PAGE: usize = 10_000;

/// The workspace's routes over a running node. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: sign-ins are recorded with the
/// address they came from.
pub fn router(node: Node, settings: &WebSettings, closing: tokio_util::sync::CancellationToken) -> Router {
    let port = settings.listen.port();
    let mut hosts = vec![
        settings.listen.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts.extend(settings.hosts.iter().cloned());
    let web = Web {
        node,
        sessions: Arc::new(Sessions::new(settings.idle, settings.lifetime)),
        closing,
        hosts: Arc::new(hosts),
        secure: settings.secure_cookies,
        streams: Arc::default(),
    };
    // The listing is loaded behind the start (every stored packet read back and verified): the
    // first officer to sign in does not wait for it.
    let warm = web.node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let _ = warm.catalogue(|c| c.len()).await;
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/signin", get(signin_form).post(signin))
        .route("/signin/certificate", post(signin_certificate))
        .route("/signout", post(signout))
        .route("/inbox", get(received::inbox))
        .route("/events", get(live::events))
        .route("/packets/{id}", get(received::packet))
        .route("/packets/{id}/ack", post(received::ack))
        .route("/packets/{id}/attachments/{n}", get(received::attachment))
        .route("/packets/{id}/forward", post(received::forward))
        .route("/sent/{id}/consent", post(sent::consent))
        .route(
            "/compose",
            get(compose::form)
                .post(compose::send)
                .layer(axum::extract::DefaultBodyLimit::max(COMPOSE_BODY))
                .route_layer(middleware::from_fn_with_state(web.clone(), signed_in)),
        )
        .route(
            "/compose/check",
            post(compose::check)
                .layer(axum::extract::DefaultBodyLimit::max(COMPOSE_BODY))
                .route_layer(middleware::from_fn_with_state(web.clone(), signed_in)),
        )
        .route("/deadlines", get(deadlines::board))
        .route("/sent", get(sent::list))
        .route("/sent/{id}", get(sent::one))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }),
        )
        .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("assets/app.css")) }))
        .layer(middleware::from_fn_with_state(web.clone(), origin))
        .layer(middleware::from_fn(headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(web)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The security headers of every answer.
async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    res
}

/// Refuses a request whose Host is not this workspace's (a web page elsewhere reaching it
/// through DNS rebinding), and a change sent from another site or another port of this machine
/// (`Sec-Fetch-Site` other than `same-origin`, or an `Origin` that is not this workspace):
/// before any session or form is looked at.
async fn origin(State(web): State<Web>, req: Request, next: Next) -> Response {
    if let Some(refused) = foreign(&web, &req) {
        return refused;
    }
    next.run(req).await
}

fn foreign(web: &Web, req: &Request) -> Option<Response> {
    let header =
        |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let known = |h: &str| web.hosts.iter().any(|x| x == h);
    if !known(&header(header::HOST).unwrap_or_default()) {
        return Some((StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response());
    }
    if req.method() != axum::http::Method::GET {
        // A browser says where a request comes from (`same-origin` for this workspace's own
        // forms, `none` for what the officer typed); with `Referrer-Policy: no-referrer` its
        // `Origin` is "null", so `Origin` is read only where `Sec-Fetch-Site` is absent.
        let elsewhere = match header(header::HeaderName::from_static("sec-fetch-site")) {
            Some(site) => site != "same-origin" && site != "none",
            None => header(header::ORIGIN).is_some_and(|o| {
                let h = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")).unwrap_or(&o);
                o != "null" && !known(h)
            }),
        };
        if elsewhere {
            return Some((StatusCode::FORBIDDEN, "a change from another site is refused").into_response());
        }
    }
    None
}

/// Refuses a request without a live session before its body is read: only a signed-in officer
/// may send the large bodies compose takes.
async fn signed_in(State(web): State<Web>, req: Request, next: Next) -> Response {
    if web.officer(req.headers(), false).is_none() {
        return if req.method() == axum::http::Method::GET {
            to_signin()
        } else {
            (StatusCode::UNAUTHORIZED, "sign in first").into_response()
        };
    }
    next.run(req).await
}

fn html(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl Web {
    /// A cookie's name: `__Host-` first when cookies are `Secure`.
    fn cookie_name(&self, name: &str) -> String {
        if self.secure {
            format!("__Host-{name}")
        } else {
            name.to_owned()
        }
    }

    fn cookie(&self, headers: &HeaderMap, name: &str) -> Option<String> {
        cookie(headers, &self.cookie_name(name))
    }

    fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
        // On loopback over plain HTTP: no `Secure` (the cookie never leaves this machine);
        // behind a TLS proxy (`secure_cookies`): `Secure`, and the `__Host-` name.
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!("{}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}", self.cookie_name(name));
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A signed-in officer: the session and the account as it is now.
#[derive(Clone)]
struct Officer {
    token: String,
    session: Session,
    account: Account,
}

impl Web {
    /// A session for an account that just signed in (ending the one this browser had), and the
    /// way to the inbox.
    fn signed_in(&self, headers: &HeaderMap, account: &Account) -> Response {
        if let Some(old) = self.cookie(headers, SESSION_COOKIE) {
            self.sessions.end(&old);
        }
        let token = self.sessions.begin(&account.name, account.generation, Instant::now());
        let mut res = Redirect::to("/inbox").into_response();
        let h = res.headers_mut();
        h.append(header::SET_COOKIE, self.set_cookie(SESSION_COOKIE, &token, None));
        h.append(header::SET_COOKIE, self.set_cookie(SIGNIN_COOKIE, "", Some(0)));
        res
    }
}

impl Officer {
    /// The top of a page for this officer (live alerts on; `rows`: arrivals added to its table).
    fn frame<'a>(&'a self, web: &'a Web, unread: usize, rows: bool) -> Frame<'a> {
        Frame {
            node: web.node.id().as_str(),
            account: &self.account,
            csrf: &self.session.csrf,
            unread,
            live: true,
            rows,
        }
    }
}

impl Web {
    /// The officer of a request's session cookie, if the session is alive and its account may
    /// still sign in (a disabled or locked account's sessions end here).
    fn officer(&self, headers: &HeaderMap, touch: bool) -> Option<Officer> {
        let token = self.cookie(headers, SESSION_COOKIE)?;
        let session = self.sessions.get(&token, Instant::now(), touch)?;
        let account = self.node.accounts().get(&session.account)?;
        if !account.session_valid(session.generation) {
            self.sessions.end(&token);
            return None;
        }
        Some(Officer { token, session, account })
    }

    async fn frame_unread(&self, o: &Officer) -> usize {
        let account = o.account.clone();
        self.node.catalogue(move |c| c.page(&Find::default(), |r| visible(&account, r), 0, 0).unread).await.unwrap_or(0)
    }

    async fn record(&self, o: &Officer, action: AccountAction, detail: String) -> Result<(), Response> {
        self.node.accounts().record(&o.account.name, action, detail).await.map_err(|e| {
            html(StatusCode::SERVICE_UNAVAILABLE, pages::error(None, &format!("the node cannot record this now: {e}")))
        })
    }
}

fn visible(account: &Account, r: &Row) -> bool {
    account.may_see_packet(&r.from, &r.originator, r.case_ref.as_ref())
}

fn to_signin() -> Response {
    Redirect::to("/signin").into_response()
}

/// The subject of the certificate the browser presented over the workspace's TLS, if any.
fn card(cert: &Option<axum::Extension<tls::ClientCertificate>>) -> Option<String> {
    cert.as_ref().and_then(|c| c.0 .0.as_ref()).map(|(_, subject)| subject.clone())
}

async fn signin_form(
    State(web): State<Web>,
    cert: Option<axum::Extension<tls::ClientCertificate>>,
    headers: HeaderMap,
) -> Response {
    if web.officer(&headers, false).is_some() {
        return Redirect::to("/inbox").into_response();
    }
    let token = session::random_token();
    let mut res = html(StatusCode::OK, pages::signin(&token, None, "", card(&cert).as_deref()));
    res.headers_mut().insert(header::SET_COOKIE, web.set_cookie(SIGNIN_COOKIE, &token, Some(900)));
    res
}

#[derive(Deserialize)]
struct SignIn {
    csrf: String,
    name: String,
    password: String,
    code: String,
}

async fn signin(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<tls::ClientCertificate>>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    let fresh = session::random_token();
    let again = |status: StatusCode, msg: &str| {
        let mut res = html(status, pages::signin(&fresh, Some(msg), &f.name, card(&cert).as_deref()));
        res.headers_mut().insert(header::SET_COOKIE, web.set_cookie(SIGNIN_COOKIE, &fresh, Some(900)));
        res
    };
    let expected = web.cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&expected, &f.csrf) {
        return again(StatusCode::FORBIDDEN, "The form expired: sign in again.");
    }
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match web.node.accounts().sign_in(&f.name, &f.password, &f.code, unix, &peer.ip().to_string()).await {
        Ok(account) => web.signed_in(&headers, &account),
        Err(e) => again(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

/// Sign-in with the smart-card certificate the browser presented over the workspace's TLS
/// (its chain checked against the officers' CA in the handshake): the account holding its
/// fingerprint.
async fn signin_certificate(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<tls::ClientCertificate>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let fresh = session::random_token();
    let subject = card(&cert);
    let again = |status: StatusCode, msg: &str| {
        let mut res = html(status, pages::signin(&fresh, Some(msg), "", subject.as_deref()));
        res.headers_mut().insert(header::SET_COOKIE, web.set_cookie(SIGNIN_COOKIE, &fresh, Some(900)));
        res
    };
    let expected = web.cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&expected, &f.csrf) {
        return again(StatusCode::FORBIDDEN, "The form expired: sign in again.");
    }
    let Some((fingerprint, subject)) = cert.and_then(|c| c.0 .0.clone()) else {
        return again(StatusCode::UNAUTHORIZED, "No card was presented: sign in with your password and code.");
    };
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match web.node.accounts().sign_in_certificate(fingerprint, &subject, unix, &peer.ip().to_string()).await {
        Ok(account) => web.signed_in(&headers, &account),
        Err(e) => again(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Why a change (a POST) was refused before anything was done.
enum Refused {
    /// No live session.
    NoSession,
    /// The form's CSRF token is not the session's.
    Csrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoSession => (StatusCode::UNAUTHORIZED, Html("sign in first")).into_response(),
            Refused::Csrf => {
                html(StatusCode::FORBIDDEN, pages::error(None, "This form is not from your session: reload the page."))
            }
        }
    }
}

/// The officer of a POST: session alive and the form's CSRF token its own.
fn changing(web: &Web, headers: &HeaderMap, csrf: &str) -> Result<Officer, Refused> {
    let o = web.officer(headers, true).ok_or(Refused::NoSession)?;
    if !same_token(&o.session.csrf, csrf) {
        warn!(target: "audit", account = %o.account.name, "a change refused: CSRF token wrong");
        return Err(Refused::Csrf);
    }
    Ok(o)
}

async fn signout(State(web): State<Web>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let o = match changing(&web, &headers, &f.csrf) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    web.sessions.end(&o.token);
    if let Err(r) = web.record(&o, AccountAction::SignedOut, String::new()).await {
        return r;
    }
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut().insert(header::SET_COOKIE, web.set_cookie(SESSION_COOKIE, "", Some(0)));
    res
}
