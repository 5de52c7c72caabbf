//! wva-webhook: the mutating admission webhook that injects wva-agent into
//! inference pods, its certificates and its HTTPS server. It stands alone: no
//! other part of the aggregator is needed to read or test it.
#![forbid(unsafe_code)]

pub mod ca_bundle;
pub mod injection;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::injection::InjectionConfig;
use wva_certs::{CertFiles, Renewable};

/// How often a self-made certificate is checked: renewed when due (or
/// picked up when another replica renewed it), and its CA put back into the
/// webhook configuration, which a chart upgrade re-renders with an empty
/// `caBundle`.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Where the webhook listens and where its certificate comes from.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    pub injection: PathBuf,
    /// `tls.crt` and `tls.key` kept current by cert-manager, which also
    /// injects the CA; otherwise the aggregator makes them.
    pub cert_dir: Option<PathBuf>,
    /// The Service, Secret and MutatingWebhookConfiguration of a self-made
    /// certificate.
    pub service: String,
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
}

/// Reads the injection configuration and the certificate, binds the port
/// and serves the webhook; a configuration or certificate that cannot be
/// used fails the start.
pub async fn start(
    client: Client,
    settings: WebhookSettings,
    metrics: server::WebhookMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let path = &settings.injection;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the injection configuration {}", path.display()))?;
    let injection = InjectionConfig::parse(&text)
        .map_err(|e| anyhow::anyhow!("injection configuration {}: {e}", path.display()))?;
    let mut tasks = Vec::new();
    let expiry = metrics.certificate_expiry();
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &settings.cert_dir {
        Some(dir) => Arc::new(CertFiles::in_dir(dir, expiry)?),
        None => {
            let names = wva_certs::dns_names(&settings.service, &settings.namespace);
            let bundle = wva_certs::secret::current(
                client.clone(),
                &settings.namespace,
                &settings.secret,
                &names,
            )
            .await?;
            let served = Arc::new(Renewable::new(&bundle, &settings.secret, expiry)?);
            tasks.push(tokio::spawn(keep_certificate_current(
                client,
                settings.clone(),
                Arc::clone(&served),
                shutdown.clone(),
            )));
            served
        }
    };
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the webhook", settings.addr))?;
    info!(addr = %settings.addr, image = %injection.image, "serving the agent-injection webhook");
    tasks.push(tokio::spawn(server::serve(
        listener,
        server::tls_config(resolver),
        Arc::new(injection),
        metrics,
        shutdown,
    )));
    Ok(tasks)
}

/// Every [`CHECK_EVERY`] until shutdown: renews the certificate in the
/// Secret when due, puts its CA into the webhook configuration, then serves
/// it. The CA goes first, so the API server trusts a new certificate before
/// it is served.
async fn keep_certificate_current(
    client: Client,
    settings: WebhookSettings,
    served: Arc<Renewable>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = wva_certs::dns_names(&settings.service, &settings.namespace);
    let mut failing = false;
    loop {
        let round = async {
            let bundle = wva_certs::secret::current(
                client.clone(),
                &settings.namespace,
                &settings.secret,
                &names,
            )
            .await?;
            ca_bundle::publish_ca(client.clone(), &settings.configuration, &bundle.ca).await?;
            if served.renew(&bundle, &settings.secret)? {
                info!(secret = %settings.secret, "serving the renewed webhook certificate");
            }
            anyhow::Ok(())
        };
        match round.await {
            Ok(()) if failing => {
                info!(configuration = %settings.configuration, "the webhook certificate and CA are current again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(error = %e, "cannot keep the webhook certificate current; the API server cannot call the webhook if its CA is not published");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
