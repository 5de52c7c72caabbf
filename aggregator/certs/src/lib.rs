//! wva-certs: the serving certificates of the aggregator's TLS ports (the
//! webhook, gRPC). Either files that cert-manager (or an operator) keeps
//! current, read again when they change, or a CA and certificate the
//! aggregator makes itself, renews before they end and shares between its
//! replicas through a Secret.
#![forbid(unsafe_code)]

mod bundle;
mod files;
pub mod issue;
mod keep;
mod renewable;
pub mod secret;

pub use self::bundle::{
    CertBundle, CertError, ExpiryGauge, certified_key, first_certificate, not_after, provider,
};
pub use self::files::CertFiles;
pub use self::keep::{Kept, serve_self_made};
pub use self::renewable::Renewable;

/// The names a Service in `namespace` is called by inside the cluster.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}
