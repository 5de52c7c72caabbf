//! TLS to the aggregator, and to an https scrape target, loaded from PEM
//! files.
//!
//! Files are read again at every connect: cert-manager and projected volumes
//! rotate them in place, and a long-lived agent must pick up the new ones
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no valid PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    #[error("TLS flags need an https:// aggregator URL, not {0}")]
    NeedsHttps(String),
    #[error("aggregator URLs mix http:// and https://: {0}")]
    MixedSchemes(String),
}

/// Where the TLS material lives; `None` fields fall back to defaults.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA bundle for the aggregator's certificate; the system roots otherwise.
    pub ca: Option<PathBuf>,
    /// The CA bundle as PEM text, instead of a file.
    pub ca_pem: Option<String>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name to verify instead of the URL's host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Whether any option is set: with an http:// URL that is a mistake.
    pub fn any_set(&self) -> bool {
        self.ca.is_some()
            || self.ca_pem.is_some()
            || self.client.is_some()
            || self.server_name.is_some()
    }

    /// Reads the files into a tonic client TLS configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new();
        config = match (&self.ca, &self.ca_pem) {
            (Some(path), _) => {
                let pem = read("CA file", path)?;
                config.ca_certificate(Certificate::from_pem(certificates(pem, "CA file", path)?))
            }
            (None, Some(pem)) => {
                let pem = certificates(pem.clone().into_bytes(), "CA", Path::new("--tls-ca-pem"))?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            (None, None) => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client {
            let cert = read_certs("client certificate", cert)?;
            let key = read("client key", key)?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM file that must hold at least one parsable certificate, so a
/// wrong path or a key given as certificate fails here with its name instead
/// of later as an anonymous handshake error.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    certificates(read(what, path)?, what, path)
}

/// `pem` if it holds at least one certificate, and only certificates.
fn certificates(pem: Vec<u8>, what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let mut certs = CertificateDer::pem_slice_iter(&pem);
    let valid = match certs.next() {
        Some(first) => first.is_ok() && certs.all(|c| c.is_ok()),
        None => false,
    };
    if valid {
        Ok(pem)
    } else {
        Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        })
    }
}

/// How to verify an https scrape target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetTls {
    /// CA bundle for the target's certificate; the system roots otherwise.
    pub ca: Option<PathBuf>,
    /// Name to verify instead of the URL's host (pods are reached by IP,
    /// their certificates usually name a Service).
    pub server_name: Option<String>,
    /// Accept any certificate (self-signed pods); for development only.
    pub insecure_skip_verify: bool,
}

impl TargetTls {
    /// The rustls configuration, with the name to verify when overridden.
    pub fn client_config(&self) -> Result<(ClientConfig, Option<ServerName<'static>>), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(self.ca.as_deref())?)
        }
        .with_no_client_auth();
        let server_name = self
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::Config(format!("{name:?} is not a valid server name")))
            })
            .transpose()?;
        Ok((config, server_name))
    }
}

/// The certificates of `ca`, or the system's roots.
pub fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = read_certs("CA file", path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Config(
                    "no CA file is given and the system has no usable root certificates".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks the handshake
/// signatures, for targets whose certificates cannot be verified.
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Makes ring the process-wide rustls provider unless one is installed.
pub fn install_crypto_provider() {
    // An error only means another provider was installed first; keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();

        let err = TlsFiles {
            ca: Some(missing.clone()),
            ..Default::default()
        }
        .load()
        .unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "CA file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = TlsFiles {
            ca: Some(not_pem),
            ..Default::default()
        }
        .load()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "CA file {} holds no valid PEM certificate",
                dir.path().join("ca.pem").display()
            )
        );
    }
}
