//! HTTPS as a kubelet's probes speak it: the server's certificate is not
//! verified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wva_agent::tls::AcceptAnyCertificate;

/// A GET over TLS to `addr`, whatever certificate it shows; returns status
/// and body.
pub async fn get_unverified(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        Duration::from_secs(2),
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await??;
    crate::get_over(tls, addr, path).await
}
