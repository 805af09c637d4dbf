//! The sender's machine for one partner: every decision about sending to it, without I/O.
//!
//! A [`Sender`] owns the partner's outbox entries and everything the node used to decide in its
//! tasks: whether to dial (and when again, with exponential backoff and jitter), which copy goes
//! on which lane next and how many may be written ahead of their receipts (the window), which
//! copy a receipt completes, which copies it shows the receiver dropped, when a lane has waited
//! too long for a receipt, and what goes back to the queue when a lane or the connection fails.
//! The node's peer task only moves bytes: it dials when told, writes the copies it is given,
//! hands back the receipts it reads, and stores what the machine says before telling it the
//! commit is durable ([`Sender::apply_receipt`]) or failed ([`Sender::abandon_receipt`]).
//!
//! Lanes are identified with a generation ([`LaneId`]): a lane that failed or timed out is gone,
//! and whatever its old stream still reports is ignored.

use std::collections::{BTreeMap, HashMap};

use super::outbox::SplitMix64;
use super::{Entry, Millis, Outbox, ReceiptMatch, ReceiptOutcome, RetryPolicy, Transmit};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;

/// Most copies handed to a lane and not yet receipted (written ahead of their receipts).
pub const WINDOW: usize = 256;

/// The lanes, highest first.
pub const LANES: [Priority; 3] = [Priority::Flash, Priority::Urgent, Priority::Routine];

/// One lane stream: its priority and which incarnation of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaneId {
    /// The lane.
    pub priority: Priority,
    /// Bumped each time the lane is opened again.
    pub generation: u64,
}

/// Where the connection to the partner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected; dial when there is something to send, not before `not_before`.
    Down {
        /// End of the reconnect backoff.
        not_before: Millis,
    },
    /// Dialling.
    Connecting,
    /// Connected.
    Up,
}

/// A receipt item as the machine needs it.
#[derive(Debug, Clone)]
pub struct ReceiptItemIn {
    /// The packet.
    pub packet_id: PacketId,
    /// The digest the receiver names.
    pub digest: Digest,
    /// Accepted or rejected.
    pub outcome: ReceiptOutcome,
}

/// Why a receipt is not taken: the lane must be closed (its copies are already queued again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRefused {
    /// The lane is no longer open (it failed or timed out meanwhile).
    #[error("the lane was closed meanwhile")]
    StaleLane,
    /// Not one item answers a copy written on this lane and not yet receipted: not an answer to
    /// what was sent (a partner replaying, inventing or flooding receipts).
    #[error("the receipt completes no copy in flight on this lane")]
    CompletesNothing,
}

/// A receipt taken but not yet in force: the driver stores [`PreparedReceipt::entries`] with
/// the receipt, then calls [`Sender::apply_receipt`] or [`Sender::abandon_receipt`].
#[derive(Debug)]
pub struct PreparedReceipt {
    lane: LaneId,
    /// Entries the receipt completes, as they will be.
    completed: Vec<Entry>,
    /// Copies written before the last one receipted and not receipted themselves: dropped by
    /// the receiver; sent again.
    skipped: Vec<Transmit>,
    /// For every item that answered a copy this lane wrote: which attempt, written when.
    sent: HashMap<PacketId, (u32, Millis)>,
    /// Items naming bytes other than the copy sent.
    mismatched: Vec<PacketId>,
}

impl PreparedReceipt {
    /// The entries to store with the receipt.
    pub fn entries(&self) -> &[Entry] {
        &self.completed
    }

    /// Which attempt of `packet_id` the receipt answered, and when it was written.
    pub fn sent(&self, packet_id: &PacketId) -> Option<(u32, Millis)> {
        self.sent.get(packet_id).copied()
    }

    /// Items naming other bytes than were sent (logged; the copy stays in flight).
    pub fn mismatched(&self) -> &[PacketId] {
        &self.mismatched
    }
}

/// A copy handed to a lane.
#[derive(Debug, Clone)]
struct Held {
    t: Transmit,
    /// Write order on the stream and when, once written.
    written: Option<(u64, Millis)>,
}

#[derive(Debug, Default)]
struct LaneState {
    generation: u64,
    open: bool,
    next_seq: u64,
    /// Ordered by packet id, so that what the machine does with them is the same every run
    /// (the simulation replays a seed exactly).
    copies: BTreeMap<PacketId, Held>,
    /// The last receipt, or the first write with nothing else awaited: the receipt timer runs
    /// from here while written copies wait.
    progress: Millis,
}

impl LaneState {
    fn awaiting(&self) -> bool {
        self.copies.values().any(|h| h.written.is_some())
    }
}

