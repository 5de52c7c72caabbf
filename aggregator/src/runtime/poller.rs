//! Where a variant's signals come from.
//!
//! Agents push their pods' samples into the pod store. A variant may instead
//! name a polled source with the annotation `wva.llmd.ai/metrics-source`
//! (`agent`, `pod-scraping` or `prometheus`); without the annotation the
//! aggregator's default source applies (`WVA_METRICS_SOURCE`, `agent` unless
//! set). The [`Poller`] asks a polled source for the variant's pods at every
//! poll and puts the answers into the same pod store, as samples of the same
//! shape, so the analysis reads every source alike. A variant may also name
//! its endpoint picker's Service (`wva.llmd.ai/epp-service`), whose pods are
//! then scraped for their queues whatever the variant's own source.
//!
//! Order of precedence for one pod: an agent's stream wins over a polled
//! source (a polled sample never replaces a streaming pod's); a pod that no
//! source reports fresh data for leaves the analysis, and a variant with no
//! fresh data is held by the safety net.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_core::decision::{FailedSource, SourceFailure};
use wva_core::snapshot::{Failures, Variants};
use wva_core::sources::{EPP_SERVICE_ANNOTATION, PolledPod, PolledSource, SourceKind};
use wva_core::store::{Offer, PodKey, PodStore};
use wva_core::variants::{Variant, VariantKey};
use wva_proto::v1::{Hello, Role, Sample};

use super::trigger::Trigger;

/// Sources asked at once during one poll.
const CONCURRENT_POLLS: usize = 8;

/// Stream ids of polled pods live above the agents' (which count up from 1).
const POLLED_IDS: u64 = 1 << 63;

/// Polls the sources of the variants that name one.
pub struct Poller {
    store: Arc<PodStore>,
    trigger: Arc<Trigger>,
    sources: HashMap<SourceKind, Arc<dyn PolledSource>>,
    interval: Duration,
    /// The source of variants without an annotation.
    default_source: SourceKind,
    /// The pods this poller put in the store: their stream ids, the variant
    /// they were polled for and what for.
    polled: HashMap<PodKey, (u64, VariantKey, Job)>,
    next_id: u64,
    seq: u64,
    /// Variants whose last poll failed, and why; published for status.
    failing: HashMap<VariantKey, SourceFailure>,
    failures: watch::Sender<Failures>,
}

