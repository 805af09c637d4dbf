//! Node keys: the Ed25519 signing key and X25519 encryption key of a node, their files, and the
//! keyring of partners' public keys.
//!
//! Secret keys live only inside [`SigningSecret`] and [`EncryptionSecret`]: `Debug` prints
//! `SigningSecret(..)`, memory is zeroized on drop, and key files are written with mode 0600 and
//! refused when group- or world-readable. A key id (`kid`) names a public key without ambiguity:
//! `IT-DCSA/sig/<first 16 bytes of SHA-256 of the key, hex>` (`enc` for encryption keys).
//!
//! **Generations.** A node may hold several key pairs over time (key rotation with overlap):
//! each generation is a signing and an encryption key with a window (`valid_from`,
//! `valid_until`, both optional). A node signs and encrypts with its newest generation in force
//! ([`SealContext`](crate::seal::SealContext)); a partner encrypts to the newest generation of
//! the node in force and accepts, on live traffic, every generation within its window; old
//! public keys stay in the keyring, to verify old receipts, evidence and audit checkpoints.
//! Generation 1 is `NODE.sign.key`, `NODE.enc.key`, `NODE.pub.toml`; later ones
//! `NODE.gN.sign.key`... ([`key_file_names_of`]), made by `liaison keys rotate`.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::encoding::{hex, unhex, Digest};
use crate::ids::NodeId;
use crate::timestamp::Timestamp;

mod keyring;
pub use keyring::Keyring;

/// Why keys could not be made, read, written or enrolled.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Refusing to overwrite an existing key file (that would destroy a key).
    #[error("{0}: already exists; refusing to overwrite a key file")]
    Exists(PathBuf),
    /// A secret key file readable by group or others.
    #[error("{path}: permissions {mode:o} are too open; a secret key file must be 0600 (chmod 600)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file's content is not a key file of the expected kind.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two keyring entries claim the same key id, or one node twice.
    #[error("keyring: {0}")]
    Conflict(String),
}

/// Which kind of key a kid names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// Ed25519 signing key.
    Signing,
    /// X25519 encryption (key agreement) key.
    Encryption,
}

/// A key id: `NODE/sig/<32 hex>` or `NODE/enc/<32 hex>`, carried as UTF-8 bytes in COSE `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The kid of `public` (32 raw bytes) belonging to `node` for `usage`.
    pub fn derive(node: &NodeId, usage: KeyUse, public: &[u8; 32]) -> Self {
        let tag = match usage {
            KeyUse::Signing => "sig",
            KeyUse::Encryption => "enc",
        };
        Self(format!("{node}/{tag}/{}", hex(&Digest::of(public).0[..16])))
    }
    /// The kid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The kid as COSE `kid` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's Ed25519 signing key. Zeroized on drop; never printed.
pub struct SigningSecret(SigningKey);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    pub(crate) fn key(&self) -> &SigningKey {
        &self.0
    }
}

/// A node's X25519 encryption key. Zeroized on drop; never printed.
pub struct EncryptionSecret(StaticSecret);

impl fmt::Debug for EncryptionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionSecret(..)")
    }
}

impl EncryptionSecret {
    pub(crate) fn key(&self) -> &StaticSecret {
        &self.0
    }
}

/// A node's public keys (one generation), as shared with partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeys {
    /// The node these keys belong to.
    pub node: NodeId,
    /// Ed25519 verifying key.
    pub signing: VerifyingKey,
    /// X25519 public key.
    pub encryption: X25519Public,
    /// Kid of `signing`.
    pub signing_kid: KeyId,
    /// Kid of `encryption`.
    pub encryption_kid: KeyId,
    /// From when this generation is in force (none: always was).
    pub valid_from: Option<Timestamp>,
    /// Until when it is accepted on live traffic (none: until further notice). Evidence it
    /// signed verifies after that too.
    pub valid_until: Option<Timestamp>,
}

/// Leeway for clocks when a key's window is checked on live traffic.
pub const WINDOW_SLACK_SECS: i64 = 300;

