//! A federation CA kept in a directory, with the record of everything it issued.
//!
//! ```text
//! DIR/ca.crt          the CA certificate (what every node's `tls.ca` points at)
//! DIR/ca.key          its private key, 0600 (keep DIR on the CA's own, offline machine)
//! DIR/records.json    what was issued: serial, node, validity, fingerprint, revocation
//! DIR/issued/S.crt    a copy of each certificate issued, by serial
//! DIR/crl.pem         the newest CRL `pki crl` signed (also written where --out says)
//! DIR/.lock           held while a command works on DIR: two admins cannot interleave
//! ```
//!
//! Every change is written to `records.json` (a new file synced, then renamed over the old
//! one) *before* the certificate or CRL is handed out: a certificate the records do not know
//! cannot exist, so `pki list` and `pki revoke` always see all of them.
//!
//! Decisions: node certificates are valid from five minutes before their issue (clocks
//! differ) for the days asked (default 365, at most ten years: the demo material must outlive
//! the suite run three years ahead); the CA itself for up to 20 years; a CRL's next update is
//! 7 days ahead by default, at most ten years (the demo's). A certificate request's names and extensions are ignored: the
//! CA writes the node's DNS name and the key usages itself (`sign-csr --node`).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{RevocationReason, SerialNumber};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::inspect::Certificate;
use super::{Ca, NodeCert, PkiError};
use crate::ids::NodeId;
use crate::timestamp::Timestamp;

/// The longest a node certificate may be issued for, in days.
pub const NODE_DAYS_AT_MOST: i64 = 3650;
/// The longest the CA may be valid, in days.
pub const CA_DAYS_AT_MOST: i64 = 7300;
/// How long before its issue a certificate is valid (clocks differ), in seconds.
const BACKDATE_SECS: i64 = 300;
const RECORDS: &str = "records.json";
const FORMAT: u32 = 1;

/// Why a certificate was revoked (RFC 5280's reasons that apply to node certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Its private key was (or may have been) exposed.
    KeyCompromise,
    /// The node left the federation, or its unit changed.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// The node is shut down for good.
    CessationOfOperation,
}

impl Reason {
    fn rfc5280(self) -> RevocationReason {
        match self {
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }

    /// Its name on the command line and in the records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCompromise => "key-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
        }
    }
}

/// A revocation, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: Reason,
}

/// One certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Its serial, lower-case hex.
    pub serial: String,
    /// The node it names.
    pub node: NodeId,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
    /// When the CA issued it.
    pub issued_at: Timestamp,
    /// From a certificate request (`sign-csr`), not a key the CA made (`issue`).
    pub from_request: bool,
    /// SHA-256 of the DER certificate.
    pub sha256: String,
    /// Set once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}

/// A certificate's state at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Within its validity, not revoked.
    Valid,
    /// Not valid yet.
    NotYetValid,
    /// Past its validity.
    Expired,
    /// Revoked (whatever its validity).
    Revoked,
}

impl State {
    /// Its name in `pki list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::NotYetValid => "not yet valid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl Issued {
    /// Its state at `now`.
    pub fn state(&self, now: Timestamp) -> State {
        if self.revoked.is_some() {
            State::Revoked
        } else if now < self.not_before {
            State::NotYetValid
        } else if now > self.not_after {
            State::Expired
        } else {
            State::Valid
        }
    }
}

/// The records file.
#[derive(Debug, Serialize, Deserialize)]
struct Records {
    format: u32,
    /// The CA's name (its certificate's common name).
    name: String,
    /// The number of the last CRL signed (0: none yet).
    crl_number: u64,
    issued: Vec<Issued>,
}

/// Which certificates to revoke.
#[derive(Debug, Clone)]
pub enum Which {
    /// The one with this serial (hex, with or without colons).
    Serial(String),
    /// Every unrevoked certificate of this node.
    Node(NodeId),
}

