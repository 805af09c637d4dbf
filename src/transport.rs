//! QUIC with mutual TLS between nodes: configuration and peer identity.
//!
//! - TLS 1.3 only, ALPN `liaison/1`, one crypto provider (aws-lc-rs). The key exchange is the
//!   post-quantum hybrid X25519MLKEM768 and nothing else by default ([`KeyExchange`]): traffic
//!   recorded today stays safe from a future quantum computer, which matters for intelligence
//!   with a long shelf life. (aws-lc-rs's own default list puts X25519 first and the hybrid
//!   last unless rustls is built with `prefer-post-quantum`: two nodes would have agreed on
//!   plain X25519. The list is set here instead, explicitly.)
//! - Both sides present certificates chaining to the federation CA, checked against the CRLs.
//! - A CA-valid chain is not an identity: the client checks the server's certificate names the
//!   node it meant to reach (rustls server-name check on `<node>.node.liaison`), and the server
//!   maps the client's certificate to exactly one enrolled partner ([`identify_peer`]), already
//!   during the handshake; everything else is refused.
//! - A refused client learns nothing: not whether its certificate passed the CA check, not the
//!   server's clock (rustls would put both in the close reason). It gets one generic refusal;
//!   the reason goes to the node ([`OnRefusal`]), which logs it within its budget for
//!   unauthenticated events ([`crate::limits::log_refusal`]).
//! - Per connection, the peer may open three bidirectional streams (the lanes) and no
//!   unidirectional one; it may not open any on a connection this node dialled.
//! - 0-RTT stays off (replayable); nothing that needs a receipt uses datagrams.
//!
//! CRLs are fixed when a config is built: on revocation the node builds new configs, swaps them in
//! (`Endpoint::set_server_config`) and closes the revoked peer's connections itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DistinguishedName, RootCertStore};

use crate::ids::NodeId;
use crate::pki::node_dns_name;

/// The ALPN protocol id of liaison node-to-node traffic.
pub const ALPN: &[u8] = b"liaison/1";

/// Why a transport could not be set up, or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A PEM file could not be read or parsed.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file or item.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The peer presented no certificate.
    #[error("peer presented no client certificate")]
    NoCertificate,
    /// The peer's certificate names no enrolled partner, or several.
    #[error("peer certificate {0}")]
    NotEnrolled(String),
    /// The TLS private key file is readable by group or others.
    #[error("{path}: permissions {mode:o} are too open; the TLS private key file must be 0600 (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
}

/// The PEM material a node needs: the federation CA, CRLs, its certificate chain and key.
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    /// The CA certificates, as read (for [`TlsMaterial::expiries`]).
    cas: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("chain", &self.chain.len()).field("crls", &self.crls.len()).finish()
    }
}

