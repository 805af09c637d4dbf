//! Typed entities carried in requests and responses: persons, organisations, vehicles, documents,
//! locations, phones and accounts. Each has its own 4x4 grading, because an answer often mixes
//! a confirmed registration with a rumoured alias.

use serde::{Deserialize, Serialize};

use super::check::{opt_text, text, Check, SHORT};
use crate::ids::CountryCode;
use crate::markings::Grading;
use crate::timestamp::Date;

/// One entity; the variant name is its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// A natural person.
    Person(Person),
    /// A company, association or criminal group.
    Organisation(Organisation),
    /// A road vehicle, vessel, aircraft, container or trailer.
    Vehicle(Vehicle),
    /// An identity or travel document.
    Document(Document),
    /// A place.
    Location(Location),
    /// A telephone line or handset.
    Phone(Phone),
    /// A bank, payment or crypto-asset account.
    Account(Account),
}

impl Entity {
    /// The entity's kind as written on the wire (`person`, `vehicle`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Person(_) => "person",
            Self::Organisation(_) => "organisation",
            Self::Vehicle(_) => "vehicle",
            Self::Document(_) => "document",
            Self::Location(_) => "location",
            Self::Phone(_) => "phone",
            Self::Account(_) => "account",
        }
    }

    /// The entity's own grading.
    pub fn grading(&self) -> Grading {
        match self {
            Self::Person(e) => e.grading,
            Self::Organisation(e) => e.grading,
            Self::Vehicle(e) => e.grading,
            Self::Document(e) => e.grading,
            Self::Location(e) => e.grading,
            Self::Phone(e) => e.grading,
            Self::Account(e) => e.grading,
        }
    }

    /// Whether the entity, on its own, passes its rules (used after a policy redacted fields).
    pub(crate) fn is_valid(&self) -> bool {
        self.check(&Check::root()).is_ok()
    }

    pub(crate) fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        let c = c.at(self.kind());
        match self {
            Self::Person(p) => p.check(&c),
            Self::Organisation(o) => {
                text(&c.at("name"), &o.name, SHORT)?;
                opt_text(&c.at("registration_number"), &o.registration_number, SHORT)
            }
            Self::Vehicle(v) => v.check(&c),
            Self::Document(d) => text(&c.at("number"), &d.number, SHORT),
            Self::Location(l) => l.check(&c),
            Self::Phone(p) => p.check(&c),
            Self::Account(a) => a.check(&c),
        }
    }
}

/// Biological sex as recorded in the source document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// Female.
    Female,
    /// Male.
    Male,
    /// Recorded otherwise, or unknown.
    Unknown,
}

/// A biometric record held about a person (a reference, never the raw template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Biometric {
    /// What kind of biometric record.
    pub kind: BiometricKind,
    /// Where it can be obtained: an attachment name or a national system reference.
    pub reference: String,
}

/// Kinds of biometric record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiometricKind {
    /// A photograph of the face.
    FacialImage,
    /// Ten-print or latent fingerprints.
    Fingerprints,
    /// A DNA profile.
    DnaProfile,
}

/// A natural person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Grading of what is said about this person.
    pub grading: Grading,
    /// Family name as in the identity document.
    pub family_name: String,
    /// Given names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_names: Option<String>,
    /// Other names the person uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Date of birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// Place of birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_of_birth: Option<String>,
    /// Nationalities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nationalities: Vec<CountryCode>,
    /// Sex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    /// The person's part in the case: suspect, courier, victim, witness...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Biometric records held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub biometrics: Vec<Biometric>,
}

impl Person {
    /// Whether the person, on its own, passes its rules.
    pub(crate) fn is_valid(&self) -> bool {
        self.check(&Check::root()).is_ok()
    }

    pub(crate) fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        text(&c.at("family_name"), &self.family_name, SHORT)?;
        opt_text(&c.at("given_names"), &self.given_names, SHORT)?;
        opt_text(&c.at("place_of_birth"), &self.place_of_birth, SHORT)?;
        opt_text(&c.at("role"), &self.role, SHORT)?;
        for (i, a) in self.aliases.iter().enumerate() {
            text(&c.at("aliases").idx(i), a, SHORT)?;
        }
        for (i, b) in self.biometrics.iter().enumerate() {
            text(&c.at("biometrics").idx(i).at("reference"), &b.reference, SHORT)?;
        }
        Ok(())
    }
}

/// A company, association or criminal group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organisation {
    /// Grading of what is said about this organisation.
    pub grading: Grading,
    /// Name.
    pub name: String,
    /// Country of registration or operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
    /// Company register number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_number: Option<String>,
}

/// Kinds of vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleKind {
    /// Passenger car.
    Car,
    /// Van.
    Van,
    /// Lorry or tractor unit.
    Truck,
    /// Semi-trailer or trailer.
    Trailer,
    /// Motorcycle.
    Motorcycle,
    /// Bus or coach.
    Bus,
    /// Ship, boat or yacht.
    Vessel,
    /// Aircraft.
    Aircraft,
    /// Shipping container.
    Container,
}

/// A vehicle, vessel, aircraft or container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    /// Grading of what is said about this vehicle.
    pub grading: Grading,
    /// Kind of vehicle.
    pub kind: VehicleKind,
    /// Registration plate, hull number, tail number or container number (ISO 6346).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Country of registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_country: Option<CountryCode>,
    /// Vehicle identification number (17 characters, ISO 3779).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    /// Make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
}

