//! Passwords, kept as argon2id hashes (PHC strings) with OWASP's parameters: 19 MiB, two
//! passes, one lane. Checking one costs tens of milliseconds on purpose: callers run it on
//! the blocking pool, and an unknown account is checked against a dummy hash so that its
//! answer takes as long as a known one's (no account enumeration by timing).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

/// Shortest password accepted.
pub const MIN_CHARS: usize = 12;
/// Longest password accepted (argon2 takes any length; a megabyte "password" is an attack).
pub const MAX_CHARS: usize = 256;

/// Why a password is not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// Shorter than [`MIN_CHARS`].
    #[error("a password needs at least {MIN_CHARS} characters")]
    TooShort,
    /// Longer than [`MAX_CHARS`].
    #[error("a password has at most {MAX_CHARS} characters")]
    TooLong,
    /// The hash could not be made (argon2's own error, never the password).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn argon2() -> Argon2<'static> {
    // 19 MiB, t = 2, p = 1 (OWASP Password Storage Cheat Sheet, argon2id).
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of a new password, after its length is checked.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let n = password.chars().count();
    if n < MIN_CHARS {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_CHARS {
        return Err(PasswordError::TooLong);
    }
    let salt = SaltString::generate(&mut rand_core::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `stored` (`None`: an unknown account, checked
/// against a dummy hash at the same cost, and false).
pub fn verify(stored: Option<&str>, password: &str) -> bool {
    if password.chars().count() > MAX_CHARS {
        return false;
    }
    let known = stored.is_some();
    let phc = stored.unwrap_or(DUMMY);
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let ok = argon2().verify_password(password.as_bytes(), &parsed).is_ok();
    ok && known
}

/// A random password for an account (20 characters from an alphabet without look-alikes: about
/// 113 bits), handed to the officer once.
pub fn generate() -> Zeroizing<String> {
    use rand_core::RngCore;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = Zeroizing::new(String::with_capacity(24));
    let mut bytes = Zeroizing::new([0u8; 64]);
    rand_core::OsRng.fill_bytes(&mut *bytes);
    // Rejection sampling: 56 symbols, bytes below 224 (4 x 56) are used, so each is uniform.
    for b in bytes.iter().filter(|b| **b < 224) {
        if out.len() == 20 {
            break;
        }
        out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    while out.len() < 20 {
        let mut b = [0u8; 1];
        rand_core::OsRng.fill_bytes(&mut b);
        if b[0] < 224 {
            out.push(char::from(ALPHABET[usize::from(b[0]) % ALPHABET.len()]));
        }
    }
    out
}

/// The hash checked when no account has the name given: the same parameters as a real one.
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yqY2Xc7YcUUvUcQGOtO2BFIAY8uiIudJtBJy1Ylw7Gg";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_refuse() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(Some(&h), "correct horse battery"));
        assert!(!verify(Some(&h), "correct horse batterY"));
        assert!(!verify(None, "correct horse battery"));
        assert!(!verify(Some("not a phc string"), "correct horse battery"));
        assert_eq!(hash("short"), Err(PasswordError::TooShort));
        assert_eq!(hash(&"x".repeat(MAX_CHARS + 1)), Err(PasswordError::TooLong));
        // The dummy parses, with the real parameters: an unknown name costs as much as a known one.
        let d = PasswordHash::new(DUMMY).unwrap();
        assert_eq!(d.algorithm.as_str(), "argon2id");
        let (dummy, real) = (Params::try_from(&d).unwrap(), argon2().params().clone());
        assert_eq!((dummy.m_cost(), dummy.t_cost(), dummy.p_cost()), (real.m_cost(), real.t_cost(), real.p_cost()));
    }

    #[test]
    fn generated_passwords_are_long_enough_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.chars().count(), 20);
        assert_ne!(*a, *b);
        assert!(hash(&a).is_ok());
    }
}
