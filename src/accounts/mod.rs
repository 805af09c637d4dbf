//! Officers' personal accounts: who signs in to the web workspace, with which role, seeing
//! which partners and cases.
//!
//! An account is a name (the [`OfficerId`] that acknowledgements, replies, forwards and
//! consents carry), a display name, a [`Role`], scopes (partners and case references it may
//! see; every one by default), a password kept as an argon2id hash ([`password`]) and a TOTP
//! secret ([`totp`]). Both are needed to sign in. After [`MAX_FAILURES`] failed sign-ins in a
//! row an account is locked, durably, until an administrator resets it (`liaison users
//! reset`): a locked account stays locked across restarts, whatever is typed next.
//!
//! Accounts live in the store (tree `accounts`), written through its writer with the audit
//! event that says who changed what (an account added, disabled, reset; a sign-in, a refusal, a
//! lock), and are put in force in memory only once on disk. This module never logs a password,
//! a code or a secret, and answers a refused sign-in with one message whatever was wrong (name,
//! password or code), so nobody learns which accounts exist by trying.

pub mod password;
pub mod totp;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::audit::Event;
use crate::delivery::Millis;
use crate::ids::{CaseRef, NodeId, OfficerId};
use crate::store::{self, Op, Store, StoreError, Tree};
use totp::TotpSecret;

/// Failed sign-ins in a row that lock an account.
pub const MAX_FAILURES: u32 = 5;
/// Smart-card certificates an account may hold.
pub const MAX_CERTIFICATES: usize = 8;
/// Most accounts a node keeps (a unit's officers, with room; a bound on what an admin client
/// can make the node hold).
pub const MAX_ACCOUNTS: usize = 10_000;
/// Password checks that may run at once: each takes 19 MiB and tens of milliseconds of CPU, and
/// anyone who reaches the sign-in page can ask for one.
const HASHING_AT_ONCE: usize = 2;

/// What an account may do. Each role may do what the one before may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, acknowledges, answers and writes packets within its scopes.
    Officer,
    /// An officer who may also consent to onward transmission (the role widens what an account
    /// may do, never what it may see: that is its scopes).
    Supervisor,
    /// A supervisor who may also manage accounts.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Officer => "officer",
            Self::Supervisor => "supervisor",
            Self::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "officer" => Ok(Self::Officer),
            "supervisor" => Ok(Self::Supervisor),
            "admin" => Ok(Self::Admin),
            other => Err(AccountError::Invalid(format!("role {other:?}: expected officer, supervisor or admin"))),
        }
    }
}

/// The case references an account may see: every case, or those matching one of its patterns
/// (a case reference, or a prefix ending in `*`: `ES-2026-*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseScope(Option<Vec<String>>);

impl CaseScope {
    /// Every case.
    pub const ALL: CaseScope = CaseScope(None);

    /// A scope from patterns (`*` alone: every case); each checked.
    pub fn parse(patterns: &[String]) -> Result<Self, AccountError> {
        if patterns.is_empty() || patterns.iter().any(|p| p == "*") {
            return Ok(Self::ALL);
        }
        for p in patterns {
            let stem = p.strip_suffix('*').unwrap_or(p);
            let ok = !stem.is_empty()
                && stem.len() <= 64
                && stem.chars().all(|c| c.is_ascii_alphanumeric() || "-_/.".contains(c));
            if !ok {
                return Err(AccountError::Invalid(format!(
                    "case pattern {p:?}: a case reference, or its first characters followed by *"
                )));
            }
        }
        Ok(Self(Some(patterns.to_vec())))
    }

    /// Whether a packet with this case reference is in scope (one without is only in an
    /// unrestricted scope).
    pub fn covers(&self, case: Option<&CaseRef>) -> bool {
        let Some(patterns) = &self.0 else { return true };
        let Some(case) = case else { return false };
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => case.as_str().starts_with(prefix),
            None => case.as_str() == p,
        })
    }

    /// The patterns, or `None` for every case.
    pub fn patterns(&self) -> Option<&[String]> {
        self.0.as_deref()
    }
}