/// How long a connection must stay up to count as working (its dial failures forgotten) when
/// no receipt has come on it yet.
pub const STABLE_AFTER: Millis = 5_000;

/// Why copies to a partner are waiting: what the sender's `status` says beside "queued", so the
/// person who must act knows why (and whether it is on their side or the partner's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The partner cannot be reached: no answer at its address (dialling fails).
    Unreachable,
    /// The partner refuses this node's certificate (it is revoked there, not enrolled there,
    /// or from a CA the partner does not trust: the partner's log names which; a refused
    /// client is not told, by design).
    RefusedByPartner,
    /// The partner's certificate is not from the federation CA this node trusts.
    PartnerCertificateUntrusted,
    /// The partner's certificate has expired (or is not valid yet: a clock is wrong).
    PartnerCertificateExpired,
    /// The partner's certificate is revoked in this node's CRL.
    PartnerCertificateRevoked,
    /// What answers at the partner's address is another node (its certificate names another).
    NotThePartner,
    /// The TLS handshake failed otherwise (no key exchange in common: one side post-quantum
    /// only, the other classic only).
    HandshakeFailed,
    /// The partner's disk is full: it stored nothing of a batch and withheld the receipt (the
    /// stream was reset with [`crate::wire::Reset::StorageFull`]).
    PartnerStorageFull,
    /// The partner could not store a batch for another reason (its store failed).
    PartnerStoreFailed,
    /// The partner's receipt could not be stored here (this node's disk).
    ReceiptNotStored,
    /// The node is no longer a partner (it was removed): its copies stay on disk and go out
    /// if it is enrolled again.
    NotAPartner,
}

impl Problem {
    /// A problem of reaching the partner (dialling), cleared once a connection is up.
    pub fn of_dialling(self) -> bool {
        matches!(
            self,
            Self::Unreachable
                | Self::RefusedByPartner
                | Self::PartnerCertificateUntrusted
                | Self::PartnerCertificateExpired
                | Self::PartnerCertificateRevoked
                | Self::NotThePartner
                | Self::HandshakeFailed
        )
    }

    /// The problem in words, naming the partner.
    pub fn text(self, peer: &NodeId) -> String {
        match self {
            Self::Unreachable => format!("{peer} does not answer at its address (down, or UDP blocked on the way); retrying"),
            Self::RefusedByPartner => format!(
                "{peer} refuses this node's certificate: revoked or not enrolled there, or from a CA it does not trust (its log names which); retrying"
            ),
            Self::PartnerCertificateUntrusted => {
                format!("{peer}'s certificate is not from the federation CA this node trusts; nothing is sent to it; retrying")
            }
            Self::PartnerCertificateExpired => {
                format!("{peer}'s certificate has expired (or a clock is wrong); nothing is sent to it; retrying")
            }
            Self::PartnerCertificateRevoked => {
                format!("{peer}'s certificate is revoked in this node's CRL; nothing is sent to it; retrying")
            }
            Self::NotThePartner => format!(
                "what answers at {peer}'s address is not {peer} (its certificate names another node); nothing is sent to it; retrying"
            ),
            Self::HandshakeFailed => format!(
                "the TLS handshake with {peer} fails (no key exchange in common? see [transport] key_exchange on both sides); retrying"
            ),
            Self::PartnerStorageFull => {
                format!(
                    "{peer}'s disk is full: it stores nothing more and withholds receipts; sent again until it does"
                )
            }
            Self::PartnerStoreFailed => format!("{peer} could not store the copies (a storage error there); retrying"),
            Self::ReceiptNotStored => {
                format!("{peer}'s receipt could not be stored here (this node's disk); the copies are sent again")
            }
            Self::NotAPartner => format!(
                "{peer} is no longer a partner of this node: its copies are kept on disk and go out if it is enrolled again"
            ),
        }
    }
}

/// The sender's machine for one partner.
#[derive(Debug)]
pub struct Sender {
    peer: NodeId,
    retry: RetryPolicy,
    outbox: Outbox,
    lanes: [LaneState; 3],
    link: Link,
    /// Dial failures in a row (a connection the partner closed in its handshake counts as
    /// one: see [`Sender::handle_connected`]).
    failures: u32,
    /// Since when the connection is up.
    up_since: Option<Millis>,
    rng: SplitMix64,
    /// Why copies wait, since when: set by a failure, cleared by the progress that disproves it.
    problem: Option<(Problem, Millis)>,
    /// Copies whose first officer's acknowledgement came since the machine was made.
    first_reads: usize,
    /// While the outbox loads behind the start ([`Sender::begin_loading`]): the packets
    /// admitted meanwhile, which the load leaves out (the copy it read may be older than what
    /// this run did with it since, and let go of once on disk).
    loading: Option<std::collections::HashSet<PacketId>>,
    /// While the outbox loads: acknowledgements stored for copies not loaded yet, merged into
    /// them when they come (the load may have read the copy before the acknowledgement).
    reads_while_loading: HashMap<PacketId, Vec<(OfficerId, Millis)>>,
}

