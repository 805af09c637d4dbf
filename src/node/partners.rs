//! The partners of a running node, and changing them without a restart.
//!
//! Each partner has a [`PartnerState`]: its sender machine, the copies just submitted, its link
//! as last seen, the budgets its traffic draws on, and a token that ends its tasks. The node
//! holds them in one map behind a lock; whoever needs a partner takes its `Arc` and works on
//! that, so a partner removed (or removed and enrolled again) while a lane still writes or a
//! receipt is being stored does not mix the old state with the new.
//!
//! [`Node::set_partners`] is the one way the set changes: SIGHUP passes what the files now say,
//! `POST /v1/peers` and `DELETE /v1/peers/{node}` ([`Node::enrol`], [`Node::unenrol`]) the set
//! with one partner more or less. In order: the change is checked whole (every partner has
//! keys; the keyring holds together), recorded in the audit trail, then put in force — keys,
//! policies, the map, the TLS server's list of who may connect — and the removed partners'
//! tasks are waited for, their machines' last changes stored. Their copies stay on disk and go
//! out if they are enrolled again.

use super::*;
use crate::keys::{Keyring, PublicKeys};
use crate::policy::Policy;
use std::path::Path;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a removal waits for the removed partner's tasks to end (a receipt being stored).
const REMOVAL_WAIT: Duration = Duration::from_secs(10);

/// One partner of the running node. Replaced whole when it is enrolled again.
pub(crate) struct PartnerState {
    pub(super) node: NodeId,
    /// Its address (a reload may change it: the connection is then made again).
    addr: Mutex<SocketAddr>,
    /// Its sender machine: pending outbox entries, lanes and link. Each partner has its own
    /// lock, so partners do not wait for each other.
    pub(super) sender: Mutex<Sender>,
    /// Sealed copies just submitted, for their first write.
    pub(super) fresh: Mutex<peer::Fresh>,
    pub(super) wake: Arc<Notify>,
    /// The budgets its traffic draws on.
    pub(super) budget: PartnerLimits<quinn::Connection>,
    /// The link as last seen ([`links::LinkInfo`]).
    pub(super) link: Mutex<links::LinkInfo>,
    /// Cancelled when the partner is removed (or the node stops): its loops end, its
    /// connections close.
    pub(super) gone: CancellationToken,
    /// Its sender loop, lanes and receipts being stored: a removal waits for them.
    tasks: TaskTracker,
}

impl PartnerState {
    pub(super) fn new(
        p: &Partner,
        sender: Sender,
        policies: &PolicyBook,
        limits: &Limits,
        node_cancel: &CancellationToken,
        now: Millis,
    ) -> Arc<Self> {
        let agreed = policies.policy(&p.node).map(|x| x.receive.max_packets_per_minute);
        Arc::new(Self {
            node: p.node,
            addr: Mutex::new(p.addr),
            sender: Mutex::new(sender),
            fresh: Mutex::new(peer::Fresh::default()),
            wake: Arc::new(Notify::new()),
            budget: PartnerLimits::new(limits, crate::limits::pace_per_minute(agreed), now),
            link: Mutex::new(links::LinkInfo::default()),
            gone: node_cancel.child_token(),
            tasks: TaskTracker::new(),
        })
    }

    /// Its address now.
    pub(super) fn addr(&self) -> SocketAddr {
        *lock(&self.addr)
    }
}

/// The partners a node is to have, with the keyring and the policies that go with them.
pub struct PartnerSet {
    /// The partners and their addresses.
    pub partners: Vec<Partner>,
    /// Public keys of the partners (and of former partners, to verify what they sent).
    pub keyring: Keyring,
    /// The sharing policies.
    pub policies: PolicyBook,
    /// This node's own keys, every generation (`None`: those in force stay). The oldest must
    /// still be the one the node started with or later: a node cannot lose its keys.
    pub own: Option<Vec<crate::keys::NodeKeys>>,
}