impl Vehicle {
    fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        if self.registration.is_none() && self.vin.is_none() && self.make.is_none() {
            return Err(c.invalid("at least one of registration, vin or make is required"));
        }
        opt_text(&c.at("registration"), &self.registration, SHORT)?;
        opt_text(&c.at("make"), &self.make, SHORT)?;
        opt_text(&c.at("model"), &self.model, SHORT)?;
        opt_text(&c.at("colour"), &self.colour, SHORT)?;
        if let Some(vin) = &self.vin {
            let ok = vin.len() == 17
                && vin.bytes().all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"IOQ".contains(&b)));
            if !ok {
                return Err(c.at("vin").invalid("a VIN is 17 characters 0-9 A-Z without I, O, Q"));
            }
        }
        Ok(())
    }
}

/// Kinds of identity or travel document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// Passport.
    Passport,
    /// National identity card.
    IdentityCard,
    /// Driving licence.
    DrivingLicence,
    /// Residence permit.
    ResidencePermit,
    /// Visa.
    Visa,
    /// Seaman's book, travel document for refugees, and others.
    Other,
}

/// An identity or travel document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Grading of what is said about this document.
    pub grading: Grading,
    /// Kind of document.
    pub kind: DocumentKind,
    /// Document number.
    pub number: String,
    /// Issuing state.
    pub issuing_country: CountryCode,
    /// Expiry date printed on the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<Date>,
}

/// WGS 84 coordinates in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinates {
    /// Latitude, -90 to 90.
    pub lat: f64,
    /// Longitude, -180 to 180.
    pub lon: f64,
}

/// A place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Grading of what is said about this place.
    pub grading: Grading,
    /// What the place is (warehouse, port terminal, flat...).
    pub description: String,
    /// Postal address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
    /// Coordinates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates: Option<Coordinates>,
}

impl Location {
    fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        text(&c.at("description"), &self.description, SHORT)?;
        opt_text(&c.at("address"), &self.address, SHORT)?;
        if let Some(Coordinates { lat, lon }) = self.coordinates {
            if !(lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0) {
                return Err(c.at("coordinates").invalid("lat must be within ±90 and lon within ±180"));
            }
        }
        Ok(())
    }
}

/// A telephone line or handset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phone {
    /// Grading of what is said about this phone.
    pub grading: Grading,
    /// Number in E.164 form: `+` and 8–15 digits.
    pub number: String,
    /// Handset IMEI (15 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imei: Option<String>,
    /// SIM IMSI (15 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
}

impl Phone {
    fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        e164(&c.at("number"), &self.number)?;
        for (name, v) in [("imei", &self.imei), ("imsi", &self.imsi)] {
            if let Some(v) = v {
                if v.len() != 15 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(c.at(name).invalid("must be 15 digits"));
                }
            }
        }
        Ok(())
    }
}

/// Checks an E.164 telephone number.
pub(crate) fn e164(c: &Check, n: &str) -> Result<(), super::PacketError> {
    let digits = n.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0') {
        Ok(())
    } else {
        Err(c.invalid("a phone number is E.164: + then 8-15 digits, e.g. +390612345678"))
    }
}

/// How an account is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountScheme {
    /// An IBAN (checked with ISO 13616 mod 97).
    Iban,
    /// A national bank account number.
    BankAccount,
    /// A payment service or e-money account (e.g. an e-mail or wallet id at a provider).
    PaymentService,
    /// A crypto-asset address.
    CryptoWallet,
}

/// A bank, payment or crypto-asset account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Grading of what is said about this account.
    pub grading: Grading,
    /// How `identifier` is to be read.
    pub scheme: AccountScheme,
    /// The account's identifier in that scheme.
    pub identifier: String,
    /// Bank, provider or blockchain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
    /// Country of the institution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
    /// Name of the account holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl Account {
    fn check(&self, c: &Check) -> Result<(), super::PacketError> {
        text(&c.at("identifier"), &self.identifier, SHORT)?;
        opt_text(&c.at("institution"), &self.institution, SHORT)?;
        opt_text(&c.at("holder"), &self.holder, SHORT)?;
        if self.scheme == AccountScheme::Iban && !iban_ok(&self.identifier) {
            return Err(c.at("identifier").invalid("not a valid IBAN (ISO 13616 check digits fail)"));
        }
        Ok(())
    }
}

/// ISO 13616: country, two check digits, up to 30 alphanumerics; mod 97 of the rearranged
/// number is 1. Spaces are not allowed on the wire.
fn iban_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_check_digits() {
        assert!(iban_ok("IT60X0542811101000000123456"));
        assert!(iban_ok("ES9121000418450200051332"));
        assert!(!iban_ok("ES9121000418450200051333"));
        assert!(!iban_ok("ES91 2100 0418 4502 0005 1332"));
        assert!(!iban_ok("XX"));
    }

    #[test]
    fn phone_numbers() {
        let c = Check::root();
        assert!(e164(&c, "+390612345678").is_ok());
        assert!(e164(&c, "0612345678").is_err());
        assert!(e164(&c, "+39 06 1234").is_err());
        assert!(e164(&c, "+1234567").is_err());
    }
}
