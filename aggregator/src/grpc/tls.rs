//! TLS on the gRPC port, done here rather than by tonic: the certificate is
//! asked of a resolver at every handshake, so a renewed one (a file
//! cert-manager rewrote, or the self-made one) is served without a restart;
//! and each handshake runs on a task of its own under a deadline, so a client
//! that stalls mid-handshake holds up no other.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 512;
/// Pause after a failed `accept()` (out of descriptors, say), doubling to
/// the longest, so the loop neither spins nor stops.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Client certificates the port verifies.
pub struct ClientCertificates {
    pub roots: Vec<CertificateDer<'static>>,
    /// Whether a client may present none (the services then decide).
    pub optional: bool,
}

/// The server configuration: certificates from `certs`, client
/// certificates verified against `clients` when given, HTTP/2 only.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    clients: Option<ClientCertificates>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(wva_certs::provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = RootCertStore::empty();
            for root in clients.roots {
                roots.add(root)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if clients.optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The connections of `listener` once their handshake is done, for tonic's
/// `serve_with_incoming`; ends at shutdown.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            // Until shutdown, or until the server stops taking connections.
            let permit = tokio::select! {
                permit = Arc::clone(&handshakes).acquire_owned() => permit,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(connection) => {
                    backoff = ACCEPT_BACKOFF.0;
                    connection
                }
                // One connection's trouble (it was reset while queued): the
                // next is fine.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    warn!(error = %e, "gRPC port: accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "gRPC port: TLS handshake failed"),
                    Err(_) => debug!(%peer, "gRPC port: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