impl TlsMaterial {
    /// From PEM text: the CA certificate(s), CRLs, this node's chain (leaf first) and key.
    pub fn from_pem(ca: &str, crls: &[&str], chain: &str, key: &str) -> Result<Self, TransportError> {
        let pem = |what: &str, e: rustls::pki_types::pem::Error| TransportError::Pem {
            what: what.into(),
            reason: e.to_string(),
        };
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let c = c.map_err(|e| pem("CA certificate", e))?;
            roots.add(c.clone()).map_err(|e| TransportError::Tls(e.to_string()))?;
            cas.push(c);
        }
        if roots.is_empty() {
            return Err(TransportError::Pem { what: "CA certificate".into(), reason: "no certificate found".into() });
        }
        // Every CRL of every file (a file may hold several: a root's and an intermediate's).
        let mut all = Vec::new();
        for text in crls {
            let before = all.len();
            for c in CertificateRevocationListDer::pem_slice_iter(text.as_bytes()) {
                all.push(c.map_err(|e| pem("CRL", e))?);
            }
            if all.len() == before {
                return Err(TransportError::Pem { what: "CRL".into(), reason: "no CRL found".into() });
            }
        }
        let crls = all;
        let chain: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem("node certificate", e))?;
        if chain.is_empty() {
            return Err(TransportError::Pem { what: "node certificate".into(), reason: "no certificate found".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| pem("node key", e))?;
        Ok(Self { roots: Arc::new(roots), cas, crls, chain, key })
    }

    /// This node's certificate (the leaf), DER.
    pub fn certificate_der(&self) -> Option<&[u8]> {
        self.chain.first().map(|c| c.as_ref())
    }

    /// Checks a certificate a partner announced (a renewal to come): that it is from a CA this
    /// node trusts, names `node`, and has not expired at `now`. What it says, or why not.
    pub fn vouch_for(
        &self,
        der: &[u8],
        node: &NodeId,
        now: crate::timestamp::Timestamp,
    ) -> Result<crate::pki::inspect::CertInfo, String> {
        use crate::pki::inspect::Certificate;
        let c = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let cas: Vec<Certificate> = self.cas.iter().filter_map(|c| Certificate::from_der(c).ok()).collect();
        if !cas.iter().any(|ca| c.signed_by(ca)) {
            return Err("not from a CA this node trusts".into());
        }
        if !c.info.nodes().contains(node) {
            return Err(format!("does not name {node}"));
        }
        if c.info.not_after < now {
            return Err(format!("expired at {}", c.info.not_after));
        }
        Ok(c.info)
    }

    /// When each piece of this material stops being usable: the node's certificate
    /// (`certificate`), each CA certificate (`ca`), each CRL's next update (`crl`). What does
    /// not parse is left out (the self-check says so).
    pub fn expiries(&self) -> Vec<(&'static str, String, crate::timestamp::Timestamp)> {
        use crate::pki::inspect::{Certificate, CrlInfo};
        let mut out = Vec::new();
        if let Some(c) = self.chain.first().and_then(|c| Certificate::from_der(c).ok()) {
            out.push(("certificate", c.info.subject, c.info.not_after));
        }
        for c in self.cas.iter().filter_map(|c| Certificate::from_der(c).ok()) {
            out.push(("ca", c.info.subject, c.info.not_after));
        }
        for crl in &self.crls {
            if let Ok(c) = CrlInfo::from_der(crl) {
                if let Some(next) = c.next_update {
                    out.push(("crl", format!("{} #{}", c.issuer, c.number.unwrap_or(0)), next));
                }
            }
        }
        out
    }

    /// From files. The private key file must be readable by its owner only (0600), as the node's
    /// signing and encryption keys must: it is what lets a machine speak as this node.
    pub fn load(ca: &Path, crls: &[&Path], chain: &Path, key: &Path) -> Result<Self, TransportError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| TransportError::Pem { what: p.display().to_string(), reason: e.to_string() })
        };
        let meta = std::fs::metadata(key)
            .map_err(|e| TransportError::Pem { what: key.display().to_string(), reason: e.to_string() })?;
        if let Some(mode) = crate::keys::too_open_mode(&meta) {
            return Err(TransportError::Permissions { path: key.display().to_string(), mode });
        }
        let crl_texts = crls.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
        let key_text = zeroize::Zeroizing::new(read(key)?);
        Self::from_pem(&read(ca)?, &crl_texts.iter().map(String::as_str).collect::<Vec<_>>(), &read(chain)?, &key_text)
    }
}

/// The one crypto provider of the process (certificate checks; the handshakes use
/// [`provider_for`], the same provider with the key exchange groups [`KeyExchange`] allows).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// [`provider`], offering and accepting only the key exchange groups `kx` allows, in its order.
pub fn provider_for(kx: KeyExchange) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = match kx {
        KeyExchange::PostQuantum => vec![X25519MLKEM768],
        KeyExchange::PreferPostQuantum => vec![X25519MLKEM768, X25519],
        KeyExchange::Classic => vec![X25519],
    };
    Arc::new(p)
}

/// Which TLS key exchange a node does (`[transport] key_exchange`).
///
/// Decision: the hybrid only, by default. Every liaison node does it, and a node that accepted
/// X25519 as well could be talked down to it by a peer (or an old build) that offers nothing
/// else. `prefer_post_quantum` is for a federation with a member whose TLS cannot do the hybrid
/// yet: the hybrid first, X25519 accepted. It is node-wide: the server side of QUIC cannot
/// know which partner dials before the handshake that picks the group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyExchange {
    /// X25519MLKEM768 only (the default).
    #[default]
    PostQuantum,
    /// X25519MLKEM768, or X25519 with a peer that cannot do it.
    PreferPostQuantum,
    /// X25519 only: what an old peer does. Not selectable in a configuration; it exists so
    /// that tests can be that peer.
    #[serde(skip)]
    Classic,
}

