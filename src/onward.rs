//! Onward transmission: passing a packet of another originator on to a third node.
//!
//! A node that holds a packet it received (from its originator, or forwarded) may pass it on
//! only as a [`Forward`]: the original exactly as its originator signed it, plus — when needed —
//! the originator's signed [`OnwardConsent`] naming the new recipient and an expiry. The
//! forwarding node signs the forward itself, so the receiver knows who passed it on, and
//! verifies the originator's signatures, so the forwarder can neither alter the packet nor
//! invent the consent. The same checks run at every hop ([`unwrap`]); the forwarding node runs
//! them before it sends ([`consent_needed`], [`consent_for`]).
//!
//! Consent is needed when the packet carries handling code H2 ("not to be disseminated without
//! the provider's permission"), or when the forwarding node's policy with the originator says
//! so (`[onward] from_partner = "consent"`); `"never"` forbids passing on at all.

use crate::ids::NodeId;
use crate::keys::Keyring;
use crate::markings::HandlingCode;
use crate::packet::{Body, Forward, OnwardConsent, Packet, PacketType};
use crate::policy::{Denial, OnwardRule};
use crate::seal::{verify_signed, SignedPacket};
use crate::timestamp::Timestamp;

/// Why a forward is refused (at the forwarding node or at a receiving hop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnwardError {
    /// The carried original does not verify against its originator's key.
    #[error("the original packet does not verify: {0}")]
    OriginalInvalid(String),
    /// The carried original has expired.
    #[error("the original packet: {0}")]
    OriginalExpired(String),
    /// The carried original claims a creation time ahead of the clock.
    #[error("the original packet: {0}")]
    OriginalCreatedInFuture(String),
    /// The forwarder is the original's originator (it should send the packet itself).
    #[error("{0} originated the packet; this is not a forward")]
    NotAForward(NodeId),
    /// The packet needs its originator's consent and none (valid) came with it.
    #[error("{0}")]
    ConsentRequired(String),
    /// The carried consent does not cover this hop.
    #[error("the consent does not cover this: {0}")]
    ConsentInvalid(String),
    /// The original or the consent is signed with a key of its originator that this node does
    /// not hold yet (rotated, not taken here yet): the forward is not receipted, and comes again.
    #[error("signed with {0}, a key of its originator not taken here yet")]
    KeyNotYetKnown(String),
    /// The forward's envelope claims other markings than the original carries.
    #[error("the forward's markings differ from the original's ({0})")]
    MarkingsDiffer(&'static str),
}

impl OnwardError {
    /// A stable code, for rejection receipts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OriginalInvalid(_) => "onward.original_invalid",
            Self::OriginalExpired(_) => "onward.original_expired",
            Self::OriginalCreatedInFuture(_) => "onward.original_created_in_future",
            Self::NotAForward(_) => "onward.not_a_forward",
            Self::ConsentRequired(_) => "onward.consent_required",
            Self::ConsentInvalid(_) => "onward.consent_invalid",
            Self::MarkingsDiffer(_) => "onward.markings_differ",
            Self::KeyNotYetKnown(_) => "onward.key_not_yet_known",
        }
    }
}

/// Whether passing `original` on needs its originator's consent, under the forwarding node's
/// rule for that originator; a denial if it may not be passed on at all.
pub fn consent_needed(original: &Packet, rule: OnwardRule) -> Result<bool, Denial> {
    let h2 = original.envelope.handling.codes.contains(&HandlingCode::H2);
    match rule {
        OnwardRule::Never => Err(Denial {
            rule: "onward.from_partner".into(),
            reason: format!(
                "packets of {} are never passed on under the policy with it",
                original.envelope.originator.node
            ),
        }),
        OnwardRule::Consent => Ok(true),
        OnwardRule::Free => Ok(h2),
    }
}

/// Checks that `consent` (verified) is the originator's consent for `holder` to pass
/// `original` on to `recipient` at `now`. A consent is given to one holder (the node it was
/// sent to): another node that obtained it cannot use it.
pub fn consent_for(
    consent: &SignedPacket,
    original: &Packet,
    holder: &NodeId,
    recipient: &NodeId,
    now: Timestamp,
) -> Result<(), String> {
    let Body::OnwardConsent(OnwardConsent { packet_id, allowed, until }) = &consent.packet.body else {
        return Err(format!("a {} is not a consent", consent.packet.packet_type()));
    };
    if consent.packet.envelope.originator.node != original.envelope.originator.node {
        return Err(format!(
            "given by {}, not by the originator {}",
            consent.packet.envelope.originator.node, original.envelope.originator.node
        ));
    }
    if !consent.packet.envelope.recipients.contains(holder) {
        return Err(format!(
            "it was given to {}, not to {holder}",
            consent.packet.envelope.recipients.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
        ));
    }
    crate::seal::check_times(&consent.packet, now).map_err(|e| format!("the consent packet: {e}"))?;
    if *packet_id != original.envelope.id {
        return Err(format!("it is about packet {packet_id}, not {}", original.envelope.id));
    }
    if !allowed.contains(recipient) {
        return Err(format!("{recipient} is not among the nodes it allows"));
    }
    if now >= *until {
        return Err(format!("it expired at {until}"));
    }
    Ok(())
}

/// What a verified forward carries.
#[derive(Debug, Clone)]
pub struct Unwrapped {
    /// The original, verified against its originator's key.
    pub original: SignedPacket,
    /// The consent, verified, if one came.
    pub consent: Option<SignedPacket>,
}