fn slot(p: Priority) -> usize {
    usize::from(p.rank())
}

impl Sender {
    /// A machine for `peer` with no entries. `seed` feeds the jitter of retries and redials.
    pub fn new(peer: NodeId, retry: RetryPolicy, seed: u64) -> Self {
        Self::restore(peer, retry, seed, Vec::new(), 0)
    }

    /// Rebuilds the machine from the partner's persisted pending entries after a restart (what
    /// was in flight is queued again at once; terminal entries stay on disk).
    pub fn restore(peer: NodeId, retry: RetryPolicy, seed: u64, entries: Vec<Entry>, now: Millis) -> Self {
        Self {
            peer,
            retry,
            outbox: Outbox::restore(retry, seed, entries, now),
            lanes: Default::default(),
            link: Link::Down { not_before: now },
            failures: 0,
            up_since: None,
            rng: SplitMix64(seed ^ 0x5EED),
            problem: None,
            first_reads: 0,
            loading: None,
            reads_while_loading: HashMap::new(),
        }
    }

    /// Why copies to the partner wait, and since when (`None` when nothing is known against it).
    pub fn problem(&self) -> Option<(Problem, Millis)> {
        self.problem
    }

    /// Records `problem` (the time of the first of a run of the same problem is kept).
    fn set_problem(&mut self, now: Millis, problem: Problem) {
        if self.problem.map(|(p, _)| p) != Some(problem) {
            self.problem = Some((problem, now));
        }
    }

    /// The partner.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// Where the connection stands.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Adds an entry already persisted; `false` if the (packet, partner) is already known.
    pub fn admit(&mut self, now: Millis, entry: Entry) -> bool {
        if entry.recipient != self.peer {
            return false;
        }
        if let Some(admitted) = &mut self.loading {
            admitted.insert(entry.packet_id);
        }
        self.outbox.admit(now, entry)
    }

    /// `packet_id` is about to be committed for the partner: while the outbox loads, a load
    /// that reads it before it is admitted must leave it out too (the admit follows the
    /// commit, and the copy may be sent, delivered and let go of by then).
    pub fn expect(&mut self, packet_id: PacketId) {
        if let Some(admitted) = &mut self.loading {
            admitted.insert(packet_id);
        }
    }

    /// The persisted entries are to be loaded behind the start ([`Sender::load`]) until
    /// [`Sender::end_loading`].
    pub fn begin_loading(&mut self) {
        self.loading = Some(Default::default());
    }

