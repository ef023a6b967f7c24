//! TLS to the MQTT broker: rustls with the ring provider, from PEM files named in
//! the `[broker.tls]` section of the config.
//!
//! Everything is loaded and checked at start-up, so a missing file, a file without
//! a certificate, a key that does not match, or a private key readable by others
//! stops the agent with a message naming the file — never a silent plain-text
//! connection.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[broker.tls]`: present means the connection is TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TlsConfig {
    /// PEM file with the certificate authorities that may sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require client certificates.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file` (PKCS#8, PKCS#1 or SEC1). Must not be readable
    /// by group or others.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cert_file and key_file must be given together")]
    HalfClientAuth,
    #[error("client certificate {cert} and key {key} do not form a usable pair: {source}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.into(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "contains no PEM certificate"));
    }
    Ok(certs)
}

/// Refuse private keys that group or others can read (like ssh does).
pub fn check_private(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_err(
                path,
                format!(
                    "private key is accessible by group or others (mode {mode:o}); chmod 600 it"
                ),
            ));
        }
    }
    Ok(())
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_private(path)?;
    let bytes = read(path)?;
    // The parse error message never contains key material, only the PEM section kind.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(path, format!("no usable PEM private key: {e}")))
}

/// Build the rustls client configuration described by `tls`.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates(&tls.ca_file)?);
    if added == 0 {
        return Err(file_err(&tls.ca_file, "contains no usable CA certificate"));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|source| TlsError::KeyPair {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?,
        _ => return Err(TlsError::HalfClientAuth),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// A self-signed certificate and its key, made for the test.
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn cfg(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> TlsConfig {
        TlsConfig {
            ca_file: ca.into(),
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
        }
    }

    #[test]
    fn valid_ca_and_client_pair_build_a_config() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("agent");
        let ca = write(d.path(), "ca.pem", &cert, 0o644);
        let key = write(d.path(), "agent.key", &key, 0o600);
        client_config(&cfg(&ca, None, None)).unwrap();
        client_config(&cfg(&ca, Some(&ca), Some(&key))).unwrap();
    }

    #[test]
    fn missing_ca_file_is_named() {
        let e = client_config(&cfg(Path::new("/nonexistent/ca.pem"), None, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn ca_file_without_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = write(d.path(), "ca.pem", "just text\n", 0o644);
        let e = client_config(&cfg(&ca, None, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn garbage_inside_pem_armour_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let text = "-----BEGIN CERTIFICATE-----\nAAAA!!!!not base64\n-----END CERTIFICATE-----\n";
        let ca = write(d.path(), "ca.pem", text, 0o644);
        let e = client_config(&cfg(&ca, None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn world_readable_key_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("agent");
        let ca = write(d.path(), "ca.pem", &cert, 0o644);
        let key = write(d.path(), "agent.key", &key, 0o644);
        let e = client_config(&cfg(&ca, Some(&ca), Some(&key)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent.key") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("agent");
        let (_, other_key) = self_signed("other");
        let ca = write(d.path(), "ca.pem", &cert, 0o644);
        let key = write(d.path(), "other.key", &other_key, 0o600);
        let e = client_config(&cfg(&ca, Some(&ca), Some(&key)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not form a usable pair"), "{e}");
    }

    #[test]
    fn cert_without_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("agent");
        let ca = write(d.path(), "ca.pem", &cert, 0o644);
        let e = client_config(&cfg(&ca, Some(&ca), None)).unwrap_err();
        assert!(matches!(e, TlsError::HalfClientAuth), "{e}");
    }
}
