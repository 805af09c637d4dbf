//! Federation PKI material: a CA, node certificates naming their node, and CRLs.
//!
//! A node's TLS certificate carries its node id as a DNS subject alternative name,
//! `<node id in lower case>.node.liaison` (`it-dcsa.node.liaison`): rustls checks it on the client
//! side like any server name, and the server side checks the client's certificate against the
//! node id the peer must be (see `transport`). Node ids are upper case, so the mapping is exact.
//!
//! [`Authority`] is a federation CA kept in a directory (`liaison pki init-ca`, `issue`,
//! `sign-csr`, `revoke`, `crl`, `list`); [`inspect`] reads certificates and CRLs back (the
//! node's self-check, `pki list`). A federation may also use its members' own PKI: this module
//! is the reference for what a node certificate must contain. `liaison pki demo` makes the demo
//! and test material with the same code.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::ids::NodeId;

/// The DNS suffix of node names in certificates.
pub const NODE_NAME_SUFFIX: &str = "node.liaison";

/// The DNS name a node's certificate must carry.
pub fn node_dns_name(node: &NodeId) -> String {
    format!("{}.{NODE_NAME_SUFFIX}", node.as_str().to_ascii_lowercase())
}

pub mod authority;
pub mod inspect;

pub use authority::{Authority, Issued, Reason, Revoked, State};

/// Why certificate material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Material that is not what it must be (a certificate that does not parse, a key that does
    /// not match, a request whose signature does not verify).
    #[error("{0}")]
    Invalid(String),
    /// The CA's directory or records are not usable as they are.
    #[error("{0}")]
    Authority(String),
    /// A key file could not be written (it exists, or the OS refused).
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Writes a demo federation's TLS material into `dir` (which must not exist), with the same
/// [`Authority`] as `liaison pki init-ca`, `issue`, `revoke` and `crl`:
///
/// - `ca/`: the CA's directory (records of everything below); `ca.crt`, `ca.key` (a copy of the
///   CA's key: here only because this is demo material), `crl.pem`;
/// - `NODE.crt`, `NODE.key` for each node;
/// - `bad/`: `expired.crt/.key` and `revoked.crt/.key` (for the first node, revoked in `crl.pem`),
///   `foreign-ca.crt` with `foreign.crt/.key` (first node's name, another CA), and
///   `not-enrolled.crt/.key` (DE-BKA, from the federation CA).
pub fn write_demo(dir: &std::path::Path, nodes: &[NodeId], days: i64) -> Result<Vec<std::path::PathBuf>, PkiError> {
    use crate::timestamp::Timestamp;
    use std::path::PathBuf;
    if !(1..=authority::NODE_DAYS_AT_MOST).contains(&days) {
        return Err(PkiError::Invalid(format!(
            "--days: 1 to {} for the demo, not {days}",
            authority::NODE_DAYS_AT_MOST
        )));
    }
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    std::fs::create_dir(dir).map_err(io(dir))?;
    std::fs::create_dir(dir.join("bad")).map_err(io(&dir.join("bad")))?;
    let now = Timestamp::now();
    let (from, to) = (now.plus_secs(-300), now.plus_secs(days * 86_400));
    let mut ca = Authority::init(&dir.join("ca"), "liaison demo federation CA", days, now)?;
    let mut written: Vec<PathBuf> = vec![dir.join("ca")];
    let mut write = |name: &str, text: &str, secret: bool| -> Result<(), PkiError> {
        let path = dir.join(name);
        crate::keys::write_new(&path, text.as_bytes(), if secret { 0o600 } else { 0o644 })?;
        written.push(path);
        Ok(())
    };
    write("ca.crt", ca.cert_pem(), false)?;
    write("ca.key", &ca.key_pem(), true)?;
    for node in nodes {
        let (_, c) = ca.issue_between(node, from, to, now)?;
        write(&format!("{node}.crt"), &c.cert_pem, false)?;
        write(&format!("{node}.key"), &c.key_pem, true)?;
    }
    if let Some(first) = nodes.first() {
        let (_, expired) = ca.issue_between(first, now.plus_secs(-30 * 86_400), now.plus_secs(-86_400), now)?;
        write("bad/expired.crt", &expired.cert_pem, false)?;
        write("bad/expired.key", &expired.key_pem, true)?;
        let (revoked, cert) = ca.issue_between(first, from, to, now)?;
        write("bad/revoked.crt", &cert.cert_pem, false)?;
        write("bad/revoked.key", &cert.key_pem, true)?;
        ca.revoke(&authority::Which::Serial(revoked.serial), Reason::KeyCompromise, now)?;
        write("crl.pem", &ca.crl(days, now)?, false)?;
        let foreign_ca = Ca::generate("not the federation CA", offset(from)?, offset(to)?)?;
        let foreign = foreign_ca.issue(first, offset(from)?, offset(to)?)?;
        write("bad/foreign-ca.crt", foreign_ca.cert_pem(), false)?;
        write("bad/foreign.crt", &foreign.cert_pem, false)?;
        write("bad/foreign.key", &foreign.key_pem, true)?;
        let bka: NodeId = "DE-BKA".parse().map_err(|_| PkiError::Invalid("DE-BKA: not a node id".into()))?;
        let (_, stranger) = ca.issue_between(&bka, from, to, now)?;
        write("bad/not-enrolled.crt", &stranger.cert_pem, false)?;
        write("bad/not-enrolled.key", &stranger.key_pem, true)?;
    }
    Ok(written)
}

