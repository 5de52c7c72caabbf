//! The analysis loop: wakes on new data, a changed input or its period,
//! runs the engine over the pod store and publishes the decisions it returns.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_core::engine::{Engine, Inputs};
use wva_core::snapshot::{Decisions, Failures, Tuning};
use wva_core::store::PodStore;

use super::trigger::Trigger;
use super::upstream::Upstream;
use crate::gauges::DecisionGauges;
use crate::telemetry::SelfMetrics;

pub(super) struct AnalysisLoop {
    /// Failures of polled sources, shown on the decisions they hold.
    pub(super) failures: watch::Receiver<Failures>,
    /// Whether a model may scale to zero (`WVA_SCALE_TO_ZERO`).
    pub(super) scale_to_zero: bool,
    /// Whether the model-based optimizer runs (HYBRID mode,
    /// `EXPERIMENTAL_PROACTIVE_MODEL`).
    pub(super) hybrid: bool,
    pub(super) store: Arc<PodStore>,
    pub(super) trigger: Arc<Trigger>,
    pub(super) metrics: Arc<SelfMetrics>,
    pub(super) gauges: DecisionGauges,
    pub(super) upstream: Upstream,
    pub(super) decisions: watch::Sender<Decisions>,
    pub(super) ready: watch::Sender<bool>,
}

/// Longest the first analysis waits after start for agents to reconnect.
const STARTUP_GRACE: Duration = Duration::from_secs(3);

