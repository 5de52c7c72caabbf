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
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::injection::InjectionConfig;
use wva_certs::{CertFiles, Kept};

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
    /// The CA agents are to trust for the aggregator's gRPC certificate,
    /// kept current; injected with the agent when set.
    pub agent_ca: Option<watch::Receiver<Option<String>>>,
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
            let kept = Kept {
                client: client.clone(),
                namespace: settings.namespace.clone(),
                name: settings.secret.clone(),
                names: wva_certs::dns_names(&settings.service, &settings.namespace),
                what: "the webhook",
            };
            // The CA goes into the webhook configuration before a
            // certificate it signed is served.
            let configuration = settings.configuration.clone();
            let publish = move |bundle: wva_certs::CertBundle| {
                let (client, configuration) = (client.clone(), configuration.clone());
                async move {
                    ca_bundle::publish_ca(client, &configuration, &bundle.ca)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let (served, _, task) =
                wva_certs::serve_self_made(kept, expiry, CHECK_EVERY, publish, shutdown.clone())
                    .await?;
            tasks.push(tokio::spawn(async move { Ok(task.await?) }));
            served
        }
    };
    let image = injection.image.clone();
    // Seeded with the CA already known, so no pod is injected without it.
    let current_ca = settings
        .agent_ca
        .as_ref()
        .and_then(|ca| ca.borrow().clone());
    let (config, injection_config) = watch::channel(Arc::new(InjectionConfig {
        aggregator_ca: current_ca,
        ..injection.clone()
    }));
    if let Some(mut agent_ca) = settings.agent_ca.clone() {
        // Agents injected from now on trust the aggregator's current CA.
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let ca = agent_ca.borrow_and_update().clone();
                config.send_replace(Arc::new(InjectionConfig {
                    aggregator_ca: ca,
                    ..injection.clone()
                }));
                tokio::select! {
                    changed = agent_ca.changed() => if changed.is_err() { return Ok(()) },
                    _ = stop.cancelled() => return Ok(()),
                }
            }
        }));
    }
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the webhook", settings.addr))?;
    info!(addr = %settings.addr, %image, "serving the agent-injection webhook");
    tasks.push(tokio::spawn(server::serve(
        listener,
        server::tls_config(resolver),
        injection_config,
        metrics,
        shutdown,
    )));
    Ok(tasks)
}
