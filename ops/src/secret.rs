//! A string that never shows itself in `Debug` or `Display` output.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A credential (SNMP community, broker password). Its `Debug` and `Display` print
/// `[REDACTED]`; code that needs the value calls [`Secret::expose`], which is easy
/// to grep for.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Serializes as `[REDACTED]`: the only serialized configs are for people to read
/// (`config show`); the agent never writes a secret back.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Refuse a file that holds credentials (`what`) when every user of the machine can
/// read it: the error names the file and its mode.
pub fn refuse_world_readable(path: &std::path::Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "{}: holds {what} and is readable by every user (mode {mode:o}); chmod 640 it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s} {s:?} {:?}", Some(&s)),
            "[REDACTED] [REDACTED] Some([REDACTED])"
        );
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[REDACTED]\"");
    }
}
