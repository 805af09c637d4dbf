//! `liaison inbox` and `liaison show`: the inbox with the web workspace's columns and filters,
//! and one packet with its markings first, then its envelope and body as readable text
//! (`--json` for machines).

use std::io::Write as _;

use serde_json::Value;

use super::{called, client, due_text, join, print_json, reads_text, ApiArgs, CliError};
use crate::ids::{NodeId, PacketId};

/// What `inbox` lists: the web inbox's filters.
#[derive(Debug, Default, clap::Args)]
pub(super) struct InboxFilter {
    /// Only packets nobody here acknowledged.
    #[arg(long)]
    unread: bool,
    /// Only FLASH packets.
    #[arg(long)]
    flash: bool,
    /// Only from this partner (sender or originator).
    #[arg(long)]
    partner: Option<NodeId>,
    /// Only with this case reference.
    #[arg(long)]
    case: Option<String>,
    /// Only of this type (InformationRequest, ControlledDeliveryAlert...).
    #[arg(long = "type")]
    packet_type: Option<String>,
    /// Only requests this node answers late.
    #[arg(long)]
    overdue: bool,
    /// Words that must all appear: ids, case reference, names and identifiers of entities, text.
    #[arg(long)]
    search: Option<String>,
    /// Everything stored, system packets (receipts, acknowledgements, consents, key
    /// announcements) included; the filters do not apply.
    #[arg(long)]
    system: bool,
}

impl InboxFilter {
    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, on) in
            [("unread", self.unread), ("flash", self.flash), ("overdue", self.overdue), ("system", self.system)]
        {
            if on {
                q.push(format!("{k}=1"));
            }
        }
        if let Some(p) = &self.partner {
            q.push(format!("partner={p}"));
        }
        for (k, v) in [("case", &self.case), ("type", &self.packet_type), ("q", &self.search)] {
            if let Some(v) = v {
                q.push(format!("{k}={}", crate::encoding::percent(v)));
            }
        }
        q.join("&")
    }
}