impl PublicKeys {
    /// Whether `t` lies in the window (with [`WINDOW_SLACK_SECS`] either side); `Err` says why
    /// not.
    pub fn in_window(&self, t: Timestamp) -> Result<(), String> {
        if let Some(from) = self.valid_from {
            if t.unix().saturating_add(WINDOW_SLACK_SECS) < from.unix() {
                return Err(format!("is not in force before {from}"));
            }
        }
        if let Some(until) = self.valid_until {
            if t.unix().saturating_sub(WINDOW_SLACK_SECS) > until.unix() {
                return Err(format!("was retired at {until}"));
            }
        }
        Ok(())
    }

    /// Whether this generation has started at `t` (no slack: the newest started one is used).
    pub fn started(&self, t: Timestamp) -> bool {
        self.valid_from.is_none_or(|f| f <= t)
    }

    /// The same keys with a window.
    pub fn with_window(mut self, valid_from: Option<Timestamp>, valid_until: Option<Timestamp>) -> Self {
        self.valid_from = valid_from;
        self.valid_until = valid_until;
        self
    }

    /// Public keys from raw key bytes; fails on an Ed25519 key that is not a valid point.
    pub fn from_raw(node: NodeId, signing: [u8; 32], encryption: [u8; 32]) -> Result<Self, String> {
        let signing = VerifyingKey::from_bytes(&signing)
            .map_err(|_| "signing key is not a valid Ed25519 public key".to_owned())?;
        if signing.is_weak() {
            return Err("signing key is a weak (small-order) Ed25519 key".into());
        }
        let encryption = X25519Public::from(encryption);
        Ok(Self {
            signing_kid: KeyId::derive(&node, KeyUse::Signing, signing.as_bytes()),
            encryption_kid: KeyId::derive(&node, KeyUse::Encryption, encryption.as_bytes()),
            node,
            signing,
            encryption,
            valid_from: None,
            valid_until: None,
        })
    }

    /// The shareable TOML form (`NODE.pub.toml`).
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "# liaison public keys of node {node}. Give this file to partner nodes; it holds no secret.\n\
             node = \"{node}\"\n\
             # Ed25519 verifying key (hex); kid {sk}\n\
             signing_key = \"{s}\"\n\
             # X25519 encryption key (hex); kid {ek}\n\
             encryption_key = \"{e}\"\n",
            node = self.node,
            sk = self.signing_kid,
            ek = self.encryption_kid,
            s = hex(self.signing.as_bytes()),
            e = hex(self.encryption.as_bytes()),
        );
        if let Some(t) = self.valid_from {
            text.push_str(&format!("# In force from (RFC 3339).\nvalid_from = \"{t}\"\n"));
        }
        if let Some(t) = self.valid_until {
            text.push_str(&format!("# Accepted on live traffic until (RFC 3339).\nvalid_until = \"{t}\"\n"));
        }
        text
    }

    /// Parses the shareable TOML form.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            node: NodeId,
            signing_key: String,
            encryption_key: String,
            #[serde(default)]
            valid_from: Option<String>,
            #[serde(default)]
            valid_until: Option<String>,
        }
        let fmt_err = |reason: String| KeyError::Format { path: path.to_owned(), reason };
        let raw: Raw = toml::from_str(text)
            .map_err(|e| fmt_err(format!("not a public key file: {}", crate::config::toml_problem(&e, text))))?;
        let s = unhex::<32>(&raw.signing_key).ok_or_else(|| fmt_err("signing_key: expected 64 hex digits".into()))?;
        let e =
            unhex::<32>(&raw.encryption_key).ok_or_else(|| fmt_err("encryption_key: expected 64 hex digits".into()))?;
        let time = |key: &str, v: &Option<String>| -> Result<Option<Timestamp>, KeyError> {
            v.as_deref().map(|t| t.parse::<Timestamp>().map_err(|e| fmt_err(format!("{key}: {e}")))).transpose()
        };
        let (from, until) = (time("valid_from", &raw.valid_from)?, time("valid_until", &raw.valid_until)?);
        if let (Some(f), Some(u)) = (from, until) {
            if u <= f {
                return Err(fmt_err("valid_until must be after valid_from".into()));
            }
        }
        Ok(Self::from_raw(raw.node, s, e).map_err(fmt_err)?.with_window(from, until))
    }

    /// Reads a `NODE.pub.toml` file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }
}

/// A node's own secret keys.
#[derive(Debug)]
pub struct NodeKeys {
    node: NodeId,
    signing: SigningSecret,
    encryption: EncryptionSecret,
    public: PublicKeys,
}

