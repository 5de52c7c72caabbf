//! Where a variant's signals come from.
//!
//! Agents push their pods' samples into the pod store. A variant may instead
//! name a polled source with the annotation `wva.llmd.ai/metrics-source`
//! (`agent`, the default, `pod-scraping` or `prometheus`); the [`Poller`] then asks that
//! source for the variant's pods at every poll and puts the answers into the
//! same pod store, as samples of the same shape, so the analysis reads every
//! source alike.
//!
//! Order of precedence for one pod: an agent's stream wins over a polled
//! source (a polled sample never replaces a streaming pod's); a pod that no
//! source reports fresh data for leaves the analysis, and a variant with no
//! fresh data is held by the safety net.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};
use wva_proto::v1::{Counters, Hello, ModelSignals, Role, Sample};

use crate::prometheus::{PodSignals, PrometheusClient};
use crate::promql::Namespace;
use crate::service::Variants;
use crate::store::{PodKey, PodStore};
use crate::trigger::Trigger;
use crate::variants::{VariantAutoscaling, VariantKey};

pub const SOURCE_ANNOTATION: &str = "wva.llmd.ai/metrics-source";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Agent,
    PodScraping,
    Prometheus,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Agent => "agent",
            SourceKind::PodScraping => "pod-scraping",
            SourceKind::Prometheus => "prometheus",
        }
    }

    /// The source a variant's annotation names; an unknown name is an error
    /// that names the accepted ones.
    pub fn of(va: &VariantAutoscaling) -> Result<SourceKind, String> {
        match va.annotations.get(SOURCE_ANNOTATION).map(|s| s.trim()) {
            None | Some("agent") => Ok(SourceKind::Agent),
            Some("pod-scraping") => Ok(SourceKind::PodScraping),
            Some("prometheus") => Ok(SourceKind::Prometheus),
            Some(other) => Err(format!(
                "annotation {SOURCE_ANNOTATION}={other:?} names no source (agent, pod-scraping, prometheus)"
            )),
        }
    }
}

/// A source asked for a variant's pods.
#[tonic::async_trait]
pub trait PolledSource: Send + Sync + 'static {
    fn kind(&self) -> SourceKind;
    /// The variant's pods and their signals for its model, now.
    async fn poll(&self, va: &VariantAutoscaling) -> Result<Vec<(String, ModelSignals)>, String>;
}

#[tonic::async_trait]
impl PolledSource for PrometheusClient {
    fn kind(&self) -> SourceKind {
        SourceKind::Prometheus
    }

    async fn poll(&self, va: &VariantAutoscaling) -> Result<Vec<(String, ModelSignals)>, String> {
        let namespace = Namespace::parse(&va.namespace).map_err(|e| e.to_string())?;
        let pods = self
            .pod_signals(&namespace, &va.model_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pods
            .into_iter()
            .map(|(pod, s)| (pod, signals(&va.model_id, &s)))
            .collect())
    }
}

/// Prometheus' answer in the agents' shape; a signal Prometheus lacks is 0.
fn signals(model: &str, s: &PodSignals) -> ModelSignals {
    ModelSignals {
        model: model.to_string(),
        kv_cache_usage: s.kv_cache_usage.unwrap_or(0.0),
        requests_waiting: s.requests_waiting.unwrap_or(0.0),
        requests_running: s.requests_running.unwrap_or(0.0),
        counters: Some(Counters {
            request_success: s.request_success.unwrap_or(0.0),
            ..Counters::default()
        }),
        ..ModelSignals::default()
    }
}

/// Stream ids of polled pods live above the agents' (which count up from 1).
const POLLED_IDS: u64 = 1 << 63;

/// Polls the sources of the variants that name one.
pub struct Poller {
    store: Arc<PodStore>,
    trigger: Arc<Trigger>,
    sources: HashMap<SourceKind, Arc<dyn PolledSource>>,
    interval: Duration,
    /// The pods this poller put in the store: their stream ids and variants.
    polled: HashMap<PodKey, (u64, VariantKey)>,
    next_id: u64,
    seq: u64,
    /// Variants whose last poll failed, and why; published for status.
    failing: HashMap<VariantKey, SourceFailure>,
    failures: watch::Sender<Failures>,
}

/// Why a variant's polled source gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceFailure {
    pub source: &'static str,
    pub error: String,
}

/// The current failures of polled sources, by variant.
pub type Failures = Arc<HashMap<VariantKey, SourceFailure>>;

impl Poller {
    pub fn new(
        store: Arc<PodStore>,
        trigger: Arc<Trigger>,
        sources: Vec<Arc<dyn PolledSource>>,
        interval: Duration,
        failures: watch::Sender<Failures>,
    ) -> Self {
        Poller {
            store,
            trigger,
            sources: sources.into_iter().map(|s| (s.kind(), s)).collect(),
            interval,
            polled: HashMap::new(),
            next_id: POLLED_IDS,
            seq: 0,
            failing: HashMap::new(),
            failures,
        }
    }