/// Proof that the caller holds the node's admin lock ([`Node::admin_lock`]).
pub struct AdminLock<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// A partner to enrol through the API: its files' contents, checked here.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The partner.
    pub node: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its public key file (`NODE.pub.toml`), as text.
    pub public_keys: String,
    /// The sharing policy agreed with it (TOML), if any: without one nothing is exchanged.
    pub policy: Option<String>,
}

impl Node {
    /// The state of partner `id`, if it is one.
    pub(crate) fn partner(&self, id: &NodeId) -> Option<Arc<PartnerState>> {
        self.inner.partners.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    /// Every partner's state, by node id.
    pub(crate) fn partner_states(&self) -> Vec<Arc<PartnerState>> {
        let mut v: Vec<_> =
            self.inner.partners.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        v.sort_by_key(|p| p.node);
        v
    }

    /// Whether `id` is a partner now.
    pub fn is_partner(&self, id: &NodeId) -> bool {
        self.inner.partners.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(id)
    }

    /// Starts `p`'s sender loop.
    pub(super) fn start_partner(&self, p: Arc<PartnerState>) {
        let span = info_span!("sender", node = %self.inner.me, peer = %p.node);
        self.spawn_for(&p, self.clone().sender_loop(p.clone()).instrument(span));
    }

    /// Starts a task the node and partner `p` track (a removal waits for it, as does shutdown).
    pub(super) fn spawn_for<F>(&self, p: &PartnerState, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(p.tasks.track_future(task))
    }

    /// One change of partners, keys or TLS material at a time: held from reading the files to
    /// putting them in force, so that a change read earlier never lands over a later one.
    pub async fn admin_lock(&self) -> AdminLock<'_> {
        AdminLock(self.inner.admin.lock().await)
    }

    /// Puts `target` in force: partners added, removed or moved to another address, the
    /// keyring, the policies (see the module doc). Returns what changed, in words (empty: nothing
    /// did). Refused whole, nothing changed, if a partner has no keys or the keyring does not
    /// hold together.
    pub async fn set_partners(&self, target: PartnerSet, by: &str) -> Result<Vec<String>, NodeError> {
        let lock = self.admin_lock().await;
        self.set_partners_locked(&lock, target, by).await
    }

    /// The checks [`Node::set_partners`] makes before changing anything: `Ok` with the keys
    /// and keyring it would put in force.
    pub fn check_partners(&self, target: &PartnerSet) -> Result<crate::seal::SealContext, NodeError> {
        let me = self.inner.me;
        let mut problems = Vec::new();
        for p in &target.partners {
            if p.node == me {
                problems.push(format!("{me} is this node"));
            } else if target.keyring.node(&p.node).is_none() {
                problems.push(format!("{} has no public keys in the keyring", p.node));
            }
        }
        let draining = lock(&self.inner.draining);
        for p in &target.partners {
            if draining.get(&p.node).is_some_and(|d| !d.tasks.is_empty()) && !self.is_partner(&p.node) {
                problems.push(format!("{} is still being removed (its tasks are ending); try again", p.node));
            }
        }
        drop(draining);
        let own = match &target.own {
            Some(own) => {
                let before = self.seal();
                let kept = before.generations().iter().all(|k| {
                    own.iter().any(|o| o.public().signing_kid == k.public().signing_kid)
                        || k.public().valid_until.is_some_and(|u| {
                            u.unix().saturating_add(crate::keys::WINDOW_SLACK_SECS) < Timestamp::now().unix()
                        })
                });
                if !kept {
                    problems.push("this node's own keys: a generation in force is missing from keys.dir".into());
                }
                own.iter().map(crate::keys::NodeKeys::duplicate).collect::<Vec<_>>()
            }
            None => self.seal().generations().iter().map(crate::keys::NodeKeys::duplicate).collect(),
        };
        let seal = crate::seal::SealContext::with_generations(own, target.keyring.clone())
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        match (seal, problems.is_empty()) {
            (Some(seal), true) => Ok(seal),
            _ => Err(NodeError::PartnerChange(problems.join("; "))),
        }
    }

