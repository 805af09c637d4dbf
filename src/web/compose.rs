//! Compose and reply: a form per packet type ([`super::forms`]), every problem shown at its
//! field at once, attachments by upload (read by the page's script, the digest computed here),
//! and the sharing policy's dry run per recipient shown while the officer writes (`POST
//! /compose/check`, called by the page as the form changes): allowed, these fields will be
//! removed, or refused by this rule. Sending submits the packet as the signed-in officer from
//! this node, to partners of the account's scope, in a case of its scope.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::forms::{self, Kind, Problems, Submitted};
use super::{changing, html as page_response, pages, to_signin, Officer, Web};
use crate::api::types::{DryRunDecision, PolicyCheck};
use crate::audit::AccountAction;
use crate::ids::{NodeId, PacketId};
use crate::packet::{Checked, Packet, PacketType};
use crate::timestamp::Timestamp;

/// Largest attachment taken by a form (after base64: the packet limit applies to the whole).
pub const MAX_ATTACHMENT: usize = 8 * 1024 * 1024;

#[derive(Deserialize, Default)]
pub(super) struct ComposeQuery {
    #[serde(default, rename = "type")]
    packet_type: String,
    /// Replying to this received packet.
    reply_to: Option<String>,
    /// Its sender.
    from: Option<String>,
}

fn writable(name: &str) -> Option<PacketType> {
    forms::WRITABLE.iter().copied().find(|t| t.as_str() == name)
}

/// The partners the officer may write to: enrolled, and in the account's scope.
fn partners(web: &Web, o: &Officer) -> Vec<NodeId> {
    web.node.peers().into_iter().map(|p| p.node).filter(|n| o.account.partners.covers(n)).collect()
}

/// The compose page: the type chooser, or the form of a type (a reply: prefilled from the
/// packet it answers).
pub(super) async fn form(State(web): State<Web>, headers: HeaderMap, Query(q): Query<ComposeQuery>) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let unread = web.frame_unread(&o).await;
    let Some(t) = writable(&q.packet_type) else {
        let frame = o.frame(&web, unread, false);
        let content = html! {
            h1 { "Write" }
            ul.types { @for t in forms::WRITABLE { li { a href={ "/compose?type=" (t.as_str()) } { (t.as_str()) } } } }
        };
        return page_response(StatusCode::OK, pages::page("Write", Some(&frame), content));
    };
    let mut values = Submitted::new();
    let mut to: Vec<NodeId> = Vec::new();
    let put = |values: &mut Submitted, k: &str, v: String| {
        values.insert(k.to_owned(), vec![v]);
    };
    put(&mut values, "envelope.priority", "ROUTINE".into());
    put(&mut values, "envelope.classification", "BASIC_PROTECTION".into());
    put(&mut values, "envelope.language", "en".into());
    values.insert("envelope.handling.codes".into(), vec!["H0".into()]);
    // A reply: to the packet's sender, in its case, with its markings (the most restrictive
    // stays the officer's to lower, knowingly).
    if let (Some(id), Some(from)) = (q.reply_to.as_deref(), q.from.as_deref()) {
        let original = id.parse::<PacketId>().ok().zip(from.parse::<NodeId>().ok()).and_then(|(id, from)| {
            let (p, _, _) = web.node.show(id, Some(&from)).ok()?;
            let case = p.envelope.case_ref.as_ref();
            o.account.may_see_packet(&from, &p.envelope.originator.node, case).then_some((p, from))
        });
        let Some((p, from)) = original else {
            let frame = o.frame(&web, unread, false);
            return page_response(StatusCode::NOT_FOUND, pages::not_found(&frame));
        };
        let e = &p.envelope;
        put(&mut values, "envelope.in_reply_to", e.id.to_string());
        if let Some(c) = &e.case_ref {
            put(&mut values, "envelope.case_ref", c.as_str().to_owned());
        }
        put(&mut values, "envelope.priority", pages::wire(&e.priority));
        if let Some(u) = &e.urgency_reason {
            put(&mut values, "envelope.urgency_reason", pages::wire(u));
        }
        put(&mut values, "envelope.classification", pages::wire(&e.classification));
        if let Some(tlp) = e.tlp {
            put(&mut values, "envelope.tlp", pages::wire(&tlp));
        }
        values.insert("envelope.handling.codes".into(), e.handling.codes.iter().map(pages::wire).collect());
        if let Some(h3) = &e.handling.h3_text {
            put(&mut values, "envelope.handling.h3_text", h3.clone());
        }
        if let Some(l) = &e.legal_basis {
            put(&mut values, "envelope.legal_basis", l.clone());
        }
        put(&mut values, "envelope.language", e.language.as_str().to_owned());
        to.push(from);
    }
    let frame = o.frame(&web, unread, false);
    let content = compose_page(t, &values, &to, &partners(&web, &o), &Problems::new(), &o.session.csrf);
    page_response(StatusCode::OK, pages::page(&format!("Write {}", t.as_str()), Some(&frame), content))
}

