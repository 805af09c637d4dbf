//! The answer of a state on the route to a controlled delivery alert.

use serde::{Deserialize, Serialize};

use super::check::{opt_text, texts, Check, LONG};
use super::{Contact, Interception, PacketError};
use crate::timestamp::Timestamp;

/// What a state on the route decides about a controlled delivery on its territory (1988 UN
/// Convention art. 11, Schengen art. 73: each state decides case by case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryDecision {
    /// Authorised as the alert describes it.
    Authorised,
    /// Authorised on the conditions listed.
    Conditions,
    /// Not authorised: the consignment will be stopped at the border or intercepted.
    Declined,
}

/// The answer of a state on the route to a controlled delivery alert: authorised, authorised on
/// conditions, or declined, by which authority, until when, and whom to call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlledDeliveryDecision {
    /// The decision.
    pub decision: DeliveryDecision,
    /// The conditions (required with `conditions`, absent otherwise): legs, times, escort,
    /// substitution, interception.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// The authority that decided (a prosecutor, an investigating judge) and how to reach it.
    pub authorising_authority: Contact,
    /// Until when the authorisation holds (absent when declined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
    /// Whether the consignment may be intercepted on this state's territory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception: Option<Interception>,
    /// The 24/7 contact point for the operation on this state's side.
    pub contact_point: Contact,
    /// Why, or anything else the requesting state must know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

impl ControlledDeliveryDecision {
    pub(crate) fn check(&self, c: &Check, created: Timestamp) -> Result<(), PacketError> {
        match (self.decision, self.conditions.is_empty()) {
            (DeliveryDecision::Conditions, true) => {
                return Err(c.at("conditions").invalid("required when the decision is conditions"))
            }
            (DeliveryDecision::Authorised | DeliveryDecision::Declined, false) => {
                return Err(c.at("conditions").invalid("only with the decision conditions"))
            }
            _ => {}
        }
        if !self.conditions.is_empty() {
            texts(&c.at("conditions"), &self.conditions, LONG)?;
        }
        self.authorising_authority.check(&c.at("authorising_authority"))?;
        self.contact_point.check(&c.at("contact_point"))?;
        opt_text(&c.at("remarks"), &self.remarks, LONG)?;
        match (self.decision, self.valid_until) {
            (DeliveryDecision::Declined, Some(_)) => {
                Err(c.at("valid_until").invalid("a declined delivery has no validity"))
            }
            (_, Some(until)) if until <= created => Err(c.at("valid_until").invalid("must be after created")),
            _ => Ok(()),
        }
    }
}