impl Poller {
    pub fn new(
        store: Arc<PodStore>,
        trigger: Arc<Trigger>,
        sources: Vec<Arc<dyn PolledSource>>,
        default_source: SourceKind,
        interval: Duration,
        failures: watch::Sender<Failures>,
    ) -> Self {
        Poller {
            store,
            trigger,
            sources: sources.into_iter().map(|s| (s.kind(), s)).collect(),
            default_source,
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
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let current = variants.borrow().clone();
            self.poll_once(&current).await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Polls every variant with a polled source, and every endpoint picker
    /// a variant names, once (several at a time), and updates the store.
    pub async fn poll_once(&mut self, variants: &[Variant]) {
        self.seq += 1;
        let mut failing: HashMap<VariantKey, SourceFailure> = HashMap::new();
        let mut jobs = Vec::new();
        let mut pickers = HashSet::new();
        // A workload scaled on a signal has no vLLM to poll: only its
        // agents forward the signal.
        for va in variants.iter().filter(|va| va.signal.is_none()) {
            match SourceKind::of(va, self.default_source) {
                Ok(SourceKind::Agent) => {}
                Ok(kind) => match self.sources.get(&kind) {
                    Some(source) => jobs.push((va.clone(), Job::Variant, Arc::clone(source))),
                    None => {
                        let e = format!("source {} is not configured", kind.as_str());
                        fail(&mut failing, va, kind.failed(), e);
                    }
                },
                Err(e) => fail(&mut failing, va, FailedSource::Annotation, e),
            }
            // Variants of one model usually share their picker: scrape it once.
            if let Some(service) = va.annotations.get(EPP_SERVICE_ANNOTATION)
                && pickers.insert((va.namespace.as_str(), service.as_str()))
            {
                match self.sources.get(&SourceKind::PodScraping) {
                    Some(source) => jobs.push((va.clone(), Job::Picker, Arc::clone(source))),
                    None => fail(
                        &mut failing,
                        va,
                        FailedSource::PodScraping,
                        format!(
                            "{EPP_SERVICE_ANNOTATION} needs the pod-scraping source (Kubernetes mode)"
                        ),
                    ),
                }
            }
        }
        // Futures made before the stream, not in a closure the stream holds
        // across awaits: that would trip the compiler's `Send` inference.
        let asks: Vec<_> = jobs
            .into_iter()
            .map(|(va, job, source)| ask(va, job, source))
            .collect();
        let answers: Vec<_> = futures::stream::iter(asks)
            .buffer_unordered(CONCURRENT_POLLS)
            .collect()
            .await;
        let shared = models_of_several_variants(variants);
        let mut seen = HashSet::new();
        for (va, job, kind, answer) in answers {
            match answer {
                Ok(pods) => {
                    // Prometheus' series name a model's pods, not their
                    // variant: of a model several variants serve, each
                    // keeps the pods its target's controller names.
                    let model = (va.namespace.as_str(), va.model_id.as_str());
                    let by_name = kind == SourceKind::Prometheus && shared.contains(&model);
                    for polled in pods {
                        if by_name && !va.target.names_pod(&polled.pod) {
                            continue;
                        }
                        let key = PodKey {
                            namespace: va.namespace.clone(),
                            pod: polled.pod.clone(),
                        };
                        if self.offer(&va, &key, polled) {
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
                            .filter(|(_, (_, v, j))| *v == variant && *j == job)
                            .map(|(k, _)| k.clone()),
                    );
                    let e = match job {
                        Job::Variant => e,
                        Job::Picker => format!("endpoint picker: {e}"),
                    };
                    fail(&mut failing, &va, kind.failed(), e);
                }
            }
        }
        self.report(failing);
        let gone: Vec<(PodKey, u64)> = self
            .polled
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(k, (id, _, _))| (k.clone(), *id))
            .collect();
        for (key, id) in gone {
            self.polled.remove(&key);
            if self.store.remove(&key, id) {
                self.trigger.fire(Instant::now());
            }
        }
    }

    /// Logs the failures that started or ended and publishes the current ones.
    fn report(&mut self, failing: HashMap<VariantKey, SourceFailure>) {
        for (variant, failure) in &failing {
            if self.failing.get(variant) != Some(failure) {
                warn!(variant = %variant, source = %failure.source, error = %failure.error, "metrics source failed; the safety net holds the variant when its data goes stale");
            }
        }
        for (variant, failure) in &self.failing {
            if !failing.contains_key(variant) {
                info!(variant = %variant, source = %failure.source, "metrics source answers again");
            }
        }
        self.failing = failing;
        let current = Arc::new(self.failing.clone());
        self.failures.send_if_modified(|f| {
            let changed = **f != *current;
            if changed {
                *f = current;
            }
            changed
        });
    }

    /// Puts one polled sample in the store unless an agent streams for the
    /// pod; returns whether it did.
    fn offer(&mut self, va: &Variant, key: &PodKey, polled: PolledPod) -> bool {
        let now = Instant::now();
        let id = match self.polled.get(key) {
            Some((id, _, _)) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let picker = polled.role == Role::Epp;
                let hello = Hello {
                    pod: key.pod.clone(),
                    namespace: key.namespace.clone(),
                    role: polled.role as i32,
                    models: vec![va.model_id.clone()],
                    // Sampled once a poll: the pod stays between polls.
                    interval_ms: u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX),
                    // A picker serves the model, not one variant.
                    variant: if picker {
                        String::new()
                    } else {
                        va.target.name.clone()
                    },
                    ..Hello::default()
                };
                if !self.store.claim(key.clone(), id, hello, now) {
                    return false;
                }
                let job = if picker { Job::Picker } else { Job::Variant };
                self.polled.insert(key.clone(), (id, va.key(), job));
                id
            }
        };
        let sample = Sample {
            seq: self.seq,
            up: true,
            scraped_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            ..polled.sample
        };
        match self.store.offer(key, id, sample, now) {
            Offer::Accepted | Offer::OverBudget => {
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
}

/// What a poll asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// The variant's serving pods.
    Variant,
    /// The pods of the endpoint picker the variant names.
    Picker,
}

/// The (namespace, model) pairs more than one variant serves.
fn models_of_several_variants(variants: &[Variant]) -> HashSet<(&str, &str)> {
    let mut seen = HashSet::new();
    variants
        .iter()
        .map(|va| (va.namespace.as_str(), va.model_id.as_str()))
        .filter(|model| !seen.insert(*model))
        .collect()
}

async fn ask(
    va: Variant,
    job: Job,
    source: Arc<dyn PolledSource>,
) -> (Variant, Job, SourceKind, Result<Vec<PolledPod>, String>) {
    let answer = match job {
        Job::Variant => source.poll(&va).await,
        Job::Picker => source.poll_epp(&va).await,
    };
    (va, job, source.kind(), answer)
}

/// Records a variant's failure; a second one this poll is added to the first.
fn fail(
    failing: &mut HashMap<VariantKey, SourceFailure>,
    va: &Variant,
    source: FailedSource,
    error: String,
) {
    failing
        .entry(va.key())
        .and_modify(|f| {
            f.error.push_str("; ");
            f.error.push_str(&error);
        })
        .or_insert(SourceFailure { source, error });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use wva_core::sources::SOURCE_ANNOTATION;
    use wva_proto::v1::ModelSignals;

    use super::*;

    type Answer = Result<Vec<String>, String>;

    /// A source answering what the test sets.
    struct Scripted {
        kind: SourceKind,
        pods: Mutex<Answer>,
        pickers: Mutex<Answer>,
        picker_polls: AtomicUsize,
        /// When set, every poll waits here: polls meet only if concurrent.
        meet: Option<tokio::sync::Barrier>,
    }

    impl Scripted {
        fn new(kind: SourceKind) -> Self {
            Scripted {
                kind,
                pods: Mutex::new(Ok(Vec::new())),
                pickers: Mutex::new(Ok(Vec::new())),
                picker_polls: AtomicUsize::new(0),
                meet: None,
            }
        }

        fn answer(&self, answer: Result<&[&str], &str>) {
            *self.pods.lock().unwrap() = owned(answer);
        }

        fn answer_pickers(&self, answer: Result<&[&str], &str>) {
            *self.pickers.lock().unwrap() = owned(answer);
        }
    }

    fn owned(answer: Result<&[&str], &str>) -> Answer {
        answer
            .map(|pods| pods.iter().map(|p| p.to_string()).collect())
            .map_err(str::to_string)
    }

    #[tonic::async_trait]
    impl PolledSource for Scripted {
        fn kind(&self) -> SourceKind {
            self.kind
        }

        async fn poll(&self, va: &Variant) -> Result<Vec<PolledPod>, String> {
            if let Some(meet) = &self.meet {
                meet.wait().await;
            }
            let pods = self.pods.lock().unwrap().clone()?;
            Ok(pods
                .into_iter()
                .map(|p| {
                    let s = ModelSignals {
                        model: va.model_id.clone(),
                        requests_waiting: 2.0,
                        ..ModelSignals::default()
                    };
                    PolledPod::serving(p, s)
                })
                .collect())
        }

        async fn poll_epp(&self, _va: &Variant) -> Result<Vec<PolledPod>, String> {
            self.picker_polls.fetch_add(1, Ordering::Relaxed);
            let pods = self.pickers.lock().unwrap().clone()?;
            Ok(pods
                .into_iter()
                .map(|pod| PolledPod {
                    pod,
                    role: Role::Epp,
                    sample: Sample::default(),
                })
                .collect())
        }
    }

    fn va(source: Option<&str>) -> Variant {
        let annotations: Vec<(&str, &str)> =
            source.map(|s| (SOURCE_ANNOTATION, s)).into_iter().collect();
        wva_core::testing::variant(&annotations)
    }

    fn key(pod: &str) -> PodKey {
        PodKey {
            namespace: "llm".into(),
            pod: pod.into(),
        }
    }

    fn setup() -> (Poller, Arc<Scripted>, Arc<PodStore>) {
        setup_with(Scripted::new(SourceKind::Prometheus), SourceKind::Agent)
    }

    fn setup_with(source: Scripted, default: SourceKind) -> (Poller, Arc<Scripted>, Arc<PodStore>) {
        let store = Arc::new(PodStore::default());
        let source = Arc::new(source);
        let poller = Poller::new(
            Arc::clone(&store),
            Arc::default(),
            vec![source.clone() as Arc<dyn PolledSource>],
            default,
            Duration::from_secs(1),
            watch::channel(Failures::default()).0,
        );
        (poller, source, store)
    }

    fn with_picker(mut va: Variant, name: &str, service: &str) -> Variant {
        va.name = name.into();
        va.target.name = format!("{name}-deploy");
        va.annotations
            .insert(EPP_SERVICE_ANNOTATION.into(), service.into());
        va
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

    #[tokio::test]
    async fn a_workload_scaled_on_a_signal_is_never_polled() {
        let (mut poller, source, store) = setup_with(
            Scripted::new(SourceKind::Prometheus),
            SourceKind::Prometheus,
        );
        source.answer(Ok(&["p-0"]));
        let mut worker = va(None);
        worker.signal = Some(wva_core::workload::SignalTarget {
            signal: "jobs".into(),
            target_per_pod: 5.0,
            across: wva_core::workload::Across::Max,
            min_replicas: 1,
            max_replicas: 4,
        });
        poller.poll_once(&[worker]).await;
        assert!(pods(&store).is_empty(), "no pod was polled for it");
    }

    #[tokio::test]
    async fn variants_without_annotation_use_the_default_source() {
        let (mut poller, source, store) = setup_with(
            Scripted::new(SourceKind::Prometheus),
            SourceKind::Prometheus,
        );
        source.answer(Ok(&["p-0"]));
        poller.poll_once(&[va(None)]).await;
        assert_eq!(pods(&store), [("p-0".into(), "chat-deploy".into())]);
    }

    #[tokio::test]
    async fn variants_are_polled_concurrently() {
        let mut source = Scripted::new(SourceKind::Prometheus);
        // Both polls must be in flight at once to get past the barrier.
        source.meet = Some(tokio::sync::Barrier::new(2));
        let (mut poller, source, store) = setup_with(source, SourceKind::Agent);
        source.answer(Ok(&["p-0"]));
        let mut other = va(Some("prometheus"));
        other.name = "other".into();
        other.namespace = "elsewhere".into();
        let variants = [va(Some("prometheus")), other];
        tokio::time::timeout(Duration::from_secs(10), poller.poll_once(&variants))
            .await
            .expect("the second poll never started while the first waited");
        assert_eq!(pods(&store).len(), 2);
    }

    #[tokio::test]
    async fn a_shared_picker_is_scraped_once_and_its_pods_serve_the_model() {
        let (mut poller, source, store) =
            setup_with(Scripted::new(SourceKind::PodScraping), SourceKind::Agent);
        source.answer_pickers(Ok(&["epp-0"]));
        // Both variants stream through agents; only their picker is polled.
        let variants = [
            with_picker(va(None), "a", "gateway-epp"),
            with_picker(va(None), "b", "gateway-epp"),
        ];
        poller.poll_once(&variants).await;
        assert_eq!(source.picker_polls.load(Ordering::Relaxed), 1);
        let picker = store.with_pods(|p| p[&key("epp-0")].hello.clone());
        assert_eq!(picker.role, Role::Epp as i32);
        assert_eq!(picker.variant, "", "a picker belongs to no variant");
        assert_eq!(picker.models, ["m"]);

        let failures = poller.failures.subscribe();
        source.answer_pickers(Err("connection refused"));
        poller.poll_once(&variants).await;
        let failure = failures.borrow()[&variants[0].key()].clone();
        assert_eq!(failure.source, FailedSource::PodScraping);
        assert_eq!(failure.error, "endpoint picker: connection refused");
        assert_eq!(pods(&store).len(), 1, "kept until stale");
    }

    #[tokio::test]
    async fn a_picker_without_pod_scraping_is_a_failure_of_the_variant() {
        let (mut poller, _source, _store) = setup();
        let failures = poller.failures.subscribe();
        let variant = with_picker(va(None), "a", "gateway-epp");
        poller.poll_once(std::slice::from_ref(&variant)).await;
        let failure = failures.borrow()[&variant.key()].clone();
        assert!(
            failure.error.contains("needs the pod-scraping source"),
            "{failure:?}"
        );
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
        let interval = store.with_pods(|p| p[&key("p-0")].hello.interval_ms);
        assert_eq!(interval, 1000, "sampled once a poll");
        source.answer(Ok(&["p-1"]));
        poller.poll_once(&variants).await;
        assert_eq!(pods(&store), [("p-1".into(), "chat-deploy".into())]);
    }

    #[tokio::test]
    async fn variants_of_one_model_keep_the_prometheus_pods_their_targets_name() {
        let (mut poller, source, store) = setup();
        let l4 = va(Some("prometheus"));
        let mut h100 = l4.clone();
        h100.name = "chat-h100".into();
        h100.target.name = format!("{}-h100", l4.target.name);
        let l4_pod = format!("{}-5d8f7c9b6d-x2x7q", l4.target.name);
        let h100_pod = format!("{}-7c9b6d5d8f-q7x2x", h100.target.name);
        // Prometheus answers every pod of the model to both variants.
        source.answer(Ok(&[&l4_pod, &h100_pod, "unrelated-0"]));
        poller.poll_once(&[l4.clone(), h100.clone()]).await;
        assert_eq!(
            pods(&store),
            [(l4_pod, l4.target.name), (h100_pod, h100.target.name)]
        );
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
                source: FailedSource::Prometheus,
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
