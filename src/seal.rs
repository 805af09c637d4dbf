//! Seal and open: sign-then-encrypt with standard COSE (RFC 9052 / RFC 9053).
//!
//! # What a sealed packet is
//!
//! ```text
//! COSE_Encrypt (tag 96)                          <- one per recipient node
//!   protected:   alg 24 (ChaCha20/Poly1305), content type,
//!                "liaison.route": {sender, recipient, packet_id, priority, expires}
//!   unprotected: iv (12 bytes)
//!   ciphertext:  AEAD(COSE_Sign1), AAD = Enc_structure (binds the protected header)
//!   recipients:  [ protected {alg -27 ECDH-SS + HKDF-256},
//!                  unprotected {kid: recipient's X25519 kid, -3: sender's X25519 kid,
//!                               -20: salt (32 random bytes)}, ciphertext h'' ]
//! COSE_Sign1 (tag 18)                            <- made once, by the originator
//!   protected:   alg -19 (Ed25519), kid, content type,
//!                "liaison.pid", "liaison.orig", "liaison.type"
//!   payload:     the packet's CBOR face
//! ```
//!
//! A relay can read the routing header but cannot change it: it is part of the AEAD's additional
//! data. Everything security-relevant is in protected headers.
//!
//! # Why ECDH-SS + HKDF-256 with a per-message salt
//!
//! The issue allowed HPKE or COSE ECDH+HKDF. We chose COSE's own direct key agreement so the whole
//! message is plain RFC 9052/9053 that any COSE library can process, with no draft HPKE-in-COSE
//! profile. Of the two COSE modes we chose **static-static** (alg -27): the X25519 result between
//! two nodes is computed once when the keyring is loaded and cached, and each message gets its own
//! content key from HKDF over that secret with a fresh 32-byte salt. That costs one HKDF per packet
//! instead of two X25519 operations on the sender and one on the receiver (tens of µs each; at
//! 20,000 packets/s that would be a large share of two cores — see `benches/packet.rs`). It also
//! authenticates the routing header's sender: only the two nodes can compute the key. The price:
//! no forward secrecy at this layer against theft of a node's X25519 key (ECDH-ES would not give it
//! against theft of the recipient's key either). The QUIC/TLS 1.3 transport adds forward secrecy on
//! the wire, and key rotation bounds the exposure.
//!
//! # Checks on opening, in order
//!
//! 1. Size limit, before any parsing.
//! 2. Exactly one CBOR item (no trailing bytes) of the COSE_Encrypt shape, with our algorithms.
//! 3. The routing header names this node ([`OpenError::NotForMe`]).
//! 4. The recipient kid is this node's X25519 key; the sender's key id is a known X25519 key of
//!    the routing header's sender.
//! 5. Decryption (the AEAD also authenticates the routing header).
//! 6. The COSE_Sign1 inside parses exactly.
//! 7. Its kid is a known Ed25519 key ([`OpenError::UnknownKey`]).
//! 8. `verify_strict` over the exact received bytes.
//! 9. The payload is a valid packet.
//! 10. Headers agree with the packet (id, originator, type, recipient, priority, expiry) and the
//!     signer is the originator.
//! 11. Not expired at `now`, and not created more than [`MAX_CLOCK_SKEW_SECS`] ahead of it.
//!
//! The issue listed the kid check after the signature check; a signature cannot be verified
//! before its key is found, so the kid is looked up first. The recipient is checked first on the
//! (not yet authenticated) routing header because it is cheap and can only cause a refusal, and
//! again after verification against the signed recipient list.

use std::collections::HashMap;
use std::sync::Arc;

use ciborium::Value;
use coset::{
    iana, CborSerializable, CoseEncrypt, CoseEncryptBuilder, CoseError, CoseKdfContextBuilder, CoseRecipient,
    CoseRecipientBuilder, CoseSign1, CoseSign1Builder, Header, HeaderBuilder, Label, ProtectedHeader,
    RegisteredLabelWithPrivate, SuppPubInfo, TaggedCborSerializable,
};
use ed25519_dalek::Signer as _;
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::encoding::{CborError, Digest};
use crate::ids::{NodeId, PacketId};
use crate::keys::{KeyId, KeyUse, Keyring, NodeKeys};
use crate::markings::Priority;
use crate::packet::{Checked, Packet, PacketError, MAX_PACKET_BYTES};
use crate::timestamp::Timestamp;

/// Largest sealed message accepted: the largest packet plus room for the COSE layers.
pub const MAX_SEALED_BYTES: usize = MAX_PACKET_BYTES + 64 * 1024;

/// Protected-header label of the routing header in the COSE_Encrypt layer.
pub const LABEL_ROUTE: &str = "liaison.route";
/// Protected-header label of the packet id in the COSE_Sign1 layer.
pub const LABEL_PACKET_ID: &str = "liaison.pid";
/// Protected-header label of the originating node in the COSE_Sign1 layer.
pub const LABEL_ORIGINATOR: &str = "liaison.orig";
/// Protected-header label of the packet type in the COSE_Sign1 layer.
pub const LABEL_TYPE: &str = "liaison.type";
/// Protected-header label (COSE_Sign1) of the version hash of the sharing policy under which the
/// originator sent this copy (32-byte SHA-256; absent for system packets).
pub const LABEL_POLICY: &str = "liaison.policy";
/// Content type of the COSE_Sign1 payload.
pub const CONTENT_TYPE_PACKET: &str = "application/vnd.liaison.packet+cbor";
/// Content type of the COSE_Encrypt plaintext.
pub const CONTENT_TYPE_SIGN1: &str = "application/cose; cose-type=\"cose-sign1\"";

