//! Files the node or its tools write for an administrator (CA records, CRLs, enrolments): each
//! written whole or not at all, and durable before the caller goes on.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` whole or not at all: a temporary file synced, renamed over `path`,
/// the directory synced.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir_of(path)
}

/// Removes `path` (gone already is fine) and syncs its directory.
pub fn remove_durably(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir_of(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What was at some paths (`None`: nothing), to put back if what follows is refused.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(Vec<(std::path::PathBuf, Option<String>)>);

impl Snapshot {
    /// What is at `paths` now.
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Self {
        Self(paths.into_iter().map(|p| (p.to_owned(), fs::read_to_string(p).ok())).collect())
    }

    /// Adds what is at `path` now.
    pub fn add(&mut self, path: &Path) {
        self.0.push((path.to_owned(), fs::read_to_string(path).ok()));
    }

    /// Puts it back, in order: each file rewritten whole, or removed if there was none. Stops
    /// at the first failure, naming the file.
    pub fn restore(&self) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        for (path, text) in &self.0 {
            let done = match text {
                Some(t) => write_replacing(path, t.as_bytes()),
                None => remove_durably(path),
            };
            done.map_err(|e| (path.clone(), e))?;
        }
        Ok(())
    }
}

/// Syncs the directory `path` is in (after a rename or removal there).
pub fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_whole_and_removed_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        write_replacing(&p, b"one").unwrap();
        write_replacing(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
        remove_durably(&p).unwrap();
        remove_durably(&p).unwrap();
        assert!(!p.exists());
        assert!(write_replacing(&dir.path().join("missing/a.toml"), b"x").is_err());
    }
}