/// The partners an account may see: packets from them, and packets sent to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerScope(Option<Vec<NodeId>>);

impl PartnerScope {
    /// Every partner.
    pub const ALL: PartnerScope = PartnerScope(None);

    /// A scope of these partners (none given: every partner).
    pub fn of(partners: Vec<NodeId>) -> Self {
        if partners.is_empty() {
            Self::ALL
        } else {
            Self(Some(partners))
        }
    }

    /// Whether the partner is in scope.
    pub fn covers(&self, node: &NodeId) -> bool {
        self.0.as_ref().is_none_or(|p| p.contains(node))
    }

    /// The partners, or `None` for every partner.
    pub fn partners(&self) -> Option<&[NodeId]> {
        self.0.as_deref()
    }
}

/// An account as stored.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    name: OfficerId,
    display_name: String,
    role: Role,
    partners: PartnerScope,
    cases: CaseScope,
    /// argon2id PHC string.
    password: String,
    totp: Vec<u8>,
    /// The last TOTP step accepted (each is accepted once).
    totp_step: Option<u64>,
    failures: u32,
    locked_at: Option<Millis>,
    disabled_at: Option<Millis>,
    created_at: Millis,
    last_sign_in: Option<Millis>,
    /// Bumped by a reset and a disable: sessions begun under an older generation end.
    #[serde(default)]
    generation: u64,
    /// SHA-256 fingerprints of the officer's smart-card certificates (sign-in without password
    /// and code, over the workspace's TLS, from the officers' CA).
    #[serde(default)]
    certificates: Vec<crate::encoding::Digest>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.totp);
    }
}

impl Stored {
    fn view(&self) -> Account {
        Account {
            name: self.name.clone(),
            display_name: self.display_name.clone(),
            role: self.role,
            partners: self.partners.clone(),
            cases: self.cases.clone(),
            locked_at: self.locked_at,
            disabled_at: self.disabled_at,
            failures: self.failures,
            created_at: self.created_at,
            last_sign_in: self.last_sign_in,
            generation: self.generation,
            certificates: self.certificates.clone(),
        }
    }
}

/// An account as everyone but the sign-in sees it: no password hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The officer id it acts under.
    pub name: OfficerId,
    /// The officer's name as shown.
    pub display_name: String,
    /// What it may do.
    pub role: Role,
    /// Partners it may see.
    pub partners: PartnerScope,
    /// Cases it may see.
    pub cases: CaseScope,
    /// When it was locked by failed sign-ins.
    pub locked_at: Option<Millis>,
    /// When an administrator disabled it.
    pub disabled_at: Option<Millis>,
    /// Failed sign-ins since the last success.
    pub failures: u32,
    /// When it was added.
    pub created_at: Millis,
    /// Its last sign-in.
    pub last_sign_in: Option<Millis>,
    /// Sessions begun under an older generation have ended (a reset or a disable bumps it).
    #[serde(default)]
    pub generation: u64,
    /// Fingerprints (SHA-256) of the smart-card certificates it signs in with.
    #[serde(default)]
    pub certificates: Vec<crate::encoding::Digest>,
}

impl Account {
    /// Whether it may sign in now.
    pub fn usable(&self) -> bool {
        self.locked_at.is_none() && self.disabled_at.is_none()
    }

    /// Whether a session begun under `generation` may go on: not after a disable or a reset. A
    /// lock by failed sign-ins stops new sign-ins only: whoever guessed at the password must
    /// not sign the officer on duty out of the FLASH alerts.
    pub fn session_valid(&self, generation: u64) -> bool {
        self.disabled_at.is_none() && self.generation == generation
    }

    /// Whether it may see a packet exchanged with `partner` about `case`.
    pub fn may_see(&self, partner: &NodeId, case: Option<&CaseRef>) -> bool {
        self.partners.covers(partner) && self.cases.covers(case)
    }

    /// Whether it may see a packet received from `from` (or sent to it), originated by
    /// `originator`, about `case`: both nodes in its partner scope, the case in its case scope.
    pub fn may_see_packet(&self, from: &NodeId, originator: &NodeId, case: Option<&CaseRef>) -> bool {
        self.may_see(from, case) && self.may_see(originator, case)
    }

