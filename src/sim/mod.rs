//! A whole federation in one thread, deterministically, with faults: the simulator.
//!
//! Two or three nodes of the demo federation run the production code of a node minus its I/O:
//! [`crate::delivery::submit`] for what officers submit, the [`Sender`] machine per partner,
//! the [`Receiver`] machine for every batch, [`crate::deadlines`] staged and applied after each
//! commit, and a real [`Store`] over a [`MemoryBackend`] that can fail writes and flushes and
//! loses everything not flushed when the node crashes (after which the node is rebuilt from its
//! store by [`crate::node::restore`], as at start-up). Keys, sealing, signatures and sharing
//! policies are the real ones. In place of QUIC, a simulated network carries frames, receipts
//! and stream resets; it loses, duplicates, delays and reorders them, and partitions pairs of
//! nodes for a while. Officers submit alerts, requests and notices, acknowledge what they
//! received, and answer requests.
//!
//! Everything random comes from one seeded generator and the clock is the simulation's own
//! (it starts on 2030-01-01, whatever today is), so a seed replays exactly:
//! `cargo run --release --example simulate -- --seed N --nodes 3 --steps 2000`.
//!
//! After every step the senders are checked: no acknowledged submit lost, no copy delivered or
//! rejected without the partner's signed receipt stored and verified (and, for a delivered one,
//! the packet stored at the partner), terminal states never change (those the machines hold;
//! a machine drops a terminal entry once it is on disk). Every ten steps, after each crash and
//! at the end, the stores are read whole as well: the same for every terminal entry on disk,
//! the outbox indexes list exactly the pending and the terminal entries, the inbox index
//! agrees with the store (nothing shown twice, nothing shown that is not stored, nothing
//! without its evidence),
//! deadlines are on disk as in memory and moved only by their rules. Every node's audit trail
//! is verified every 250 steps, after each crash and at the end. Then the network heals and the run goes on
//! until every copy is delivered, rejected by a rule, or expired after its expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;

use crate::deadlines::{Deadline, Deadlines, Flow, Staged};
use crate::delivery::receiver::{Known, Receiver};
use crate::delivery::sender::{entry_ops, open_receipt, receipt_ops};
use crate::delivery::submit::{self, Prepared};
use crate::delivery::{Entry, EntryState, Inbox, Incoming, LaneId, Link, Millis, Problem, RetryPolicy, Sender};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::keys::{Keyring, NodeKeys};
use crate::packet::{Body, Packet, PacketType, ReceiptOutcome};
use crate::policy::{Policy, PolicyBook};
use crate::seal::SealContext;
use crate::store::{self, pair_key, Class, InboxRecord, MemoryBackend, Op, Store, StoreError, Tree};
use crate::timestamp::Timestamp;

mod invariants;
mod officers;

/// The demo federation's nodes; a simulation runs the first two or all three.
pub const NODES: [&str; 3] = ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"];

/// The simulation's clock starts here (2030-01-01T00:00:00Z), whatever today is.
const EPOCH: Millis = 1_893_456_000_000;

/// Retries at the pace of a real node, scaled down.
/// Free space on a simulated disk, normally, and while it is low or full (the store's headroom is
/// its default, 256 MiB).
const DISK_FREE: u64 = 1 << 40;
const DISK_LOW: u64 = 100 << 20;
const DISK_FULL: u64 = 16 << 20;

const RETRY: RetryPolicy = RetryPolicy { initial_backoff: 50, max_backoff: 2_000, receipt_timeout: 1_500 };

use crate::federation::POLICIES;

const EXAMPLES: [&str; 4] = [
    include_str!("../../schemas/examples/controlled-delivery-alert.json"),
    include_str!("../../schemas/examples/information-request.json"),
    include_str!("../../schemas/examples/jit-notice.json"),
    include_str!("../../schemas/examples/delay-notice.json"),
];
const RESPONSE: &str = include_str!("../../schemas/examples/information-response.json");

const OFFICERS: [&str; 3] = ["Ispettore Rossi", "Subinspector Gómez", "Capitán Ruiz"];

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The seed: everything random follows from it.
    pub seed: u64,
    /// How many nodes of the demo federation (2 or 3).
    pub nodes: usize,
    /// Steps with faults before the network heals.
    pub steps: usize,
}

