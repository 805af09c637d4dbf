//! The inbox as officers look at it: one row per received packet (not the system packets,
//! which are states of the packets they concern), with what a listing shows — priority, type,
//! case reference, a one-line summary, markings, sender, received — and what a search looks
//! in: ids, the case reference, the names and identifiers of every entity, the free text of
//! the summary and purpose. No I/O: the node fills it from the store at start and as packets
//! arrive, and the web workspace reads pages of it.
//!
//! Rows are kept newest first. A search walks every row's lower-case search text (at 100,000
//! packets a few megabytes, scanned in milliseconds: `benches/inbox.rs`); filters that need no
//! text go first.

use std::collections::HashMap;

use crate::delivery::Millis;
use crate::ids::{CaseRef, NodeId, PacketId};
use crate::markings::{Classification, Grading, Handling, Priority, Tlp};
use crate::packet::{Body, Packet, PacketType};
use crate::timestamp::Timestamp;

/// Longest summary kept for a row.
pub const SUMMARY_CHARS: usize = 160;

/// One received packet in the listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The packet as stored here (for a packet passed on: the forward's own id).
    pub id: PacketId,
    /// For a packet passed on: the id of the packet it carries.
    pub original: Option<PacketId>,
    /// The partner that sent it.
    pub from: NodeId,
    /// Its originator (another node for a packet passed on).
    pub originator: NodeId,
    /// Its type (for a forward: the type it carries).
    pub packet_type: PacketType,
    /// Its priority.
    pub priority: Priority,
    /// Its case reference.
    pub case_ref: Option<CaseRef>,
    /// One line saying what it is about.
    pub summary: String,
    /// Its classification.
    pub classification: Classification,
    /// Its TLP marking.
    pub tlp: Option<Tlp>,
    /// Its handling codes.
    pub handling: Handling,
    /// Its grading as a whole.
    pub grading: Option<Grading>,
    /// When it was stored here.
    pub received_at: Millis,
    /// The packet it answers.
    pub in_reply_to: Option<PacketId>,
    /// When the sender wants an answer.
    pub due_by: Option<Timestamp>,
    /// Acknowledged by at least one officer here.
    pub read: bool,
    /// What a search looks in, lower case.
    text: String,
}

impl Row {
    /// The row of `packet` (as its originator signed it), stored as `id` (a forward's own id:
    /// the packet it carries is shown) from `from` at `received_at`.
    pub fn of(packet: &Packet, id: PacketId, from: NodeId, received_at: Millis, read: bool) -> Self {
        let e = &packet.envelope;
        let summary = clip(&summary_of(packet), SUMMARY_CHARS);
        let mut text = format!("{id} {} {} {} ", e.id, e.case_ref.as_ref().map_or("", |c| c.as_str()), summary);
        for part in [e.purpose.as_deref(), e.legal_basis.as_deref(), e.originator.officer.as_ref().map(|o| o.as_str())]
        {
            text.push_str(part.unwrap_or(""));
            text.push(' ');
        }
        // Every string of the body: entity names and identifiers, places, vehicles, questions.
        if let Ok(body) = serde_json::to_value(&packet.body) {
            strings_of(&body, &mut text);
        }
        Self {
            id,
            original: (id != e.id).then_some(e.id),
            from,
            originator: e.originator.node,
            packet_type: packet.packet_type(),
            priority: e.priority,
            case_ref: e.case_ref.clone(),
            summary,
            classification: e.classification,
            tlp: e.tlp,
            handling: e.handling.clone(),
            grading: e.grading,
            received_at,
            in_reply_to: e.in_reply_to,
            due_by: e.due_by,
            read,
            text: text.to_lowercase(),
        }
    }

    /// Whether every word of `terms` (lower case, split on spaces) is in the row's search text.
    pub fn matches(&self, terms: &[String]) -> bool {
        terms.iter().all(|t| self.text.contains(t.as_str()))
    }
}

/// Whether packets of this type are inbox items (system packets and consents are shown as
/// states of the packets they concern).
pub fn listed(t: PacketType) -> bool {
    !t.is_system() && t != PacketType::OnwardConsent
}

fn strings_of(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) if s.len() <= 1024 => {
            out.push_str(s);
            out.push(' ');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings_of(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings_of(x, out)),
        _ => {}
    }
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        return one_line;
    }
    let mut out: String = one_line.chars().take(n - 1).collect();
    out.push('…');
    out
}

