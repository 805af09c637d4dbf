//! Identifier newtypes: node ids, country codes, packet ids, case references, officer ids.
//!
//! Every identifier is parsed once, at the edge, into a type that cannot hold an invalid value
//! (parse, don't validate). They serialise as plain text in both the JSON and the CBOR face.

use std::fmt;
use std::str::FromStr;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A node id is `CC-UNIT`: an ISO 3166 alpha-2 country and a unit of 2–16 `A-Z0-9`.
    #[error("invalid node id {0:?}: expected CC-UNIT, e.g. IT-DCSA (ISO 3166 alpha-2 country, unit of 2-16 characters A-Z 0-9)")]
    NodeId(String),
    /// Not an assigned ISO 3166-1 alpha-2 code (or `EU`).
    #[error("invalid country code {0:?}: expected an ISO 3166-1 alpha-2 code such as ES")]
    Country(String),
    /// Not a canonical lowercase hyphenated UUID.
    #[error("invalid packet id {0:?}: expected a lowercase hyphenated UUID")]
    PacketId(String),
    /// Case references are 1–64 characters of `A-Z a-z 0-9 / _ . -`.
    #[error("invalid case reference {0:?}: 1-64 characters of A-Z a-z 0-9 / _ . -")]
    CaseRef(String),
    /// Officer ids are 1–64 printable characters without leading/trailing space.
    #[error("invalid officer id {0:?}: 1-64 printable characters, no leading or trailing space")]
    OfficerId(String),
    /// Languages are ISO 639-1 codes: two lowercase letters.
    #[error("invalid language {0:?}: expected an ISO 639-1 code such as en")]
    Language(String),
}

/// Assigned ISO 3166-1 alpha-2 codes, plus `EU` (exceptionally reserved, used for EU agencies).
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL \
BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK \
DM DO DZ EC EE EG EH ER ES ET EU FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT \
GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY \
KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX \
MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS \
RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN \
TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// An ISO 3166-1 alpha-2 country code (or `EU`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// The code as text, e.g. `ES`.
    pub fn as_str(&self) -> &str {
        // Invariant: only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() == 2 && b.iter().all(u8::is_ascii_uppercase) && COUNTRIES.split(' ').any(|c| c == s) {
            Ok(Self([b[0], b[1]]))
        } else {
            Err(IdError::Country(s.to_owned()))
        }
    }
}

/// A node's identity in the federation: `IT-DCSA`, `ES-UDYCO`, `CO-DIJIN`. Kept inline (at
/// most [`NODE_ID_MAX`] ASCII bytes): it is in every outbox entry and index, and a copy costs
/// no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId {
    len: u8,
    /// The id's bytes, zero after `len` (so derived equality and hashing are the text's).
    bytes: [u8; NODE_ID_MAX],
}

/// The longest node id: a country code, a hyphen, 2 to 16 letters or digits.
pub const NODE_ID_MAX: usize = 19;