impl Options {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release --example simulate -- --seed {} --nodes {} --steps {}",
            self.seed, self.nodes, self.steps
        )
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Copies acknowledged to officers (one per packet and recipient).
    pub copies: u64,
    /// Submits refused by the sending policy for every recipient.
    pub refused_submits: u64,
    /// Submits whose commit failed (not acknowledged).
    pub failed_submits: u64,
    /// Copies that ended delivered.
    pub delivered: u64,
    /// Copies that ended rejected by a rule of the receiver.
    pub rejected: u64,
    /// Copies that ended expired.
    pub expired: u64,
    /// Officers' acknowledgements sent.
    pub acks: u64,
    /// Requests answered.
    pub answers: u64,
    /// Forwards with at least one copy (passed on to a third node).
    pub forwards: u64,
    /// Forwards refused for every recipient (no consent, already a recipient, policy).
    pub refused_forwards: u64,
    /// Onward consents given.
    pub consents: u64,
    /// Batches received.
    pub batches: u64,
    /// Node crashes (each followed by a restart from the store).
    pub crashes: u64,
    /// Commits made to fail (writes or flushes).
    pub disk_faults: u64,
    /// Times a node's disk filled (low: bulk refused; or full: everything refused) for a while.
    pub disk_fills: u64,
    /// Commits the store refused for want of space.
    pub full_refusals: u64,
    /// Messages lost.
    pub lost: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Partitions between two nodes.
    pub partitions: u64,
}

impl std::ops::AddAssign<&Report> for Report {
    fn add_assign(&mut self, r: &Report) {
        self.copies += r.copies;
        self.refused_submits += r.refused_submits;
        self.failed_submits += r.failed_submits;
        self.delivered += r.delivered;
        self.rejected += r.rejected;
        self.expired += r.expired;
        self.acks += r.acks;
        self.answers += r.answers;
        self.forwards += r.forwards;
        self.refused_forwards += r.refused_forwards;
        self.consents += r.consents;
        self.batches += r.batches;
        self.crashes += r.crashes;
        self.disk_faults += r.disk_faults;
        self.disk_fills += r.disk_fills;
        self.full_refusals += r.full_refusals;
        self.lost += r.lost;
        self.duplicated += r.duplicated;
        self.partitions += r.partitions;
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The run.
    pub options: Options,
    /// The step at which it was found (after the last faulty step: while settling).
    pub step: usize,
    /// What did not hold.
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}, step {}: {}\nreplay: {}",
            self.options.seed,
            self.step,
            self.what,
            self.options.replay_command()
        )
    }
}

impl std::error::Error for Failure {}

/// Runs one simulation.
pub fn run(options: &Options) -> Result<Report, Failure> {
    let mut sim = Sim::new(options).map_err(|what| Failure { options: options.clone(), step: 0, what })?;
    let result = sim.run();
    let step = sim.step;
    result.map(|()| sim.report).map_err(|what| Failure { options: options.clone(), step, what })
}

type Res<T = ()> = Result<T, String>;

fn err<E: fmt::Display>(context: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// One node: its durable store and what it holds in memory.
struct SimNode {
    id: NodeId,
    seal: SealContext,
    policies: PolicyBook,
    disk: Arc<MemoryBackend>,
    store: Store,
    senders: BTreeMap<NodeId, Sender>,
    inbox: Inbox,
    deadlines: Deadlines,
}

impl Known for SimNode {
    fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest) -> Option<Incoming> {
        let stored = self.store.inbox_records(packet_id).ok()?;
        Some(self.inbox.classify(packet_id, sender, digest, &stored))
    }

    fn has_received(&self, packet_id: PacketId, sender: &NodeId) -> Option<bool> {
        let stored = self.store.inbox_records(packet_id).ok()?;
        Some(self.inbox.has(packet_id, sender, &stored))
    }

    fn run(&self) -> u64 {
        self.inbox.run()
    }

    fn sent_to(&self, packet_id: PacketId, peer: &NodeId) -> Result<Option<Entry>, crate::store::StoreError> {
        crate::node::sent_entry(
            self.senders.get(peer).and_then(|s| s.entry(packet_id).cloned()),
            &self.store,
            packet_id,
            peer,
        )
    }

    fn admitted_under(&self, packet_id: PacketId, sender: &NodeId) -> Option<Digest> {
        self.store.inbox_record(packet_id, sender).ok().flatten().and_then(|r| r.policy)
    }
}

