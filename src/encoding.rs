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
}

/// Decodes exactly one CBOR item of type `T` that fills `bytes` completely.
pub fn from_cbor_exact<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge { len: bytes.len(), limit });
    }
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
