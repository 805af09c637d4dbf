//! The sender's outbox state machine.

use crate::packet::RejectionCode;
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::Millis;
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::markings::Priority;

/// How retries are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial_backoff: Millis,
    /// Longest delay between attempts.
    pub max_backoff: Millis,
    /// How long to wait for a receipt after sending before trying again.
    pub receipt_timeout: Millis,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial_backoff: 500, max_backoff: 60_000, receipt_timeout: 15_000 }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`: exponential, capped, with jitter in [½, 1].
    pub(super) fn backoff(&self, attempts: u32, jitter: u64) -> Millis {
        let exp = self.initial_backoff.saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
        let base = exp.min(self.max_backoff).max(1);
        base / 2 + jitter % (base / 2 + 1)
    }
}

/// Where one copy of a packet (one recipient) stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting to be sent (first attempt, or a retry after `not_before`).
    Queued {
        /// Not to be sent before this time (backoff).
        not_before: Millis,
    },
    /// Sent; waiting for a receipt until `deadline`.
    InFlight {
        /// When the attempt was made.
        since: Millis,
        /// When to give up waiting and retry.
        deadline: Millis,
    },
    /// A receipt says the recipient stored it.
    Delivered {
        /// The receipt's `received_at`, in ms.
        at: Millis,
        /// The digest the receipt names (equal to the sealed digest).
        digest: Digest,
        /// When this node took the receipt, on its own clock (retention counts from it; absent
        /// in entries stored before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipted: Option<Millis>,
    },
    /// The recipient refused it, with a signed reason.
    Rejected {
        /// When the rejection receipt arrived.
        at: Millis,
        /// The rule or check that refused it.
        code: RejectionCode,
        /// Human-readable reason.
        reason: String,
    },
    /// Its expiry passed before it was delivered.
    Expired {
        /// Its expiry: when it stopped being deliverable (the same however late, or how often
        /// after restarts, the node notices).
        at: Millis,
    },
}

impl Entry {
    /// When retention counts from for a terminal entry (`None` while it is not terminal): the
    /// time of its outcome, on this node's clock. A delivery counts from when this node took
    /// the receipt, or the receiver's claimed time if later, held between the submit and the
    /// expiry (the times this node set): a partner can neither make this node keep a copy for
    /// ever nor drop it before its time.
    pub fn retention_from(&self) -> Option<Millis> {
        let within = |at: Millis| at.clamp(self.submitted, self.expires.max(self.submitted));
        match self.state {
            EntryState::Delivered { at, receipted, .. } => Some(within(at).max(receipted.unwrap_or(0))),
            EntryState::Rejected { at, .. } => Some(within(at)),
            EntryState::Expired { at } => Some(at),
            EntryState::Queued { .. } | EntryState::InFlight { .. } => None,
        }
    }
}

impl EntryState {
    /// Delivered, rejected and expired entries never change state again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Delivered { .. } | Self::Rejected { .. } | Self::Expired { .. })
    }

    /// The state's name, for status output and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::InFlight { .. } => "in_flight",
            Self::Delivered { .. } => "delivered",
            Self::Rejected { .. } => "rejected",
            Self::Expired { .. } => "expired",
        }
    }
}

/// One (packet, recipient) in the outbox. This is what the store persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The packet.
    pub packet_id: PacketId,
    /// The recipient of this copy.
    pub recipient: NodeId,
    /// Its priority lane.
    pub priority: Priority,
    /// Do not deliver after this (ms).
    pub expires: Millis,
    /// SHA-256 of this copy's sealed bytes; the receipt must name it.
    pub sealed_digest: Digest,
    /// SHA-256 of the signed packet the sealed copy carries (kept in
    /// [`crate::store::Tree::Sent`]); a receipt naming it lets the sealed copy go. Absent in
    /// entries of store formats before 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_digest: Option<Digest>,
    /// When it was submitted (ms); orders entries within a lane.
    pub submitted: Millis,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: EntryState,
    /// The officers' acknowledgements (`ReadAck`s) received: who, when; each officer once, at
    /// most [`crate::store::MAX_READS`].
    #[serde(default, alias = "read", deserialize_with = "crate::store::reads")]
    pub reads: Vec<(OfficerId, Millis)>,
}

/// What an officer's acknowledgement from a recipient would do to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAckMatch {
    /// A new officer: recorded.
    New,
    /// This officer's acknowledgement is already recorded.
    Already,
    /// The entry holds as many acknowledgements as it keeps.
    Full,
    /// No copy of that packet was sent to that recipient.
    Unknown,
}

/// What the driver should send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The packet to send (its sealed copy for `recipient` is in the store).
    pub packet_id: PacketId,
    /// To whom.
    pub recipient: NodeId,
    /// Its lane (the stream priority to use).
    pub priority: Priority,
    /// Which attempt this is (1 = first).
    pub attempt: u32,
}

/// What a receipt did to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptMatch {
    /// It completed the entry (delivered or rejected).
    Completed,
    /// The entry was already complete: a duplicate receipt, ignored.
    Duplicate,
    /// No such (packet, recipient) in the outbox.
    Unknown,
    /// The receipt names a digest other than the copy we sent: ignored, the entry stays open.
    DigestMismatch,
    /// The entry expired before the receipt came; the expiry stands but is noted.
    AfterExpiry,
}

type Key = (PacketId, NodeId);

/// Copies that reached a terminal state and left memory since the outbox was made (the node
/// started): what the outbox summary counts beside the entries it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// Delivered.
    pub delivered: usize,
    /// Rejected by the recipient.
    pub rejected: usize,
    /// Expired without a receipt.
    pub expired: usize,
}

/// How many copies an outbox holds in each state, with those that left memory since it was
/// made ([`Outbox::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Waiting to be sent.
    pub queued: usize,
    /// Sent, no receipt yet.
    pub in_flight: usize,
    /// Delivered, rejected or expired: held until on disk, and let go of since.
    pub done: Finished,
}

