//! The node's check of its own files, before it starts (`liaison serve`) or offline (`liaison
//! config check`): the same code, every problem found reported together.
//!
//! What must hold (a problem: the node does not start):
//! - its signing and encryption keys load, belong to this node, and every secret key file in
//!   `keys.dir` and the TLS key are 0600;
//! - the keyring loads, has keys for every partner, and its keys for this node (if any) are
//!   this node's own;
//! - its TLS certificate names this node (`<node>.node.liaison`), chains to the federation CA
//!   (`tls.ca`), is within its validity, belongs to its key, and is not revoked by a CRL;
//! - the CA certificate is within its validity;
//! - each CRL is signed by the federation CA, and (with `tls.stale_crl = "refuse"`) not past its
//!   next update.
//!
//! What is said and tolerated (a warning): a CRL past its next update (by default: the CA may
//! publish late, and a node that stopped would cut its unit off), a certificate or CA that
//! expires within 30 days, a partner without a sharing policy (nothing is exchanged with it).

use std::path::Path;

use crate::config::{Settings, StaleCrl};
use crate::keys::{Keyring, NodeKeys};
use crate::pki::inspect::{Certificate, CrlInfo};
use crate::timestamp::Timestamp;

/// Days before an expiry from which it is warned about.
pub const WARN_DAYS: i64 = 30;

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// What stops the node from starting, each naming its file.
    pub problems: Vec<String>,
    /// What the administrator should know and act on soon.
    pub warnings: Vec<String>,
}

impl Findings {
    /// Nothing stops the node.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn days_left(until: Timestamp, now: Timestamp) -> i64 {
    (until.unix() - now.unix()).div_euclid(86_400)
}

fn read(path: &Path, what: &str, f: &mut Findings) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            f.problems.push(format!("{what} {}: {e}", path.display()));
            None
        }
    }
}

/// Every secret key file in `dir` (`*.key`) that group or others may read.
fn open_key_files(dir: &Path, f: &mut Findings) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for p in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "key")) {
        if let Some(mode) = crate::keys::too_open(&p) {
            f.problems.push(format!(
                "{}: permissions {mode:o} are too open; a secret key file must be 0600 (chmod 600)",
                p.display()
            ));
        }
    }
}

/// The TLS part of [`check`] alone: what a SIGHUP reload puts in force (the keys, the keyring
/// and the partners take effect at a restart, and must not hold up a new CRL).
pub fn check_tls(s: &Settings, now: Timestamp) -> Findings {
    let mut f = Findings::default();
    tls(s, now, &mut f);
    f
}

/// Checks the files `s` names, at `now`.
pub fn check(s: &Settings, now: Timestamp) -> Findings {
    let mut f = Findings::default();
    // Keys.
    open_key_files(&s.keys_dir, &mut f);
    let mode_problems = f.problems.len();
    let own = match NodeKeys::load_generations(&s.keys_dir, &s.node) {
        Ok(k) => Some(k),
        Err(crate::keys::KeyError::Permissions { .. }) if mode_problems > 0 => None, // said above
        Err(e) => {
            f.problems.push(format!("keys.dir: {e}"));
            None
        }
    };
    match Keyring::load(&s.keyring) {
        Ok(ring) => {
            for p in &s.partners {
                if ring.node(&p.id).is_none() {
                    f.problems.push(format!("partner {}: no public keys for it in keys.keyring", p.id));
                }
            }
            if let Some(own) = &own {
                let mine =
                    |k: &crate::keys::PublicKeys| own.iter().any(|(_, o)| o.public().signing_kid == k.signing_kid);
                if ring.generations(&s.node).iter().any(|k| !mine(k)) {
                    f.problems.push(format!(
                        "keys.keyring: its keys for {} are not this node's own (keys.dir): an old copy?",
                        s.node
                    ));
                }
            }
        }
        Err(e) => f.problems.push(format!("keys.keyring: {e}")),
    }
    for p in &s.partners {
        if p.policy.is_none() {
            f.warnings.push(format!(
                "partner {}: no sharing policy; nothing is sent to it or accepted from it (deny by default)",
                p.id
            ));
        }
    }
    tls(s, now, &mut f);
    f
}