/// A CA in its directory, locked for this process while it is open.
pub struct Authority {
    dir: PathBuf,
    ca: Ca,
    records: Records,
    _lock: fs::File,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |e| PkiError::Authority(format!("{}: {e}", path.display()))
}

use super::offset;

fn lock(dir: &Path) -> Result<fs::File, PkiError> {
    let path = dir.join(".lock");
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    fs2::FileExt::try_lock_exclusive(&f).map_err(|_| {
        PkiError::Authority(format!("{}: another liaison pki command is working on this CA; try again", dir.display()))
    })?;
    Ok(f)
}

impl Authority {
    /// Makes a new CA in `dir` (created; it must not exist, or be empty), valid for `days`.
    pub fn init(dir: &Path, name: &str, days: i64, now: Timestamp) -> Result<Self, PkiError> {
        if !(1..=CA_DAYS_AT_MOST).contains(&days) {
            return Err(PkiError::Invalid(format!("--days: 1 to {CA_DAYS_AT_MOST} for a CA, not {days}")));
        }
        if name.trim().is_empty() {
            return Err(PkiError::Invalid("--name: the CA needs a name".into()));
        }
        if dir.exists() && fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(PkiError::Authority(format!(
                "{}: exists and is not empty; a CA is made in a new directory",
                dir.display()
            )));
        }
        crate::keys::create_private_dir(dir)?;
        // Held from here: a second `init-ca` on the same directory stops at the lock and
        // touches nothing.
        let lock = lock(dir)?;
        let made = (|| {
            crate::keys::create_private_dir(&dir.join("issued"))?;
            let from = offset(now.plus_secs(-BACKDATE_SECS))?;
            let ca = Ca::generate(name, from, offset(now.plus_secs(days * 86_400))?)?;
            crate::keys::write_new(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
            crate::keys::write_new(&dir.join("ca.crt"), ca.cert_pem().as_bytes(), 0o644)?;
            Ok(ca)
        })()
        .and_then(|ca| {
            let a = Self {
                dir: dir.to_owned(),
                ca,
                records: Records { format: FORMAT, name: name.to_owned(), crl_number: 0, issued: Vec::new() },
                _lock: lock,
            };
            a.save()?;
            Ok(a)
        });
        if made.is_err() {
            // Half a CA could neither be made again (not empty) nor opened (no records): what
            // this call wrote goes (the directory itself stays: it may be a mount point).
            for f in [RECORDS, "ca.crt", "ca.key", ".lock"] {
                let _ = fs::remove_file(dir.join(f));
            }
            let _ = fs::remove_dir(dir.join("issued"));
        }
        made
    }

