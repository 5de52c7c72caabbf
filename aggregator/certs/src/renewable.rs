//! A self-made certificate served while it may be renewed.

use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::bundle::{CertBundle, CertError, ExpiryGauge, certified_key, record_expiry};

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

#[cfg(test)]
mod tests {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use time::OffsetDateTime;

    use super::*;
    use crate::bundle::provider;
    use crate::issue::{self, Plan, issue};

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
        let names = vec![
            "wva-webhook.wva-system.svc".to_string(),
            "wva-webhook.wva-system.svc.cluster.local".to_string(),
        ];
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
        let names = vec![
            "wva-webhook.wva-system.svc".to_string(),
            "wva-webhook.wva-system.svc.cluster.local".to_string(),
        ];
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