    /// [`Node::set_partners`] under a lock the caller holds (a SIGHUP reads its files under it).
    pub async fn set_partners_locked(
        &self,
        _held: &AdminLock<'_>,
        target: PartnerSet,
        by: &str,
    ) -> Result<Vec<String>, NodeError> {
        let seal = self.check_partners(&target)?;
        let now: HashMap<NodeId, SocketAddr> = self.partner_states().iter().map(|p| (p.node, p.addr())).collect();
        let wanted: HashMap<NodeId, SocketAddr> = target.partners.iter().map(|p| (p.node, p.addr)).collect();
        let mut added: Vec<&Partner> = target.partners.iter().filter(|p| !now.contains_key(&p.node)).collect();
        added.sort_by_key(|p| p.node);
        let mut removed: Vec<NodeId> = now.keys().filter(|n| !wanted.contains_key(n)).copied().collect();
        removed.sort();
        let mut moved: Vec<&Partner> =
            target.partners.iter().filter(|p| now.get(&p.node).is_some_and(|a| *a != p.addr)).collect();
        moved.sort_by_key(|p| p.node);
        let mut changes: Vec<String> = Vec::new();
        let old_book = self.policies();
        let version =
            |b: &PolicyBook, p: &NodeId| b.policy(p).map_or_else(|| "none".to_owned(), |x| x.hash.to_string());
        for p in &added {
            changes.push(format!("{} enrolled at {} (policy {})", p.node, p.addr, version(&target.policies, &p.node)));
        }
        for n in &removed {
            changes.push(format!("{n} removed (its queued copies are kept on disk)"));
        }
        for p in &moved {
            changes.push(format!("{}: address {} -> {}", p.node, now[&p.node], p.addr));
        }
        let old_seal = self.seal();
        let own = |s: &crate::seal::SealContext| -> Vec<String> {
            s.generations().iter().map(|k| describe_keys(k.public())).collect()
        };
        let own_changed = own(&old_seal) != own(&seal);
        let kids = |ring: &Keyring| -> std::collections::BTreeMap<NodeId, Vec<String>> {
            let mut m = std::collections::BTreeMap::<NodeId, Vec<String>>::new();
            for k in ring.iter() {
                m.entry(k.node).or_default().push(describe_keys(k));
            }
            m.values_mut().for_each(|v| v.sort());
            m
        };
        let (before, after) = (kids(old_seal.keyring()), kids(seal.keyring()));
        let keys_changed = before != after;
        for (node, k) in &after {
            if before.get(node) != Some(k) && !added.iter().any(|p| p.node == *node) {
                changes.push(format!("{node}: keys now {}", k.join("; ")));
            }
        }
        let mut policy_changes: Vec<String> = Vec::new();
        let mut ids: Vec<&NodeId> = wanted.keys().filter(|n| now.contains_key(n)).collect();
        ids.sort();
        for p in ids {
            if old_book.policy(p) != target.policies.policy(p) {
                policy_changes.push(format!("{p}: {} -> {}", version(&old_book, p), version(&target.policies, p)));
            }
        }
        for node in before.keys().filter(|n| !after.contains_key(n)) {
            changes.push(format!("{node}: keys removed from the keyring"));
        }
        if changes.is_empty() && policy_changes.is_empty() && !keys_changed {
            return Ok(Vec::new());
        }
        // The machines of the partners enrolled start empty and loading: their copies left from
        // an earlier enrolment are read behind (as at a start), and a submit meanwhile is kept
        // out of what the load adds.
        let retry = self.inner.retry;
        let mut fresh = Vec::new();
        for p in &added {
            let at = now_ms();
            let mut sender = Sender::restore(p.node, retry, jitter_seed(&p.node, at), Vec::new(), at);
            sender.begin_loading();
            fresh.push(PartnerState::new(p, sender, &target.policies, &self.inner.limits, &self.inner.cancel, at));
        }
        let mut enrolled: Vec<NodeId> = wanted.keys().copied().collect();
        enrolled.sort();
        let tls = self.inner.tls.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let server = transport::server_config(&tls, &enrolled, refusals_logged(), self.inner.transport)?;
        let mut events = Vec::new();
        if !changes.is_empty() {
            let action = crate::audit::AdminAction::PartnersChanged;
            events.push(Op::Audit(AuditEvent::Admin { action, by: by.into(), detail: changes.join("; ") }));
        }
        if !policy_changes.is_empty() {
            let action = crate::audit::AdminAction::PolicyReload;
            events.push(Op::Audit(AuditEvent::Admin { action, by: by.into(), detail: policy_changes.join("; ") }));
        }
        self.inner.store.commit(events).await?;
        // In force: keys and policies first (a new partner's first packet verifies), then the
        // partners, then who may connect.
        *self.inner.seal.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(seal);
        *self.inner.policies.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(target.policies);
        let gone: Vec<Arc<PartnerState>> = {
            let mut map = self.inner.partners.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in &fresh {
                map.insert(p.node, p.clone());
            }
            for p in &moved {
                if let Some(s) = map.get(&p.node) {
                    *lock(&s.addr) = p.addr;
                    s.wake.notify_one();
                }
            }
            removed.iter().filter_map(|n| map.remove(n)).collect()
        };
        self.inner.endpoint.set_server_config(Some(server));
        for p in &fresh {
            self.start_partner(p.clone());
        }
        for p in gone {
            p.gone.cancel();
            p.tasks.close();
            if tokio::time::timeout(REMOVAL_WAIT, p.tasks.wait()).await.is_err() {
                // Enrolling it again waits until they have (two machines for one partner
                // would write over each other's entries).
                warn!(peer = %p.node, "the removed partner's tasks did not end within 10 s; it cannot be enrolled again until they do");
                lock(&self.inner.draining).insert(p.node, p.clone());
                continue;
            }
            self.persist_dirty(&p).await;
        }
        lock(&self.inner.draining).retain(|_, p| !p.tasks.is_empty());
        for p in fresh {
            let node = self.clone();
            self.spawn_for(&p.clone(), async move { node.load_partner(&p).await });
        }
        if own_changed {
            // Partners learn this node's new keys from it, signed with its key in force.
            let node = self.clone();
            self.spawn(async move { node.announce_keys().await });
        }
        for c in &changes {
            info!(change = %c, by, "partners changed");
        }
        if !policy_changes.is_empty() {
            info!(changes = %policy_changes.join("; "), by, "sharing policies reloaded");
        }
        changes.extend(policy_changes);
        if changes.is_empty() {
            changes.push("keyring reloaded".into());
        }
        Ok(changes)
    }

