//! Pod scraping as a metrics source in a cluster: the Ready pods a Service
//! selects, scraped directly by the aggregator.
//!
//! The VariantAutoscaling names the Service and where its pods serve metrics
//! with annotations; each poll reads the Service and its pods from the API
//! (no cache to go stale) and scrapes them with [`PodScraper`].

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::Mutex;
use wva_proto::v1::ModelSignals;

use crate::scraping::{self, MetricsEndpoint, PodScraper, ScrapeConfig};
use crate::sources::{PolledSource, SourceKind};
use crate::variants::{VariantAutoscaling, VariantKey};

pub const SERVICE_ANNOTATION: &str = "wva.llmd.ai/metrics-service";
pub const PORT_ANNOTATION: &str = "wva.llmd.ai/metrics-port";
pub const PATH_ANNOTATION: &str = "wva.llmd.ai/metrics-path";
pub const SCHEME_ANNOTATION: &str = "wva.llmd.ai/metrics-scheme";
/// `name` (in the VA's namespace) or `namespace/name`.
pub const SECRET_ANNOTATION: &str = "wva.llmd.ai/metrics-reader-secret";
pub const SECRET_KEY_ANNOTATION: &str = "wva.llmd.ai/metrics-reader-secret-key";
/// vLLM's port.
pub const DEFAULT_PORT: u16 = 8000;

pub struct PodScrapingSource {
    client: Client,
    config: ScrapeConfig,
    /// One scraper per variant, for its connections, buffers and cache.
    scrapers: Mutex<HashMap<VariantKey, PodScraper>>,
}

impl PodScrapingSource {
    /// `config.token`, when set, wins over any Secret.
    pub fn new(client: Client, config: ScrapeConfig) -> Self {
        PodScrapingSource {
            client,
            config,
            scrapers: Mutex::default(),
        }
    }

    async fn token(&self, va: &VariantAutoscaling) -> Result<Option<String>, String> {
        if let Some(token) = &self.config.token {
            return Ok(Some(token.clone()));
        }
        let Some(reference) = va.annotations.get(SECRET_ANNOTATION) else {
            return Ok(None);
        };
        let (namespace, name) = reference
            .split_once('/')
            .unwrap_or((va.namespace.as_str(), reference.as_str()));
        let key = va
            .annotations
            .get(SECRET_KEY_ANNOTATION)
            .map_or("token", String::as_str);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?;
        // A missing Secret (or key) means no authentication, not an error.
        Ok(scraping::token_from_secret(secret.as_ref(), key))
    }
}

/// Where the variant's pods serve metrics, from its annotations.
fn endpoint(va: &VariantAutoscaling) -> Result<(String, MetricsEndpoint), String> {
    let service = va
        .annotations
        .get(SERVICE_ANNOTATION)
        .ok_or_else(|| format!("annotation {SERVICE_ANNOTATION} names no Service"))?;
    let port = match va.annotations.get(PORT_ANNOTATION) {
        None => DEFAULT_PORT,
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("annotation {PORT_ANNOTATION}={p:?} is not a port"))?,
    };
    let mut endpoint = MetricsEndpoint::new(port);
    if let Some(path) = va.annotations.get(PATH_ANNOTATION) {
        endpoint.path = path.clone();
    }
    if let Some(scheme) = va.annotations.get(SCHEME_ANNOTATION) {
        endpoint.scheme = scheme.clone();
    }
    Ok((service.clone(), endpoint))
}

#[tonic::async_trait]
impl PolledSource for PodScrapingSource {
    fn kind(&self) -> SourceKind {
        SourceKind::PodScraping
    }

    async fn poll(&self, va: &VariantAutoscaling) -> Result<Vec<(String, ModelSignals)>, String> {
        let (service_name, endpoint) = endpoint(va)?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &va.namespace);
        let service = services
            .get(&service_name)
            .await
            .map_err(|e| format!("cannot read Service {}/{service_name}: {e}", va.namespace))?;
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map(|s| {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let pods: Vec<Pod> = if selector.is_empty() {
            Vec::new()
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &va.namespace);
            api.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("cannot list the pods of Service {service_name}: {e}"))?
                .items
        };
        let targets = scraping::discover(&service, &pods, &endpoint).map_err(|e| e.to_string())?;
        let token = self.token(va).await?;
        let mut scrapers = self.scrapers.lock().await;
        let scraper = scrapers.entry(va.key()).or_insert_with(|| {
            PodScraper::new(ScrapeConfig {
                token: token.clone(),
                ..self.config.clone()
            })
        });
        scraper.set_token(token).map_err(|e| e.to_string())?;
        scraper.refresh(&targets).await.map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        Ok(targets
            .iter()
            .filter_map(|t| {
                let sample = scraper.get(&t.pod, now)?;
                let signals = sample.models.iter().find(|m| m.model == va.model_id)?;
                sample.up.then(|| (t.pod.pod.clone(), signals.clone()))
            })
            .collect())
    }
}
