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
        let mut last_run: Option<Instant> = None;
        loop {
            let tuning = *self.upstream.tuning.borrow_and_update();
            // Wake often enough to expire silent pods within the staleness bound.
            let period = tuning.analysis_interval.min(tuning.staleness / 2);
            if let Some(last) = last_run {
                let earliest = last + tuning.min_analysis_interval;
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest.into()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                tokio::select! {
                    _ = self.trigger.fired() => {}
                    _ = changed(&mut self.upstream.variants) => {}
                    _ = changed_opt(&mut self.upstream.replicas) => {}
                    _ = changed(&mut self.upstream.leading) => {}
                    _ = changed(&mut self.upstream.tuning) => {}
                    _ = tokio::time::sleep_until((last + period).max(earliest).into()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            last_run = Some(Instant::now());
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

    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_before_agents_had_time_to_return() {
        let tuning = Tuning {
            min_analysis_interval: Duration::from_millis(100),
            analysis_interval: Duration::from_secs(30),
            staleness: Duration::from_secs(10),
            convergence_timeout: Duration::from_secs(600),
        };
        // Variant llm/chat of model m, scaling Deployment chat-deploy.
        let variants = Arc::new(vec![wva_core::testing::variant(&[])]);
        let store = Arc::new(PodStore::default());
        let trigger = Arc::new(Trigger::default());
        let mut registry = Registry::default();
        let (decisions_tx, decisions) = watch::channel(Decisions::default());
        let (ready_tx, mut ready) = watch::channel(false);
        let analysis = AnalysisLoop {
            failures: watch::channel(Failures::default()).1,
            scale_to_zero: false,
            store: Arc::clone(&store),
            trigger: Arc::clone(&trigger),
            metrics: Arc::new(SelfMetrics::register(&mut registry)),
            gauges: DecisionGauges::register(&mut registry, false, None),
            upstream: Upstream::alone(
                watch::channel(variants).1,
                watch::channel(Arc::new(SaturationConfigSet::default())).1,
                watch::channel(Arc::new(ScaleToZeroConfigSet::default())).1,
                None,
                tuning,
            ),
            decisions: decisions_tx,
            ready: ready_tx,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(analysis.run(shutdown.clone()));

        // An aggregator that just restarted: its agents are not back yet.
        tokio::time::sleep(STARTUP_GRACE / 2).await;
        assert!(!*ready.borrow(), "no analysis before the grace period");
        assert!(decisions.borrow().is_empty());

        // One comes back within the grace period.
        let key = PodKey {
            namespace: "llm".into(),
            pod: "chat-0".into(),
        };
        let hello = Hello {
            pod: key.pod.clone(),
            namespace: key.namespace.clone(),
            variant: "chat-deploy".into(),
            role: Role::Vllm as i32,
            ..Hello::default()
        };
        store.register(key.clone(), 1, hello, std::time::Instant::now());
        let sample = Sample {
            seq: 1,
            up: true,
            models: vec![ModelSignals {
                model: "m".into(),
                kv_cache_usage: 0.2,
                ..ModelSignals::default()
            }],
            ..Sample::default()
        };
        store.offer(&key, 1, sample, std::time::Instant::now());
        trigger.fire(std::time::Instant::now());

        ready.wait_for(|r| *r).await.unwrap();
        let first = decisions.borrow().clone();
        assert_eq!(first.len(), 1);
        let pods: HashMap<&str, f64> = first[0]
            .inputs
            .iter()
            .map(|l| (l.pod.as_str(), l.kv_cache_usage))
            .collect();
        assert_eq!(
            pods,
            HashMap::from([("chat-0", 0.2)]),
            "the first decision sees the agent"
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}
