//! A UDP fault proxy, a test tool: it stands between two nodes (this kernel has no `netem`) and
//! loses, delays, jitters (so reorders), duplicates datagrams and partitions the link, with a
//! seeded random source so that a run can be repeated.
//!
//! A client (the dialling node) sends to the proxy's address; the proxy forwards each of its
//! datagrams to `upstream` from a socket of its own per client, and what comes back to that
//! socket to the client. Faults apply in both directions. Delayed datagrams wait in a queue
//! bounded at [`MAX_QUEUED`] (beyond it they are dropped, as a router would); every thread
//! stops when the [`FaultProxy`] is dropped.
//!
//! Used by the process tests (`tests/lossy.rs`) and by hand:
//! `cargo run --release --example faultproxy -- --listen 127.0.0.1:9000 --upstream 127.0.0.1:7400 --loss 0.05 --delay-ms 100`.

use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most datagrams waiting for their delay; more are dropped.
pub const MAX_QUEUED: usize = 65_536;
/// Most clients (source addresses) served at once.
const MAX_CLIENTS: usize = 64;

/// What the link does to each datagram, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Share of datagrams dropped (0.0 to 1.0).
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter]: datagrams overtake each other.
    pub jitter: Duration,
    /// Share of datagrams sent twice (the copy with its own delay).
    pub duplicate: f64,
}

impl Faults {
    /// A clean link.
    pub const NONE: Faults = Faults { loss: 0.0, delay: Duration::ZERO, jitter: Duration::ZERO, duplicate: 0.0 };
}

/// What the proxy did, so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received from either side.
    pub received: u64,
    /// Datagrams forwarded (copies included).
    pub forwarded: u64,
    /// Dropped by the loss rate.
    pub lost: u64,
    /// Dropped while partitioned.
    pub partitioned: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Dropped because the delay queue was full.
    pub overflowed: u64,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A socket or thread could not be set up.
    #[error("fault proxy: {0}")]
    Io(#[from] std::io::Error),
    /// A rate outside [0, 1].
    #[error("fault proxy: {what} must be between 0 and 1, not {value}")]
    Rate {
        /// Which.
        what: &'static str,
        /// The value given.
        value: f64,
    },
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    faults: Mutex<Faults>,
    partitioned: AtomicBool,
    stop: AtomicBool,
    rng: Mutex<ChaCha8Rng>,
    queue: Mutex<BinaryHeap<Due>>,
    wake: Condvar,
    counts: Mutex<Counts>,
    seq: AtomicU64,
}

/// A datagram waiting to be sent: earliest first, then in arrival order.
struct Due {
    at: Instant,
    seq: u64,
    to: Target,
    bytes: Vec<u8>,
}

#[derive(Clone)]
enum Target {
    /// To the upstream node, from the client's own socket.
    Upstream(Arc<UdpSocket>),
    /// Back to a client, from the listening socket.
    Client(Arc<UdpSocket>, SocketAddr),
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest is the greatest.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl FaultProxy {
    /// Listens on `listen` (port 0: any free one) and forwards to `upstream` with `faults`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, faults: Faults, seed: u64) -> Result<Self, ProxyError> {
        check(faults)?;
        let socket = Arc::new(UdpSocket::bind(listen)?);
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            partitioned: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            counts: Mutex::new(Counts::default()),
            seq: AtomicU64::new(0),
        });
        let sender = {
            let shared = shared.clone();
            std::thread::Builder::new().name("faultproxy-send".into()).spawn(move || send_loop(&shared))?
        };
        let listener = {
            let shared2 = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("faultproxy-listen".into())
                .spawn(move || listen_loop(&shared2, &socket, upstream));
            match spawned {
                Ok(t) => t,
                Err(e) => {
                    // Stop the sender thread already running.
                    shared.stop.store(true, Ordering::SeqCst);
                    shared.wake.notify_all();
                    let _ = sender.join();
                    return Err(e.into());
                }
            }
        };
        Ok(Self { addr, shared, threads: vec![sender, listener] })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link (both directions) or heals it.
    pub fn set_partitioned(&self, on: bool) {
        self.shared.partitioned.store(on, Ordering::SeqCst);
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) -> Result<(), ProxyError> {
        check(faults)?;
        *lock(&self.shared.faults) = faults;
        Ok(())
    }

    /// What it did so far.
    pub fn counts(&self) -> Counts {
        *lock(&self.shared.counts)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Under the queue's lock, so that the sender cannot miss the wake-up between its check
        // of `stop` and its wait.
        let queue = lock(&self.shared.queue);
        self.shared.wake.notify_all();
        drop(queue);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn check(f: Faults) -> Result<(), ProxyError> {
    for (what, value) in [("loss", f.loss), ("duplicate", f.duplicate)] {
        if !(0.0..=1.0).contains(&value) {
            return Err(ProxyError::Rate { what, value });
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads from clients (and from each client's upstream socket, on a thread per client).
fn listen_loop(shared: &Arc<Shared>, socket: &Arc<UdpSocket>, upstream: SocketAddr) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::SeqCst) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => continue,
        };
        let up = match clients.get(&from) {
            Some(up) => up.clone(),
            None if clients.len() >= MAX_CLIENTS => continue,
            None => {
                let Ok(up) = UdpSocket::bind(if upstream.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }) else {
                    continue;
                };
                if up.connect(upstream).is_err() || up.set_read_timeout(Some(Duration::from_millis(50))).is_err() {
                    continue;
                }
                let up = Arc::new(up);
                clients.insert(from, up.clone());
                let (shared, up2, back) = (shared.clone(), up.clone(), socket.clone());
                if let Ok(t) = std::thread::Builder::new()
                    .name("faultproxy-upstream".into())
                    .spawn(move || upstream_loop(&shared, &up2, &back, from))
                {
                    readers.push(t);
                }
                up
            }
        };
        schedule(shared, Target::Upstream(up), &buf[..n]);
    }
    for t in readers {
        let _ = t.join();
    }
}

