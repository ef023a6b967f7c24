//! The version string printed by `--version` and carried in health messages.

/// The git commit the binary was built from (`unknown` without git).
pub const GIT_COMMIT: &str = env!("PLATEN_GIT_COMMIT");

/// The crate version of the workspace (all Platen crates share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `0.1.0 (commit 1a2b3c4d5e6f, protocol 1.1)`.
pub fn long() -> &'static str {
    static LONG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LONG.get_or_init(|| {
        format!(
            "{VERSION} (commit {GIT_COMMIT}, protocol {})",
            platen_protocol::PROTOCOL_VERSION
        )
    })
}

/// `0.1.0+1a2b3c4d5e6f`: short form for health messages and metrics labels.
pub fn short() -> &'static str {
    static SHORT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHORT.get_or_init(|| format!("{VERSION}+{GIT_COMMIT}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_commit_and_protocol() {
        let v = super::long();
        assert!(v.starts_with(super::VERSION), "{v}");
        assert!(
            v.contains(&format!("protocol {}", platen_protocol::PROTOCOL_VERSION)),
            "{v}"
        );
        assert!(!super::GIT_COMMIT.is_empty());
    }
}
