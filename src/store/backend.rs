//! Storage backends: the [`Backend`] trait, sled ([`SledBackend`]) and an in-memory backend
//! with the faults of a real disk ([`MemoryBackend`], for tests and the simulator).

use std::path::Path;
use std::sync::Mutex;

use super::{KeyValue, Op, StoreError, Tree};

/// The in-memory backend's map: (tree, key) -> value.
type MemoryMap = std::collections::BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// A storage backend. Methods take `&self`: backends synchronise internally.
pub trait Backend: Send + Sync + 'static {
    /// Applies the writes (in order).
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// One value.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every (key, value) of a tree whose key starts with `prefix`, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;
    /// Calls `f` with every (key, value) of a tree, in key order, without collecting them.
    fn visit(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for (k, v) in self.scan(tree, &[])? {
            f(&k, &v);
        }
        Ok(())
    }
    /// Up to `limit` keys of a tree after `after` (from the first if `None`), in key order,
    /// without their values.
    fn keys_after(&self, tree: Tree, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .scan(tree, &[])?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| after.is_none_or(|a| k.as_slice() > a))
            .take(limit)
            .collect())
    }
    /// Bytes free for the backend's writes, if it can tell (the store keeps some free: see
    /// [`super::space`]).
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}

/// sled, one tree per [`Tree`].
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    dir: std::path::PathBuf,
    /// `DIR/liaison.lock`, locked while the store is open: a second node on the same directory
    /// is told so in words before sled (or the segment files) is touched.
    _lock: std::fs::File,
}

/// Locks `dir` for this process ([`StoreError::InUse`] if another holds it).
fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
    let path = dir.join("liaison.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    fs2::FileExt::try_lock_exclusive(&f).map_err(|_| StoreError::InUse(dir.display().to_string()))?;
    Ok(f)
}

/// sled's page cache. Its default (1 GiB) made the cache most of a node's memory: everything
/// written stays in it until the cap, so 100,000 queued copies took ~650 MiB of RSS. Large values
/// live in segment files; what sled keeps is small records and the pages read most.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // No background flushing on a timer: what the writer's flush did not make durable, and
        // took back after a failure, is not flushed behind its back half a second later.
        let lock = lock(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(backend)?;
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name()).map_err(backend)).collect::<Result<_, _>>()?;
        Ok(Self { db, trees, dir: dir.to_owned(), _lock: lock })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t as usize]
    }
}

impl Backend for SledBackend {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        // Checked before anything is applied: the writer turns these into writes.
        if ops.iter().any(|op| matches!(op, Op::Audit(_) | Op::Relocate { .. })) {
            return Err(unchained());
        }
        for op in ops {
            match op {
                Op::Put(t, k, v) => self.tree(*t).insert(k.as_slice(), v.as_slice()).map(drop),
                Op::Delete(t, k) => self.tree(*t).remove(k.as_slice()).map(drop),
                Op::Audit(_) | Op::Relocate { .. } => return Err(unchained()),
            }
            .map_err(backend)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // sled's Db::flush covers every tree: they share one log.
        self.db.flush().map(drop).map_err(backend)
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(tree).scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)).collect()
    }

    fn visit(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for kv in self.tree(tree).iter() {
            let (k, v) = kv.map_err(backend)?;
            f(&k, &v);
        }
        Ok(())
    }

    fn keys_after(&self, tree: Tree, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
        self.tree(tree)
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .keys()
            .take(limit)
            .map(|k| k.map(|k| k.to_vec()).map_err(backend))
            .collect()
    }

    fn free_bytes(&self) -> Option<u64> {
        // statvfs(2): the blocks available to an unprivileged user (root's reserved blocks are
        // not counted on, the node need not run as root).
        fs2::available_space(&self.dir).ok()
    }
}

/// An audit event reached a backend without going through the writer's chain.
fn unchained() -> StoreError {
    StoreError::Backend("an audit event must be committed through Store::commit".into())
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An in-memory backend for tests and the simulation, with the faults of a real disk: writes
/// that fail (a full disk), flushes that fail (an I/O error after the data was handed over),
/// and a crash that loses everything applied since the last successful flush.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// What reads see: everything applied.
    live: MemoryMap,
    /// What survives a crash: everything flushed.
    durable: MemoryMap,
    /// Applied since the last flush, in order.
    unflushed: Vec<Op>,
    fail_writes: bool,
    fail_flushes: bool,
    /// The free space reported, if set.
    free: Option<u64>,
    /// Flushes wait while this is set (a disk that does not complete a write).
    hang_flushes: bool,
    /// Writes and flushes refused so far.
    refused: u64,
}

impl MemoryBackend {
    /// Makes every later `apply` fail (as a full disk would), or work again.
    pub fn set_failing(&self, failing: bool) {
        self.with(|s| s.fail_writes = failing);
    }

    /// Makes every later `flush` fail (the writes stay applied but not durable), or work again.
    pub fn set_failing_flushes(&self, failing: bool) {
        self.with(|s| s.fail_flushes = failing);
    }

    /// A crash (power cut, `kill -9`): everything not flushed is gone. The store must be opened
    /// again over this backend ([`Store::with_backend`]), as after a restart.
    pub fn crash(&self) {
        self.with(|s| {
            s.live = s.durable.clone();
            s.unflushed.clear();
        });
    }

    /// Makes the backend report `free` bytes free (`None`: it cannot tell, the default).
    pub fn set_free(&self, free: Option<u64>) {
        self.with(|s| s.free = free);
    }

    /// Makes every later `flush` wait until this is called again with `false` (a write the disk
    /// does not complete, as sled's flush after a failed write).
    pub fn set_hanging_flushes(&self, hang: bool) {
        self.with(|s| s.hang_flushes = hang);
    }

    /// How many writes and flushes were refused so far.
    pub fn refused(&self) -> u64 {
        self.with(|s| s.refused)
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryState) -> R) -> R {
        // A panic while holding this lock leaves a consistent map (every change is one insert
        // or remove); carry on with it.
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

fn apply_to(map: &mut MemoryMap, op: &Op) {
    match op {
        Op::Put(tree, k, v) => {
            map.insert((*tree, k.clone()), v.clone());
        }
        Op::Delete(tree, k) => {
            map.remove(&(*tree, k.clone()));
        }
        Op::Audit(_) | Op::Relocate { .. } => {}
    }
}

impl Backend for MemoryBackend {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.iter().any(|op| matches!(op, Op::Audit(_) | Op::Relocate { .. })) {
            return Err(unchained());
        }
        self.with(|s| {
            if s.fail_writes {
                s.refused += 1;
                return Err(StoreError::Backend("No space left on device (simulated)".into()));
            }
            for op in ops {
                apply_to(&mut s.live, op);
            }
            s.unflushed.extend_from_slice(ops);
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        while self.with(|s| s.hang_flushes) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.with(|s| {
            if s.fail_flushes {
                s.refused += 1;
                return Err(StoreError::Backend("Input/output error (simulated flush failure)".into()));
            }
            for op in std::mem::take(&mut s.unflushed) {
                apply_to(&mut s.durable, &op);
            }
            Ok(())
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|s| s.live.get(&(tree, key.to_vec())).cloned()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self.with(|s| {
            s.live
                .range((tree, prefix.to_vec())..)
                .take_while(|((tr, k), _)| *tr == tree && k.starts_with(prefix))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn free_bytes(&self) -> Option<u64> {
        self.with(|s| s.free)
    }
}
