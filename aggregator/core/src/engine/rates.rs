//! Request rates of each pod, from its cumulative completion counter and its
//! queue: how fast it finishes requests, and how fast they arrive (finished
//! plus the growth of its queue). A rate spans at least [`WINDOW`] of
//! samples, so one second's burst does not read as the load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analysis::model::RequestRates;
use crate::pod_models::PodModels;
use crate::store::PodKey;

/// The shortest span a rate is measured over; the longest is twice this.
pub(super) const WINDOW: Duration = Duration::from_secs(5);

/// One pod's counters at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Reading {
    pub at: Instant,
    /// Requests finished since the pod started (vLLM's `request_success`).
    pub finished: f64,
    /// Requests waiting now.
    pub waiting: f64,
}

#[derive(Debug, Default)]
pub(super) struct RateTracker {
    /// Per pod and model: the reading a rate is measured from, and the one
    /// that replaces it once that is older than [`WINDOW`].
    pods: PodModels<(Reading, Reading)>,
}

impl RateTracker {
    /// The pod's shared name and, when there is a reading `now`, its rates
    /// since a reading between one and two windows old, once there is one.
    /// A counter that went back (the pod restarted) starts over.
    pub(super) fn observe(
        &mut self,
        pod: &PodKey,
        model: &str,
        now: Option<Reading>,
    ) -> (Arc<str>, Option<RequestRates>) {
        let slot = self.pods.pod(pod);
        let rates = now.and_then(|now| {
            slot.update(
                model,
                || (now, now),
                |(base, next), _| rates(base, next, now),
            )
        });
        (slot.name().clone(), rates)
    }

    /// Forgets pods that left the store.
    pub(super) fn retain(&mut self, in_store: impl Fn(&PodKey) -> bool) {
        self.pods.sweep(in_store);
    }
}

/// Moves a pod's readings on to `now` and measures its rates from `base`.
fn rates(base: &mut Reading, next: &mut Reading, now: Reading) -> Option<RequestRates> {
    if now.finished < next.finished || now.at < next.at {
        (*base, *next) = (now, now);
        return None;
    }
    if now.at.saturating_duration_since(next.at) >= WINDOW {
        (*base, *next) = (*next, now);
    }
    let span = now.at.saturating_duration_since(base.at);
    (span >= WINDOW).then(|| {
        let seconds = span.as_secs_f64();
        let finished = (now.finished - base.finished) / seconds;
        let grown = (now.waiting - base.waiting) / seconds;
        RequestRates {
            finished,
            arriving: (finished + grown).max(0.0),
            busy: base.waiting >= 1.0 && now.waiting >= 1.0,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodKey {
        PodKey {
            namespace: "ns".into(),
            pod: "p".into(),
        }
    }

    /// The rates alone, from a reading.
    fn observe(r: &mut RateTracker, model: &str, now: Reading) -> Option<RequestRates> {
        let (name, rates) = r.observe(&pod(), model, Some(now));
        assert_eq!(&*name, "p");
        rates
    }

    fn reading(t0: Instant, seconds: f64, finished: f64, waiting: f64) -> Reading {
        Reading {
            at: t0 + Duration::from_secs_f64(seconds),
            finished,
            waiting,
        }
    }

    #[test]
    fn rates_span_at_least_a_window() {
        let mut r = RateTracker::default();
        let t0 = Instant::now();
        assert_eq!(observe(&mut r, "m", reading(t0, 0.0, 100.0, 0.0)), None);
        assert_eq!(observe(&mut r, "m", reading(t0, 4.0, 120.0, 2.0)), None);
        // 5 s: 30 finished (6/s) while the queue grew by 10 (2/s more arrived).
        let rates = observe(&mut r, "m", reading(t0, 5.0, 130.0, 10.0)).unwrap();
        assert_eq!((rates.finished, rates.arriving), (6.0, 8.0));
        assert!(!rates.busy, "nothing waited when the span began");
        // Later readings measure from the previous window's end.
        let rates = observe(&mut r, "m", reading(t0, 10.0, 150.0, 0.0)).unwrap();
        assert_eq!((rates.finished, rates.arriving), (4.0, 2.0));
        assert!(!rates.busy, "nothing waits now");
        let rates = observe(&mut r, "m", reading(t0, 12.0, 160.0, 0.0)).unwrap();
        assert_eq!(rates.finished, 30.0 / 7.0);
    }

    #[test]
    fn a_draining_queue_is_no_negative_arrival_and_a_restart_starts_over() {
        let mut r = RateTracker::default();
        let t0 = Instant::now();
        observe(&mut r, "m", reading(t0, 0.0, 0.0, 50.0));
        let rates = observe(&mut r, "m", reading(t0, 5.0, 10.0, 0.0)).unwrap();
        assert_eq!((rates.finished, rates.arriving), (2.0, 0.0));
        observe(&mut r, "busy", reading(t0, 0.0, 0.0, 4.0));
        let busy = observe(&mut r, "busy", reading(t0, 5.0, 30.0, 6.0)).unwrap();
        assert!(busy.busy, "requests waited at 0 s and at 5 s");
        assert_eq!(observe(&mut r, "m", reading(t0, 6.0, 3.0, 0.0)), None);
        assert_eq!(observe(&mut r, "m", reading(t0, 8.0, 9.0, 0.0)), None);
        assert!(observe(&mut r, "m", reading(t0, 11.0, 18.0, 0.0)).is_some());
    }

    #[test]
    fn models_and_pods_are_apart_and_gone_pods_are_forgotten() {
        let mut r = RateTracker::default();
        let t0 = Instant::now();
        observe(&mut r, "a", reading(t0, 0.0, 0.0, 0.0));
        observe(&mut r, "b", reading(t0, 0.0, 100.0, 0.0));
        let a = observe(&mut r, "a", reading(t0, 5.0, 5.0, 0.0)).unwrap();
        assert_eq!(a.finished, 1.0);
        r.retain(|_| false);
        r.retain(|_| false);
        assert!(r.pods.is_empty());
    }
}