pub(super) fn inbox(api: &ApiArgs, filter: &InboxFilter, watch: bool) -> Result<(), CliError> {
    let client = client(api)?;
    let mut seen = std::collections::HashSet::new();
    let query = filter.query();
    if !api.json {
        println!(
            "{:<7}  {:<23}  {:<22}  {:<40}  {:<30}  {:<9}  {:<20}  id, deadline, read",
            "prio", "type", "case", "summary", "markings", "from", "received"
        );
    }
    loop {
        for p in called(client.inbox_where(&query))? {
            // A packet is its id and its sender (two partners may have used one id).
            if !seen.insert((p.id, p.from)) {
                continue;
            }
            if api.json {
                print_json(&p);
                continue;
            }
            let (case, summary, marks) = match &p.listing {
                Some(l) => (
                    l.case_ref.as_ref().map_or("-", |c| c.as_str()).to_owned(),
                    clip(&l.summary, 40),
                    markings_line(l.classification, l.tlp, &l.handling, l.grading),
                ),
                None => ("-".into(), "(system packet)".into(), String::new()),
            };
            let mut line = format!(
                "{:<7}  {:<23}  {:<22}  {:<40}  {:<30}  {:<9}  {:<20}  {}",
                p.priority.as_str(),
                p.packet_type.to_string(),
                case,
                summary,
                marks,
                p.from.as_str(),
                p.received_at.to_string(),
                p.id
            );
            if let Some(d) = &p.deadline {
                line += &format!("  answer due {} {}", d.due_by, due_text(&d.due));
                if let Some(theirs) = d.sender_due_by.filter(|t| *t != d.due_by) {
                    line += &format!(" (the requester expects it by {theirs})");
                }
            }
            line += &if p.reads.is_empty() {
                "  UNREAD".to_owned()
            } else {
                format!("  read by {}", p.reads.iter().map(|r| r.officer.as_str()).collect::<Vec<_>>().join(", "))
            };
            if !p.also_from.is_empty() {
                line += &format!("  SUSPICIOUS: same id as a packet from {} (--from {})", join(&p.also_from), p.from);
            }
            println!("{line}");
        }
        if !watch {
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Text cut to `n` characters on one line.
fn clip(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        return one;
    }
    one.chars().take(n - 1).chain(std::iter::once('…')).collect()
}

/// Markings on one line: `EU_RESTRICTED TLP:RED H0 H2 B2`.
fn markings_line(
    classification: crate::markings::Classification,
    tlp: Option<crate::markings::Tlp>,
    handling: &crate::markings::Handling,
    grading: Option<crate::markings::Grading>,
) -> String {
    crate::catalogue::marking_labels(classification, tlp, handling, grading).join(" ")
}

/// One received packet: the markings first (each handling code explained), the envelope, the
/// body as indented text, who acknowledged it.
pub(super) fn show(api: &ApiArgs, from: Option<&NodeId>, id: PacketId) -> Result<(), CliError> {
    let c = client(api)?;
    let v = match c.show(id, from) {
        // Not received: one this node's officers sent?
        Err(crate::client::CallError::Api { status: 404, .. }) if from.is_none() => match c.sent(id) {
            Ok(sent) => return show_sent(api, &sent),
            Err(crate::client::CallError::Api { status: 404, .. }) => {
                return Err(CliError::Rejected(format!("{id}: neither received nor sent by this node")))
            }
            Err(e) => return called(Err(e)),
        },
        other => called(other)?,
    };
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let e = &v.packet.envelope;
    print!("{}", markings_block(e.classification, e.tlp, &e.handling, e.grading));
    println!();
    println!(
        "{} {}  {}",
        e.priority.as_str(),
        v.packet.packet_type(),
        e.case_ref.as_ref().map_or("(no case reference)", |c| c.as_str())
    );
    let field = |k: &str, v: &str| println!("  {k:<14} {v}");
    field("packet", &e.id.to_string());
    let officer = e.originator.officer.as_ref().map(|o| format!(", {o}")).unwrap_or_default();
    field("from", &format!("{}{officer}", e.originator.node));
    if v.from != e.originator.node {
        field("passed on by", v.from.as_str());
    }
    field("created", &e.created.to_string());
    field("received", &v.received_at.to_string());
    field("expires", &e.expires.to_string());
    if let Some(u) = &e.urgency_reason {
        field("urgency", &crate::catalogue::wire(u));
    }
    if let Some(d) = e.due_by {
        field("answer due", &d.to_string());
    }
    if let Some(l) = &e.legal_basis {
        field("legal basis", l);
    }
    if let Some(p) = &e.purpose {
        field("purpose", p);
    }
    if let Some(r) = e.in_reply_to {
        field("in reply to", &r.to_string());
    }
    if !e.related.is_empty() {
        field("related", &e.related.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    field("language", e.language.as_str());
    field("sealed", &v.sealed_digest.to_string());
    if !v.also_from.is_empty() {
        println!(
            "SUSPICIOUS: {} also sent a packet with this id; check with them which is genuine",
            join(&v.also_from)
        );
    }
    println!();
    let body = serde_json::to_value(&v.packet.body).unwrap_or_default();
    let mut out = String::new();
    match &body {
        Value::Object(o) if o.len() == 1 => text(o.values().next().unwrap_or(&body), 0, &mut out),
        other => text(other, 0, &mut out),
    }
    print!("{out}");
    println!();
    if v.reads.is_empty() {
        println!("not acknowledged here yet");
    } else {
        println!("acknowledged by {}", reads_text(&v.reads));
    }
    Ok(())
}

/// The markings as a block: one line of badges, then what each handling code means.
fn markings_block(
    classification: crate::markings::Classification,
    tlp: Option<crate::markings::Tlp>,
    handling: &crate::markings::Handling,
    grading: Option<crate::markings::Grading>,
) -> String {
    let mut out = format!("{}\n", markings_line(classification, tlp, handling, grading));
    for c in &handling.codes {
        out += &format!("  {:<3} {}\n", crate::catalogue::wire(c), c.meaning());
    }
    if let Some(h3) = &handling.h3_text {
        out += &format!("  H3 restriction: {h3}\n");
    }
    if let Some(g) = grading {
        out += &format!("  {g}  source reliability / information accuracy\n");
    }
    out
}

/// A JSON value as indented text: `key  value` lines, nested values indented below their key,
/// list items numbered, entities under their kind.
fn text(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = k.replace('_', " ");
                match x {
                    Value::Object(_) | Value::Array(_) if !is_empty(x) => {
                        out.push_str(&format!("{pad}{key}\n"));
                        text(x, depth + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}{key:<22} {}\n", scalar(x))),
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                match x {
                    Value::Object(o) if o.len() == 1 && o.values().all(Value::is_object) => {
                        let (kind, inner) = o.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", x));
                        out.push_str(&format!("{pad}{}. {kind}\n", i + 1));
                        text(inner, depth + 1, out);
                    }
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{}.\n", i + 1));
                        text(x, depth + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}{}. {}\n", i + 1, scalar(x))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(_) => "none".into(),
        Value::Object(_) => "-".into(),
        other => other.to_string(),
    }
}

/// A packet this node's officers sent: markings, what each recipient's policy did, delivery,
/// receipt and reads, the deadline, then the packet as sent.
fn show_sent(api: &ApiArgs, v: &crate::api::types::SentView) -> Result<(), CliError> {
    if api.json {
        print_json(v);
        return Ok(());
    }
    let r = &v.record;
    print!("{}", markings_block(r.classification, r.tlp, &r.handling, r.grading));
    println!();
    println!(
        "SENT {} {}  {}",
        r.priority.as_str(),
        r.packet_type,
        r.case_ref.as_ref().map_or("(no case reference)", |c| c.as_str())
    );
    println!("  {:<14} {}", "packet", r.id);
    println!("  {:<14} {}", "summary", r.summary);
    if let Some(o) = &r.officer {
        println!("  {:<14} {o}", "by");
    }
    println!();
    println!("recipients");
    for d in &r.decisions {
        let st = v.status.recipients.iter().find(|s| s.node == d.to);
        let decision = match d.decision {
            crate::audit::DecisionKind::Allow => "sent as written".to_owned(),
            crate::audit::DecisionKind::Redact => {
                format!("sent with {} removed ({})", d.redacted.join(", "), d.rules.join(", "))
            }
            crate::audit::DecisionKind::Deny => format!("REFUSED by {}", d.rules.join(", ")),
        };
        println!("  {:<10} {decision}", d.to.as_str());
        if let Some(st) = st {
            let mut line = format!("             {:?}", st.state).to_lowercase();
            if let Some(at) = st.delivered_at {
                line += &format!(" at {at}");
            }
            if let Some(reason) = &st.reason {
                line += &format!(": {reason}");
            }
            if !st.reads.is_empty() {
                line += &format!("; read by {}", reads_text(&st.reads));
            }
            println!("{line}");
        }
        if let Some(rc) = v.receipts.iter().find(|x| x.recipient == d.to && x.verified) {
            println!(
                "             receipt {} signed by {}",
                rc.receipt_id.map(|i| i.to_string()).unwrap_or_default(),
                rc.signer.as_deref().unwrap_or("")
            );
        }
    }
    for d in &v.status.deadlines {
        println!("answer from {} due {} {}", d.counterpart, d.due_by, due_text(&d.due));
    }
    if let Some(p) = &v.packet {
        println!();
        let body = serde_json::to_value(&p.body).unwrap_or_default();
        let mut out = String::new();
        match &body {
            Value::Object(o) if o.len() == 1 => text(o.values().next().unwrap_or(&body), 0, &mut out),
            other => text(other, 0, &mut out),
        }
        print!("{out}");
    }
    Ok(())
}
