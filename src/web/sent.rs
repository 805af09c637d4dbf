//! The packets this node's officers sent: the list, newest first, and one packet as its sender
//! follows it — what each recipient's sharing policy did (sent as written, sent with these
//! fields removed, refused by this rule), delivery, the signed receipt, who read it, the answer
//! awaited, and the packet as sent.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::{html as page_response, pages, to_signin, Officer, Web};
use crate::accounts::Account;
use crate::audit::{AccountAction, DecisionKind};
use crate::catalogue::SentRecord;
use crate::ids::PacketId;

/// Whether an account may see a packet its node sent: its case in the case scope, and at least
/// one recipient in the partner scope (only those recipients are shown).
pub(super) fn visible(account: &Account, r: &SentRecord) -> bool {
    account.cases.covers(r.case_ref.as_ref()) && r.decisions.iter().any(|d| account.partners.covers(&d.to))
}

#[derive(Deserialize, Default)]
pub(super) struct PageQuery {
    #[serde(default)]
    page: usize,
}

/// The sent list: 50 a page, newest first.
pub(super) async fn list(State(web): State<Web>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let page_no = q.page.min(super::MAX_PAGE);
    let account = o.account.clone();
    // Every record is read to apply the scope; a page is cut from those the account sees.
    let found = web
        .node
        .slow(move |n| {
            n.sent_records(0, usize::MAX).map(|(all, _)| {
                let seen: Vec<SentRecord> = all.into_iter().filter(|r| visible(&account, r)).collect();
                let total = seen.len();
                let rows: Vec<SentRecord> =
                    seen.into_iter().skip(page_no.saturating_mul(super::PER_PAGE)).take(super::PER_PAGE).collect();
                let states: Vec<Vec<(String, String)>> = rows.iter().map(|r| states_of(n, r, &account)).collect();
                (rows, states, total)
            })
        })
        .await;
    let (rows, states, total) = match found {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => {
            return page_response(StatusCode::SERVICE_UNAVAILABLE, pages::error(None, &e.to_string()))
        }
    };
    let unread = web.frame_unread(&o).await;
    let frame = o.frame(&web, unread, false);
    let content = html! {
        h1 { "Sent" }
        p.muted #total { (total) " packet(s)" }
        table.inbox {
            thead { tr { th { "Priority" } th { "Type" } th { "Case" } th { "Summary" } th { "Markings" } th { "To" } th { "Sent" } } }
            tbody {
                @for (r, st) in rows.iter().zip(&states) {
                    tr data-id=(r.id.to_string()) {
                        td { span class={ "prio prio-" (pages::wire(&r.priority)) } { (pages::wire(&r.priority)) } }
                        td { (r.packet_type.as_str()) }
                        td { (r.case_ref.as_ref().map_or("", |c| c.as_str())) }
                        td { a.open href={ "/sent/" (r.id) } { (r.summary) } }
                        td { (pages::markings(r.classification, r.tlp, &r.handling, r.grading)) }
                        td { @for (to, state) in st { div { (to) ": " span.state { (state) } } } }
                        td { (pages::when_ms(r.at)) }
                    }
                }
            }
        }
        div.pager {
            @if page_no > 0 { a href={ "/sent?page=" (page_no - 1) } { "← newer" } }
            @if (page_no + 1).saturating_mul(super::PER_PAGE) < total { a href={ "/sent?page=" (page_no + 1) } { "older →" } }
        }
    };
    page_response(StatusCode::OK, pages::page("Sent", Some(&frame), content))
}

/// Each in-scope recipient's state in a word or three.
fn states_of(n: &crate::node::Node, r: &SentRecord, account: &Account) -> Vec<(String, String)> {
    let status = n.packet_status(r.id).ok();
    r.decisions
        .iter()
        .filter(|d| account.partners.covers(&d.to))
        .map(|d| {
            let state = if d.decision == DecisionKind::Deny {
                "refused by policy".to_owned()
            } else {
                status
                    .as_ref()
                    .and_then(|s| s.recipients.iter().find(|x| x.node == d.to))
                    .map(|x| {
                        let mut t = format!("{:?}", x.state).to_lowercase();
                        if let Some(who) = &x.read_by {
                            t += &format!(", read by {who}");
                        }
                        t
                    })
                    .unwrap_or_else(|| "gone (retention)".into())
            };
            (d.to.to_string(), state)
        })
        .collect()
}

