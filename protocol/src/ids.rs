//! Identifiers used in topics: tenants, printers and agents.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// A tenant, printer or agent id: 1–64 characters of `[A-Za-z0-9._-]`, not starting
/// with `.` or `-`. This excludes MQTT wildcards (`+`, `#`), the level separator `/`
/// and anything that would need escaping in a file name or a log line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Id(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    #[error("id {id:?} contains {ch:?}; allowed are letters, digits, '.', '_' and '-'")]
    InvalidChar { id: String, ch: char },
    #[error("id {id:?} must not start with '.' or '-'")]
    BadStart { id: String },
}

impl Id {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::InvalidChar { id: s, ch });
        }
        if s.starts_with('.') || s.starts_with('-') {
            return Err(IdError::BadStart { id: s });
        }
        Ok(Id(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::new(s)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for ok in ["p1", "printer-01", "acme_corp", "a.b", "X", &"a".repeat(64)] {
            assert_eq!(Id::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_wildcards_separators_and_junk() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert!(matches!(
            Id::new("a".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        ));
        for (bad, ch) in [
            ("a+b", '+'),
            ("#", '#'),
            ("a/b", '/'),
            ("a b", ' '),
            ("é", 'é'),
            ("a\0", '\0'),
        ] {
            assert_eq!(
                Id::new(bad).unwrap_err(),
                IdError::InvalidChar { id: bad.into(), ch }
            );
        }
        assert!(matches!(Id::new("-x"), Err(IdError::BadStart { .. })));
        assert!(matches!(Id::new(".x"), Err(IdError::BadStart { .. })));
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<Id>("\"ok-1\"").is_ok());
        let err = serde_json::from_str::<Id>("\"bad+\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'+'"), "{err}");
    }
}
