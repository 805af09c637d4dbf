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
