//! PEM material and what is read from it: the serving key, a
//! certificate's end.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::gauge::Gauge;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

/// PEM material of a self-made certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// CAs the API server must trust: the issuing CA first, then the one it
    /// replaced while that is still valid.
    pub ca: String,
    /// The issuing CA's key; missing in Secrets written by older versions.
    pub ca_key: Option<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a usable PEM {kind}: {reason}")]
    Pem {
        what: String,
        kind: &'static str,
        reason: String,
    },
    #[error("Secret {0}: {1}")]
    Secret(String, String),
}

/// The Unix time the served certificate expires (each port exports its own).
pub type ExpiryGauge = Gauge<i64, AtomicI64>;

/// Sets `gauge` to the end of `key`'s certificate (0 if unreadable, which
/// an alert on "expires within N days" also catches).
pub(crate) fn record_expiry(gauge: &ExpiryGauge, key: &CertifiedKey) {
    let end = key.cert.first().and_then(not_after);
    gauge.set(end.map_or(0, |t| t.unix_timestamp()));
}

/// The serving key of a certificate bundle.
pub fn certified_key(bundle: &CertBundle, what: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let pem = |kind: &'static str, reason: String| CertError::Pem {
        what: what.to_string(),
        kind,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem("certificate", "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(bundle.key.as_bytes())
        .map_err(|e| pem("private key", e.to_string()))?;
    let provider = provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| pem("private key", e.to_string()))
}

pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The first certificate of a PEM bundle.
pub fn first_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// When a DER certificate stops being valid; `None` if it cannot be read.
pub fn not_after(der: &CertificateDer<'_>) -> Option<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}
