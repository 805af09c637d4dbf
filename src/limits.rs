//! What one partner — or anyone unauthenticated — can make this node hold or do, bounded.
//!
//! A partner holds a valid certificate; if it turns hostile, nothing it sends may outweigh
//! another partner's traffic or wear the node down. Per partner:
//!
//! - **memory**: a frame being read, or read and waiting to be stored, holds its announced
//!   length from the partner's [`MemoryBudget`] (all its connections and streams together) and
//!   from its stream's share, taken *before* its body is read; a frame that does not fit waits
//!   (QUIC flow control then stops the sender). The bytes themselves are held as they arrive,
//!   and everything is given back when the frame is stored, refused or abandoned.
//! - **stalls**: a frame whose bytes stop arriving for [`Limits::frame_stall`] is abandoned and
//!   its stream reset.
//! - **connections and streams**: at most [`Limits::connections_per_partner`] connections (a
//!   new one closes the oldest: a restarted partner is never locked out by its own stale
//!   connection), and three bidirectional streams on each (the three lanes).
//! - **pace**: frames are read at most at twice the partner's agreed receive rate
//!   (`max_packets_per_minute` of its policy) — whatever they are, valid or not. Up to the agreed
//!   rate packets are taken; between it and twice it they are refused by the policy (a signed
//!   rejection names the rule); beyond that nothing more is read until the minute allows
//!   ([`TokenBucket`]), so a flood costs neither CPU nor receipts nor disk.
//!
//! For the unauthenticated: failed handshakes and refused API requests are logged through a
//! [`LogBudget`], a few lines a minute and then one line that counts the rest.
//!
//! [`PartnerLimits`] holds one partner's budgets as they stand. The pure parts
//! ([`TokenBucket`], [`ConnectionSlots`], [`LogBudget`]) take the time as an argument.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::delivery::Millis;
use crate::seal::MAX_SEALED_BYTES;

/// The bounds a node applies to each partner (the `[limits]` section of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of frames being read or waiting to be stored, per partner, across all its
    /// connections and streams.
    pub partner_memory: usize,
    /// A frame whose bytes stop arriving for this long is abandoned and its stream reset.
    pub frame_stall: Duration,
    /// Most connections a partner may hold open to this node at once.
    pub connections_per_partner: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { partner_memory: 96 << 20, frame_stall: Duration::from_secs(30), connections_per_partner: 2 }
    }
}

impl Limits {
    /// The least memory budget that can take one frame of the largest size.
    pub const MIN_PARTNER_MEMORY: usize = MAX_SEALED_BYTES + (1 << 10);

    /// One stream's share of the partner's budget: two of the largest frames (one being read
    /// while the one before is stored), or the whole budget if it is smaller. Three lanes at
    /// full share fit the default budget, so a partner's bulk lane never holds up its FLASH lane.
    pub fn stream_memory(&self) -> usize {
        (2 * MAX_SEALED_BYTES).min(self.partner_memory)
    }
}

/// Bidirectional streams a partner may have open on one connection: one per lane.
pub const STREAMS_PER_CONNECTION: u32 = 3;

/// Memory permits are counted in KiB (a semaphore holds at most `u32::MAX >> 3` permits).
const UNIT: usize = 1 << 10;

/// A budget of bytes, shared by whoever holds a clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self { permits: Arc::new(Semaphore::new(units)), total: units * UNIT }
    }

    /// Waits until `bytes` (rounded up to whole KiB, at most the whole budget) are free, and
    /// takes them until the returned permit is dropped.
    pub async fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT).min(self.total / UNIT)).unwrap_or(u32::MAX);
        self.permits.clone().acquire_many_owned(units).await.ok()
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }

    /// The budget.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// A token bucket: `per_minute` tokens a minute, at most a minute's worth saved up. Counted in
/// 1/60,000 of a token, so `elapsed ms × per_minute` is exact. The node paces a partner's frames
/// with one; the sharing policies count packets against `max_packets_per_minute` with another.
#[derive(Debug)]
pub struct TokenBucket {
    units: u64,
    at: Millis,
}

const TOKEN: u64 = 60_000;

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(per_minute: u32, now: Millis) -> Self {
        Self { units: u64::from(per_minute) * TOKEN, at: now }
    }

    /// Takes a token at `now` if there is one (`None`), or says how long until there is one
    /// (with a rate of 0 there never is: a minute is said); `per_minute` may change between calls
    /// (a policy reload).
    pub fn take(&mut self, per_minute: u32, now: Millis) -> Option<Duration> {
        if per_minute == 0 {
            return Some(Duration::from_secs(60));
        }
        let per_minute = u64::from(per_minute);
        let cap = per_minute * TOKEN;
        let refill = now.saturating_sub(self.at).saturating_mul(per_minute);
        self.units = self.units.saturating_add(refill).min(cap);
        self.at = self.at.max(now);
        if self.units >= TOKEN {
            self.units -= TOKEN;
            None
        } else {
            Some(Duration::from_millis((TOKEN - self.units).div_ceil(per_minute)))
        }
    }
}

