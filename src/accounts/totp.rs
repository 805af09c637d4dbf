//! Time-based one-time passwords (RFC 6238, the profile every authenticator app speaks):
//! HMAC-SHA-1 (RFC 4226), 30-second steps, 6 digits, the step before and after accepted for
//! clock drift, and a step never accepted twice for one account (a code seen over a shoulder or
//! in a proxy's log cannot be used again). HMAC-SHA-1 is the app profile, not a choice: RFC
//! 4226's truncation makes its known weaknesses irrelevant here.

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// Length of a step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;

/// An account's TOTP secret: zeroized on drop, printed as `TotpSecret(..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        rand_core::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A secret from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret's bytes (for the store).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret in base32 (RFC 4648, no padding), as authenticator apps take it.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(base32(&self.0))
    }

    /// The `otpauth://` URI an authenticator app reads (as a QR code or pasted).
    pub fn uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            crate::encoding::percent(issuer),
            crate::encoding::percent(account),
            self.base32().as_str(),
            crate::encoding::percent(issuer)
        ))
    }

    /// The code of one step.
    pub fn code_at(&self, step: u64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        let mac = tag.as_ref();
        // Dynamic truncation (RFC 4226 5.3).
        let offset = usize::from(mac[mac.len() - 1] & 0x0f);
        let word = u32::from_be_bytes([mac[offset] & 0x7f, mac[offset + 1], mac[offset + 2], mac[offset + 3]]);
        word % 10u32.pow(DIGITS)
    }

    /// The step `code` belongs to, if it is the code of the step of `unix_seconds` or of the one
    /// before or after, and that step is later than `last_used` (a step is used once). Every
    /// candidate is computed and compared in constant time.
    pub fn check(&self, code: &str, unix_seconds: u64, last_used: Option<u64>) -> Option<u64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let wanted: u32 = code.parse().ok()?;
        let now = unix_seconds / STEP_SECONDS;
        let mut found = None;
        for step in [now.saturating_sub(1), now, now + 1] {
            let matches = subtle::ConstantTimeEq::ct_eq(&self.code_at(step), &wanted);
            if bool::from(matches) && last_used.is_none_or(|l| step > l) {
                found = Some(step);
            }
        }
        found
    }
}

/// Base32 (RFC 4648 alphabet), without padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Base32 back to bytes (case and spaces ignored, padding allowed); `None` if not base32.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u32 - 'A' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", truncated to 6 digits.
    #[test]
    fn rfc_6238_vectors() {
        let s = TotpSecret::from_bytes(b"12345678901234567890");
        for (t, code) in
            [(59u64, 287_082u32), (1_111_111_109, 81_804), (1_234_567_890, 5_924), (2_000_000_000, 279_037)]
        {
            assert_eq!(s.code_at(t / STEP_SECONDS), code, "t = {t}");
        }
        assert_eq!(s.check("287082", 59, None), Some(1));
        assert_eq!(s.check("005924", 1_234_567_890, None), Some(1_234_567_890 / 30));
    }

    #[test]
    fn neighbours_accepted_once_and_nothing_else() {
        let s = TotpSecret::generate();
        let now = 1_800_000_000u64;
        let step = now / STEP_SECONDS;
        let code = |st: u64| format!("{:06}", s.code_at(st));
        assert_eq!(s.check(&code(step), now, None), Some(step));
        assert_eq!(s.check(&code(step - 1), now, None), Some(step - 1));
        assert_eq!(s.check(&code(step + 1), now, None), Some(step + 1));
        assert_eq!(s.check(&code(step - 2), now, None), None, "two steps old");
        assert_eq!(s.check(&code(step), now, Some(step)), None, "a step is used once");
        assert_eq!(s.check(&code(step - 1), now, Some(step)), None, "nor an older one after it");
        for bad in ["", "12345", "1234567", "12a456", " "] {
            assert_eq!(s.check(bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_round_trip_and_rfc_4648_vectors() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32_decode("mzxw 6ytb oi======"), Some(b"foobar".to_vec()));
        assert_eq!(base32_decode("MZ1"), None);
        let s = TotpSecret::generate();
        assert_eq!(base32_decode(&s.base32()).as_deref(), Some(s.bytes()));
        assert!(format!("{s:?}") == "TotpSecret(..)");
        assert!(s
            .uri("liaison ES-UDYCO", "ana.garcia")
            .starts_with("otpauth://totp/liaison%20ES-UDYCO:ana.garcia?secret="));
    }
}