/// One packet the node sent.
pub(super) async fn one(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let unread = web.frame_unread(&o).await;
    let frame = o.frame(&web, unread, false);
    let scope = o.account.partners.clone();
    let view = id.parse::<PacketId>().ok().and_then(|id| web.node.sent_view(id, |n| scope.covers(n)).ok().flatten());
    let Some(v) = view.filter(|v| visible(&o.account, &v.record)) else {
        if let Err(r) =
            web.record(&o, AccountAction::Refused, format!("sent {id}: not found or outside the account's scope")).await
        {
            return r;
        }
        return page_response(StatusCode::NOT_FOUND, pages::not_found(&frame));
    };
    if let Err(r) = web.record(&o, AccountAction::Viewed, format!("sent {}", v.record.id)).await {
        return r;
    }
    let partners: Vec<crate::ids::NodeId> =
        web.node.peers().into_iter().map(|p| p.node).filter(|n| o.account.partners.covers(n)).collect();
    page_response(
        StatusCode::OK,
        pages::page(&format!("Sent {}", v.record.id), Some(&frame), view_of(&v, &o, &partners)),
    )
}

fn view_of(v: &crate::api::types::SentView, o: &Officer, partners: &[crate::ids::NodeId]) -> maud::Markup {
    let r = &v.record;
    html! {
        (pages::banner_of(r.classification, r.tlp, &r.handling, r.grading))
        h1 { "Sent: " span class={ "prio prio-" (pages::wire(&r.priority)) } { (pages::wire(&r.priority)) } " " (r.packet_type.as_str()) " " (r.case_ref.as_ref().map_or("", |c| c.as_str())) }
        dl.fields {
            dt { "Packet" } dd { (r.id) }
            dt { "Sent" } dd { (pages::when_ms(r.at)) @if let Some(off) = &r.officer { " by " (off) } }
            @if let Some(re) = r.in_reply_to { dt { "In reply to" } dd { (re) } }
            @if let Some(d) = r.due_by { dt { "Answer due" } dd { (d) } }
        }
        section #recipients {
            h2 { "Recipients" }
            table.inbox {
                thead { tr { th { "Recipient" } th { "Sharing policy" } th { "Delivery" } th { "Receipt" } th { "Read" } } }
                tbody {
                    @for d in r.decisions.iter().filter(|d| o.account.partners.covers(&d.to)) {
                        @let st = v.status.recipients.iter().find(|s| s.node == d.to);
                        @let rc = v.receipts.iter().find(|x| x.recipient == d.to && x.verified);
                        tr data-recipient=(d.to.to_string()) {
                            td { (d.to) }
                            td.decision {
                                @match d.decision {
                                    DecisionKind::Allow => { "sent as written" }
                                    DecisionKind::Redact => { "sent with these removed: " @for p in &d.redacted { code { (p) } " " } span.muted { "(" (d.rules.join(", ")) ")" } }
                                    DecisionKind::Deny => { span.error { "refused by " (d.rules.join(", ")) } }
                                }
                            }
                            td {
                                @if let Some(s) = st {
                                    (format!("{:?}", s.state).to_lowercase())
                                    @if let Some(at) = s.delivered_at { " at " (at) }
                                    @if let Some(reason) = &s.reason { ": " (reason) }
                                    @if let Some(w) = &s.waiting { " (" (pages::wire(w)) ")" }
                                } @else { "—" }
                            }
                            td { @if let Some(rc) = rc { "signed by " (rc.signer.as_deref().unwrap_or("")) } @else { "—" } }
                            td { @if let Some(s) = st { @for rd in &s.reads { div { (rd.officer) " at " (rd.at) } } } }
                        }
                    }
                }
            }
        }
        @if !v.status.deadlines.is_empty() {
            section #deadline {
                h2 { "Answer awaited" }
                ul { @for d in &v.status.deadlines { li { (d.counterpart) ": due " (d.due_by) " — " (crate::web::pages::due_words(&d.due)) } } }
            }
        }
        @if o.account.is(crate::accounts::Role::Supervisor) && r.packet_type != crate::packet::PacketType::OnwardConsent {
            @let holders: Vec<&crate::ids::NodeId> = r.decisions.iter()
                .filter(|d| d.decision != DecisionKind::Deny && o.account.partners.covers(&d.to)).map(|d| &d.to).collect();
            @if !holders.is_empty() {
                section #consent {
                    h2 { "Consent to pass it on" }
                    p.muted { "As the originator's supervisor: a recipient may pass this packet on to these partners until then (signed, sent to the recipient)." }
                    form method="post" action={ "/sent/" (r.id) "/consent" } {
                        input type="hidden" name="csrf" value=(o.session.csrf);
                        label { "Recipient holding it " select name="holder" { @for h in &holders { option value=(h.to_string()) { (h) } } } }
                        label { "Until (UTC) " input type="datetime-local" name="until"; }
                        div { "May pass it to: " @for p in partners { label.check { input type="checkbox" name="allow" value=(p.to_string()); (p) } } }
                        button #consent-send type="submit" { "Consent as " (o.account.display_name) }
                    }
                }
            }
        }
        @if let Some(p) = &v.packet {
            section #body { h2 { "Content, as sent" } (pages::body(&without_attachments(p))) }
        }
    }
}