/// What travels between nodes.
#[derive(Debug, Clone)]
enum Msg {
    /// A sealed copy on a lane stream.
    Frame { conn: u64, lane: LaneId, bytes: Vec<u8> },
    /// A receipt back on the same stream.
    Receipt { conn: u64, lane: LaneId, bytes: Vec<u8> },
    /// The receiver reset the stream (it could not store a batch), saying why.
    Reset { conn: u64, lane: LaneId, problem: Problem },
}

#[derive(Debug)]
struct Flight {
    at: Millis,
    seq: u64,
    from: usize,
    to: usize,
    msg: Msg,
}

/// A connection: dialled by `from` to send to `to`.
#[derive(Debug, Clone, Copy)]
struct Conn {
    from: usize,
    to: usize,
    alive: bool,
}

/// A stream's frames that arrived and wait to be read: (connection, lane slot, generation).
type StreamKey = (u64, u8, u64);

fn stream_key(conn: u64, lane: LaneId) -> StreamKey {
    (conn, lane.priority as u8, lane.generation)
}

/// A copy handed to a lane and not yet written: on which connection and lane.
type Job = (u64, LaneId, crate::delivery::Transmit);

/// An acknowledged copy: who sent it to whom, until when.
#[derive(Debug, Clone)]
struct Expected {
    expires: Millis,
}

struct Sim {
    options: Options,
    rng: ChaCha20Rng,
    now: Millis,
    step: usize,
    nodes: Vec<SimNode>,
    keyring: Keyring,
    net: Vec<Flight>,
    next_seq: u64,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// The connection each node uses to send to each partner.
    links: BTreeMap<(usize, usize), u64>,
    arrived: BTreeMap<StreamKey, Vec<Vec<u8>>>,
    /// Copies handed to a lane and not written yet (the lane's stream is busy), per (node,
    /// partner): written by a later step, as a lane task writes its backlog.
    backlog: BTreeMap<(usize, usize), std::collections::VecDeque<Job>>,
    /// Pairs (lower index first) cut off from each other until a time.
    partitions: BTreeMap<(usize, usize), Millis>,
    /// Nodes whose disk is low or full, until when.
    fills: BTreeMap<usize, Millis>,
    loss: f64,
    dup: f64,
    max_delay: Millis,
    fault_rate: f64,
    crash_rate: f64,
    /// Every copy acknowledged to an officer: (origin, packet, recipient).
    ledger: BTreeMap<(usize, PacketId, usize), Expected>,
    /// Packets officers of a node wrote (not system packets, not forwards): (node, id).
    originated: BTreeSet<(usize, PacketId)>,
    /// Terminal states seen: they must never change.
    terminal: BTreeMap<(usize, PacketId, NodeId), EntryState>,
    /// Receipts already verified for a terminal entry (cleared when the node crashes).
    verified: BTreeSet<(usize, PacketId, NodeId)>,
    /// Deadlines as last seen.
    seen_deadlines: BTreeMap<(usize, PacketId, NodeId), Deadline>,
    /// Inbox records as first seen (node, packet, sender): a packet is stored once, so its time
    /// and bytes never change (a restarted receiver that stored a retransmission again would).
    stored_first: BTreeMap<(usize, PacketId, NodeId), (Millis, Digest)>,
    report: Report,
}

