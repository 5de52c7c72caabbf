//! TLS to the aggregator, loaded from PEM files.
//!
//! Files are read again at every connect: cert-manager and projected volumes
//! rotate them in place, and a long-lived agent must pick up the new ones
//! without a restart.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
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
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name to verify instead of the URL's host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Reads the files into a tonic client TLS configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(path) => {
                config.ca_certificate(Certificate::from_pem(read_certs("CA file", path)?))
            }
            None => config.with_native_roots(),
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
    let pem = read(what, path)?;
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
