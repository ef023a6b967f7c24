//! API authentication: bearer tokens, stored hashed, each mapped to an [`Actor`].
//!
//! The tokens file (`api.tokens_file`, TOML) holds only SHA-256 hashes:
//!
//! ```toml
//! [[token]]
//! name = "ops-alice"          # shown in logs, never the token
//! actor = "operator"          # operator | tenant:ID | reseller:ID
//! sha256 = "9f86d08…"         # platen-cloud token new prints it
//! ```
//!
//! `platen-cloud token new --name N --actor A` makes a token (`plt_` and 64 hex
//! digits: 256 random bits) and prints it once, with the block to append. The file is
//! read again when it changes, so adding or revoking a token needs no restart. A file
//! that no longer parses keeps only those previous tokens whose hash is still written
//! in it (so a revocation takes effect even beside a typo); a file that cannot be read
//! (deleted, no permission) refuses every token. Either is logged and shown by
//! `/healthz` until the file is good again.
//!
//! Without a tokens file the API is open (every caller is the operator); the server
//! refuses that unless it listens on a loopback address only.
//!
//! What each actor may see and do is decided by [`Scope`] (pure), used by the API.

use crate::model::Actor;
use crate::model::Tenant;
use ring::digest;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

/// Prefix of every token, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "plt_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    actor: String,
    sha256: String,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`open` without authentication).
    pub name: String,
    pub actor: Actor,
}

