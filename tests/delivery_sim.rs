//! The delivery core under a hostile network, in memory with simulated time: messages are lost,
//! duplicated, delayed and reordered; sender and receivers crash and restart from what they had
//! persisted. After every step the invariants are checked; at the end, with the network healed,
//! nothing submitted is lost and nothing is shown twice.
//!
//! Each run is seeded; a failure prints the seed so it can be replayed exactly.

use std::collections::{BTreeMap, HashMap};

use liaison::delivery::{Entry, Inbox, Incoming, Millis, Outbox, ReceiptOutcome, RetryPolicy};
use liaison::encoding::Digest;
use liaison::ids::{NodeId, PacketId};
use liaison::markings::Priority;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The few random draws the simulation needs, on a seeded RNG.
trait Draw {
    fn below(&mut self, n: u64) -> u64;
    fn chance(&mut self, p: f64) -> bool;
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
}

impl Draw for ChaCha8Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

const POLICY: RetryPolicy = RetryPolicy { initial_backoff: 50, max_backoff: 2_000, receipt_timeout: 400 };

#[derive(Debug, Clone)]
enum Msg {
    Data { id: PacketId, to: NodeId, digest: Digest },
    Receipt { id: PacketId, from: NodeId, digest: Digest, accepted: bool, at: Millis },
}

struct Receiver {
    name: NodeId,
    /// What survives a crash: stored packets (how often each was stored) and the receipts issued.
    stored: HashMap<PacketId, u32>,
    receipts: HashMap<PacketId, (Digest, bool)>,
    inbox: Inbox,
}

impl Receiver {
    fn restart(&mut self, sender: &NodeId) {
        self.inbox = Inbox::new();
        for (id, (digest, accepted)) in &self.receipts {
            self.inbox.record(*id, sender.clone(), *digest, u64::from(*accepted));
        }
    }
}

struct Sim {
    rng: ChaCha8Rng,
    now: Millis,
    sender: NodeId,
    outbox: Outbox,
    persisted: BTreeMap<(PacketId, NodeId), Entry>,
    last_state: HashMap<(PacketId, NodeId), &'static str>,
    receivers: Vec<Receiver>,
    net: Vec<(Millis, Msg)>,
    loss: f64,
    dup: f64,
    submitted: Vec<(PacketId, Millis)>,
    seed: u64,
}

/// The receiver refuses some packets by rule (as a policy would); deterministic per packet.
fn refused(id: &PacketId) -> bool {
    id.as_bytes()[15] % 11 == 0
}

impl Sim {
    fn new(seed: u64) -> Self {
        let sender: NodeId = "IT-DCSA".parse().unwrap();
        let receivers = ["ES-UDYCO", "CO-DIJIN"]
            .iter()
            .map(|n| Receiver {
                name: n.parse().unwrap(),
                stored: HashMap::new(),
                receipts: HashMap::new(),
                inbox: Inbox::new(),
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let loss = rng.below(50) as f64 / 100.0;
        let dup = rng.below(30) as f64 / 100.0;
        Self {
            outbox: Outbox::new(POLICY, seed),
            rng,
            now: 1_000_000,
            sender,
            persisted: BTreeMap::new(),
            last_state: HashMap::new(),
            receivers,
            net: vec![],
            loss,
            dup,
            submitted: vec![],
            seed,
        }
    }

    fn persist(&mut self) {
        for e in self.outbox.take_dirty() {
            let k = (e.packet_id, e.recipient.clone());
            let name = e.state.name();
            let prev = self.last_state.insert(k.clone(), name);
            let legal = match (prev, name) {
                (None, "queued") => true,
                (Some("queued"), "in_flight" | "delivered" | "rejected" | "expired" | "queued") => true,
                (Some("in_flight"), "queued" | "delivered" | "rejected" | "expired" | "in_flight") => true,
                (Some(a), b) if a == b && matches!(a, "delivered" | "rejected" | "expired") => true, // read ack
                _ => false,
            };
            assert!(legal, "seed {}: illegal transition {prev:?} -> {name} for {k:?}", self.seed);
            if let liaison::delivery::EntryState::Delivered { .. } = e.state {
                let r = self.receivers.iter().find(|r| r.name == k.1).unwrap();
                assert!(r.stored.contains_key(&k.0), "seed {}: delivered but not stored at {}", self.seed, k.1);
            }
            if let Some(old) = self.persisted.get(&k) {
                assert!(
                    !old.state.is_terminal() || old.state == e.state,
                    "seed {}: terminal state changed: {:?} -> {:?}",
                    self.seed,
                    old.state,
                    e.state
                );
            }
            self.persisted.insert(k, e);
        }
    }

    fn send(&mut self, msg: Msg) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.between(1, 300);
            self.net.push((self.now + delay, msg.clone()));
        }
    }