    /// Whether it has at least `role`.
    pub fn is(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// A new account, as an administrator describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// The officer id (a login, a badge number).
    pub name: OfficerId,
    /// The officer's full name.
    pub display_name: String,
    /// Its role.
    pub role: Role,
    /// Partners it may see (empty: every partner).
    #[serde(default)]
    pub partners: Vec<NodeId>,
    /// Case patterns it may see (empty or `*`: every case).
    #[serde(default)]
    pub cases: Vec<String>,
    /// Its first password; one is generated when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// Fingerprints (SHA-256) of the officer's smart-card certificates.
    #[serde(default)]
    pub certificates: Vec<crate::encoding::Digest>,
}

/// What an officer needs to sign in, handed out once (by `users add` and `users reset`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The account.
    pub name: OfficerId,
    /// The password, when the node made it (absent when the administrator gave one).
    pub password: Option<String>,
    /// The TOTP secret in base32, for an authenticator app.
    pub totp_secret: String,
    /// The same as an `otpauth://` URI.
    pub totp_uri: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(p) = &mut self.password {
            p.zeroize();
        }
        self.totp_secret.zeroize();
        self.totp_uri.zeroize();
    }
}

/// Why an account could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No account has this name.
    #[error("no account {0}")]
    Unknown(OfficerId),
    /// An account with this name exists.
    #[error("account {0} exists already")]
    Exists(OfficerId),
    /// A field is not acceptable (which, and why).
    #[error("{0}")]
    Invalid(String),
    /// The password is not acceptable.
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    /// As many accounts as a node keeps exist.
    #[error("this node holds {MAX_ACCOUNTS} accounts already")]
    Full,
    /// The store did not take the change (nothing changed).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// Name, password or code wrong (which is not said).
    #[error("name, password or code not recognised")]
    Refused,
    /// The account is locked by failed sign-ins (said only to whoever gave the right password
    /// and code).
    #[error("this account is locked after {MAX_FAILURES} failed sign-ins: an administrator must reset it")]
    Locked,
    /// The account is disabled (said only to whoever gave the right password and code).
    #[error("this account is disabled")]
    Disabled,
    /// The store did not take the sign-in's record: refused, nothing changed.
    #[error("the node cannot record the sign-in now: {0}")]
    Unavailable(String),
    /// Too many sign-ins at once (a flood): refused without a check.
    #[error("too many sign-ins at once: try again in a moment")]
    Busy,
}

/// The accounts of a node: in memory, as last stored.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    issuer: String,
    map: RwLock<BTreeMap<OfficerId, Stored>>,
    /// One change at a time: each reads the account, decides, commits, then puts it in force.
    write: tokio::sync::Mutex<()>,
    hashing: Arc<tokio::sync::Semaphore>,
    /// Sign-ins waiting for a password check.
    waiting: std::sync::atomic::AtomicUsize,
    /// Refusals recorded per source (an unknown name, or a locked account): one audit entry a
    /// source and minute, the rest counted into the next one.
    refusals: std::sync::Mutex<HashMap<String, (u64, u32)>>,
}

/// Sign-ins that may wait for a password check before more are refused.
const SIGN_INS_WAITING: usize = 32;
/// Sources whose refusals are counted at once (more: the counts start again).
const SOURCES_KEPT: usize = 1024;

/// Decrements a counter when dropped.
struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn key(name: &OfficerId) -> Vec<u8> {
    name.as_str().as_bytes().to_vec()
}

fn audit(name: &OfficerId, action: crate::audit::AccountAction, by: &str, detail: String) -> Op {
    Op::Audit(Event::Account { account: Some(name.clone()), action, by: by.to_owned(), detail })
}