fn upstream_loop(shared: &Shared, up: &UdpSocket, back: &Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::SeqCst) {
        if let Ok(n) = up.recv(&mut buf) {
            schedule(shared, Target::Client(back.clone(), client), &buf[..n]);
        }
    }
}

/// Applies the faults to one datagram: dropped, or queued once or twice with its delay.
fn schedule(shared: &Shared, to: Target, bytes: &[u8]) {
    let faults = *lock(&shared.faults);
    let mut counts = lock(&shared.counts);
    counts.received += 1;
    if shared.partitioned.load(Ordering::SeqCst) {
        counts.partitioned += 1;
        return;
    }
    let (lose, copies, delays) = {
        let mut rng = lock(&shared.rng);
        let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let lose = unit() < faults.loss;
        let copies = if unit() < faults.duplicate { 2 } else { 1 };
        let jitter = faults.jitter.as_secs_f64();
        let delays: Vec<Duration> =
            (0..copies).map(|_| faults.delay + Duration::from_secs_f64(jitter * unit())).collect();
        (lose, copies, delays)
    };
    if lose {
        counts.lost += 1;
        return;
    }
    counts.duplicated += copies - 1;
    let now = Instant::now();
    let mut queue = lock(&shared.queue);
    for d in delays {
        if queue.len() >= MAX_QUEUED {
            counts.overflowed += 1;
            continue;
        }
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        queue.push(Due { at: now + d, seq, to: to.clone(), bytes: bytes.to_vec() });
    }
    shared.wake.notify_one();
}

/// Sends each queued datagram when its time comes.
fn send_loop(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        match queue.peek() {
            Some(d) if d.at <= now => {
                let Some(d) = queue.pop() else { continue };
                drop(queue);
                let sent = match &d.to {
                    Target::Upstream(up) => up.send(&d.bytes),
                    Target::Client(back, client) => back.send_to(&d.bytes, client),
                };
                if sent.is_ok() {
                    lock(&shared.counts).forwarded += 1;
                }
                queue = lock(&shared.queue);
            }
            Some(d) => {
                // A short relative sleep, not a timed wait on the condition variable: a timed
                // wait's deadline is absolute, and under libfaketime (the suite's second run) it
                // may never come; a sleep of 2 ms at most always ends.
                let wait = (d.at - now).min(Duration::from_millis(2));
                drop(queue);
                std::thread::sleep(wait);
                queue = lock(&shared.queue);
            }
            None => {
                queue = shared
                    .wake
                    .wait_timeout(queue, Duration::from_millis(50))
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    /// Datagrams go through both ways; loss, duplication and partition do what they say.
    #[test]
    fn forwards_loses_duplicates_and_partitions() {
        let (server, server_addr) = echo();
        server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), server_addr, Faults::NONE, 1).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 16];
        client.send_to(b"ping", proxy.addr()).unwrap();
        let (n, via) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", via).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], proxy.addr()));

        proxy.set_partitioned(true);
        client.send_to(b"lost", proxy.addr()).unwrap();
        assert!(server.recv_from(&mut buf).is_err(), "nothing crosses a partition");
        proxy.set_partitioned(false);

        proxy.set_faults(Faults { loss: 0.5, duplicate: 0.5, ..Faults::NONE }).unwrap();
        // Paced, so that no socket buffer on the way drops any (the proxy's counts must add up).
        let mut got = 0;
        server.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        server.set_nonblocking(true).unwrap();
        for i in 0..400 {
            client.send_to(b"x", proxy.addr()).unwrap();
            if i % 10 == 9 {
                std::thread::sleep(Duration::from_millis(2));
            }
            while server.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        server.set_nonblocking(false).unwrap();
        while server.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        let c = proxy.counts();
        assert_eq!((c.received, c.partitioned), (403, 1), "{c:?}");
        assert!(c.lost > 120 && c.lost < 280, "{c:?}");
        assert!(c.duplicated > 50, "{c:?}");
        assert_eq!(got as u64, 400 - c.lost + c.duplicated, "{c:?}");
        assert!(proxy.set_faults(Faults { loss: 1.5, ..Faults::NONE }).is_err());
    }

    /// Jitter reorders; the delay holds datagrams back.
    #[test]
    fn delay_and_jitter_reorder() {
        let (server, server_addr) = echo();
        server.set_read_timeout(Some(Duration::from_millis(1_000))).unwrap();
        let faults = Faults { delay: Duration::from_millis(30), jitter: Duration::from_millis(30), ..Faults::NONE };
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), server_addr, faults, 7).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        for i in 0..50u8 {
            client.send_to(&[i], proxy.addr()).unwrap();
        }
        let mut order = Vec::new();
        let mut buf = [0u8; 4];
        while order.len() < 50 {
            let (_, _) = server.recv_from(&mut buf).unwrap();
            if order.is_empty() {
                assert!(started.elapsed() >= Duration::from_millis(30), "held back by the delay");
            }
            order.push(buf[0]);
        }
        assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter reorders: {order:?}");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<u8>>(), "each once");
    }
}