/// The SHA-256 of a token, lower-case hex: what the tokens file stores.
pub fn hash_token(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token.
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Tokens by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens(HashMap<String, Caller>);

impl Tokens {
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokenFileError> {
        let err = |message: String| TokenFileError::Parse {
            path: path.into(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut out = HashMap::new();
        for (i, e) in file.token.into_iter().enumerate() {
            let at = format!("token[{i}] ({})", e.name);
            let actor: Actor = e.actor.parse().map_err(|m| err(format!("{at}: {m}")))?;
            let hash = e.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("{at}: sha256 must be 64 hex digits")));
            }
            if e.name.trim().is_empty() {
                return Err(err(format!("token[{i}]: name must not be empty")));
            }
            let caller = Caller {
                name: e.name,
                actor,
            };
            if let Some(prev) = out.insert(hash, caller) {
                return Err(err(format!("{at}: same token as {}", prev.name)));
            }
        }
        Ok(Tokens(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller a presented token stands for.
    pub fn lookup(&self, token: &str) -> Option<&Caller> {
        self.0.get(&hash_token(token))
    }
}

/// Why a request was not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
}

impl AuthFailure {
    pub fn message(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "send Authorization: Bearer <token>",
            AuthFailure::Malformed => "the Authorization header is not 'Bearer <token>'",
            AuthFailure::Unknown => "unknown or revoked token",
        }
    }
}

/// The API's authentication.
pub enum Auth {
    /// No tokens file: every caller is the operator (loopback only).
    Open,
    /// Tokens from a file, re-read when it changes.
    File {
        path: PathBuf,
        state: RwLock<FileState>,
    },
}

/// The tokens in force, when the file was read, and what is wrong with it.
#[derive(Debug)]
pub struct FileState {
    at: Option<SystemTime>,
    tokens: Tokens,
    problem: Option<String>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Auth {
    /// Read the tokens file now (an unreadable or invalid file stops the start).
    pub fn from_file(path: &Path) -> Result<Auth, TokenFileError> {
        let (at, tokens) = Self::read(path)?;
        Ok(Auth::File {
            path: path.into(),
            state: RwLock::new(FileState {
                at,
                tokens,
                problem: None,
            }),
        })
    }

    fn read(path: &Path) -> Result<(Option<SystemTime>, Tokens), TokenFileError> {
        let at = modified(path);
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok((at, Tokens::parse(&text, path)?))
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthFailure> {
        let (path, state) = match self {
            Auth::Open => {
                return Ok(Caller {
                    name: "open".into(),
                    actor: Actor::Operator,
                })
            }
            Auth::File { path, state } => (path, state),
        };
        let header = header.ok_or(AuthFailure::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Malformed)?;
        Self::refresh(path, state);
        let guard = state.read().unwrap_or_else(|p| p.into_inner());
        guard
            .tokens
            .lookup(token)
            .cloned()
            .ok_or(AuthFailure::Unknown)
    }

    /// What is wrong with the tokens file now, if anything (for `/healthz`).
    pub fn problem(&self) -> Option<String> {
        match self {
            Auth::Open => None,
            Auth::File { path, state } => {
                Self::refresh(path, state);
                let guard = state.read().unwrap_or_else(|p| p.into_inner());
                guard.problem.clone()
            }
        }
    }

    /// Re-read the file if it changed since it was last read.
    fn refresh(path: &Path, state: &RwLock<FileState>) {
        let now = modified(path);
        let stale = state.read().map(|g| g.at != now).unwrap_or(true);
        if !stale {
            return;
        }
        let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(path);
        match text {
            Err(e) => {
                // Nothing left to check a token against: refuse them all.
                let problem = format!(
                    "tokens file {} cannot be read ({e}): every token is refused until it can",
                    path.display()
                );
                tracing::error!("{problem}");
                *guard = FileState {
                    at: now,
                    tokens: Tokens::default(),
                    problem: Some(problem),
                };
            }
            Ok(text) => match Tokens::parse(&text, path) {
                Ok(tokens) => {
                    tracing::info!(path = %path.display(), tokens = tokens.len(), "tokens file read again");
                    *guard = FileState {
                        at: now,
                        tokens,
                        problem: None,
                    };
                }
                Err(e) => {
                    // Keep only the tokens whose hash the file still holds: one removed
                    // beside a typo is revoked all the same.
                    let text = text.to_ascii_lowercase();
                    let before = guard.tokens.len();
                    guard
                        .tokens
                        .0
                        .retain(|hash, _| text.contains(hash.as_str()));
                    let problem = format!(
                        "{e}; kept {} of {before} tokens, those whose hash is still in the file",
                        guard.tokens.len()
                    );
                    tracing::error!("{problem}");
                    guard.at = now;
                    guard.problem = Some(problem);
                }
            },
        }
    }
}

/// What one actor may see. Pure: given the tenant records it needs.
pub struct Scope<'a>(pub &'a Actor);

impl Scope<'_> {
    pub fn is_operator(&self) -> bool {
        matches!(self.0, Actor::Operator)
    }

    /// Whether the actor may see `tenant`'s contracts, ledger, timelines, migrations.
    /// `record` is the tenant's record (needed for resellers).
    pub fn sees_tenant(&self, tenant: &str, record: Option<&Tenant>) -> bool {
        match self.0 {
            Actor::Operator => true,
            Actor::Tenant(t) => t.as_str() == tenant,
            Actor::Reseller(r) => record.is_some_and(|rec| rec.reseller.as_ref() == Some(r)),
        }
    }

    /// Whether the actor may see the reseller `id`.
    pub fn sees_reseller(&self, id: &str) -> bool {
        match self.0 {
            Actor::Operator => true,
            Actor::Reseller(r) => r.as_str() == id,
            Actor::Tenant(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    fn entry(name: &str, actor: &str, token: &str) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nactor = \"{actor}\"\nsha256 = \"{}\"\n",
            hash_token(token)
        )
    }

    #[test]
    fn tokens_are_looked_up_by_hash_and_the_file_is_reread() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert!(a.starts_with("plt_") && a.len() == 68 && a != b);
        let (_d, p) = file(&entry("ops", "operator", &a));
        assert!(!std::fs::read_to_string(&p).unwrap().contains(&a));
        let auth = Auth::from_file(&p).unwrap();
        let ok = auth.authenticate(Some(&format!("Bearer {a}"))).unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.actor.clone()),
            ("ops", Actor::Operator)
        );
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Missing));
        assert_eq!(auth.authenticate(Some(&a)), Err(AuthFailure::Malformed));
        assert_eq!(
            auth.authenticate(Some("Bearer ")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {b}"))),
            Err(AuthFailure::Unknown)
        );
        // Add b, revoke a: no restart.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, entry("acme-app", "tenant:acme", &b)).unwrap();
        let f = std::fs::File::options().append(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {a}"))),
            Err(AuthFailure::Unknown)
        );
        let t = auth.authenticate(Some(&format!("Bearer {b}"))).unwrap();
        assert_eq!(t.actor, "tenant:acme".parse().unwrap());
        assert_eq!(auth.problem(), None);
        let touch = |secs: u64| {
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        let c = new_token().unwrap();
        std::fs::write(
            &p,
            entry("acme-app", "tenant:acme", &b) + &entry("ops", "operator", &c),
        )
        .unwrap();
        touch(10);
        assert!(auth.authenticate(Some(&format!("Bearer {c}"))).is_ok());
        // A broken edit keeps the tokens still written in it: b stays, c (removed in
        // the same edit as the typo) is revoked.
        std::fs::write(
            &p,
            entry("acme-app", "tenant:acme", &b) + "[[token]]\nname = 1\n",
        )
        .unwrap();
        touch(15);
        assert!(auth.authenticate(Some(&format!("Bearer {b}"))).is_ok());
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {c}"))),
            Err(AuthFailure::Unknown)
        );
        let problem = auth.problem().unwrap();
        assert!(problem.contains("kept 1 of 2 tokens"), "{problem}");
        // A deleted file refuses every token, and says so.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {b}"))),
            Err(AuthFailure::Unknown)
        );
        assert!(auth.problem().unwrap().contains("cannot be read"));
        // Back: the file is good again.
        std::fs::write(&p, entry("acme-app", "tenant:acme", &b)).unwrap();
        assert!(auth.authenticate(Some(&format!("Bearer {b}"))).is_ok());
        assert_eq!(auth.problem(), None);
    }

    #[test]
    fn bad_token_files_are_refused_with_the_entry() {
        let bad = [
            (
                "[[token]]\nname='x'\nactor='king'\nsha256='00'\n",
                "token[0] (x): actor",
            ),
            (
                "[[token]]\nname='x'\nactor='operator'\nsha256='zz'\n",
                "sha256 must be 64 hex digits",
            ),
            ("[[token]]\nname='x'\n", "missing field"),
        ];
        for (text, want) in bad {
            let e = Tokens::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.starts_with("t.toml: "), "{e}");
        }
        let dup = entry("a", "operator", "same") + &entry("b", "tenant:x", "same");
        let e = Tokens::parse(&dup, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("same token as a"), "{e}");
    }

    #[test]
    fn scopes() {
        let acme = Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            reseller: Some("r1".parse().unwrap()),
        };
        let table = [
            ("operator", true, true),
            ("tenant:acme", true, false),
            ("tenant:other", false, false),
            ("reseller:r1", true, true),
            ("reseller:r2", false, false),
        ];
        for (who, tenant, reseller) in table {
            let a: Actor = who.parse().unwrap();
            assert_eq!(Scope(&a).sees_tenant("acme", Some(&acme)), tenant, "{who}");
            assert_eq!(Scope(&a).sees_reseller("r1"), reseller, "{who}");
        }
        // A reseller never sees a tenant whose record is missing.
        let r1: Actor = "reseller:r1".parse().unwrap();
        assert!(!Scope(&r1).sees_tenant("ghost", None));
    }
}
