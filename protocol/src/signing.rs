//! Ed25519 signatures on desired configs.
//!
//! The cloud signs every desired config it publishes; an agent with trusted keys
//! applies only configs whose signature verifies, so whoever can publish on the
//! broker (a compromised broker, a leaked broker password) still cannot reconfigure
//! printers.
//!
//! What is signed ([`signed_message`]): a fixed domain prefix, the **tenant** (from the
//! topic, so a config signed for one tenant's printer `p1` cannot be replayed onto
//! another tenant's `p1`) and the config's canonical JSON without its signature
//! (struct field order, settings ordered by name). Versions are inside the signed
//! JSON, and an agent never applies a version at or below one it completed, so
//! replaying an old signed config changes nothing.
//!
//! Keys: the private key is PKCS#8 in a PEM file (`platen-cloud keygen` writes one;
//! `openssl genpkey -algorithm ed25519` works too); a public key is 32 bytes in
//! standard base64, named by a key id. Agents may trust several keys at once, which
//! is how keys are rotated.

use crate::config::DesiredConfig;
use crate::ids::Id;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Domain separation: these bytes start every signed message.
const DOMAIN: &[u8] = b"platen desired config v1\n";

/// The signature carried in a desired config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSignature {
    /// Which key signed (the agent looks it up among its trusted keys).
    pub key_id: String,
    /// The 64-byte Ed25519 signature, standard base64.
    pub ed25519: String,
}

impl fmt::Debug for ConfigSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigSignature({})", self.key_id)
    }
}

/// Why a config's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the config is not signed and this agent requires signatures")]
    Missing,
    #[error("signed with key {key_id:?}, which this agent does not trust")]
    UnknownKey { key_id: String },
    #[error("the signature of key {key_id:?} is not valid base64 of 64 bytes")]
    Malformed { key_id: String },
    #[error(
        "the signature does not verify with key {key_id:?} (altered or signed for another tenant)"
    )]
    Invalid { key_id: String },
}

/// A key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM 'PRIVATE KEY' block")]
    NoPem,
    #[error("the PEM block is not valid base64")]
    BadBase64,
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    NotEd25519(String),
    #[error("public key {id:?}: expected standard base64 of 32 bytes")]
    BadPublicKey { id: String },
    #[error("key id {0:?}: 1-64 characters of [A-Za-z0-9_.-]")]
    BadKeyId(String),
    #[error("key id {0:?} is listed twice")]
    DuplicateKeyId(String),
}

/// The exact bytes that are signed for `config` (its signature ignored) under `tenant`.
pub fn signed_message(tenant: &Id, config: &DesiredConfig) -> Vec<u8> {
    let mut unsigned = config.clone();
    unsigned.signature = None;
    let json = serde_json::to_vec(&unsigned).unwrap_or_default();
    let mut m = Vec::with_capacity(DOMAIN.len() + tenant.as_str().len() + 1 + json.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(tenant.as_str().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&json);
    m
}

fn check_key_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadKeyId(id.to_string()))
    }
}

/// The cloud's signing key.
pub struct Signer {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, [REDACTED])", self.key_id)
    }
}

impl Signer {
    /// From a PEM `PRIVATE KEY` (PKCS#8 v1 or v2, Ed25519).
    pub fn from_pem(key_id: &str, pem: &str) -> Result<Signer, KeyError> {
        check_key_id(key_id)?;
        let der = pem_body(pem, "PRIVATE KEY").ok_or(KeyError::NoPem)?;
        let der = B64.decode(der).map_err(|_| KeyError::BadBase64)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        Ok(Signer {
            key_id: key_id.to_string(),
            pair,
        })
    }

    /// A new random key as PEM text (PKCS#8 v2).
    pub fn generate_pem() -> Result<String, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let b64 = B64.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key, standard base64 (what agents put in `trusted_keys`).
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// Set `config.signature` to this key's signature under `tenant`.
    pub fn sign(&self, tenant: &Id, config: &mut DesiredConfig) {
        let sig = self.pair.sign(&signed_message(tenant, config));
        config.signature = Some(ConfigSignature {
            key_id: self.key_id.clone(),
            ed25519: B64.encode(sig.as_ref()),
        });
    }
}

