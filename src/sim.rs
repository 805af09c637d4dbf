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
//! the packet stored at the partner), terminal states never change. Every ten steps, after each
//! crash and at the end, the stores are read whole as well: the inbox index agrees with the
//! store (nothing shown twice, nothing shown that is not stored, nothing without its evidence),
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
use crate::delivery::{Entry, EntryState, Inbox, Incoming, LaneId, Link, Millis, RetryPolicy, Sender};
use crate::encoding::Digest;
use crate::ids::{NodeId, OfficerId, PacketId};
use crate::keys::{Keyring, NodeKeys};
use crate::packet::{Body, Packet, PacketType, ReceiptOutcome};
use crate::policy::{Policy, PolicyBook};
use crate::seal::SealContext;
use crate::store::{self, pair_key, InboxRecord, MemoryBackend, Op, Store, StoreError, Tree};
use crate::timestamp::Timestamp;

/// The demo federation's nodes; a simulation runs the first two or all three.
pub const NODES: [&str; 3] = ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"];

/// The simulation's clock starts here (2030-01-01T00:00:00Z), whatever today is.
const EPOCH: Millis = 1_893_456_000_000;

/// Retries at the pace of a real node, scaled down.
const RETRY: RetryPolicy = RetryPolicy { initial_backoff: 50, max_backoff: 2_000, receipt_timeout: 1_500 };

const POLICIES: [(&str, &str, &str); 6] = [
    ("IT-DCSA", "ES-UDYCO", include_str!("../configs/policies/IT-DCSA/ES-UDYCO.toml")),
    ("IT-DCSA", "CO-DIJIN", include_str!("../configs/policies/IT-DCSA/CO-DIJIN.toml")),
    ("ES-UDYCO", "IT-DCSA", include_str!("../configs/policies/ES-UDYCO/IT-DCSA.toml")),
    ("ES-UDYCO", "CO-DIJIN", include_str!("../configs/policies/ES-UDYCO/CO-DIJIN.toml")),
    ("CO-DIJIN", "IT-DCSA", include_str!("../configs/policies/CO-DIJIN/IT-DCSA.toml")),
    ("CO-DIJIN", "ES-UDYCO", include_str!("../configs/policies/CO-DIJIN/ES-UDYCO.toml")),
];