    /// Loads the copies left for partner `p` (enrolled again) from an earlier enrolment into its
    /// machine, which was made loading ([`Sender::begin_loading`]).
    async fn load_partner(&self, p: &PartnerState) {
        let peer = p.node;
        match self.slow(move |n| pending_of(&n.inner.store, &peer)).await {
            Ok(Ok(entries)) => {
                let loaded = lock(&p.sender).load(now_ms(), entries);
                if loaded > 0 {
                    info!(%peer, copies = loaded, "copies queued for it before were loaded");
                }
            }
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "could not read the copies queued for it before; they go out after a restart")
            }
            Err(e) => {
                warn!(%peer, error = %e, "could not read the copies queued for it before; they go out after a restart")
            }
        }
        lock(&p.sender).end_loading();
        p.wake.notify_one();
    }

    /// The partners, keyring and policies now in force, as a [`PartnerSet`] to change.
    pub(super) fn partner_set(&self) -> PartnerSet {
        let book = self.policies();
        let partners: Vec<Partner> =
            self.partner_states().iter().map(|p| Partner { node: p.node, addr: p.addr() }).collect();
        let policies = PolicyBook::new(partners.iter().filter_map(|p| book.policy(&p.node).cloned()));
        PartnerSet { keyring: self.seal().keyring().clone(), partners, policies, own: None }
    }

    /// Enrols a partner through the API: checks its keys and policy, writes its files into the
    /// node's partners directory ([`crate::enrolment`]), then puts it in force
    /// ([`Node::set_partners`]); if that is refused, the files are taken back.
    pub async fn enrol(&self, e: Enrolment, by: &str) -> Result<Vec<String>, NodeError> {
        let refuse = |why: String| NodeError::PartnerChange(why);
        let held = self.admin_lock().await;
        let Some(dir) = self.inner.partners_dir.clone() else {
            return Err(refuse("this node was started without a partners directory; enrol in its files".into()));
        };
        if e.node == self.inner.me {
            return Err(refuse(format!("{} is this node", e.node)));
        }
        if self.is_partner(&e.node) {
            return Err(refuse(format!("{} is already a partner; remove it first to enrol it again", e.node)));
        }
        let mut problems = Vec::new();
        let keys = PublicKeys::from_toml(&e.public_keys, Path::new("public_keys"))
            .map_err(|x| problems.push(x.to_string()))
            .ok()
            .filter(|k| {
                let ok = k.node == e.node;
                if !ok {
                    problems.push(format!("public_keys: the keys are {}'s, not {}'s", k.node, e.node));
                }
                ok
            });
        let policy = match &e.policy {
            None => None,
            Some(text) => Policy::from_toml(text, Some(&e.node))
                .map_err(|p| problems.extend(p.into_iter().map(|p| format!("policy: {p}"))))
                .ok(),
        };
        let mut target = self.partner_set();
        // Its keys replace any it had before (an earlier enrolment): those are retired now, and
        // kept, to verify what it sent then.
        let mut retired = Vec::new();
        let mut own_kid_file = None;
        let mut dropped = Vec::new();
        if let Some(k) = keys {
            let held: Vec<PublicKeys> = target.keyring.generations(&e.node).iter().map(|g| (**g).clone()).collect();
            let kid = k.signing_kid.clone();
            // A file of these keys kept from an earlier round (retired then) would retire them
            // again at the next start: NODE.pub.toml holds them now.
            own_kid_file = Some(key_file(&dir, &k));
            match target.keyring.replace(k, Timestamp::now()) {
                Ok(()) => {
                    retired = target
                        .keyring
                        .generations(&e.node)
                        .iter()
                        .filter(|g| g.signing_kid != kid)
                        .map(|g| (**g).clone())
                        .collect();
                    // Generations `replace` dropped (never in force): their files go too, or the
                    // next start would load them again.
                    dropped = held
                        .iter()
                        .filter(|g| target.keyring.kid(g.signing_kid.as_bytes()).is_none())
                        .map(|g| key_file(&dir, g))
                        .collect();
                }
                Err(x) => problems.push(format!("public_keys: {x}")),
            }
        }
        if !problems.is_empty() {
            return Err(refuse(problems.join("; ")));
        }
        target.partners.push(Partner { node: e.node, addr: e.addr });
        let book = self.policies();
        target.policies =
            PolicyBook::new(target.partners.iter().filter_map(|p| book.policy(&p.node).cloned()).chain(policy));
        let note = format!("{} enrolled through the API by {by} at {}", e.node, Timestamp::now());
        let files = crate::enrolment::Files::new(&dir, &e.node, e.addr, &e.public_keys, e.policy.as_deref(), &note);
        // Checked before anything is written; what was there before is put back on a failure.
        self.check_partners(&target)?;
        let mut before = files.before();
        for g in &retired {
            before.add(&key_file(&dir, g));
        }
        if let Some(f) = &own_kid_file {
            before.add(f);
        }
        for f in &dropped {
            before.add(f);
        }
        let written = files.clone();
        let keep = dir.clone();
        let kept = self
            .slow(move |_| {
                retired
                    .iter()
                    .try_for_each(|g| crate::files::write_replacing(&key_file(&keep, g), g.to_toml().as_bytes()))?;
                dropped.iter().chain(own_kid_file.iter()).try_for_each(|f| crate::files::remove_durably(f))
            })
            .await?;
        let undo = |err: NodeError| {
            if let Err((path, x)) = before.restore() {
                tracing::error!(path = %path.display(), error = %x, "could not take back the files of a refused enrolment; check the partners directory");
            }
            err
        };
        if let Err(x) = kept {
            return Err(undo(refuse(format!("keeping its earlier keys: {x}"))));
        }
        match self.slow(move |_| written.write()).await {
            Ok(Ok(())) => {}
            Ok(Err(x)) => return Err(undo(refuse(x.to_string()))),
            Err(x) => return Err(undo(x)),
        }
        self.set_partners_locked(&held, target, by).await.map_err(undo)
    }

    /// Removes a partner enrolled through the API: its files first (its public keys stay), then
    /// the change in force; if that is refused, the files are put back. A partner of the
    /// configuration file is removed there (and SIGHUP).
    pub async fn unenrol(&self, node: &NodeId, by: &str) -> Result<Vec<String>, NodeError> {
        let refuse = |why: String| NodeError::PartnerChange(why);
        let held = self.admin_lock().await;
        if !self.is_partner(node) {
            return Err(NodeError::NotAPartner(*node));
        }
        let files = self.inner.partners_dir.as_deref().and_then(|d| crate::enrolment::Files::read(d, node));
        let Some(files) = files else {
            return Err(refuse(format!(
                "{node} is enrolled in the configuration file, not through the API: remove its [[partners]] entry there and send SIGHUP"
            )));
        };
        let mut target = self.partner_set();
        target.partners.retain(|p| p.node != *node);
        let book = self.policies();
        target.policies = PolicyBook::new(target.partners.iter().filter_map(|p| book.policy(&p.node).cloned()));
        // Set aside (a rename, which needs no free space), then in force, then deleted; put
        // back if the change is refused.
        let aside = files.clone();
        self.slow(move |_| aside.set_aside()).await?.map_err(|x| refuse(x.to_string()))?;
        match self.set_partners_locked(&held, target, by).await {
            Ok(changes) => {
                if let Err(x) = files.drop_aside() {
                    warn!(error = %x, "the removed partner's files set aside could not be deleted");
                }
                Ok(changes)
            }
            Err(err) => {
                if let Err(x) = files.put_back() {
                    tracing::error!(error = %x, "could not put back the files of a refused removal; check the partners directory");
                }
                Err(err)
            }
        }
    }
}

