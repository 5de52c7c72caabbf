//! Pod scraping as a metrics source in a cluster: the Ready pods a Service
//! selects, scraped directly by the aggregator.
//!
//! The VariantAutoscaling names, with annotations, the Service of its pods
//! and where they serve metrics, and likewise its endpoint picker's; each
//! poll reads the Service and its pods from the API (no cache to go stale)
//! and scrapes them with [`PodScraper`].

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::Mutex;
use wva_core::sources::{EPP_SERVICE_ANNOTATION, PolledPod, PolledSource, SourceKind};
use wva_core::variants::Variant;
use wva_proto::v1::Role;

use crate::scraping::{self, MetricsEndpoint, PodScraper, ScrapeConfig};

/// Where a kind of pod serves its metrics, by annotation on the variant.
struct Annotations {
    service: &'static str,
    port: &'static str,
    path: &'static str,
    scheme: &'static str,
    /// `name` (in the VA's namespace) or `namespace/name`.
    secret: &'static str,
    secret_key: &'static str,
    default_port: u16,
    role: Role,
}

/// The variant's own (vLLM) pods.
const SERVING: Annotations = Annotations {
    service: "wva.llmd.ai/metrics-service",
    port: "wva.llmd.ai/metrics-port",
    path: "wva.llmd.ai/metrics-path",
    scheme: "wva.llmd.ai/metrics-scheme",
    secret: "wva.llmd.ai/metrics-reader-secret",
    secret_key: "wva.llmd.ai/metrics-reader-secret-key",
    default_port: 8000,
    role: Role::Vllm,
};

/// The pods of the variant's endpoint picker.
const PICKER: Annotations = Annotations {
    service: EPP_SERVICE_ANNOTATION,
    port: "wva.llmd.ai/epp-metrics-port",
    path: "wva.llmd.ai/epp-metrics-path",
    scheme: "wva.llmd.ai/epp-metrics-scheme",
    secret: "wva.llmd.ai/epp-metrics-reader-secret",
    secret_key: "wva.llmd.ai/epp-metrics-reader-secret-key",
    default_port: 9090,
    role: Role::Epp,
};

/// A Service's pods of one role; pods of one Service share a scraper.
type ScraperKey = (String, String, Role);

pub struct PodScrapingSource {
    client: Client,
    config: ScrapeConfig,
    /// One scraper per Service and role, for its connections, buffers and
    /// cache; each locked on its own so Services are scraped concurrently.
    scrapers: Mutex<HashMap<ScraperKey, Arc<Mutex<PodScraper>>>>,
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

    async fn token(&self, va: &Variant, names: &Annotations) -> Result<Option<String>, String> {
        if let Some(token) = &self.config.token {
            return Ok(Some(token.clone()));
        }
        let Some(reference) = va.annotations.get(names.secret) else {
            return Ok(None);
        };
        let (namespace, name) = reference
            .split_once('/')
            .unwrap_or((va.namespace.as_str(), reference.as_str()));
        let key = va
            .annotations
            .get(names.secret_key)
            .map_or("token", String::as_str);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?;
        // A missing Secret (or key) means no authentication, not an error.
        Ok(scraping::token_from_secret(secret.as_ref(), key))
    }

    /// Scrapes the Ready pods of the Service `names` point at.
    async fn scrape(&self, va: &Variant, names: &Annotations) -> Result<Vec<PolledPod>, String> {
        let (service_name, endpoint) = endpoint(va, names)?;
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
        let token = self.token(va, names).await?;
        let scraper = {
            let key = (va.namespace.clone(), service_name, names.role);
            let mut scrapers = self.scrapers.lock().await;
            let scraper = scrapers.entry(key).or_insert_with(|| {
                Arc::new(Mutex::new(PodScraper::new(ScrapeConfig {
                    token: token.clone(),
                    role: names.role,
                    ..self.config.clone()
                })))
            });
            Arc::clone(scraper)
        };
        let mut scraper = scraper.lock().await;
        scraper.set_token(token).map_err(|e| e.to_string())?;
        scraper.refresh(&targets).await.map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        Ok(targets
            .iter()
            .filter_map(|t| {
                let sample = scraper.get(&t.pod, now).filter(|s| s.up)?;
                let mut sample = sample.clone();
                if names.role == Role::Vllm {
                    // Only the variant's model counts, as from Prometheus.
                    sample.models.retain(|m| m.model == va.model_id);
                    if sample.models.is_empty() {
                        return None;
                    }
                }
                Some(PolledPod {
                    pod: t.pod.pod.clone(),
                    role: names.role,
                    sample,
                })
            })
            .collect())
    }
}