const HEADER_STATIC_KEY_ID: i64 = -3;
const HEADER_SALT: i64 = -20;
const SALT_LEN: usize = 32;
const IV_LEN: usize = 12;

/// The routing header: what a relay may read, and nobody may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHeader {
    /// The node that encrypted this copy.
    pub sender: NodeId,
    /// The node that can decrypt it.
    pub recipient: NodeId,
    /// The packet inside.
    pub packet_id: PacketId,
    /// Delivery priority.
    pub priority: Priority,
    /// Do not deliver after this.
    pub expires: Timestamp,
}

/// Which COSE layer a structural error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The outer COSE_Encrypt.
    Encrypted,
    /// The inner COSE_Sign1.
    Signed,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Encrypted => "COSE_Encrypt",
            Self::Signed => "COSE_Sign1",
        })
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The packet breaks a rule.
    #[error("invalid packet: {0}")]
    InvalidPacket(#[from] PacketError),
    /// Only the originating node signs a packet.
    #[error("packet originator is {originator} but this node is {me}")]
    NotOriginator {
        /// The packet's originator.
        originator: NodeId,
        /// This node.
        me: NodeId,
    },
    /// No public keys are enrolled for a recipient.
    #[error("no keys enrolled for recipient {0}")]
    UnknownRecipient(NodeId),
    /// The recipient is not named in the packet.
    #[error("{0} is not a recipient of this packet")]
    NotARecipient(NodeId),
    /// A peer's X25519 key gives a non-contributory shared secret (a low-order point).
    #[error("the X25519 key of {0} is a low-order point; refusing it")]
    WeakKey(NodeId),
    /// COSE encoding failed (a bug).
    #[error("COSE encoding failed: {0}")]
    Encoding(String),
}

/// Why a sealed packet was refused. Each check has its own variant; [`OpenError::code`] gives a
/// stable machine-readable name for rejection receipts.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Longer than the size limit; nothing was parsed.
    #[error("sealed packet of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not the expected COSE structure.
    #[error("malformed {layer}: {reason}")]
    Malformed {
        /// Where.
        layer: Layer,
        /// What is wrong.
        reason: String,
    },
    /// Bytes after the CBOR item.
    #[error("trailing bytes after the {0} item")]
    TrailingBytes(Layer),
    /// An algorithm or parameter this node does not accept.
    #[error("unsupported {0}")]
    Unsupported(String),
    /// Addressed to another node.
    #[error("addressed to {recipient}, but this node is {me}")]
    NotForMe {
        /// The recipient named in the routing header.
        recipient: NodeId,
        /// This node.
        me: NodeId,
    },
    /// A key id that is not in the keyring, or names the wrong kind of key or another node.
    #[error("unknown key {kid:?}: {reason}")]
    UnknownKey {
        /// The kid, as text (lossy).
        kid: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A key of the sender itself that this node does not hold yet, or whose window has not
    /// started: keys it rotated to and announced, not taken here yet (the administrator has not
    /// accepted them, or the announcement is on its way). Not a rejection: the copy gets no
    /// receipt and comes again.
    #[error("key {kid:?} of the sender is not known here yet: {reason}")]
    KeyNotYetKnown {
        /// The kid, as text (lossy).
        kid: String,
        /// Why.
        reason: String,
    },
    /// The AEAD tag did not verify: tampered ciphertext or header, or the wrong key.
    #[error("decryption failed: ciphertext or protected header altered, or not encrypted for this node's key")]
    DecryptionFailed,
    /// The Ed25519 signature did not verify (strict).
    #[error("signature by {kid} does not verify")]
    SignatureInvalid {
        /// The signer's kid.
        kid: KeyId,
    },
    /// The signed payload is not a valid packet.
    #[error("invalid packet: {0}")]
    InvalidPacket(#[from] PacketError),
    /// A header disagrees with the packet, or the signer is not the originator.
    #[error("header mismatch: {0}")]
    HeaderMismatch(String),
    /// CBOR that a strict reader refuses (indefinite length, integer not in its shortest form,
    /// unknown tag or simple value, repeated map key), in a COSE layer.
    #[error("{layer}: {error}")]
    NotStrict {
        /// Where.
        layer: Layer,
        /// What.
        error: CborError,
    },
    /// A COSE `crit` header names a parameter this node does not process (RFC 9052 §3.1: the
    /// message must then be refused), or `crit` is not in the protected header.
    #[error("{layer}: critical header parameter {label} is not understood")]
    UnknownCritical {
        /// Where.
        layer: Layer,
        /// The label, as text.
        label: String,
    },
    /// The packet's expiry has passed.
    #[error("packet expired at {expires} (now {now})")]
    Expired {
        /// Expiry.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// The packet says it was created further ahead of this node's clock than clocks differ
    /// ([`MAX_CLOCK_SKEW_SECS`]).
    #[error("packet created at {created}, more than {MAX_CLOCK_SKEW_SECS} s ahead of this node's clock ({now})")]
    CreatedInFuture {
        /// What the packet says.
        created: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
}

impl OpenError {
    /// A stable code naming the check that failed, for rejection receipts and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::Unsupported(_) => "unsupported",
            Self::NotForMe { .. } => "not_for_me",
            Self::UnknownKey { .. } => "unknown_key",
            Self::KeyNotYetKnown { .. } => "key_not_yet_known",
            Self::DecryptionFailed => "decryption_failed",
            Self::SignatureInvalid { .. } => "signature_invalid",
            Self::InvalidPacket(PacketError::Cbor(e)) => e.strict_code().unwrap_or("invalid_packet"),
            Self::InvalidPacket(_) => "invalid_packet",
            Self::NotStrict { error, .. } => error.strict_code().unwrap_or("malformed"),
            Self::UnknownCritical { .. } => "cose_unknown_crit",
            Self::HeaderMismatch(_) => "header_mismatch",
            Self::Expired { .. } => "expired",
            Self::CreatedInFuture { .. } => "created_in_future",
        }
    }
}

/// A packet signed by its originator: the exact COSE_Sign1 bytes and what they say.
#[derive(Debug, Clone)]
pub struct SignedPacket {
    /// The tagged COSE_Sign1, exactly as signed (evidence; what is encrypted for each recipient).
    pub bytes: Vec<u8>,
    /// The packet.
    pub packet: Packet,
    /// The kid of the signing key.
    pub signer: KeyId,
    /// The version hash of the originator's sharing policy for this copy's recipient, from the
    /// protected header.
    pub policy: Option<Digest>,
}

/// One recipient's sealed copy.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The routing header, as in the protected header.
    pub route: RouteHeader,
    /// The tagged COSE_Encrypt.
    pub bytes: Vec<u8>,
}