/// The form's values by name, the recipients ticked, the action.
fn collect(pairs: Vec<(String, String)>) -> (Submitted, Vec<String>, String, String, String) {
    let mut values = Submitted::new();
    let (mut to, mut csrf, mut action, mut t) = (Vec::new(), String::new(), String::new(), String::new());
    for (k, v) in pairs {
        match k.as_str() {
            "csrf" => csrf = v,
            "action" => action = v,
            "type" => t = v,
            "to" => to.push(v),
            _ => values.entry(k).or_default().push(v),
        }
    }
    (values, to, csrf, action, t)
}

/// The draft a form makes, checked: the packet, or every problem by field.
fn draft(web: &Web, o: &Officer, t: PacketType, values: &Submitted, to: &[String]) -> Result<Checked, Problems> {
    let scope = partners(web, o);
    let mut problems = Problems::new();
    let to: Vec<String> = to
        .iter()
        .filter(|r| {
            let ok = r.parse::<NodeId>().is_ok_and(|n| scope.contains(&n));
            if !ok {
                problems.insert("envelope.recipients".into(), format!("{r} is not a partner you may write to"));
            }
            ok
        })
        .cloned()
        .collect();
    let (mut v, more) = forms::build(t, values, &to);
    problems.extend(more);
    attachments(t, values, &mut v, &mut problems);
    forms::set(&mut v, "envelope.originator.node", json!(web.node.id().to_string()));
    forms::set(&mut v, "envelope.originator.officer", json!(o.account.name.as_str()));
    if let Some(case) = v.pointer("/envelope/case_ref").and_then(Value::as_str) {
        if let Ok(case) = case.parse::<crate::ids::CaseRef>() {
            if !o.account.cases.covers(Some(&case)) {
                problems.insert("envelope.case_ref".into(), "a case outside your account's scope".into());
            }
        }
    }
    if !problems.is_empty() {
        // The packet model's own checks too, so that one round shows as much as it can.
        if let Err(e) = Packet::draft(&v.to_string(), Timestamp::now(), &mut rand_core::OsRng) {
            let at = forms::field_of(t, values, e.field().unwrap_or(""));
            problems.entry(at).or_insert_with(|| e.to_string());
        }
        return Err(problems);
    }
    // The model's checks, one problem at a time: an optional field at fault is set aside and
    // the rest checked again, so that independent problems all show.
    let mut probe = v.clone();
    for _ in 0..8 {
        match Packet::draft(&probe.to_string(), Timestamp::now(), &mut rand_core::OsRng) {
            Ok(p) if problems.is_empty() => {
                return Ok(p);
            }
            Ok(_) => break,
            Err(e) => {
                let path = e.field().unwrap_or("").to_owned();
                let at = forms::field_of(t, values, &path);
                if problems.contains_key(&at) {
                    break;
                }
                problems.insert(at, e.to_string());
                if !remove(&mut probe, &path) {
                    break;
                }
            }
        }
    }
    Err(problems)
}

/// [`draft`] on the blocking pool: a form with attachments is megabytes to decode, hash and
/// check, more than an async worker should hold.
async fn draft_off_workers(
    web: &Web,
    o: &Officer,
    t: PacketType,
    values: Submitted,
    to: Vec<String>,
) -> Result<Checked, Problems> {
    let (web, o) = (web.clone(), o.clone());
    tokio::task::spawn_blocking(move || draft(&web, &o, t, &values, &to))
        .await
        .unwrap_or_else(|_| Err(Problems::from([(String::new(), "the node is stopping".to_owned())])))
}

/// Why the packet a reply names cannot be answered from this account (`None`: it can): a
/// received packet or one this node sent, visible to the account.
async fn reply_seen(web: &Web, o: &Officer, values: &Submitted) -> Option<String> {
    let raw = values.get("envelope.in_reply_to").and_then(|v| v.last()).map(|s| s.trim().to_owned())?;
    if raw.is_empty() {
        return None;
    }
    let cannot = || Some("not a packet you can see".to_owned());
    let Ok(id) = raw.parse::<PacketId>() else { return cannot() };
    let account = o.account.clone();
    let received = web
        .node
        .catalogue(move |c| c.rows().any(|r| (r.id == id || r.original == Some(id)) && super::visible(&account, r)))
        .await
        .unwrap_or(false);
    let sent = matches!(web.node.sent_record(id), Ok(Some(r)) if super::sent::visible(&o.account, &r));
    if received || sent {
        None
    } else {
        cannot()
    }
}

