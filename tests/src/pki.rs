//! Test certificates made with rcgen: a CA, a broker certificate for 127.0.0.1 and
//! localhost, and client certificates signed by that CA. A second, unrelated CA
//! ("rogue") stands for an attacker's certificates.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A certificate authority whose key stays in memory.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    /// The CA certificate as a PEM file.
    pub cert_file: PathBuf,
}

/// A certificate and key written as PEM files (the key with mode 0600 unless asked).
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write PEM");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod PEM");
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA cert");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        write(&cert_file, &cert.pem(), 0o644);
        Ca {
            cert,
            key,
            cert_file,
        }
    }

    fn issue(&self, dir: &Path, name: &str, server: bool, key_mode: u32) -> Issued {
        let mut p = CertificateParams::new(if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        })
        .expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        let issued = Issued {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}.key")),
        };
        write(&issued.cert_file, &cert.pem(), 0o644);
        write(&issued.key_file, &key.serialize_pem(), key_mode);
        issued
    }

    /// A broker certificate for 127.0.0.1 / localhost. Its key is 0644 because
    /// Mosquitto drops root for its own user (test-only files in a temp dir).
    pub fn server(&self, dir: &Path, name: &str) -> Issued {
        self.issue(dir, name, true, 0o644)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, dir: &Path, name: &str) -> Issued {
        self.issue(dir, name, false, 0o600)
    }
}