/// A sealed packet that passed every check.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The authenticated routing header.
    pub route: RouteHeader,
    /// The signed packet inside.
    pub signed: SignedPacket,
    /// SHA-256 of the exact sealed bytes received (named in the delivery receipt).
    pub sealed_digest: Digest,
    /// The kid of the sender's static encryption key.
    pub sender_key: String,
    /// The kid of this node's encryption key it was sealed to: a generation the sender holds.
    pub recipient_key: String,
}

/// This node's keys (every generation), the keyring, and the pairwise X25519 secrets computed
/// from them.
pub struct SealContext {
    /// Oldest first; the newest that has started signs and encrypts ([`SealContext::current`]).
    own: Arc<Vec<NodeKeys>>,
    keyring: Arc<Keyring>,
    /// X25519(my secret, peer public) by (my encryption kid, the peer's encryption kid).
    pairwise: Arc<HashMap<KidPair, Zeroizing<[u8; 32]>>>,
    /// A generation to sign and seal with instead of the newest started one
    /// ([`SealContext::for_announcement`]).
    pin: Option<usize>,
}

/// (this node's encryption kid, a peer's encryption kid).
type KidPair = (Vec<u8>, Vec<u8>);

impl std::fmt::Debug for SealContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealContext").field("node", self.node()).field("pairs", &self.pairwise.len()).finish()
    }
}

impl SealContext {
    /// Builds the context; this node's own public keys are added to the keyring if absent.
    /// Computes one X25519 per peer. Fails on a peer key that is a low-order point.
    pub fn new(keys: NodeKeys, keyring: Keyring) -> Result<Self, crate::keys::KeyError> {
        Self::build(Arc::new(vec![keys]), keyring)
    }

    /// The context of a node with several generations of keys (key rotation), oldest first.
    pub fn with_generations(keys: Vec<NodeKeys>, keyring: Keyring) -> Result<Self, crate::keys::KeyError> {
        let node = keys.first().map(|k| *k.node());
        if keys.is_empty() || keys.iter().any(|k| Some(*k.node()) != node) {
            return Err(crate::keys::KeyError::Conflict("a node's key generations must all be its own".into()));
        }
        let mut keys = keys;
        keys.sort_by_key(|k| k.public().valid_from.map_or(i64::MIN, Timestamp::unix));
        Self::build(Arc::new(keys), keyring)
    }

    /// The same node's keys with another keyring (partners enrolled or removed while the node
    /// runs): the pairwise secrets are computed again.
    pub fn with_keyring(&self, keyring: Keyring) -> Result<Self, crate::keys::KeyError> {
        Self::build(self.own.clone(), keyring)
    }

    fn build(own: Arc<Vec<NodeKeys>>, mut keyring: Keyring) -> Result<Self, crate::keys::KeyError> {
        for keys in own.iter() {
            keyring.add(keys.public().clone())?;
        }
        let mut pairwise = HashMap::new();
        for keys in own.iter() {
            for peer in keyring.iter() {
                let shared = keys.encryption().key().diffie_hellman(&peer.encryption);
                if !shared.was_contributory() {
                    return Err(crate::keys::KeyError::Conflict(format!(
                        "the X25519 key of {} is a low-order point; refusing it",
                        peer.node
                    )));
                }
                let pair = (keys.public().encryption_kid.as_bytes().to_vec(), peer.encryption_kid.as_bytes().to_vec());
                pairwise.insert(pair, Zeroizing::new(shared.to_bytes()));
            }
        }
        Ok(Self { own, keyring: Arc::new(keyring), pairwise: Arc::new(pairwise), pin: None })
    }