/// One line saying what a packet is about, from its body.
pub fn summary_of(packet: &Packet) -> String {
    match &packet.body {
        Body::ControlledDeliveryAlert(a) => {
            let route = a.route.first().map(|l| l.from.as_str()).unwrap_or("");
            let to = a.route.last().map(|l| l.to.as_str()).unwrap_or("");
            format!(
                "{} {} {}: {} via {} ({} → {})",
                a.consignment.quantity,
                wire(&a.consignment.unit),
                a.consignment.description,
                a.consignment.packaging,
                a.transport.identifiers.join(", "),
                route,
                to
            )
        }
        Body::ControlledDeliveryDecision(d) => {
            let what = match d.decision {
                crate::packet::DeliveryDecision::Authorised => "controlled delivery AUTHORISED".to_owned(),
                crate::packet::DeliveryDecision::Conditions => {
                    format!("controlled delivery authorised ON CONDITIONS: {}", d.conditions.join("; "))
                }
                crate::packet::DeliveryDecision::Declined => "controlled delivery DECLINED".to_owned(),
            };
            format!("{what} ({})", d.authorising_authority.name)
        }
        Body::JitNotice(j) => format!("{} ({} to {})", j.name, j.start, j.end),
        Body::InformationRequest(r) => r.subject.clone(),
        Body::InformationResponse(r) => r.summary.clone(),
        Body::Refusal(r) => r.explanation.clone(),
        Body::DelayNotice(d) => format!("answer now due {}: {}", d.new_due_by, d.reason),
        Body::ClarificationRequest(c) => c.questions.join(" "),
        Body::OnwardConsent(c) => format!("consent to pass {} on", c.packet_id),
        Body::Forward(_) => "packet passed on".into(),
        Body::DeliveryReceipt(_) | Body::ReadAck(_) | Body::KeyAnnouncement(_) => packet.packet_type().as_str().into(),
    }
}

/// A value's name on the wire (`kg`, `EU_RESTRICTED`).
pub fn wire<T: serde::Serialize>(x: &T) -> String {
    match serde_json::to_value(x) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => String::new(),
    }
}

/// A packet this node's officers sent, as the sent listing shows it: what it is (from the
/// packet as submitted, before any recipient's redactions) and what each recipient's policy
/// decided. Written with the packet's copies at submit ([`crate::store::Tree::Submissions`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentRecord {
    /// The packet.
    pub id: PacketId,
    /// When it was submitted (ms).
    pub at: Millis,
    /// Its type.
    pub packet_type: PacketType,
    /// Its priority.
    pub priority: Priority,
    /// Its case reference.
    pub case_ref: Option<CaseRef>,
    /// One line saying what it is about.
    pub summary: String,
    /// Its classification.
    pub classification: Classification,
    /// Its TLP marking.
    pub tlp: Option<Tlp>,
    /// Its handling codes.
    pub handling: Handling,
    /// Its grading.
    pub grading: Option<Grading>,
    /// The officer who wrote it.
    pub officer: Option<crate::ids::OfficerId>,
    /// The packet it answers.
    pub in_reply_to: Option<PacketId>,
    /// When the answer is due, for a request.
    pub due_by: Option<Timestamp>,
    /// Each recipient's policy decision: allowed, allowed with these fields removed, refused by
    /// this rule.
    pub decisions: Vec<crate::audit::Decided>,
}

impl SentRecord {
    /// The record of `packet` submitted at `at`, with its recipients' decisions.
    pub fn of(packet: &Packet, at: Millis, decisions: Vec<crate::audit::Decided>) -> Self {
        let e = &packet.envelope;
        Self {
            id: e.id,
            at,
            packet_type: packet.packet_type(),
            priority: e.priority,
            case_ref: e.case_ref.clone(),
            summary: clip(&summary_of(packet), SUMMARY_CHARS),
            classification: e.classification,
            tlp: e.tlp,
            handling: e.handling.clone(),
            grading: e.grading,
            officer: e.originator.officer.clone(),
            in_reply_to: e.in_reply_to,
            due_by: e.due_by,
            decisions,
        }
    }
}

/// The markings as labels, most important first: `EU_RESTRICTED`, `TLP:RED`, `H0`, `H2`, `B2`.
pub fn marking_labels(
    classification: Classification,
    tlp: Option<Tlp>,
    handling: &Handling,
    grading: Option<Grading>,
) -> Vec<String> {
    let mut labels = vec![wire(&classification)];
    if let Some(t) = tlp {
        labels.push(format!("TLP:{}", wire(&t)));
    }
    labels.extend(handling.codes.iter().map(wire));
    if let Some(g) = grading {
        labels.push(g.to_string());
    }
    labels
}

/// What an officer asks of the inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only packets nobody here acknowledged.
    pub unread: bool,
    /// Only FLASH packets.
    pub flash: bool,
    /// Only from this partner.
    pub partner: Option<NodeId>,
    /// Only with this case reference.
    pub case: Option<String>,
    /// Only of this type.
    pub packet_type: Option<PacketType>,
    /// Only these packets (the overdue ones, say).
    pub only: Option<std::collections::HashSet<(PacketId, NodeId)>>,
    /// Words that must all appear (ids, case reference, entity names and identifiers, text).
    pub text: String,
}

impl Query {
    fn terms(&self) -> Vec<String> {
        self.text.split_whitespace().take(16).map(str::to_lowercase).collect()
    }
}

