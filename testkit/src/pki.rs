//! A throwaway certificate authority for TLS tests: a CA generated on the spot
//! and a server certificate it signed for `127.0.0.1` and `localhost`, written
//! as PEM files into a private temp directory.

use std::path::{Path, PathBuf};

/// A CA and one server certificate of it, as PEM files.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA, the server key and certificate, and a second,
    /// unrelated CA (one the server's certificate does not chain to).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for test certificates");
        let (ca_params, ca_key) = new_ca("lula test CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .expect("self-sign the test CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server certificate params");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign the server certificate");
        let (other_params, other_key) = new_ca("another CA");
        let other = other_params.self_signed(&other_key).expect("self-sign");
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("write test certificate")
        };
        write("ca.pem", ca.pem());
        write("server.pem", cert.pem());
        write("server-key.pem", key.serialize_pem());
        write("other-ca.pem", other.pem());
        TestPki { dir }
    }

    /// The CA certificate (PEM), what a client must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that did not sign the server certificate (PEM).
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server certificate for `127.0.0.1` and `localhost` (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key (PKCS#8 PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis-server` arguments that add a TLS port with the server
    /// certificate (clients need not present one).
    pub fn redis_tls_args(&self, tls_port: u16) -> Vec<String> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(self.cert_file()),
            "--tls-key-file".into(),
            path(self.key_file()),
            "--tls-ca-cert-file".into(),
            path(self.ca_file()),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn new_ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (params, key)
}
