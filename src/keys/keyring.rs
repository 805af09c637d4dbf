//! The keyring: the public keys of known nodes, every generation of each (key rotation), by
//! node and by kid; windows only ever narrow, and at most one undated generation of a node is
//! in force.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use super::{KeyError, KeyUse, PublicKeys};
use crate::ids::NodeId;
use crate::timestamp::Timestamp;

/// The public keys of known nodes (partners and this node itself), by node (every generation,
/// oldest first) and by kid.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_node: HashMap<NodeId, Vec<Arc<PublicKeys>>>,
    by_kid: HashMap<Vec<u8>, Arc<PublicKeys>>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one generation of a node's public keys. A kid can name one key only, and a
    /// signing key goes with one encryption key. The same generation again (another file, an
    /// announcement) narrows its window: the later `valid_from`, the earlier `valid_until`.
    /// Of a node's generations not retired (no `valid_until`), at most one may be without
    /// `valid_from`: two such would be two keys in force at once, undated (a stray old file).
    pub fn add(&mut self, keys: PublicKeys) -> Result<(), KeyError> {
        self.add_all(vec![keys])
    }

    /// [`Keyring::add`] for several generations at once (the files of a directory, an
    /// announcement): the rule on undated keys is checked once all are merged, so the order
    /// they come in does not matter. Refused whole.
    pub fn add_all(&mut self, keys: Vec<PublicKeys>) -> Result<(), KeyError> {
        let before = self.clone();
        let nodes: std::collections::BTreeSet<NodeId> = keys.iter().map(|k| k.node).collect();
        let merged = keys.into_iter().try_for_each(|k| self.merge(k));
        let checked = merged.and_then(|()| nodes.iter().try_for_each(|n| self.check_undated(n)));
        if checked.is_err() {
            *self = before;
        }
        checked
    }

    fn check_undated(&self, node: &NodeId) -> Result<(), KeyError> {
        let open = |g: &&Arc<PublicKeys>| g.valid_from.is_none() && g.valid_until.is_none();
        let undated: Vec<String> =
            self.generations(node).iter().filter(open).map(|g| g.signing_kid.to_string()).collect();
        if undated.len() > 1 {
            return Err(KeyError::Conflict(format!(
                "{node} has {} keys in force with no valid_from ({}): date the newer one (valid_from) or retire the older (valid_until), or remove its file",
                undated.len(),
                undated.join(", ")
            )));
        }
        Ok(())
    }

    /// Replaces every generation of `keys.node` with `keys` alone in force: the others are
    /// retired at `now` (kept, to verify what they signed). A partner enrolled again with new
    /// keys.
    pub fn replace(&mut self, keys: PublicKeys, now: Timestamp) -> Result<(), KeyError> {
        let node = keys.node;
        let before = self.by_node.get(&node).cloned();
        // The others are retired now; one that never came into force is dropped (retiring it
        // would open its window backwards).
        let others: Vec<PublicKeys> = self
            .generations(&node)
            .iter()
            .filter(|g| g.signing_kid != keys.signing_kid && g.valid_from.is_none_or(|f| f < now))
            .map(|g| {
                let until = g.valid_until.map_or(now, |u| u.min(now));
                (**g).clone().with_window(g.valid_from.filter(|f| *f < until), Some(until))
            })
            .collect();
        self.put_back(node, None);
        let mut done = Ok(());
        for g in others.into_iter().chain([keys]) {
            done = done.and_then(|()| self.merge(g));
        }
        if done.is_err() {
            self.put_back(node, before);
        }
        done
    }

    /// Sets `node`'s generations back to `gens` (none: removes them), with their kids.
    fn put_back(&mut self, node: NodeId, gens: Option<Vec<Arc<PublicKeys>>>) {
        for g in self.by_node.remove(&node).unwrap_or_default() {
            self.by_kid.remove(g.signing_kid.as_bytes());
            self.by_kid.remove(g.encryption_kid.as_bytes());
        }
        if let Some(gens) = gens {
            for g in &gens {
                self.by_kid.insert(g.signing_kid.as_bytes().to_vec(), g.clone());
                self.by_kid.insert(g.encryption_kid.as_bytes().to_vec(), g.clone());
            }
            self.by_node.insert(node, gens);
        }
    }

    fn merge(&mut self, keys: PublicKeys) -> Result<(), KeyError> {
        for kid in [&keys.signing_kid, &keys.encryption_kid] {
            if let Some(other) = self.by_kid.get(kid.as_bytes()) {
                if other.node != keys.node {
                    return Err(KeyError::Conflict(format!("key id {kid} is already used by {}", other.node)));
                }
            }
        }
        let gens = self.by_node.entry(keys.node).or_default();
        let same =
            gens.iter().position(|g| g.signing_kid == keys.signing_kid || g.encryption_kid == keys.encryption_kid);
        let keys = match same {
            Some(i) => {
                let old = gens.remove(i);
                if old.signing_kid != keys.signing_kid || old.encryption_kid != keys.encryption_kid {
                    gens.insert(i, old);
                    return Err(KeyError::Conflict(format!(
                        "{}: signing key {} and encryption key {} are each paired with another key in another file",
                        keys.node, keys.signing_kid, keys.encryption_kid
                    )));
                }
                let from = old.valid_from.max(keys.valid_from);
                let until = match (old.valid_until, keys.valid_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                keys.with_window(from, until)
            }
            None => keys,
        };
        let keys = Arc::new(keys);
        gens.push(keys.clone());
        gens.sort_by_key(|g| g.valid_from.map_or(i64::MIN, Timestamp::unix));
        self.by_kid.insert(keys.signing_kid.as_bytes().to_vec(), keys.clone());
        self.by_kid.insert(keys.encryption_kid.as_bytes().to_vec(), keys);
        Ok(())
    }

    /// Loads every `*.pub.toml` in each path (a file, or a directory of them).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut all = Vec::new();
        for path in paths {
            if path.is_dir() {
                let io = |source| KeyError::Io { path: path.clone(), source };
                let mut files: Vec<PathBuf> = fs::read_dir(path)
                    .map_err(io)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".pub.toml")))
                    .collect();
                files.sort();
                for f in files {
                    all.push(PublicKeys::load(&f)?);
                }
            } else {
                all.push(PublicKeys::load(path)?);
            }
        }
        let mut ring = Self::new();
        ring.add_all(all)?;
        Ok(ring)
    }

    /// The keys of `node` in force now ([`Keyring::node_at`]).
    pub fn node(&self, node: &NodeId) -> Option<&Arc<PublicKeys>> {
        self.node_at(node, Timestamp::now())
    }

    /// The keys of `node` in force at `t`: its newest generation that has started (the oldest
    /// if none has).
    pub fn node_at(&self, node: &NodeId, t: Timestamp) -> Option<&Arc<PublicKeys>> {
        let gens = self.by_node.get(node)?;
        let live = |g: &&Arc<PublicKeys>| g.started(t) && g.valid_until.is_none_or(|u| u > t);
        gens.iter().rev().find(live).or_else(|| gens.iter().rev().find(|g| g.started(t))).or_else(|| gens.first())
    }

    /// Every generation of `node`'s keys, oldest first.
    pub fn generations(&self, node: &NodeId) -> &[Arc<PublicKeys>] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }

    /// The keys named by a kid, and which of the two the kid names.
    pub fn kid(&self, kid: &[u8]) -> Option<(&Arc<PublicKeys>, KeyUse)> {
        let keys = self.by_kid.get(kid)?;
        let usage = if keys.signing_kid.as_bytes() == kid { KeyUse::Signing } else { KeyUse::Encryption };
        Some((keys, usage))
    }

    /// Every generation of every node's keys.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PublicKeys>> {
        self.by_node.values().flatten()
    }

    /// Every node with keys here.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.by_node.keys()
    }

    /// The node whose key `kid` would be, if it has the form of a kid (`NODE/sig/<32 hex>`,
    /// `NODE/enc/<32 hex>`), is not held here, and names a node this keyring holds other keys
    /// of: a key it rotated to that is not taken here yet.
    pub fn awaited(&self, kid: &str) -> Option<NodeId> {
        let (node, rest) = kid.split_once('/')?;
        let (usage, h) = rest.split_once('/')?;
        let formed = matches!(usage, "sig" | "enc") && h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let node: NodeId = node.parse().ok()?;
        (formed && !self.by_kid.contains_key(kid.as_bytes()) && !self.generations(&node).is_empty()).then_some(node)
    }
}
