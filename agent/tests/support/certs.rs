//! A throwaway CA issuing the aggregator's and the agent's certificates.
// Shared by several test crates, each of which uses a part.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Name in the aggregator's certificate (not the address it listens on).
pub const SERVER_NAME: &str = "aggregator.wva.test";

pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    ca_pem: String,
    server_cert: String,
    server_key: String,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(name: &str, ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("wva test CA");
        let (server_cert, server_key) = leaf(SERVER_NAME, &ca);
        let (client_cert_pem, client_key_pem) = leaf("agent.wva.test", &ca);
        let write = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            client_cert: write("agent.pem", &client_cert_pem),
            client_key: write("agent-key.pem", &client_key_pem),
            ca_pem: ca.pem(),
            server_cert,
            server_key,
            dir,
        }
    }

    /// Server TLS that also requires a client certificate from this CA.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.server_cert, &self.server_key))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Plain rustls server TLS with the server certificate, no client auth.
    pub fn rustls_server(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    }

    /// A CA file of an unrelated CA.
    pub fn other_ca(&self) -> PathBuf {
        let path = self.dir.path().join("other-ca.pem");
        std::fs::write(&path, new_ca("someone else").pem()).unwrap();
        path
    }
}