    /// Opens the CA in `dir`: its key must be 0600 and belong to its certificate.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        if !dir.join(RECORDS).exists() {
            return Err(PkiError::Authority(format!(
                "{}: not a liaison CA directory (no {RECORDS}; make one with `liaison pki init-ca`)",
                dir.display()
            )));
        }
        let lock = lock(dir)?;
        let key_path = dir.join("ca.key");
        let meta = fs::metadata(&key_path).map_err(io(&key_path))?;
        if let Some(mode) = crate::keys::too_open_mode(&meta) {
            return Err(crate::keys::KeyError::Permissions { path: key_path, mode }.into());
        }
        let key = Zeroizing::new(fs::read_to_string(&key_path).map_err(io(&key_path))?);
        let cert_path = dir.join("ca.crt");
        let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let ca = Ca::from_pem(&cert, &key)?;
        let path = dir.join(RECORDS);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let records: Records = serde_json::from_str(&text)
            .map_err(|e| PkiError::Authority(format!("{}: line {}: {e}", path.display(), e.line())))?;
        if records.format != FORMAT {
            return Err(PkiError::Authority(format!(
                "{}: format {} (this liaison reads format {FORMAT})",
                path.display(),
                records.format
            )));
        }
        Ok(Self { dir: dir.to_owned(), ca, records, _lock: lock })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.records.name
    }

    /// Issues a certificate and a new key for `node`, valid for `days`.
    pub fn issue(&mut self, node: &NodeId, days: i64, now: Timestamp) -> Result<(Issued, NodeCert), PkiError> {
        let (from, to) = validity(days, now)?;
        let cert = self.ca.issue(node, offset(from)?, offset(to)?)?;
        let issued = self.record(node, &cert.cert_pem, &cert.serial, false, now)?;
        Ok((issued, cert))
    }

    /// [`Authority::issue`] for any validity, even one already over (the demo's expired case).
    pub(crate) fn issue_between(
        &mut self,
        node: &NodeId,
        from: Timestamp,
        to: Timestamp,
        now: Timestamp,
    ) -> Result<(Issued, NodeCert), PkiError> {
        let cert = self.ca.issue(node, offset(from)?, offset(to)?)?;
        let issued = self.record(node, &cert.cert_pem, &cert.serial, false, now)?;
        Ok((issued, cert))
    }

    /// The CA's key, PEM (the demo writes it beside the certificates). Secret.
    pub(crate) fn key_pem(&self) -> Zeroizing<String> {
        self.ca.key_pem()
    }

    /// Signs a certificate for `node` over the key of the request `csr_pem` (its signature
    /// checked; its names ignored), valid for `days`. Returns it, PEM.
    pub fn sign_request(
        &mut self,
        csr_pem: &str,
        node: &NodeId,
        days: i64,
        now: Timestamp,
    ) -> Result<(Issued, String), PkiError> {
        let (from, to) = validity(days, now)?;
        let (pem, serial) = self.ca.sign_request(csr_pem, node, offset(from)?, offset(to)?)?;
        let issued = self.record(node, &pem, &serial, true, now)?;
        Ok((issued, pem))
    }

    /// Records a certificate (and keeps a copy) before it is handed out.
    fn record(
        &mut self,
        node: &NodeId,
        pem: &str,
        serial: &SerialNumber,
        from_request: bool,
        now: Timestamp,
    ) -> Result<Issued, PkiError> {
        let c = Certificate::from_pem(pem)?;
        debug_assert_eq!(c.info.serial, crate::encoding::hex(serial.as_ref()));
        let issued = Issued {
            serial: c.info.serial.clone(),
            node: *node,
            not_before: c.info.not_before,
            not_after: c.info.not_after,
            issued_at: now,
            from_request,
            sha256: c.info.sha256,
            revoked: None,
        };
        let copy = self.dir.join("issued").join(format!("{}.crt", issued.serial));
        crate::keys::write_new(&copy, pem.as_bytes(), 0o644)?;
        self.records.issued.push(issued.clone());
        self.save()?;
        Ok(issued)
    }

    /// Revokes what `which` names; returns what it revoked (none: an error).
    pub fn revoke(&mut self, which: &Which, reason: Reason, now: Timestamp) -> Result<Vec<Issued>, PkiError> {
        let wanted = |i: &Issued| match which {
            Which::Serial(s) => i.serial == normalise_serial(s),
            Which::Node(n) => i.node == *n && i.revoked.is_none(),
        };
        let mut done = Vec::new();
        let mut already = None;
        for i in self.records.issued.iter_mut().filter(|i| wanted(i)) {
            if let Some(r) = &i.revoked {
                already = Some(format!("{} was revoked already, at {} ({})", i.serial, r.at, r.reason.as_str()));
                continue;
            }
            i.revoked = Some(Revoked { at: now, reason });
            done.push(i.clone());
        }
        if done.is_empty() {
            return Err(PkiError::Invalid(already.unwrap_or_else(|| match which {
                Which::Serial(s) => format!("this CA issued no certificate with serial {s}"),
                Which::Node(n) => format!("this CA has no unrevoked certificate for {n}"),
            })));
        }
        self.save()?;
        Ok(done)
    }

    /// Signs a new CRL of every revoked certificate, valid for `days`; it is also kept as
    /// `DIR/crl.pem`.
    pub fn crl(&mut self, days: i64, now: Timestamp) -> Result<String, PkiError> {
        if !(1..=NODE_DAYS_AT_MOST).contains(&days) {
            return Err(PkiError::Invalid(format!("--days: 1 to {NODE_DAYS_AT_MOST} for a CRL, not {days}")));
        }
        // Signed now, not backdated: a revocation recorded minutes ago must not date after the
        // CRL's own thisUpdate (validators that look at history would read it as not revoked
        // yet). Revocation times are never after it.
        let revoked = self
            .records
            .issued
            .iter()
            .filter_map(|i| {
                let r = i.revoked.as_ref()?;
                Some((parse_serial(&i.serial), r.at.min(now), r.reason))
            })
            .map(|(s, at, reason)| Ok((s?, offset(at)?, reason.rfc5280())))
            .collect::<Result<Vec<_>, PkiError>>()?;
        self.records.crl_number += 1;
        let pem =
            self.ca.crl_of(&revoked, offset(now)?, offset(now.plus_secs(days * 86_400))?, self.records.crl_number)?;
        self.save()?;
        write_replacing(&self.dir.join("crl.pem"), pem.as_bytes())?;
        Ok(pem)
    }

    /// Everything issued, oldest first.
    pub fn issued(&self) -> &[Issued] {
        &self.records.issued
    }

    /// The records, written to a new file, synced, renamed over the old one.
    fn save(&self) -> Result<(), PkiError> {
        let text =
            serde_json::to_string_pretty(&self.records).map_err(|e| PkiError::Authority(format!("records: {e}")))?;
        write_replacing(&self.dir.join(RECORDS), text.as_bytes())
    }
}