/// The sender's outbox.
///
/// It holds the entries not yet delivered, rejected or expired, and a terminal one only until
/// its terminal state is on disk ([`Outbox::apply_prepared`], [`Outbox::committed`]): the store
/// is where terminal entries are read from (status, acknowledgements, retention), so memory
/// and a restart grow with what is pending, not with what was ever sent.
#[derive(Debug)]
pub struct Outbox {
    policy: RetryPolicy,
    entries: HashMap<Key, Entry>,
    /// Queued entries whose backoff has not passed: (not_before, key).
    waiting: BTreeSet<(Millis, Key)>,
    /// Queued entries ready to send, per recipient and lane: (submitted, key).
    ready: HashMap<(NodeId, Priority), BTreeSet<(Millis, Key)>>,
    /// In-flight entries by receipt deadline.
    deadlines: BTreeSet<(Millis, Key)>,
    /// Non-terminal entries by expiry.
    expiries: BTreeSet<(Millis, Key)>,
    /// Entries changed since the last `take_dirty`: the driver persists them.
    /// Ordered, so that the writes come out in the same order every run.
    dirty: BTreeSet<Key>,
    /// Entries whose receipt is being committed, with the state they take once it is on disk;
    /// expiry leaves them alone meanwhile.
    prepared: HashMap<Key, EntryState>,
    /// Terminal entries still held (their state not yet on disk): few, and what
    /// [`Outbox::counts`] reads instead of every entry.
    terminal_held: BTreeSet<Key>,
    finished: Finished,
    rng: SplitMix64,
}