    pub async fn run(
        mut self,
        variants: watch::Receiver<Variants>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        loop {
            let current = variants.borrow().clone();
            self.poll_once(&current).await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
            }
        }
    }

    /// Polls every variant with a polled source once and updates the store.
    pub async fn poll_once(&mut self, variants: &[VariantAutoscaling]) {
        self.seq += 1;
        let mut seen = HashSet::new();
        for va in variants {
            let kind = match SourceKind::of(va) {
                Ok(SourceKind::Agent) => continue,
                Ok(kind) => kind,
                Err(e) => {
                    self.failed(va, "annotation", e);
                    continue;
                }
            };
            let Some(source) = self.sources.get(&kind).cloned() else {
                let e = format!("source {} is not configured", kind.as_str());
                self.failed(va, kind.as_str(), e);
                continue;
            };
            match source.poll(va).await {
                Ok(pods) => {
                    if self.failing.remove(&va.key()).is_some() {
                        info!(variant = %va.key(), source = kind.as_str(), "metrics source answers again");
                    }
                    for (pod, signals) in pods {
                        let key = PodKey {
                            namespace: va.namespace.clone(),
                            pod,
                        };
                        if self.offer(va, &key, signals) {
                            seen.insert(key);
                        }
                    }
                }
                // The pods stay until their samples go stale: the safety net
                // then holds the variant.
                Err(e) => {
                    let variant = va.key();
                    seen.extend(
                        self.polled
                            .iter()
                            .filter(|(_, (_, v))| *v == variant)
                            .map(|(k, _)| k.clone()),
                    );
                    self.failed(va, kind.as_str(), e);
                }
            }
        }
        let live: HashSet<VariantKey> = variants.iter().map(VariantAutoscaling::key).collect();
        self.failing.retain(|k, _| live.contains(k));
        let current = Arc::new(self.failing.clone());
        self.failures.send_if_modified(|f| {
            let changed = **f != *current;
            if changed {
                *f = current;
            }
            changed
        });
        let gone: Vec<(PodKey, u64)> = self
            .polled
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(k, (id, _))| (k.clone(), *id))
            .collect();
        for (key, id) in gone {
            self.polled.remove(&key);
            if self.store.remove(&key, id) {
                self.trigger.fire(Instant::now());
            }
        }
    }

    /// Puts one polled sample in the store unless an agent streams for the
    /// pod; returns whether it did.
    fn offer(&mut self, va: &VariantAutoscaling, key: &PodKey, signals: ModelSignals) -> bool {
        let now = Instant::now();
        let id = match self.polled.get(key) {
            Some((id, _)) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let hello = Hello {
                    pod: key.pod.clone(),
                    namespace: key.namespace.clone(),
                    role: Role::Vllm as i32,
                    models: vec![va.model_id.clone()],
                    variant: va.target.name.clone(),
                    ..Hello::default()
                };
                if !self.store.claim(key.clone(), id, hello, now) {
                    return false;
                }
                self.polled.insert(key.clone(), (id, va.key()));
                id
            }
        };
        let sample = Sample {
            seq: self.seq,
            up: true,
            scraped_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            models: vec![signals],
            ..Sample::default()
        };
        match self.store.offer(key, id, sample, now) {
            crate::store::Offer::Accepted => {
                self.trigger.fire(now);
                true
            }
            // An agent took the pod over meanwhile: it wins.
            _ => {
                self.polled.remove(key);
                false
            }
        }
    }

    fn failed(&mut self, va: &VariantAutoscaling, source: &'static str, error: String) {
        let failure = SourceFailure { source, error };
        if self.failing.get(&va.key()) != Some(&failure) {
            warn!(variant = %va.key(), source, error = %failure.error, "metrics source failed; the safety net holds the variant when its data goes stale");
            self.failing.insert(va.key(), failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::variants::ScaleTarget;

    /// A source answering what the test sets.
    struct Scripted(Mutex<Result<Vec<String>, String>>);

    impl Default for Scripted {
        fn default() -> Self {
            Scripted(Mutex::new(Ok(Vec::new())))
        }
    }

    impl Scripted {
        fn answer(&self, answer: Result<&[&str], &str>) {
            *self.0.lock().unwrap() = answer
                .map(|pods| pods.iter().map(|p| p.to_string()).collect())
                .map_err(str::to_string);
        }
    }

    #[tonic::async_trait]
    impl PolledSource for Scripted {
        fn kind(&self) -> SourceKind {
            SourceKind::Prometheus
        }
        async fn poll(
            &self,
            va: &VariantAutoscaling,
        ) -> Result<Vec<(String, ModelSignals)>, String> {
            let pods = self.0.lock().unwrap().clone()?;
            Ok(pods
                .into_iter()
                .map(|p| {
                    let s = ModelSignals {
                        model: va.model_id.clone(),
                        requests_waiting: 2.0,
                        ..ModelSignals::default()
                    };
                    (p, s)
                })
                .collect())
        }
    }

    fn va(source: Option<&str>) -> VariantAutoscaling {
        VariantAutoscaling {
            name: "chat".into(),
            namespace: "llm".into(),
            model_id: "m".into(),
            target: ScaleTarget {
                kind: "Deployment".into(),
                name: "chat-deploy".into(),
                api_version: None,
            },
            cost: 10.0,
            accelerator: String::new(),
            labels: BTreeMap::new(),
            annotations: source
                .map(|s| BTreeMap::from([(SOURCE_ANNOTATION.to_string(), s.to_string())]))
                .unwrap_or_default(),
        }
    }

    fn key(pod: &str) -> PodKey {
        PodKey {
            namespace: "llm".into(),
            pod: pod.into(),
        }
    }

    fn setup() -> (Poller, Arc<Scripted>, Arc<PodStore>) {
        let store = Arc::new(PodStore::default());
        let source = Arc::new(Scripted::default());
        let poller = Poller::new(
            Arc::clone(&store),
            Arc::default(),
            vec![source.clone() as Arc<dyn PolledSource>],
            Duration::from_secs(1),
            watch::channel(Failures::default()).0,
        );
        (poller, source, store)
    }

    fn pods(store: &PodStore) -> Vec<(String, String)> {
        let mut pods = store.with_pods(|p| {
            p.iter()
                .map(|(k, e)| (k.pod.clone(), e.hello.variant.clone()))
                .collect::<Vec<_>>()
        });
        pods.sort();
        pods
    }

    #[test]
    fn the_annotation_names_the_source() {
        assert_eq!(SourceKind::of(&va(None)), Ok(SourceKind::Agent));
        assert_eq!(
            SourceKind::of(&va(Some("prometheus"))),
            Ok(SourceKind::Prometheus)
        );
        let error = SourceKind::of(&va(Some("carrier-pigeon"))).unwrap_err();
        assert!(error.contains("agent, pod-scraping, prometheus"), "{error}");
    }

    #[tokio::test]
    async fn polled_pods_feed_the_store_as_the_variants_target_and_leave_when_gone() {
        let (mut poller, source, store) = setup();
        let variants = [va(Some("prometheus"))];
        source.answer(Ok(&["p-0", "p-1"]));
        poller.poll_once(&variants).await;
        assert_eq!(
            pods(&store),
            [
                ("p-0".into(), "chat-deploy".into()),
                ("p-1".into(), "chat-deploy".into())
            ]
        );
        source.answer(Ok(&["p-1"]));
        poller.poll_once(&variants).await;
        assert_eq!(pods(&store), [("p-1".into(), "chat-deploy".into())]);
    }

    #[tokio::test]
    async fn a_failing_source_keeps_its_pods_until_they_go_stale() {
        let (mut poller, source, store) = setup();
        let variants = [va(Some("prometheus"))];
        source.answer(Ok(&["p-0"]));
        poller.poll_once(&variants).await;
        let failures = poller.failures.subscribe();
        source.answer(Err("connection refused"));
        poller.poll_once(&variants).await;
        assert_eq!(pods(&store).len(), 1);
        let failure = failures.borrow()[&variants[0].key()].clone();
        assert_eq!(
            failure,
            SourceFailure {
                source: "prometheus",
                error: "connection refused".into()
            }
        );
        source.answer(Ok(&["p-0"]));
        poller.poll_once(&variants).await;
        assert!(
            failures.borrow().is_empty(),
            "a recovered source is no failure"
        );
    }

    #[tokio::test]
    async fn an_agents_stream_wins_over_a_polled_answer() {
        let (mut poller, source, store) = setup();
        let hello = Hello {
            pod: "p-0".into(),
            namespace: "llm".into(),
            variant: "chat-deploy".into(),
            ..Hello::default()
        };
        store.register(key("p-0"), 7, hello, Instant::now());
        source.answer(Ok(&["p-0"]));
        poller.poll_once(&[va(Some("prometheus"))]).await;
        let stream = store.with_pods(|p| p[&key("p-0")].stream_id);
        assert_eq!(stream, 7);
        assert!(store.with_pods(|p| p[&key("p-0")].latest.is_none()));
    }

    #[tokio::test]
    async fn agent_variants_are_not_polled() {
        let (mut poller, source, store) = setup();
        source.answer(Ok(&["p-0"]));
        poller.poll_once(&[va(None)]).await;
        assert!(pods(&store).is_empty());
    }
}
