//! Markings that travel on every packet: priority, classification, TLP, handling codes, grading.
//!
//! Every marking is a closed set: an unknown value is a parse error, never a default. The order
//! of the variants is their order of restrictiveness, so `max()` gives the most restrictive one.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Delivery priority. FLASH travels ahead of everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Priority {
    /// Life, liberty or an operation at stake within minutes (controlled delivery under way).
    Flash,
    /// Needs attention within hours.
    Urgent,
    /// Everything else.
    Routine,
}

impl Priority {
    /// The marking as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flash => "FLASH",
            Self::Urgent => "URGENT",
            Self::Routine => "ROUTINE",
        }
    }

    /// Its rank, FLASH first (0, 1, 2): lanes and keys that put FLASH first are ordered by it.
    pub fn rank(self) -> u8 {
        match self {
            Self::Flash => 0,
            Self::Urgent => 1,
            Self::Routine => 2,
        }
    }

    /// The priority of a rank from [`Priority::rank`]; anything past the last is ROUTINE.
    pub fn of_rank(rank: u8) -> Self {
        match rank {
            0 => Self::Flash,
            1 => Self::Urgent,
            _ => Self::Routine,
        }
    }
}

/// Security classification, least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// No protective marking.
    Unclassified,
    /// National "basic protection" level (below EU RESTRICTED).
    BasicProtection,
    /// RESTREINT UE / EU RESTRICTED.
    EuRestricted,
    /// CONFIDENTIEL UE / EU CONFIDENTIAL.
    EuConfidential,
}

/// Traffic Light Protocol 2.0, least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tlp {
    /// TLP:CLEAR — no limit on disclosure.
    #[serde(rename = "CLEAR")]
    Clear,
    /// TLP:GREEN — the community, not public.
    #[serde(rename = "GREEN")]
    Green,
    /// TLP:AMBER — the recipient's organisation and its clients on a need-to-know basis.
    #[serde(rename = "AMBER")]
    Amber,
    /// TLP:AMBER+STRICT — the recipient's organisation only.
    #[serde(rename = "AMBER+STRICT")]
    AmberStrict,
    /// TLP:RED — named recipients only.
    #[serde(rename = "RED")]
    Red,
}

/// A Europol handling code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HandlingCode {
    /// H0: for crime-fighting purposes only.
    H0,
    /// H1: not to be used in judicial proceedings without the provider's permission.
    H1,
    /// H2: not to be disseminated without the provider's permission.
    H2,
    /// H3: other restrictions, stated in free text.
    H3,
}

impl HandlingCode {
    /// What the code means (Europol), in words an officer reads beside it.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::H0 => "for crime-fighting purposes only",
            Self::H1 => "not to be used in judicial proceedings without the provider's permission",
            Self::H2 => "not to be passed on without the provider's permission",
            Self::H3 => "other restrictions (below)",
        }
    }
}

/// The handling codes of a packet; H3 carries its restriction text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handling {
    /// The codes that apply (at least one; no duplicates).
    pub codes: BTreeSet<HandlingCode>,
    /// The H3 restriction text: required with H3, forbidden without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h3_text: Option<String>,
}

/// Why a marking is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkingError {
    /// Grading is a source letter (A, B, C, X) then an information digit (1-4).
    #[error("invalid grading {0:?}: expected source reliability A/B/C/X then information accuracy 1-4, e.g. B2")]
    Grading(String),
    /// No handling code at all.
    #[error("at least one handling code is required")]
    NoHandlingCode,
    /// H3 without its restriction text.
    #[error("H3 requires h3_text stating the restriction")]
    MissingH3Text,
    /// Restriction text without H3.
    #[error("h3_text is only allowed together with H3")]
    UnexpectedH3Text,
}

impl Handling {
    /// Checks the rules serde cannot express.
    pub fn check(&self) -> Result<(), MarkingError> {
        if self.codes.is_empty() {
            return Err(MarkingError::NoHandlingCode);
        }
        let has_h3 = self.codes.contains(&HandlingCode::H3);
        match &self.h3_text {
            None if has_h3 => Err(MarkingError::MissingH3Text),
            Some(t) if has_h3 && t.trim().is_empty() => Err(MarkingError::MissingH3Text),
            Some(_) if !has_h3 => Err(MarkingError::UnexpectedH3Text),
            _ => Ok(()),
        }
    }
}

