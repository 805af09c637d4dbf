//! Points in time and calendar dates.
//!
//! A [`Timestamp`] is whole seconds since the Unix epoch, UTC. Its JSON face is RFC 3339
//! (`2026-11-26T13:38:28Z`); its CBOR face is the standard epoch-time tag (`#6.1(int)`, RFC 8949
//! §3.4.2). A [`Date`] is a calendar date (`2026-11-26`) in both faces. Sub-second precision is
//! refused rather than silently dropped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a time value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not an RFC 3339 date-time.
    #[error("invalid timestamp {0:?}: expected RFC 3339, e.g. 2026-11-26T13:38:28Z")]
    Timestamp(String),
    /// Fractional seconds are not kept, so they are refused.
    #[error("invalid timestamp {0:?}: fractional seconds are not supported")]
    Fraction(String),
    /// Outside the years 1970–9999.
    #[error("timestamp {0} is out of range (years 1970-9999)")]
    Range(i64),
    /// Not a `YYYY-MM-DD` calendar date.
    #[error("invalid date {0:?}: expected YYYY-MM-DD")]
    Date(String),
}

const MAX_UNIX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Whole seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// A timestamp from Unix seconds, if within 1970–9999.
    pub fn from_unix(secs: i64) -> Result<Self, TimeError> {
        if (0..=MAX_UNIX).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(TimeError::Range(secs))
        }
    }

    /// The current time, truncated to the second.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        Self(secs.clamp(0, MAX_UNIX))
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// This time plus `secs` seconds, saturating at the end of the range.
    pub fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs).clamp(0, MAX_UNIX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0).map(|t| t.format(&Rfc3339)) {
            Ok(Ok(s)) => f.write_str(&s),
            _ => write!(f, "@{}", self.0),
        }
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimeError::Timestamp(s.to_owned()))?;
        if t.nanosecond() != 0 {
            return Err(TimeError::Fraction(s.to_owned()));
        }
        Self::from_unix(t.unix_timestamp())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            ciborium::tag::Required::<i64, 1>(self.0).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let ciborium::tag::Required::<i64, 1>(secs) = Deserialize::deserialize(d)?;
            Self::from_unix(secs).map_err(serde::de::Error::custom)
        }
    }
}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(time::Date);

impl Date {
    /// Midnight UTC at the start of this date.
    pub fn start(self) -> Timestamp {
        Timestamp(self.0.midnight().assume_utc().unix_timestamp().clamp(0, MAX_UNIX))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.0.year(), u8::from(self.0.month()), self.0.day())
    }
}

impl FromStr for Date {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TimeError::Date(s.to_owned());
        let b = s.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return Err(err());
        }
        let year: i32 = s[..4].parse().map_err(|_| err())?;
        let month: u8 = s[5..7].parse().map_err(|_| err())?;
        let day: u8 = s[8..].parse().map_err(|_| err())?;
        let month = time::Month::try_from(month).map_err(|_| err())?;
        time::Date::from_calendar_date(year, month, day).map(Self).map_err(|_| err())
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t: Timestamp = "2026-11-26T13:38:28Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-26T13:38:28Z");
        let offset: Timestamp = "2026-11-26T14:38:28+01:00".parse().unwrap();
        assert_eq!(offset, t);
        assert!(matches!("2026-11-26T13:38:28.5Z".parse::<Timestamp>(), Err(TimeError::Fraction(_))));
        assert!("yesterday".parse::<Timestamp>().is_err());
        assert!("1969-12-31T23:59:59Z".parse::<Timestamp>().is_err());
    }

    #[test]
    fn cbor_face_is_epoch_tag() {
        let t = Timestamp::from_unix(1_764_164_308).unwrap();
        let mut buf = Vec::new();
        ciborium::into_writer(&t, &mut buf).unwrap();
        assert_eq!(buf[0], 0xc1, "tag 1");
        let back: Timestamp = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, t);
        let mut untagged = Vec::new();
        ciborium::into_writer(&1_764_164_308i64, &mut untagged).unwrap();
        assert!(ciborium::from_reader::<Timestamp, _>(&untagged[..]).is_err());
    }

    #[test]
    fn dates() {
        let d: Date = "2026-02-28".parse().unwrap();
        assert_eq!(d.to_string(), "2026-02-28");
        for bad in ["2026-02-30", "2026-2-28", "26-02-28", "2026/02/28", "2026-13-01", ""] {
            assert!(bad.parse::<Date>().is_err(), "{bad}");
        }
    }
}
