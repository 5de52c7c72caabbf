//! Direct pod scraping: the aggregator scrapes pods' `/metrics` itself, for
//! pods that carry no agent.
//!
//! Each pod is sampled with the agent's own scrape and extract code
//! ([`wva_agent::sampler::Sampler`]), so a sidecar and a central scrape
//! yield exactly the same numbers. Pods are scraped concurrently up to a
//! limit, each within a timeout; results are kept for a TTL and a read after
//! it returns nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::Uri;
use wva_agent::extract::{Extractor, read_samples};
use wva_agent::filter::Filter;
use wva_agent::sampler::Sampler;
use wva_agent::scrape::{InvalidTarget, InvalidToken, Scraper};
use wva_agent::telemetry::Telemetry;
use wva_agent::tls::TargetTls;
use wva_core::store::PodKey;
use wva_proto::v1::{Role, Sample};

/// Defaults of WVA's `PodScrapingSourceConfig`.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONCURRENT_SCRAPES: usize = 10;
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub ttl: Duration,
    /// Sent as `authorization: Bearer` to every pod.
    pub token: Option<String>,
    pub role: Role,
    /// How https pods are verified.
    pub tls: TargetTls,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            timeout: DEFAULT_SCRAPE_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT_SCRAPES,
            ttl: DEFAULT_TTL,
            token: None,
            role: Role::Vllm,
            tls: TargetTls::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapingError {
    #[error("pod {pod}: {source}")]
    Target { pod: PodKey, source: InvalidTarget },
    #[error(transparent)]
    Token(#[from] InvalidToken),
}

/// One pod to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub pod: PodKey,
    pub url: Uri,
}

struct Scraped {
    sample: Sample,
    at: Instant,
}

pub struct PodScraper {
    config: ScrapeConfig,
    /// One sampler per pod, kept between refreshes for its buffers and sequence.
    samplers: HashMap<PodKey, (Uri, Sampler)>,
    cache: HashMap<PodKey, Scraped>,
    telemetry: Arc<Telemetry>,
}

impl PodScraper {
    pub fn new(config: ScrapeConfig) -> Self {
        PodScraper {
            config,
            samplers: HashMap::new(),
            cache: HashMap::new(),
            telemetry: Arc::new(Telemetry::new()),
        }
    }

    /// Scrapes every target once, at most `max_concurrent` at a time, and
    /// caches the samples; pods no longer targeted are forgotten. A failed
    /// scrape is a sample with `up = false` and the reason, as from an agent.
    pub async fn refresh(&mut self, targets: &[PodTarget]) -> Result<(), ScrapingError> {
        self.samplers
            .retain(|pod, _| targets.iter().any(|t| t.pod == *pod));
        self.cache
            .retain(|pod, _| targets.iter().any(|t| t.pod == *pod));
        let mut batch = Vec::with_capacity(targets.len());
        for target in targets {
            let sampler = match self.samplers.remove(&target.pod) {
                Some((url, sampler)) if url == target.url => sampler,
                _ => self.sampler(target)?,
            };
            batch.push((target.clone(), sampler));
        }
        let timeout = self.config.timeout;
        let mut done = futures::stream::iter(batch)
            .map(|(target, mut sampler)| async move {
                let sample = sampler.sample(timeout).await;
                (target, sampler, sample)
            })
            .buffer_unordered(self.config.max_concurrent.max(1));
        while let Some((target, sampler, sample)) = done.next().await {
            let at = Instant::now();
            self.cache
                .insert(target.pod.clone(), Scraped { sample, at });
            self.samplers.insert(target.pod, (target.url, sampler));
        }
        Ok(())
    }

    fn sampler(&self, target: &PodTarget) -> Result<Sampler, ScrapingError> {
        let mut scraper = Scraper::with_tls(target.url.clone(), MAX_BODY_BYTES, &self.config.tls)
            .map_err(|source| ScrapingError::Target {
            pod: target.pod.clone(),
            source,
        })?;
        if let Some(token) = &self.config.token {
            scraper = scraper.with_token(token)?;
        }
        Ok(Sampler::new(
            scraper,
            Extractor::new(self.config.role),
            // Only the samples read, where the pod serves them filtered
            // (the agent's rules: docs/agent.md, "Filtered scrapes").
            Filter::new(&target.url, read_samples(self.config.role)),
            Arc::clone(&self.telemetry),
        ))
    }

    /// Changes the bearer token (a rotated Secret); the pods' scrapers are
    /// rebuilt with it at the next refresh.
    pub fn set_token(&mut self, token: Option<String>) -> Result<(), ScrapingError> {
        if token != self.config.token {
            if let Some(t) = &token {
                Scraper::check_token(t)?;
            }
            self.config.token = token;
            self.samplers.clear();
        }
        Ok(())
    }