impl KeyExchange {
    /// The group or groups a handshake in this mode can end with, for people and metrics.
    pub fn describe(self) -> &'static str {
        self.group().unwrap_or("X25519MLKEM768 or X25519")
    }

    /// The group a handshake in this mode ends with, if only one is possible.
    pub fn group(self) -> Option<&'static str> {
        match self {
            Self::PostQuantum => Some("X25519MLKEM768"),
            Self::PreferPostQuantum => None,
            Self::Classic => Some("X25519"),
        }
    }
}

/// How a node's QUIC and TLS are set (`[transport]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// How QUIC paces sending under loss.
    #[serde(default)]
    pub congestion: Congestion,
    /// Which TLS key exchange.
    #[serde(default)]
    pub key_exchange: KeyExchange,
}

/// Bytes a peer may have in flight on one stream before this node reads them (QUIC flow
/// control); with three streams per connection, what one connection can make QUIC buffer.
const STREAM_WINDOW: u32 = 1_250_000;

/// How a connection paces what it sends when datagrams are lost.
///
/// Measured through the project's fault proxy (`cargo bench --bench node -- --lossy`, 1,000
/// packets of 1 KiB, 100 ms each way, 2026-11-28): Cubic 529 / 357 / 7 packets/s clean / at 5 %
/// / at 20 % loss, BBR 707 / 366 / 187. Cubic reads every loss as congestion and, at 20 %,
/// sits at its minimum window; BBR paces by the measured bandwidth and round trip. On loopback
/// both gave the same throughput and FLASH latency. quinn labels its BBR experimental, so
/// Cubic stays one setting away (`[transport] congestion = "cubic"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    /// quinn's BBR (the default).
    #[default]
    Bbr,
    /// quinn's Cubic (its own default).
    Cubic,
}

/// `streams`: the bidirectional streams the peer may open (the lanes on a connection it
/// dialled; none on a connection this node dialled).
fn transport_config(streams: u32, congestion: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)))); // ms
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(STREAM_WINDOW * crate::limits::STREAMS_PER_CONNECTION));
    match congestion {
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
        }
    }
    Arc::new(t)
}

/// Told why a client certificate was refused (the client is not): the node logs it.
pub type OnRefusal = Arc<dyn Fn(&str) + Send + Sync>;

/// The server side: requires a client certificate from the federation CA, not revoked, that
/// names exactly one of `enrolled` (when `enrolled` is empty, the identity is left to
/// [`identify_peer`]). A refused client gets [`REFUSED`]; `on_refusal` gets the reason.
pub fn server_config(
    m: &TlsMaterial,
    enrolled: &[NodeId],
    on_refusal: OnRefusal,
    options: Options,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls_err = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
    let inner = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider())
        .with_crls(m.crls.clone())
        .build()
        .map_err(|e| tls_err(&e))?;
    let verifier = Arc::new(QuietVerifier { inner, enrolled: enrolled.to_vec(), on_refusal });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider_for(options.key_exchange))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| tls_err(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport_config(crate::limits::STREAMS_PER_CONNECTION, options.congestion));
    Ok(cfg)
}

/// The client side: presents this node's certificate, verifies the server's against the CA and
/// CRLs; the server name checked is the node being dialled ([`server_name`]).
pub fn client_config(m: &TlsMaterial, options: Options) -> Result<quinn::ClientConfig, TransportError> {
    client_config_with(m, true, options)
}

/// A client that presents no certificate (only for tests of the refusal).
pub fn client_config_without_certificate(m: &TlsMaterial) -> Result<quinn::ClientConfig, TransportError> {
    client_config_with(m, false, Options::default())
}

