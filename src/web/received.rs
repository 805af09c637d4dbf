//! Received packets in the workspace: the inbox (filters, search, pages), a packet with its
//! markings on top, its envelope and body, attachments to download with their digest, the
//! thread (case, the packet it answers, related packets, replies both ways), replies by type, and
//! the acknowledgement under the officer's name.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{changing, html, pages, to_signin, visible, CsrfForm, Find, Officer, Web, MAX_PAGE, PER_PAGE};
use crate::audit::AccountAction;
use crate::catalogue::Row;
use crate::ids::{NodeId, PacketId};
use crate::node::Node;
use crate::packet::{Body, Packet, PacketType};
use pages::Frame;

#[derive(Deserialize, Default)]
pub(super) struct InboxQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    partner: String,
    #[serde(default)]
    case: String,
    #[serde(default, rename = "type")]
    packet_type: String,
    #[serde(default)]
    unread: Option<String>,
    #[serde(default)]
    flash: Option<String>,
    #[serde(default)]
    overdue: Option<String>,
    #[serde(default)]
    page: usize,
}

impl InboxQuery {
    fn url(&self, page: usize) -> String {
        let mut parts = vec![];
        for (k, v) in [("q", &self.q), ("partner", &self.partner), ("case", &self.case), ("type", &self.packet_type)] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", crate::encoding::percent(v)));
            }
        }
        for (k, v) in [("unread", &self.unread), ("flash", &self.flash), ("overdue", &self.overdue)] {
            if v.is_some() {
                parts.push(format!("{k}=1"));
            }
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        format!("/inbox?{}", parts.join("&"))
    }
}

/// This node's deadline to answer each received request, in words, late ones marked.
fn deadlines_of(node: &Node) -> std::collections::HashMap<(PacketId, NodeId), String> {
    use crate::deadlines::Due;
    let now = crate::node::now_ms();
    node.open_deadlines(crate::deadlines::Role::Answer)
        .into_iter()
        .map(|d| {
            let due = pages::when_ms(d.due_by);
            let text = match (d.missed, d.due(now)) {
                (Some(missed), _) => format!("LATE: missed {}; now due {due}", pages::when_ms(missed)),
                (None, Due::Overdue { .. }) => format!("OVERDUE since {due}"),
                (None, Due::Paused) => "paused: clarification asked".to_owned(),
                (None, Due::DueSoon { .. }) => format!("due soon: {due}"),
                (None, Due::Open { .. }) => format!("due {due}"),
                (None, Due::Answered { late }) => if late { "answered late" } else { "answered" }.to_owned(),
            };
            ((d.request, d.counterpart), text)
        })
        .collect()
}

pub(super) async fn inbox(State(web): State<Web>, headers: HeaderMap, Query(q): Query<InboxQuery>) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let deadlines = deadlines_of(&web.node);
    let partner = q.partner.trim().parse::<NodeId>().ok();
    let packet_type = crate::packet::PacketType::ALL.iter().copied().find(|t| t.as_str() == q.packet_type);
    let only = q.overdue.is_some().then(|| web.node.overdue_answers(crate::node::now_ms()));
    let find = Find {
        unread: q.unread.is_some(),
        flash: q.flash.is_some(),
        partner,
        case: Some(q.case.trim().to_owned()).filter(|c| !c.is_empty()),
        packet_type,
        only,
        text: q.q.chars().take(256).collect(),
    };
    if !find.text.trim().is_empty() {
        if let Err(r) = web.record(&o, AccountAction::Searched, find.text.clone()).await {
            return r;
        }
    }
    let account = o.account.clone();
    let q = InboxQuery { page: q.page.min(MAX_PAGE), ..q };
    let offset = q.page.saturating_mul(PER_PAGE);
    let found = web.node.catalogue(move |c| c.page(&find, |r| visible(&account, r), offset, PER_PAGE)).await;
    let page = match found {
        Ok(p) => p,
        Err(e) => return html(StatusCode::SERVICE_UNAVAILABLE, pages::error(None, &e.to_string())),
    };
    let rows: Vec<(Row, Option<String>)> = page
        .rows
        .into_iter()
        .map(|r| {
            let d = deadlines.get(&(r.id, r.from)).cloned();
            (r, d)
        })
        .collect();
    let frame = Frame {
        node: web.node.id().as_str(),
        account: &o.account,
        csrf: &o.session.csrf,
        unread: page.unread,
        live: true,
        rows: q.page == 0 && q.url(0) == "/inbox?",
    };
    let filters = pages::Filters {
        unread: q.unread.is_some(),
        flash: q.flash.is_some(),
        overdue: q.overdue.is_some(),
        partner: &q.partner,
        case: &q.case,
        packet_type: &q.packet_type,
        q: &q.q,
    };
    let next = (offset.saturating_add(PER_PAGE) < page.total && q.page < MAX_PAGE).then(|| q.url(q.page + 1));
    let prev = (q.page > 0).then(|| q.url(q.page - 1));
    let pager = pages::Pager { total: page.total, page_no: q.page, per_page: PER_PAGE, next, prev };
    html(StatusCode::OK, pages::inbox(&frame, &filters, &rows, &pager))
}

