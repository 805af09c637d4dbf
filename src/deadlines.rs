//! Answer deadlines of information requests (Directive (EU) 2023/977), without I/O.
//!
//! A request's `due_by` is computed from its urgency when it is made (8 hours, 3 days or 7 days;
//! see [`crate::packet`]). The requested node counts that window from when it stored the request
//! (Directive 2023/977 art. 5 counts from receipt), and shows the requester's `due_by` as what
//! the requester expects: a sender's clock, or a sender that dates its packets, does not set
//! another node's deadline. Each (request, counterpart) pair has one [`Deadline`], on both sides:
//! the requested node must answer ([`Role::Answer`]), the requesting node waits
//! ([`Role::Await`]). The packets exchanged about the request change it:
//!
//! - an `InformationResponse` or a `Refusal` in reply to the request answers it;
//! - a `DelayNotice` in reply to it moves `due_by` to the notice's `new_due_by`;
//! - a `ClarificationRequest` in reply to it pauses the clock; any packet from the requester in
//!   reply to that clarification request resumes it, and `due_by` moves by the time it was
//!   paused.
//!
//! Only the counterpart of a deadline can change it (a third node's "answer" is not one). The
//! node stages every packet it sends or stores ([`Deadlines::stage`]), persists the changes with
//! the packet, puts them in force once they are on disk ([`Deadlines::apply`]), and asks [`Deadline::due`] what to show.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::delivery::{millis, Millis};
use crate::ids::{NodeId, PacketId};
use crate::packet::{Body, Packet};

/// Who owes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This node was asked and must answer.
    Answer,
    /// This node asked and waits for the answer.
    Await,
}

/// The deadline of one request towards one counterpart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// The request.
    pub request: PacketId,
    /// Who owes whom.
    pub role: Role,
    /// The other node.
    pub counterpart: NodeId,
    /// When the answer is due (ms), as moved by delay notices and pauses.
    pub due_by: Millis,
    /// The original window (due_by - created), for "due soon".
    pub window: Millis,
    /// Since when the clock is paused, and by which clarification request.
    pub paused: Option<(Millis, PacketId)>,
    /// The answer (response or refusal) and when it was sent or received.
    pub answered: Option<(PacketId, Millis)>,
    /// The delay notices that moved it, in order.
    pub delays: Vec<PacketId>,
    /// For a request this node received: the deadline the requester stated (`due_by` in its
    /// packet), shown as what it expects. This node's own clock runs from when it stored the
    /// request (`due_by` above): the directive counts from receipt, and a requester must not be
    /// able to shorten or stretch it by dating its packet.
    #[serde(default)]
    pub sender_due_by: Option<Millis>,
    /// The deadline that had already passed when a delay notice moved it (the first one
    /// missed): a missed deadline stays late, whatever was announced after it.
    #[serde(default)]
    pub missed: Option<Millis>,
}

/// Where a deadline stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Due {
    /// Answered, on time or not.
    Answered {
        /// Whether after `due_by`.
        late: bool,
    },
    /// Waiting for clarification; the clock stands still.
    Paused,
    /// Past `due_by` without an answer.
    Overdue {
        /// By how long (ms).
        by: Millis,
    },
    /// Less than a quarter of the window left.
    DueSoon {
        /// Time left (ms).
        left: Millis,
    },
    /// More time left.
    Open {
        /// Time left (ms).
        left: Millis,
    },
}

impl Deadline {
    /// Where it stands at `now`.
    pub fn due(&self, now: Millis) -> Due {
        if let Some((_, at)) = self.answered {
            return Due::Answered { late: at > self.due_by || self.missed.is_some() };
        }
        if self.paused.is_some() {
            return Due::Paused;
        }
        if now > self.due_by {
            return Due::Overdue { by: now - self.due_by };
        }
        let left = self.due_by - now;
        if left.saturating_mul(4) < self.window {
            Due::DueSoon { left }
        } else {
            Due::Open { left }
        }
    }

    /// Whether it is late at `now`: overdue, or missed before a delay notice moved it.
    pub fn late(&self, now: Millis) -> bool {
        self.missed.is_some() || matches!(self.due(now), Due::Overdue { .. })
    }