fn client_config_with(
    m: &TlsMaterial,
    with_cert: bool,
    options: Options,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls_err = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider())
        .with_crls(m.crls.clone())
        .build()
        .map_err(|e| tls_err(&e))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider_for(options.key_exchange))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_webpki_verifier(verifier);
    let mut tls = if with_cert {
        builder.with_client_auth_cert(m.chain.clone(), m.key.clone_key()).map_err(|e| tls_err(&e))?
    } else {
        builder.with_no_client_auth()
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport_config(0, options.congestion));
    Ok(cfg)
}

/// The federation's client-certificate check, plus the identity check, that tells a refused
/// client nothing: the reason is logged here, the client gets one generic error.
struct QuietVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    enrolled: Vec<NodeId>,
    on_refusal: OnRefusal,
}

impl std::fmt::Debug for QuietVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuietVerifier").field("enrolled", &self.enrolled).finish()
    }
}

/// What a refused client is told.
pub const REFUSED: rustls::Error = rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);

/// Why a client certificate was refused, for this node's log: the verifier's reason in words,
/// and the certificate's subject, serial and issuer (which partner, which certificate).
fn refusal_in_words(reason: &str, cert: &CertificateDer<'_>) -> String {
    let r = reason.to_ascii_lowercase();
    let words = if r.contains("badsignature") || r.contains("unknownissuer") {
        "not issued by the federation CA (another CA, or a forged certificate)".to_owned()
    } else if r.contains("revoked") {
        "revoked (in this node's CRL)".to_owned()
    } else if r.contains("not valid yet") || r.contains("notvalidyet") {
        "not valid yet (a clock is wrong?)".to_owned()
    } else if r.contains("expired") {
        "expired".to_owned()
    } else {
        reason.to_owned()
    };
    let words = if words == reason { words } else { format!("{words} ({reason})") };
    // What the certificate says is the peer's own text, unauthenticated: made printable and
    // cut short before it goes into a log line.
    let p = |s: &str| crate::node::links::printable(s, 80);
    match crate::pki::inspect::Certificate::from_der(cert) {
        Ok(c) => {
            let names: Vec<String> = c.info.dns_names.iter().take(4).map(|n| p(n)).collect();
            format!(
                "{words}: certificate of {} (names {}), serial {}, issuer {}",
                p(&c.info.subject),
                if names.is_empty() { "nothing".to_owned() } else { names.join(", ") },
                p(&c.info.serial),
                p(&c.info.issuer)
            )
        }
        Err(_) => format!("{words}: a certificate that does not parse"),
    }
}

impl ClientCertVerifier for QuietVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let checked = self.inner.verify_client_cert(end_entity, intermediates, now).map_err(|e| e.to_string());
        let checked = checked.and_then(|ok| {
            if self.enrolled.is_empty() {
                return Ok(ok);
            }
            identify_certificate(end_entity, &self.enrolled).map(|_| ok).map_err(|e| e.to_string())
        });
        checked.map_err(|reason| {
            (self.on_refusal)(&refusal_in_words(&reason, end_entity));
            REFUSED
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS server name under which `node` is dialled.
pub fn server_name(node: &NodeId) -> String {
    node_dns_name(node)
}

/// Maps an established connection's client certificate to exactly one enrolled partner. The
/// chain, expiry and revocation were already checked by the TLS verifier; this checks the
/// identity.
pub fn identify_peer<'a>(
    conn: &quinn::Connection,
    enrolled: impl IntoIterator<Item = &'a NodeId>,
) -> Result<NodeId, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TransportError::NoCertificate)?;
    let leaf = certs.first().ok_or(TransportError::NoCertificate)?;
    identify_certificate(leaf, enrolled)
}

/// [`identify_peer`] on a leaf certificate.
pub fn identify_certificate<'a>(
    leaf: &CertificateDer<'_>,
    enrolled: impl IntoIterator<Item = &'a NodeId>,
) -> Result<NodeId, TransportError> {
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| TransportError::NotEnrolled(format!("cannot be parsed: {e}")))?;
    let matches: Vec<&NodeId> = enrolled
        .into_iter()
        .filter(|node| {
            ServerName::try_from(node_dns_name(node))
                .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(*(*one)),
        [] => Err(TransportError::NotEnrolled("names no enrolled partner".into())),
        many => Err(TransportError::NotEnrolled(format!(
            "names several nodes ({}); a node certificate must name one",
            many.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}
