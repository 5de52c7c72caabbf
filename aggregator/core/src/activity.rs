//! How long each model has been idle, for scale to zero.
//!
//! A model is active at an analysis when one of its pods has requests running
//! or waiting, its successful-request counter grew since the previous sample
//! of that pod, or requests wait for it in an endpoint picker's queue. A model seen for the first time, or brought back from
//! zero replicas (by whoever scaled it), starts a fresh idle period, so it is
//! never sent to zero before a whole retention period has been observed.

use std::time::{Duration, Instant};

use wva_proto::v1::ModelSignals;

use crate::fast_hash::{Map, Set};
use crate::model_key::{ModelKey, ModelRef};
use crate::pod_models::PodModels;
use crate::store::PodKey;

#[derive(Debug)]
struct Model {
    last_active: Instant,
    had_replicas: bool,
}

#[derive(Debug, Default)]
pub struct ActivityTracker {
    models: Map<ModelKey, Model>,
    /// Last successful-request total per pod and model.
    successes: PodModels<f64>,
}

impl ActivityTracker {
    /// Records one analysis of `model`: the fresh signals of its pods, its
    /// total current replicas, and whether requests wait for it at a gateway.
    /// Returns how long it has been idle.
    pub fn observe<'a>(
        &mut self,
        now: Instant,
        model: ModelRef<'_>,
        signals: impl IntoIterator<Item = (&'a PodKey, &'a ModelSignals)>,
        current_replicas: u32,
        waiting: bool,
    ) -> Duration {
        let mut active = waiting;
        for (pod, s) in signals {
            if s.requests_running > 0.0 || s.requests_waiting > 0.0 {
                active = true;
            }
            let total = s.counters.as_ref().map_or(0.0, |c| c.request_success);
            let previous = self.remember(pod, model.model, total);
            // A restarted pod's counter starts over: only growth counts.
            if previous.is_some_and(|p| total > p) {
                active = true;
            }
        }
        let has_replicas = current_replicas > 0;
        let entry = self.models.entry_ref(&model).or_insert(Model {
            last_active: now,
            had_replicas: has_replicas,
        });
        if active || (has_replicas && !entry.had_replicas) {
            entry.last_active = now;
        }
        entry.had_replicas = has_replicas;
        now.saturating_duration_since(entry.last_active)
    }

    /// Stores the pod's latest total for the model; returns the one before.
    fn remember(&mut self, pod: &PodKey, model: &str, total: f64) -> Option<f64> {
        self.successes.update(
            pod,
            model,
            || total,
            |seen, new| (!new).then(|| std::mem::replace(seen, total)),
        )
    }

    /// Forgets models and pods that are gone.
    pub fn retain(&mut self, models: &Set<ModelRef<'_>>, live: impl Fn(&PodKey) -> bool) {
        self.models.retain(|k, _| models.contains(&k.borrowed()));
        self.successes.sweep(live);
    }
}

#[cfg(test)]
mod tests {
    use wva_proto::v1::Counters;

    use super::*;
    use crate::model_key::A_MODEL;

    fn pod(name: &str) -> PodKey {
        PodKey {
            namespace: "ns".into(),
            pod: name.into(),
        }
    }

    fn signals(running: f64, successes: f64) -> ModelSignals {
        ModelSignals {
            model: "m".into(),
            requests_running: running,
            counters: Some(Counters {
                request_success: successes,
                ..Counters::default()
            }),
            ..ModelSignals::default()
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn idle_time_starts_at_first_sight_and_grows_without_requests() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        let p = pod("p");
        let quiet = signals(0.0, 5.0);
        assert_eq!(
            t.observe(t0, A_MODEL, [(&p, &quiet)], 1, false),
            Duration::ZERO
        );
        assert_eq!(t.observe(t0 + MIN, A_MODEL, [(&p, &quiet)], 1, false), MIN);
    }

    #[test]
    fn a_growing_success_counter_or_running_requests_are_activity() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        let p = pod("p");
        t.observe(t0, A_MODEL, [(&p, &signals(0.0, 5.0))], 1, false);
        let served = signals(0.0, 6.0);
        assert_eq!(
            t.observe(t0 + MIN, A_MODEL, [(&p, &served)], 1, false),
            Duration::ZERO
        );
        let busy = signals(2.0, 6.0);
        assert_eq!(
            t.observe(t0 + 2 * MIN, A_MODEL, [(&p, &busy)], 1, false),
            Duration::ZERO
        );
        let quiet = signals(0.0, 6.0);
        assert_eq!(
            t.observe(t0 + 3 * MIN, A_MODEL, [(&p, &quiet)], 1, false),
            MIN
        );
    }

    #[test]
    fn requests_waiting_at_a_gateway_are_activity() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        t.observe(t0, A_MODEL, [], 0, false);
        assert_eq!(t.observe(t0 + MIN, A_MODEL, [], 0, false), MIN);
        assert_eq!(
            t.observe(t0 + 2 * MIN, A_MODEL, [], 0, true),
            Duration::ZERO
        );
    }

    #[test]
    fn a_restarted_pods_counter_is_not_activity() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        let p = pod("p");
        t.observe(t0, A_MODEL, [(&p, &signals(0.0, 50.0))], 1, false);
        let restarted = signals(0.0, 0.0);
        assert_eq!(
            t.observe(t0 + MIN, A_MODEL, [(&p, &restarted)], 1, false),
            MIN
        );
    }

    #[test]
    fn coming_back_from_zero_starts_a_new_idle_period() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.observe(t0, A_MODEL, [], 1, false), Duration::ZERO);
        assert_eq!(t.observe(t0 + MIN, A_MODEL, [], 0, false), MIN);
        // Someone scaled it up again: the clock restarts.
        assert_eq!(
            t.observe(t0 + 2 * MIN, A_MODEL, [], 1, false),
            Duration::ZERO
        );
    }

    #[test]
    fn gone_models_and_pods_are_forgotten() {
        let mut t = ActivityTracker::default();
        let t0 = Instant::now();
        let p = pod("p");
        t.observe(t0, A_MODEL, [(&p, &signals(0.0, 5.0))], 1, false);
        // The analysis that saw the pod keeps it; the next, without it, does not.
        t.retain(&Set::default(), |_| false);
        t.retain(&Set::default(), |_| false);
        // Seen afresh: no idle time carried over, no counter baseline.
        assert_eq!(
            t.observe(t0 + MIN, A_MODEL, [(&p, &signals(0.0, 9.0))], 1, false),
            Duration::ZERO
        );
    }
}