    /// Whether it still needs someone's attention (not answered).
    pub fn is_open(&self) -> bool {
        self.answered.is_none()
    }
}

/// Whether this node sent the packet or received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Sent by this node to the counterpart.
    Sent,
    /// Received by this node from the counterpart.
    Received,
}

/// Packets a node makes about other packets or itself (receipts, acknowledgements, consents,
/// forwards, key announcements):
/// none of them answers, delays or clarifies a request.
fn node_business(packet: &Packet) -> bool {
    matches!(
        packet.body,
        Body::DeliveryReceipt(_)
            | Body::ReadAck(_)
            | Body::OnwardConsent(_)
            | Body::Forward(_)
            | Body::KeyAnnouncement(_)
    )
}

/// Deadline changes worked out but not yet in force: written with the commit that stores the
/// packets causing them, put in force ([`Deadlines::apply`]) once that commit is on disk.
#[derive(Debug, Default)]
pub struct Staged {
    changed: std::collections::BTreeMap<(PacketId, NodeId), Deadline>,
    /// Clarification requests made (`Some(request)`) or answered (`None`).
    clarifications: HashMap<PacketId, Option<PacketId>>,
}

impl Staged {
    /// The deadlines changed, to persist.
    pub fn changed(&self) -> impl Iterator<Item = &Deadline> {
        self.changed.values()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.clarifications.is_empty()
    }
}

/// All deadlines of a node, by (request, counterpart).
#[derive(Debug, Default)]
pub struct Deadlines {
    by_key: HashMap<(PacketId, NodeId), Deadline>,
    /// The requests that have a deadline.
    requests: std::collections::HashSet<PacketId>,
    /// Clarification request -> the request it is about.
    clarifications: HashMap<PacketId, PacketId>,
}

impl Deadlines {
    /// Rebuilds from persisted deadlines.
    pub fn restore(all: impl IntoIterator<Item = Deadline>) -> Self {
        let mut d = Self::default();
        for x in all {
            if let Some((_, c)) = x.paused {
                d.clarifications.insert(c, x.request);
            }
            d.requests.insert(x.request);
            d.by_key.insert((x.request, x.counterpart), x);
        }
        d
    }

    /// Whether `packet` can change a deadline at all: a request, an answer, a delay notice, a
    /// clarification request, or a reply (to a clarification request). System packets never do:
    /// an officer's acknowledgement of a clarification request is not the clarification. The
    /// node serialises the commits of such packets (see [`Deadlines::stage`]).
    pub fn concerns(packet: &Packet) -> bool {
        match &packet.body {
            Body::InformationRequest(_)
            | Body::InformationResponse(_)
            | Body::Refusal(_)
            | Body::DelayNotice(_)
            | Body::ClarificationRequest(_) => true,
            _ => !node_business(packet) && packet.envelope.in_reply_to.is_some(),
        }
    }

    /// The requests whose deadlines `packet` may change (nothing if it [does not concern
    /// deadlines](Deadlines::concerns)): a request its own; a reply the one it answers and,
    /// for a reply to a clarification request, the request that one is about. Two commits
    /// that stage the same request's deadline must not overlap; the node reserves these ids
    /// from staging to applying.
    ///
    /// A reply can only change a deadline that exists (one is in force before any reply to its
    /// request can be written or received: the request was committed and applied first), so
    /// replies to unknown requests reserve nothing and are group-committed freely.
    pub fn touched(&self, packet: &Packet) -> Vec<PacketId> {
        if !Self::concerns(packet) {
            return Vec::new();
        }
        let mut ids = Vec::new();
        if matches!(packet.body, Body::InformationRequest(_)) {
            ids.push(packet.envelope.id);
        }
        if let Some(to) = packet.envelope.in_reply_to {
            if let Some(request) = self.clarifications.get(&to) {
                ids.extend([to, *request]);
            } else if self.requests.contains(&to) {
                ids.extend([to, packet.envelope.id]);
            }
        }
        ids
    }

