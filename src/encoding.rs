//! Byte-level helpers shared by the packet and seal layers: strict CBOR decoding, byte strings
//! with a JSON face, SHA-256 digests, hex.
//!
//! ciborium alone ignores trailing bytes and has no size limit (../shared/STACK.md); everything
//! that decodes untrusted CBOR in this crate goes through [`from_cbor_exact`].

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Deepest nesting accepted in any CBOR item we decode. Real packets nest well under 16.
pub const MAX_CBOR_DEPTH: usize = 48;

/// Why bytes are not a well-formed CBOR item of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// Longer than the caller allows.
    #[error("{len} bytes exceed the limit of {limit}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// Allowed maximum.
        limit: usize,
    },
    /// Input ended inside an item.
    #[error("truncated CBOR")]
    Truncated,
    /// Not valid CBOR at this offset.
    #[error("malformed CBOR at byte {0}")]
    Syntax(usize),
    /// Valid CBOR but not the expected shape (wrong type, unknown variant, missing field...).
    #[error("{0}")]
    Semantic(String),
    /// Nested deeper than [`MAX_CBOR_DEPTH`].
    #[error("CBOR nested deeper than {MAX_CBOR_DEPTH} levels")]
    TooDeep,
    /// Bytes left after the item.
    #[error("{0} trailing bytes after the CBOR item")]
    TrailingBytes(usize),
    /// An indefinite-length string, array or map: everything this node reads has definite
    /// lengths, so a reader never has to guess where an item ends.
    #[error("indefinite-length item at byte {0}; only definite lengths are accepted")]
    Indefinite(usize),
    /// An integer, length or tag written with more bytes than it needs (RFC 8949 §4.2.1
    /// preferred serialization): two encodings of one value would let a peer vary the bytes of
    /// what it signs or sends without changing its meaning.
    #[error("integer at byte {0} is not in its shortest form")]
    NotPreferred(usize),
    /// A tag this item may not carry (a bignum, or any tag not part of the format).
    #[error("tag {tag} at byte {at} is not accepted here")]
    UnknownTag {
        /// The tag number.
        tag: u64,
        /// Where.
        at: usize,
    },
    /// A simple value other than false, true and null, or `undefined`.
    #[error("simple value {value} at byte {at} is not accepted")]
    UnknownSimple {
        /// The value.
        value: u64,
        /// Where.
        at: usize,
    },
    /// A map with the same key twice (which one would count?).
    #[error("map key repeated at byte {0}")]
    DuplicateKey(usize),
}

impl CborError {
    /// A stable code for the rule a strict decoder applies (rejection receipts name it), or
    /// `None` for errors that are not about strictness.
    pub fn strict_code(&self) -> Option<&'static str> {
        Some(match self {
            Self::Indefinite(_) => "cbor_indefinite_length",
            Self::NotPreferred(_) => "cbor_not_preferred",
            Self::UnknownTag { .. } => "cbor_unknown_tag",
            Self::UnknownSimple { .. } => "cbor_unknown_simple",
            Self::DuplicateKey(_) => "cbor_duplicate_key",
            _ => return None,
        })
    }
}

/// The only tag in the serde faces of this crate's types: epoch time (`Timestamp`).
pub const TAG_EPOCH_TIME: u64 = 1;

/// Checks that `bytes` is exactly one CBOR item written the one way this crate writes it:
/// definite lengths, integers and lengths in their shortest form, no tag but those in `tags`,
/// no simple value but false/true/null, no repeated map key, nesting within [`MAX_CBOR_DEPTH`],
/// nothing after it. ciborium alone accepts all of these (it ignores unknown tags, takes a
/// bignum for an integer, reads indefinite lengths); every decoder of untrusted CBOR in this
/// crate runs this check first. Byte and text string contents are skipped, not inspected.
pub fn check_strict(bytes: &[u8], tags: &[u64]) -> Result<(), CborError> {
    let mut at = 0;
    strict_item(bytes, &mut at, tags, 0)?;
    if at != bytes.len() {
        return Err(CborError::TrailingBytes(bytes.len() - at));
    }
    Ok(())
}

/// Reads the head of the item at `*at`: (major type, argument, or `None` for indefinite).
fn strict_head(bytes: &[u8], at: &mut usize) -> Result<(u8, Option<u64>), CborError> {
    let start = *at;
    let first = *bytes.get(start).ok_or(CborError::Truncated)?;
    let (major, info) = (first >> 5, first & 0x1f);
    let take = |n: usize, at: &mut usize| -> Result<u64, CborError> {
        let b = bytes.get(*at + 1..*at + 1 + n).ok_or(CborError::Truncated)?;
        *at += 1 + n;
        Ok(b.iter().fold(0u64, |v, x| v << 8 | u64::from(*x)))
    };
    let arg = match info {
        0..=23 => {
            *at += 1;
            Some(u64::from(info))
        }
        24..=27 => {
            let n = 1usize << (info - 24);
            let v = take(n, at)?;
            // Floats (major 7, 25-27) have their own widths; everything else must be shortest.
            let min = [24u64, 0x100, 0x1_0000, 0x1_0000_0000][usize::from(info - 24)];
            if major != 7 && v < min {
                return Err(CborError::NotPreferred(start));
            }
            Some(v)
        }
        31 if matches!(major, 2..=5) => return Err(CborError::Indefinite(start)),
        _ => return Err(CborError::Syntax(start)),
    };
    Ok((major, arg))
}