/// The file names `keys generate` writes for `node` in a directory (generation 1).
pub fn key_file_names(node: &NodeId) -> [String; 3] {
    key_file_names_of(node, 1)
}

/// The file names of generation `gen` of `node`'s keys: `NODE.sign.key`... for the first,
/// `NODE.gN.sign.key`... for later ones.
pub fn key_file_names_of(node: &NodeId, gen: u32) -> [String; 3] {
    let stem = if gen <= 1 { node.to_string() } else { format!("{node}.g{gen}") };
    [format!("{stem}.sign.key"), format!("{stem}.enc.key"), format!("{stem}.pub.toml")]
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    node: NodeId,
    algorithm: String,
    secret: String,
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl NodeKeys {
    /// New random keys for `node`.
    pub fn generate(node: NodeId, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let signing = SigningKey::generate(rng);
        let encryption = StaticSecret::random_from_rng(rng);
        Self::from_parts(node, signing, encryption)
    }

    /// Keys from raw secret bytes (test vectors, key files).
    pub fn from_secret_bytes(node: NodeId, signing: &[u8; 32], encryption: [u8; 32]) -> Self {
        Self::from_parts(node, SigningKey::from_bytes(signing), StaticSecret::from(encryption))
    }

    fn from_parts(node: NodeId, signing: SigningKey, encryption: StaticSecret) -> Self {
        let vk = signing.verifying_key();
        let ek = X25519Public::from(&encryption);
        let public = PublicKeys {
            signing_kid: KeyId::derive(&node, KeyUse::Signing, vk.as_bytes()),
            encryption_kid: KeyId::derive(&node, KeyUse::Encryption, ek.as_bytes()),
            node,
            signing: vk,
            encryption: ek,
            valid_from: None,
            valid_until: None,
        };
        Self { node, signing: SigningSecret(signing), encryption: EncryptionSecret(encryption), public }
    }

    /// A second copy of the same keys (a keyring change builds a new seal context from them;
    /// both copies are zeroized when dropped).
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            node: self.node,
            signing: SigningSecret(self.signing.0.clone()),
            encryption: EncryptionSecret(self.encryption.0.clone()),
            public: self.public.clone(),
        }
    }

    /// The node these keys belong to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }
    /// The signing key.
    pub fn signing(&self) -> &SigningSecret {
        &self.signing
    }
    /// The encryption key.
    pub fn encryption(&self) -> &EncryptionSecret {
        &self.encryption
    }
    /// The matching public keys.
    pub fn public(&self) -> &PublicKeys {
        &self.public
    }

    /// Writes `NODE.sign.key`, `NODE.enc.key` (mode 0600) and `NODE.pub.toml` (0644) into `dir`,
    /// creating it (0700) if needed. Refuses to overwrite any existing file. Returns the paths.
    pub fn write_to_dir(&self, dir: &Path) -> Result<[PathBuf; 3], KeyError> {
        self.write_generation(dir, 1)
    }

    /// [`NodeKeys::write_to_dir`] as generation `gen` ([`key_file_names_of`]); the public file
    /// carries the window.
    pub fn write_generation(&self, dir: &Path, gen: u32) -> Result<[PathBuf; 3], KeyError> {
        create_private_dir(dir)?;
        let [s, e, p] = key_file_names_of(&self.node, gen).map(|n| dir.join(n));
        for path in [&s, &e, &p] {
            if path.exists() {
                return Err(KeyError::Exists(path.clone()));
            }
        }
        let secret = |algorithm: &str, bytes: &[u8]| {
            let body = SecretFile { node: self.node, algorithm: algorithm.into(), secret: hex(bytes) };
            let text = toml::to_string(&body).unwrap_or_default();
            Zeroizing::new(format!(
                "# liaison SECRET key of node {}. Never share or commit this file; keep it mode 0600.\n{text}",
                self.node
            ))
        };
        let sign_bytes = Zeroizing::new(self.signing.0.to_bytes());
        let enc_bytes = Zeroizing::new(self.encryption.0.to_bytes());
        write_new(&s, secret("ed25519", &sign_bytes[..]).as_bytes(), 0o600)?;
        write_new(&e, secret("x25519", &enc_bytes[..]).as_bytes(), 0o600)?;
        write_new(&p, self.public.to_toml().as_bytes(), 0o644)?;
        Ok([s, e, p])
    }

    /// Reads the keys of `node` from `dir` (as written by [`NodeKeys::write_to_dir`]), checking
    /// file permissions, that both secrets belong to `node`, and that the public file matches.
    pub fn load_from_dir(dir: &Path, node: &NodeId) -> Result<Self, KeyError> {
        Self::load_generation(dir, node, 1)
    }

    /// Generation `gen` of `node`'s keys in `dir`, its window from the public file beside.
    pub fn load_generation(dir: &Path, node: &NodeId, gen: u32) -> Result<Self, KeyError> {
        let [s, e, p] = key_file_names_of(node, gen).map(|n| dir.join(n));
        let signing = read_secret(&s, node, "ed25519")?;
        let encryption = read_secret(&e, node, "x25519")?;
        let mut keys = Self::from_secret_bytes(*node, &signing, *encryption);
        if p.exists() {
            let public = PublicKeys::load(&p)?;
            if public.signing_kid != keys.public.signing_kid || public.encryption_kid != keys.public.encryption_kid {
                return Err(KeyError::Format { path: p, reason: "does not match the secret keys beside it".into() });
            }
            keys.public = public;
        }
        Ok(keys)
    }

    /// Every generation of `node`'s keys in `dir` (the first required), oldest first, each with
    /// its number.
    pub fn load_generations(dir: &Path, node: &NodeId) -> Result<Vec<(u32, Self)>, KeyError> {
        let mut out = vec![(1, Self::load_from_dir(dir, node)?)];
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        let prefix = format!("{node}.g");
        let mut gens: Vec<u32> = fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&prefix)?.strip_suffix(".sign.key")?.parse().ok())
            .filter(|g| *g > 1)
            .collect();
        gens.sort_unstable();
        for g in gens {
            out.push((g, Self::load_generation(dir, node, g)?));
        }
        Ok(out)
    }

    /// Key rotation with overlap: makes the next generation of `node`'s keys in `dir`, in force
    /// from `from`, and retires the newest one there at `from` + `overlap_secs` (its public file
    /// rewritten with `valid_until`). Returns the new generation's number and keys.
    pub fn rotate(
        dir: &Path,
        node: &NodeId,
        from: Timestamp,
        overlap_secs: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(u32, Self), KeyError> {
        let gens = Self::load_generations(dir, node)?;
        let Some((last_gen, last)) = gens.last() else {
            return Err(KeyError::Format { path: dir.to_owned(), reason: "no keys to rotate".into() });
        };
        if last.public.valid_from.is_some_and(|f| f >= from) {
            return Err(KeyError::Conflict(format!(
                "generation {last_gen} comes into force only at {}; the next must come after it",
                last.public.valid_from.map(|t| t.to_string()).unwrap_or_default()
            )));
        }
        let gen = last_gen + 1;
        let next = Self::generate(*node, rng);
        let next = Self { public: next.public.clone().with_window(Some(from), None), ..next };
        next.write_generation(dir, gen)?;
        let retired = last.public.clone().with_window(last.public.valid_from, Some(from.plus_secs(overlap_secs)));
        let [_, _, p] = key_file_names_of(node, *last_gen).map(|n| dir.join(n));
        crate::files::write_replacing(&p, retired.to_toml().as_bytes())
            .map_err(|source| KeyError::Io { path: p, source })?;
        Ok((gen, next))
    }

    /// Finds the single node whose keys are in `dir` (the one `NODE.sign.key` file).
    pub fn load_single(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        let mut nodes = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".sign.key")) {
                nodes.push(n.to_owned());
            }
        }
        match nodes.as_slice() {
            [one] => {
                let node = one.parse().map_err(|e: crate::ids::IdError| KeyError::Format {
                    path: dir.join(format!("{one}.sign.key")),
                    reason: e.to_string(),
                })?;
                Self::load_from_dir(dir, &node)
            }
            [] => Err(KeyError::Format { path: dir.to_owned(), reason: "no NODE.sign.key file here".into() }),
            _ => Err(KeyError::Format {
                path: dir.to_owned(),
                reason: format!("keys of several nodes here ({}); name one", nodes.join(", ")),
            }),
        }
    }
}

