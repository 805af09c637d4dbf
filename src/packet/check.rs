//! The field path used in validation errors, and the checks shared by every free-text field.

use super::PacketError;

/// Longest short text field (names, numbers, places), in characters.
pub(crate) const SHORT: usize = 256;
/// Longest long text field (reasons, explanations, questions), in characters.
pub(crate) const LONG: usize = 16 * 1024;

/// A position in the packet, for error messages: `body.InformationResponse.entities[2].person`.
#[derive(Debug, Clone)]
pub(crate) struct Check(String);

impl Check {
    pub(crate) fn root() -> Self {
        Self(String::new())
    }

    pub(crate) fn at(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub(crate) fn idx(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> PacketError {
        PacketError::Invalid { field: self.0.clone(), reason: reason.into() }
    }
}

/// Free text: not blank, at most `max` characters, no control characters except newline and tab.
pub(crate) fn text(c: &Check, s: &str, max: usize) -> Result<(), PacketError> {
    if s.trim().is_empty() {
        return Err(c.invalid("must not be empty"));
    }
    if s.chars().count() > max {
        return Err(c.invalid(format!("longer than {max} characters")));
    }
    if s.chars().any(|ch| ch.is_control() && ch != '\n' && ch != '\t') {
        return Err(c.invalid("contains control characters"));
    }
    Ok(())
}

/// [`text`] for an optional field.
pub(crate) fn opt_text(c: &Check, s: &Option<String>, max: usize) -> Result<(), PacketError> {
    s.as_deref().map_or(Ok(()), |s| text(c, s, max))
}

/// A list that must hold at least one item, each checked as text.
pub(crate) fn texts(c: &Check, items: &[String], max: usize) -> Result<(), PacketError> {
    non_empty(c, items)?;
    for (i, s) in items.iter().enumerate() {
        text(&c.idx(i), s, max)?;
    }
    Ok(())
}

/// A list that must hold at least one item.
pub(crate) fn non_empty<T>(c: &Check, items: &[T]) -> Result<(), PacketError> {
    if items.is_empty() {
        Err(c.invalid("must have at least one item"))
    } else {
        Ok(())
    }
}