/// A body as JSON, attachments' content left out (listed by name and digest in the body view).
fn without_attachments(p: &crate::packet::Packet) -> serde_json::Value {
    let mut body = serde_json::to_value(&p.body).unwrap_or_default();
    if let Some(list) = body.pointer_mut("/InformationResponse/attachments").and_then(serde_json::Value::as_array_mut) {
        for a in list.iter_mut() {
            if let Some(o) = a.as_object_mut() {
                o.remove("content");
            }
        }
    }
    body
}

/// The originator's consent that a recipient pass a packet this node sent on (supervisors), as
/// the signed-in officer.
pub(super) async fn consent(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    let o = match super::changing(&web, &headers, &get("csrf")) {
        Ok(o) => o,
        Err(r) => return axum::response::IntoResponse::into_response(r),
    };
    let record = id.parse::<PacketId>().ok().and_then(|id| web.node.sent_record(id).ok().flatten());
    let holder = get("holder").parse::<crate::ids::NodeId>().ok();
    let allowed: Vec<crate::ids::NodeId> =
        pairs.iter().filter(|(k, _)| k == "allow").filter_map(|(_, v)| v.parse().ok()).collect();
    let now = crate::timestamp::Timestamp::now();
    let until: Option<crate::timestamp::Timestamp> = match get("until").len() {
        0 => Some(now.plus_secs(30 * 86_400)),
        16 => format!("{}:00Z", get("until")).parse().ok(),
        19 => format!("{}Z", get("until")).parse().ok(),
        _ => get("until").parse().ok(),
    };
    // In the future, at most the packets' longest life (366 days).
    let until = until.filter(|u| *u > now && u.unix() <= now.unix() + 366 * 86_400);
    let ok = o.account.is(crate::accounts::Role::Supervisor)
        && record
            .as_ref()
            .is_some_and(|r| visible(&o.account, r) && r.packet_type != crate::packet::PacketType::OnwardConsent)
        && holder.is_some_and(|h| o.account.partners.covers(&h))
        && !allowed.is_empty()
        && allowed.iter().all(|a| o.account.partners.covers(a));
    let (Some(record), Some(holder), Some(until), true) = (record, holder, until, ok) else {
        if let Err(r) = web
            .record(
                &o,
                AccountAction::Refused,
                format!("consent for {id}: not a supervisor, outside the scope, or incomplete"),
            )
            .await
        {
            return r;
        }
        return page_response(
            StatusCode::FORBIDDEN,
            pages::error(None, "A consent needs the supervisor role, a recipient and partners of your scope, and a date within the next year."),
        );
    };
    match web.node.consent(record.id, &holder, allowed, until, o.account.name.clone()).await {
        Ok(done) => {
            if let Err(r) = web
                .record(&o, AccountAction::Sent, format!("consent for {} to {holder} as {}", record.id, done.id))
                .await
            {
                return r;
            }
            axum::response::IntoResponse::into_response(axum::response::Redirect::to(&format!("/sent/{}", record.id)))
        }
        Err(e) => page_response(StatusCode::CONFLICT, pages::error(None, &format!("No consent sent: {e}"))),
    }
}