/// The mode of a secret file that group or others may read (`None`: 0600 or stricter, or not
/// a Unix system). The one rule for every secret file: node keys, the TLS key, the CA's key.
pub(crate) fn too_open_mode(meta: &fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// [`too_open_mode`] of the file at `path` (`None` also if it cannot be read: that is said
/// where it is read).
pub(crate) fn too_open(path: &Path) -> Option<u32> {
    fs::metadata(path).ok().as_ref().and_then(too_open_mode)
}

fn read_secret(path: &Path, node: &NodeId, algorithm: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let fmt_err = |reason: String| KeyError::Format { path: path.to_owned(), reason };
    let file = fs::File::open(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let meta = file.metadata().map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    if let Some(mode) = too_open_mode(&meta) {
        return Err(KeyError::Permissions { path: path.to_owned(), mode });
    }
    let mut text = Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut &file, &mut text)
        .map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let raw: SecretFile = toml::from_str(&text)
        .map_err(|e| fmt_err(format!("not a secret key file: {}", crate::config::toml_problem(&e, &text))))?;
    if &raw.node != node {
        return Err(fmt_err(format!("holds a key of {}, expected {node}", raw.node)));
    }
    if raw.algorithm != algorithm {
        return Err(fmt_err(format!("holds a {} key, expected {algorithm}", raw.algorithm)));
    }
    unhex::<32>(&raw.secret).map(Zeroizing::new).ok_or_else(|| fmt_err("secret: expected 64 hex digits".into()))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: dir.to_owned(), source };
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(io)
}

pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            io(e)
        }
    })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn node(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn files_round_trip_with_safe_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let keys = NodeKeys::generate(node("IT-DCSA"), &mut rng);
        let [s, e, p] = keys.write_to_dir(&dir.path().join("k")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(&e).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        }
        let back = NodeKeys::load_from_dir(&dir.path().join("k"), &node("IT-DCSA")).unwrap();
        assert_eq!(back.public(), keys.public());
        assert_eq!(NodeKeys::load_single(&dir.path().join("k")).unwrap().public(), keys.public());
        assert!(matches!(keys.write_to_dir(&dir.path().join("k")), Err(KeyError::Exists(_))));
        assert!(!fs::read_to_string(&p).unwrap().contains(&hex(&keys.signing().key().to_bytes())));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&s, fs::Permissions::from_mode(0o644)).unwrap();
            let err = NodeKeys::load_from_dir(&dir.path().join("k"), &node("IT-DCSA")).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let keys = NodeKeys::generate(node("ES-UDYCO"), &mut rng);
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("SigningSecret(..)") && dbg.contains("EncryptionSecret(..)"));
        assert!(!dbg.contains(&hex(&keys.signing().key().to_bytes())));
    }

    #[test]
    fn keyring_holds_generations_and_refuses_mixed_pairs() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let a = NodeKeys::generate(node("IT-DCSA"), &mut rng);
        let a2 = NodeKeys::generate(node("IT-DCSA"), &mut rng);
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut ring = Keyring::new();
        ring.add(a.public().clone()).unwrap();
        ring.add(a.public().clone()).unwrap();
        // A second generation, in force from a date: the first until then, the second after.
        ring.add(a2.public().clone().with_window(Some(t("2030-01-01T00:00:00Z")), None)).unwrap();
        let it = node("IT-DCSA");
        assert_eq!(ring.generations(&it).len(), 2);
        assert_eq!(ring.node_at(&it, t("2029-12-31T23:59:59Z")).unwrap().signing_kid, a.public().signing_kid);
        assert_eq!(ring.node_at(&it, t("2030-01-01T00:00:00Z")).unwrap().signing_kid, a2.public().signing_kid);
        // The first one's retirement, learnt later, narrows its window.
        ring.add(a.public().clone().with_window(None, Some(t("2030-02-01T00:00:00Z")))).unwrap();
        let (first, _) = ring.kid(a.public().signing_kid.as_bytes()).unwrap();
        assert_eq!(first.valid_until, Some(t("2030-02-01T00:00:00Z")));
        assert!(first.in_window(t("2030-01-15T00:00:00Z")).is_ok());
        assert!(first.in_window(t("2030-03-01T00:00:00Z")).unwrap_err().contains("retired"));
        // A kid of IT-DCSA's form not held here: awaited (a key it rotated to); one held, one of
        // a node without keys here, or not of the form: not.
        let unknown_kid = format!("IT-DCSA/sig/{}", "ab".repeat(16));
        assert_eq!(ring.awaited(&unknown_kid), Some(it));
        assert_eq!(ring.awaited(a.public().signing_kid.as_str()), None);
        assert_eq!(ring.awaited(&format!("DE-BKA/sig/{}", "ab".repeat(16))), None);
        assert_eq!(ring.awaited("IT-DCSA/sig/short"), None);
        assert_eq!(ring.awaited(&format!("IT-DCSA/key/{}", "ab".repeat(16))), None);
        // One generation's signing key with another's encryption key: refused.
        let mixed =
            PublicKeys::from_raw(it, *a.public().signing.as_bytes(), *a2.public().encryption.as_bytes()).unwrap();
        assert!(matches!(ring.add(mixed), Err(KeyError::Conflict(_))));
        assert_eq!(ring.generations(&it).len(), 2, "unchanged");
        let (k, usage) = ring.kid(a.public().encryption_kid.as_bytes()).unwrap();
        assert_eq!((k.node.as_str(), usage), ("IT-DCSA", KeyUse::Encryption));
        assert!(a.public().signing_kid.as_str().starts_with("IT-DCSA/sig/"));
    }

    #[test]
    fn two_undated_keys_in_force_are_refused_and_a_new_enrolment_retires_the_old() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let it = node("IT-DCSA");
        let (a, b) = (NodeKeys::generate(it, &mut rng), NodeKeys::generate(it, &mut rng));
        let mut ring = Keyring::new();
        ring.add(a.public().clone()).unwrap();
        // A stray second file with other keys and no dates: refused, the keyring unchanged.
        let err = ring.add(b.public().clone()).unwrap_err().to_string();
        assert!(err.contains("no valid_from"), "{err}");
        assert_eq!(ring.generations(&it).len(), 1);
        assert!(ring.kid(b.public().signing_kid.as_bytes()).is_none());
        // Enrolled again with new keys: the old ones are retired, kept for evidence.
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        ring.replace(b.public().clone(), now).unwrap();
        assert_eq!(ring.generations(&it).len(), 2);
        assert_eq!(ring.node_at(&it, now.plus_secs(1)).unwrap().signing_kid, b.public().signing_kid);
        let (old, _) = ring.kid(a.public().signing_kid.as_bytes()).unwrap();
        assert_eq!(old.valid_until, Some(now));
        // And back to the first keys: the second retired in turn, the first in force again.
        ring.replace(a.public().clone(), now.plus_secs(10)).unwrap();
        assert_eq!(ring.node_at(&it, now.plus_secs(11)).unwrap().signing_kid, a.public().signing_kid);
    }

    #[test]
    fn rotation_writes_the_next_generation_and_retires_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let it = node("IT-DCSA");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        NodeKeys::generate(it, &mut rng).write_to_dir(dir.path()).unwrap();
        let from: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let (gen, next) = NodeKeys::rotate(dir.path(), &it, from, 86_400, &mut rng).unwrap();
        assert_eq!(gen, 2);
        let gens = NodeKeys::load_generations(dir.path(), &it).unwrap();
        assert_eq!(gens.len(), 2);
        assert_eq!(gens[0].1.public().valid_until, Some(from.plus_secs(86_400)));
        assert_eq!(gens[1].1.public(), next.public());
        assert_eq!(gens[1].1.public().valid_from, Some(from));
        // Not before the one just made.
        assert!(NodeKeys::rotate(dir.path(), &it, from, 86_400, &mut rng).is_err());
        let ring = Keyring::load(&[dir.path().to_owned()]).unwrap();
        assert_eq!(ring.generations(&it).len(), 2, "the public files of both generations");
    }

    #[test]
    fn public_file_errors_are_named() {
        let p = Path::new("x.pub.toml");
        let bad = "node = \"IT-DCSA\"\nsigning_key = \"zz\"\nencryption_key = \"00\"\n";
        let err = PublicKeys::from_toml(bad, p).unwrap_err().to_string();
        assert!(err.contains("signing_key"), "{err}");
        let unknown = "node = \"IT-DCSA\"\nsigning_key = \"\"\nencryption_key = \"\"\nextra = 1\n";
        assert!(PublicKeys::from_toml(unknown, p).unwrap_err().to_string().contains("extra"));
    }
}