/// Where the pods serve metrics, from the variant's annotations.
fn endpoint(va: &Variant, names: &Annotations) -> Result<(String, MetricsEndpoint), String> {
    let service = va
        .annotations
        .get(names.service)
        .ok_or_else(|| format!("annotation {} names no Service", names.service))?;
    let port = match va.annotations.get(names.port) {
        None => names.default_port,
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("annotation {}={p:?} is not a port", names.port))?,
    };
    let mut endpoint = MetricsEndpoint::new(port);
    if let Some(path) = va.annotations.get(names.path) {
        endpoint.path = path.clone();
    }
    if let Some(scheme) = va.annotations.get(names.scheme) {
        match scheme.trim() {
            "http" | "https" => endpoint.scheme = scheme.trim().to_string(),
            other => {
                return Err(format!(
                    "annotation {}={other:?} is not http or https",
                    names.scheme
                ));
            }
        }
    }
    Ok((service.clone(), endpoint))
}

#[async_trait::async_trait]
impl PolledSource for PodScrapingSource {
    fn kind(&self) -> SourceKind {
        SourceKind::PodScraping
    }

    async fn poll(&self, va: &Variant) -> Result<Vec<PolledPod>, String> {
        self.scrape(va, &SERVING).await
    }

    async fn poll_epp(&self, va: &Variant) -> Result<Vec<PolledPod>, String> {
        self.scrape(va, &PICKER).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn va(annotations: &[(&str, &str)]) -> Variant {
        wva_core::testing::variant(annotations)
    }

    #[test]
    fn serving_pods_and_pickers_have_their_own_annotations_and_default_ports() {
        let va = va(&[
            ("wva.llmd.ai/metrics-service", "chat-metrics"),
            ("wva.llmd.ai/metrics-scheme", "https"),
            ("wva.llmd.ai/epp-service", "gateway-epp"),
            ("wva.llmd.ai/epp-metrics-path", "/stats"),
        ]);
        let (service, serving) = endpoint(&va, &SERVING).unwrap();
        assert_eq!(service, "chat-metrics");
        assert_eq!((serving.scheme.as_str(), serving.port), ("https", 8000));
        let (service, picker) = endpoint(&va, &PICKER).unwrap();
        assert_eq!(service, "gateway-epp");
        assert_eq!(
            (picker.scheme.as_str(), picker.port, picker.path.as_str()),
            ("http", 9090, "/stats")
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let missing = endpoint(&va(&[]), &PICKER).unwrap_err();
        assert_eq!(
            missing,
            "annotation wva.llmd.ai/epp-service names no Service"
        );
        let scheme = endpoint(
            &va(&[
                ("wva.llmd.ai/metrics-service", "s"),
                ("wva.llmd.ai/metrics-scheme", "ftp"),
            ]),
            &SERVING,
        )
        .unwrap_err();
        assert_eq!(
            scheme,
            "annotation wva.llmd.ai/metrics-scheme=\"ftp\" is not http or https"
        );
        let port = endpoint(
            &va(&[
                ("wva.llmd.ai/epp-service", "s"),
                ("wva.llmd.ai/epp-metrics-port", "http"),
            ]),
            &PICKER,
        )
        .unwrap_err();
        assert_eq!(
            port,
            "annotation wva.llmd.ai/epp-metrics-port=\"http\" is not a port"
        );
    }
}