/// Removes the value at a packet path (`body.X.items[2].name`), if there is one.
fn remove(v: &mut Value, path: &str) -> bool {
    let pointer: String = path
        .split('.')
        .flat_map(|part| match part.split_once('[') {
            Some((name, idx)) => vec![name.to_owned(), idx.trim_end_matches(']').to_owned()],
            None => vec![part.to_owned()],
        })
        .map(|p| format!("/{p}"))
        .collect();
    let Some((parent, last)) = pointer.rsplit_once('/') else { return false };
    match v.pointer_mut(parent) {
        Some(Value::Object(o)) => o.remove(last).is_some(),
        _ => false,
    }
}

/// Attachments uploaded through the page (name, type and base64 content, read by its script):
/// the digest is computed here.
fn attachments(t: PacketType, values: &Submitted, v: &mut Value, problems: &mut Problems) {
    if t != PacketType::InformationResponse {
        return;
    }
    use base64::Engine as _;
    let get = |k: String| values.get(&k).and_then(|x| x.last()).map_or("", |s| s.trim()).to_owned();
    let mut list = Vec::new();
    for i in 0..forms::ATTACHMENT_SLOTS {
        let at = format!("attachments[{i}]");
        let content = get(format!("{at}.content"));
        if content.is_empty() {
            continue;
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(&content) {
            Ok(b) if b.len() <= MAX_ATTACHMENT => b,
            Ok(_) => {
                problems.insert(format!("{at}.file"), format!("larger than {} MiB", MAX_ATTACHMENT >> 20));
                continue;
            }
            Err(_) => {
                problems.insert(format!("{at}.file"), "the upload was damaged: choose the file again".into());
                continue;
            }
        };
        let name = get(format!("{at}.name"));
        let name = name.rsplit(['/', '\\']).next().unwrap_or("").to_owned();
        let media_type = Some(get(format!("{at}.media_type")))
            .filter(|m| m.contains('/'))
            .unwrap_or_else(|| "application/octet-stream".into());
        list.push(json!({
            "name": name,
            "media_type": media_type,
            "digest": crate::encoding::Digest::of(&bytes).to_string(),
            "content": content,
        }));
    }
    if !list.is_empty() {
        forms::set(v, "body.InformationResponse.attachments", Value::Array(list));
    }
}

/// A posted form: its officer (session and CSRF token checked), type, values, recipients, and
/// the draft it makes or every problem by field.
type Prepared = (Officer, PacketType, Submitted, Vec<String>, Result<Checked, Problems>);

async fn prepare(web: &Web, headers: &HeaderMap, pairs: Vec<(String, String)>) -> Result<Prepared, Response> {
    let (values, to, csrf, _, t) = collect(pairs);
    let o = changing(web, headers, &csrf).map_err(IntoResponse::into_response)?;
    let t = writable(&t).ok_or_else(|| StatusCode::BAD_REQUEST.into_response())?;
    let checked = match reply_seen(web, &o, &values).await {
        Some(problem) => Err(Problems::from([("envelope.in_reply_to".to_owned(), problem)])),
        None => draft_off_workers(web, &o, t, values.clone(), to.clone()).await,
    };
    Ok((o, t, values, to, checked))
}

/// Sends a composed packet, or shows its form again with every problem at its field.
pub(super) async fn send(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let (o, t, values, to, checked) = match prepare(&web, &headers, pairs).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(problems) = &checked {
        // A refusal for the account's scope is on record, like any other.
        let scope: Vec<String> = problems
            .iter()
            .filter(|(_, why)| why.contains("scope") || why.contains("may write to") || why.contains("you can see"))
            .map(|(k, why)| format!("{k}: {why}"))
            .collect();
        if !scope.is_empty() {
            if let Err(r) =
                web.record(&o, AccountAction::Refused, format!("compose {}: {}", t.as_str(), scope.join("; "))).await
            {
                return r;
            }
        }
    }
    let packet = match checked {
        Ok(p) => p,
        Err(problems) => {
            let unread = web.frame_unread(&o).await;
            let frame = o.frame(&web, unread, false);
            let to: Vec<NodeId> = to.iter().filter_map(|r| r.parse().ok()).collect();
            let content = compose_page(t, &values, &to, &partners(&web, &o), &problems, &o.session.csrf);
            return page_response(StatusCode::UNPROCESSABLE_ENTITY, pages::page("Write", Some(&frame), content));
        }
    };
    let id = packet.envelope.id;
    match web.node.submit_checked(packet).await {
        Ok(_) => {
            if let Err(r) = web.record(&o, AccountAction::Sent, format!("{} {id}", t.as_str())).await {
                return r;
            }
            Redirect::to(&format!("/sent/{id}")).into_response()
        }
        Err(e) => page_response(StatusCode::SERVICE_UNAVAILABLE, pages::error(None, &format!("not sent: {e}"))),
    }
}

/// The dry run of a form as it stands (an HTML fragment the page shows beside the form): per
/// recipient, what its sharing policy would do; or what to fix first.
pub(super) async fn check(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let (_, t, _, _, checked) = match prepare(&web, &headers, pairs).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let fragment = match checked {
        Ok(packet) => dry_run_view(&crate::api::dry_run(&web.node, &packet)),
        Err(problems) => html! {
            p.muted { "Fix these, then each recipient's policy is checked:" }
            ul.problems { @for (field, why) in &problems { li data-field=(field) { b { (label_of(t, field)) } ": " (why) } } }
        },
    };
    (StatusCode::OK, Html(fragment.into_string())).into_response()
}

/// Per recipient: allowed, allowed with these fields removed (and by which rule), or refused.
fn dry_run_view(check: &PolicyCheck) -> Markup {
    html! {
        ul.dryrun {
            @for r in &check.recipients {
                li data-recipient=(r.recipient.to_string()) {
                    b { (r.recipient) } ": "
                    @match r.decision {
                        DryRunDecision::Allow => { span.ok { "allowed, sent as written" } }
                        DryRunDecision::AllowWithRedactions => {
                            span.redact { "allowed; these will be removed before signing:" }
                            ul { @for x in &r.redacted { li { code { (x.path) } " (" (x.rule) ")" } } }
                        }
                        DryRunDecision::Deny => {
                            span.error { "REFUSED" }
                            @if let Some(d) = &r.denied { " by " code { (d.rule) } ": " (d.reason) }
                        }
                    }
                }
            }
        }
    }
}

fn label_of(t: PacketType, field: &str) -> String {
    let mut groups = vec![forms::envelope()];
    groups.extend(forms::body(t));
    groups
        .iter()
        .flat_map(|g| g.fields.iter())
        .find(|f| f.path == field)
        .map_or_else(|| field.rsplit('.').next().unwrap_or(field).replace('_', " "), |f| f.label.to_owned())
}

fn value_of<'a>(values: &'a Submitted, name: &str) -> &'a str {
    values.get(name).and_then(|v| v.last()).map_or("", String::as_str)
}

