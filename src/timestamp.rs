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
    /// Neither RFC 3339 nor a time relative to now.
    #[error("invalid time {0:?}: expected RFC 3339 (2026-11-26T13:38:28Z), now, or now±N with s, m, h or d (now+30d, now-12h)")]
    Relative(String),
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

    /// This time moved by `secs` seconds, or an error if that leaves the range (unlike
    /// [`Timestamp::plus_secs`], nothing is clamped: a moved time keeps its distance to others).
    pub fn shifted(self, secs: i64) -> Result<Self, TimeError> {
        Self::from_unix(self.0.saturating_add(secs))
    }

    /// A time as a person types it: RFC 3339, `now`, or `now` plus or minus a whole number of
    /// seconds, minutes, hours or days (`now+30d`, `now-12h`). Commands take times this way so
    /// that a command written down (in a runbook, a README) does not go stale on a fixed date.
    pub fn parse_relative(s: &str, now: Timestamp) -> Result<Self, TimeError> {
        let Some(rest) = s.strip_prefix("now") else { return s.parse() };
        if rest.is_empty() {
            return Ok(now);
        }
        let err = || TimeError::Relative(s.to_owned());
        let (sign, rest) = match rest.as_bytes().first() {
            Some(b'+') => (1, &rest[1..]),
            Some(b'-') => (-1, &rest[1..]),
            _ => return Err(err()),
        };
        let unit = match rest.as_bytes().last() {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            _ => return Err(err()),
        };
        let digits = &rest[..rest.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: i64 = digits.parse().map_err(|_| err())?;
        let secs = n.checked_mul(unit).and_then(|x| x.checked_mul(sign)).ok_or_else(err)?;
        now.shifted(secs)
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

    /// This date moved by `days` days, or an error if that leaves the calendar.
    pub fn shifted(self, days: i64) -> Result<Self, TimeError> {
        self.0
            .checked_add(time::Duration::days(days))
            .filter(|d| (1970..=9999).contains(&d.year()))
            .map(Self)
            .ok_or_else(|| TimeError::Date(format!("{self} moved by {days} days")))
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
    fn relative_times() {
        let now: Timestamp = "2026-11-26T13:38:28Z".parse().unwrap();
        let at = |s: &str| Timestamp::parse_relative(s, now);
        assert_eq!(at("now"), Ok(now));
        assert_eq!(at("now+30d"), Ok(now.plus_secs(30 * 86_400)));
        assert_eq!(at("now-12h"), Ok(now.plus_secs(-12 * 3600)));
        assert_eq!(at("now+90m"), Ok(now.plus_secs(90 * 60)));
        assert_eq!(at("now+5s"), Ok(now.plus_secs(5)));
        assert_eq!(at("2027-01-01T00:00:00Z"), "2027-01-01T00:00:00Z".parse());
        for bad in ["now+", "now+d", "now30d", "now+30", "now+30w", "now+-3d", "now+3.5d", "now+99999999999999999d"] {
            assert!(matches!(at(bad), Err(TimeError::Relative(_) | TimeError::Range(_))), "{bad}");
        }
        assert!(at("yesterday").is_err());
    }

    #[test]
    fn shifted_dates_and_times_keep_their_distance() {
        let d: Date = "2026-02-28".parse().unwrap();
        assert_eq!(d.shifted(1).unwrap().to_string(), "2026-03-01");
        assert_eq!(d.shifted(-365).unwrap().to_string(), "2025-02-28");
        assert!(d.shifted(10_000 * 366).is_err());
        let t: Timestamp = "2026-11-26T13:38:28Z".parse().unwrap();
        assert_eq!(t.shifted(-t.unix()), Ok(Timestamp::from_unix(0).unwrap()));
        assert!(t.shifted(-t.unix() - 1).is_err(), "not clamped");
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
