//! Reading certificates and CRLs back: what `pki list`, the node's self-check and `peers show`
//! say about them (names, serial, validity, issuer, fingerprint), and whether one signed another.

use sha2::Digest as _;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{PkiError, NODE_NAME_SUFFIX};
use crate::ids::NodeId;
use crate::timestamp::Timestamp;

/// What a certificate says, as people read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    /// The subject's common name (a node id, for node certificates).
    pub subject: String,
    /// The issuer's common name.
    pub issuer: String,
    /// The serial number, lower-case hex without separators.
    pub serial: String,
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
    /// A CA certificate (basicConstraints cA).
    pub is_ca: bool,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
}

impl CertInfo {
    /// The nodes its DNS names name (`<node>.node.liaison`).
    pub fn nodes(&self) -> Vec<NodeId> {
        // DNS names compare without regard to case (as rustls matches them).
        let suffix = format!(".{NODE_NAME_SUFFIX}");
        self.dns_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .filter_map(|n| n.strip_suffix(&suffix).map(str::to_ascii_uppercase))
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Whether `at` is within its validity.
    pub fn valid_at(&self, at: Timestamp) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

/// A parsed certificate: what it says, its DER, and its public key (SubjectPublicKeyInfo DER).
#[derive(Debug, Clone)]
pub struct Certificate {
    /// What it says.
    pub info: CertInfo,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its public key's bits (compared with a key pair's to see they belong together).
    pub public_key: Vec<u8>,
}

impl Certificate {
    /// The first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::all_from_pem(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Invalid("no certificate in it (-----BEGIN CERTIFICATE-----)".into()))
    }

    /// Every certificate of a PEM text (other blocks are skipped).
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>, PkiError> {
        let mut out = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| PkiError::Invalid(format!("not PEM: {e}")))?;
            if block.label == "CERTIFICATE" {
                out.push(Self::from_der(&block.contents)?);
            }
        }
        Ok(out)
    }

    /// A DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, x) =
            X509Certificate::from_der(der).map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
        let dns_names = match x.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(PkiError::Invalid(format!("its subject alternative names do not parse: {e}"))),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_unix(t.timestamp()).map_err(|e| PkiError::Invalid(format!("a validity date: {e}")))
        };
        let info = CertInfo {
            subject: common_name(x.subject()),
            issuer: common_name(x.issuer()),
            serial: crate::encoding::hex(x.raw_serial()),
            dns_names,
            not_before: time(x.validity().not_before)?,
            not_after: time(x.validity().not_after)?,
            is_ca: x.is_ca(),
            sha256: crate::encoding::hex(&sha2::Sha256::digest(der)),
        };
        Ok(Self { info, der: der.to_vec(), public_key: x.public_key().subject_public_key.data.to_vec() })
    }

    /// Whether `issuer`'s key made this certificate's signature (and `issuer` is the CA it
    /// names).
    pub fn signed_by(&self, issuer: &Certificate) -> bool {
        let (Ok((_, me)), Ok((_, ca))) = (X509Certificate::from_der(&self.der), X509Certificate::from_der(&issuer.der))
        else {
            return false;
        };
        me.issuer() == ca.subject() && me.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// What a CRL says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CrlInfo {
    /// The issuer's common name.
    pub issuer: String,
    /// When it was signed.
    pub this_update: Timestamp,
    /// When the next one is due (a CRL past it is stale).
    pub next_update: Option<Timestamp>,
    /// Its number (increases with each CRL the CA signs).
    pub number: Option<u64>,
    /// The serials it revokes, lower-case hex.
    pub revoked: Vec<String>,
}

