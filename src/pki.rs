//! Federation PKI material: a CA, node certificates naming their node, and CRLs.
//!
//! A node's TLS certificate carries its node id as a DNS subject alternative name,
//! `<node id in lower case>.node.liaison` (`it-dcsa.node.liaison`): rustls checks it on the client
//! side like any server name, and the server side checks the client's certificate against the
//! node id the peer must be (see `transport`). Node ids are upper case, so the mapping is exact.
//!
//! A federation will often use its members' own PKI; this module makes the demo and test material
//! (`liaison pki demo`) and is the reference for what a node certificate must contain.

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

/// Why certificate material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Writes a demo federation's TLS material into `dir` (which must not exist):
///
/// - `ca.crt`, `ca.key` (the CA; its key is here only because this is demo material), `crl.pem`;
/// - `NODE.crt`, `NODE.key` for each node;
/// - `bad/`: `expired.crt/.key` and `revoked.crt/.key` (for the first node, revoked in `crl.pem`),
///   `foreign-ca.crt` with `foreign.crt/.key` (first node's name, another CA), and
///   `not-enrolled.crt/.key` (DE-BKA, from the federation CA).
pub fn write_demo(dir: &std::path::Path, nodes: &[NodeId], days: i64) -> Result<Vec<std::path::PathBuf>, PkiError> {
    use std::path::PathBuf;
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    std::fs::create_dir(dir).map_err(io(dir))?;
    std::fs::create_dir(dir.join("bad")).map_err(io(&dir.join("bad")))?;
    let now = OffsetDateTime::now_utc();
    let (from, to) = (now - time::Duration::days(1), now + time::Duration::days(days));
    let ca = Ca::generate("liaison demo federation CA", from, to)?;
    let mut written: Vec<PathBuf> = Vec::new();
    let mut write = |name: &str, text: &str, secret: bool| -> Result<(), PkiError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
        }
        #[cfg(not(unix))]
        let _ = secret;
        written.push(path);
        Ok(())
    };
    write("ca.crt", ca.cert_pem(), false)?;
    write("ca.key", &ca.key_pem(), true)?;
    for node in nodes {
        let c = ca.issue(node, from, to)?;
        write(&format!("{node}.crt"), &c.cert_pem, false)?;
        write(&format!("{node}.key"), &c.key_pem, true)?;
    }
    if let Some(first) = nodes.first() {
        let expired = ca.issue(first, now - time::Duration::days(30), now - time::Duration::days(1))?;
        write("bad/expired.crt", &expired.cert_pem, false)?;
        write("bad/expired.key", &expired.key_pem, true)?;
        let revoked = ca.issue(first, from, to)?;
        write("bad/revoked.crt", &revoked.cert_pem, false)?;
        write("bad/revoked.key", &revoked.key_pem, true)?;
        write("crl.pem", &ca.crl(std::slice::from_ref(&revoked.serial), from, to, 1)?, false)?;
        let foreign_ca = Ca::generate("not the federation CA", from, to)?;
        let foreign = foreign_ca.issue(first, from, to)?;
        write("bad/foreign-ca.crt", foreign_ca.cert_pem(), false)?;
        write("bad/foreign.crt", &foreign.cert_pem, false)?;
        write("bad/foreign.key", &foreign.key_pem, true)?;
        let bka: NodeId = "DE-BKA".parse().map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificate))?;
        let stranger = ca.issue(&bka, from, to)?;
        write("bad/not-enrolled.crt", &stranger.cert_pem, false)?;
        write("bad/not-enrolled.key", &stranger.key_pem, true)?;
    }
    Ok(written)
}

/// A federation CA (demo and tests).
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
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
        Ok(Self { params, key, cert_pem })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Secret.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
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
        let serial = SerialNumber::from_slice(&serial);
        params.serial_number = Some(serial.clone());
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()), serial })
    }

    /// A CRL revoking `serials`, valid from `this_update` for `validity`.
    pub fn crl(
        &self,
        serials: &[SerialNumber],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: s.clone(),
                    revocation_time: this_update,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        Ok(params.signed_by(&issuer)?.pem()?)
    }
}