impl Accounts {
    /// The accounts in the store of node `node`.
    pub fn load(store: Store, node: &NodeId) -> Result<Self, StoreError> {
        let mut map = BTreeMap::new();
        for (_, v) in store.scan(Tree::Accounts, &[])? {
            let a: Stored = store::decode(Tree::Accounts, &v)?;
            map.insert(a.name.clone(), a);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                issuer: format!("liaison {node}"),
                map: RwLock::new(map),
                write: tokio::sync::Mutex::new(()),
                hashing: Arc::new(tokio::sync::Semaphore::new(HASHING_AT_ONCE)),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                refusals: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// One account.
    pub fn get(&self, name: &OfficerId) -> Option<Account> {
        self.read().get(name).map(Stored::view)
    }

    /// Every account, by name.
    pub fn list(&self) -> Vec<Account> {
        self.read().values().map(Stored::view).collect()
    }

    /// Whether any account exists.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<OfficerId, Stored>> {
        self.inner.map.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a changed account with its audit event, then puts it in force.
    async fn commit(&self, account: Stored, event: Op) -> Result<(), StoreError> {
        let ops = vec![store::put(Tree::Accounts, key(&account.name), &account), event];
        self.inner.store.commit(ops).await?;
        self.inner.map.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(account.name.clone(), account);
        Ok(())
    }

    async fn hash(&self, password: Zeroizing<String>) -> Result<String, AccountError> {
        let turn = self.inner.hashing.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            password::hash(&password)
        })
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(AccountError::from)
    }