    fn submit(&mut self) {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        let id: PacketId = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            u32::from_be_bytes(bytes[0..4].try_into().unwrap()),
            u16::from_be_bytes(bytes[4..6].try_into().unwrap()),
            u16::from_be_bytes(bytes[6..8].try_into().unwrap()),
            u16::from_be_bytes(bytes[8..10].try_into().unwrap()),
            u64::from_be_bytes([0, 0, bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]])
        )
        .parse()
        .unwrap();
        let priority = [Priority::Flash, Priority::Urgent, Priority::Routine][self.rng.below(3) as usize];
        // Most packets live long; some expire within seconds, to exercise expiry.
        let ttl = if self.rng.chance(0.1) { self.rng.between(100, 3_000) } else { 10_000_000 };
        let expires = self.now + ttl;
        let both = self.rng.chance(0.5);
        for r in 0..if both { 2 } else { 1 } {
            let to = self.receivers[r].name.clone();
            let digest = Digest::of(&[id.as_bytes().as_slice(), to.as_str().as_bytes()].concat());
            assert!(self.outbox.submit(self.now, id, to, priority, expires, digest));
        }
        self.submitted.push((id, expires));
        self.persist();
    }

    fn transmit(&mut self) {
        for r in 0..self.receivers.len() {
            let to = self.receivers[r].name.clone();
            let window = self.rng.between(0, 4);
            for _ in 0..window {
                let Some(t) = self.outbox.poll_transmit(self.now, &to) else { break };
                self.persist();
                let digest = self.outbox.entry(t.packet_id, &to).unwrap().sealed_digest;
                if self.rng.chance(0.05) {
                    // The connection drops while sending.
                    self.outbox.handle_send_failed(self.now, t.packet_id, &to);
                    self.persist();
                } else {
                    self.send(Msg::Data { id: t.packet_id, to: to.clone(), digest });
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        self.net.sort_by_key(|(t, _)| *t);
        let due: Vec<Msg> = {
            let split = self.net.partition_point(|(t, _)| *t <= self.now);
            self.net.drain(..split).map(|(_, m)| m).collect()
        };
        for msg in due {
            match msg {
                Msg::Data { id, to, digest } => {
                    let sender = self.sender.clone();
                    let now = self.now;
                    let r = self.receivers.iter_mut().find(|r| r.name == to).unwrap();
                    let accepted = !refused(&id);
                    match r.inbox.classify(id, &sender, &digest) {
                        Incoming::New { .. } => {
                            // Store (and flush) first, then receipt: the order guarantee 1 needs.
                            if accepted {
                                let times = r.stored.entry(id).or_default();
                                *times += 1;
                                assert_eq!(*times, 1, "seed {}: {} shows {id} twice", self.seed, r.name);
                            }
                            r.receipts.insert(id, (digest, accepted));
                            r.inbox.record(id, sender, digest, now);
                        }
                        Incoming::Duplicate { .. } | Incoming::DuplicateWithOtherBytes { .. } => {}
                    }
                    let (d, acc) = r.receipts[&id];
                    self.send(Msg::Receipt { id, from: to, digest: d, accepted: acc, at: now });
                }
                Msg::Receipt { id, from, digest, accepted, at } => {
                    let outcome = if accepted {
                        ReceiptOutcome::Accepted { received_at: at }
                    } else {
                        ReceiptOutcome::Rejected { code: "policy".into(), reason: "refused by rule".into() }
                    };
                    self.outbox.handle_receipt(self.now, id, &from, digest, outcome);
                    self.persist();
                }
            }
        }
    }

    fn crash_sender(&mut self) {
        let entries: Vec<Entry> = self.persisted.values().cloned().collect();
        self.outbox = Outbox::restore(POLICY, self.rng.next_u64(), entries, self.now);
        self.persist();
    }

    fn step(&mut self) {
        match self.rng.between(0, 100) {
            0..=14 => self.submit(),
            15..=49 => self.transmit(),
            50..=51 => self.crash_sender(),
            52 => {
                let i = self.rng.below(self.receivers.len() as u64) as usize;
                let sender = self.sender.clone();
                self.receivers[i].restart(&sender);
            }
            _ => {
                self.now += self.rng.between(1, 200);
                self.deliver_due();
                self.outbox.handle_timeout(self.now);
                self.persist();
            }
        }
    }

    /// Heal the network and run until nothing is pending (bounded).
    fn settle(&mut self) {
        self.loss = 0.0;
        self.dup = 0.0;
        for _ in 0..20_000 {
            if self.outbox.pending() == 0 && self.net.is_empty() {
                return;
            }
            self.transmit();
            self.now += 50;
            self.deliver_due();
            self.outbox.handle_timeout(self.now);
            self.persist();
        }
        panic!("seed {}: did not settle: {} pending", self.seed, self.outbox.pending());
    }

    fn check_final(&self) {
        for (id, expires) in &self.submitted {
            for e in self.outbox.entries_of(*id) {
                let r = self.receivers.iter().find(|r| r.name == e.recipient).unwrap();
                let stored = r.stored.get(id).copied().unwrap_or(0);
                match &e.state {
                    liaison::delivery::EntryState::Delivered { .. } => assert_eq!(stored, 1, "seed {}", self.seed),
                    liaison::delivery::EntryState::Rejected { .. } => {
                        assert!(refused(id) && stored == 0, "seed {}: rejected without cause", self.seed)
                    }
                    liaison::delivery::EntryState::Expired { at } => {
                        assert!(*at >= *expires, "seed {}: expired early", self.seed);
                        assert!(stored <= 1);
                    }
                    other => panic!("seed {}: {id} to {} still {other:?} after settling", self.seed, e.recipient),
                }
                assert_eq!(self.persisted[&(*id, e.recipient.clone())], *e, "seed {}: persisted state lags", self.seed);
            }
        }
    }
}

#[test]
fn randomised_lossy_network_with_crashes() {
    let mut delivered = 0;
    let mut expired = 0;
    for seed in 0..150 {
        let mut sim = Sim::new(seed);
        for _ in 0..1_500 {
            sim.step();
        }
        sim.settle();
        sim.check_final();
        for e in sim.outbox.entries() {
            match e.state.name() {
                "delivered" => delivered += 1,
                "expired" => expired += 1,
                _ => {}
            }
        }
    }
    // The schedules really exercise both outcomes.
    assert!(delivered > 1_000 && expired > 10, "delivered {delivered}, expired {expired}");
}

#[test]
fn flash_overtakes_a_routine_backlog() {
    let mut o = Outbox::new(POLICY, 3);
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    for i in 0..1000u32 {
        let id: PacketId = format!("019ac0a1-5c00-7000-8000-{i:012x}").parse().unwrap();
        o.submit(i as u64, id, es.clone(), Priority::Routine, 10_000_000, Digest::of(&i.to_be_bytes()));
    }
    let flash: PacketId = "019ac0a1-5c00-7000-8000-ffffffffffff".parse().unwrap();
    o.submit(2_000, flash, es.clone(), Priority::Flash, 10_000_000, Digest::of(b"flash"));
    for _ in 0..10 {
        o.poll_transmit(2_000, &es).unwrap();
    }
    // The FLASH went out within the first poll after it was submitted, not after 1,000 routine.
    assert_eq!(o.entry(flash, &es).unwrap().attempts, 1);
}