    /// Adds pending entries read from the store while loading (what was in flight is queued
    /// again; one admitted since the start, or already held, is left out). Returns how many
    /// were added.
    pub fn load(&mut self, now: Millis, entries: Vec<Entry>) -> usize {
        let admitted = self.loading.as_ref();
        let peer = self.peer;
        let fresh: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.recipient == peer && !admitted.is_some_and(|a| a.contains(&e.packet_id)))
            .collect();
        let ids: Vec<PacketId> = fresh.iter().map(|e| e.packet_id).collect();
        let added = self.outbox.load(now, fresh);
        for id in ids {
            for (officer, at) in self.reads_while_loading.remove(&id).unwrap_or_default() {
                self.outbox.add_read(id, &peer, officer, at);
            }
        }
        added
    }

    /// The outbox is loaded.
    pub fn end_loading(&mut self) {
        self.loading = None;
        self.reads_while_loading.clear();
    }

    /// Whether the outbox is still being loaded behind the start.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Whether a copy waits to be sent now.
    pub fn has_ready(&mut self, now: Millis) -> bool {
        !self.outbox.ready_recipients(now).is_empty()
    }

    /// Whether to dial now: something to send, not connected, the backoff over. The link is
    /// then connecting until [`Sender::handle_connected`] or [`Sender::handle_connect_failed`].
    pub fn poll_connect(&mut self, now: Millis) -> bool {
        let due = matches!(self.link, Link::Down { not_before } if now >= not_before);
        if due && self.has_ready(now) {
            self.link = Link::Connecting;
            return true;
        }
        false
    }

    /// The connection is up, as far as this node can tell: in TLS 1.3 the client's handshake
    /// ends before the server has checked the client's certificate, so a partner that refuses
    /// this node closes the connection just after. Hence the dial failures are counted off (and
    /// a refusal forgotten) only once the connection proved itself: a receipt, or
    /// [`STABLE_AFTER`] up. What the handshake did prove (the partner answers, its certificate
    /// is good) is cleared at once.
    pub fn handle_connected(&mut self, now: Millis) {
        self.link = Link::Up;
        self.up_since = Some(now);
        if self.problem.is_some_and(|(p, _)| p.of_dialling() && p != Problem::RefusedByPartner) {
            self.problem = None;
        }
    }

    /// Dialling failed for `why` (a [`Problem::of_dialling`]): the next dial waits an
    /// exponential backoff with jitter (so that nodes that lost a partner together do not
    /// redial it in step). Returns the wait.
    pub fn handle_connect_failed(&mut self, now: Millis, why: Problem) -> Millis {
        self.failures = self.failures.saturating_add(1);
        self.set_problem(now, if why.of_dialling() { why } else { Problem::Unreachable });
        let wait = self.retry.backoff(self.failures, self.rng.next());
        self.link = Link::Down { not_before: now.saturating_add(wait) };
        wait
    }

    /// The connection is gone (closed by the partner, idle, a TLS reload): every lane fails and
    /// its copies go back to the queue; the next dial may follow at once.
    pub fn handle_connection_lost(&mut self, now: Millis) {
        for p in LANES {
            self.fail_lane(now, p);
        }
        self.link = Link::Down { not_before: now };
        if self.up_since.take().is_some_and(|t| now.saturating_sub(t) >= STABLE_AFTER) {
            self.proved();
        }
    }

    /// Whether the connection up since `up_since` is young enough that its closing in the
    /// handshake reads as a refusal (see [`Sender::handle_connected`]).
    pub fn connection_is_new(&self, now: Millis) -> bool {
        self.up_since.is_some_and(|t| now.saturating_sub(t) < STABLE_AFTER)
    }

    /// The link works (a receipt came, or the connection stayed up): dial failures are
    /// counted off, and a refusal by the partner is forgotten.
    fn proved(&mut self) {
        self.failures = 0;
        if self.problem.map(|(p, _)| p) == Some(Problem::RefusedByPartner) {
            self.problem = None;
        }
    }

    /// The next copy to hand to a lane: FLASH first, within each lane's window. The returned
    /// [`LaneId`] says which stream (a new generation: the driver opens a new stream).
    pub fn poll_transmit(&mut self, now: Millis) -> Option<(LaneId, Transmit)> {
        if self.link != Link::Up {
            return None;
        }
        for p in LANES {
            let lane = &self.lanes[slot(p)];
            if lane.copies.len() >= WINDOW {
                continue;
            }
            let Some(t) = self.outbox.poll_transmit_lane(now, &self.peer, p) else { continue };
            let lane = &mut self.lanes[slot(p)];
            if !lane.open {
                lane.open = true;
                lane.generation += 1;
                lane.next_seq = 0;
                lane.progress = now;
            }
            lane.copies.insert(t.packet_id, Held { t: t.clone(), written: None });
            return Some((LaneId { priority: p, generation: lane.generation }, t));
        }
        None
    }

    /// The driver is about to write `t` on `lane`: whether it should. A copy that stopped being
    /// in flight while it waited in the lane (its receipt timer ran out, it expired) is not
    /// written, and its window slot is free again; it comes back through the queue.
    pub fn begin_write(&mut self, now: Millis, lane: LaneId, t: &Transmit) -> bool {
        let in_flight = self.outbox.is_in_flight(t);
        let Some(state) = self.lane_mut(lane) else { return false };
        // The slot is this attempt's only if nothing polled the packet again meanwhile (its
        // receipt timer ran out while it waited, and a later attempt holds the slot now).
        let Some(held) = state.copies.get(&t.packet_id) else { return false };
        if held.t.attempt != t.attempt {
            return false;
        }
        if !in_flight {
            state.copies.remove(&t.packet_id);
            return false;
        }
        if !state.copies.values().any(|h| h.written.is_some()) {
            state.progress = now;
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        if let Some(held) = state.copies.get_mut(&t.packet_id) {
            held.written = Some((seq, now));
        }
        self.outbox.handle_written(now, t);
        true
    }

    /// `t` has been written on `lane` (a large copy takes a while): its receipt, and the
    /// lane's next receipt, are awaited from now.
    pub fn handle_written(&mut self, now: Millis, lane: LaneId, t: &Transmit) {
        if let Some(state) = self.lane_mut(lane) {
            state.progress = state.progress.max(now);
        }
        self.outbox.handle_written(now, t);
    }

    /// A receipt came back on `lane` (verified by the driver: signed by the partner, not a
    /// replay). Works out what it completes without changing anything yet (see
    /// [`PreparedReceipt`]).
    pub fn prepare_receipt(
        &mut self,
        now: Millis,
        lane: LaneId,
        items: &[ReceiptItemIn],
    ) -> Result<PreparedReceipt, ReceiptRefused> {
        let Some(state) = self.lanes.get_mut(slot(lane.priority)) else { return Err(ReceiptRefused::StaleLane) };
        if !state.open || state.generation != lane.generation {
            return Err(ReceiptRefused::StaleLane);
        }
        let mut prepared = PreparedReceipt {
            lane,
            completed: Vec::new(),
            skipped: Vec::new(),
            sent: HashMap::new(),
            mismatched: Vec::new(),
        };
        let mut last = None;
        let mut answered = false;
        for item in items {
            // Only a copy this lane wrote and still waits for can be receipted here: an item
            // about anything else (never sent, sent on another lane, already receipted)
            // changes nothing.
            let Some(Held { t, written: Some((seq, at)) }) = state.copies.get(&item.packet_id).cloned() else {
                continue;
            };
            let (m, will_be) =
                self.outbox.prepare_receipt(now, item.packet_id, &self.peer, item.digest, item.outcome.clone());
            match m {
                ReceiptMatch::DigestMismatch => {
                    // Not the bytes sent: the copy stays in flight and is sent again when its
                    // receipt does not come.
                    prepared.mismatched.push(item.packet_id);
                    continue;
                }
                ReceiptMatch::Completed => {
                    last = last.max(Some(seq));
                    prepared.completed.extend(will_be);
                    #[cfg(test)]
                    if super::plant::is(super::plant::Bug::ApplyReceiptBeforeCommit) {
                        self.outbox.apply_prepared(item.packet_id, &self.peer);
                    }
                }
                ReceiptMatch::Duplicate | ReceiptMatch::Unknown | ReceiptMatch::AfterExpiry => {}
            }
            answered = true;
            state.copies.remove(&item.packet_id);
            prepared.sent.insert(item.packet_id, (t.attempt, at));
        }
        if !answered {
            return Err(ReceiptRefused::CompletesNothing);
        }
        // The stream is ordered: a copy written before the last one receipted here, and not
        // receipted itself, was dropped by the receiver (unreadable) and must be sent again; a
        // copy written after it is still on its way, and its receipt timer restarts.
        if let Some(last) = last {
            let skipped: Vec<PacketId> = state
                .copies
                .iter()
                .filter(|(_, h)| h.written.is_some_and(|(seq, _)| seq < last))
                .map(|(id, _)| *id)
                .collect();
            for id in skipped {
                if let Some(h) = state.copies.remove(&id) {
                    prepared.skipped.push(h.t);
                }
            }
        }
        state.progress = now;
        let waiting: Vec<Transmit> =
            state.copies.values().filter(|h| h.written.is_some()).map(|h| h.t.clone()).collect();
        for t in &waiting {
            self.outbox.handle_written(now, t);
        }
        Ok(prepared)
    }

    /// The prepared receipt is on disk: the entries it completes take their new state, and the
    /// copies it showed dropped go back to the queue.
    pub fn apply_receipt(&mut self, now: Millis, prepared: PreparedReceipt) {
        // The partner stored and receipted, and this node stored its receipt: both sides work.
        // (A FLASH receipt does not show that a partner whose disk is low takes bulk again.)
        let flash = prepared.lane.priority == Priority::Flash;
        if !(flash && self.problem.map(|(p, _)| p) == Some(Problem::PartnerStorageFull)) {
            self.problem = None;
        }
        self.proved();
        for e in &prepared.completed {
            self.outbox.apply_prepared(e.packet_id, &self.peer);
        }
        for t in &prepared.skipped {
            self.outbox.handle_send_failed(now, t.packet_id, &self.peer);
        }
    }

    /// The prepared receipt could not be stored: nothing it said is in force; the lane is
    /// closed and its copies, these among them, are sent again.
    pub fn abandon_receipt(&mut self, now: Millis, prepared: PreparedReceipt) {
        self.set_problem(now, Problem::ReceiptNotStored);
        for e in &prepared.completed {
            self.outbox.abandon_prepared(e.packet_id, &self.peer);
            self.outbox.handle_send_failed(now, e.packet_id, &self.peer);
        }
        for t in &prepared.skipped {
            self.outbox.handle_send_failed(now, t.packet_id, &self.peer);
        }
        self.handle_lane_failed(now, prepared.lane);
    }

    /// The lane's stream failed (or the driver closed it): its copies go back to the queue.
    /// A lane that is already gone is ignored.
    pub fn handle_lane_failed(&mut self, now: Millis, lane: LaneId) {
        if self.lane_mut(lane).is_some() {
            self.fail_lane(now, lane.priority);
        }
    }

    /// The partner reset the lane's stream saying why it stored nothing (`problem`): recorded
    /// for the status, and the lane fails like any other (its copies are sent again after their
    /// backoff; nothing was receipted, so nothing is lost).
    pub fn handle_lane_refused(&mut self, now: Millis, lane: LaneId, problem: Problem) {
        self.set_problem(now, problem);
        self.handle_lane_failed(now, lane);
    }

    /// Time passed: copies whose receipt is overdue or that expired are dealt with, and lanes
    /// that waited `receipt_timeout` for a receipt with copies written are closed (their copies
    /// queued again). Returns those lanes: the driver closes their streams.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<LaneId> {
        self.outbox.handle_timeout(now);
        if self.link == Link::Up && self.up_since.is_some_and(|t| now.saturating_sub(t) >= STABLE_AFTER) {
            self.proved();
        }
        let mut closed = Vec::new();
        for p in LANES {
            let lane = &self.lanes[slot(p)];
            if lane.open && lane.awaiting() && now >= lane.progress.saturating_add(self.retry.receipt_timeout) {
                closed.push(LaneId { priority: p, generation: lane.generation });
                self.fail_lane(now, p);
            }
        }
        closed
    }

    /// When [`Sender::handle_timeout`] (or a dial) is next due, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let lanes = self
            .lanes
            .iter()
            .filter(|l| l.open && l.awaiting())
            .map(|l| l.progress.saturating_add(self.retry.receipt_timeout));
        // Dial when the backoff is over, if a copy is ready then; copies waiting out their own
        // backoff wake the machine through the outbox's timeout, and are ready after it. (Not
        // `pending() > 0`: with only waiting copies, `not_before` passed and `poll_connect`
        // refusing, that was a wake-up in the past at every poll.)
        let ready = LANES.iter().any(|p| self.outbox.ready_in(&self.peer, *p) > 0);
        let dial = match self.link {
            Link::Down { not_before } if ready => Some(not_before),
            _ => None,
        };
        // A connection that stays up proves itself (see `handle_connected`) at this time, if
        // there is anything left to prove (what `proved` clears: after it, no wake-up).
        let unproved = self.failures > 0 || self.problem.map(|(p, _)| p) == Some(Problem::RefusedByPartner);
        let stable = match (self.link, self.up_since) {
            (Link::Up, Some(t)) if unproved => Some(t.saturating_add(STABLE_AFTER)),
            _ => None,
        };
        self.outbox.poll_timeout().into_iter().chain(lanes).chain(dial).chain(stable).min()
    }

    /// Whether `lane` is the lane now open at its priority.
    pub fn is_current(&self, lane: LaneId) -> bool {
        let l = &self.lanes[slot(lane.priority)];
        l.open && l.generation == lane.generation
    }

    /// Copies handed to `lane` and not yet receipted.
    pub fn lane_load(&self, priority: Priority) -> usize {
        self.lanes[slot(priority)].copies.len()
    }

    /// Entries changed since the last call, to persist (see [`Outbox::take_dirty`]).
    pub fn take_dirty(&mut self) -> Vec<Entry> {
        self.outbox.take_dirty()
    }

    /// Entries whose commit failed: persisted again later.
    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = (PacketId, NodeId)>) {
        self.outbox.mark_dirty(keys);
    }

    /// Terminal entries taken by [`Sender::take_dirty`] are on disk (see [`Outbox::committed`],
    /// [`super::terminal_keys`]).
    pub fn committed(&mut self, keys: impl IntoIterator<Item = (PacketId, NodeId)>) {
        self.outbox.committed(keys);
    }

    /// The entry of `packet_id` held in memory: pending, or terminal and not yet on disk. A
    /// terminal entry on disk is read from the store ([`crate::node::sent_entry`]).
    pub fn entry(&self, packet_id: PacketId) -> Option<&Entry> {
        self.outbox.entry(packet_id, &self.peer)
    }

    /// Every entry held in memory.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.outbox.entries()
    }

    /// Copies that left memory delivered, rejected or expired since the machine was made.
    pub fn finished(&self) -> super::outbox::Finished {
        self.outbox.finished()
    }

    /// Copies ready to send now in the lane of `priority`.
    pub fn ready_in(&self, priority: Priority) -> usize {
        self.outbox.ready_in(&self.peer, priority)
    }

    /// How many copies are in each state (see [`Outbox::counts`]).
    pub fn counts(&self) -> super::outbox::Counts {
        self.outbox.counts()
    }

    /// Copies whose first acknowledgement came since the machine was made.
    pub fn first_reads(&self) -> usize {
        self.first_reads
    }

    /// Entries not yet delivered, rejected or expired.
    pub fn pending(&self) -> usize {
        self.outbox.pending()
    }

    /// Drops the entries retention deleted from the store.
    pub fn forget(&mut self, packet_ids: impl IntoIterator<Item = PacketId>) {
        for id in packet_ids {
            self.outbox.forget(id, &self.peer);
        }
    }

    /// An acknowledgement just persisted, put in force (see [`Outbox::add_read`]); `first`:
    /// the copy's first (counted in [`Sender::first_reads`]).
    pub fn add_read(&mut self, packet_id: PacketId, officer: OfficerId, at: Millis, first: bool) {
        self.first_reads += usize::from(first);
        if self.loading.is_some() && self.outbox.entry(packet_id, &self.peer).is_none() {
            self.reads_while_loading.entry(packet_id).or_default().push((officer.clone(), at));
        }
        self.outbox.add_read(packet_id, &self.peer, officer, at);
    }

    fn lane_mut(&mut self, lane: LaneId) -> Option<&mut LaneState> {
        let l = &mut self.lanes[slot(lane.priority)];
        (l.open && l.generation == lane.generation).then_some(l)
    }

    fn fail_lane(&mut self, now: Millis, p: Priority) {
        let lane = &mut self.lanes[slot(p)];
        lane.open = false;
        let copies: Vec<Held> = std::mem::take(&mut lane.copies).into_values().collect();
        for h in copies {
            self.outbox.handle_send_failed(now, h.t.packet_id, &self.peer);
        }
    }
}

