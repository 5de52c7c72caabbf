//! wva-webhook: the mutating admission webhook that injects wva-agent into
//! inference pods, its certificates and its HTTPS server. It stands alone: no
//! other part of the aggregator is needed to read or test it.
#![forbid(unsafe_code)]

pub mod certs;
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

use self::certs::CertDir;
use self::injection::InjectionConfig;

/// How often a self-made CA is checked in the webhook configuration: an
/// upgrade of the chart re-renders it with an empty `caBundle`.
const REPUBLISH: Duration = Duration::from_secs(30);

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
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &settings.cert_dir {
        Some(dir) => Arc::new(CertDir::load(dir)?),
        None => {
            let names = certs::dns_names(&settings.service, &settings.namespace);
            let bundle = certs::shared_bundle(
                client.clone(),
                &settings.namespace,
                &settings.secret,
                &names,
            )
            .await?;
            let key = certs::certified_key(&bundle, &settings.secret)?;
            tasks.push(tokio::spawn(keep_ca_published(
                client,
                settings.configuration.clone(),
                bundle.ca,
                shutdown.clone(),
            )));
            Arc::new(rustls::sign::SingleCertAndKey::from(key))
        }
    };
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the webhook", settings.addr))?;
    info!(addr = %settings.addr, image = %injection.image, "serving the agent-injection webhook");
    tasks.push(tokio::spawn(server::serve(
        listener,
        certs::server_config(resolver),
        Arc::new(injection),
        metrics,
        shutdown,
    )));
    Ok(tasks)
}

/// Puts the CA into the webhook configuration, and again whenever it is
/// overwritten, until shutdown.
async fn keep_ca_published(
    client: Client,
    configuration: String,
    ca: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut failing = false;
    loop {
        match certs::publish_ca(client.clone(), &configuration, &ca).await {
            Ok(()) if failing => {
                info!(%configuration, "the webhook CA is published again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(error = %e, "cannot publish the webhook CA; the API server cannot call the webhook until it is");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(REPUBLISH) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
