//! Web sessions: a random token in an HttpOnly, SameSite=Strict cookie (`Secure` and
//! `__Host-` with `[web] secure_cookies`, behind a TLS proxy), kept here as its SHA-256 with the
//! account, the account's generation, a CSRF token, and when it began and was last used. A
//! session ends when unused for the idle time, at its lifetime, at sign-out, at a new sign-in
//! from the same browser, when its account is disabled or reset (the generation moves on), and
//! when the node stops (sessions live in memory only: a restart signs everyone out, which is
//! what a restart of a secure system should do).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::encoding::{hex, Digest};
use crate::ids::OfficerId;

/// Most sessions at once on a node.
pub const MAX_SESSIONS: usize = 10_000;
/// Most sessions of one account (the oldest ends when another begins).
pub const MAX_PER_ACCOUNT: usize = 8;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account.
    pub account: OfficerId,
    /// The account's generation when the session began.
    pub generation: u64,
    /// The token forms and scripts send back with every change (hex).
    pub csrf: String,
    began: Instant,
    seen: Instant,
}

/// The sessions of a node.
pub struct Sessions {
    map: Mutex<HashMap<Digest, Session>>,
    idle: Duration,
    lifetime: Duration,
}

/// 32 random bytes in hex.
pub fn random_token() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex(&b)
}

impl Sessions {
    /// No sessions yet.
    pub fn new(idle: Duration, lifetime: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), idle, lifetime }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Begins a session for `account`: its cookie token.
    pub fn begin(&self, account: &OfficerId, generation: u64, now: Instant) -> String {
        let token = random_token();
        let mut map = self.lock();
        map.retain(|_, s| self.alive(s, now));
        let mut mine: Vec<(Digest, Instant)> =
            map.iter().filter(|(_, s)| s.account == *account).map(|(k, s)| (*k, s.began)).collect();
        mine.sort_by_key(|(_, began)| *began);
        while mine.len() >= MAX_PER_ACCOUNT {
            map.remove(&mine.remove(0).0);
        }
        if map.len() >= MAX_SESSIONS {
            // The least recently used goes.
            if let Some(k) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k) {
                map.remove(&k);
            }
        }
        map.insert(
            Digest::of(token.as_bytes()),
            Session { account: account.clone(), generation, csrf: random_token(), began: now, seen: now },
        );
        token
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) < self.idle && now.duration_since(s.began) < self.lifetime
    }

    /// The session of a cookie token, if alive; `touch` counts this as use (a page, an action),
    /// not a live-alert stream keeping itself open.
    pub fn get(&self, token: &str, now: Instant, touch: bool) -> Option<Session> {
        let key = Digest::of(token.as_bytes());
        let mut map = self.lock();
        let s = map.get_mut(&key)?;
        if !self.alive(s, now) {
            map.remove(&key);
            return None;
        }
        if touch {
            s.seen = now;
        }
        Some(s.clone())
    }

    /// Ends the session of a cookie token.
    pub fn end(&self, token: &str) -> Option<Session> {
        self.lock().remove(&Digest::of(token.as_bytes()))
    }

    /// Ends every session of an account.
    pub fn end_all(&self, account: &OfficerId) {
        self.lock().retain(|_, s| s.account != *account);
    }
}

/// Whether two tokens are equal, in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_old_or_too_many() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let ana: OfficerId = "ana".parse().unwrap();
        let t0 = Instant::now();
        let tok = s.begin(&ana, 0, t0);
        assert!(s.get(&tok, t0 + Duration::from_secs(50), true).is_some());
        // Used at 50 s: alive at 100 s, not at 111 s without use.
        assert!(s.get(&tok, t0 + Duration::from_secs(100), false).is_some());
        assert!(s.get(&tok, t0 + Duration::from_secs(111), true).is_none());
        assert!(s.get(&tok, t0, true).is_none(), "gone once expired");
        // Lifetime, however busy.
        let tok = s.begin(&ana, 0, t0);
        for i in 1..=10 {
            let at = t0 + Duration::from_secs(i * 55);
            assert!(s.get(&tok, at, true).is_some(), "{i}");
        }
        assert!(s.get(&tok, t0 + Duration::from_secs(601), true).is_none());
        // The ninth session of an account ends its first.
        let first = s.begin(&ana, 0, t0);
        for _ in 0..MAX_PER_ACCOUNT {
            s.begin(&ana, 0, t0 + Duration::from_secs(1));
        }
        assert!(s.get(&first, t0 + Duration::from_secs(2), true).is_none());
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("abc", "ab"));
    }
}