    /// What `packet`, sent to or received from `counterpart` at `now`, would do to the
    /// deadlines, on top of what is already in `staged` (earlier packets of the same batch),
    /// without changing anything. The node writes [`Staged::changed`] with the commit that
    /// stores the packet and calls [`Deadlines::apply`] once the store says it is on disk: a
    /// commit that fails leaves the deadlines as they were, and the retransmission stages the
    /// same change again. Two commits touching the same request must not be staged at once
    /// (the node reserves [`Deadlines::touched`] from staging to applying), or one would stage
    /// over a state the other is changing.
    pub fn stage(&self, staged: &mut Staged, packet: &Packet, flow: Flow, counterpart: &NodeId, now: Millis) {
        if node_business(packet) || self.resume(staged, packet, flow, counterpart, now) {
            return;
        }
        let e = &packet.envelope;
        // The role the counterpart's answer would settle: if we receive it, we were waiting.
        let settles = match flow {
            Flow::Sent => Role::Answer,
            Flow::Received => Role::Await,
        };
        match &packet.body {
            Body::InformationRequest(_) => {
                let Some(due) = e.due_by else { return };
                // The window follows from the request's urgency (8 h / 3 d / 7 d: `due_by` is
                // checked to be `created` plus that window).
                let window = millis(due).saturating_sub(millis(e.created));
                let (role, due_by, sender_due_by) = match flow {
                    Flow::Sent => (Role::Await, millis(due), None),
                    // Counted from when this node stored it, whatever the sender's clock says.
                    Flow::Received => (Role::Answer, now.saturating_add(window), Some(millis(due))),
                };
                let key = (e.id, *counterpart);
                if self.current(staged, &key).is_some() {
                    return; // a retransmission
                }
                let d = Deadline {
                    request: e.id,
                    role,
                    counterpart: *counterpart,
                    due_by,
                    window,
                    paused: None,
                    answered: None,
                    delays: Vec::new(),
                    sender_due_by,
                    missed: None,
                };
                staged.changed.insert(key, d);
            }
            Body::InformationResponse(_) | Body::Refusal(_) => {
                self.change(staged, e.in_reply_to, counterpart, settles, |d| {
                    if d.answered.is_none() {
                        d.answered = Some((e.id, now));
                        d.paused = None;
                    }
                });
            }
            Body::DelayNotice(n) => {
                self.change(staged, e.in_reply_to, counterpart, settles, |d| {
                    if d.answered.is_none() && !d.delays.contains(&e.id) {
                        // A notice after the deadline passed does not make it on time (a paused
                        // deadline was missed if it had passed when the pause began). A notice
                        // is judged when this node stores it: the requester's side by when it
                        // arrived, the requested side by when it was sent.
                        let at = d.paused.map_or(now, |(since, _)| since);
                        if d.missed.is_none() && at > d.due_by {
                            d.missed = Some(d.due_by);
                        }
                        d.due_by = millis(n.new_due_by);
                        d.delays.push(e.id);
                    }
                });
            }
            Body::ClarificationRequest(_) => {
                let changed = self.change(staged, e.in_reply_to, counterpart, settles, |d| {
                    if d.answered.is_none() && d.paused.is_none() {
                        d.paused = Some((now, e.id));
                    }
                });
                if let (true, Some(request)) = (changed, e.in_reply_to) {
                    staged.clarifications.insert(e.id, Some(request));
                }
            }
            _ => {}
        }
    }

    /// Puts staged changes in force (their commit is on disk).
    pub fn apply(&mut self, staged: Staged) {
        for (clarification, request) in staged.clarifications {
            match request {
                Some(r) => self.clarifications.insert(clarification, r),
                None => self.clarifications.remove(&clarification),
            };
        }
        self.requests.extend(staged.changed.keys().map(|(r, _)| *r));
        self.by_key.extend(staged.changed);
    }