fn strict_item(bytes: &[u8], at: &mut usize, tags: &[u64], depth: usize) -> Result<(), CborError> {
    if depth > MAX_CBOR_DEPTH {
        return Err(CborError::TooDeep);
    }
    let start = *at;
    let (major, arg) = strict_head(bytes, at)?;
    let arg = arg.unwrap_or_default();
    let len = |n: u64| usize::try_from(n).map_err(|_| CborError::Truncated);
    match major {
        0 | 1 => {}
        2 | 3 => {
            let end = at.checked_add(len(arg)?).filter(|e| *e <= bytes.len()).ok_or(CborError::Truncated)?;
            if major == 3 && std::str::from_utf8(&bytes[*at..end]).is_err() {
                return Err(CborError::Syntax(start));
            }
            *at = end;
        }
        4 => {
            for _ in 0..arg {
                strict_item(bytes, at, tags, depth + 1)?;
            }
        }
        5 => {
            // A hash set: a peer's map of 100,000 keys must not cost 10^10 comparisons.
            let mut keys: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
            for _ in 0..arg {
                let k = *at;
                strict_item(bytes, at, tags, depth + 1)?;
                if !keys.insert(&bytes[k..*at]) {
                    return Err(CborError::DuplicateKey(k));
                }
                strict_item(bytes, at, tags, depth + 1)?;
            }
        }
        6 => {
            if !tags.contains(&arg) {
                return Err(CborError::UnknownTag { tag: arg, at: start });
            }
            strict_item(bytes, at, tags, depth + 1)?;
        }
        _ => {
            // Major 7: false, true, null and floats; `undefined` and other simple values are
            // not part of any format here.
            let info = bytes[start] & 0x1f;
            if !matches!(info, 20..=22 | 25..=27) {
                return Err(CborError::UnknownSimple { value: arg, at: start });
            }
        }
    }
    Ok(())
}

/// Decodes exactly one CBOR item of type `T` that fills `bytes` completely.
pub fn from_cbor_exact<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge { len: bytes.len(), limit });
    }
    check_strict(bytes, &[TAG_EPOCH_TIME])?;
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_CBOR_DEPTH).map_err(|e| match e {
        ciborium::de::Error::Io(_) => CborError::Truncated,
        ciborium::de::Error::Syntax(at) => CborError::Syntax(at),
        ciborium::de::Error::Semantic(_, msg) => CborError::Semantic(msg),
        ciborium::de::Error::RecursionLimitExceeded => CborError::TooDeep,
    })?;
    if !rest.is_empty() {
        return Err(CborError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// The length of `value`'s CBOR encoding, without building it (byte strings are counted, not
/// copied).
pub fn cbor_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match ciborium::into_writer(value, &mut c) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// Encodes `value` as CBOR. Our types have no map with non-text keys and no failing `Serialize`,
/// and writing to a `Vec` cannot fail, so an error here is a bug in this crate.
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        // Invariant broken: report loudly in debug builds, degrade to empty output (which every
        // decoder rejects) in release builds rather than panic a node.
        debug_assert!(false, "CBOR encoding failed: {e}");
        out.clear();
    }
    out
}

/// Text percent-encoded for a URL (RFC 3986: all but the unreserved characters), as one path
/// segment or query value.
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses lowercase or uppercase hex into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let v = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = v(pair[0])? << 4 | v(pair[1])?;
    }
    Some(out)
}

/// A byte string: base64 (standard, padded) in JSON, a CBOR byte string on the wire.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map(Blob)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
        } else {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Blob;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                    Ok(Blob(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                    Ok(Blob(v))
                }
            }
            // Not deserialize_bytes: ciborium serves that only for byte strings up to its 4 KiB
            // scratch buffer; byte_buf takes any length (read in chunks, never pre-allocated
            // from the length header).
            d.deserialize_byte_buf(V)
        }
    }
}