impl NodeId {
    /// The node id as text.
    pub fn as_str(&self) -> &str {
        // Invariant: parsing took ASCII only.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
    /// The country the node belongs to.
    pub fn country(&self) -> CountryCode {
        // Invariant: parsing checked the first two characters are a country code.
        CountryCode::from_str(&self.as_str()[..2]).unwrap_or(CountryCode(*b"EU"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeId").field(&self.as_str()).finish()
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdError::NodeId(s.to_owned());
        let (cc, unit) = s.split_once('-').ok_or_else(err)?;
        CountryCode::from_str(cc).map_err(|_| err())?;
        let ok_unit =
            (2..=16).contains(&unit.len()) && unit.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok_unit {
            return Err(err());
        }
        let mut bytes = [0; NODE_ID_MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self { len: s.len() as u8, bytes })
    }
}

/// A packet's unique id: a UUID version 7 (time-ordered), in canonical lowercase text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId([u8; 16]);

impl PacketId {
    /// A new time-ordered id (RFC 9562 UUIDv7) for a packet created at `unix_millis`.
    pub fn new_v7(unix_millis: u64, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b[6..]);
        b[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
        b[6] = 0x70 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        Self(b)
    }
    /// A packet id from its 16 raw bytes (as stored).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The creation time a UUIDv7 carries (ms since the epoch); `None` for another version.
    /// Only as trustworthy as whoever made the id.
    pub fn unix_millis(&self) -> Option<u64> {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        (self.0[6] >> 4 == 7).then(|| u64::from_be_bytes(ms))
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for PacketId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdError::PacketId(s.to_owned());
        if s.len() != 36 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if bytes[i] != b'-' {
                    return Err(err());
                }
                i += 1;
                continue;
            }
            let hi = lower_hex(bytes[i]).ok_or_else(err)?;
            let lo = lower_hex(*bytes.get(i + 1).ok_or_else(err)?).ok_or_else(err)?;
            out[n] = hi << 4 | lo;
            n += 1;
            i += 2;
        }
        Ok(Self(out))
    }
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A case reference, as the originating unit writes it: `IT-DCSA/2026/0042`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CaseRef(String);

impl CaseRef {
    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CaseRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::CaseRef(s.to_owned()))
        }
    }
}

/// An officer's identifier within their unit (a badge number, a login, a name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfficerId(String);

impl OfficerId {
    /// The officer id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OfficerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control) && s.trim() == s;
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::OfficerId(s.to_owned()))
        }
    }
}

/// The language a packet's free text is written in: an ISO 639-1 code (`en`, `es`, `it`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Language([u8; 2]);

impl Language {
    /// English, the default language of system packets.
    pub const ENGLISH: Language = Language(*b"en");

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Invariant: only ASCII lowercase letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for Language {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_lowercase() && b.is_ascii_lowercase() => Ok(Self([*a, *b])),
            _ => Err(IdError::Language(s.to_owned())),
        }
    }
}

/// Serde as text through `FromStr` / `Display` for each identifier.
macro_rules! text_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
text_serde!(CountryCode, NodeId, PacketId, CaseRef, OfficerId, Language);

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
display_as_str!(CountryCode, NodeId, CaseRef, OfficerId, Language);

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn node_ids() {
        for ok in ["IT-DCSA", "ES-UDYCO", "CO-DIJIN", "EU-EUROPOL", "DE-BKA"] {
            assert_eq!(ok.parse::<NodeId>().unwrap().as_str(), ok);
        }
        for bad in ["", "IT", "it-dcsa", "XX-DCSA", "IT-D", "IT-DCSA-X", "IT-dcsa", "IT-ABCDEFGHIJKLMNOPQ", "IT- DCSA"]
        {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
        assert_eq!("CO-DIJIN".parse::<NodeId>().unwrap().country().as_str(), "CO");
    }

    #[test]
    fn packet_id_round_trip_and_version() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let id = PacketId::new_v7(1_764_000_000_000, &mut rng);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7");
        assert_eq!(text.parse::<PacketId>().unwrap(), id);
        assert_eq!(id.unix_millis(), Some(1_764_000_000_000));
        assert_eq!(PacketId::from_bytes([0; 16]).unix_millis(), None, "not a UUIDv7");
        for bad in [
            "",
            "0190b6b2-7c3a-7d2e-9f00-12345678901",
            "0190B6B2-7C3A-7D2E-9F00-123456789012",
            "0190b6b2x7c3a-7d2e-9f00-12345678901",
        ] {
            assert!(bad.parse::<PacketId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn case_and_officer() {
        assert!("IT-DCSA/2026/0042".parse::<CaseRef>().is_ok());
        assert!("has space".parse::<CaseRef>().is_err());
        assert!("".parse::<CaseRef>().is_err());
        assert!("Isp. Rossi 4711".parse::<OfficerId>().is_ok());
        assert!(" padded".parse::<OfficerId>().is_err());
        assert!("line\nbreak".parse::<OfficerId>().is_err());
    }
}