    /// The same context signing and sealing with this node's oldest generation still in its
    /// window: what key announcements and receipts are signed with, so that every partner
    /// holds the key (one that has not taken the newer keys yet, too). Cheap: shares the rest.
    pub fn with_oldest_key(&self) -> Self {
        self.pinned(None)
    }

    /// The same context signing and sealing with the generation whose encryption key is
    /// `encryption_kid` (one a partner sealed to: it holds it), else as [`Self::with_oldest_key`].
    pub fn with_key_of(&self, encryption_kid: &str) -> Self {
        self.pinned(Some(encryption_kid))
    }

    fn pinned(&self, encryption_kid: Option<&str>) -> Self {
        if let Some(i) =
            encryption_kid.and_then(|kid| self.own.iter().position(|k| k.public().encryption_kid.as_str() == kid))
        {
            return Self {
                own: self.own.clone(),
                keyring: self.keyring.clone(),
                pairwise: self.pairwise.clone(),
                pin: Some(i),
            };
        }
        let now = Timestamp::now();
        // Started and not retired; none such: the newest started (`current`).
        let pin =
            self.own.iter().position(|k| k.public().started(now) && k.public().valid_until.is_none_or(|u| u > now));
        Self { own: self.own.clone(), keyring: self.keyring.clone(), pairwise: self.pairwise.clone(), pin }
    }

    /// This node's keys in force now: its newest generation that has started.
    pub fn current(&self) -> &NodeKeys {
        if let Some(k) = self.pin.and_then(|i| self.own.get(i)) {
            return k;
        }
        let now = Timestamp::now();
        self.own.iter().rev().find(|k| k.public().started(now)).unwrap_or(&self.own[0])
    }

    /// Every generation of this node's keys, oldest first.
    pub fn generations(&self) -> &[NodeKeys] {
        &self.own
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        self.own[0].node()
    }

    /// The keyring in use.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// This node's public keys in force now.
    pub fn public(&self) -> &crate::keys::PublicKeys {
        self.current().public()
    }

    /// An Ed25519 signature by this node over `message`, for statements that are not packets
    /// (audit checkpoints). Callers put a context string in `message` so a signature made for
    /// one purpose cannot be passed off as another (packets are signed as COSE structures,
    /// which begin differently).
    pub fn sign_detached(&self, message: &[u8]) -> [u8; 64] {
        self.current().signing().key().sign(message).to_bytes()
    }

    /// Signs a packet this node originates (COSE_Sign1, Ed25519).
    pub fn sign(&self, packet: &Packet) -> Result<SignedPacket, SealError> {
        self.sign_under(packet, None)
    }

    /// Signs `packet`, naming in the protected header the sharing policy it was checked against.
    pub fn sign_under(&self, packet: &Packet, policy: Option<Digest>) -> Result<SignedPacket, SealError> {
        packet.check()?;
        self.sign_payload(packet, packet.to_cbor(), policy)
    }

    /// [`SealContext::sign_under`] for a packet already checked, with its CBOR face encoded once
    /// (the send path).
    pub fn sign_checked(&self, packet: &Checked, policy: Option<Digest>) -> Result<SignedPacket, SealError> {
        self.sign_payload(packet.packet(), packet.cbor().to_vec(), policy)
    }

