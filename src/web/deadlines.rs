//! The deadlines board (Directive 2023/977): the requests this node must answer and the answers
//! it awaits, overdue ones first, then the soonest; a deadline that was missed stays marked late
//! even after a delay notice moved it. Every account sees the requests of its scopes (a
//! supervisor's scopes are usually wider; the role does not widen them).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::{html as page_response, pages, to_signin, Web};
use crate::deadlines::{Deadline, Due, Role};

/// One line of the board.
struct Line {
    deadline: Deadline,
    due: Due,
    url: String,
    what: String,
    late: bool,
}

pub(super) async fn board(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(o) = web.officer(&headers, true) else { return to_signin() };
    let now = crate::node::now_ms();
    let account = o.account.clone();
    let answer = web.node.open_deadlines(Role::Answer);
    // What each request is about: the inbox row of a request received, the sent record of one sent.
    let rows = web
        .node
        .catalogue(move |c| {
            answer
                .into_iter()
                .map(|d| {
                    let row = c.row(d.request, &d.counterpart).cloned();
                    (d, row)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    let mut to_answer = Vec::new();
    for (d, row) in rows {
        let seen = row.as_ref().is_some_and(|r| super::visible(&account, r));
        if !seen {
            continue;
        }
        let what = row.as_ref().map_or_else(
            || d.request.to_string(),
            |r| format!("{} {}", r.case_ref.as_ref().map_or("", |c| c.as_str()), r.summary),
        );
        let url = format!("/packets/{}?from={}", d.request, d.counterpart);
        to_answer.push(line(d, now, url, what));
    }
    let mut awaiting = Vec::new();
    for d in web.node.open_deadlines(Role::Await) {
        let record = web.node.sent_record(d.request).ok().flatten();
        let seen = account.partners.covers(&d.counterpart)
            && record.as_ref().is_some_and(|r| account.cases.covers(r.case_ref.as_ref()));
        if !seen {
            continue;
        }
        let what = record.as_ref().map_or_else(
            || d.request.to_string(),
            |r| format!("{} {}", r.case_ref.as_ref().map_or("", |c| c.as_str()), r.summary),
        );
        let url = format!("/sent/{}", d.request);
        awaiting.push(line(d, now, url, what));
    }
    for list in [&mut to_answer, &mut awaiting] {
        list.sort_by_key(|l| (!l.late, !matches!(l.due, Due::Overdue { .. }), l.deadline.due_by));
    }
    let unread = web.frame_unread(&o).await;
    let frame = o.frame(&web, unread, false);
    let table = |id: &str, title: &str, lines: &[Line], who: &str| {
        html! {
            section id=(id) {
                h2 { (title) " (" (lines.len()) ")" }
                @if lines.is_empty() { p.muted { "None." } } @else {
                    table.inbox {
                        thead { tr { th { "State" } th { "Due" } th { (who) } th { "Request" } th { "Moved by" } } }
                        tbody {
                            @for l in lines {
                                tr.late[l.late] data-request=(l.deadline.request.to_string()) {
                                    td {
                                        @if l.late { span.prio.prio-FLASH { "LATE" } " " }
                                        (pages::due_words(&l.due))
                                        @if let Some(m) = l.deadline.missed { div.muted { "missed " (pages::when_ms(m)) ", before a delay notice" } }
                                    }
                                    td { (pages::when_ms(l.deadline.due_by)) }
                                    td { (l.deadline.counterpart) }
                                    td { a href=(l.url) { (l.what) } }
                                    td { (l.deadline.delays.len()) " delay notice(s)" @if l.deadline.paused.is_some() { ", paused" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let content = html! {
        h1 { "Deadlines" }
        p.muted { "The requests of your scopes: overdue and late first, then the soonest." }
        (table("to-answer", "To answer", &to_answer, "Requested by"))
        (table("awaiting", "Awaiting answers", &awaiting, "Asked of"))
    };
    page_response(StatusCode::OK, pages::page("Deadlines", Some(&frame), content))
}

fn line(deadline: Deadline, now: u64, url: String, what: String) -> Line {
    let due = deadline.due(now);
    let late = deadline.late(now);
    Line { deadline, due, url, what, late }
}
