//! What the node knows of its link with each partner, for `liaison peers` and the sender's
//! `status`: connected since when, the last contact, the last error in words, the partner's
//! certificate as seen at the last connection.
//!
//! A refused client is told nothing by the refusing node (by design: see `transport`), so the
//! reason a partner refused this node is not known here; what is known is said: that the
//! partner refused this node's certificate, or that the partner's own certificate is expired,
//! revoked, from another CA or names another node, or that nothing answers.

use crate::delivery::{Millis, Problem};
use crate::pki::inspect::{CertInfo, Certificate};

/// One partner's link, as last seen.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    /// Since when the connection this node dialled is up (`None`: not connected).
    pub connected_since: Option<Millis>,
    /// The last time anything came from the partner (a connection, a receipt, a packet).
    pub last_contact: Option<Millis>,
    /// The last failure: when, and what (in words, with the detail of the error).
    pub last_error: Option<(Millis, String)>,
    /// The partner's certificate, from the last connection this node dialled.
    pub certificate: Option<CertInfo>,
}

impl LinkInfo {
    /// A connection this node dialled is up.
    pub fn connected(&mut self, now: Millis, conn: &quinn::Connection) {
        self.connected_since = Some(now);
        self.last_contact = Some(now);
        self.certificate = peer_certificate(conn);
    }

    /// Dialling failed, or the connection was lost.
    pub fn failed(&mut self, now: Millis, what: String) {
        self.connected_since = None;
        self.last_error = Some((now, what));
    }

    /// Something came from the partner.
    pub fn contact(&mut self, now: Millis) {
        self.last_contact = Some(now);
    }
}

/// The partner's certificate, as its TLS handshake presented it.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertInfo> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    Certificate::from_der(certs.first()?).ok().map(|c| c.info)
}

/// Why dialling failed, from quinn's error: what the sender's `status` will say.
pub fn dial_problem(e: &quinn::ConnectionError) -> Problem {
    use quinn::ConnectionError as E;
    // TLS alerts travel as QUIC "crypto errors": 0x100 plus the alert.
    const CRYPTO: u64 = 0x100;
    const HANDSHAKE_FAILURE: u64 = CRYPTO + 40;
    match e {
        E::TimedOut | E::Reset => Problem::Unreachable,
        // The partner closed the handshake: it refused this node's certificate (its verifier
        // answers every refusal alike), or it shares no key exchange with this node.
        E::ConnectionClosed(c) => match u64::from(c.error_code) {
            HANDSHAKE_FAILURE => Problem::HandshakeFailed,
            code if (CRYPTO..CRYPTO + 0x100).contains(&code) => Problem::RefusedByPartner,
            _ => Problem::Unreachable,
        },
        // This node refused the partner's certificate: rustls says why.
        E::TransportError(t) => {
            let why = t.reason.as_str();
            if why.contains("Revoked") {
                Problem::PartnerCertificateRevoked
            } else if why.contains("Expired") || why.contains("NotValidYet") {
                Problem::PartnerCertificateExpired
            } else if why.contains("NotValidForName") {
                Problem::NotThePartner
            } else if why.contains("UnknownIssuer") || why.contains("BadSignature") {
                Problem::PartnerCertificateUntrusted
            } else if u64::from(t.code) == HANDSHAKE_FAILURE
                || why.contains("PeerIncompatible")
                || why.contains("NoKxGroupsInCommon")
            {
                Problem::HandshakeFailed
            } else {
                Problem::Unreachable
            }
        }
        _ => Problem::Unreachable,
    }
}