impl Sim {
    fn new(options: &Options) -> Res<Self> {
        if !(2..=NODES.len()).contains(&options.nodes) {
            return Err(format!("--nodes must be 2 or 3 (the demo federation), not {}", options.nodes));
        }
        let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
        let names: Vec<NodeId> =
            NODES[..options.nodes].iter().map(|n| n.parse().map_err(err("node id"))).collect::<Res<_>>()?;
        let keys: Vec<NodeKeys> = names
            .iter()
            .map(|n| {
                let mut s = [0u8; 32];
                let mut e = [0u8; 32];
                rng.fill_bytes(&mut s);
                rng.fill_bytes(&mut e);
                NodeKeys::from_secret_bytes(*n, &s, e)
            })
            .collect();
        let mut keyring = Keyring::new();
        for k in &keys {
            keyring.add(k.public().clone()).map_err(err("keyring"))?;
        }
        let mut nodes = Vec::new();
        for (me, k) in names.iter().zip(keys) {
            let mut policies = Vec::new();
            for (owner, partner, text) in POLICIES {
                if owner == me.as_str() && names.iter().any(|n| n.as_str() == partner) {
                    let partner: NodeId = partner.parse().map_err(err("node id"))?;
                    policies.push(Policy::from_toml(text, Some(&partner)).map_err(|e| e.join("; "))?);
                }
            }
            let disk = Arc::new(MemoryBackend::default());
            disk.set_free(Some(DISK_FREE));
            let store = Store::with_backend(disk.clone()).map_err(err("store"))?;
            let mut node = SimNode {
                id: *me,
                seal: SealContext::new(k, keyring.clone()).map_err(err("keys"))?,
                policies: PolicyBook::new(policies),
                disk,
                store,
                senders: BTreeMap::new(),
                inbox: Inbox::new(rng.next_u64()),
                deadlines: Deadlines::default(),
            };
            let partners = names.iter().filter(|n| *n != me).cloned();
            let restored = crate::node::restore(&node.store, partners, RETRY, EPOCH).map_err(err("restore"))?;
            node.senders = restored.senders.into_iter().collect();
            nodes.push(node);
        }
        let loss = (rng.next_u64() % 30) as f64 / 100.0;
        let dup = (rng.next_u64() % 20) as f64 / 100.0;
        let max_delay = 1 + rng.next_u64() % 300;
        let fault_rate = (rng.next_u64() % 6) as f64 / 100.0;
        let crash_rate = (rng.next_u64() % 3) as f64 / 100.0;
        Ok(Self {
            options: options.clone(),
            rng,
            now: EPOCH,
            step: 0,
            nodes,
            keyring,
            net: Vec::new(),
            next_seq: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            links: BTreeMap::new(),
            arrived: BTreeMap::new(),
            backlog: BTreeMap::new(),
            partitions: BTreeMap::new(),
            fills: BTreeMap::new(),
            loss,
            dup,
            max_delay,
            fault_rate,
            crash_rate,
            ledger: BTreeMap::new(),
            stored_first: BTreeMap::new(),
            originated: BTreeSet::new(),
            terminal: BTreeMap::new(),
            verified: BTreeSet::new(),
            seen_deadlines: BTreeMap::new(),
            report: Report::default(),
        })
    }