#[derive(Deserialize)]
pub(super) struct FromQuery {
    from: Option<String>,
}

fn packet_key(id: &str, q: &FromQuery) -> Option<(PacketId, NodeId)> {
    Some((id.parse().ok()?, q.from.as_deref()?.parse().ok()?))
}

/// A received packet and its record, if the account may see it (its sender and originator in
/// the partner scope, its case in the case scope).
fn in_scope(
    web: &Web,
    o: &Officer,
    id: PacketId,
    from: NodeId,
) -> Option<(crate::packet::Packet, crate::store::InboxRecord)> {
    let (p, rec, _) = web.node.show(id, Some(&from)).ok()?;
    let case = p.envelope.case_ref.as_ref();
    o.account.may_see_packet(&from, &p.envelope.originator.node, case).then_some((p, rec))
}

pub(super) async fn packet(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let unread = web.frame_unread(&o).await;
    let frame = Frame {
        node: web.node.id().as_str(),
        account: &o.account,
        csrf: &o.session.csrf,
        unread,
        live: true,
        rows: false,
    };
    let Some((id, from)) = packet_key(&id, &q) else { return html(StatusCode::NOT_FOUND, pages::not_found(&frame)) };
    let (packet, rec) = match in_scope(&web, &o, id, from) {
        Some(x) => x,
        None => {
            // Not here and not for this account look the same, and both are recorded.
            let detail = format!("view {id} from {from}: not found or outside the account's scope");
            if let Err(r) = web.record(&o, AccountAction::Refused, detail).await {
                return r;
            }
            return html(StatusCode::NOT_FOUND, pages::not_found(&frame));
        }
    };
    if let Err(r) = web.record(&o, AccountAction::Viewed, format!("{id} from {from}")).await {
        return r;
    }
    let acked_by_me = rec.reads.iter().any(|(who, _)| *who == o.account.name);
    let mut body = serde_json::to_value(&packet.body).unwrap_or_default();
    // Attachments are listed apart (name, type, size, digest, a download), not as base64 text.
    let files = attachment_list(&packet);
    if let Some(list) = body.pointer_mut("/InformationResponse/attachments").and_then(serde_json::Value::as_array_mut) {
        list.clear();
    }
    let thread = thread_of(&web, &o, &packet).await;
    // H2: the originator's consents to pass it on are states of this packet, shown here.
    let consents = if packet.envelope.handling.codes.contains(&crate::markings::HandlingCode::H2) {
        let (about, by) = (packet.envelope.id, packet.envelope.originator.node);
        match web.node.slow(move |n| n.consents_about(about, &by, None)).await {
            Ok(Ok(list)) => list
                .into_iter()
                .filter_map(|c| match c.packet.body {
                    Body::OnwardConsent(x) => Some((
                        x.allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        x.until.to_string(),
                        c.packet.envelope.originator.officer.map(|o| o.to_string()).unwrap_or_default(),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let e = &packet.envelope;
    let content = maud::html! {
        (pages::banner(&packet))
        h1 { span class={ "prio prio-" (pages::wire(&e.priority)) } { (pages::wire(&e.priority)) } " " (packet.packet_type().as_str()) " " (e.case_ref.as_ref().map_or("", |c| c.as_str())) }
        dl.fields #envelope {
            dt { "Packet" } dd { (e.id) }
            dt { "From" } dd { (e.originator.node) @if let Some(off) = &e.originator.officer { ", " (off) } @if from != e.originator.node { " (passed on by " (from) ")" } }
            dt { "Created" } dd { (e.created) }
            dt { "Received" } dd { (pages::when_ms(rec.received_at)) }
            dt { "Expires" } dd { (e.expires) }
            @if let Some(u) = &e.urgency_reason { dt { "Urgency" } dd { (pages::wire(u)) } }
            @if let Some(d) = e.due_by { dt { "Answer due" } dd { (d) } }
            @if let Some(l) = &e.legal_basis { dt { "Legal basis" } dd { (l) } }
            @if let Some(p) = &e.purpose { dt { "Purpose" } dd { (p) } }
            dt { "Language" } dd { (e.language.as_str()) }
        }
        div.actions {
            @for (t, label) in replies_to(packet.packet_type()) {
                a.reply href={ "/compose?type=" (t.as_str()) "&reply_to=" (id) "&from=" (from) } { (label) }
            }
        }
        section #body { h2 { "Content" } (pages::body(&body)) }
        @if !files.is_empty() {
            section #attachments {
                h2 { "Attachments" }
                ul { @for (n, name, media, size, digest) in &files {
                    li { a href={ "/packets/" (id) "/attachments/" (n) "?from=" (from) } download { (name) } " — " (media) ", " (size) " bytes, " code { (digest) } }
                } }
            }
        }
        @let onward: Vec<NodeId> = web.node.peers().into_iter().map(|p| p.node)
            .filter(|n| *n != from && *n != e.originator.node && o.account.partners.covers(n)).collect();
        @if !consents.is_empty() {
            section #consents {
                h2 { "Consents of the originator" }
                ul { @for (to, until, who) in &consents { li { "May be passed on to " (to) " until " (until) @if !who.is_empty() { " (" (who) ")" } } } }
            }
        }
        @if !onward.is_empty() {
            section #onward {
                h2 { "Pass on" }
                p.muted { "The sharing policy with each partner decides; H2 material needs the originator's consent." }

                form method="post" action={ "/packets/" (id) "/forward?from=" (from) } {
                    input type="hidden" name="csrf" value=(o.session.csrf);
                    @for n in &onward { label.check { input type="checkbox" name="to" value=(n.to_string()); (n) } }
                    button #forward type="submit" { "Pass on as " (o.account.display_name) }
                }
            }
        }
        section #thread {
            h2 { "Thread" }
            ul.thread {
                @if let Some(c) = &e.case_ref { li { "Case " a href={ "/inbox?case=" (crate::encoding::percent(c.as_str())) } { (c) } } }
                @for (what, url, text) in &thread { li { (what) ": " a href=(url) { (text) } } }
                @if thread.is_empty() { li.muted { "Nothing else in this thread here." } }
            }
        }
        section #reads {
            h2 { "Acknowledged" }
            @if rec.reads.is_empty() { p.muted { "Not yet acknowledged here." } }
            ul { @for (who, at) in &rec.reads { li { (who) " at " (pages::when_ms(*at)) } } }
            @if !acked_by_me {
                form method="post" action={ "/packets/" (id) "/ack?from=" (from) } {
                    input type="hidden" name="csrf" value=(o.session.csrf);
                    button #ack type="submit" { "Acknowledge as " (o.account.display_name) }
                }
            }
        }
    };
    html(StatusCode::OK, pages::page(&format!("{} {}", packet.packet_type().as_str(), id), Some(&frame), content))
}

