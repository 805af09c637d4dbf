//! The workspace's pages, rendered on the server with maud: every value from a packet, an
//! account or a request is escaped by the template, nothing from a packet becomes a link, an
//! attribute that runs code or a style, and the only script is `/assets/app.js` (the CSP allows
//! nothing else).

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::accounts::Account;
use crate::catalogue::Row;
use crate::markings::{Classification, Grading, Handling, Tlp};
use crate::packet::Packet;
use crate::timestamp::Timestamp;

/// What every page of a signed-in officer shows at its top.
pub struct Frame<'a> {
    /// This node.
    pub node: &'a str,
    /// Who is signed in.
    pub account: &'a Account,
    /// The session's CSRF token (for the sign-out form and scripts).
    pub csrf: &'a str,
    /// Unread packets the account may see.
    pub unread: usize,
    /// Whether the page takes live alerts.
    pub live: bool,
    /// Whether live arrivals are added to the page's table (the unfiltered first page of the
    /// inbox; elsewhere they are announced only).
    pub rows: bool,
}

/// A whole page.
pub fn page(title: &str, frame: Option<&Frame<'_>>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(f) = frame { meta name="csrf" content=(f.csrf); }
                title { (title) " · liaison" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-live=(if frame.is_some_and(|f| f.live) { "on" } else { "off" })
                data-rows=(if frame.is_some_and(|f| f.rows) { "on" } else { "off" }) {
                @if let Some(f) = frame {
                    div #alert-bar .alert-bar role="alert" {}
                    header.top {
                        a href="/inbox" { "liaison " (f.node) }
                        a href="/inbox" { "Inbox " span #unread .counter { (f.unread) } }
                        a href="/inbox?unread=1" { "Unread" }
                        a href="/inbox?flash=1" { "FLASH" }
                        a href="/deadlines" { "Deadlines" }
                        a href="/sent" { "Sent" }
                        a href="/compose" { "Write" }
                        span.who { (f.account.display_name) " (" (f.account.name) ", " (f.account.role) ")" }
                        form method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// The sign-in form.
pub fn signin(csrf: &str, error: Option<&str>, name: &str, card: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            div.signin {
                h1 { "Sign in" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                @if let Some(subject) = card {
                    form #card method="post" action="/signin/certificate" {
                        input type="hidden" name="csrf" value=(csrf);
                        p { "Your card: " (subject) }
                        button #signin-card type="submit" { "Sign in with your card" }
                    }
                    p.muted { "Or with your password and code:" }
                }
                form method="post" action="/signin" autocomplete="off" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Account" input #name name="name" required value=(name) autocomplete="username"; }
                    label { "Password" input #password name="password" type="password" required autocomplete="current-password"; }
                    label { "Code from your authenticator app" input #code name="code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required autocomplete="one-time-code"; }
                    button #signin type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub use crate::catalogue::wire;

/// The markings of a packet, as badges.
pub fn markings(
    classification: Classification,
    tlp: Option<Tlp>,
    handling: &Handling,
    grading: Option<Grading>,
) -> Markup {
    html! {
        @for (text, class, title) in badges(classification, tlp, handling, grading) {
            span class=(class) title=(title) { (text) }
        }
    }
}

/// Markings as (text, CSS class, title): the badges of a page, and of a row added live.
pub fn badges(
    classification: Classification,
    tlp: Option<Tlp>,
    handling: &Handling,
    grading: Option<Grading>,
) -> Vec<(String, String, String)> {
    let labels = crate::catalogue::marking_labels(classification, tlp, handling, grading);
    let mut titles = vec![("mark".to_owned(), "classification".to_owned())];
    if let Some(t) = tlp {
        titles.push((format!("mark tlp-{}", wire(&t).replace('+', "-")), "TLP".into()));
    }
    titles.extend(handling.codes.iter().map(|c| ("mark".to_owned(), c.meaning().to_owned())));
    if grading.is_some() {
        titles.push(("mark".into(), "source reliability / information accuracy".into()));
    }
    labels.into_iter().zip(titles).map(|(text, (class, title))| (text, class, title)).collect()
}

/// A time in the officer's terms.
pub fn when_ms(ms: u64) -> String {
    Timestamp::from_unix((ms / 1000) as i64).map(|t| t.to_string()).unwrap_or_default()
}

/// The link to a received packet.
pub fn packet_url(row: &Row) -> String {
    format!("/packets/{}?from={}", row.id, row.from)
}

/// One listing row.
pub fn row(r: &Row, deadline: Option<&str>) -> Markup {
    html! {
        tr class=(if r.read { "read" } else { "unread" }) data-id=(r.id.to_string()) {
            td { span class={ "prio prio-" (wire(&r.priority)) } { (wire(&r.priority)) } }
            td { (r.packet_type.as_str()) }
            td { (r.case_ref.as_ref().map_or("", |c| c.as_str())) }
            td { a.open href=(packet_url(r)) { (r.summary) } }
            td { (markings(r.classification, r.tlp, &r.handling, r.grading)) }
            td { (r.from) @if r.originator != r.from { " (from " (r.originator) ")" } }
            td { (when_ms(r.received_at)) }
            td { (deadline.unwrap_or("")) }
        }
    }
}

/// The filters form of the inbox.
pub struct Filters<'a> {
    /// Unread only.
    pub unread: bool,
    /// FLASH only.
    pub flash: bool,
    /// Overdue only.
    pub overdue: bool,
    /// A partner.
    pub partner: &'a str,
    /// A case reference.
    pub case: &'a str,
    /// A type.
    pub packet_type: &'a str,
    /// Search words.
    pub q: &'a str,
}

/// Where a page of the inbox is in the whole.
pub struct Pager {
    /// Rows that matched.
    pub total: usize,
    /// This page's number, from 0.
    pub page_no: usize,
    /// Rows a page.
    pub per_page: usize,
    /// The next (older) page's address.
    pub next: Option<String>,
    /// The previous (newer) page's address.
    pub prev: Option<String>,
}

/// The inbox.
pub fn inbox(frame: &Frame<'_>, f: &Filters<'_>, rows: &[(Row, Option<String>)], pager: &Pager) -> Markup {
    let Pager { total, page_no, per_page, next, prev } = pager;
    let types = [
        "ControlledDeliveryAlert",
        "JitNotice",
        "InformationRequest",
        "InformationResponse",
        "Refusal",
        "DelayNotice",
        "ClarificationRequest",
    ];
    page(
        "Inbox",
        Some(frame),
        html! {
            h1 { "Inbox" }
            form.filters method="get" action="/inbox" {
                label { "Search" input #q name="q" value=(f.q) placeholder="case ref, id, name, plate, text"; }
                label { "Partner" input name="partner" value=(f.partner) size="10"; }
                label { "Case" input name="case" value=(f.case) size="14"; }
                label { "Type" select name="type" {
                    option value="" { "any" }
                    @for t in types { option value=(t) selected[f.packet_type == t] { (t) } }
                } }
                label { input type="checkbox" name="unread" value="1" checked[f.unread]; "unread" }
                label { input type="checkbox" name="flash" value="1" checked[f.flash]; "FLASH" }
                label { input type="checkbox" name="overdue" value="1" checked[f.overdue]; "overdue" }
                button #search type="submit" { "Filter" }
            }
            p.muted #total { (total) " packet(s)" @if total > per_page { ", page " (page_no + 1) } }
            table.inbox {
                thead { tr { th { "Priority" } th { "Type" } th { "Case" } th { "Summary" } th { "Markings" } th { "From" } th { "Received" } th { "Deadline" } } }
                tbody { @for (r, d) in rows { (row(r, d.as_deref())) } }
            }
            div.pager {
                @if let Some(p) = prev { a href=(p) { "← newer" } }
                @if let Some(n) = next { a href=(n) { "older →" } }
            }
        },
    )
}

/// The markings banner of a packet, on top of its view.
pub fn banner(p: &Packet) -> Markup {
    let e = &p.envelope;
    html! {
        (banner_of(e.classification, e.tlp, &e.handling, e.grading))
    }
}

/// The markings banner: the badges, then each marking in words (what each handling code means,
/// the H3 restriction).
pub fn banner_of(
    classification: Classification,
    tlp: Option<Tlp>,
    handling: &Handling,
    grading: Option<Grading>,
) -> Markup {
    let classified = !matches!(classification, Classification::Unclassified);
    html! {
        section.banner.classified[classified] #markings {
            div { (markings(classification, tlp, handling, grading)) }
            dl {
                dt { "Classification" } dd { (wire(&classification)) }
                @if let Some(t) = tlp { dt { "TLP" } dd { (wire(&t)) } }
                @for c in &handling.codes { dt { (wire(c)) } dd { (c.meaning()) } }
                @if let Some(h3) = &handling.h3_text { dt { "H3 restriction" } dd { (h3) } }
                @if let Some(g) = grading { dt { "Grading" } dd { (g.to_string()) " (source reliability / information accuracy)" } }
            }
        }
    }
}

/// Where a deadline stands, in words.
pub fn due_words(d: &crate::deadlines::Due) -> String {
    use crate::deadlines::Due;
    let hours = |ms: u64| format!("{:.1} h", ms as f64 / 3_600_000.0);
    match d {
        Due::Answered { late: true } => "answered late".into(),
        Due::Answered { late: false } => "answered on time".into(),
        Due::Paused => "paused: clarification asked".into(),
        Due::Overdue { by } => format!("OVERDUE by {}", hours(*by)),
        Due::DueSoon { left } => format!("due soon: {} left", hours(*left)),
        Due::Open { left } => format!("{} left", hours(*left)),
    }
}

fn label(key: &str) -> String {
    let mut s = key.replace('_', " ");
    if let Some(first) = s.get(0..1) {
        let up = first.to_uppercase();
        s.replace_range(0..1, &up);
    }
    s
}

/// A packet body as readable sections (the variant naming the type is the page's title).
pub fn body(v: &Value) -> Markup {
    match v {
        Value::Object(o) if o.len() == 1 => value(o.values().next().unwrap_or(v)),
        other => value(other),
    }
}

/// A JSON value as readable sections: objects as field lists, lists as items, entities (a
/// one-key object naming their kind) as cards. Text is only ever text.
pub fn value(v: &Value) -> Markup {
    match v {
        Value::Object(o) if o.len() == 1 && o.values().all(Value::is_object) => {
            let (kind, inner) = o.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", v));
            html! { div.card { h4 { (label(kind)) } (value(inner)) } }
        }
        Value::Object(o) => html! {
            dl.fields { @for (k, x) in o { dt { (label(k)) } dd { (value(x)) } } }
        },
        Value::Array(a) if a.is_empty() => html! { span.muted { "none" } },
        Value::Array(a) => html! { ol { @for x in a { li { (value(x)) } } } },
        Value::String(s) => html! { (s) },
        Value::Null => html! { span.muted { "—" } },
        other => html! { (other.to_string()) },
    }
}

/// Nothing to show (also what an account outside its scope is told).
pub fn not_found(frame: &Frame<'_>) -> Markup {
    page("Not found", Some(frame), html! { h1 { "Not found" } p { "No such packet in your inbox." } })
}

/// An error in words.
pub fn error(frame: Option<&Frame<'_>>, message: &str) -> Markup {
    page(
        "Error",
        frame,
        html! { h1 { "Cannot do that" } p.error { (message) } p { a href="/inbox" { "Back to the inbox" } } },
    )
}
