//! The analysis loop: wakes on new data, a changed input or its period,
//! runs the engine over the pod store and publishes the decisions it returns.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_core::engine::{Engine, Inputs};
use wva_core::snapshot::{Decisions, Failures};
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

impl AnalysisLoop {
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut engine = Engine::with_previous(std::mem::take(&mut self.upstream.previous));
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
            self.analyse(&mut engine, tuning.staleness);
        }
    }

    fn analyse(&mut self, engine: &mut Engine, staleness: Duration) {
        let now = Instant::now();
        let pending_since = self.trigger.take();
        for pod in self.store.expire(now, staleness) {
            warn!(%pod, ?staleness, "no sample within the staleness bound; pod left the analysis");
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
