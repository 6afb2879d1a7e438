//! HTTPS: `[server] tls_cert` and `tls_key` (PEM files) make the server speak TLS (rustls, with
//! the `ring` provider) on its one port, for a server that other hosts reach. The handshake runs
//! in the connection's own task, bounded by the header-read timeout, so that a slow or silent
//! peer never holds up the accept loop. Terminating TLS in a reverse proxy in front of a
//! loopback server instead is described in docs/scale-out.md.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {detail}")]
    Certificate { path: String, detail: String },
    #[error("cannot read the TLS key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("the TLS certificate {cert} and key {key} do not make a server identity: {detail}")]
    Config {
        cert: String,
        key: String,
        detail: String,
    },
}

/// The acceptor for the certificate chain in `cert` and the private key in `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificate {
            path: cert.display().to_string(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.display().to_string(),
            detail: "it holds no PEM certificate".to_string(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.display().to_string(),
        detail: error.to_string(),
    })?;
    let config_error = |detail: String| TlsError::Config {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        detail,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| config_error(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| config_error(error.to_string()))?;
    // The server speaks HTTP/1.1 only (its accept loop is hyper's http1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