    /// Signs `payload`, the CBOR face of `packet` (checked by the caller).
    fn sign_payload(
        &self,
        packet: &Packet,
        payload: Vec<u8>,
        policy: Option<Digest>,
    ) -> Result<SignedPacket, SealError> {
        let keys = self.current();
        let me = keys.node();
        if &packet.envelope.originator.node != me {
            return Err(SealError::NotOriginator { originator: packet.envelope.originator.node, me: *me });
        }
        let kid = keys.public().signing_kid.clone();
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::Ed25519)
            .key_id(kid.as_bytes().to_vec())
            .content_type(CONTENT_TYPE_PACKET.into())
            .text_value(LABEL_PACKET_ID.into(), Value::Text(packet.envelope.id.to_string()))
            .text_value(LABEL_ORIGINATOR.into(), Value::Text(me.to_string()))
            .text_value(LABEL_TYPE.into(), Value::Text(packet.packet_type().as_str().into()));
        let protected = match policy {
            Some(d) => protected.text_value(LABEL_POLICY.into(), Value::Bytes(d.0.to_vec())),
            None => protected,
        }
        .build();
        let sk = keys.signing().key();
        let bytes = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| sk.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .map_err(|e| SealError::Encoding(e.to_string()))?;
        Ok(SignedPacket { bytes, packet: packet.clone(), signer: kid, policy })
    }

    /// Encrypts a signed packet for one of its recipients (COSE_Encrypt, ECDH-SS + HKDF-256,
    /// ChaCha20/Poly1305).
    pub fn encrypt_for(
        &self,
        signed: &SignedPacket,
        recipient: &NodeId,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Sealed, SealError> {
        let env = &signed.packet.envelope;
        if !env.recipients.contains(recipient) {
            return Err(SealError::NotARecipient(*recipient));
        }
        let peer = self.keyring.node(recipient).ok_or(SealError::UnknownRecipient(*recipient))?;
        let mine = self.current().public();
        let pair = (mine.encryption_kid.as_bytes().to_vec(), peer.encryption_kid.as_bytes().to_vec());
        let shared = self.pairwise.get(&pair).ok_or(SealError::WeakKey(*recipient))?;
        let route = RouteHeader {
            sender: *self.node(),
            recipient: *recipient,
            packet_id: env.id,
            priority: env.priority,
            expires: env.expires,
        };
        let route_value = Value::serialized(&route).map_err(|e| SealError::Encoding(e.to_string()))?;

        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut iv = [0u8; IV_LEN];
        rng.fill_bytes(&mut iv);

        let recipient_protected = HeaderBuilder::new().algorithm(iana::Algorithm::ECDH_SS_HKDF_256).build();
        let cek =
            derive_cek(shared, &salt, &ProtectedHeader { original_data: None, header: recipient_protected.clone() })
                .map_err(|e| SealError::Encoding(e.to_string()))?;
        let cose_recipient = CoseRecipientBuilder::new()
            .protected(recipient_protected)
            .unprotected(
                HeaderBuilder::new()
                    .key_id(peer.encryption_kid.as_bytes().to_vec())
                    .value(HEADER_STATIC_KEY_ID, Value::Bytes(mine.encryption_kid.as_bytes().to_vec()))
                    .value(HEADER_SALT, Value::Bytes(salt.to_vec()))
                    .build(),
            )
            .ciphertext(Vec::new())
            .build();
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ChaCha20Poly1305)
            .content_type(CONTENT_TYPE_SIGN1.into())
            .text_value(LABEL_ROUTE.into(), route_value)
            .build();
        let bytes = CoseEncryptBuilder::new()
            .protected(protected)
            .unprotected(HeaderBuilder::new().iv(iv.to_vec()).build())
            .add_recipient(cose_recipient)
            .try_create_ciphertext(&signed.bytes, b"", |pt, aad| {
                aead::seal(&cek, &iv, pt, aad).ok_or_else(|| SealError::Encoding("AEAD".into()))
            })?
            .build()
            .to_tagged_vec()
            .map_err(|e| SealError::Encoding(e.to_string()))?;
        Ok(Sealed { route, bytes })
    }

    /// Signs once and encrypts one copy per recipient.
    pub fn seal(&self, packet: &Packet, rng: &mut (impl RngCore + CryptoRng)) -> Result<Vec<Sealed>, SealError> {
        let signed = self.sign(packet)?;
        packet.envelope.recipients.iter().map(|r| self.encrypt_for(&signed, r, rng)).collect()
    }

    /// Opens a sealed packet addressed to this node, running every check in the module doc but
    /// the keys' windows ([`SealContext::check_windows`]).
    pub fn open_any_window(&self, bytes: &[u8], now: Timestamp) -> Result<Opened, OpenError> {
        let enc = parse_encrypt(bytes)?;
        let route = route_of(&enc)?;
        let me = self.node();
        if &route.recipient != me {
            return Err(OpenError::NotForMe { recipient: route.recipient, me: *me });
        }
        let [recipient] = enc.recipients.as_slice() else {
            return Err(malformed(Layer::Encrypted, format!("expected one recipient, found {}", enc.recipients.len())));
        };
        let Some(mine) = self.own.iter().find(|k| k.public().encryption_kid.as_bytes() == recipient.unprotected.key_id)
        else {
            return Err(OpenError::UnknownKey {
                kid: lossy(&recipient.unprotected.key_id),
                reason: format!("not an encryption key of this node ({})", self.public().encryption_kid),
            });
        };
        let (sender_kid, salt) = recipient_params(recipient)?;
        match self.keyring.kid(sender_kid) {
            Some((k, KeyUse::Encryption)) if k.node == route.sender => {}
            Some((k, _)) => {
                return Err(OpenError::UnknownKey {
                    kid: lossy(sender_kid),
                    reason: format!("belongs to {} and is not the encryption key of sender {}", k.node, route.sender),
                })
            }
            None => return Err(self.not_yet_or_unknown(&route.sender, lossy(sender_kid))),
        }
        let pair = (mine.public().encryption_kid.as_bytes().to_vec(), sender_kid.to_vec());
        let shared = self.pairwise.get(&pair).ok_or(OpenError::DecryptionFailed)?;
        let cek =
            derive_cek(shared, salt, &recipient.protected).map_err(|e| malformed(Layer::Encrypted, e.to_string()))?;
        let iv: [u8; IV_LEN] = enc
            .unprotected
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| malformed(Layer::Encrypted, format!("iv must be {IV_LEN} bytes")))?;
        let plaintext = enc.decrypt_ciphertext(
            b"",
            || malformed(Layer::Encrypted, "no ciphertext".into()),
            |ct, aad| aead::open(&cek, &iv, ct, aad).ok_or(OpenError::DecryptionFailed),
        )?;

        let signed = verify_signed(&self.keyring, &plaintext).map_err(|e| match e {
            OpenError::UnknownKey { kid, reason } if reason == NOT_IN_KEYRING => {
                self.not_yet_or_unknown(&route.sender, kid)
            }
            e => e,
        })?;
        let p = &signed.packet.envelope;
        if route.packet_id != p.id {
            return Err(OpenError::HeaderMismatch(format!(
                "routing header packet {} carries packet {}",
                route.packet_id, p.id
            )));
        }
        if route.sender != p.originator.node {
            return Err(OpenError::HeaderMismatch(format!(
                "sent by {} but originated by {}; onward transmission needs the originator's consent",
                route.sender, p.originator.node
            )));
        }
        if !p.recipients.contains(me) {
            return Err(OpenError::HeaderMismatch(format!("{me} is not among the packet's recipients")));
        }
        if route.priority != p.priority || route.expires != p.expires {
            return Err(OpenError::HeaderMismatch("routing priority or expiry differs from the signed packet".into()));
        }
        check_times(&signed.packet, now)?;
        Ok(Opened {
            route,
            signed,
            sealed_digest: Digest::of(bytes),
            sender_key: lossy(sender_kid),
            recipient_key: mine.public().encryption_kid.to_string(),
        })
    }

    /// [`SealContext::open_any_window`], then [`SealContext::check_windows`]: a packet opened
    /// on live traffic, its keys within their windows.
    pub fn open(&self, bytes: &[u8], now: Timestamp) -> Result<Opened, OpenError> {
        let opened = self.open_any_window(bytes, now)?;
        self.check_windows(&opened, now)?;
        Ok(opened)
    }

    /// A kid not in the keyring: one in the namespace of a sender this node holds keys of is a
    /// key not known here yet (it rotated; not taken here yet), anything else is unknown.
    fn not_yet_or_unknown(&self, sender: &NodeId, kid: String) -> OpenError {
        if self.keyring.awaited(&kid).as_ref() == Some(sender) {
            OpenError::KeyNotYetKnown { kid, reason: "not in the keyring (rotated, not taken here yet?)".into() }
        } else {
            OpenError::UnknownKey { kid, reason: NOT_IN_KEYRING.into() }
        }
    }

    /// Whether the keys that signed and sealed `opened` are within their windows at `now` (a
    /// key not started yet: [`OpenError::KeyNotYetKnown`]; retired: [`OpenError::UnknownKey`]).
    /// The receiver checks this once it knows a copy is new: a copy received before, sent again
    /// byte for byte after its key was retired, is receipted as the first time.
    pub fn check_windows(&self, opened: &Opened, now: Timestamp) -> Result<(), OpenError> {
        for kid in [opened.signed.signer.as_str(), opened.sender_key.as_str()] {
            if let Some((k, _)) = self.keyring.kid(kid.as_bytes()) {
                if let Err(reason) = k.in_window(now) {
                    return Err(if k.valid_from.is_some_and(|f| f > now) {
                        OpenError::KeyNotYetKnown { kid: kid.to_owned(), reason }
                    } else {
                        OpenError::UnknownKey { kid: kid.to_owned(), reason }
                    });
                }
            }
        }
        Ok(())
    }
}