pub(super) async fn ack(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let o = match changing(&web, &headers, &f.csrf) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let Some((id, from)) = packet_key(&id, &q) else { return StatusCode::NOT_FOUND.into_response() };
    // The scope is checked before anything is done: a packet outside it does not exist here.
    if in_scope(&web, &o, id, from).is_none() {
        let detail = format!("acknowledge {id} from {from}: not found or outside the account's scope");
        if let Err(r) = web.record(&o, AccountAction::Refused, detail).await {
            return r;
        }
        return StatusCode::NOT_FOUND.into_response();
    }
    match web.node.ack(id, Some(&from), o.account.name.clone()).await {
        Ok(()) => Redirect::to(&format!("/packets/{id}?from={from}")).into_response(),
        Err(e) => html(StatusCode::CONFLICT, pages::error(None, &e.to_string())),
    }
}

/// The replies an officer can write to a packet of this type.
fn replies_to(t: PacketType) -> Vec<(PacketType, &'static str)> {
    match t {
        PacketType::InformationRequest => vec![
            (PacketType::InformationResponse, "Answer"),
            (PacketType::Refusal, "Refuse"),
            (PacketType::DelayNotice, "Notify a delay"),
            (PacketType::ClarificationRequest, "Ask for clarification"),
        ],
        PacketType::ControlledDeliveryAlert => {
            vec![(PacketType::ControlledDeliveryDecision, "Decide on this delivery")]
        }
        _ => Vec::new(),
    }
}