    /// A reply to one of our clarification requests (or the requester's reply to theirs)
    /// resumes the clock of the request it was about; it comes from the side that asked the
    /// question, so it settles the role opposite to a normal answer. Returns whether the packet
    /// was such a reply (then it does nothing else).
    fn resume(&self, staged: &mut Staged, packet: &Packet, flow: Flow, counterpart: &NodeId, now: Millis) -> bool {
        let Some(clarification) = packet.envelope.in_reply_to else { return false };
        let request = match staged.clarifications.get(&clarification) {
            Some(staged) => *staged,
            None => self.clarifications.get(&clarification).copied(),
        };
        let Some(request) = request else { return false };
        let resumes = match flow {
            Flow::Sent => Role::Await,
            Flow::Received => Role::Answer,
        };
        let changed = self.change(staged, Some(request), counterpart, resumes, |d| {
            if let Some((since, c)) = d.paused {
                if c == clarification {
                    d.due_by = d.due_by.saturating_add(now.saturating_sub(since));
                    d.paused = None;
                }
            }
        });
        if changed {
            staged.clarifications.insert(clarification, None);
        }
        true
    }

    /// The deadline as staged, or as in force.
    fn current(&self, staged: &Staged, key: &(PacketId, NodeId)) -> Option<Deadline> {
        staged.changed.get(key).or_else(|| self.by_key.get(key)).cloned()
    }

    /// Stages `f` applied to the deadline of `request` towards `counterpart` in `role`;
    /// whether that changed it.
    fn change(
        &self,
        staged: &mut Staged,
        request: Option<PacketId>,
        counterpart: &NodeId,
        role: Role,
        f: impl FnOnce(&mut Deadline),
    ) -> bool {
        let Some(request) = request else { return false };
        let key = (request, *counterpart);
        let Some(mut d) = self.current(staged, &key) else { return false };
        if d.role != role {
            return false;
        }
        let before = d.clone();
        f(&mut d);
        if d == before {
            return false;
        }
        staged.changed.insert(key, d);
        true
    }

    /// Forgets the deadline of `request` towards `counterpart` (deleted from the store with the
    /// request, past its retention).
    pub fn forget(&mut self, request: PacketId, counterpart: &NodeId) {
        self.by_key.remove(&(request, *counterpart));
        if !self.by_key.keys().any(|(r, _)| *r == request) {
            self.requests.remove(&request);
        }
        self.clarifications.retain(|_, r| *r != request);
    }

    /// The deadline of `request` towards `counterpart`.
    pub fn get(&self, request: PacketId, counterpart: &NodeId) -> Option<&Deadline> {
        self.by_key.get(&(request, *counterpart))
    }

    /// Every deadline of `request` (one per counterpart).
    pub fn of(&self, request: PacketId) -> Vec<&Deadline> {
        let mut v: Vec<&Deadline> = self.by_key.values().filter(|d| d.request == request).collect();
        v.sort_by_key(|a| a.counterpart);
        v
    }

    /// Open deadlines in `role`, soonest first.
    pub fn open(&self, role: Role) -> Vec<&Deadline> {
        let mut v: Vec<&Deadline> = self.by_key.values().filter(|d| d.role == role && d.is_open()).collect();
        v.sort_by_key(|d| (d.paused.is_some(), d.due_by));
        v
    }

