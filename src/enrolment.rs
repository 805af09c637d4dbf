//! The directory of partners enrolled through the API (`liaison peers add`, `[node]
//! partners_dir`, by default `<data_dir>/partners`): per partner `NODE.partner.toml` (its id,
//! address and policy file), `NODE.pub.toml` (its public keys, read into the keyring like any
//! other) and `NODE.policy.toml`. The configuration reads it beside its own `[[partners]]`, so a
//! partner enrolled while the node runs is still one after a restart.
//!
//! Written in order, each file whole ([`crate::files::write_replacing`]): keys, policy, then the
//! partner file, which is what makes the partner enrolled. Removed the other way round; the
//! public keys stay, to verify what the partner sent before (evidence, receipts).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids::NodeId;

/// The name ending of a partner file.
pub const PARTNER_FILE: &str = ".partner.toml";

/// A partner file read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The partner file.
    pub file: PathBuf,
    /// The partner.
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its policy file, if one was given.
    pub policy: Option<PathBuf>,
}

/// Why the directory could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct EnrolmentError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    addr: String,
    policy: Option<PathBuf>,
}

/// The partner files in `dir` (none if it does not exist), sorted by name; every problem, each
/// naming its file.
pub fn read_dir(dir: &Path) -> Result<Vec<Enrolled>, Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(PARTNER_FILE)))
        .collect();
    files.sort();
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    for file in files {
        match read_one(&file) {
            Ok(e) => out.push(e),
            Err(p) => problems.push(format!("{}: {p}", file.display())),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn read_one(file: &Path) -> Result<Enrolled, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let raw: Raw = toml::from_str(&text).map_err(|e| crate::config::toml_problem(&e, &text))?;
    let id: NodeId = raw.id.parse().map_err(|e| format!("id: {e}"))?;
    let addr: SocketAddr = raw.addr.parse().map_err(|e| format!("addr {:?}: {e}", raw.addr))?;
    let named = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(PARTNER_FILE));
    if named != Some(id.as_str()) {
        return Err(format!("names {id}; the file must be {id}{PARTNER_FILE}"));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let policy = raw.policy.map(|p| if p.is_absolute() { p } else { dir.join(p) });
    Ok(Enrolled { file: file.to_owned(), id, addr, policy })
}

/// The files of one enrolment, as written.
#[derive(Debug, Clone)]
pub struct Files {
    /// `NODE.partner.toml` and its text.
    pub partner: (PathBuf, String),
    /// `NODE.pub.toml` and its text.
    pub keys: (PathBuf, String),
    /// `NODE.policy.toml` and its text, if a policy was given.
    pub policy: Option<(PathBuf, String)>,
}

impl Files {
    /// The files enrolling `id` at `addr` with these public keys and policy (TOML texts);
    /// `note` goes in a comment at the top of the partner file (who enrolled it, when).
    pub fn new(dir: &Path, id: &NodeId, addr: SocketAddr, keys: &str, policy: Option<&str>, note: &str) -> Self {
        let policy = policy.map(|p| (dir.join(format!("{id}.policy.toml")), p.to_owned()));
        let policy_line = if policy.is_some() { format!("policy = \"{id}.policy.toml\"\n") } else { String::new() };
        let partner = format!(
            "# {note}\n# `liaison peers remove {id}` removes it; editing this file takes effect on SIGHUP.\n\
             id = \"{id}\"\naddr = \"{addr}\"\n{policy_line}"
        );
        Self {
            partner: (dir.join(format!("{id}{PARTNER_FILE}")), partner),
            keys: (dir.join(format!("{id}.pub.toml")), keys.to_owned()),
            policy,
        }
    }

    /// The files of `id`'s enrolment as they are in `dir` (to put them back if a removal cannot
    /// be recorded), if it is enrolled there.
    pub fn read(dir: &Path, id: &NodeId) -> Option<Self> {
        let read = |name: String| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).ok().map(|t| (p, t))
        };
        Some(Self {
            partner: read(format!("{id}{PARTNER_FILE}"))?,
            keys: read(format!("{id}.pub.toml"))?,
            policy: read(format!("{id}.policy.toml")),
        })
    }

    /// Writes them: keys, policy, then the partner file (the directory is made if missing).
    pub fn write(&self) -> Result<(), EnrolmentError> {
        if let Some(dir) = self.partner.0.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EnrolmentError { path: dir.to_owned(), source })?;
        }
        for (path, text) in [Some(&self.keys), self.policy.as_ref(), Some(&self.partner)].into_iter().flatten() {
            crate::files::write_replacing(path, text.as_bytes())
                .map_err(|source| EnrolmentError { path: path.clone(), source })?;
        }
        Ok(())
    }

    fn paths(&self) -> Vec<&PathBuf> {
        [Some(&self.partner.0), self.policy.as_ref().map(|(p, _)| p), Some(&self.keys.0)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// What is at these files' paths now, the partner file first (it is what enrols), to put
    /// back if a write is refused.
    pub fn before(&self) -> crate::files::Snapshot {
        crate::files::Snapshot::of(self.paths().into_iter().map(PathBuf::as_path))
    }

    fn aside(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".aside");
        PathBuf::from(name)
    }

    /// Sets the partner file and the policy aside (renamed: no space needed), which ends the
    /// enrolment for the next start; the public keys stay (see the module doc).
    pub fn set_aside(&self) -> Result<(), EnrolmentError> {
        for path in [Some(&self.partner.0), self.policy.as_ref().map(|(p, _)| p)].into_iter().flatten() {
            std::fs::rename(path, Self::aside(path)).map_err(|source| EnrolmentError { path: path.clone(), source })?;
        }
        crate::files::sync_dir_of(&self.partner.0)
            .map_err(|source| EnrolmentError { path: self.partner.0.clone(), source })
    }

    /// Undoes [`Files::set_aside`] (the policy first, the partner file last).
    pub fn put_back(&self) -> Result<(), EnrolmentError> {
        for path in [self.policy.as_ref().map(|(p, _)| p), Some(&self.partner.0)].into_iter().flatten() {
            let aside = Self::aside(path);
            if aside.exists() {
                std::fs::rename(&aside, path).map_err(|source| EnrolmentError { path: path.clone(), source })?;
            }
        }
        crate::files::sync_dir_of(&self.partner.0)
            .map_err(|source| EnrolmentError { path: self.partner.0.clone(), source })
    }

    /// Deletes what [`Files::set_aside`] set aside.
    pub fn drop_aside(&self) -> Result<(), EnrolmentError> {
        for path in [Some(&self.partner.0), self.policy.as_ref().map(|(p, _)| p)].into_iter().flatten() {
            let aside = Self::aside(path);
            crate::files::remove_durably(&aside).map_err(|source| EnrolmentError { path: aside, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_back_and_removed_keeping_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("partners");
        assert_eq!(read_dir(&d).unwrap(), vec![], "no directory: nobody enrolled");
        let id: NodeId = "FR-OFAST".parse().unwrap();
        let addr: SocketAddr = "127.0.0.1:7404".parse().unwrap();
        let files = Files::new(&d, &id, addr, "keys", Some("policy"), "enrolled by test");
        files.write().unwrap();
        let read = read_dir(&d).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].id, read[0].addr), (id, addr));
        assert_eq!(read[0].policy.as_deref(), Some(d.join("FR-OFAST.policy.toml").as_path()));
        let again = Files::read(&d, &id).unwrap();
        assert_eq!(again.partner.1, files.partner.1);
        again.set_aside().unwrap();
        assert_eq!(read_dir(&d).unwrap(), vec![]);
        again.put_back().unwrap();
        assert_eq!(read_dir(&d).unwrap().len(), 1, "put back");
        again.set_aside().unwrap();
        again.drop_aside().unwrap();
        assert_eq!(read_dir(&d).unwrap(), vec![]);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "only the keys stay, for what it sent before");
        assert!(d.join("FR-OFAST.pub.toml").exists());
        // A write taken back leaves what was there before.
        let other = Files::new(&d, &id, addr, "other keys", None, "again");
        let before = other.before();
        other.write().unwrap();
        before.restore().unwrap();
        assert_eq!(std::fs::read_to_string(d.join("FR-OFAST.pub.toml")).unwrap(), "keys");
        assert_eq!(read_dir(&d).unwrap(), vec![]);
    }

    #[test]
    fn problems_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("FR-OFAST.partner.toml"), "id = \"DE-BKA\"\naddr = \"127.0.0.1:1\"\n").unwrap();
        std::fs::write(dir.path().join("NL-NP.partner.toml"), "id = \"NL-NP\"\naddr = \"nowhere\"\n").unwrap();
        let problems = read_dir(dir.path()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("FR-OFAST.partner.toml") && problems[0].contains("must be DE-BKA"),
            "{problems:?}"
        );
        assert!(problems[1].contains("NL-NP.partner.toml") && problems[1].contains("addr"), "{problems:?}");
    }
}
