//! Node keys: the Ed25519 signing key and X25519 encryption key of a node, their files, and the
//! keyring of partners' public keys.
//!
//! Secret keys live only inside [`SigningSecret`] and [`EncryptionSecret`]: `Debug` prints
//! `SigningSecret(..)`, memory is zeroized on drop, and key files are written with mode 0600 and
//! refused when group- or world-readable. A key id (`kid`) names a public key without ambiguity:
//! `IT-DCSA/sig/<first 16 bytes of SHA-256 of the key, hex>` (`enc` for encryption keys).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::encoding::{hex, unhex, Digest};
use crate::ids::NodeId;

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

/// A node's public keys, as shared with partners.
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
}

impl PublicKeys {
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
        })
    }

    /// The shareable TOML form (`NODE.pub.toml`).
    pub fn to_toml(&self) -> String {
        format!(
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
        )
    }

    /// Parses the shareable TOML form.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            node: NodeId,
            signing_key: String,
            encryption_key: String,
        }
        let fmt_err = |reason: String| KeyError::Format { path: path.to_owned(), reason };
        let raw: Raw = toml::from_str(text)
            .map_err(|e| fmt_err(format!("not a public key file: {}", crate::config::toml_problem(&e, text))))?;
        let s = unhex::<32>(&raw.signing_key).ok_or_else(|| fmt_err("signing_key: expected 64 hex digits".into()))?;
        let e =
            unhex::<32>(&raw.encryption_key).ok_or_else(|| fmt_err("encryption_key: expected 64 hex digits".into()))?;
        Self::from_raw(raw.node, s, e).map_err(fmt_err)
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

/// The file names `keys generate` writes for `node` in a directory.
pub fn key_file_names(node: &NodeId) -> [String; 3] {
    [format!("{node}.sign.key"), format!("{node}.enc.key"), format!("{node}.pub.toml")]
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
        };
        Self { node, signing: SigningSecret(signing), encryption: EncryptionSecret(encryption), public }
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
        create_private_dir(dir)?;
        let [s, e, p] = key_file_names(&self.node).map(|n| dir.join(n));
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
        let [s, e, p] = key_file_names(node).map(|n| dir.join(n));
        let signing = read_secret(&s, node, "ed25519")?;
        let encryption = read_secret(&e, node, "x25519")?;
        let keys = Self::from_secret_bytes(*node, &signing, *encryption);
        if p.exists() {
            let public = PublicKeys::load(&p)?;
            if public != keys.public {
                return Err(KeyError::Format { path: p, reason: "does not match the secret keys beside it".into() });
            }
        }
        Ok(keys)
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

/// The public keys of known nodes (partners and this node itself), by node and by kid.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_node: HashMap<NodeId, Arc<PublicKeys>>,
    by_kid: HashMap<Vec<u8>, Arc<PublicKeys>>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node's public keys. A node can be enrolled once; a kid can name one key only.
    pub fn add(&mut self, keys: PublicKeys) -> Result<(), KeyError> {
        if let Some(old) = self.by_node.get(&keys.node) {
            if **old == keys {
                return Ok(());
            }
            return Err(KeyError::Conflict(format!("{} is enrolled twice with different keys", keys.node)));
        }
        for kid in [&keys.signing_kid, &keys.encryption_kid] {
            if self.by_kid.contains_key(kid.as_bytes()) {
                return Err(KeyError::Conflict(format!("key id {kid} is already used by another node")));
            }
        }
        let keys = Arc::new(keys);
        self.by_kid.insert(keys.signing_kid.as_bytes().to_vec(), keys.clone());
        self.by_kid.insert(keys.encryption_kid.as_bytes().to_vec(), keys.clone());
        self.by_node.insert(keys.node, keys);
        Ok(())
    }

    /// Loads every `*.pub.toml` in each path (a file, or a directory of them).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut ring = Self::new();
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
                    ring.add(PublicKeys::load(&f)?)?;
                }
            } else {
                ring.add(PublicKeys::load(path)?)?;
            }
        }
        Ok(ring)
    }

    /// The keys of `node`.
    pub fn node(&self, node: &NodeId) -> Option<&Arc<PublicKeys>> {
        self.by_node.get(node)
    }

    /// The keys named by a kid, and which of the two the kid names.
    pub fn kid(&self, kid: &[u8]) -> Option<(&Arc<PublicKeys>, KeyUse)> {
        let keys = self.by_kid.get(kid)?;
        let usage = if keys.signing_kid.as_bytes() == kid { KeyUse::Signing } else { KeyUse::Encryption };
        Some((keys, usage))
    }

    /// Every enrolled node's keys.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PublicKeys>> {
        self.by_node.values()
    }
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
    fn keyring_refuses_conflicts() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let a = NodeKeys::generate(node("IT-DCSA"), &mut rng);
        let a2 = NodeKeys::generate(node("IT-DCSA"), &mut rng);
        let mut ring = Keyring::new();
        ring.add(a.public().clone()).unwrap();
        ring.add(a.public().clone()).unwrap();
        assert!(matches!(ring.add(a2.public().clone()), Err(KeyError::Conflict(_))));
        let (k, usage) = ring.kid(a.public().encryption_kid.as_bytes()).unwrap();
        assert_eq!((k.node.as_str(), usage), ("IT-DCSA", KeyUse::Encryption));
        assert!(a.public().signing_kid.as_str().starts_with("IT-DCSA/sig/"));
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
