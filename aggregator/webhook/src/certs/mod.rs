//! The webhook's serving certificate: files that cert-manager keeps
//! current, or a CA and certificate the aggregator makes itself, renews
//! before they expire, shares between its replicas through a Secret, and
//! hands to the API server as the webhook configuration's `caBundle`.

mod dir;
pub mod issue;
pub mod secret;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use self::dir::CertDir;

/// PEM material of the webhook's certificate.
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
    #[error("cannot make the webhook certificate: {0}")]
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
    #[error("MutatingWebhookConfiguration {0}: {1}")]
    Configuration(String, String),
}

/// The Unix time the served certificate expires, exported as
/// `wva_webhook_certificate_expiry_timestamp_seconds`.
pub type ExpiryGauge = Gauge<i64, AtomicI64>;

/// Sets `gauge` to the end of `key`'s certificate (0 if unreadable, which
/// an alert on "expires within N days" also catches).
fn record_expiry(gauge: &ExpiryGauge, key: &CertifiedKey) {
    let end = key.cert.first().and_then(issue::not_after);
    gauge.set(end.map_or(0, |t| t.unix_timestamp()));
}

/// The names the API server may call the webhook Service by.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
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

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A self-made certificate, replaced in place when renewed: connections
/// already open keep theirs, new ones get the new one.
#[derive(Debug)]
pub struct Renewable {
    /// The certificate's PEM (to tell a renewal) and its serving key.
    current: Mutex<(String, Arc<CertifiedKey>)>,
    expiry: ExpiryGauge,
}

impl Renewable {
    pub fn new(bundle: &CertBundle, what: &str, expiry: ExpiryGauge) -> Result<Self, CertError> {
        let key = certified_key(bundle, what)?;
        record_expiry(&expiry, &key);
        Ok(Renewable {
            current: Mutex::new((bundle.cert.clone(), key)),
            expiry,
        })
    }

    /// Serves `bundle` from now on; returns whether it differs from the
    /// certificate served so far.
    pub fn renew(&self, bundle: &CertBundle, what: &str) -> Result<bool, CertError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == bundle.cert {
            return Ok(false);
        }
        let key = certified_key(bundle, what)?;
        record_expiry(&self.expiry, &key);
        *current = (bundle.cert.clone(), key);
        Ok(true)
    }
}

impl ResolvesServerCert for Renewable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(&current.1))
    }
}

/// The server TLS configuration for a certificate source.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use time::OffsetDateTime;

    use super::issue::{Plan, issue};
    use super::*;

    /// Whether a client trusting `ca_bundle` accepts `bundle`'s certificate as `name`.
    fn trusted(ca_bundle: &str, bundle: &CertBundle, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                .build()
                .unwrap();
        let key = certified_key(bundle, "test").unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&key.cert[0], &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_made_certificate_is_trusted_for_the_service_names_only() {
        let names = dns_names("wva-webhook", "wva-system");
        let bundle = issue(Plan::NewCa, None, &names, OffsetDateTime::now_utc()).unwrap();
        for name in [
            "wva-webhook.wva-system.svc",
            "wva-webhook.wva-system.svc.cluster.local",
        ] {
            assert!(trusted(&bundle.ca, &bundle, name), "{name}");
        }
        assert!(!trusted(&bundle.ca, &bundle, "other.wva-system.svc"));
    }

    #[test]
    fn renewals_stay_trusted_by_the_published_bundle() {
        let names = dns_names("wva-webhook", "wva-system");
        let name = "wva-webhook.wva-system.svc";
        let now = OffsetDateTime::now_utc();
        let first = issue(Plan::NewCa, None, &names, now).unwrap();
        // A renewed certificate needs no new caBundle.
        let renewed = issue(Plan::NewLeaf, Some(&first), &names, now).unwrap();
        assert!(trusted(&first.ca, &renewed, name));
        // After a new CA, the new bundle trusts both the new certificate and
        // the one replicas may still serve until they pick the new one up.
        let new_ca = issue(Plan::NewCa, Some(&renewed), &names, now).unwrap();
        assert!(trusted(&new_ca.ca, &new_ca, name));
        assert!(trusted(&new_ca.ca, &renewed, name));
        assert!(!trusted(&first.ca, &new_ca, name));
    }

    #[test]
    fn a_renewable_certificate_is_swapped_and_its_expiry_exported() {
        let names = vec!["a.wva.test".to_string()];
        let now = OffsetDateTime::now_utc();
        let first = issue(Plan::NewCa, None, &names, now).unwrap();
        let expiry = ExpiryGauge::default();
        let served = Renewable::new(&first, "first", expiry.clone()).unwrap();
        let end = (now + issue::LEAF_LIFETIME).unix_timestamp();
        assert_eq!(expiry.get(), end);
        assert!(!served.renew(&first, "same").unwrap(), "nothing new");
        let later = now + time::Duration::days(300);
        let second = issue(Plan::NewLeaf, Some(&first), &names, later).unwrap();
        assert!(served.renew(&second, "second").unwrap());
        assert_eq!(
            expiry.get(),
            (later + issue::LEAF_LIFETIME).unix_timestamp()
        );
        let current = served.current.lock().unwrap().1.cert[0].clone();
        assert_eq!(current, certified_key(&second, "second").unwrap().cert[0]);
    }
}