    fn run(&mut self) -> Res {
        for _ in 0..self.options.steps {
            self.step += 1;
            self.one_step()?;
            self.check_cheap()?;
            if self.step % 10 == 0 {
                self.check()?;
            }
            if self.step % 250 == 0 {
                self.check_audit()?;
            }
        }
        self.settle()?;
        self.check()?;
        self.check_audit()?;
        self.check_final()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn one_step(&mut self) -> Res {
        let crash = self.crash_rate;
        let roll = self.below(1000);
        match roll {
            0..=99 => self.submit_random(),
            100..=129 => self.ack_random(),
            130..=139 => self.consent_random(),
            140..=159 => self.answer_random(),
            160..=179 => self.forward_random(),
            180..=419 => {
                let a = self.below(self.nodes.len() as u64) as usize;
                let b = self.other_than(a);
                let burst = 1 + self.below(8) as usize;
                self.transmit(a, b, burst)
            }
            420..=629 => self.receive_random(),
            630..=639 => {
                self.partition();
                Ok(())
            }
            640..=689 => self.write_backlog_random(),
            690..=692 => {
                self.fill_disk();
                Ok(())
            }
            _ if self.chance(crash) => {
                let i = self.below(self.nodes.len() as u64) as usize;
                self.crash(i)
            }
            _ => {
                self.now += 1 + self.below(200);
                self.free_disks(false);
                self.deliver_due()
            }
        }
    }

    /// A node's disk fills for up to 5 s: low (bulk refused) or full (everything refused).
    fn fill_disk(&mut self) {
        let i = self.below(self.nodes.len() as u64) as usize;
        let free = if self.chance(0.5) { DISK_LOW } else { DISK_FULL };
        self.nodes[i].disk.set_free(Some(free));
        let until = self.now + 100 + self.below(5_000);
        self.fills.insert(i, until);
        self.report.disk_fills += 1;
    }

    /// Space comes back on the disks whose fill is over (on every disk: `all`).
    fn free_disks(&mut self, all: bool) {
        let now = self.now;
        let over: Vec<usize> = self.fills.iter().filter(|(_, until)| all || **until <= now).map(|(i, _)| *i).collect();
        for i in over {
            self.fills.remove(&i);
            self.nodes[i].disk.set_free(Some(DISK_FREE));
        }
    }

    fn other_than(&mut self, a: usize) -> usize {
        let k = self.nodes.len() as u64;
        (a + 1 + self.below(k - 1) as usize) % self.nodes.len()
    }

    fn ts(&self) -> Timestamp {
        Timestamp::from_unix((self.now / 1000) as i64).unwrap_or_else(|_| Timestamp::now())
    }

    /// Commits `ops` at node `i`, perhaps with a disk fault (a failed write, or a failed flush
    /// that leaves the writes applied but not durable).
    fn commit(&mut self, i: usize, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit_as(i, Class::Essential, ops)
    }

    /// [`Sim::commit`] of a commit of `class` (a disk that is low or full refuses by class).
    fn commit_as(&mut self, i: usize, class: Class, ops: Vec<Op>) -> Result<(), StoreError> {
        let fault = self.chance(self.fault_rate);
        let flush = fault && self.chance(0.5);
        let disk = self.nodes[i].disk.clone();
        if fault {
            self.report.disk_faults += 1;
            if flush {
                disk.set_failing_flushes(true);
            } else {
                disk.set_failing(true);
            }
        }
        let result = self.nodes[i].store.enqueue_as(class, ops).durable_blocking();
        disk.set_failing(false);
        disk.set_failing_flushes(false);
        if matches!(result, Err(StoreError::Full { .. })) {
            self.report.full_refusals += 1;
        }
        result
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions.get(&(a.min(b), a.max(b))).is_some_and(|until| *until > self.now)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.partitioned(from, to) || self.chance(self.loss) {
            self.report.lost += 1;
            return;
        }
        let copies = if self.chance(self.dup) { 2 } else { 1 };
        if copies == 2 {
            self.report.duplicated += 1;
        }
        for _ in 0..copies {
            let at = self.now + 1 + self.below(self.max_delay);
            self.next_seq += 1;
            self.net.push(Flight { at, seq: self.next_seq, from, to, msg: msg.clone() });
        }
    }

    // ---- the sender's side ----

    /// What node `a`'s peer task does for partner `b`: timers, dialling, handing up to `burst`
    /// copies to lanes (written at once), persisting what changed.
    fn transmit(&mut self, a: usize, b: usize, burst: usize) -> Res {
        let now = self.now;
        let peer = self.nodes[b].id;
        let conn = self.links.get(&(a, b)).copied();
        let conn_alive = conn.and_then(|c| self.conns.get(&c)).is_some_and(|c| c.alive);
        let reachable = !self.partitioned(a, b);
        let machine = self.nodes[a].senders.get_mut(&peer).ok_or("no sender machine")?;
        machine.handle_timeout(now);
        if machine.link() == Link::Up && !conn_alive {
            machine.handle_connection_lost(now);
        }
        if machine.poll_connect(now) {
            if reachable {
                machine.handle_connected(now);
                let id = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(id, Conn { from: a, to: b, alive: true });
                self.links.insert((a, b), id);
            } else {
                machine.handle_connect_failed(now, Problem::Unreachable);
            }
        }
        let conn = self.links.get(&(a, b)).copied().unwrap_or(0);
        // Some of the time the lanes are busy: what is polled waits in their backlog.
        let busy = self.chance(0.3);
        for _ in 0..burst {
            let Some(machine) = self.nodes[a].senders.get_mut(&peer) else { break };
            let Some((lane, t)) = machine.poll_transmit(now) else { break };
            self.backlog.entry((a, b)).or_default().push_back((conn, lane, t));
        }
        if !busy {
            self.write_backlog(a, b, usize::MAX)?;
        }
        self.persist(a, b)
    }

    /// Node `a`'s lanes to `b` write up to `n` copies of their backlog, oldest first, each only
    /// if the machine still wants it written (as `write_copy`).
    fn write_backlog(&mut self, a: usize, b: usize, n: usize) -> Res {
        let now = self.now;
        let peer = self.nodes[b].id;
        let mut frames = Vec::new();
        for _ in 0..n {
            let Some((conn, lane, t)) = self.backlog.get_mut(&(a, b)).and_then(|q| q.pop_front()) else { break };
            let node = &mut self.nodes[a];
            let Some(machine) = node.senders.get_mut(&peer) else { break };
            if !machine.begin_write(now, lane, &t) {
                continue;
            }
            let bytes = node
                .store
                .get(Tree::Sealed, &pair_key(t.packet_id, &peer))
                .map_err(err("sealed"))?
                .ok_or_else(|| format!("sealed copy of {} missing at {}", t.packet_id, node.id))?;
            machine.handle_written(now, lane, &t);
            frames.push(Msg::Frame { conn, lane, bytes });
        }
        for f in frames {
            self.send(a, b, f);
        }
        Ok(())
    }

    fn write_backlog_random(&mut self) -> Res {
        let ready: Vec<(usize, usize)> = self.backlog.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
        if ready.is_empty() {
            return Ok(());
        }
        let (a, b) = ready[self.below(ready.len() as u64) as usize];
        let n = 1 + self.below(8) as usize;
        self.write_backlog(a, b, n)?;
        self.persist(a, b)
    }

    fn persist(&mut self, a: usize, b: usize) -> Res {
        let peer = self.nodes[b].id;
        let dirty = self.nodes[a].senders.get_mut(&peer).map(Sender::take_dirty).unwrap_or_default();
        let keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient)).collect();
        let done = crate::delivery::terminal_keys(&dirty);
        let ops = entry_ops(dirty);
        if ops.is_empty() {
            return Ok(());
        }
        let committed = self.commit(a, ops);
        if let Some(m) = self.nodes[a].senders.get_mut(&peer) {
            match committed {
                Ok(()) => m.committed(done),
                Err(_) => m.mark_dirty(keys),
            }
        }
        Ok(())
    }

    /// A receipt arrived at `s` from `r` on `lane`: verify, prepare, store, apply (as the lane
    /// task does).
    fn on_receipt(&mut self, s: usize, r: usize, lane: LaneId, bytes: &[u8]) -> Res {
        let now = self.now;
        let ts = self.ts();
        let peer = self.nodes[r].id;
        let node = &mut self.nodes[s];
        let store = node.store.clone();
        let opened = open_receipt(&node.seal, &peer, bytes, ts, |id| {
            store.get(Tree::Receipts, id.as_bytes()).map(|v| v.is_some()).map_err(|e| e.to_string())
        });
        let machine = node.senders.get_mut(&peer).ok_or("no sender machine")?;
        let receipt = match opened {
            Ok(r) => r,
            Err(_) => {
                machine.handle_lane_failed(now, lane);
                return Ok(());
            }
        };
        let prepared = match machine.prepare_receipt(now, lane, &receipt.items) {
            Ok(p) => p,
            Err(_) => {
                machine.handle_lane_failed(now, lane);
                return Ok(());
            }
        };
        let dirty = machine.take_dirty();
        let keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient)).collect();
        let done = crate::delivery::terminal_keys(&dirty);
        let ops = receipt_ops(&peer, &receipt, &prepared, dirty);
        let committed = self.commit(s, ops);
        let machine = self.nodes[s].senders.get_mut(&peer).ok_or("no sender machine")?;
        match committed {
            Ok(()) => {
                machine.apply_receipt(now, prepared);
                machine.committed(done);
            }
            Err(_) => {
                machine.abandon_receipt(now, prepared);
                machine.mark_dirty(keys);
            }
        }
        Ok(())
    }

    // ---- the receiver's side ----

    fn receive_random(&mut self) -> Res {
        let ready: Vec<StreamKey> = self.arrived.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| *k).collect();
        if ready.is_empty() {
            return Ok(());
        }
        let key = ready[self.below(ready.len() as u64) as usize];
        let take = 1 + self.below(8) as usize;
        self.receive(key, take)
    }

    /// Node `to` of the stream's connection reads up to `take` frames as one batch: the
    /// receiver machine, one commit with the deadline changes, the effects, the receipt.
    fn receive(&mut self, key: StreamKey, take: usize) -> Res {
        let (conn_id, _, _) = key;
        let Some(conn) = self.conns.get(&conn_id).copied() else { return Ok(()) };
        let Some(queue) = self.arrived.get_mut(&key) else { return Ok(()) };
        let frames: Vec<Vec<u8>> = queue.drain(..take.min(queue.len())).collect();
        let lane = lane_of(key);
        let (s, r) = (conn.from, conn.to);
        let now = self.now;
        let peer = self.nodes[s].id;
        let node = &self.nodes[r];
        let receiver = Receiver { seal: &node.seal, policies: &node.policies, known: node };
        let received = receiver.receive(&peer, &frames, now, &mut self.rng).map_err(err("receive"))?;
        let Some(batch) = received.batch else { return Ok(()) };
        self.report.batches += 1;
        let mut ops = batch.ops;
        let mut staged = Staged::default();
        for p in &batch.about_deadlines {
            self.nodes[r].deadlines.stage(&mut staged, p, Flow::Received, &peer, now);
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        let committed = self.commit_as(r, batch.class, ops);
        if committed.is_err() {
            // Nothing of the batch acknowledged: the stream is reset, the rest of it dropped.
            self.arrived.remove(&key);
            let problem = match committed {
                Err(StoreError::Full { .. }) => Problem::PartnerStorageFull,
                _ => Problem::PartnerStoreFailed,
            };
            self.send(r, s, Msg::Reset { conn: conn_id, lane, problem });
            return Ok(());
        }
        let node = &mut self.nodes[r];
        node.deadlines.apply(staged);
        for (id, digest, at) in &batch.stored {
            node.inbox.record(*id, peer, *digest, *at);
        }
        if let Some(m) = node.senders.get_mut(&peer) {
            for (id, officer, at, first) in batch.acked {
                m.add_read(id, officer, at, first);
            }
        }
        self.send(r, s, Msg::Receipt { conn: conn_id, lane, bytes: batch.receipt });
        Ok(())
    }

    // ---- the network ----

    fn deliver_due(&mut self) -> Res {
        self.net.sort_by_key(|f| (f.at, f.seq));
        let split = self.net.partition_point(|f| f.at <= self.now);
        let due: Vec<Flight> = self.net.drain(..split).collect();
        for f in due {
            if self.partitioned(f.from, f.to) {
                self.report.lost += 1;
                continue;
            }
            match f.msg {
                Msg::Frame { conn, lane, bytes } => {
                    if self.conns.get(&conn).is_some_and(|c| c.alive) {
                        self.arrived.entry(stream_key(conn, lane)).or_default().push(bytes);
                    }
                }
                Msg::Receipt { conn, lane, bytes } => {
                    if self.conns.get(&conn).is_some_and(|c| c.alive) {
                        self.on_receipt(f.to, f.from, lane, &bytes)?;
                    }
                }
                Msg::Reset { conn, lane, problem } => {
                    if self.conns.get(&conn).is_some_and(|c| c.alive) {
                        let peer = self.nodes[f.from].id;
                        if let Some(m) = self.nodes[f.to].senders.get_mut(&peer) {
                            m.handle_lane_refused(self.now, lane, problem);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts a pair off for a while; connections between them die.
    fn partition(&mut self) {
        let a = self.below(self.nodes.len() as u64) as usize;
        let b = self.other_than(a);
        let until = self.now + 100 + self.below(5_000);
        self.partitions.insert((a.min(b), a.max(b)), until);
        self.report.partitions += 1;
        for c in self.conns.values_mut() {
            if (c.from == a && c.to == b) || (c.from == b && c.to == a) {
                c.alive = false;
            }
        }
    }

    /// A crash (power cut, `kill -9`) of node `i` and its restart from what its disk kept.
    fn crash(&mut self, i: usize) -> Res {
        self.report.crashes += 1;
        let node = &mut self.nodes[i];
        node.disk.crash();
        let store = Store::with_backend(node.disk.clone()).map_err(err("reopen"))?;
        let partners: Vec<NodeId> = self.nodes.iter().filter(|n| n.id != self.nodes[i].id).map(|n| n.id).collect();
        let restored = crate::node::restore(&store, partners, RETRY, self.now).map_err(err("restore"))?;
        let node = &mut self.nodes[i];
        std::mem::replace(&mut node.store, store).close();
        node.senders = restored.senders.into_iter().collect();
        // A new run: what the crash left on disk counts as received from the store.
        node.inbox = Inbox::new(self.rng.next_u64());
        node.deadlines = restored.deadlines;
        for c in self.conns.values_mut() {
            if c.from == i || c.to == i {
                c.alive = false;
            }
        }
        let dead: BTreeSet<u64> = self.conns.iter().filter(|(_, c)| !c.alive).map(|(id, _)| *id).collect();
        self.arrived.retain(|k, _| !dead.contains(&k.0));
        // Its lane tasks died with it.
        self.backlog.retain(|(a, _), _| *a != i);
        self.verified.retain(|k| k.0 != i);
        self.check()?;
        self.check_audit()
    }

    /// The network heals and stays healthy; the nodes run until nothing is pending.
    fn settle(&mut self) -> Res {
        self.loss = 0.0;
        self.dup = 0.0;
        self.fault_rate = 0.0;
        self.partitions.clear();
        self.free_disks(true);
        let n = self.nodes.len();
        for _ in 0..20_000 {
            let pending: usize = self.nodes.iter().flat_map(|x| x.senders.values()).map(Sender::pending).sum();
            if pending == 0
                && self.net.is_empty()
                && self.arrived.values().all(Vec::is_empty)
                && self.backlog.values().all(|q| q.is_empty())
            {
                return Ok(());
            }
            self.step += 1;
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        self.transmit(a, b, 64)?;
                    }
                }
            }
            self.now += 100;
            self.deliver_due()?;
            let keys: Vec<StreamKey> = self.arrived.keys().copied().collect();
            for k in keys {
                while self.arrived.get(&k).is_some_and(|v| !v.is_empty()) {
                    self.receive(k, 64)?;
                }
            }
            self.deliver_due()?;
        }
        Err("did not settle: copies still pending after the network healed".into())
    }
}

fn lane_of(key: StreamKey) -> LaneId {
    let priority = match key.1 {
        0 => crate::markings::Priority::Flash,
        1 => crate::markings::Priority::Urgent,
        _ => crate::markings::Priority::Routine,
    };
    LaneId { priority, generation: key.2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::plant::{self, Bug};

    /// Runs seeds with `bug` planted until one fails; returns the failure.
    fn find(bug: Bug) -> Option<Failure> {
        plant::set(Some(bug));
        let found = (0..60).find_map(|seed| run(&Options { seed, nodes: 3, steps: 400 }).err());
        plant::set(None);
        if let Some(f) = &found {
            eprintln!("found {bug:?}: {f}");
        }
        found
    }

    /// A sender machine that puts a receipt in force before the store says it is durable:
    /// the first failed commit of a receipt leaves a copy "delivered" without its receipt, and
    /// the machine, which lets a delivered copy go, no longer sends it.
    #[test]
    fn finds_a_receipt_applied_before_its_commit() {
        let f = find(Bug::ApplyReceiptBeforeCommit).expect("the simulator missed the planted bug");
        assert!(f.what.contains("before its outcome was on disk"), "{f}");
        assert!(f.to_string().contains("cargo run --release --example simulate -- --seed"), "{f}");
    }

    /// A receiver machine that receipts a packet it did not write.
    #[test]
    fn finds_a_receipt_for_a_packet_not_stored() {
        let f = find(Bug::ReceiptWithoutStoring).expect("the simulator missed the planted bug");
        assert!(f.what.contains("stored"), "{f}");
    }

    /// The same seed, the same run: a failure replays.
    #[test]
    fn a_seed_replays_exactly() {
        let o = Options { seed: 11, nodes: 3, steps: 300 };
        assert_eq!(run(&o).unwrap(), run(&o).unwrap());
    }
}