/// A page of rows and how many rows matched in all.
#[derive(Debug, Clone)]
pub struct Page {
    /// The rows of the page, newest first.
    pub rows: Vec<Row>,
    /// Rows that matched.
    pub total: usize,
    /// Rows unread in what the account may see (for the counter).
    pub unread: usize,
}

/// Every received packet's row.
#[derive(Debug, Default)]
pub struct Catalogue {
    /// Oldest first (new rows are pushed); pages read it backwards.
    rows: Vec<Row>,
    at: HashMap<(PacketId, NodeId), usize>,
}

impl Catalogue {
    /// Adds a row (a packet already listed is left as it is).
    pub fn add(&mut self, row: Row) {
        self.extend([row]);
    }

    /// Adds many rows at once (a start, or the arrivals since the last read), keeping the order
    /// by received time; a packet already listed is left as it is.
    pub fn extend(&mut self, rows: impl IntoIterator<Item = Row>) {
        let before = self.rows.len();
        let mut in_order = true;
        for row in rows {
            if let std::collections::hash_map::Entry::Vacant(v) = self.at.entry((row.id, row.from)) {
                in_order &= self.rows.last().is_none_or(|last| last.received_at <= row.received_at);
                v.insert(self.rows.len());
                self.rows.push(row);
            }
        }
        if !in_order && self.rows.len() > before {
            // Stable: rows of one time keep the order they came in.
            self.rows.sort_by_key(|r| r.received_at);
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.at = self.rows.iter().enumerate().map(|(i, r)| ((r.id, r.from), i)).collect();
    }

    /// Removes packets' rows (retention deleted them).
    pub fn remove(&mut self, gone: &std::collections::HashSet<(PacketId, NodeId)>) {
        if gone.iter().any(|k| self.at.contains_key(k)) {
            self.rows.retain(|r| !gone.contains(&(r.id, r.from)));
            self.reindex();
        }
    }

    /// Marks a packet acknowledged.
    pub fn mark_read(&mut self, id: PacketId, from: &NodeId) {
        if let Some(&i) = self.at.get(&(id, *from)) {
            self.rows[i].read = true;
        }
    }

    /// A packet's row.
    pub fn row(&self, id: PacketId, from: &NodeId) -> Option<&Row> {
        self.at.get(&(id, *from)).map(|&i| &self.rows[i])
    }

    /// Every row, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows matching `q` that `visible` lets the reader see, newest first: `limit` of them
    /// after skipping `offset`.
    pub fn page(&self, q: &Query, visible: impl Fn(&Row) -> bool, offset: usize, limit: usize) -> Page {
        let terms = q.terms();
        let case = q.case.as_ref().map(|c| c.trim().to_lowercase());
        let mut rows = Vec::new();
        let (mut total, mut unread) = (0, 0);
        for r in self.rows.iter().rev() {
            if !visible(r) {
                continue;
            }
            if !r.read {
                unread += 1;
            }
            let keep = (!q.unread || !r.read)
                && (!q.flash || r.priority == Priority::Flash)
                && q.partner.is_none_or(|p| r.from == p || r.originator == p)
                && q.packet_type.is_none_or(|t| r.packet_type == t)
                && case.as_ref().is_none_or(|c| r.case_ref.as_ref().is_some_and(|x| x.as_str().to_lowercase() == *c))
                && q.only.as_ref().is_none_or(|o| o.contains(&(r.id, r.from)))
                && r.matches(&terms);
            if keep {
                if total >= offset && rows.len() < limit {
                    rows.push(r.clone());
                }
                total += 1;
            }
        }
        Page { rows, total, unread }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Packet {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples").join(name);
        Packet::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn rows_carry_markings_summary_and_searchable_entities() {
        let p = example("information-request.json");
        let row = Row::of(&p, p.envelope.id, "IT-DCSA".parse().unwrap(), 5, false);
        assert_eq!(row.case_ref, p.envelope.case_ref);
        assert!(!row.summary.is_empty() && row.summary.chars().count() <= SUMMARY_CHARS);
        let mut c = Catalogue::default();
        c.add(row.clone());
        c.add(row.clone());
        assert_eq!(c.len(), 1, "a packet is listed once");
        let all = |_: &Row| true;
        let by = |text: &str| c.page(&Query { text: text.into(), ..Query::default() }, all, 0, 10).total;
        assert_eq!(by(&p.envelope.id.to_string()), 1);
        assert_eq!(by(p.envelope.case_ref.as_ref().unwrap().as_str()), 1);
        assert_eq!(by("no such thing anywhere"), 0);
        assert_eq!(c.page(&Query::default(), |_| false, 0, 10).total, 0, "scope hides it");
        c.mark_read(p.envelope.id, &"IT-DCSA".parse().unwrap());
        assert_eq!(c.page(&Query { unread: true, ..Query::default() }, all, 0, 10).total, 0);
    }
}
