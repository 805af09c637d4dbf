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

/// TLS alerts travel as QUIC "crypto errors": 0x100 plus the alert (RFC 9001, 4.8).
const CRYPTO: u64 = 0x100;

/// Why dialling failed, from quinn's error: what the sender's `status` will say.
///
/// By the TLS alert, not by rustls's text: this node's own check of the partner's certificate
/// ends with the alert it sends (rustls: expired 45, revoked 44, unknown CA 48, a signature
/// that does not verify 51, not valid for the name 42); a partner that refuses this node's
/// certificate answers `access_denied` (49), which its verifier sends for every refusal.
pub fn dial_problem(e: &quinn::ConnectionError) -> Problem {
    use quinn::ConnectionError as E;
    let alert = |code: u64| (CRYPTO..CRYPTO + 0x100).contains(&code).then(|| code - CRYPTO);
    match e {
        E::TimedOut | E::Reset => Problem::Unreachable,
        // The partner closed the handshake.
        E::ConnectionClosed(c) => match alert(u64::from(c.error_code)) {
            Some(49) => Problem::RefusedByPartner,
            Some(_) => Problem::HandshakeFailed,
            None => Problem::Unreachable,
        },
        // This node closed it: its own check of the partner's certificate failed.
        E::TransportError(t) => match alert(u64::from(t.code)) {
            Some(44) => Problem::PartnerCertificateRevoked,
            Some(45) => Problem::PartnerCertificateExpired,
            // 43: a certificate not for this use (no serverAuth): not a node certificate.
            Some(43 | 48 | 51) => Problem::PartnerCertificateUntrusted,
            Some(42) => Problem::NotThePartner,
            Some(_) => Problem::HandshakeFailed,
            None => Problem::Unreachable,
        },
        _ => Problem::Unreachable,
    }
}

/// Text from outside (a certificate's names, an error a peer may word) as it may go into a log
/// line, the API or a terminal: control characters replaced, at most `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(alert: u8) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn::TransportErrorCode::crypto(alert),
            frame: None,
            reason: "invalid peer certificate".into(),
        })
    }

    fn remote(alert: u8) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: Default::default(),
        })
    }

    #[test]
    fn each_failure_says_what_it_is() {
        assert_eq!(dial_problem(&quinn::ConnectionError::TimedOut), Problem::Unreachable);
        assert_eq!(dial_problem(&remote(49)), Problem::RefusedByPartner);
        assert_eq!(dial_problem(&remote(40)), Problem::HandshakeFailed);
        assert_eq!(dial_problem(&remote(120)), Problem::HandshakeFailed, "no application protocol");
        assert_eq!(dial_problem(&local(44)), Problem::PartnerCertificateRevoked);
        assert_eq!(dial_problem(&local(45)), Problem::PartnerCertificateExpired);
        assert_eq!(dial_problem(&local(48)), Problem::PartnerCertificateUntrusted);
        assert_eq!(dial_problem(&local(51)), Problem::PartnerCertificateUntrusted);
        assert_eq!(dial_problem(&local(42)), Problem::NotThePartner);
        assert_eq!(dial_problem(&local(40)), Problem::HandshakeFailed);
    }

    #[test]
    fn outside_text_is_made_printable() {
        assert_eq!(printable("ES-UDYCO\n\u{1b}[31mfake", 100), "ES-UDYCO??[31mfake");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