/// A receipt read from a lane and verified: what the machine and the store need of it.
#[derive(Debug)]
pub struct OpenedReceipt {
    /// The receipt's own packet id.
    pub id: PacketId,
    /// Its items, as the machine takes them.
    pub items: Vec<ReceiptItemIn>,
    /// Its items as signed (for the audit trail).
    pub signed_items: Vec<crate::packet::ReceiptItem>,
    /// The signed receipt (COSE_Sign1): the evidence.
    pub signed: Vec<u8>,
}

/// Verifies a receipt frame from `peer` like any packet (every check of
/// [`SealContext::open`](crate::seal::SealContext::open) at `now`), and that it is a delivery receipt signed by `peer` about
/// its own deliveries. `already_applied` says whether a receipt with this id was stored
/// before: a replay is refused.
pub fn open_receipt(
    seal: &crate::seal::SealContext,
    peer: &NodeId,
    bytes: &[u8],
    now: crate::timestamp::Timestamp,
    already_applied: impl FnOnce(&PacketId) -> Result<bool, String>,
) -> Result<OpenedReceipt, String> {
    use crate::packet::{Body, ReceiptOutcome as Signed};
    let opened = seal.open(bytes, now).map_err(|e| format!("receipt refused: {e}"))?;
    let Body::DeliveryReceipt(r) = opened.signed.packet.body else {
        return Err("answer is not a delivery receipt".into());
    };
    if opened.route.sender != *peer || r.receiver != *peer {
        return Err("receipt signed by another node".into());
    }
    let id = opened.signed.packet.envelope.id;
    if already_applied(&id)? {
        return Err(format!("receipt {id} was already applied: a replay, refused"));
    }
    let items = r
        .receipts
        .iter()
        .map(|i| ReceiptItemIn {
            packet_id: i.packet_id,
            digest: i.sealed_digest,
            outcome: match &i.outcome {
                Signed::Accepted => ReceiptOutcome::Accepted { received_at: super::millis(i.received_at) },
                Signed::Rejected { code, reason } => {
                    ReceiptOutcome::Rejected { code: code.clone(), reason: reason.clone() }
                }
            },
        })
        .collect();
    Ok(OpenedReceipt { id, items, signed_items: r.receipts, signed: opened.signed.bytes })
}