/// The reason [`verify_signed`] gives for a kid it does not hold.
const NOT_IN_KEYRING: &str = "not in the keyring";

/// How far ahead of this node's clock a packet's `created` may lie. Partner nodes keep their
/// clocks with NTP, within seconds of each other; five minutes leaves room for a badly kept one.
/// Further ahead is refused: a sender must not date its packets into the future (a request's
/// answer deadline, and every "when" in the audit trail, would follow).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The checks of a packet's times against the clock at `now`: not expired, and not created
/// more than [`MAX_CLOCK_SKEW_SECS`] ahead. [`SealContext::open`] runs them on every packet;
/// onward transmission runs them on the originals and consents a forward carries (which
/// [`verify_signed`], the check of evidence that outlives packets, does not).
pub fn check_times(p: &Packet, now: Timestamp) -> Result<(), OpenError> {
    let e = &p.envelope;
    if now >= e.expires {
        return Err(OpenError::Expired { expires: e.expires, now });
    }
    if e.created.unix() > now.unix().saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(OpenError::CreatedInFuture { created: e.created, now });
    }
    Ok(())
}

/// Reads the routing header of a sealed packet without decrypting it (what a relay does). The
/// header is only authenticated once the recipient decrypts.
pub fn peek_route(bytes: &[u8]) -> Result<RouteHeader, OpenError> {
    route_of(&parse_encrypt(bytes)?)
}

