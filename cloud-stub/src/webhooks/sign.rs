//! Standard Webhooks signing (<https://www.standardwebhooks.com/>): the headers
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, a
//! space-separated list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! one per secret that signs (several during a rotation). The HMAC is the reference
//! crate's (`standardwebhooks`, pinned); this module adds secrets and several
//! signatures.

use base64::Engine as _;
use ring::rand::SecureRandom;

/// A new signing secret: `whsec_` and the base64 of 24 random bytes.
pub fn new_secret() -> Result<String, SignError> {
    let mut key = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SignError("the system's random source failed".into()))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

#[derive(Debug, thiserror::Error)]
#[error("webhook signing: {0}")]
pub struct SignError(String);

/// The `webhook-signature` header for `body` under each of `secrets`.
pub fn signature(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignError> {
    if secrets.is_empty() {
        return Err(SignError("the endpoint has no secret that signs".into()));
    }
    let mut out = Vec::with_capacity(secrets.len());
    for s in secrets {
        // The error names no secret: only that one is malformed.
        let wh = standardwebhooks::Webhook::new(s)
            .map_err(|_| SignError("a secret is not whsec_ and base64".into()))?;
        out.push(
            wh.sign(id, timestamp, body)
                .map_err(|e| SignError(format!("cannot sign: {e:?}")))?,
        );
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example (also what the Python reference library gives).
    #[test]
    fn the_specifications_example_signs_alike() {
        let sig = signature(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_during_a_rotation_and_new_ones_are_random() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(a.starts_with("whsec_") && a != b);
        let sig = signature(&[&a, &b], "id", 1, b"{}").unwrap();
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        assert!(signature(&[], "id", 1, b"{}").is_err());
        let bad = signature(&["whsec_***"], "id", 1, b"{}").unwrap_err();
        assert!(!bad.to_string().contains("***"), "{bad}");
    }
}