/// Source reliability in the Europol 4x4 grading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceReliability {
    /// A: no doubt about authenticity, trustworthiness, competence; or always reliable.
    A,
    /// B: source has in most instances proved reliable.
    B,
    /// C: source has in most instances proved unreliable.
    C,
    /// X: reliability cannot be assessed.
    X,
}

/// Information accuracy in the Europol 4x4 grading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InformationAccuracy {
    /// 1: known to be true without reservation.
    Known = 1,
    /// 2: known personally to the source but not to the officer passing it on.
    KnownToSource = 2,
    /// 3: not known personally to the source but corroborated.
    Corroborated = 3,
    /// 4: cannot be judged.
    CannotBeJudged = 4,
}

/// Europol 4x4 grading, written `B2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grading {
    /// How reliable the source is.
    pub source: SourceReliability,
    /// How accurate the information is.
    pub information: InformationAccuracy,
}

impl fmt::Display for Grading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}{}", self.source, self.information as u8)
    }
}

impl FromStr for Grading {
    type Err = MarkingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use InformationAccuracy as I;
        use SourceReliability as S;
        let b = s.as_bytes();
        let err = || MarkingError::Grading(s.to_owned());
        if b.len() != 2 {
            return Err(err());
        }
        let source = match b[0] {
            b'A' => S::A,
            b'B' => S::B,
            b'C' => S::C,
            b'X' => S::X,
            _ => return Err(err()),
        };
        let information = match b[1] {
            b'1' => I::Known,
            b'2' => I::KnownToSource,
            b'3' => I::Corroborated,
            b'4' => I::CannotBeJudged,
            _ => return Err(err()),
        };
        Ok(Self { source, information })
    }
}

impl Serialize for Grading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Grading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a request is urgent (Directive (EU) 2023/977, art. 4(4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrgencyReason {
    /// Prevention of an immediate and serious threat to public security.
    ThreatToPublicSecurity,
    /// Prevention of an imminent threat to a person's life or physical integrity.
    ThreatToLife,
    /// Needed for a decision that may involve keeping a person deprived of liberty.
    LibertyDecision,
    /// The information risks losing its relevance if not provided urgently.
    LossOfRelevance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grading_parses_all_sixteen_and_nothing_else() {
        let mut n = 0;
        for s in ["A", "B", "C", "X"] {
            for i in 1..=4 {
                let text = format!("{s}{i}");
                assert_eq!(text.parse::<Grading>().unwrap().to_string(), text);
                n += 1;
            }
        }
        assert_eq!(n, 16);
        for bad in ["", "D1", "A0", "A5", "a1", "A1 ", "AA"] {
            assert!(bad.parse::<Grading>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restrictiveness_order() {
        assert!(Classification::EuConfidential > Classification::EuRestricted);
        assert!(Tlp::Red > Tlp::AmberStrict && Tlp::AmberStrict > Tlp::Amber);
        assert!(Priority::Flash < Priority::Routine, "FLASH sorts first");
    }

    #[test]
    fn handling_rules() {
        let h = |codes: &[HandlingCode], text: Option<&str>| Handling {
            codes: codes.iter().copied().collect(),
            h3_text: text.map(str::to_owned),
        };
        assert_eq!(h(&[HandlingCode::H0], None).check(), Ok(()));
        assert_eq!(h(&[], None).check(), Err(MarkingError::NoHandlingCode));
        assert_eq!(h(&[HandlingCode::H3], None).check(), Err(MarkingError::MissingH3Text));
        assert_eq!(h(&[HandlingCode::H3], Some(" ")).check(), Err(MarkingError::MissingH3Text));
        assert_eq!(h(&[HandlingCode::H0], Some("x")).check(), Err(MarkingError::UnexpectedH3Text));
        assert_eq!(h(&[HandlingCode::H3], Some("no use before 2027")).check(), Ok(()));
    }

    #[test]
    fn unknown_markings_are_refused() {
        assert!(serde_json::from_str::<Tlp>("\"WHITE\"").is_err());
        assert!(serde_json::from_str::<Classification>("\"TOP_SECRET\"").is_err());
        assert_eq!(serde_json::from_str::<Tlp>("\"AMBER+STRICT\"").unwrap(), Tlp::AmberStrict);
    }
}