/// A SHA-256 digest: `sha256:<hex>` in JSON, a 32-byte byte string on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Compares in constant time (digests of secrets must not leak through timing).
    pub fn ct_eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("sha256:")
            .and_then(unhex::<32>)
            .map(Self)
            .ok_or_else(|| format!("invalid digest {s:?}: expected sha256:<64 hex digits>"))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let Blob(b) = Blob::deserialize(d)?;
            <[u8; 32]>::try_from(b.as_slice())
                .map(Self)
                .map_err(|_| serde::de::Error::custom(format!("digest must be 32 bytes, got {}", b.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_decoding() {
        let ok = to_cbor(&vec![1u32, 2, 3]);
        assert_eq!(from_cbor_exact::<Vec<u32>>(&ok, 100).unwrap(), vec![1, 2, 3]);
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(from_cbor_exact::<Vec<u32>>(&trailing, 100), Err(CborError::TrailingBytes(1)));
        assert_eq!(from_cbor_exact::<Vec<u32>>(&ok[..2], 100), Err(CborError::Truncated));
        assert!(matches!(from_cbor_exact::<Vec<u32>>(&ok, 2), Err(CborError::TooLarge { .. })));
        let deep = [vec![0x81u8; 10_000], vec![0x01]].concat();
        assert_eq!(from_cbor_exact::<ciborium::Value>(&deep, 1 << 20), Err(CborError::TooDeep));
        assert!(matches!(from_cbor_exact::<Vec<u32>>(&[0xa0], 100), Err(CborError::Semantic(_))));
        // A byte string header claiming 2^63 bytes, with none present.
        let huge = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(from_cbor_exact::<Blob>(&huge, 100).is_err());
    }

    /// One item, one encoding: what ciborium would let through is refused, each with its code.
    #[test]
    fn strict_cbor() {
        let ok = |b: &[u8]| check_strict(b, &[TAG_EPOCH_TIME]);
        let code = |b: &[u8]| ok(b).unwrap_err().strict_code();
        assert_eq!(ok(&to_cbor(&(1u64 << 40, -5i32, "t", vec![1.5f64], Blob(vec![1; 300]), None::<u8>))), Ok(()));
        assert_eq!(ok(&[0xc1, 0x1a, 0x69, 0x27, 0x42, 0x00]), Ok(()), "epoch time, tag 1");
        assert_eq!(code(&[0x9f, 0x01, 0xff]), Some("cbor_indefinite_length"), "indefinite array");
        assert_eq!(code(&[0xbf, 0x61, 0x61, 0x01, 0xff]), Some("cbor_indefinite_length"), "indefinite map");
        assert_eq!(code(&[0x5f, 0x41, 0x00, 0xff]), Some("cbor_indefinite_length"), "chunked bytes");
        assert_eq!(code(&[0x18, 0x01]), Some("cbor_not_preferred"), "1 in two bytes");
        assert_eq!(code(&[0x19, 0x00, 0xff]), Some("cbor_not_preferred"), "255 in three bytes");
        assert_eq!(code(&[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), Some("cbor_not_preferred"));
        assert_eq!(code(&[0x58, 0x01, 0x00]), Some("cbor_not_preferred"), "a length too");
        assert_eq!(code(&[0xc2, 0x41, 0x01]), Some("cbor_unknown_tag"), "bignum 1");
        assert_eq!(code(&[0xd9, 0xd9, 0xf7, 0x01]), Some("cbor_unknown_tag"), "self-described CBOR");
        assert_eq!(code(&[0x81, 0xc0, 0x61, 0x78]), Some("cbor_unknown_tag"), "nested");
        assert_eq!(code(&[0xf7]), Some("cbor_unknown_simple"), "undefined");
        assert_eq!(code(&[0xf8, 0x20]), Some("cbor_unknown_simple"));
        assert_eq!(code(&[0xa2, 0x01, 0x01, 0x01, 0x02]), Some("cbor_duplicate_key"));
        assert_eq!(ok(&[0xa2, 0x01, 0x01, 0x02, 0x02]), Ok(()));
        assert_eq!(ok(&[0x01, 0x01]), Err(CborError::TrailingBytes(1)));
        assert_eq!(ok(&[0x1c]), Err(CborError::Syntax(0)), "reserved additional information");
        assert_eq!(ok(&[0x62, 0xff, 0xfe]), Err(CborError::Syntax(0)), "text that is not UTF-8");
        // The decoder runs the check first.
        assert_eq!(from_cbor_exact::<u8>(&[0x18, 0x01], 10), Err(CborError::NotPreferred(0)));
        // A map of many keys is checked in linear time (a hash set), not pairwise.
        let big: std::collections::BTreeMap<u32, u8> = (0..200_000).map(|i| (i, 0)).collect();
        assert_eq!(ok(&to_cbor(&big)), Ok(()));
    }

    #[test]
    fn large_byte_and_text_strings_decode() {
        let big = Blob((0..100_000u32).map(|i| i as u8).collect());
        assert_eq!(from_cbor_exact::<Blob>(&to_cbor(&big), 1 << 20).unwrap(), big);
        let text = "ñ".repeat(20_000);
        assert_eq!(from_cbor_exact::<String>(&to_cbor(&text), 1 << 20).unwrap(), text);
        let cow: std::borrow::Cow<'static, str> = from_cbor_exact(&to_cbor(&text), 1 << 20).unwrap();
        assert_eq!(cow, text);
    }

    #[test]
    fn blob_and_digest_faces() {
        let b = Blob(vec![0, 1, 2, 255]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"AAEC/w==\"");
        assert_eq!(serde_json::from_str::<Blob>("\"AAEC/w==\"").unwrap(), b);
        assert_eq!(from_cbor_exact::<Blob>(&to_cbor(&b), 100).unwrap(), b);
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert_eq!(from_cbor_exact::<Digest>(&to_cbor(&d), 100).unwrap(), d);
        assert!(d.ct_eq(&Digest::of(b"abc")) && !d.ct_eq(&Digest::of(b"abd")));
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0aF"), None);
    }
}