    /// The store key of a deadline.
    pub fn key(d: &Deadline) -> Vec<u8> {
        crate::store::pair_key(d.request, &d.counterpart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Deadlines {
        /// Stages and applies at once (nothing to persist here); the changed deadlines.
        fn on_packet(&mut self, packet: &Packet, flow: Flow, counterpart: &NodeId, now: Millis) -> Vec<Deadline> {
            let mut staged = Staged::default();
            self.stage(&mut staged, packet, flow, counterpart, now);
            let changed = staged.changed().cloned().collect();
            self.apply(staged);
            changed
        }
    }

    const H: Millis = 3_600_000;

    fn example(name: &str) -> Packet {
        let text = match name {
            "request" => include_str!("../schemas/examples/information-request.json"),
            "response" => include_str!("../schemas/examples/information-response.json"),
            "delay" => include_str!("../schemas/examples/delay-notice.json"),
            "clarification" => include_str!("../schemas/examples/clarification-request.json"),
            "refusal" => include_str!("../schemas/examples/refusal.json"),
            other => panic!("{other}"),
        };
        Packet::from_json(text).unwrap()
    }

    fn node(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn reply(name: &str, to: PacketId, id: u8) -> Packet {
        let mut p = example(name);
        p.envelope.in_reply_to = Some(to);
        p.envelope.id = PacketId::from_bytes([id; 16]);
        p
    }

    /// The requested node's clock starts when it stores the request: a backdated request does
    /// not arrive overdue, a future-dated one does not get longer; the requester's own
    /// deadline is kept as what it expects.
    #[test]
    fn a_received_request_is_due_a_window_after_it_was_stored() {
        let request = example("request");
        let created = millis(request.envelope.created);
        let stated = millis(request.envelope.due_by.unwrap());
        let window = stated - created;
        assert_eq!(window, 8 * H, "urgent, direct access");
        let it = node("IT-DCSA");
        for stored in [created + 240 * H, created.saturating_sub(4800 * H), created] {
            let mut d = Deadlines::default();
            let dl = d.on_packet(&request, Flow::Received, &it, stored).remove(0);
            assert_eq!((dl.due_by, dl.window, dl.sender_due_by), (stored + window, window, Some(stated)));
            assert!(matches!(dl.due(stored), Due::Open { .. }), "not overdue on arrival");
        }
        // The requester's side is its own deadline.
        let mut d = Deadlines::default();
        let dl = d.on_packet(&request, Flow::Sent, &it, created + 5).remove(0);
        assert_eq!((dl.due_by, dl.sender_due_by), (stated, None));
    }

    #[test]
    fn answered_delayed_paused_and_overdue() {
        let request = example("request");
        let created = millis(request.envelope.created);
        let due = millis(request.envelope.due_by.unwrap());
        let es = node("ES-UDYCO");
        let mut d = Deadlines::default();
        // The requested side (ES-UDYCO received it from IT-DCSA).
        let it = node("IT-DCSA");
        assert_eq!(d.on_packet(&request, Flow::Received, &it, created).len(), 1);
        assert!(d.on_packet(&request, Flow::Received, &it, created + 5).is_empty(), "a retransmission changes nothing");
        let dl = d.get(request.envelope.id, &it).unwrap().clone();
        assert_eq!((dl.role, dl.due_by, dl.window), (Role::Answer, due, due - created));
        assert!(matches!(dl.due(created), Due::Open { .. }));
        assert!(matches!(dl.due(due - dl.window / 8), Due::DueSoon { .. }));
        assert_eq!(dl.due(due + H), Due::Overdue { by: H });

        // A third node cannot move it; the counterpart's direction matters too.
        assert!(d.on_packet(&reply("delay", request.envelope.id, 1), Flow::Received, &es, created).is_empty());
        assert!(d.on_packet(&reply("delay", request.envelope.id, 1), Flow::Received, &it, created).is_empty());
        // We send a delay notice: due_by moves to its new_due_by.
        let delay = reply("delay", request.envelope.id, 1);
        let Body::DelayNotice(n) = &delay.body else { panic!() };
        let moved = millis(n.new_due_by);
        d.on_packet(&delay, Flow::Sent, &it, created + H);
        assert_eq!(d.get(request.envelope.id, &it).unwrap().due_by, moved);

        // We ask for clarification: paused; the requester answers the clarification 5 h later:
        // resumed, and due_by moved by 5 h.
        let clar = reply("clarification", request.envelope.id, 2);
        d.on_packet(&clar, Flow::Sent, &it, created + 2 * H);
        assert_eq!(d.get(request.envelope.id, &it).unwrap().due(moved + 10 * H), Due::Paused);
        let clarified = reply("request", clar.envelope.id, 3);
        d.on_packet(&clarified, Flow::Received, &it, created + 7 * H);
        let dl = d.get(request.envelope.id, &it).unwrap();
        assert_eq!((dl.paused, dl.due_by), (None, moved + 5 * H));

        // We answer: answered, on time.
        d.on_packet(&reply("response", request.envelope.id, 4), Flow::Sent, &it, created + 8 * H);
        let dl = d.get(request.envelope.id, &it).unwrap();
        assert_eq!(dl.due(created + 1000 * H), Due::Answered { late: false });
        assert!(d.open(Role::Answer).is_empty());

        // The requesting side sees the same from its end, and a late refusal is late.
        let mut r = Deadlines::default();
        r.on_packet(&request, Flow::Sent, &es, created);
        assert_eq!(r.open(Role::Await).len(), 1);
        r.on_packet(&reply("refusal", request.envelope.id, 5), Flow::Received, &es, due + H);
        assert_eq!(r.get(request.envelope.id, &es).unwrap().due(due + 2 * H), Due::Answered { late: true });
    }

    /// A delay notice sent after the deadline passed moves the date, not the fact: the
    /// deadline stays late, and so does the answer, even if it comes before the new date.
    #[test]
    fn a_missed_deadline_stays_late_after_a_delay_notice() {
        let request = example("request");
        let created = millis(request.envelope.created);
        let it = node("IT-DCSA");
        let mut d = Deadlines::default();
        d.on_packet(&request, Flow::Received, &it, created);
        let due = d.get(request.envelope.id, &it).unwrap().due_by;
        let delay = reply("delay", request.envelope.id, 1);
        let Body::DelayNotice(n) = &delay.body else { panic!() };
        let moved = millis(n.new_due_by);
        assert!(moved > due + H, "the example's notice moves it later");
        d.on_packet(&delay, Flow::Sent, &it, due + H);
        let dl = d.get(request.envelope.id, &it).unwrap();
        assert_eq!((dl.due_by, dl.missed), (moved, Some(due)));
        d.on_packet(&reply("response", request.envelope.id, 4), Flow::Sent, &it, moved - H);
        assert_eq!(d.get(request.envelope.id, &it).unwrap().due(moved), Due::Answered { late: true });
        // A notice in time is what it says: not late.
        let mut d = Deadlines::default();
        d.on_packet(&request, Flow::Received, &it, created);
        d.on_packet(&delay, Flow::Sent, &it, created + H);
        assert_eq!(d.get(request.envelope.id, &it).unwrap().missed, None);
    }

    /// Staging changes nothing until applied: a commit that fails leaves the deadlines as they
    /// were, and staging the retransmission gives the same change again.
    #[test]
    fn staged_changes_are_in_force_only_once_applied() {
        let request = example("request");
        let it = node("IT-DCSA");
        let d = Deadlines::default();
        let mut staged = Staged::default();
        d.stage(&mut staged, &request, Flow::Received, &it, 1_000);
        assert_eq!(staged.changed().count(), 1);
        assert!(d.get(request.envelope.id, &it).is_none(), "not in force before the commit");
        // The commit failed; the packet comes again.
        let mut again = Staged::default();
        d.stage(&mut again, &request, Flow::Received, &it, 2_000);
        assert_eq!(again.changed().count(), 1, "staged again, not taken for a retransmission");
        let mut d = d;
        d.apply(again);
        assert!(d.get(request.envelope.id, &it).is_some());
        // Within one batch, later packets see what earlier ones staged.
        let mut d = Deadlines::default();
        let mut batch = Staged::default();
        d.stage(&mut batch, &request, Flow::Received, &it, 1_000);
        d.stage(&mut batch, &reply("clarification", request.envelope.id, 2), Flow::Sent, &it, 2_000);
        d.apply(batch);
        assert_eq!(d.get(request.envelope.id, &it).unwrap().due(3_000), Due::Paused);
    }

    /// An officer's acknowledgement of a clarification request is not the clarification: the
    /// clock stays paused.
    #[test]
    fn a_read_ack_does_not_resume_a_paused_deadline() {
        let request = example("request");
        let it = node("IT-DCSA");
        let mut d = Deadlines::default();
        d.on_packet(&request, Flow::Received, &it, 1_000);
        let clar = reply("clarification", request.envelope.id, 2);
        d.on_packet(&clar, Flow::Sent, &it, 2_000);
        let officer: crate::ids::OfficerId = "Ispettore Rossi".parse().unwrap();
        let ack = Packet::read_ack(
            &it,
            &node("ES-UDYCO"),
            clar.envelope.id,
            crate::markings::Priority::Urgent,
            officer,
            request.envelope.created,
            &mut rand_core::OsRng,
        );
        assert!(!Deadlines::concerns(&ack));
        assert!(d.on_packet(&ack, Flow::Received, &it, 3_000).is_empty());
        assert_eq!(d.get(request.envelope.id, &it).unwrap().due(4_000), Due::Paused);
    }
}