/// The file in the partners directory `dir` that keeps one generation of a partner's keys
/// (taken from an announcement, or retired by a new enrolment): `NODE.<kid>.pub.toml`.
pub(crate) fn key_file(dir: &Path, k: &PublicKeys) -> std::path::PathBuf {
    let kid = k.signing_kid.as_str();
    let tail = kid.rsplit('/').next().unwrap_or(kid).get(..12).unwrap_or("key");
    dir.join(format!("{}.{tail}.pub.toml", k.node))
}

/// One generation of keys in words: its kids and its window.
pub(crate) fn describe_keys(k: &PublicKeys) -> String {
    let mut s = format!("{} {}", k.signing_kid, k.encryption_kid);
    if let Some(t) = k.valid_from {
        s.push_str(&format!(" from {t}"));
    }
    if let Some(t) = k.valid_until {
        s.push_str(&format!(" until {t}"));
    }
    s
}

/// The pending entries of the copies to `peer`, read from the store's index.
fn pending_of(store: &Store, peer: &NodeId) -> Result<Vec<Entry>, NodeError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (entries, last) = store.pending_after(after.as_deref(), 1024)?;
        out.extend(entries.into_iter().filter(|e| e.recipient == *peer));
        match last {
            Some(l) => after = Some(l),
            None => return Ok(out),
        }
    }
}

/// The seed of a sender machine's jitter: differs per partner and per start.
pub(super) fn jitter_seed(peer: &NodeId, now: Millis) -> u64 {
    now ^ u64::from_be_bytes(Digest::of(peer.as_str().as_bytes()).0[..8].try_into().unwrap_or_default())
}