    /// Checks a password on the blocking pool, at most [`HASHING_AT_ONCE`] at a time (the slot
    /// is held by the check itself, so a caller that goes away does not free it early), with at
    /// most [`SIGN_INS_WAITING`] waiting: more is a flood, refused at once.
    async fn verify(&self, stored: Option<String>, pw: &str) -> Result<bool, SignInError> {
        let busy = || SignInError::Busy;
        let waiting = self.inner.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _leave = Leave(&self.inner.waiting);
        if waiting >= SIGN_INS_WAITING {
            return Err(busy());
        }
        let turn = self.inner.hashing.clone().acquire_owned().await.map_err(|_| busy())?;
        let pw = Zeroizing::new(pw.to_owned());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            password::verify(stored.as_deref(), &pw)
        })
        .await
        .map_err(|_| busy())
    }

    /// Adds an account (by: the admin client or account that did).
    pub async fn add(&self, new: NewAccount, by: &str, now: Millis) -> Result<Credentials, AccountError> {
        let display_name = new.display_name.trim().to_owned();
        if display_name.is_empty() || display_name.chars().count() > 128 || display_name.chars().any(char::is_control) {
            return Err(AccountError::Invalid("display_name: 1 to 128 characters, no control characters".into()));
        }
        let cases = CaseScope::parse(&new.cases)?;
        let partners = PartnerScope::of(new.partners);
        let mut certificates = new.certificates;
        certificates.sort();
        certificates.dedup();
        let given = new.password.is_some();
        let pw = new.password.map(Zeroizing::new).unwrap_or_else(password::generate);
        let hashed = self.hash(pw.clone()).await?;
        let secret = TotpSecret::generate();
        let _one = self.inner.write.lock().await;
        {
            let map = self.read();
            if map.contains_key(&new.name) {
                return Err(AccountError::Exists(new.name));
            }
            if map.len() >= MAX_ACCOUNTS {
                return Err(AccountError::Full);
            }
            if let Some(c) = certificates.iter().find(|c| map.values().any(|a| a.certificates.contains(c))) {
                return Err(AccountError::Invalid(format!("certificate {c} belongs to another account")));
            }
            if certificates.len() > MAX_CERTIFICATES {
                return Err(AccountError::Invalid(format!("at most {MAX_CERTIFICATES} certificates an account")));
            }
        }
        let account = Stored {
            name: new.name.clone(),
            display_name,
            role: new.role,
            partners,
            cases,
            password: hashed,
            totp: secret.bytes().to_vec(),
            totp_step: None,
            failures: 0,
            locked_at: None,
            disabled_at: None,
            created_at: now,
            last_sign_in: None,
            generation: 0,
            certificates,
        };
        let detail = scope_text(&account);
        self.commit(account, audit(&new.name, crate::audit::AccountAction::Added, by, detail)).await?;
        info!(target: "audit", account = %new.name, by, "account added");
        Ok(self.credentials(&new.name, if given { None } else { Some(pw) }, &secret))
    }

    fn credentials(&self, name: &OfficerId, password: Option<Zeroizing<String>>, secret: &TotpSecret) -> Credentials {
        Credentials {
            name: name.clone(),
            password: password.map(|p| p.as_str().to_owned()),
            totp_secret: secret.base32().as_str().to_owned(),
            totp_uri: secret.uri(&self.inner.issuer, name.as_str()).as_str().to_owned(),
        }
    }

    /// Disables an account (it can no longer sign in; its sessions end at their next request),
    /// or enables it again.
    pub async fn set_disabled(
        &self,
        name: &OfficerId,
        disabled: bool,
        by: &str,
        now: Millis,
    ) -> Result<Account, AccountError> {
        let _one = self.inner.write.lock().await;
        let mut account = self.read().get(name).cloned().ok_or_else(|| AccountError::Unknown(name.clone()))?;
        let action = if disabled {
            account.disabled_at = account.disabled_at.or(Some(now));
            account.generation += 1;
            crate::audit::AccountAction::Disabled
        } else {
            account.disabled_at = None;
            crate::audit::AccountAction::Enabled
        };
        let view = account.view();
        self.commit(account, audit(name, action, by, String::new())).await?;
        info!(target: "audit", account = %name, by, disabled, "account changed");
        Ok(view)
    }

    /// Gives an account a new password (generated unless given) and a new TOTP secret, and
    /// unlocks it: what an officer who forgot either, lost the phone or locked the account needs.
    pub async fn reset(
        &self,
        name: &OfficerId,
        new_password: Option<String>,
        by: &str,
    ) -> Result<Credentials, AccountError> {
        if !self.read().contains_key(name) {
            return Err(AccountError::Unknown(name.clone()));
        }
        let given = new_password.is_some();
        let pw = new_password.map(Zeroizing::new).unwrap_or_else(password::generate);
        let hashed = self.hash(pw.clone()).await?;
        let secret = TotpSecret::generate();
        let _one = self.inner.write.lock().await;
        let mut account = self.read().get(name).cloned().ok_or_else(|| AccountError::Unknown(name.clone()))?;
        let was_locked = account.locked_at.is_some();
        account.password = hashed;
        account.totp = secret.bytes().to_vec();
        account.totp_step = None;
        account.failures = 0;
        account.locked_at = None;
        account.generation += 1;
        let detail = if was_locked { "new password and TOTP secret; unlocked" } else { "new password and TOTP secret" };
        self.commit(account, audit(name, crate::audit::AccountAction::Reset, by, detail.into())).await?;
        info!(target: "audit", account = %name, by, "account reset");
        Ok(self.credentials(name, if given { None } else { Some(pw) }, &secret))
    }

    /// Signs in with a password and a TOTP code at `unix_seconds`. Every outcome is recorded
    /// (in the audit trail, under the account when there is one; `from`: where the attempt came
    /// from) before it is answered; a failure counts towards the lock even if the account is
    /// already locked.
    pub async fn sign_in(
        &self,
        name: &str,
        pw: &str,
        code: &str,
        unix_seconds: u64,
        from: &str,
    ) -> Result<Account, SignInError> {
        use crate::audit::AccountAction;
        let unavailable = |e: StoreError| SignInError::Unavailable(e.to_string());
        let officer = name.trim().parse::<OfficerId>().ok();
        let stored = officer.as_ref().and_then(|o| self.read().get(o).map(|a| a.password.clone()));
        let password_ok = self.verify(stored, pw).await?;
        let _one = self.inner.write.lock().await;
        let Some(mut account) = officer.as_ref().and_then(|o| self.read().get(o).cloned()) else {
            // No such account: recorded without the name typed (it may be a password typed in
            // the wrong field), with where the attempt came from, once a minute per source.
            if let Some(earlier) = self.first_this_minute(&format!("unknown {from}"), unix_seconds) {
                let event = Event::Account {
                    account: None,
                    action: AccountAction::SignInRefused,
                    by: from.to_owned(),
                    detail: format!("no such account, from {from} ({earlier} more such attempts before)"),
                };
                self.inner.store.commit(vec![Op::Audit(event)]).await.map_err(unavailable)?;
            }
            warn!(target: "audit", from, "sign-in refused: no such account");
            return Err(SignInError::Refused);
        };
        let secret = TotpSecret::from_bytes(&account.totp);
        let step = secret.check(code, unix_seconds, account.totp_step);
        let now = unix_seconds.saturating_mul(1000);
        let name = account.name.clone();
        if !(password_ok && step.is_some()) && account.locked_at.is_some() {
            // Locked already: nothing more to count; recorded once a minute per source.
            if let Some(earlier) = self.first_this_minute(&format!("{name} {from}"), unix_seconds) {
                let detail =
                    format!("locked; wrong password or code, from {from} ({earlier} more such attempts before)");
                let event = audit(&name, AccountAction::SignInRefused, from, detail);
                self.inner.store.commit(vec![event]).await.map_err(unavailable)?;
            }
            warn!(target: "audit", account = %name, from, "sign-in refused: locked");
            return Err(SignInError::Refused);
        }
        if !(password_ok && step.is_some()) {
            account.failures = account.failures.saturating_add(1);
            let newly_locked = account.failures >= MAX_FAILURES && account.locked_at.is_none();
            if newly_locked {
                account.locked_at = Some(now);
            }
            let wrong = if password_ok { "code" } else { "password" };
            let (action, detail) = if newly_locked {
                (
                    AccountAction::Locked,
                    format!("wrong {wrong}; locked after {} failed sign-ins, from {from}", account.failures),
                )
            } else {
                (AccountAction::SignInRefused, format!("wrong {wrong} ({} in a row), from {from}", account.failures))
            };
            self.commit(account, audit(&name, action, from, detail)).await.map_err(unavailable)?;
            warn!(target: "audit", account = %name, from, locked = newly_locked, "sign-in refused");
            return Err(SignInError::Refused);
        }
        if account.locked_at.is_some() || account.disabled_at.is_some() {
            let locked = account.locked_at.is_some();
            let why = if locked { "locked" } else { "disabled" };
            let event = audit(&name, AccountAction::SignInRefused, from, format!("account {why}, from {from}"));
            self.inner.store.commit(vec![event]).await.map_err(unavailable)?;
            warn!(target: "audit", account = %name, from, why, "sign-in refused");
            return Err(if locked { SignInError::Locked } else { SignInError::Disabled });
        }
        account.failures = 0;
        account.totp_step = step;
        account.last_sign_in = Some(now);
        let view = account.view();
        self.commit(account, audit(&name, AccountAction::SignedIn, from, format!("from {from}")))
            .await
            .map_err(unavailable)?;
        info!(target: "audit", account = %name, from, "signed in");
        Ok(view)
    }

    /// Adds a smart-card certificate (its SHA-256 fingerprint) to an account, or removes one.
    pub async fn set_certificate(
        &self,
        name: &OfficerId,
        fingerprint: crate::encoding::Digest,
        add: bool,
        by: &str,
    ) -> Result<Account, AccountError> {
        let _one = self.inner.write.lock().await;
        if add && self.read().values().any(|a| a.name != *name && a.certificates.contains(&fingerprint)) {
            return Err(AccountError::Invalid(format!("certificate {fingerprint} belongs to another account")));
        }
        let mut account = self.read().get(name).cloned().ok_or_else(|| AccountError::Unknown(name.clone()))?;
        let held = account.certificates.contains(&fingerprint);
        if add {
            if held {
                return Ok(account.view());
            }
            if account.certificates.len() >= MAX_CERTIFICATES {
                return Err(AccountError::Invalid(format!("at most {MAX_CERTIFICATES} certificates an account")));
            }
            account.certificates.push(fingerprint);
        } else {
            if !held {
                return Err(AccountError::Invalid(format!("{name} holds no certificate {fingerprint}")));
            }
            account.certificates.retain(|c| *c != fingerprint);
            // A card taken away ends the sessions it opened.
            account.generation += 1;
        }
        let view = account.view();
        let detail = format!("certificate {fingerprint} {}", if add { "added" } else { "removed" });
        self.commit(account, audit(name, crate::audit::AccountAction::Certificate, by, detail)).await?;
        Ok(view)
    }

    /// Signs in with a smart-card certificate whose chain the TLS handshake checked against the
    /// officers' CA: the account that holds its fingerprint, if it may sign in. Recorded like a
    /// password sign-in (an unknown certificate once a minute per source).
    pub async fn sign_in_certificate(
        &self,
        fingerprint: crate::encoding::Digest,
        subject: &str,
        unix_seconds: u64,
        from: &str,
    ) -> Result<Account, SignInError> {
        use crate::audit::AccountAction;
        let unavailable = |e: StoreError| SignInError::Unavailable(e.to_string());
        let _one = self.inner.write.lock().await;
        let found = self.read().values().find(|a| a.certificates.contains(&fingerprint)).cloned();
        let Some(mut account) = found else {
            if let Some(earlier) = self.first_this_minute(&format!("certificate {from}"), unix_seconds) {
                let event = Event::Account {
                    account: None,
                    action: AccountAction::SignInRefused,
                    by: from.to_owned(),
                    detail: format!("certificate {fingerprint} ({subject}) held by no account, from {from} ({earlier} more such attempts before)"),
                };
                self.inner.store.commit(vec![Op::Audit(event)]).await.map_err(unavailable)?;
            }
            warn!(target: "audit", from, "sign-in refused: a certificate no account holds");
            return Err(SignInError::Refused);
        };
        let name = account.name.clone();
        // A lock by failed password sign-ins does not bar the card (a different proof, checked
        // by the TLS handshake): whoever guessed at the password must not lock the officer out.
        if account.disabled_at.is_some() {
            let event =
                audit(&name, AccountAction::SignInRefused, from, format!("certificate; account disabled, from {from}"));
            self.inner.store.commit(vec![event]).await.map_err(unavailable)?;
            return Err(SignInError::Disabled);
        }
        account.last_sign_in = Some(unix_seconds.saturating_mul(1000));
        let view = account.view();
        let detail = format!("with certificate {fingerprint} ({subject}), from {from}");
        self.commit(account, audit(&name, AccountAction::SignedIn, from, detail)).await.map_err(unavailable)?;
        info!(target: "audit", account = %name, from, "signed in with a certificate");
        Ok(view)
    }

    /// Whether this is the first refusal of its kind (`key`: what and from where) this minute;
    /// if so, how many came in the minutes before it, not recorded one by one.
    fn first_this_minute(&self, key: &str, unix_seconds: u64) -> Option<u32> {
        let minute = unix_seconds / 60;
        let mut map = self.inner.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= SOURCES_KEPT && !map.contains_key(key) {
            map.clear();
        }
        let e = map.entry(key.to_owned()).or_insert((u64::MAX, 0));
        if e.0 == minute {
            e.1 = e.1.saturating_add(1);
            return None;
        }
        let earlier = if e.0 == u64::MAX { 0 } else { e.1 };
        *e = (minute, 0);
        Some(earlier)
    }

    /// Records an action of a signed-in account in the audit trail (signed out, a packet
    /// viewed...). The caller answers only once it is on disk.
    pub async fn record(
        &self,
        name: &OfficerId,
        action: crate::audit::AccountAction,
        detail: String,
    ) -> Result<(), StoreError> {
        self.inner.store.commit(vec![audit(name, action, name.as_str(), detail)]).await
    }
}

fn scope_text(a: &Stored) -> String {
    let partners = a.partners.partners().map_or_else(
        || "every partner".to_owned(),
        |p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
    );
    let cases = a.cases.patterns().map_or_else(|| "every case".to_owned(), |c| c.join(","));
    format!("{} {:?}; partners {partners}; cases {cases}", a.role, a.display_name)
}

#[cfg(test)]
mod tests;