/// The body of the first `-----BEGIN {label}-----` block, whitespace removed.
fn pem_body(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    Some(
        pem[start..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    )
}

/// The public keys an agent trusts, by key id.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl TrustedKeys {
    /// From `(key id, base64 public key)` pairs.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TrustedKeys, KeyError> {
        let mut out = TrustedKeys::default();
        for (id, b64) in keys {
            check_key_id(id)?;
            if out.keys.iter().any(|(k, _)| k == id) {
                return Err(KeyError::DuplicateKeyId(id.to_string()));
            }
            let bytes: [u8; 32] = B64
                .decode(b64.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| KeyError::BadPublicKey { id: id.to_string() })?;
            out.keys.push((id.to_string(), bytes));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Check `config`'s signature under `tenant`; the key id that verified it.
    pub fn verify(&self, tenant: &Id, config: &DesiredConfig) -> Result<String, SignatureError> {
        let sig = config.signature.as_ref().ok_or(SignatureError::Missing)?;
        let key_id = sig.key_id.clone();
        let Some((_, pk)) = self.keys.iter().find(|(id, _)| *id == key_id) else {
            return Err(SignatureError::UnknownKey { key_id });
        };
        let raw = B64
            .decode(&sig.ed25519)
            .ok()
            .filter(|b| b.len() == 64)
            .ok_or_else(|| SignatureError::Malformed {
                key_id: key_id.clone(),
            })?;
        UnparsedPublicKey::new(&ED25519, pk)
            .verify(&signed_message(tenant, config), &raw)
            .map_err(|_| SignatureError::Invalid {
                key_id: key_id.clone(),
            })?;
        Ok(key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SettingValue;

    fn config() -> DesiredConfig {
        DesiredConfig {
            printer_id: Id::new("p1").unwrap(),
            version: 7,
            issued_at: "2026-11-22T10:00:00Z".parse().unwrap(),
            settings: [("sysLocation".to_string(), SettingValue::from("Floor 2"))].into(),
            signature: None,
        }
    }
    fn t(s: &str) -> Id {
        Id::new(s).unwrap()
    }
    fn signer(id: &str) -> Signer {
        Signer::from_pem(id, &Signer::generate_pem().unwrap()).unwrap()
    }

    #[test]
    fn signed_configs_verify_and_every_tampering_is_caught() {
        let old = signer("k1");
        let new = signer("k2");
        let trusted = TrustedKeys::new([
            ("k1", old.public_key_base64().as_str()),
            ("k2", new.public_key_base64().as_str()),
        ])
        .unwrap();
        let mut c = config();
        assert_eq!(trusted.verify(&t("acme"), &c), Err(SignatureError::Missing));
        // Both keys verify: rotation.
        old.sign(&t("acme"), &mut c);
        assert_eq!(trusted.verify(&t("acme"), &c).unwrap(), "k1");
        new.sign(&t("acme"), &mut c);
        assert_eq!(trusted.verify(&t("acme"), &c).unwrap(), "k2");
        // The signature survives the wire (encode, decode).
        let wire: DesiredConfig = crate::codec::decode(&crate::codec::encode(&c)).unwrap();
        assert_eq!(trusted.verify(&t("acme"), &wire).unwrap(), "k2");

        let invalid = Err(SignatureError::Invalid {
            key_id: "k2".into(),
        });
        // Another tenant's printer with the same id.
        assert_eq!(trusted.verify(&t("other"), &c), invalid);
        // Altered value, version, printer, time.
        let mut a = c.clone();
        a.settings.insert("sysLocation".into(), "Floor 3".into());
        assert_eq!(trusted.verify(&t("acme"), &a), invalid);
        let mut a = c.clone();
        a.version = 8;
        assert_eq!(trusted.verify(&t("acme"), &a), invalid);
        let mut a = c.clone();
        a.printer_id = t("p2");
        assert_eq!(trusted.verify(&t("acme"), &a), invalid);
        let mut a = c.clone();
        a.settings.insert("sysContact".into(), "x".into());
        assert_eq!(trusted.verify(&t("acme"), &a), invalid);
        // A key id pointing at another trusted key.
        let mut a = c.clone();
        a.signature.as_mut().unwrap().key_id = "k1".into();
        assert_eq!(
            trusted.verify(&t("acme"), &a),
            Err(SignatureError::Invalid {
                key_id: "k1".into()
            })
        );
        // An untrusted key, even a well-formed signature.
        let rogue = signer("k2");
        let mut a = c.clone();
        rogue.sign(&t("acme"), &mut a);
        assert_eq!(trusted.verify(&t("acme"), &a), invalid);
        let mut a = c.clone();
        a.signature.as_mut().unwrap().key_id = "k9".into();
        assert_eq!(
            trusted.verify(&t("acme"), &a),
            Err(SignatureError::UnknownKey {
                key_id: "k9".into()
            })
        );
        // Garbage signatures are errors, never panics.
        for junk in ["", "AAAA", "!!!", &"A".repeat(200)] {
            let mut a = c.clone();
            a.signature.as_mut().unwrap().ed25519 = junk.into();
            assert_eq!(
                trusted.verify(&t("acme"), &a),
                Err(SignatureError::Malformed {
                    key_id: "k2".into()
                })
            );
        }
    }

    #[test]
    fn keys_are_checked_when_read() {
        assert_eq!(
            TrustedKeys::new([("k1", "c2hvcnQ=")]).unwrap_err(),
            KeyError::BadPublicKey { id: "k1".into() }
        );
        let pk = signer("k").public_key_base64();
        assert_eq!(
            TrustedKeys::new([("k1", pk.as_str()), ("k1", pk.as_str())]).unwrap_err(),
            KeyError::DuplicateKeyId("k1".into())
        );
        assert!(matches!(
            TrustedKeys::new([("a b", pk.as_str())]),
            Err(KeyError::BadKeyId(_))
        ));
        assert_eq!(Signer::from_pem("k", "hello").unwrap_err(), KeyError::NoPem);
        assert!(matches!(
            Signer::from_pem(
                "k",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(KeyError::NotEd25519(_))
        ));
        // A key made by `openssl genpkey -algorithm ed25519` (PKCS#8 v1).
        let openssl = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFjwE6YqorlDFNrLqhxioK6zszASJb2gfcNymXcfXl+K\n-----END PRIVATE KEY-----\n";
        let s = Signer::from_pem("ossl", openssl).unwrap();
        assert_eq!(B64.decode(s.public_key_base64()).unwrap().len(), 32);
        // Neither Debug shows key material.
        assert_eq!(format!("{s:?}"), "Signer(ossl, [REDACTED])");
    }
}