/// The writes that store a prepared receipt: the entries it completes, the index from each copy
/// to the receipt, the signed receipt itself (the evidence: anyone with the partner's public key
/// can verify it later, without this node's decryption key), other changed entries (`dirty`),
/// and the audit entry.
pub fn receipt_ops(
    peer: &NodeId,
    receipt: &OpenedReceipt,
    prepared: &PreparedReceipt,
    dirty: Vec<Entry>,
) -> Vec<crate::store::Op> {
    use crate::store::{self, pair_key, Op, Tree};
    let mut ops = Vec::new();
    // The signed packets the receipt names, by packet (accepted copies only).
    // The signed packets the receipt names, by the copy (packet and sealed bytes) each item is
    // about: the item that completed an entry names its signed packet, not another item.
    let signed: std::collections::HashSet<(PacketId, Digest, Digest)> = receipt
        .signed_items
        .iter()
        .filter(|i| matches!(i.outcome, crate::packet::ReceiptOutcome::Accepted))
        .filter_map(|i| Some((i.packet_id, i.sealed_digest, i.signed_digest?)))
        .collect();
    for e in prepared.entries() {
        let key = pair_key(e.packet_id, &e.recipient);
        ops.extend(store::entry_write(e));
        ops.push(Op::Put(Tree::ReceiptIndex, pair_key(e.packet_id, peer), receipt.id.as_bytes().to_vec()));
        // Delivered, and the receipt names the signed packet kept in `sent`: the sealed copy
        // proves nothing more and is never sent again. (A receipt without that digest, from a
        // node of an older version, leaves it as the proof of what was delivered.)
        let names_signed = e.signed_digest.is_some_and(|s| signed.contains(&(e.packet_id, e.sealed_digest, s)));
        if names_signed && matches!(e.state, super::EntryState::Delivered { .. }) {
            ops.push(Op::Delete(Tree::Sealed, key));
        }
    }
    if !ops.is_empty() {
        ops.push(Op::Put(Tree::Receipts, receipt.id.as_bytes().to_vec(), receipt.signed.clone()));
    }
    ops.extend(entry_ops(dirty));
    ops.push(Op::Audit(crate::audit::Event::Receipts {
        from: *peer,
        receipt: receipt.id,
        digest: Digest::of(&receipt.signed),
        items: receipt
            .signed_items
            .iter()
            .map(|i| crate::audit::Receipted {
                sent: prepared.sent(&i.packet_id).map(|(attempt, at)| crate::audit::Sent { attempt, at }),
                ..super::receiver::receipted(i)
            })
            .collect(),
    }));
    ops
}