/// [`crate::files::write_replacing`], its error naming the file.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    crate::files::write_replacing(path, bytes).map_err(io(path))
}

fn validity(days: i64, now: Timestamp) -> Result<(Timestamp, Timestamp), PkiError> {
    if !(1..=NODE_DAYS_AT_MOST).contains(&days) {
        return Err(PkiError::Invalid(format!("--days: 1 to {NODE_DAYS_AT_MOST} for a node certificate, not {days}")));
    }
    Ok((now.plus_secs(-BACKDATE_SECS), now.plus_secs(days * 86_400)))
}

/// A serial as people paste it (colons, upper case) in the records' form.
pub fn normalise_serial(s: &str) -> String {
    s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase()
}

fn parse_serial(hex: &str) -> Result<SerialNumber, PkiError> {
    let bad = || PkiError::Authority(format!("records: serial {hex} is not hex"));
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::inspect::CrlInfo;
    use time::OffsetDateTime;

    fn node(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn issue_revoke_crl_list_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let now = Timestamp::now();
        let mut ca = Authority::init(&dir, "Test federation CA", 3650, now).unwrap();
        let (fr, fr_cert) = ca.issue(&node("FR-OFAST"), 365, now).unwrap();
        let (it, _) = ca.issue(&node("IT-DCSA"), 30, now).unwrap();
        assert_eq!(fr.state(now), State::Valid);
        assert_eq!(fr.state(now.plus_secs(366 * 86_400)), State::Expired);
        let c = Certificate::from_pem(&fr_cert.cert_pem).unwrap();
        assert_eq!(c.info.serial, fr.serial);
        assert!(c.signed_by(&Certificate::from_pem(ca.cert_pem()).unwrap()));
        drop(ca);

        let mut ca = Authority::open(&dir).unwrap();
        assert_eq!(ca.issued(), &[fr.clone(), it.clone()]);
        // Pasted as openssl prints it: upper case with colons.
        let pasted: String = fr
            .serial
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let done = ca.revoke(&Which::Serial(pasted.clone()), Reason::KeyCompromise, now).unwrap();
        assert_eq!(done.len(), 1);
        let again = ca.revoke(&Which::Serial(pasted), Reason::KeyCompromise, now).unwrap_err();
        assert!(again.to_string().contains("revoked already"), "{again}");
        let none = ca.revoke(&Which::Node(node("DE-BKA")), Reason::Superseded, now).unwrap_err();
        assert!(none.to_string().contains("no unrevoked certificate for DE-BKA"), "{none}");
        let pem = ca.crl(7, now).unwrap();
        let pem2 = ca.crl(7, now).unwrap();
        drop(ca);

        let ca = Authority::open(&dir).unwrap();
        assert_eq!(ca.issued()[0].state(now), State::Revoked);
        assert_eq!(ca.issued()[1].state(now), State::Valid);
        let ca_cert = Certificate::from_pem(ca.cert_pem()).unwrap();
        let first = &CrlInfo::all_from_pem(&pem, std::slice::from_ref(&ca_cert)).unwrap()[0];
        let second = &CrlInfo::all_from_pem(&pem2, std::slice::from_ref(&ca_cert)).unwrap()[0];
        assert_eq!(first.revoked, vec![fr.serial.clone()]);
        assert_eq!((first.number, second.number), (Some(1), Some(2)), "each CRL has the next number");
        assert_eq!(fs::read_to_string(dir.join("crl.pem")).unwrap(), pem2);
        assert!(dir.join("issued").join(format!("{}.crt", it.serial)).exists());
    }

    #[test]
    fn a_request_gets_the_cas_names_not_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let mut ca = Authority::init(&tmp.path().join("ca"), "Test CA", 365, now).unwrap();
        // The request asks for another node's name and CA rights.
        let mut params = rcgen::CertificateParams::new(vec!["it-dcsa.node.liaison".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (issued, pem) = ca.sign_request(&csr, &node("FR-OFAST"), 90, now).unwrap();
        let c = Certificate::from_pem(&pem).unwrap();
        assert_eq!(c.info.dns_names, vec!["fr-ofast.node.liaison".to_owned()]);
        assert!(!c.info.is_ca);
        assert_eq!(c.public_key, key.public_key_raw(), "the requester's key");
        assert!(issued.from_request);
        // A request whose signature does not verify: one byte of its signature changed.
        let der = pem_body(&csr);
        let mut bad = der.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        let bad_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bad)
        );
        let err = ca.sign_request(&bad_pem, &node("FR-OFAST"), 90, now).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        let err = ca.sign_request("hello", &node("FR-OFAST"), 90, now).unwrap_err();
        assert!(err.to_string().contains("not a PEM certificate request"), "{err}");
        assert!(ca.sign_request(&csr, &node("FR-OFAST"), 0, now).is_err(), "zero days");
        // A key of another type than nodes make.
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let other = rcgen::CertificateParams::new(vec![]).unwrap().serialize_request(&p384).unwrap().pem().unwrap();
        let err = ca.sign_request(&other, &node("FR-OFAST"), 90, now).unwrap_err();
        assert!(err.to_string().contains("not ECDSA P-256 or Ed25519"), "{err}");
        assert_eq!(ca.issued().len(), 1, "refused requests leave no record");
    }

    fn pem_body(text: &str) -> Vec<u8> {
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    }

    #[test]
    fn refusals() {
        let tmp = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let dir = tmp.path().join("ca");
        let ca = Authority::init(&dir, "Test CA", 365, now).unwrap();
        // Locked while open.
        let err = Authority::open(&dir).err().unwrap();
        assert!(err.to_string().contains("another liaison pki command"), "{err}");
        drop(ca);
        assert!(Authority::init(&dir, "again", 365, now).is_err(), "not over an existing CA");
        let err = Authority::open(tmp.path()).err().unwrap();
        assert!(err.to_string().contains("not a liaison CA directory"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(dir.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
            let err = Authority::open(&dir).err().unwrap();
            assert!(err.to_string().contains("too open"), "{err}");
            fs::set_permissions(dir.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Another CA's key in place of this one's.
        let other =
            Ca::generate("other", OffsetDateTime::now_utc(), OffsetDateTime::now_utc() + time::Duration::days(1))
                .unwrap();
        fs::write(dir.join("ca.key"), other.key_pem().as_bytes()).unwrap();
        let err = Authority::open(&dir).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