impl Outbox {
    /// An empty outbox. `seed` feeds the backoff jitter.
    pub fn new(policy: RetryPolicy, seed: u64) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            waiting: BTreeSet::new(),
            ready: HashMap::new(),
            deadlines: BTreeSet::new(),
            expiries: BTreeSet::new(),
            dirty: BTreeSet::new(),
            prepared: HashMap::new(),
            terminal_held: BTreeSet::new(),
            finished: Finished::default(),
            rng: SplitMix64(seed),
        }
    }

    /// Rebuilds the outbox from persisted entries after a restart. An entry that was in flight
    /// when the node stopped is queued again at once: its receipt may never come. Terminal
    /// entries are left out: they are on disk, and read from there.
    pub fn restore(policy: RetryPolicy, seed: u64, entries: impl IntoIterator<Item = Entry>, now: Millis) -> Self {
        let mut out = Self::new(policy, seed);
        out.load(now, entries);
        out
    }

    /// Adds persisted entries, as [`Outbox::restore`] does (a node loads its outbox behind its
    /// start, a page at a time): terminal ones and ones already held are left out. Returns how
    /// many were added.
    pub fn load(&mut self, now: Millis, entries: impl IntoIterator<Item = Entry>) -> usize {
        let mut added = 0;
        for mut e in entries.into_iter().filter(|e| !e.state.is_terminal()) {
            let k = key(&e);
            if self.entries.contains_key(&k) {
                continue;
            }
            if let EntryState::InFlight { .. } = e.state {
                e.state = EntryState::Queued { not_before: now };
                self.dirty.insert(k);
            }
            self.insert(e);
            added += 1;
        }
        added
    }

    /// Adds one copy of a packet, queued for immediate sending. Submitting the same (packet,
    /// recipient) twice is a no-op that returns `false`. (Tests; the node persists an entry
    /// before it admits it: [`Outbox::new_entry`], then [`Outbox::admit`].)
    #[cfg(test)]
    pub fn submit(
        &mut self,
        now: Millis,
        packet_id: PacketId,
        recipient: NodeId,
        priority: Priority,
        expires: Millis,
        sealed_digest: Digest,
    ) -> bool {
        let e = Self::new_entry(now, packet_id, recipient, priority, expires, sealed_digest);
        let k = key(&e);
        if !self.admit(now, e) {
            return false;
        }
        self.dirty.insert(k);
        true
    }

    /// A new entry (queued at once), not yet added: the driver persists it first
    /// and then calls [`Outbox::admit`], so nothing is sent that is not yet on disk.
    pub fn new_entry(
        now: Millis,
        packet_id: PacketId,
        recipient: NodeId,
        priority: Priority,
        expires: Millis,
        sealed_digest: Digest,
    ) -> Entry {
        Entry {
            packet_id,
            recipient,
            priority,
            expires,
            sealed_digest,
            signed_digest: None,
            submitted: now,
            attempts: 0,
            state: EntryState::Queued { not_before: now },
            reads: Vec::new(),
        }
    }

    /// Adds an entry made by [`Outbox::new_entry`] and already persisted. Returns `false` (and
    /// changes nothing) if the (packet, recipient) is already known.
    pub fn admit(&mut self, now: Millis, e: Entry) -> bool {
        if self.entries.contains_key(&key(&e)) {
            return false;
        }
        self.insert(e);
        self.expire(now);
        true
    }

    /// The next copy to send to `recipient`, FLASH first, oldest first within a lane. Marks it in
    /// flight. (Tests; the sender machine polls lane by lane, each within its window.)
    #[cfg(test)]
    pub fn poll_transmit(&mut self, now: Millis, recipient: &NodeId) -> Option<Transmit> {
        self.poll(now, recipient, None)
    }

    /// The next copy to send to `recipient` on one lane (oldest first), marked in flight: the
    /// sender machine has room in that lane's window but perhaps not in the others'.
    pub fn poll_transmit_lane(&mut self, now: Millis, recipient: &NodeId, lane: Priority) -> Option<Transmit> {
        self.poll(now, recipient, Some(lane))
    }

    fn poll(&mut self, now: Millis, recipient: &NodeId, lane: Option<Priority>) -> Option<Transmit> {
        self.wake(now);
        self.expire(now);
        let lanes = match lane {
            Some(lane) => vec![lane],
            None => vec![Priority::Flash, Priority::Urgent, Priority::Routine],
        };
        let (_, k) =
            lanes.into_iter().find_map(|lane| self.ready.get_mut(&(*recipient, lane)).and_then(BTreeSet::pop_first))?;
        let deadline = now.saturating_add(self.policy.receipt_timeout);
        let e = self.entries.get_mut(&k)?;
        e.attempts = e.attempts.saturating_add(1);
        e.state = EntryState::InFlight { since: now, deadline };
        self.deadlines.insert((deadline, k));
        let t = Transmit { packet_id: e.packet_id, recipient: e.recipient, priority: e.priority, attempt: e.attempts };
        self.dirty.insert(k);
        Some(t)
    }

    /// The copy of `t` has been written to the network, or its connection showed progress: its
    /// receipt is awaited from `now` (a copy can wait in its lane before it is written, and
    /// behind large copies after). Returns `false` if the copy is no
    /// longer in flight for this attempt (it timed out, expired or was receipted meanwhile), in
    /// which case the driver must not write it.
    pub fn handle_written(&mut self, now: Millis, t: &Transmit) -> bool {
        let k = (t.packet_id, t.recipient);
        let Some(e) = self.entries.get_mut(&k) else { return false };
        let EntryState::InFlight { since, deadline } = e.state else { return false };
        if e.attempts != t.attempt {
            return false;
        }
        let new_deadline = now.saturating_add(self.policy.receipt_timeout).max(deadline);
        self.deadlines.remove(&(deadline, k));
        self.deadlines.insert((new_deadline, k));
        e.state = EntryState::InFlight { since, deadline: new_deadline };
        true
    }

    /// Whether `t` is still in flight for its attempt (nothing else happened to it meanwhile).
    pub fn is_in_flight(&self, t: &Transmit) -> bool {
        self.entries
            .get(&(t.packet_id, t.recipient))
            .is_some_and(|e| e.attempts == t.attempt && matches!(e.state, EntryState::InFlight { .. }))
    }

    /// Recipients that have copies ready to send now.
    pub fn ready_recipients(&mut self, now: Millis) -> Vec<NodeId> {
        self.wake(now);
        self.expire(now);
        let mut v: Vec<NodeId> = self.ready.iter().filter(|(_, q)| !q.is_empty()).map(|((n, _), _)| *n).collect();
        v.sort();
        v.dedup();
        v
    }

    /// A send failed (connection lost, stream reset, peer unreachable): retry after backoff.
    pub fn handle_send_failed(&mut self, now: Millis, packet_id: PacketId, recipient: &NodeId) {
        let k = (packet_id, *recipient);
        if matches!(self.entries.get(&k).map(|e| &e.state), Some(EntryState::InFlight { .. })) {
            self.retry_later(now, k);
        }
    }

    /// A verified receipt arrived from `receiver` for `packet_id`: applied at once, the entry
    /// marked dirty (it leaves memory once written: [`Outbox::committed`]). (The node uses
    /// [`Outbox::prepare_receipt`], so that nothing is applied before the receipt is on disk.)
    #[cfg(test)]
    pub fn handle_receipt(
        &mut self,
        now: Millis,
        packet_id: PacketId,
        receiver: &NodeId,
        digest: Digest,
        outcome: ReceiptOutcome,
    ) -> ReceiptMatch {
        let (m, _) = self.prepare_receipt(now, packet_id, receiver, digest, outcome);
        let k = (packet_id, *receiver);
        if let Some(state) = self.prepared.remove(&k) {
            self.set_terminal(k, state);
        }
        m
    }

    /// What a receipt item from `receiver` for `packet_id` does, without doing it yet. For an
    /// item that completes its entry, returns the entry as it will be, for the driver to store
    /// with the receipt; the entry is held (expiry leaves it alone, a second item for it is a
    /// duplicate) until the driver calls [`Outbox::apply_prepared`] once the commit is on disk,
    /// or [`Outbox::abandon_prepared`] if it failed. So memory never shows a copy delivered
    /// whose receipt is not stored.
    pub fn prepare_receipt(
        &mut self,
        now: Millis,
        packet_id: PacketId,
        receiver: &NodeId,
        digest: Digest,
        outcome: ReceiptOutcome,
    ) -> (ReceiptMatch, Option<Entry>) {
        let k = (packet_id, *receiver);
        let Some(e) = self.entries.get(&k) else { return (ReceiptMatch::Unknown, None) };
        if self.prepared.contains_key(&k) {
            return (ReceiptMatch::Duplicate, None);
        }
        match &e.state {
            EntryState::Delivered { .. } | EntryState::Rejected { .. } => return (ReceiptMatch::Duplicate, None),
            EntryState::Expired { .. } => return (ReceiptMatch::AfterExpiry, None),
            EntryState::Queued { .. } | EntryState::InFlight { .. } => {}
        }
        if !e.sealed_digest.ct_eq(&digest) {
            return (ReceiptMatch::DigestMismatch, None);
        }
        let state = match outcome {
            ReceiptOutcome::Accepted { received_at } => {
                EntryState::Delivered { at: received_at, digest, receipted: Some(now) }
            }
            ReceiptOutcome::Rejected { code, reason } => EntryState::Rejected { at: now, code, reason },
        };
        let will_be = Entry { state: state.clone(), ..e.clone() };
        // Written with the receipt, which supersedes any older change not yet written.
        self.dirty.remove(&k);
        self.prepared.insert(k, state);
        (ReceiptMatch::Completed, Some(will_be))
    }

    /// The prepared receipt of `packet_id` at `receiver` is on disk: its entry takes the state
    /// (already persisted with it) and leaves memory.
    pub fn apply_prepared(&mut self, packet_id: PacketId, receiver: &NodeId) {
        let k = (packet_id, *receiver);
        let Some(state) = self.prepared.remove(&k) else { return };
        // Written with the receipt; still dirty only if something else changed it meanwhile
        // (a failed commit before): then it stays until that write is done.
        let was_dirty = self.dirty.contains(&k);
        self.set_terminal(k, state);
        if !was_dirty {
            self.dirty.remove(&k);
            self.retire(k);
        }
    }

    /// Entries taken by [`Outbox::take_dirty`] *in a terminal state* (their keys: see
    /// [`terminal_keys`]) are on disk: they leave memory, unless written again since. (Only a
    /// terminal snapshot puts the terminal state on disk: a copy taken while queued may expire
    /// before that commit is answered, and its expiry is in another commit.)
    pub fn committed(&mut self, keys: impl IntoIterator<Item = (PacketId, NodeId)>) {
        for k in keys {
            if !self.dirty.contains(&k) && !self.prepared.contains_key(&k) {
                self.retire(k);
            }
        }
    }

    /// Copies that left memory in a terminal state since the outbox was made.
    pub fn finished(&self) -> Finished {
        self.finished
    }

    /// Copies of `recipient` ready to send now in the lane of `priority` (not those waiting
    /// out a backoff).
    pub fn ready_in(&self, recipient: &NodeId, priority: Priority) -> usize {
        self.ready.get(&(*recipient, priority)).map_or(0, BTreeSet::len)
    }

    /// How many copies are in each state, without reading every entry (what `/v1/outbox`
    /// shows, under the lock the partner's sending needs): the in-flight ones are those with a
    /// receipt deadline, the queued ones the rest of those with an expiry.
    pub fn counts(&self) -> Counts {
        let mut done = self.finished;
        for k in &self.terminal_held {
            match self.entries.get(k).map(|e| &e.state) {
                Some(EntryState::Delivered { .. }) => done.delivered += 1,
                Some(EntryState::Rejected { .. }) => done.rejected += 1,
                Some(EntryState::Expired { .. }) => done.expired += 1,
                _ => {}
            }
        }
        Counts {
            queued: self.expiries.len().saturating_sub(self.deadlines.len()),
            in_flight: self.deadlines.len(),
            done,
        }
    }

    /// The prepared receipt could not be stored: the entry stays as it was (and is sent again),
    /// and is written again (a change made before the receipt went with its failed commit).
    pub fn abandon_prepared(&mut self, packet_id: PacketId, receiver: &NodeId) {
        let k = (packet_id, *receiver);
        if self.prepared.remove(&k).is_some() {
            self.dirty.insert(k);
        }
    }

    /// What an acknowledgement by `officer` at `receiver` would do to `entry` (the entry as it
    /// stands, perhaps with acknowledgements of the same batch added), without changing anything.
    pub fn read_ack_match(entry: Option<&Entry>, officer: &OfficerId) -> ReadAckMatch {
        match entry {
            // A copy the partner rejected, or never got, it cannot have read. (One still in
            // flight it can: the ReadAck may overtake the receipt.)
            None => ReadAckMatch::Unknown,
            Some(e) if matches!(e.state, EntryState::Rejected { .. } | EntryState::Expired { .. }) => {
                ReadAckMatch::Unknown
            }
            Some(e) if e.reads.iter().any(|(o, _)| o == officer) => ReadAckMatch::Already,
            Some(e) if e.reads.len() >= crate::store::MAX_READS => ReadAckMatch::Full,
            Some(_) => ReadAckMatch::New,
        }
    }

    /// Puts in force an acknowledgement the caller has just persisted (in [`crate::store::Tree::Reads`],
    /// apart from the entry: so it needs no new snapshot of the entry). One already there (another
    /// batch may have added it meanwhile) or beyond [`crate::store::MAX_READS`] is left out.
    pub fn add_read(&mut self, packet_id: PacketId, receiver: &NodeId, officer: OfficerId, at: Millis) {
        let Some(e) = self.entries.get_mut(&(packet_id, *receiver)) else { return };
        if !e.reads.iter().any(|(o, _)| *o == officer) && e.reads.len() < crate::store::MAX_READS {
            e.reads.push((officer, at));
        }
    }

    /// Time passed: in-flight copies whose receipt is overdue go back to the queue with backoff,
    /// and copies past their expiry become expired.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some((deadline, k)) = self.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            self.retry_later(now, k);
        }
        self.wake(now);
        self.expire(now);
    }

    /// When the driver should call [`Outbox::handle_timeout`] next, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Millis> {
        [self.waiting.first(), self.deadlines.first(), self.expiries.first()]
            .into_iter()
            .flatten()
            .map(|(t, _)| *t)
            .min()
    }

    /// Entries taken by [`Outbox::take_dirty`] whose commit failed: they are to be persisted
    /// again (with whatever they hold by then).
    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = (PacketId, NodeId)>) {
        self.dirty.extend(keys.into_iter().filter(|k| self.entries.contains_key(k)));
    }

    /// Entries changed since the last call; the driver persists them (and flushes) before it
    /// acts on the change, and gives them back with [`Outbox::mark_dirty`] if the commit fails.
    ///
    /// The driver must hand these snapshots to the store in the order it took them (take and
    /// enqueue under one lock): the store then never puts an older snapshot over a newer one.
    /// An entry whose receipt is being stored is left dirty and not taken: its memory state is
    /// older than what the receipt's commit writes, and would land after it.
    pub fn take_dirty(&mut self) -> Vec<Entry> {
        let prepared = &self.prepared;
        let (held, taken): (BTreeSet<Key>, BTreeSet<Key>) =
            std::mem::take(&mut self.dirty).into_iter().partition(|k| prepared.contains_key(k));
        self.dirty = held;
        taken.into_iter().filter_map(|k| self.entries.get(&k).cloned()).collect()
    }

    /// Drops a terminal entry (deleted from the store by retention). Anything else stays.
    pub fn forget(&mut self, packet_id: PacketId, recipient: &NodeId) {
        let k = (packet_id, *recipient);
        if self.entries.get(&k).is_some_and(|e| e.state.is_terminal()) && !self.prepared.contains_key(&k) {
            self.entries.remove(&k);
            self.dirty.remove(&k);
            self.terminal_held.remove(&k);
        }
    }

    /// A terminal entry whose state is on disk leaves memory, counted in [`Outbox::finished`].
    fn retire(&mut self, k: Key) {
        let count = match self.entries.get(&k).map(|e| &e.state) {
            Some(EntryState::Delivered { .. }) => &mut self.finished.delivered,
            Some(EntryState::Rejected { .. }) => &mut self.finished.rejected,
            Some(EntryState::Expired { .. }) => &mut self.finished.expired,
            _ => return,
        };
        *count += 1;
        self.entries.remove(&k);
        self.terminal_held.remove(&k);
    }

    /// One entry held in memory (pending, or terminal and not yet on disk).
    pub fn entry(&self, packet_id: PacketId, recipient: &NodeId) -> Option<&Entry> {
        self.entries.get(&(packet_id, *recipient))
    }

    /// All entries held in memory.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Entries not yet in a terminal state.
    pub fn pending(&self) -> usize {
        self.expiries.len()
    }

    fn insert(&mut self, e: Entry) {
        let k = key(&e);
        match &e.state {
            EntryState::Queued { not_before } => {
                self.waiting.insert((*not_before, k));
            }
            EntryState::InFlight { deadline, .. } => {
                self.deadlines.insert((*deadline, k));
            }
            _ => {}
        }
        if !e.state.is_terminal() {
            self.expiries.insert((e.expires, k));
        }
        self.entries.insert(k, e);
    }

    /// Moves queued entries whose backoff has passed into their recipient's ready queue.
    fn wake(&mut self, now: Millis) {
        while let Some((t, k)) = self.waiting.first().cloned() {
            if t > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(e) = self.entries.get(&k) {
                self.ready.entry((k.1, e.priority)).or_default().insert((e.submitted, k));
            }
        }
    }

    fn expire(&mut self, now: Millis) {
        // An entry whose receipt is being committed is not expired under it: the receipt, once
        // on disk, decides.
        let due: Vec<(Millis, Key)> = self
            .expiries
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter(|(_, k)| !self.prepared.contains_key(k))
            .cloned()
            .collect();
        for (expires, k) in due {
            self.set_terminal(k, EntryState::Expired { at: expires });
        }
    }

    fn retry_later(&mut self, now: Millis, k: Key) {
        let Some(e) = self.entries.get_mut(&k) else { return };
        if let EntryState::InFlight { deadline, .. } = e.state {
            self.deadlines.remove(&(deadline, k));
        }
        let not_before = now.saturating_add(self.policy.backoff(e.attempts, self.rng.next()));
        e.state = EntryState::Queued { not_before };
        self.waiting.insert((not_before, k));
        self.dirty.insert(k);
    }

    /// Moves an entry to a terminal state, removing it from every queue.
    fn set_terminal(&mut self, k: Key, state: EntryState) {
        let Some(e) = self.entries.get_mut(&k) else { return };
        match e.state {
            EntryState::Queued { not_before } => {
                self.waiting.remove(&(not_before, k));
                if let Some(q) = self.ready.get_mut(&(k.1, e.priority)) {
                    q.remove(&(e.submitted, k));
                }
            }
            EntryState::InFlight { deadline, .. } => {
                self.deadlines.remove(&(deadline, k));
            }
            _ => return,
        }
        self.expiries.remove(&(e.expires, k));
        e.state = state;
        self.dirty.insert(k);
        self.terminal_held.insert(k);
    }
}

/// A receipt's outcome as the outbox needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// Stored by the receiver at `received_at` (ms).
    Accepted {
        /// The receipt's `received_at`.
        received_at: Millis,
    },
    /// Refused.
    Rejected {
        /// The rule or check.
        code: RejectionCode,
        /// Why.
        reason: String,
    },
}

fn key(e: &Entry) -> Key {
    (e.packet_id, e.recipient)
}

/// The keys of the terminal entries among `written` (snapshots from [`Outbox::take_dirty`]):
/// what [`Outbox::committed`] takes once their commit is on disk.
pub fn terminal_keys(written: &[Entry]) -> Vec<(PacketId, NodeId)> {
    written.iter().filter(|e| e.state.is_terminal()).map(key).collect()
}

/// A tiny PRNG for backoff jitter (not for anything secret).
#[derive(Debug, Clone)]
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