fn input(field: &forms::Field, values: &Submitted, problems: &Problems) -> Markup {
    let v = value_of(values, &field.path);
    let problem = problems.get(&field.path);
    let id = field.path.replace(['.', '[', ']', '#'], "_");
    html! {
        div.field.invalid[problem.is_some()] {
            label for=(id) { (field.label) @if field.required { " *" } }
            @match field.kind {
                Kind::Long | Kind::Lines => { textarea id=(id) name=(field.path) rows="3" { (v) } }
                Kind::Select(options) => {
                    select id=(id) name=(field.path) {
                        @for opt in options { option value=(opt) selected[*opt == v] { (if opt.is_empty() { "—" } else { opt }) } }
                    }
                }
                Kind::DateTime => { input id=(id) name=(field.path) type="datetime-local" value=(v.trim_end_matches('Z')); }
                Kind::Date => { input id=(id) name=(field.path) type="date" value=(v); }
                Kind::Number => { input id=(id) name=(field.path) inputmode="numeric" value=(v); }
                Kind::Text => { input id=(id) name=(field.path) value=(v); }
            }
            @if let Some(p) = problem { div.problem role="alert" { (p) } }
        }
    }
}

/// The whole compose page of a type.
fn compose_page(
    t: PacketType,
    values: &Submitted,
    to: &[NodeId],
    partners: &[NodeId],
    problems: &Problems,
    csrf: &str,
) -> Markup {
    let codes = values.get("envelope.handling.codes").cloned().unwrap_or_default();
    let mut groups = vec![forms::envelope()];
    groups.extend(forms::body(t));
    let general: Vec<(&String, &String)> =
        problems.iter().filter(|(k, _)| !groups.iter().flat_map(|g| g.fields.iter()).any(|f| &f.path == *k)).collect();
    html! {
        h1 { "Write: " (t.as_str()) @if !value_of(values, "envelope.in_reply_to").is_empty() { " (reply)" } }
        @if !problems.is_empty() {
            div.error-summary role="alert" { (problems.len()) " problem(s): each is shown at its field." }
        }
        div.compose {
            form #compose method="post" action="/compose" data-check="/compose/check" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="type" value=(t.as_str());
                @let reply = value_of(values, "envelope.in_reply_to");
                @if !reply.is_empty() {
                    input type="hidden" name="envelope.in_reply_to" value=(reply);
                    p.muted { "In reply to " (reply) }
                }
                fieldset {
                    legend { "Recipients" }
                    @for p in partners { label.check { input type="checkbox" name="to" value=(p.to_string()) checked[to.contains(p)]; (p) } }
                    @if let Some(p) = problems.get("envelope.recipients") { div.problem role="alert" { (p) } }
                }
                fieldset {
                    legend { "Handling codes" }
                    @for (c, meaning) in [("H0", "crime-fighting use only"), ("H1", "not in court without permission"), ("H2", "not to be passed on without permission"), ("H3", "other restrictions")] {
                        label.check title=(meaning) { input type="checkbox" name="envelope.handling.codes" value=(c) checked[codes.iter().any(|x| x == c)]; (c) " — " (meaning) }
                    }
                    @if let Some(p) = problems.get("envelope.handling") { div.problem role="alert" { (p) } }
                }
                @for g in &groups {
                    fieldset {
                        legend { (g.title) }
                        @for field in &g.fields { (input(field, values, problems)) }
                    }
                }
                @if forms::has_entities(t) {
                    @for i in 0..forms::ENTITY_SLOTS {
                        @let slot = format!("body.{}.entities[{i}]", t.as_str());
                        fieldset.entity {
                            legend { "Entity " (i + 1) }
                            @let kind_field = format!("{slot}#kind");
                            @let grading_field = format!("{slot}#grading");
                            div.field.invalid[problems.contains_key(&kind_field)] {
                                label { "Kind" }
                                select name=(kind_field) {
                                    option value="" { "— none —" }
                                    @for k in forms::ENTITY_KINDS { option value=(k) selected[value_of(values, &kind_field) == *k] { (k) } }
                                }
                            }
                            div.field.invalid[problems.contains_key(&grading_field)] {
                                label { "Grading" }
                                select name=(grading_field) {
                                    option value="" { "—" }
                                    @for g in forms::GRADING { option value=(g) selected[value_of(values, &grading_field) == *g] { (g) } }
                                }
                                @if let Some(p) = problems.get(&grading_field) { div.problem role="alert" { (p) } }
                            }
                            @for k in forms::ENTITY_KINDS {
                                div.kind data-kind=(k) {
                                    @for (name, label, kind) in forms::entity_fields(k) {
                                        (input(&forms::Field { path: format!("{slot}.{k}.{name}"), label, kind, required: false }, values, problems))
                                    }
                                }
                            }
                        }
                    }
                }
                @if t == PacketType::InformationResponse {
                    fieldset {
                        legend { "Attachments (the digest is computed when sent)" }
                        @for i in 0..forms::ATTACHMENT_SLOTS {
                            div.field.invalid[problems.contains_key(&format!("attachments[{i}].file"))] {
                                input.upload type="file" data-slot=(i);
                                input type="hidden" name={ "attachments[" (i) "].name" } value=(value_of(values, &format!("attachments[{i}].name")));
                                input type="hidden" name={ "attachments[" (i) "].media_type" } value=(value_of(values, &format!("attachments[{i}].media_type")));
                                input type="hidden" name={ "attachments[" (i) "].content" } value=(value_of(values, &format!("attachments[{i}].content")));
                                @if let Some(p) = problems.get(&format!("attachments[{i}].file")) { div.problem role="alert" { (p) } }
                            }
                        }
                    }
                }
                @if !general.is_empty() {
                    ul.problems { @for (k, v) in &general { li data-field=(k) { b { (k) } ": " (v) } } }
                }
                button #send type="submit" name="action" value="send" { "Send" }
            }
            aside #dryrun-panel {
                h2 { "Sharing policy, per recipient" }
                div #dryrun aria-live="polite" { p.muted { "Choose recipients and fill the form: each recipient's policy is checked as you write." } }
            }
        }
    }
}