/// Whether the key that signed `signed` was within its window when the packet says it was made
/// (an originator's key retired, perhaps stolen, cannot date new packets after its retirement).
fn signed_in_window(keyring: &Keyring, signed: &crate::seal::SignedPacket) -> Result<(), String> {
    match keyring.kid(signed.signer.as_bytes()) {
        Some((k, _)) => k
            .in_window(signed.packet.envelope.created)
            .map_err(|why| format!("signed with {}, which {why}", signed.signer)),
        None => Ok(()),
    }
}

/// The checks of one hop: `forward` (already opened and verified as `forwarder`'s packet)
/// carries an original that verifies and is alive now (not expired, not dated ahead of the
/// clock), its signer's key within its window when it was made, with a consent given to
/// `forwarder` that covers `me` now if the original needs one (H2), and the forward's markings
/// are the original's.
pub fn unwrap(
    keyring: &Keyring,
    forward: &Packet,
    forwarder: &NodeId,
    me: &NodeId,
    now: Timestamp,
) -> Result<Unwrapped, OnwardError> {
    let Body::Forward(Forward { original, consent }) = &forward.body else {
        return Err(OnwardError::OriginalInvalid(format!("a {} is not a forward", forward.packet_type())));
    };
    let awaited = |e: crate::seal::OpenError, other: fn(String) -> OnwardError| match e {
        // Not a key of this node (it knows its own) nor of the forwarder (its copies are opened
        // with its keys): one of a third originator's, rotated and not taken here yet.
        crate::seal::OpenError::UnknownKey { kid, .. }
            if keyring.awaited(&kid).is_some_and(|n| n != *me && n != *forwarder) =>
        {
            OnwardError::KeyNotYetKnown(kid)
        }
        e => other(e.to_string()),
    };
    let original = verify_signed(keyring, &original.0).map_err(|e| awaited(e, OnwardError::OriginalInvalid))?;
    signed_in_window(keyring, &original).map_err(OnwardError::OriginalInvalid)?;
    crate::seal::check_times(&original.packet, now).map_err(|e| match e {
        crate::seal::OpenError::CreatedInFuture { .. } => OnwardError::OriginalCreatedInFuture(e.to_string()),
        e => OnwardError::OriginalExpired(e.to_string()),
    })?;
    let p = &original.packet;
    if &p.envelope.originator.node == forwarder {
        return Err(OnwardError::NotAForward(*forwarder));
    }
    if p.packet_type() == PacketType::Forward || p.packet_type().is_system() {
        return Err(OnwardError::OriginalInvalid(format!("a {} cannot be passed on", p.packet_type())));
    }
    let (e, o) = (&forward.envelope, &p.envelope);
    if e.classification != o.classification {
        return Err(OnwardError::MarkingsDiffer("classification"));
    }
    if e.tlp != o.tlp {
        return Err(OnwardError::MarkingsDiffer("tlp"));
    }
    if e.handling != o.handling {
        return Err(OnwardError::MarkingsDiffer("handling"));
    }
    let consent = match consent {
        None => None,
        Some(bytes) => {
            let c = verify_signed(keyring, &bytes.0).map_err(|e| awaited(e, OnwardError::ConsentInvalid))?;
            signed_in_window(keyring, &c).map_err(OnwardError::ConsentInvalid)?;
            consent_for(&c, p, forwarder, me, now).map_err(OnwardError::ConsentInvalid)?;
            Some(c)
        }
    };
    if consent.is_none() && o.handling.codes.contains(&HandlingCode::H2) {
        return Err(OnwardError::ConsentRequired(format!(
            "{} is marked H2 and came without {}'s consent",
            p.envelope.id, p.envelope.originator.node
        )));
    }
    Ok(Unwrapped { original, consent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeKeys;
    use crate::seal::SealContext;

    fn ctx(node: &str, ring: &Keyring) -> SealContext {
        let seed: [u8; 32] = crate::encoding::Digest::of(node.as_bytes()).0;
        let keys = NodeKeys::from_secret_bytes(node.parse().unwrap(), &seed, seed);
        SealContext::new(keys, ring.clone()).unwrap()
    }

    /// A consent is given to one holder: the node it was sent to. Another node that obtained
    /// it cannot pass the packet on with it.
    #[test]
    fn a_consent_covers_only_its_holder() {
        let mut ring = Keyring::new();
        for n in ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"] {
            ring.add(ctx(n, &Keyring::new()).public().clone()).unwrap();
        }
        let original = Packet::from_json(include_str!("../schemas/examples/information-request.json")).unwrap();
        let mut consent = Packet::from_json(include_str!("../schemas/examples/onward-consent.json")).unwrap();
        consent.envelope.originator.node = original.envelope.originator.node;
        consent.envelope.recipients = vec!["CO-DIJIN".parse().unwrap()];
        consent.envelope.in_reply_to = Some(original.envelope.id);
        let until = consent.envelope.expires;
        consent.body = Body::OnwardConsent(OnwardConsent {
            packet_id: original.envelope.id,
            allowed: vec!["ES-UDYCO".parse().unwrap()],
            until,
        });
        let signed = ctx("IT-DCSA", &ring).sign(&consent).unwrap();
        let now = consent.envelope.created.plus_secs(60);
        let (es, co): (NodeId, NodeId) = ("ES-UDYCO".parse().unwrap(), "CO-DIJIN".parse().unwrap());
        assert_eq!(consent_for(&signed, &original, &co, &es, now), Ok(()));
        let err = consent_for(&signed, &original, &es, &es, now).unwrap_err();
        assert!(err.contains("given to CO-DIJIN, not to ES-UDYCO"), "{err}");
        let err = consent_for(&signed, &original, &co, &es, until).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let err = consent_for(&signed, &original, &co, &es, consent.envelope.created.plus_secs(-3600)).unwrap_err();
        assert!(err.contains("ahead of this node's clock"), "{err}");
    }
}