/// Verifies a COSE_Sign1 signed packet against the keyring: exact CBOR, Ed25519 (-19) only, kid
/// known and a signing key, `verify_strict` over the exact bytes, payload a valid packet, headers
/// agreeing with it, signer the originator. Expiry is not checked: evidence outlives packets.
pub fn verify_signed(keyring: &Keyring, bytes: &[u8]) -> Result<SignedPacket, OpenError> {
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(OpenError::TooLarge { len: bytes.len(), limit: MAX_SEALED_BYTES });
    }
    strict(Layer::Signed, bytes, &[TAG_SIGN1])?;
    let s1 = CoseSign1::from_tagged_slice(bytes).map_err(|e| cose_error(Layer::Signed, e))?;
    strict_protected(Layer::Signed, &s1.protected, &[])?;
    critical(Layer::Signed, &s1.protected.header, &s1.unprotected, SIGN1_PROCESSED)?;
    let h = &s1.protected.header;
    if h.alg != Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::Ed25519)) {
        return Err(OpenError::Unsupported(format!("signature algorithm {:?}; only Ed25519 (-19) is accepted", h.alg)));
    }
    let kid = h.key_id.as_slice();
    let keys = match keyring.kid(kid) {
        Some((k, KeyUse::Signing)) => k,
        Some((k, KeyUse::Encryption)) => {
            return Err(OpenError::UnknownKey {
                kid: lossy(kid),
                reason: format!("is an encryption key of {}, not a signing key", k.node),
            })
        }
        None => return Err(OpenError::UnknownKey { kid: lossy(kid), reason: NOT_IN_KEYRING.into() }),
    };
    let Some(payload) = s1.payload.as_deref() else {
        return Err(malformed(Layer::Signed, "detached payload".into()));
    };
    let signer = keys.signing_kid.clone();
    s1.verify_signature(b"", |sig, tbs| {
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| ())?;
        keys.signing.verify_strict(tbs, &sig).map_err(|_| ())
    })
    .map_err(|()| OpenError::SignatureInvalid { kid: signer.clone() })?;

    let packet = Packet::from_cbor(payload)?;
    let e = &packet.envelope;
    let text = |label: &str| {
        h.rest.iter().find_map(|(l, v)| match (l, v) {
            (Label::Text(t), Value::Text(s)) if t == label => Some(s.as_str()),
            _ => None,
        })
    };
    if text(LABEL_PACKET_ID) != Some(e.id.to_string().as_str())
        || text(LABEL_ORIGINATOR) != Some(e.originator.node.as_str())
        || text(LABEL_TYPE) != Some(packet.packet_type().as_str())
    {
        return Err(OpenError::HeaderMismatch(
            "protected header id, originator or type differs from the packet".into(),
        ));
    }
    if keys.node != e.originator.node {
        return Err(OpenError::HeaderMismatch(format!(
            "signed with a key of {} but originated by {}",
            keys.node, e.originator.node
        )));
    }
    let policy = match h.rest.iter().find(|(l, _)| *l == Label::Text(LABEL_POLICY.into())) {
        None => None,
        Some((_, Value::Bytes(b))) => Some(Digest(
            b.as_slice().try_into().map_err(|_| malformed(Layer::Signed, "policy hash must be 32 bytes".into()))?,
        )),
        Some(_) => return Err(malformed(Layer::Signed, "policy hash must be a byte string".into())),
    };
    Ok(SignedPacket { bytes: bytes.to_vec(), packet, signer, policy })
}

fn parse_encrypt(bytes: &[u8]) -> Result<CoseEncrypt, OpenError> {
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(OpenError::TooLarge { len: bytes.len(), limit: MAX_SEALED_BYTES });
    }
    strict(Layer::Encrypted, bytes, &[TAG_ENCRYPT])?;
    let enc = CoseEncrypt::from_tagged_slice(bytes).map_err(|e| cose_error(Layer::Encrypted, e))?;
    // The routing header carries its expiry as an epoch time (tag 1).
    strict_protected(Layer::Encrypted, &enc.protected, &[crate::encoding::TAG_EPOCH_TIME])?;
    critical(Layer::Encrypted, &enc.protected.header, &enc.unprotected, ENCRYPT_PROCESSED)?;
    for r in &enc.recipients {
        strict_protected(Layer::Encrypted, &r.protected, &[])?;
        critical(Layer::Encrypted, &r.protected.header, &r.unprotected, RECIPIENT_PROCESSED)?;
    }
    if enc.protected.header.alg != Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ChaCha20Poly1305)) {
        return Err(OpenError::Unsupported(format!(
            "content encryption {:?}; only ChaCha20/Poly1305 (24) is accepted",
            enc.protected.header.alg
        )));
    }
    Ok(enc)
}

fn route_of(enc: &CoseEncrypt) -> Result<RouteHeader, OpenError> {
    let value = enc
        .protected
        .header
        .rest
        .iter()
        .find_map(|(l, v)| matches!(l, Label::Text(t) if t == LABEL_ROUTE).then_some(v))
        .ok_or_else(|| malformed(Layer::Encrypted, format!("no {LABEL_ROUTE} in the protected header")))?;
    value.deserialized().map_err(|e| malformed(Layer::Encrypted, format!("{LABEL_ROUTE}: {e}")))
}

fn recipient_params(r: &CoseRecipient) -> Result<(&[u8], &[u8; SALT_LEN]), OpenError> {
    if r.protected.header.alg != Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ECDH_SS_HKDF_256)) {
        return Err(OpenError::Unsupported(format!(
            "key agreement {:?}; only ECDH-SS + HKDF-256 (-27) is accepted",
            r.protected.header.alg
        )));
    }
    if !r.recipients.is_empty() || r.ciphertext.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(malformed(Layer::Encrypted, "direct key agreement takes an empty recipient ciphertext".into()));
    }
    let param = |label: i64| {
        find(&r.unprotected, label)
            .ok_or_else(|| malformed(Layer::Encrypted, format!("recipient header {label} missing")))
    };
    let kid = param(HEADER_STATIC_KEY_ID)?;
    let salt = param(HEADER_SALT)?
        .try_into()
        .map_err(|_| malformed(Layer::Encrypted, format!("salt must be {SALT_LEN} bytes")))?;
    Ok((kid, salt))
}

fn find(h: &Header, label: i64) -> Option<&[u8]> {
    h.rest.iter().find_map(|(l, v)| match (l, v) {
        (Label::Int(i), Value::Bytes(b)) if *i == label => Some(b.as_slice()),
        _ => None,
    })
}