/// Each attachment: its number, name, media type, size and digest.
fn attachment_list(p: &Packet) -> Vec<(usize, String, String, usize, String)> {
    match &p.body {
        Body::InformationResponse(r) => r
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| (i, a.name.clone(), a.media_type.clone(), a.content.0.len(), a.digest.to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The packets around this one that the account may see: the one it answers, related ones,
/// replies received and sent.
async fn thread_of(web: &Web, o: &Officer, p: &Packet) -> Vec<(&'static str, String, String)> {
    let id = p.envelope.id;
    let mut wanted: Vec<(&'static str, PacketId)> = Vec::new();
    if let Some(r) = p.envelope.in_reply_to {
        wanted.push(("In reply to", r));
    }
    wanted.extend(p.envelope.related.iter().map(|r| ("Related", *r)));
    let account = o.account.clone();
    let rows = web
        .node
        .catalogue(move |c| {
            let mut out = Vec::new();
            for (what, w) in &wanted {
                out.extend(
                    c.rows()
                        .filter(|r| (r.id == *w || r.original == Some(*w)) && visible(&account, r))
                        .map(|r| (*what, r.clone())),
                );
            }
            out.extend(
                c.rows()
                    .filter(|r| r.in_reply_to == Some(id) && visible(&account, r))
                    .map(|r| ("Reply received", r.clone())),
            );
            out
        })
        .await
        .unwrap_or_default();
    let mut out: Vec<(&'static str, String, String)> = rows
        .into_iter()
        .map(|(what, r)| {
            (what, pages::packet_url(&r), format!("{} from {}: {}", r.packet_type.as_str(), r.from, r.summary))
        })
        .collect();
    // What this node sent in the thread: the packet this one answers, and replies to it.
    let mut sent_ids: Vec<(&'static str, PacketId)> =
        p.envelope.in_reply_to.map(|r| ("In reply to (sent)", r)).into_iter().collect();
    sent_ids.extend(p.envelope.related.iter().map(|r| ("Related (sent)", *r)));
    for (what, s) in sent_ids {
        if let Ok(Some(r)) = web.node.sent_record(s) {
            if super::sent::visible(&o.account, &r) {
                out.push((what, format!("/sent/{}", r.id), format!("{}: {}", r.packet_type.as_str(), r.summary)));
            }
        }
    }
    // Replies sent: every record is read (off the async workers).
    let account = o.account.clone();
    let replies = web
        .node
        .slow(move |n| {
            n.sent_records(0, usize::MAX).map(|(records, _)| {
                records
                    .into_iter()
                    .filter(|r| r.in_reply_to == Some(id) && super::sent::visible(&account, r))
                    .collect::<Vec<_>>()
            })
        })
        .await;
    if let Ok(Ok(records)) = replies {
        for r in records {
            out.push(("Reply sent", format!("/sent/{}", r.id), format!("{}: {}", r.packet_type.as_str(), r.summary)));
        }
    }
    out
}

/// An attachment of a received packet, as a download (never shown in the page: its type is not
/// trusted), its digest checked again against its content first.
pub(super) async fn attachment(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((id, n)): Path<(String, usize)>,
    Query(q): Query<FromQuery>,
) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let found = packet_key(&id, &q).and_then(|(id, from)| in_scope(&web, &o, id, from).map(|(p, _)| (p, id, from)));
    let file = found.as_ref().and_then(|(p, _, _)| match &p.body {
        Body::InformationResponse(r) => r.attachments.get(n).cloned(),
        _ => None,
    });
    let (Some((_, id, from)), Some(a)) = (found, file) else {
        if let Err(r) = web
            .record(&o, AccountAction::Refused, format!("attachment {n} of {id}: not found or outside the scope"))
            .await
        {
            return r;
        }
        return StatusCode::NOT_FOUND.into_response();
    };
    if crate::encoding::Digest::of(&a.content.0) != a.digest {
        return (StatusCode::CONFLICT, "the attachment does not match its digest").into_response();
    }
    if let Err(r) = web
        .record(&o, AccountAction::Downloaded, format!("{id} from {from}: attachment {n} {} {}", a.name, a.digest))
        .await
    {
        return r;
    }
    let safe: String =
        a.name.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{safe}\"")),
            (header::HeaderName::from_static("x-liaison-digest"), a.digest.to_string()),
        ],
        a.content.0,
    )
        .into_response()
}

/// Passes a received packet on to partners of the account's scope, as the signed-in officer
/// (the onward rules and, for H2 material, the originator's consent decide).
pub(super) async fn forward(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = pairs.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.clone()).unwrap_or_default();
    let o = match changing(&web, &headers, &csrf) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let Some((id, from)) = packet_key(&id, &q) else { return StatusCode::NOT_FOUND.into_response() };
    let to: Vec<NodeId> = pairs.iter().filter(|(k, _)| k == "to").filter_map(|(_, v)| v.parse().ok()).collect();
    let outside: Vec<&NodeId> = to.iter().filter(|n| !o.account.partners.covers(n)).collect();
    if in_scope(&web, &o, id, from).is_none() || !outside.is_empty() || to.is_empty() {
        let detail = format!("pass on {id} from {from}: not found, outside the account's scope, or no recipient");
        if let Err(r) = web.record(&o, AccountAction::Refused, detail).await {
            return r;
        }
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::error(None, "Choose partners of your scope to pass this packet on to."),
        );
    }
    match web.node.forward(id, Some(&from), &to, o.account.name.clone()).await {
        Ok(done) => {
            if let Err(r) =
                web.record(&o, AccountAction::Sent, format!("forward of {id} from {from} as {}", done.id)).await
            {
                return r;
            }
            Redirect::to(&format!("/sent/{}", done.id)).into_response()
        }
        Err(crate::node::NodeError::Denied(denied)) => {
            let why: Vec<String> = denied
                .iter()
                .map(|d| format!("{}: refused by {} ({})", d.recipient, d.denial.rule, d.denial.reason))
                .collect();
            if let Err(r) =
                web.record(&o, AccountAction::Refused, format!("pass on {id} from {from}: {}", why.join("; "))).await
            {
                return r;
            }
            html(StatusCode::FORBIDDEN, pages::error(None, &format!("Not passed on. {}", why.join("; "))))
        }
        Err(e) => {
            if let Err(r) = web.record(&o, AccountAction::Refused, format!("pass on {id} from {from}: {e}")).await {
                return r;
            }
            html(StatusCode::CONFLICT, pages::error(None, &e.to_string()))
        }
    }
}