    /// The pod's latest sample while it is younger than the TTL.
    pub fn get(&self, pod: &PodKey, now: Instant) -> Option<&Sample> {
        self.cache
            .get(pod)
            .filter(|s| now.saturating_duration_since(s.at) < self.config.ttl)
            .map(|s| &s.sample)
    }

    /// When the pod's latest sample was taken, if it is cached.
    pub fn scraped_at(&self, pod: &PodKey) -> Option<Instant> {
        self.cache.get(pod).map(|s| s.at)
    }
}

/// Where pods serve their metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    pub scheme: String,
    pub port: u16,
    pub path: String,
}

impl MetricsEndpoint {
    /// WVA's defaults: `http`, `/metrics`.
    pub fn new(port: u16) -> Self {
        MetricsEndpoint {
            scheme: "http".into(),
            port,
            path: "/metrics".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("Service {0} has no selector, so it selects no pods to scrape")]
    NoSelector(String),
    #[error("pod {pod}: {url:?} is not a valid URL")]
    Url { pod: String, url: String },
}

/// The Ready pods `service` selects (same namespace, labels matching its
/// selector, a pod IP), as scrape targets.
pub fn discover(
    service: &k8s_openapi::api::core::v1::Service,
    pods: &[k8s_openapi::api::core::v1::Pod],
    endpoint: &MetricsEndpoint,
) -> Result<Vec<PodTarget>, DiscoveryError> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            let name = service.metadata.name.as_deref().unwrap_or_default();
            DiscoveryError::NoSelector(format!("{namespace}/{name}"))
        })?;
    let mut targets = Vec::new();
    for pod in pods {
        let meta = &pod.metadata;
        if meta.namespace.as_deref() != Some(namespace) || !is_ready(pod) {
            continue;
        }
        let labels = meta.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
            continue;
        };
        let name = meta.name.clone().unwrap_or_default();
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let url = format!(
            "{}://{host}:{}{}",
            endpoint.scheme, endpoint.port, endpoint.path
        );
        let parsed = url.parse().map_err(|_| DiscoveryError::Url {
            pod: name.clone(),
            url: url.clone(),
        })?;
        targets.push(PodTarget {
            pod: PodKey {
                namespace: namespace.to_string(),
                pod: name,
            },
            url: parsed,
        });
    }
    targets.sort_by(|a, b| a.pod.pod.cmp(&b.pod.pod));
    Ok(targets)
}

fn is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The bearer token in `key` of a Secret; a missing Secret or key means no
/// authentication, not an error.
pub fn token_from_secret(
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
    key: &str,
) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    let token = String::from_utf8(bytes.0.clone()).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Secret, Service, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(selector: Option<&[(&str, &str)]>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("epp".into()),
                namespace: Some("llm".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: selector.map(|s| {
                    s.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn pod(name: &str, namespace: &str, app: &str, ready: bool, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([("app".into(), app.into())])),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn only_ready_selected_pods_with_an_ip_in_the_namespace_are_targets() {
        let pods = [
            pod("epp-1", "llm", "epp", true, Some("10.0.0.2")),
            pod("epp-0", "llm", "epp", true, Some("fd00::1")),
            pod("epp-unready", "llm", "epp", false, Some("10.0.0.3")),
            pod("epp-pending", "llm", "epp", true, None),
            pod("other-app", "llm", "vllm", true, Some("10.0.0.4")),
            pod("epp-elsewhere", "other", "epp", true, Some("10.0.0.5")),
        ];
        let targets = discover(
            &service(Some(&[("app", "epp")])),
            &pods,
            &MetricsEndpoint::new(9090),
        )
        .unwrap();
        let urls: Vec<(String, String)> = targets
            .iter()
            .map(|t| (t.pod.pod.clone(), t.url.to_string()))
            .collect();
        assert_eq!(
            urls,
            [
                ("epp-0".into(), "http://[fd00::1]:9090/metrics".into()),
                ("epp-1".into(), "http://10.0.0.2:9090/metrics".into()),
            ]
        );
    }

    #[test]
    fn a_service_without_selector_says_so() {
        let pods = [pod("epp-0", "llm", "epp", true, Some("10.0.0.2"))];
        for selector in [None, Some(&[][..])] {
            let error = discover(&service(selector), &pods, &MetricsEndpoint::new(9090));
            assert_eq!(
                error.unwrap_err().to_string(),
                "Service llm/epp has no selector, so it selects no pods to scrape"
            );
        }
    }

    #[test]
    fn a_missing_secret_or_key_means_no_token() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(b" abc\n".to_vec()),
            )])),
            ..Secret::default()
        };
        assert_eq!(
            token_from_secret(Some(&secret), "token").as_deref(),
            Some("abc")
        );
        assert_eq!(token_from_secret(Some(&secret), "other"), None);
        assert_eq!(token_from_secret(None, "token"), None);
    }
}