/// The content key: HKDF-SHA-256(salt, Z, COSE_KDF_Context) as RFC 9053 §5.2 and §6.3 define it
/// for direct key agreement (AlgorithmID = the content algorithm, keyDataLength 256, the
/// recipient's protected header in SuppPubInfo).
fn derive_cek(
    shared: &[u8; 32],
    salt: &[u8; SALT_LEN],
    recipient_protected: &ProtectedHeader,
) -> Result<Zeroizing<[u8; 32]>, CoseError> {
    let info = CoseKdfContextBuilder::new()
        .algorithm(iana::Algorithm::ChaCha20Poly1305)
        .supp_pub_info(SuppPubInfo { key_data_length: 256, protected: recipient_protected.clone(), other: None })
        .build()
        .to_vec()?;
    let mut cek = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), shared).expand(&info, &mut cek[..]).map_err(|_| CoseError::EncodeFailed)?;
    Ok(cek)
}

/// CBOR tag of a COSE_Sign1 (RFC 9052).
const TAG_SIGN1: u64 = 18;
/// CBOR tag of a COSE_Encrypt (RFC 9052).
const TAG_ENCRYPT: u64 = 96;

/// The header parameters each layer processes; a `crit` naming any other is refused.
const SIGN1_PROCESSED: &[Processed] = &[
    Processed::Int(iana::HeaderParameter::Alg),
    Processed::Int(iana::HeaderParameter::Kid),
    Processed::Int(iana::HeaderParameter::ContentType),
    Processed::Text(LABEL_PACKET_ID),
    Processed::Text(LABEL_ORIGINATOR),
    Processed::Text(LABEL_TYPE),
    Processed::Text(LABEL_POLICY),
];
const ENCRYPT_PROCESSED: &[Processed] = &[
    Processed::Int(iana::HeaderParameter::Alg),
    Processed::Int(iana::HeaderParameter::ContentType),
    Processed::Text(LABEL_ROUTE),
];
const RECIPIENT_PROCESSED: &[Processed] = &[Processed::Int(iana::HeaderParameter::Alg)];

/// A header parameter label this node processes.
enum Processed {
    Int(iana::HeaderParameter),
    Text(&'static str),
}

/// RFC 9052 §3.1: every label in `crit` must be one the recipient processes, and `crit` itself
/// belongs in the protected header.
fn critical(layer: Layer, protected: &Header, unprotected: &Header, processed: &[Processed]) -> Result<(), OpenError> {
    if let Some(label) = unprotected.crit.first() {
        return Err(OpenError::UnknownCritical { layer, label: format!("{label:?} (crit in the unprotected header)") });
    }
    for label in &protected.crit {
        let known = processed.iter().any(|p| match (p, label) {
            (Processed::Int(a), RegisteredLabelWithPrivate::Assigned(b)) => a == b,
            (Processed::Text(a), RegisteredLabelWithPrivate::Text(b)) => a == b,
            _ => false,
        });
        if !known {
            return Err(OpenError::UnknownCritical { layer, label: format!("{label:?}") });
        }
    }
    Ok(())
}

/// The strict CBOR check ([`crate::encoding::check_strict`]) of one COSE layer.
fn strict(layer: Layer, bytes: &[u8], tags: &[u64]) -> Result<(), OpenError> {
    crate::encoding::check_strict(bytes, tags).map_err(|error| match error {
        CborError::TrailingBytes(_) => OpenError::TrailingBytes(layer),
        CborError::Truncated => malformed(layer, "truncated CBOR".into()),
        CborError::TooDeep => malformed(layer, "CBOR nested too deeply".into()),
        e if e.strict_code().is_some() => OpenError::NotStrict { layer, error: e },
        e => malformed(layer, e.to_string()),
    })
}

/// The strict check of a protected header's bytes (a CBOR map inside a byte string).
fn strict_protected(layer: Layer, h: &ProtectedHeader, tags: &[u64]) -> Result<(), OpenError> {
    match h.original_data.as_deref() {
        Some(b) if !b.is_empty() => strict(layer, b, tags),
        _ => Ok(()),
    }
}

fn cose_error(layer: Layer, e: CoseError) -> OpenError {
    match e {
        CoseError::ExtraneousData => OpenError::TrailingBytes(layer),
        CoseError::DecodeFailed(ciborium::de::Error::RecursionLimitExceeded) => {
            malformed(layer, "CBOR nested too deeply".into())
        }
        CoseError::DecodeFailed(ciborium::de::Error::Io(_)) => malformed(layer, "truncated CBOR".into()),
        other => malformed(layer, other.to_string()),
    }
}

fn malformed(layer: Layer, reason: String) -> OpenError {
    OpenError::Malformed { layer, reason }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(80).collect()
}

/// ChaCha20-Poly1305 (RFC 8439), through aws-lc-rs: the same provider as TLS, assembly-optimised,
/// and not generic code compiled into this crate (which is what made large packets slow in
/// unoptimised builds).
pub mod aead {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    /// Tag length in bytes.
    pub const TAG_LEN: usize = 16;

    fn key(k: &[u8; 32]) -> Option<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, k).ok().map(LessSafeKey::new)
    }

    /// Encrypts `plaintext`; returns ciphertext with the tag appended.
    pub fn seal(k: &[u8; 32], iv: &[u8; 12], plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        key(k)?.seal_in_place_append_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut out).ok()?;
        Some(out)
    }

    /// Decrypts and authenticates `ciphertext` (with its tag); `None` if it does not authenticate.
    pub fn open(k: &[u8; 32], iv: &[u8; 12], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let mut buf = ciphertext.to_vec();
        let len = key(k)?.open_in_place(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut buf).ok()?.len();
        buf.truncate(len);
        Some(buf)
    }
}