impl AnalysisLoop {
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut engine = Engine::with_previous(std::mem::take(&mut self.upstream.previous));
        // After a restart the agents come back within their backoff and one
        // scrape interval; a decision made before then would see no pods
        // and publish their variants as idle. Nothing is published (and
        // `/readyz` stays unready) until they had that chance.
        let grace = self.upstream.tuning.borrow().staleness.min(STARTUP_GRACE);
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        // The runtime's clock, which tests can pause.
        let mut last_run: Option<tokio::time::Instant> = None;
        loop {
            let tuning = *self.upstream.tuning.borrow_and_update();
            // Wake often enough to expire silent pods within the staleness bound.
            let period = tuning.analysis_interval.min(tuning.staleness / 2);
            if let Some(last) = last_run {
                let earliest = last + tuning.min_analysis_interval;
                // A changed verdict cuts the wait short, down to its own floor.
                let urgent = tokio::select! {
                    _ = tokio::time::sleep_until(earliest) => false,
                    _ = self.trigger.urgent() => true,
                    _ = shutdown.cancelled() => return Ok(()),
                };
                let soonest = last
                    + tuning
                        .min_verdict_interval
                        .min(tuning.min_analysis_interval);
                if urgent {
                    tokio::select! {
                        _ = tokio::time::sleep_until(soonest) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                } else {
                    tokio::select! {
                    _ = self.trigger.fired() => {}
                    _ = changed(&mut self.upstream.variants) => {}
                    _ = changed_opt(&mut self.upstream.replicas) => {}
                    _ = changed(&mut self.upstream.leading) => {}
                    _ = changed(&mut self.upstream.tuning) => {}
                    _ = tokio::time::sleep_until((last + period).max(earliest)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
            last_run = Some(tokio::time::Instant::now());
            self.analyse(&mut engine, &tuning);
        }
    }

    fn analyse(&mut self, engine: &mut Engine, tuning: &Tuning) {
        let staleness = tuning.staleness;
        let now = Instant::now();
        let pending_since = self.trigger.take();
        // One line per analysis, however many pods went stale at once (made-up
        // pods could otherwise write a line each).
        let expired = self.store.expire(now, staleness);
        if let Some(pod) = expired.first() {
            let more = expired.len() - 1;
            warn!(%pod, more, ?staleness, "no sample within the staleness bound; pod left the analysis");
        }
        let variants = self.upstream.variants.borrow_and_update().clone();
        let config = self.upstream.saturation.borrow().clone();
        let scale_to_zero = self.upstream.scale_to_zero.borrow().clone();
        let hybrid = self.upstream.hybrid.borrow().clone();
        let replicas = self
            .upstream
            .replicas
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone());
        let failures = self.failures.borrow().clone();
        let (decisions, events) = self.store.with_pods(|pods| {
            engine.evaluate(&Inputs {
                now,
                wall: SystemTime::now(),
                variants: &variants,
                pods,
                replicas: replicas.as_deref(),
                config: &config,
                staleness,
                convergence_timeout: tuning.convergence_timeout,
                scale_to_zero: self.scale_to_zero.then_some(&*scale_to_zero),
                failures: &failures,
                hybrid: self.hybrid.then_some(&*hybrid),
            })
        });
        for e in &events {
            info!(variant = %e.variant, from = e.from, to = e.to, direction = e.direction(), reason = e.reason, "desired replicas changed");
        }
        if *self.upstream.leading.borrow_and_update() {
            self.gauges.publish(&decisions, &events);
        } else {
            self.gauges.publish(&[], &[]);
        }
        self.decisions.send_replace(Arc::new(decisions));
        self.ready.send_replace(true);
        self.metrics
            .analysis_ran(pending_since.map(|t| t.elapsed()));
    }
}

/// Resolves when the channel changes; never once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Like [`changed`]; never when there is no channel.
async fn changed_opt<T>(rx: &mut Option<watch::Receiver<T>>) {
    match rx {
        Some(rx) => changed(rx).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prometheus_client::registry::Registry;
    use wva_core::config::saturation::SaturationConfigSet;
    use wva_core::config::scale_to_zero::ScaleToZeroConfigSet;
    use wva_core::snapshot::Tuning;
    use wva_core::store::PodKey;
    use wva_proto::v1::{Hello, ModelSignals, Role, Sample};

    use super::*;

    /// A running analysis loop over one variant (llm/chat of model m,
    /// scaling Deployment chat-deploy) and an empty store.
    struct Running {
        store: Arc<PodStore>,
        trigger: Arc<Trigger>,
        decisions: watch::Receiver<Decisions>,
        ready: watch::Receiver<bool>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Running {
        fn start(min_analysis_interval: Duration) -> Self {
            let tuning = Tuning {
                min_analysis_interval,
                min_verdict_interval: Duration::from_millis(20),
                analysis_interval: Duration::from_secs(30),
                staleness: Duration::from_secs(10),
                convergence_timeout: Duration::from_secs(600),
            };
            let variants = Arc::new(vec![wva_core::testing::variant(&[])]);
            let store = Arc::new(PodStore::default());
            let trigger = Arc::new(Trigger::default());
            let mut registry = Registry::default();
            let (decisions_tx, decisions) = watch::channel(Decisions::default());
            let (ready_tx, ready) = watch::channel(false);
            let analysis = AnalysisLoop {
                failures: watch::channel(Failures::default()).1,
                scale_to_zero: false,
                hybrid: false,
                store: Arc::clone(&store),
                trigger: Arc::clone(&trigger),
                metrics: Arc::new(SelfMetrics::register(&mut registry)),
                gauges: DecisionGauges::register(&mut registry, false, None),
                upstream: Upstream::alone(
                    watch::channel(variants).1,
                    watch::channel(Arc::new(SaturationConfigSet::default())).1,
                    watch::channel(Arc::new(ScaleToZeroConfigSet::default())).1,
                    watch::channel(Arc::default()).1,
                    None,
                    tuning,
                ),
                decisions: decisions_tx,
                ready: ready_tx,
            };
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(analysis.run(shutdown.clone()));
            Running {
                store,
                trigger,
                decisions,
                ready,
                shutdown,
                task,
            }
        }

        /// Pod chat-0 reports KV-cache usage `kv` (as sample `seq`).
        fn report(&self, seq: u64, kv: f64) {
            let key = PodKey {
                namespace: "llm".into(),
                pod: "chat-0".into(),
            };
            if seq == 1 {
                let hello = Hello {
                    pod: key.pod.clone(),
                    namespace: key.namespace.clone(),
                    variant: "chat-deploy".into(),
                    role: Role::Vllm as i32,
                    ..Hello::default()
                };
                self.store
                    .register(key.clone(), 1, hello, std::time::Instant::now());
            }
            let sample = Sample {
                seq,
                up: true,
                models: vec![ModelSignals {
                    model: "m".into(),
                    kv_cache_usage: kv,
                    ..ModelSignals::default()
                }],
                ..Sample::default()
            };
            self.store.offer(&key, 1, sample, std::time::Instant::now());
        }

        /// Waits for the next published decisions; returns when they came.
        async fn next_decisions(&mut self) -> tokio::time::Instant {
            self.decisions.changed().await.unwrap();
            tokio::time::Instant::now()
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_before_agents_had_time_to_return() {
        let mut running = Running::start(Duration::from_millis(100));

        // An aggregator that just restarted: its agents are not back yet.
        tokio::time::sleep(STARTUP_GRACE / 2).await;
        assert!(
            !*running.ready.borrow(),
            "no analysis before the grace period"
        );
        assert!(running.decisions.borrow().is_empty());

        // One comes back within the grace period.
        running.report(1, 0.2);
        running.trigger.fire(std::time::Instant::now());

        running.ready.wait_for(|r| *r).await.unwrap();
        let first = running.decisions.borrow().clone();
        assert_eq!(first.len(), 1);
        let pods: HashMap<&str, f64> = first[0]
            .inputs
            .iter()
            .map(|l| (&*l.pod, l.kv_cache_usage))
            .collect();
        assert_eq!(
            pods,
            HashMap::from([("chat-0", 0.2)]),
            "the first decision sees the agent"
        );
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_verdict_is_analysed_at_once_other_samples_wait_for_the_batch() {
        let second = Duration::from_secs(1);
        let mut running = Running::start(second);
        running.report(1, 0.2);
        let first = running.next_decisions().await;

        // An ordinary sample waits for the interval since the last analysis.
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.report(2, 0.3);
        running.trigger.fire(std::time::Instant::now());
        let batched = running.next_decisions().await;
        assert_eq!(batched - first, second);

        // A sample that changes a verdict is analysed at once...
        tokio::time::sleep(Duration::from_millis(300)).await;
        running.report(3, 0.9);
        let sent = tokio::time::Instant::now();
        running.trigger.fire_urgent(std::time::Instant::now());
        assert_eq!(running.next_decisions().await, sent);
        assert!(
            running.decisions.borrow()[0]
                .saturation
                .analysis
                .should_scale_up
        );

        // ...but never sooner than its own floor after the previous analysis,
        // so a fleet's changes cannot make it spin.
        running.report(4, 0.2);
        running.trigger.fire_urgent(std::time::Instant::now());
        assert_eq!(
            running.next_decisions().await - sent,
            Duration::from_millis(20)
        );

        // Once analysed, an urgent change is no longer pending: the next
        // ordinary sample waits for the batch again.
        let last = tokio::time::Instant::now();
        running.report(5, 0.3);
        running.trigger.fire(std::time::Instant::now());
        assert_eq!(running.next_decisions().await - last, second);
        running.stop().await;
    }
}