impl CrlInfo {
    /// A DER CRL (not checked against a CA).
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| PkiError::Invalid(format!("not a CRL: {e}")))?;
        Self::of(&crl)
    }

    fn of(crl: &CertificateRevocationList<'_>) -> Result<Self, PkiError> {
        let time = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_unix(t.timestamp()).map_err(|e| PkiError::Invalid(format!("a CRL date: {e}")))
        };
        Ok(CrlInfo {
            issuer: common_name(crl.issuer()),
            this_update: time(crl.last_update())?,
            next_update: crl.next_update().map(time).transpose()?,
            number: crl.crl_number().and_then(|n| u64::try_from(n).ok()),
            revoked: crl.iter_revoked_certificates().map(|r| crate::encoding::hex(r.raw_serial())).collect(),
        })
    }

    /// Every CRL of a PEM text; with `signers`, each must be signed by one of them.
    pub fn all_from_pem(pem: &str, signers: &[Certificate]) -> Result<Vec<Self>, PkiError> {
        let signers = signers
            .iter()
            .map(|c| X509Certificate::from_der(&c.der).map(|(_, x)| x))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::Invalid(format!("a CA certificate: {e}")))?;
        let mut out = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| PkiError::Invalid(format!("not PEM: {e}")))?;
            if block.label != "X509 CRL" {
                continue;
            }
            let (_, crl) = CertificateRevocationList::from_der(&block.contents)
                .map_err(|e| PkiError::Invalid(format!("not a CRL: {e}")))?;
            // Each CRL on its own: signed by one of the signers (a root's, an intermediate's).
            let signed = |ca: &X509Certificate<'_>| {
                crl.issuer() == ca.subject() && crl.verify_signature(ca.public_key()).is_ok()
            };
            if !signers.is_empty() && !signers.iter().any(signed) {
                return Err(PkiError::Invalid(format!(
                    "a CRL of {} not signed by the federation CA (nor by a CA of this node's chain)",
                    common_name(crl.issuer())
                )));
            }
            out.push(Self::of(&crl)?);
        }
        if out.is_empty() {
            return Err(PkiError::Invalid("no CRL in it (-----BEGIN X509 CRL-----)".into()));
        }
        Ok(out)
    }
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map_or_else(|| name.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use time::OffsetDateTime;

    #[test]
    fn a_node_certificate_reads_back() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("test CA", now - time::Duration::days(1), now + time::Duration::days(10)).unwrap();
        let node: NodeId = "FR-OFAST".parse().unwrap();
        let issued = ca.issue(&node, now - time::Duration::days(1), now + time::Duration::days(5)).unwrap();
        let c = Certificate::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(c.info.subject, "FR-OFAST");
        assert_eq!(c.info.issuer, "test CA");
        assert_eq!(c.info.dns_names, vec!["fr-ofast.node.liaison".to_owned()]);
        assert_eq!(c.info.nodes(), vec![node]);
        assert_eq!(c.info.serial, crate::encoding::hex(issued.serial.as_ref()));
        assert!(!c.info.is_ca);
        assert!(c.info.valid_at(Timestamp::now()));
        assert!(!c.info.valid_at(Timestamp::now().plus_secs(6 * 86_400)));
        let ca_cert = Certificate::from_pem(ca.cert_pem()).unwrap();
        assert!(ca_cert.info.is_ca);
        assert!(c.signed_by(&ca_cert));
        let other = Ca::generate("test CA", now - time::Duration::days(1), now + time::Duration::days(10)).unwrap();
        assert!(!c.signed_by(&Certificate::from_pem(other.cert_pem()).unwrap()), "same name, another key");
    }

    #[test]
    fn a_crl_reads_back_and_must_be_the_cas() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("test CA", now - time::Duration::days(1), now + time::Duration::days(10)).unwrap();
        let node: NodeId = "FR-OFAST".parse().unwrap();
        let issued = ca.issue(&node, now - time::Duration::days(1), now + time::Duration::days(5)).unwrap();
        let pem = ca.crl(std::slice::from_ref(&issued.serial), now, now + time::Duration::days(7), 4).unwrap();
        let ca_cert = Certificate::from_pem(ca.cert_pem()).unwrap();
        let crls = CrlInfo::all_from_pem(&pem, std::slice::from_ref(&ca_cert)).unwrap();
        assert_eq!(crls.len(), 1);
        assert_eq!(crls[0].number, Some(4));
        assert_eq!(crls[0].revoked, vec![crate::encoding::hex(issued.serial.as_ref())]);
        assert!(crls[0].next_update.unwrap() > Timestamp::now());
        let other = Ca::generate("test CA", now - time::Duration::days(1), now + time::Duration::days(10)).unwrap();
        let err = CrlInfo::all_from_pem(&pem, &[Certificate::from_pem(other.cert_pem()).unwrap()]).unwrap_err();
        assert!(err.to_string().contains("not signed by the federation CA"), "{err}");
        assert!(Certificate::from_pem("junk").is_err());
        assert!(CrlInfo::all_from_pem(ca.cert_pem(), &[]).is_err(), "a certificate is not a CRL");
    }
}