const EXAMPLES: [&str; 4] = [
    include_str!("../schemas/examples/controlled-delivery-alert.json"),
    include_str!("../schemas/examples/information-request.json"),
    include_str!("../schemas/examples/jit-notice.json"),
    include_str!("../schemas/examples/delay-notice.json"),
];
const RESPONSE: &str = include_str!("../schemas/examples/information-response.json");

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
    /// Batches received.
    pub batches: u64,
    /// Node crashes (each followed by a restart from the store).
    pub crashes: u64,
    /// Commits made to fail (writes or flushes).
    pub disk_faults: u64,
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
        self.batches += r.batches;
        self.crashes += r.crashes;
        self.disk_faults += r.disk_faults;
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
    fn classify(&self, packet_id: PacketId, sender: &NodeId, digest: &Digest) -> Incoming {
        self.inbox.classify(packet_id, sender, digest)
    }

    fn has_received(&self, packet_id: PacketId, sender: &NodeId) -> bool {
        self.inbox.has(packet_id, sender)
    }

    fn sent_to(&self, packet_id: PacketId, peer: &NodeId) -> Option<Entry> {
        self.senders.get(peer).and_then(|s| s.entry(packet_id).cloned())
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
    /// The receiver reset the stream (it could not store a batch).
    Reset { conn: u64, lane: LaneId },
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
    loss: f64,
    dup: f64,
    max_delay: Millis,
    fault_rate: f64,
    crash_rate: f64,
    /// Every copy acknowledged to an officer: (origin, packet, recipient).
    ledger: BTreeMap<(usize, PacketId, usize), Expected>,
    /// Terminal states seen: they must never change.
    terminal: BTreeMap<(usize, PacketId, NodeId), EntryState>,
    /// Receipts already verified for a terminal entry (cleared when the node crashes).
    verified: BTreeSet<(usize, PacketId, NodeId)>,
    /// Deadlines as last seen.
    seen_deadlines: BTreeMap<(usize, PacketId, NodeId), Deadline>,
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
                NodeKeys::from_secret_bytes(n.clone(), &s, e)
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
            let store = Store::with_backend(disk.clone()).map_err(err("store"))?;
            let mut node = SimNode {
                id: me.clone(),
                seal: SealContext::new(k, keyring.clone()).map_err(err("keys"))?,
                policies: PolicyBook::new(policies),
                disk,
                store,
                senders: BTreeMap::new(),
                inbox: Inbox::new(),
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
            loss,
            dup,
            max_delay,
            fault_rate,
            crash_rate,
            ledger: BTreeMap::new(),
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
            100..=139 => self.ack_random(),
            140..=169 => self.answer_random(),
            170..=419 => {
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
            _ if self.chance(crash) => {
                let i = self.below(self.nodes.len() as u64) as usize;
                self.crash(i)
            }
            _ => {
                self.now += 1 + self.below(200);
                self.deliver_due()
            }
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
        let result = self.nodes[i].store.commit_blocking(ops);
        disk.set_failing(false);
        disk.set_failing_flushes(false);
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

    // ---- officers ----

    /// An example packet as an officer of `from` would write it now to `to`; some expire soon.
    fn draft(&mut self, example: &str, from: usize, to: &[usize]) -> Res<Value> {
        let mut v: Value = serde_json::from_str(example).map_err(err("example"))?;
        let created: Timestamp = v
            .pointer("/envelope/created")
            .and_then(Value::as_str)
            .ok_or("example without created")?
            .parse()
            .map_err(err("example created"))?;
        crate::packet::shift_times(&mut v, self.ts().unix() - created.unix()).map_err(err("shift"))?;
        let short = self.chance(0.15);
        let ttl_secs = 5 + self.below(60) as i64;
        let env = v.get_mut("envelope").and_then(Value::as_object_mut).ok_or("example without envelope")?;
        for k in ["id", "created", "due_by", "in_reply_to"] {
            env.remove(k);
        }
        env.insert(
            "originator".into(),
            serde_json::json!({"node": self.nodes[from].id.as_str(), "officer": OFFICERS[from % 3]}),
        );
        let to: Vec<&str> = to.iter().map(|i| self.nodes[*i].id.as_str()).collect();
        env.insert("recipients".into(), serde_json::json!(to));
        if short {
            let expires = Timestamp::from_unix(self.ts().unix() + ttl_secs).map_err(err("expiry"))?;
            env.insert("expires".into(), Value::String(expires.to_string()));
        }
        Ok(v)
    }

    fn submit_random(&mut self) -> Res {
        let from = self.below(self.nodes.len() as u64) as usize;
        let mut to: Vec<usize> = (0..self.nodes.len()).filter(|i| *i != from && self.chance(0.7)).collect();
        if to.is_empty() {
            to.push(self.other_than(from));
        }
        let example = EXAMPLES[self.below(3) as usize];
        let v = self.draft(example, from, &to)?;
        let ts = self.ts();
        let Ok(packet) = Packet::from_json_draft(&v.to_string(), ts, &mut self.rng) else {
            // A short expiry that the packet's own dates do not allow: the officer is told.
            return Ok(());
        };
        self.submit(from, &packet)
    }

    /// The node's submit: policy per recipient, sealing, one commit with the deadline changes,
    /// then the entries to the sender machines. Only an `Ok` commit is an acknowledged submit.
    fn submit(&mut self, i: usize, packet: &Packet) -> Res {
        let now = self.now;
        let (copies, denied) = submit::decide(&self.nodes[i].policies, packet, now);
        let prepared =
            submit::seal(&self.nodes[i].seal, packet, copies, denied, now, &mut self.rng).map_err(err("seal"))?;
        let sub = match prepared {
            Prepared::Copies(sub) => sub,
            Prepared::AllDenied { ops, .. } => {
                self.report.refused_submits += 1;
                let _ = self.commit(i, ops);
                return Ok(());
            }
        };
        let mut ops = sub.ops;
        let mut staged = Staged::default();
        for (copy, to) in &sub.copies {
            self.nodes[i].deadlines.stage(&mut staged, copy, Flow::Sent, to, now);
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        if self.commit(i, ops).is_err() {
            self.report.failed_submits += 1;
            return Ok(());
        }
        self.nodes[i].deadlines.apply(staged);
        for e in sub.entries {
            let j = self.index(&e.recipient)?;
            self.ledger.insert((i, e.packet_id, j), Expected { expires: e.expires });
            self.report.copies += 1;
            let sender = self.nodes[i].senders.get_mut(&e.recipient).ok_or("no sender machine for a partner")?;
            sender.admit(now, e);
        }
        Ok(())
    }

    fn index(&self, node: &NodeId) -> Res<usize> {
        self.nodes.iter().position(|n| n.id == *node).ok_or_else(|| format!("{node} is not in the federation"))
    }

    /// Received packets of `i` an officer could act on: (id, record).
    fn received(&self, i: usize) -> Res<Vec<(PacketId, InboxRecord)>> {
        let mut v = Vec::new();
        for (k, val) in self.nodes[i].store.scan(Tree::Inbox, &[]).map_err(err("scan"))? {
            let id = PacketId::from_bytes(k.get(..16).and_then(|b| b.try_into().ok()).ok_or("inbox key")?);
            let rec: InboxRecord = store::decode(Tree::Inbox, &val).map_err(err("inbox record"))?;
            if !matches!(rec.packet_type, PacketType::ReadAck | PacketType::OnwardConsent) {
                v.push((id, rec));
            }
        }
        Ok(v)
    }

    /// An officer acknowledges a received packet: the record first, then a ReadAck to its
    /// sender (as `Node::ack`).
    fn ack_random(&mut self) -> Res {
        let i = self.below(self.nodes.len() as u64) as usize;
        let list = self.received(i)?;
        if list.is_empty() {
            return Ok(());
        }
        let (id, mut rec) = list[self.below(list.len() as u64) as usize].clone();
        let officer: OfficerId = OFFICERS[self.below(3) as usize].parse().map_err(err("officer"))?;
        if rec.reads.iter().any(|(o, _)| *o == officer) || rec.reads.len() >= store::MAX_READS {
            return Ok(());
        }
        rec.reads.push((officer.clone(), self.now));
        let sender = rec.sender.clone();
        let ops = vec![
            store::put(Tree::Inbox, pair_key(id, &sender), &rec),
            Op::Audit(crate::audit::Event::Acknowledged {
                packet_id: id,
                officer: officer.clone(),
                from: Some(sender.clone()),
            }),
        ];
        if self.commit(i, ops).is_err() {
            return Ok(());
        }
        let ts = self.ts();
        let ack = Packet::read_ack(&self.nodes[i].id, &sender, id, rec.priority, officer, ts, &mut self.rng);
        self.report.acks += 1;
        self.submit(i, &ack)
    }

    /// An officer answers a request it received.
    fn answer_random(&mut self) -> Res {
        let i = self.below(self.nodes.len() as u64) as usize;
        let requests: Vec<(PacketId, InboxRecord)> =
            self.received(i)?.into_iter().filter(|(_, r)| r.packet_type == PacketType::InformationRequest).collect();
        if requests.is_empty() {
            return Ok(());
        }
        let (id, rec) = requests[self.below(requests.len() as u64) as usize].clone();
        let to = self.index(&rec.sender)?;
        let mut v = self.draft(RESPONSE, i, &[to])?;
        if let Some(env) = v.get_mut("envelope").and_then(Value::as_object_mut) {
            env.insert("in_reply_to".into(), Value::String(id.to_string()));
        }
        let ts = self.ts();
        let Ok(packet) = Packet::from_json_draft(&v.to_string(), ts, &mut self.rng) else { return Ok(()) };
        self.report.answers += 1;
        self.submit(i, &packet)
    }

    // ---- the sender's side ----

    /// What node `a`'s peer task does for partner `b`: timers, dialling, handing up to `burst`
    /// copies to lanes (written at once), persisting what changed.
    fn transmit(&mut self, a: usize, b: usize, burst: usize) -> Res {
        let now = self.now;
        let peer = self.nodes[b].id.clone();
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
                machine.handle_connect_failed(now);
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
        let peer = self.nodes[b].id.clone();
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
        let peer = self.nodes[b].id.clone();
        let dirty = self.nodes[a].senders.get_mut(&peer).map(Sender::take_dirty).unwrap_or_default();
        let keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient.clone())).collect();
        let ops = entry_ops(dirty);
        if !ops.is_empty() && self.commit(a, ops).is_err() {
            if let Some(m) = self.nodes[a].senders.get_mut(&peer) {
                m.mark_dirty(keys);
            }
        }
        Ok(())
    }

    /// A receipt arrived at `s` from `r` on `lane`: verify, prepare, store, apply (as the lane
    /// task does).
    fn on_receipt(&mut self, s: usize, r: usize, lane: LaneId, bytes: &[u8]) -> Res {
        let now = self.now;
        let ts = self.ts();
        let peer = self.nodes[r].id.clone();
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
        let keys: Vec<(PacketId, NodeId)> = dirty.iter().map(|e| (e.packet_id, e.recipient.clone())).collect();
        let ops = receipt_ops(&peer, &receipt, &prepared, dirty);
        let committed = self.commit(s, ops);
        let machine = self.nodes[s].senders.get_mut(&peer).ok_or("no sender machine")?;
        match committed {
            Ok(()) => machine.apply_receipt(now, prepared),
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
        let peer = self.nodes[s].id.clone();
        let node = &self.nodes[r];
        let receiver = Receiver { seal: &node.seal, policies: &node.policies, known: node };
        let batch = receiver.receive(&peer, &frames, now, &mut self.rng).map_err(err("receive"))?;
        let Some(batch) = batch else { return Ok(()) };
        self.report.batches += 1;
        let mut ops = batch.ops;
        let mut staged = Staged::default();
        for p in &batch.about_deadlines {
            self.nodes[r].deadlines.stage(&mut staged, p, Flow::Received, &peer, now);
        }
        ops.extend(staged.changed().map(|d| store::put(Tree::Deadlines, Deadlines::key(d), d)));
        if self.commit(r, ops).is_err() {
            // Nothing of the batch acknowledged: the stream is reset, the rest of it dropped.
            self.arrived.remove(&key);
            self.send(r, s, Msg::Reset { conn: conn_id, lane });
            return Ok(());
        }
        let node = &mut self.nodes[r];
        node.deadlines.apply(staged);
        for (id, digest, at) in &batch.stored {
            node.inbox.record(*id, peer.clone(), *digest, *at);
        }
        if let Some(m) = node.senders.get_mut(&peer) {
            for (id, reads) in batch.acked {
                m.add_reads(id, reads);
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
                Msg::Reset { conn, lane } => {
                    if self.conns.get(&conn).is_some_and(|c| c.alive) {
                        let peer = self.nodes[f.from].id.clone();
                        if let Some(m) = self.nodes[f.to].senders.get_mut(&peer) {
                            m.handle_lane_failed(self.now, lane);
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
        let partners: Vec<NodeId> =
            self.nodes.iter().filter(|n| n.id != self.nodes[i].id).map(|n| n.id.clone()).collect();
        let restored = crate::node::restore(&store, partners, RETRY, self.now).map_err(err("restore"))?;
        let node = &mut self.nodes[i];
        std::mem::replace(&mut node.store, store).close();
        node.senders = restored.senders.into_iter().collect();
        node.inbox = restored.inbox;
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

    // ---- invariants ----

    /// After every step: what the senders show (acknowledged copies present, terminal states
    /// unchanged, receipts stored and verified for every new terminal state).
    fn check_cheap(&mut self) -> Res {
        for a in 0..self.nodes.len() {
            self.check_sender(a)?;
        }
        Ok(())
    }

    /// Every ten steps, after each crash and at the end: also the stores read whole.
    fn check(&mut self) -> Res {
        for a in 0..self.nodes.len() {
            self.check_sender(a)?;
            self.check_inbox(a)?;
            self.check_deadlines(a)?;
        }
        Ok(())
    }

    fn check_sender(&mut self, a: usize) -> Res {
        // No acknowledged submit lost (after a crash, memory is what the disk kept).
        for (origin, id, to) in self.ledger.keys() {
            if *origin == a && self.nodes[a].senders.get(&self.nodes[*to].id).and_then(|s| s.entry(*id)).is_none() {
                return Err(format!(
                    "{} lost the acknowledged copy of {id} for {}",
                    self.nodes[a].id, self.nodes[*to].id
                ));
            }
        }
        let mut done = Vec::new();
        for (peer, s) in &self.nodes[a].senders {
            for e in s.entries() {
                if e.state.is_terminal() {
                    done.push((peer.clone(), e.clone()));
                }
            }
        }
        for (peer, e) in done {
            let key = (a, e.packet_id, peer.clone());
            match self.terminal.get(&key) {
                Some(before) if *before != e.state => {
                    return Err(format!(
                        "{}: the terminal state of {} for {peer} changed: {before:?} -> {:?}",
                        self.nodes[a].id, e.packet_id, e.state
                    ))
                }
                Some(_) => {}
                None => {
                    self.terminal.insert(key.clone(), e.state.clone());
                }
            }
            if !self.verified.contains(&key) && !matches!(e.state, EntryState::Expired { .. }) {
                self.check_receipt(a, &peer, &e)?;
                self.verified.insert(key);
            }
        }
        Ok(())
    }

    /// A delivered or rejected copy has the partner's signed receipt stored, verified, naming
    /// the bytes sent and the same outcome; a delivered one is stored at the partner.
    fn check_receipt(&self, a: usize, peer: &NodeId, e: &Entry) -> Res {
        let me = &self.nodes[a];
        let what = format!("{}: {} to {peer} is {}", me.id, e.packet_id, e.state.name());
        let receipt_id = me
            .store
            .get(Tree::ReceiptIndex, &pair_key(e.packet_id, peer))
            .map_err(err("receipt index"))?
            .ok_or_else(|| format!("{what} without a stored receipt"))?;
        let bytes = me
            .store
            .get(Tree::Receipts, &receipt_id)
            .map_err(err("receipts"))?
            .ok_or_else(|| format!("{what}: its receipt is indexed but not stored"))?;
        let signed = crate::seal::verify_signed(&self.keyring, &bytes)
            .map_err(|x| format!("{what}: receipt does not verify: {x}"))?;
        let Body::DeliveryReceipt(r) = &signed.packet.body else { return Err(format!("{what}: not a receipt")) };
        if r.receiver != *peer || signed.packet.envelope.originator.node != *peer {
            return Err(format!("{what}: receipt not signed by the partner"));
        }
        let item = r
            .receipts
            .iter()
            .find(|i| i.packet_id == e.packet_id)
            .ok_or_else(|| format!("{what}: receipt has no item for it"))?;
        if item.sealed_digest != e.sealed_digest {
            return Err(format!("{what}: receipt names other bytes"));
        }
        match (&e.state, &item.outcome) {
            (EntryState::Delivered { .. }, ReceiptOutcome::Accepted) => {
                let b = self.index(peer)?;
                let stored = self.nodes[b].store.inbox_record(e.packet_id, &me.id).map_err(err("inbox"))?;
                if stored.is_none() {
                    return Err(format!("{what}, but {peer} has not stored it"));
                }
                Ok(())
            }
            (EntryState::Rejected { code, .. }, ReceiptOutcome::Rejected { code: signed_code, .. })
                if code == signed_code =>
            {
                Ok(())
            }
            _ => Err(format!("{what}, but the receipt says {:?}", item.outcome)),
        }
    }

    /// The inbox index agrees with the store: nothing shown twice, nothing shown unstored.
    fn check_inbox(&self, b: usize) -> Res {
        let node = &self.nodes[b];
        let stored = node.store.scan(Tree::Inbox, &[]).map_err(err("scan"))?;
        if stored.len() != node.inbox.len() {
            return Err(format!(
                "{}: {} packets stored, {} in the inbox index",
                node.id,
                stored.len(),
                node.inbox.len()
            ));
        }
        for (k, v) in stored {
            let rec: InboxRecord = store::decode(Tree::Inbox, &v).map_err(err("inbox record"))?;
            let id = PacketId::from_bytes(k.get(..16).and_then(|x| x.try_into().ok()).ok_or("inbox key")?);
            if !node.inbox.has(id, &rec.sender) {
                return Err(format!("{}: {id} from {} stored but not in the index", node.id, rec.sender));
            }
            if node.store.get(Tree::Evidence, &k).map_err(err("evidence"))?.is_none() {
                return Err(format!("{}: {id} from {} listed without its evidence", node.id, rec.sender));
            }
        }
        Ok(())
    }

    /// Deadlines are on disk as in memory, and move only by their rules: `due_by` changes only
    /// with a new delay notice or the end of a pause; an answer, once recorded, stays.
    fn check_deadlines(&mut self, i: usize) -> Res {
        let node = &self.nodes[i];
        let mut on_disk = BTreeMap::new();
        for (_, v) in node.store.scan(Tree::Deadlines, &[]).map_err(err("scan"))? {
            let d: Deadline = store::decode(Tree::Deadlines, &v).map_err(err("deadline"))?;
            on_disk.insert((d.request, d.counterpart.clone()), d);
        }
        for role in [crate::deadlines::Role::Answer, crate::deadlines::Role::Await] {
            for d in node.deadlines.open(role) {
                if on_disk.get(&(d.request, d.counterpart.clone())) != Some(d) {
                    return Err(format!("{}: the deadline of {} is not on disk as in memory", node.id, d.request));
                }
            }
        }
        for d in on_disk.into_values() {
            let key = (i, d.request, d.counterpart.clone());
            if let Some(before) = self.seen_deadlines.get(&key) {
                let moved = before.due_by != d.due_by;
                let by_rule = d.delays.len() > before.delays.len() || (before.paused.is_some() && d.paused.is_none());
                if (moved && !by_rule)
                    || (before.answered.is_some() && before.answered != d.answered)
                    || before.window != d.window
                {
                    return Err(format!(
                        "{}: the deadline of {} changed against its rules: {before:?} -> {d:?}",
                        self.nodes[i].id, d.request
                    ));
                }
            }
            self.seen_deadlines.insert(key, d);
        }
        Ok(())
    }

    fn check_audit(&self) -> Res {
        for n in &self.nodes {
            match n.store.audit_verify(&n.id, &n.seal.public().signing).map_err(err("audit"))? {
                Ok(_) => {}
                Err(broken) => return Err(format!("{}: the audit trail does not verify: {broken}", n.id)),
            }
        }
        Ok(())
    }

    /// After healing: every acknowledged copy delivered, rejected by a rule, or expired after
    /// its expiry.
    fn check_final(&mut self) -> Res {
        let ledger: Vec<((usize, PacketId, usize), Expected)> =
            self.ledger.iter().map(|(k, v)| (*k, v.clone())).collect();
        for ((a, id, b), expected) in ledger {
            let peer = self.nodes[b].id.clone();
            let e = self.nodes[a].senders.get(&peer).and_then(|s| s.entry(id)).ok_or("lost")?;
            match &e.state {
                EntryState::Delivered { .. } => self.report.delivered += 1,
                EntryState::Rejected { code, .. } => {
                    if code.is_empty() {
                        return Err(format!("{id} to {peer} rejected without a rule"));
                    }
                    self.report.rejected += 1;
                }
                EntryState::Expired { at } => {
                    if *at < expected.expires {
                        return Err(format!("{id} to {peer} expired at {at}, before its expiry {}", expected.expires));
                    }
                    self.report.expired += 1;
                }
                other => return Err(format!("{id} to {peer} still {} after the network healed", other.name())),
            }
        }
        Ok(())
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
    /// the first failed commit of a receipt leaves a copy "delivered" without its receipt.
    #[test]
    fn finds_a_receipt_applied_before_its_commit() {
        let f = find(Bug::ApplyReceiptBeforeCommit).expect("the simulator missed the planted bug");
        assert!(f.what.contains("without a stored receipt"), "{f}");
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