/// The frames a partner may send a minute: twice its agreed receive rate, and at least one a
/// second (so a partner without a policy, or with a rate of 0, still gets its refusals).
pub fn pace_per_minute(agreed: Option<u32>) -> u32 {
    agreed.unwrap_or(0).saturating_mul(2).max(60)
}

/// The open connections of one partner, oldest first, by id.
#[derive(Debug)]
pub struct ConnectionSlots<C> {
    open: VecDeque<(u64, C)>,
}

impl<C> Default for ConnectionSlots<C> {
    fn default() -> Self {
        Self { open: VecDeque::new() }
    }
}

impl<C> ConnectionSlots<C> {
    /// A new connection; returns the connections to close so that at most `max` stay open
    /// (the oldest go).
    pub fn admit(&mut self, id: u64, conn: C, max: usize) -> Vec<C> {
        self.open.push_back((id, conn));
        let excess = self.open.len().saturating_sub(max.max(1));
        self.open.drain(..excess).map(|(_, c)| c).collect()
    }

    /// Connection `id` closed.
    pub fn release(&mut self, id: u64) {
        self.open.retain(|(c, _)| *c != id);
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// What one partner's traffic may hold and do, as it stands: the budgets above, for one
/// partner. `C` is a connection handle.
#[derive(Debug)]
pub struct PartnerLimits<C> {
    /// Frames being read or waiting to be stored, across all its connections and streams.
    pub memory: MemoryBudget,
    /// Frames it may send a minute.
    pacer: Mutex<TokenBucket>,
    /// Log lines about what it sends that is refused and what it does beyond its limits: a
    /// partner decides how many such events there are, so at most [`LogBudget::PER_MINUTE`]
    /// lines a minute of each kind, then a count.
    log: Mutex<HashMap<&'static str, LogBudget>>,
    /// Its open connections to this node.
    connections: Mutex<ConnectionSlots<C>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here holds an invariant a panic half-way could break: carry on with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<C> PartnerLimits<C> {
    /// Fresh budgets under `limits`, the pace starting with a full minute at `per_minute`.
    pub fn new(limits: &Limits, per_minute: u32, now: Millis) -> Self {
        Self {
            memory: MemoryBudget::new(limits.partner_memory),
            pacer: Mutex::new(TokenBucket::new(per_minute, now)),
            log: Mutex::new(HashMap::new()),
            connections: Mutex::new(ConnectionSlots::default()),
        }
    }

    /// Takes a frame's token at `now` (`None`), or says how long until the partner may send
    /// another at `per_minute`.
    pub fn pace(&self, per_minute: u32, now: Millis) -> Option<Duration> {
        locked(&self.pacer).take(per_minute, now)
    }

    /// Whether a line about an event of `kind` may be written at `now`: `Some(n)` with the `n`
    /// events of the minute before that were only counted.
    pub fn log(&self, kind: &'static str, now: Millis) -> Option<u64> {
        match locked(&self.log).entry(kind).or_default().event(now) {
            LogLine::Write { suppressed } => Some(suppressed),
            LogLine::Skip => None,
        }
    }

    /// The counts of events, by kind, that were not logged in a minute that is over.
    pub fn unlogged(&self, now: Millis) -> Vec<(&'static str, u64)> {
        locked(&self.log).iter_mut().filter_map(|(k, b)| b.flush(now).map(|n| (*k, n))).collect()
    }

    /// A new connection `id`; returns the oldest ones to close so that at most `max` stay open.
    pub fn admit(&self, id: u64, conn: C, max: usize) -> Vec<C> {
        locked(&self.connections).admit(id, conn, max)
    }

    /// Connection `id` closed.
    pub fn release(&self, id: u64) {
        locked(&self.connections).release(id);
    }
}

/// Log lines about something anyone can cause (a failed handshake, a refused API request):
/// the first [`LogBudget::PER_MINUTE`] in a minute are written, the rest counted and reported
/// in one line when the minute is over.
#[derive(Debug, Default)]
pub struct LogBudget {
    window_start: Millis,
    written: u32,
    suppressed: u64,
}

/// The budget of log lines for refusals of unauthenticated peers and clients: one for the
/// process, since what it protects (the log, the disk under it) is one.
static REFUSALS: std::sync::Mutex<LogBudget> = std::sync::Mutex::new(LogBudget::new());

/// Logs that something unauthenticated was refused (a handshake, an API request), within the
/// process's [`LogBudget`]: `detail` says why, for the administrator; it never goes back to the
/// peer.
pub fn log_refusal(what: &str, detail: &str) {
    let line = REFUSALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).event(crate::node::now_ms());
    match line {
        LogLine::Write { suppressed: 0 } => tracing::warn!(error = %detail, "{what}"),
        LogLine::Write { suppressed } => {
            tracing::warn!(
                count = suppressed,
                "{suppressed} more refusals of unauthenticated peers in the minute before, not logged one by one"
            );
            tracing::warn!(error = %detail, "{what}");
        }
        LogLine::Skip => {}
    }
}

/// Reports, in one line, the refusals of a minute that is over and that were only counted.
/// The node calls it every few seconds.
pub fn flush_refusals() {
    let n = REFUSALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flush(crate::node::now_ms());
    if let Some(n) = n {
        tracing::warn!(
            count = n,
            "{n} more refusals of unauthenticated peers in the last minute, not logged one by one"
        );
    }
}

/// What to do with one event under a [`LogBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Write it; `suppressed` more happened in the minute before it and were not written.
    Write {
        /// Events of the previous window that were counted but not written.
        suppressed: u64,
    },
    /// Do not write it (it is counted).
    Skip,
}

impl LogBudget {
    /// Lines written per minute before the rest are only counted.
    pub const PER_MINUTE: u32 = 10;

