//! TLS with rustls, for the services that terminate it themselves and for the
//! device daemon that connects to them.
//!
//! Services: [`server_config`] loads a PEM certificate chain and key into the
//! config [`ServeOptions::tls`](crate::ServeOptions::tls) takes; [`ServeTlsArgs`]
//! is the `--tls-cert` / `--tls-key` pair both `serve` commands share.
//! Clients: [`client_config`] trusts the system roots plus, optionally, a
//! private CA from a PEM file.
//!
//! Every config is built on [`provider`], so nothing depends on rustls picking
//! a process default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key block.
    #[error(
        "{} holds no PEM private key (PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of a CA file cannot serve as a trust anchor.
    #[error("{}: a certificate cannot be used as a trusted root: {source}", path.display())]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// rustls refused the certificate and key together (a key that does not
    /// belong to the certificate, an unsupported key type).
    #[error("{} with {}: {source}", cert.display(), key.display())]
    Unusable {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// The crypto provider of every config built here (aws-lc-rs, the one
/// provider compiled into lula).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config from a PEM certificate chain (leaf first, then any
/// intermediates) and a PEM private key, speaking HTTP/1.1 only (the ALPN the
/// accept loop serves).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert_file)?;
    let key_pem = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_file.to_owned(),
        },
        source => TlsError::Pem {
            path: key_file.to_owned(),
            source,
        },
    })?;
    let unusable = |source| TlsError::Unusable {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config trusting the system's roots (the platform store, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) and, if given, every certificate
/// in the PEM file `ca_file` (a private CA).
///
/// A system without roots is not an error here: plain `http://` and `ws://`
/// need none, and a TLS connection then fails naming the unknown issuer.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping unreadable system certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust roots");
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::BadRoot {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::BadRoot {
            path: ca_file.map(Path::to_owned).unwrap_or_default(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// `--tls-cert` and `--tls-key`, shared by `lula-hub serve` and `lula-auth serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeTlsArgs {
    /// Serve TLS with this PEM certificate chain (leaf first). Needs
    /// --tls-key. Without both, plain HTTP (e.g. behind an ingress that
    /// terminates TLS).
    #[arg(long, env = "LULA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LULA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeTlsArgs {
    /// The server config when both files are given, `None` for plain HTTP.
    pub fn server_config(&self) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => server_config(cert, key).map(Some),
            _ => Ok(None),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServeOptions, serve};
    use axum::Router;
    use axum::routing::get;
    use lula_testkit::TestPki;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    fn server(pki: &TestPki) -> Arc<ServerConfig> {
        server_config(&pki.cert_file(), &pki.key_file()).unwrap()
    }

    async fn start(options: ServeOptions) -> (std::net::SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "hi" }));
        tokio::spawn(serve(listener, router, shutdown.clone(), options));
        (addr, shutdown)
    }

    fn https_client(ca_file: Option<&Path>) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured(client_config(ca_file).unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn exactly_one_crypto_provider_is_compiled_in() {
        // redis-rs builds its rustls config with the process default, which
        // rustls picks by itself only when a single provider feature is on;
        // with two it panics here (and on every rediss:// connection).
        let _ = rustls::ClientConfig::builder();
    }

    #[tokio::test]
    async fn serves_https_to_a_client_that_trusts_the_ca() {
        let pki = TestPki::new();
        let (addr, _shutdown) = start(ServeOptions {
            tls: Some(server(&pki)),
            ..ServeOptions::default()
        })
        .await;
        let body = https_client(Some(&pki.ca_file()))
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
    }

    #[tokio::test]
    async fn a_client_without_the_ca_and_plain_http_are_refused() {
        let pki = TestPki::new();
        let (addr, _shutdown) = start(ServeOptions {
            tls: Some(server(&pki)),
            ..ServeOptions::default()
        })
        .await;
        let untrusting = https_client(None)
            .get(format!("https://{addr}/"))
            .send()
            .await;
        let e = untrusting.expect_err("a server of an unknown CA was trusted");
        let chain = format!("{:?}", e);
        assert!(chain.contains("UnknownIssuer"), "{chain}");
        assert!(reqwest::get(format!("http://{addr}/")).await.is_err());
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_cut_off() {
        let pki = TestPki::new();
        let (addr, _shutdown) = start(ServeOptions {
            header_read_timeout: Duration::from_millis(300),
            max_http_connections: 1,
            tls: Some(server(&pki)),
            drain_delay: Duration::ZERO,
        })
        .await;
        // Connects and never sends a ClientHello; the server must hang up by
        // itself and free the only slot.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a silent TLS peer open");
        let body = https_client(Some(&pki.ca_file()))
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let pki = TestPki::new();
        let missing = pki.dir().join("missing.pem");
        let e = server_config(&missing, &pki.key_file()).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // A key where the chain should be: no certificate in it.
        let e = server_config(&pki.key_file(), &pki.key_file()).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");

        let e = server_config(&pki.cert_file(), &pki.ca_file()).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");

        let stranger = pki.dir().join("stranger-key.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&stranger, key.serialize_pem()).unwrap();
        let e = server_config(&pki.cert_file(), &stranger).unwrap_err();
        assert!(matches!(e, TlsError::Unusable { .. }), "{e}");

        let e = client_config(Some(&pki.key_file())).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        assert!(client_config(Some(&pki.ca_file())).is_ok());
    }

    #[test]
    fn tls_flags_need_each_other() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tls: ServeTlsArgs,
        }
        assert!(Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["x", "--tls-key", "k.pem"]).is_err());
        let both = Cli::try_parse_from(["x", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(both.tls.tls_cert.as_deref(), Some(Path::new("c.pem")));
        let neither = Cli::try_parse_from(["x"]).unwrap();
        assert!(neither.tls.server_config().unwrap().is_none());
    }
}