fn offset(t: crate::timestamp::Timestamp) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t.unix()).map_err(|e| PkiError::Invalid(format!("a date: {e}")))
}

/// A node's new TLS key and a certificate request for it (PEM both), naming the node as its
/// certificate must (the CA sets the names again all the same).
pub fn request(node: &NodeId) -> Result<(Zeroizing<String>, String), PkiError> {
    let mut params = CertificateParams::new(vec![node_dns_name(node)])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.as_str());
    params.distinguished_name = dn;
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((Zeroizing::new(key.serialize_pem()), csr))
}

/// A federation CA in memory: its certificate and the key that signs with it. [`Authority`]
/// keeps one in a directory, with the record of what it issued.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate issued to a node, with its private key.
pub struct NodeCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8). Secret.
    pub key_pem: Zeroizing<String>,
    /// The serial number, for revocation.
    pub serial: SerialNumber,
}

impl Ca {
    /// A new self-signed CA named `name`, valid from `not_before` to `not_after`.
    pub fn generate(name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "liaison federation");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self { issuer: Issuer::new(params, key), cert_pem })
    }

    /// A CA from its certificate and key (PEM), checked to belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert = inspect::Certificate::from_pem(cert_pem)?;
        if !cert.info.is_ca {
            return Err(PkiError::Invalid("the CA certificate is not a CA certificate (basicConstraints)".into()));
        }
        if cert.public_key != key.public_key_raw() {
            return Err(PkiError::Invalid("the CA key does not belong to the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Secret.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// Issues a certificate for `node`, for both TLS client and server authentication.
    pub fn issue(
        &self,
        node: &NodeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, PkiError> {
        self.issue_for_names(node.as_str(), &[node_dns_name(node)], not_before, not_after)
    }

    /// Issues a certificate with any subject alternative names (tests of wrong names).
    pub fn issue_for_names(
        &self,
        common_name: &str,
        dns_names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, PkiError> {
        let (params, serial) = node_params(common_name, dns_names, not_before, not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()), serial })
    }

    /// Signs a certificate for `node` over the public key of a certificate request (PEM), whose
    /// signature is checked (the requester holds the key). Everything else the request asks for
    /// (names, key usages, extensions) is ignored: the CA sets them, as for [`Ca::issue`].
    pub fn sign_request(
        &self,
        csr_pem: &str,
        node: &NodeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, SerialNumber), PkiError> {
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                PkiError::Invalid("the certificate request's signature does not verify".into())
            }
            rcgen::Error::CouldNotParseCertificationRequest => {
                PkiError::Invalid("not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)".into())
            }
            other => PkiError::Generate(other),
        })?;
        // The key types nodes make (`pki csr`, `pki issue`): ECDSA P-256 (an uncompressed
        // point) or Ed25519. rcgen names the algorithm by the request's signature, so the key's
        // size is checked too (ecdsa-with-SHA256 would also cover a P-384 key).
        let raw = rcgen::PublicKeyData::der_bytes(&request.public_key);
        let alg = request.public_key.algorithm();
        let p256 = *alg == rcgen::PKCS_ECDSA_P256_SHA256 && raw.len() == 65 && raw[0] == 4;
        let ed25519 = *alg == rcgen::PKCS_ED25519 && raw.len() == 32;
        if !(p256 || ed25519) {
            return Err(PkiError::Invalid(
                "the certificate request's key is not ECDSA P-256 or Ed25519 (make it with `liaison pki csr`)".into(),
            ));
        }
        let (params, serial) = node_params(node.as_str(), &[node_dns_name(node)], not_before, not_after)?;
        let cert = rcgen::CertificateSigningRequestParams { params, public_key: request.public_key }
            .signed_by(&self.issuer)?;
        Ok((cert.pem(), serial))
    }

    /// A CRL revoking `serials` (for key compromise, at `this_update`), signed now, valid until
    /// `next_update`.
    pub fn crl(
        &self,
        serials: &[SerialNumber],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, PkiError> {
        let revoked: Vec<_> =
            serials.iter().map(|s| (s.clone(), this_update, RevocationReason::KeyCompromise)).collect();
        self.crl_of(&revoked, this_update, next_update, number)
    }

    /// A CRL revoking each serial at its time for its reason.
    pub fn crl_of(
        &self,
        revoked: &[(SerialNumber, OffsetDateTime, RevocationReason)],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at, reason)| RevokedCertParams {
                    serial_number: serial.clone(),
                    revocation_time: *at,
                    reason_code: Some(*reason),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// A node certificate's parameters: `dns_names` as its subject alternative names, for TLS client
/// and server authentication, a random positive 127-bit serial.
fn node_params(
    common_name: &str,
    dns_names: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(CertificateParams, SerialNumber), PkiError> {
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "liaison federation");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f; // a positive INTEGER
    serial[0] |= 0x01; // and 16 bytes long: no leading zero byte to strip
    let serial = SerialNumber::from_slice(&serial);
    params.serial_number = Some(serial.clone());
    Ok((params, serial))
}