    /// A budget whose first minute starts at the first event.
    pub const fn new() -> Self {
        Self { window_start: 0, written: 0, suppressed: 0 }
    }

    /// An event at `now`.
    pub fn event(&mut self, now: Millis) -> LogLine {
        let mut suppressed = 0;
        if now.saturating_sub(self.window_start) >= 60_000 {
            suppressed = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.written = 0;
        }
        if self.written < Self::PER_MINUTE {
            self.written += 1;
            LogLine::Write { suppressed }
        } else {
            self.suppressed += 1;
            LogLine::Skip
        }
    }

    /// At `now`: the count of events skipped in a window that is over (to report once), if any.
    pub fn flush(&mut self, now: Millis) -> Option<u64> {
        if self.suppressed > 0 && now.saturating_sub(self.window_start) >= 60_000 {
            self.window_start = now;
            self.written = 0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_allows_a_minutes_worth_then_one_token_at_a_time() {
        let mut p = TokenBucket::new(120, 0);
        for _ in 0..120 {
            assert_eq!(p.take(120, 0), None);
        }
        assert_eq!(p.take(120, 0), Some(Duration::from_millis(500)), "two a second");
        assert_eq!(p.take(120, 499), Some(Duration::from_millis(1)));
        assert_eq!(p.take(120, 500), None);
        assert_eq!(p.take(120, 500), Some(Duration::from_millis(500)));
        // A long quiet spell saves up at most a minute's worth.
        let mut n = 0;
        while p.take(120, 3_600_000).is_none() {
            n += 1;
        }
        assert_eq!(n, 120);
        assert_eq!(pace_per_minute(Some(6000)), 12_000);
        assert_eq!(pace_per_minute(Some(0)), 60);
        assert_eq!(pace_per_minute(None), 60);
    }

    #[test]
    fn the_newest_connection_wins() {
        let mut s = ConnectionSlots::default();
        assert!(s.admit(1, "one", 2).is_empty());
        assert!(s.admit(2, "two", 2).is_empty());
        assert_eq!(s.admit(3, "three", 2), vec!["one"]);
        s.release(2);
        assert!(s.admit(4, "four", 2).is_empty());
        assert_eq!(s.admit(5, "five", 2), vec!["three"]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn partner_logs_are_bounded_per_kind() {
        let p: PartnerLimits<()> = PartnerLimits::new(&Limits::default(), 60, 0);
        let written = |kind| (0..100).filter(|i| p.log(kind, *i).is_some()).count();
        assert_eq!((written("pace"), written("policy")), (10, 10), "one kind does not silence another");
        assert_eq!(
            p.unlogged(60_000).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            [("pace", 90), ("policy", 90)].into()
        );
    }

    #[test]
    fn log_lines_are_bounded_and_the_rest_counted() {
        let mut b = LogBudget::default();
        let written = (0..1000).filter(|i| matches!(b.event(*i), LogLine::Write { .. })).count();
        assert_eq!(written, LogBudget::PER_MINUTE as usize);
        assert_eq!(b.flush(59_999), None, "the minute is not over");
        assert_eq!(b.flush(60_000), Some(990));
        assert_eq!(b.flush(60_001), None, "reported once");
        for i in 0..15 {
            b.event(70_000 + i);
        }
        assert_eq!(b.event(130_000), LogLine::Write { suppressed: 5 }, "or with the next line");
    }

    #[tokio::test]
    async fn memory_budget_is_shared_and_given_back() {
        let b = MemoryBudget::new(4 << 10);
        let one = b.take(3 << 10).await.unwrap();
        assert_eq!(b.available(), 1 << 10);
        let clone = b.clone();
        let waiting = tokio::spawn(async move { clone.take(2 << 10).await.map(|p| p.num_permits()) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits for room");
        drop(one);
        assert_eq!(waiting.await.unwrap(), Some(2));
        assert_eq!(b.available(), 4 << 10, "given back when dropped");
        assert_eq!(b.take(1 << 30).await.unwrap().num_permits(), 4, "at most the whole budget");
    }
}