fn tls(s: &Settings, now: Timestamp, f: &mut Findings) {
    if let Some(mode) = crate::keys::too_open(&s.tls_key) {
        if !f.problems.iter().any(|p| p.starts_with(&s.tls_key.display().to_string())) {
            f.problems.push(format!(
                "{}: permissions {mode:o} are too open; the TLS private key file must be 0600 (chmod 600)",
                s.tls_key.display()
            ));
        }
    }
    let cas = read(&s.tls_ca, "tls.ca", f).map(|t| (Certificate::all_from_pem(&t), t));
    let cas: Vec<Certificate> = match cas {
        Some((Ok(c), _)) if !c.is_empty() => c,
        Some((Ok(_), _)) => {
            f.problems.push(format!("tls.ca {}: no certificate in it", s.tls_ca.display()));
            Vec::new()
        }
        Some((Err(e), _)) => {
            f.problems.push(format!("tls.ca {}: {e}", s.tls_ca.display()));
            Vec::new()
        }
        None => Vec::new(),
    };
    // A bundle may keep an old CA after a rollover: only the CA this node's own certificate
    // chains to must be valid (below); the others are warned about.
    for ca in &cas {
        let i = &ca.info;
        if !i.is_ca {
            // Every certificate of the bundle becomes a trust anchor (webpki does not look at
            // basicConstraints there): a node certificate pasted into it could issue partners.
            f.problems.push(format!(
                "tls.ca {}: {} is not a CA certificate; it would be trusted to issue partners' certificates",
                s.tls_ca.display(),
                i.subject
            ));
        }
        if now > i.not_after {
            f.warnings.push(format!("tls.ca {}: the CA {} expired on {}", s.tls_ca.display(), i.subject, i.not_after));
        } else if days_left(i.not_after, now) < WARN_DAYS {
            f.warnings.push(format!(
                "tls.ca {}: the CA {} expires on {} ({} days)",
                s.tls_ca.display(),
                i.subject,
                i.not_after,
                days_left(i.not_after, now)
            ));
        }
    }
    let cert_file = s.tls_cert.display();
    let chain = match read(&s.tls_cert, "tls.cert", f).map(|t| Certificate::all_from_pem(&t)) {
        Some(Ok(c)) if !c.is_empty() => c,
        Some(Ok(_)) => {
            f.problems.push(format!("tls.cert {cert_file}: no certificate in it"));
            return;
        }
        Some(Err(e)) => {
            f.problems.push(format!("tls.cert {cert_file}: {e}"));
            return;
        }
        None => return,
    };
    let leaf = &chain[0];
    let i = &leaf.info;
    let names = i.nodes();
    if names != [s.node] {
        let named = if i.dns_names.is_empty() { "no DNS name".to_owned() } else { i.dns_names.join(", ") };
        f.problems.push(format!(
            "tls.cert {cert_file}: does not name this node {} (it must carry {}; it has {named})",
            s.node,
            crate::pki::node_dns_name(&s.node)
        ));
    }
    if now > i.not_after {
        f.problems.push(format!("tls.cert {cert_file}: expired on {}", i.not_after));
    } else if now < i.not_before {
        f.problems.push(format!("tls.cert {cert_file}: not valid before {}", i.not_before));
    } else if days_left(i.not_after, now) < WARN_DAYS {
        f.warnings.push(format!(
            "tls.cert {cert_file}: expires on {} ({} days); renew it (liaison pki csr, then sign-csr at the CA)",
            i.not_after,
            days_left(i.not_after, now)
        ));
    }
    // The chain: each certificate signed by the next, the last by a CA of tls.ca.
    if !cas.is_empty() {
        let links_hold = chain.windows(2).all(|w| w[0].signed_by(&w[1]));
        let last = chain.last().unwrap_or(leaf);
        // Of the CAs whose key signed it (a CA renewed with the same key signs alike), a valid one.
        let signers: Vec<&Certificate> = cas.iter().filter(|ca| last.signed_by(ca)).collect();
        let anchor =
            signers.iter().find(|ca| ca.info.is_ca && ca.info.valid_at(now)).or_else(|| signers.first()).copied();
        if let Some(a) = anchor.filter(|a| now > a.info.not_after || !a.info.is_ca) {
            f.problems.push(format!(
                "tls.ca {}: the CA that issued this node's certificate ({}) {}",
                s.tls_ca.display(),
                a.info.subject,
                if a.info.is_ca {
                    format!("expired on {}", a.info.not_after)
                } else {
                    "is not a CA certificate".into()
                }
            ));
        }
        for c in chain.iter().skip(1).filter(|c| now > c.info.not_after) {
            f.problems.push(format!(
                "tls.cert {cert_file}: the intermediate {} expired on {}",
                c.info.subject, c.info.not_after
            ));
        }
        if !links_hold || anchor.is_none() {
            f.problems.push(format!(
                "tls.cert {cert_file}: not issued by the federation CA in tls.ca ({}; this certificate's issuer: {})",
                s.tls_ca.display(),
                i.issuer
            ));
        }
    }
    // The key.
    if let Some(text) = read(&s.tls_key, "tls.key", f) {
        let text = zeroize::Zeroizing::new(text);
        match rcgen::KeyPair::from_pem(&text) {
            Ok(key) if key.public_key_raw() != leaf.public_key.as_slice() => f.problems.push(format!(
                "tls.key {}: is not the key of tls.cert {cert_file} (a key of another certificate?)",
                s.tls_key.display()
            )),
            Ok(_) => {}
            Err(_) => f.problems.push(format!("tls.key {}: not a PEM private key", s.tls_key.display())),
        }
    }
    // CRLs.
    if s.tls_crls.is_empty() {
        f.warnings.push(
            "tls.crls: none; a revoked partner certificate would still be accepted (give the federation CA's CRL)"
                .into(),
        );
    }
    for path in &s.tls_crls {
        let Some(text) = read(path, "tls.crls", f) else { continue };
        // Signed by a CA of tls.ca or of this node's own chain (an intermediate's CRL).
        let signers: Vec<Certificate> = cas.iter().chain(chain.iter().skip(1)).cloned().collect();
        let crls = match CrlInfo::all_from_pem(&text, &signers) {
            Ok(c) => c,
            Err(e) => {
                f.problems.push(format!("tls.crls {}: {e}", path.display()));
                continue;
            }
        };
        for c in crls {
            if c.revoked.contains(&i.serial) {
                f.problems.push(format!(
                    "tls.cert {cert_file}: revoked (serial {} is in {}); the node needs a new certificate",
                    i.serial,
                    path.display()
                ));
            }
            if let Some(next) = c.next_update.filter(|n| *n < now) {
                let text = format!(
                    "tls.crls {}: stale: its next update was {next}; revocations since may be missing (get a fresh CRL from the CA)",
                    path.display()
                );
                match s.tls_stale_crl {
                    StaleCrl::Refuse => f.problems.push(text),
                    StaleCrl::Warn => f.warnings.push(text),
                }
            }
        }
    }
}
