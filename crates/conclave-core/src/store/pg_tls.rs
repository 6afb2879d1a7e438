//! TLS to PostgreSQL: the `sslmode` and `sslrootcert` a store URL names, as libpq reads them.
//!
//! The `postgres` driver knows `sslmode=disable|prefer|require` only, and no `sslrootcert`, so the
//! two are taken out of the URL here, the rest is parsed by the driver, and the TLS connector
//! (rustls with ring, as the server's own TLS, through `tokio-postgres-rustls`) is built to match:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it, else plain | not checked |
//! | `require` | always | not checked; with `sslrootcert`, its chain is (as `verify-ca`) |
//! | `verify-ca` | always | chained to `sslrootcert` |
//! | `verify-full` | always | chained to `sslrootcert` and naming the host |
//!
//! Combinations that would silently protect less than they say are refused with the reason:
//! `verify-*` without `sslrootcert`, `sslrootcert` with `disable`/`prefer` (which fall back to
//! plain text), a TLS mode over a unix socket (PostgreSQL never speaks TLS there), client
//! certificates (`sslcert`/`sslkey`) and `sslmode=allow`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate checked only when `sslrootcert` is given.
    Require,
    /// TLS with a certificate chained to `sslrootcert`, whatever host it names.
    VerifyCa,
    /// TLS with a certificate chained to `sslrootcert` that names the host connected to.
    VerifyFull,
}

/// A PostgreSQL store URL, parsed: the driver's configuration and the TLS it needs.
pub struct PgTarget {
    /// The driver's configuration, its `ssl_mode` set from [`PgTarget::mode`].
    pub config: postgres::Config,
    /// The mode the URL asked for.
    pub mode: SslMode,
    /// The connector, unless the mode is [`SslMode::Disable`].
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl PgTarget {
    /// Parses `url` (the `postgres://` URL form or libpq's `key=value` form) and builds the
    /// TLS connector its `sslmode` needs (reading `sslrootcert`).
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let (mut config, mode, root_cert) = PgTarget::options(url)?;
        let roots = root_cert.as_deref().map(read_roots).transpose()?;
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        });
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                client_config(mode, roots)?,
            )),
        };
        Ok(PgTarget { config, mode, tls })
    }

    /// Checks `url` as [`PgTarget::parse`] does, without reading `sslrootcert` (a configuration
    /// file is read on hosts that never connect to the database, where that file need not be).
    pub fn check(url: &str) -> Result<(), String> {
        PgTarget::options(url).map(|_| ())
    }

    /// The driver's configuration, the mode, and the root certificate's path.
    fn options(url: &str) -> Result<(postgres::Config, SslMode, Option<String>), String> {
        let (rest, ssl) = take_ssl_options(url)?;
        let config: postgres::Config = rest.parse().map_err(|error| format!("{error}"))?;
        let mode = match ssl.mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some("allow") => {
                return Err(
                    "sslmode=allow (plain first, TLS only if the server insists) is not \
                            supported: use prefer, require, verify-ca or verify-full"
                        .into(),
                );
            }
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        if let Some(option) = ssl.client_certificate {
            return Err(format!(
                "{option}: client certificates are not supported; authenticate with a password \
                 (or the server's other methods) over sslmode=verify-full"
            ));
        }
        let needs_tls = matches!(
            mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        );
        if needs_tls && !config.get_hosts().is_empty() && all_unix_sockets(&config) {
            return Err(format!(
                "sslmode={} over a unix socket: PostgreSQL never speaks TLS there (a local socket \
                 needs none); connect to a host name or address instead, or drop sslmode",
                mode_name(mode)
            ));
        }
        match (&ssl.root_cert, mode) {
            (Some(path), SslMode::Disable | SslMode::Prefer) => {
                return Err(format!(
                    "sslrootcert={path} with sslmode={}: that mode may connect in plain text, so \
                     the certificate would protect nothing; use sslmode=verify-full (or verify-ca)",
                    mode_name(mode)
                ));
            }
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(format!(
                    "sslmode={} needs sslrootcert=PATH, the PEM file of the certificate \
                     authority that signed the server's certificate",
                    mode_name(mode)
                ));
            }
            _ => {}
        }
        Ok((config, mode, ssl.root_cert))
    }

    /// Opens one connection with the TLS the URL asked for.
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// The driver's error with its causes: its own text names only the kind ("error performing TLS
/// handshake"); the reason (an unknown issuer, a name mismatch) is in the sources.
pub fn describe(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn all_unix_sockets(config: &postgres::Config) -> bool {
    config
        .get_hosts()
        .iter()
        .all(|host| matches!(host, postgres::config::Host::Unix(_)))
}

/// The TLS options taken out of a URL.
#[derive(Debug, Default)]
struct SslOptions {
    mode: Option<String>,
    root_cert: Option<String>,
    /// `sslcert` or `sslkey`, when the URL names one.
    client_certificate: Option<String>,
}

/// Splits `sslmode`, `sslrootcert`, `sslcert` and `sslkey` off the URL; the rest is for the
/// driver.
fn take_ssl_options(url: &str) -> Result<(String, SslOptions), String> {
    let mut ssl = SslOptions::default();
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => ssl.mode = Some(value),
            "sslrootcert" => ssl.root_cert = Some(value),
            "sslcert" | "sslkey" => ssl.client_certificate = Some(format!("{key}={value}")),
            _ => return false,
        }
        true
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)?) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ssl));
    }
    // libpq's `key=value` form: these options are taken when unquoted (paths with spaces
    // belong in the URL form, percent-encoded).
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if !value.starts_with('\'') && take(key, value.to_string()) => {}
            _ => kept.push(word),
        }
    }
    Ok((kept.join(" "), ssl))
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let digits = value
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            decoded.push(digits);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