/// The writes that delete what this node kept of copies past their retention (packet ids and
/// outcome keys from [`crate::store::Store::past_retention`]): the entry and its outcome key,
/// the signed packet sent, the sealed copy if it is still there, the link to the receipt, the
/// answer deadline of a request; the officers' acknowledgements (`reads`, keys found by the
/// caller) and receipts no remaining copy needs are the caller's to add. The audit trail keeps
/// that they were sent, delivered and deleted.
pub fn retention_ops(peer: &NodeId, past: &[(PacketId, Vec<u8>)]) -> Vec<crate::store::Op> {
    use crate::store::{pair_key, Op, Tree};
    let mut ops = Vec::with_capacity(past.len() * 6 + 1);
    for (id, outcome) in past {
        let key = pair_key(*id, peer);
        // A terminal entry is not in the `pending` index: the commit that made it terminal took
        // it out.
        for tree in [Tree::Outbox, Tree::Sent, Tree::Sealed, Tree::ReceiptIndex, Tree::Deadlines] {
            ops.push(Op::Delete(tree, key.clone()));
        }
        ops.push(Op::Delete(Tree::Outcomes, outcome.clone()));
    }
    ops
}

/// Store writes for changed outbox entries (from [`Sender::take_dirty`]). In-flight is not
/// worth a flush: after a restart an in-flight entry is queued again anyway, which is exactly
/// what its last persisted (queued) state says. An entry becomes expired once: that is when
/// the expiry is recorded in the audit trail.
pub fn entry_ops(entries: Vec<Entry>) -> Vec<crate::store::Op> {
    use crate::store::{self, Op};
    let mut ops = Vec::new();
    for e in entries {
        match e.state {
            super::EntryState::InFlight { .. } => continue,
            super::EntryState::Expired { .. } => {
                tracing::warn!(packet_id = %e.packet_id, to = %e.recipient, "expired before a receipt came");
                ops.push(Op::Audit(crate::audit::Event::Expired { packet_id: e.packet_id, to: e.recipient }));
            }
            _ => {}
        }
        ops.extend(store::entry_write(&e));
    }
    ops
}

#[cfg(test)]
mod tests;