fn read_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read sslrootcert={path}: {error}"))?;
    if certificates.is_empty() {
        return Err(format!("sslrootcert={path} holds no PEM certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| format!("sslrootcert={path}: {error}"))?;
    }
    Ok(roots)
}

fn client_config(
    mode: SslMode,
    roots: Option<rustls::RootCertStore>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(Unchecked { provider }),
        Some(roots) => {
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|error| format!("TLS: {error}"))?;
            if mode == SslMode::VerifyFull {
                chain
            } else {
                Arc::new(AnyName { chain })
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `prefer` and `require` without a root certificate: encryption against a passive listener,
/// no proof of who answers (libpq's meaning of those modes). The handshake's signatures are
/// still checked, so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the name in it is not compared with
/// the host (a certificate authority the user names for this purpose vouches for the server).
#[derive(Debug)]
struct AnyName {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        match PgTarget::parse(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(error) => error,
        }
    }

    #[test]
    fn modes_map_onto_the_driver_and_the_ssl_options_leave_the_url() {
        let plain = PgTarget::parse("postgres://u@db/x?sslmode=disable&application_name=a")
            .expect("disable");
        assert_eq!(plain.mode, SslMode::Disable);
        assert_eq!(plain.config.get_application_name(), Some("a"));
        assert_eq!(
            plain.config.get_ssl_mode(),
            postgres::config::SslMode::Disable
        );
        let default = PgTarget::parse("postgres://u@db/x").expect("default");
        assert_eq!(default.mode, SslMode::Prefer);
        let required = PgTarget::parse("postgres://u@db/x?sslmode=require").expect("require");
        assert_eq!(
            required.config.get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        let key_value = PgTarget::parse("host=db user=u sslmode=require").expect("key=value");
        assert_eq!(key_value.mode, SslMode::Require);
    }

    #[test]
    fn unsupported_or_weak_combinations_are_refused_with_the_reason() {
        assert!(refusal("postgres://u@db/x?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(refusal("postgres://u@db/x?sslmode=verify-ca").contains("needs sslrootcert"));
        assert!(
            refusal("postgres://u@db/x?sslmode=prefer&sslrootcert=/tmp/ca.pem")
                .contains("protect nothing")
        );
        assert!(refusal("postgres://u@db/x?sslmode=allow").contains("not supported"));
        assert!(refusal("postgres://u@db/x?sslmode=bogus").contains("not one of"));
        assert!(
            refusal("postgres://u@db/x?sslmode=require&sslcert=/c.pem")
                .contains("client certificates")
        );
        assert!(
            refusal("postgres://u@%2Frun%2Fpostgresql/x?sslmode=require").contains("unix socket")
        );
        let missing = "postgres://u@db/x?sslmode=verify-full&sslrootcert=%2Fnowhere%2Fca.pem";
        assert!(refusal(missing).contains("cannot read sslrootcert=/nowhere/ca.pem"));
        // A configuration check does not read the file (it may be on the servers' hosts only).
        assert_eq!(PgTarget::check(missing), Ok(()));
        assert!(
            PgTarget::check("postgres://u@db/x?sslmode=verify-ca")
                .is_err_and(|error| error.contains("needs sslrootcert"))
        );
    }
}
