//! Whether a model's load is rising: a scale-down into a rising load takes
//! away capacity the model needs again before a replacement can start.
//!
//! V1's scale-down test looks at the KV cache and the queue of this moment.
//! On a ramp both are still low when a costly variant's share of the load
//! is already more than the rest can serve; once that replica is gone the
//! queue grows for as long as a new one takes to start.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::load::{Load, Measure};
use crate::fast_hash::{Map, Set};
use crate::model_key::{ModelKey, ModelRef};

/// How far back the load is compared.
pub(super) const SPAN: Duration = Duration::from_secs(30);

/// How much higher than [`SPAN`] ago the load must be to count as rising,
/// and then only by more than [`Load::noise`].
const RISE: f64 = 0.2;

#[derive(Debug, Default)]
pub(super) struct LoadTrend {
    models: Map<ModelKey, History>,
}

#[derive(Debug)]
struct History {
    measure: Measure,
    /// Readings oldest first, the oldest at most one past [`SPAN`] old.
    readings: VecDeque<(Instant, f64)>,
}

impl LoadTrend {
    /// Records the model's load at `now` and says whether it is clearly
    /// higher than [`SPAN`] ago (or than the oldest reading, when the model
    /// is younger than that).
    pub(super) fn rising(&mut self, model: ModelRef<'_>, now: Instant, load: Load) -> bool {
        let history = self.models.entry_ref(&model).or_insert_with(|| History {
            measure: load.measure,
            readings: VecDeque::new(),
        });
        if history.measure != load.measure {
            history.measure = load.measure;
            history.readings.clear();
        }
        // Keep one reading at least SPAN old to compare against.
        while history.readings.len() >= 2
            && now.saturating_duration_since(history.readings[1].0) >= SPAN
        {
            history.readings.pop_front();
        }
        let rising = history.readings.front().is_some_and(|&(_, then)| {
            load.value > then * (1.0 + RISE) && load.value - then > load.noise(then)
        });
        history.readings.push_back((now, load.value));
        rising
    }

    pub(super) fn retain(&mut self, live: &Set<ModelRef<'_>>) {
        self.models.retain(|k, _| live.contains(&k.borrowed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_key::A_MODEL;

    fn at(t0: Instant, seconds: u64) -> Instant {
        t0 + Duration::from_secs(seconds)
    }

    #[test]
    fn a_ramp_is_rising_and_a_plateau_after_it_is_not() {
        let mut trend = LoadTrend::default();
        let t0 = Instant::now();
        assert!(
            !trend.rising(A_MODEL, t0, Load::arrivals(0.0)),
            "nothing to compare"
        );
        // 0.5 req/s more every second for 30 s: 0.5 req/s could be chance.
        let ramp: Vec<bool> = (1..=30)
            .map(|s| trend.rising(A_MODEL, at(t0, s), Load::arrivals(0.5 * s as f64)))
            .collect();
        assert!(!ramp[0] && ramp[1..].iter().all(|r| *r), "{ramp:?}");
        // Held at 15 req/s: rising until the start of the plateau is SPAN old.
        let plateau: Vec<bool> = (31..=70)
            .map(|s| trend.rising(A_MODEL, at(t0, s), Load::arrivals(15.0)))
            .collect();
        let rising_for = plateau.iter().take_while(|r| **r).count();
        assert!(plateau[rising_for..].iter().all(|r| !*r), "{plateau:?}");
        assert!((15..=31).contains(&rising_for), "{rising_for}");
    }

    #[test]
    fn noise_and_a_falling_load_are_not_rising() {
        let mut trend = LoadTrend::default();
        let t0 = Instant::now();
        for s in 0..60 {
            // ±8 % around 10 req/s.
            let load = if s % 2 == 0 { 9.2 } else { 10.8 };
            assert!(!trend.rising(A_MODEL, at(t0, s), Load::arrivals(load)));
        }
        for s in 60..90 {
            let load = 10.0 - (s - 60) as f64 * 0.3;
            assert!(!trend.rising(A_MODEL, at(t0, s), Load::arrivals(load)));
        }
        // A trickle: a request more or less in a window doubles the reading.
        let mut trickle = LoadTrend::default();
        for s in 0..60 {
            let load = if s % 3 == 0 { 0.2 } else { 0.8 };
            assert!(!trickle.rising(A_MODEL, at(t0, s), Load::arrivals(load)));
            let used = if s % 3 == 0 { 0.05 } else { 0.12 };
            assert!(!trickle.rising(
                ModelRef {
                    namespace: "ns",
                    model: "kv"
                },
                at(t0, s),
                Load::kv(used)
            ));
        }
    }

    #[test]
    fn readings_of_another_measure_start_the_history_over() {
        let mut trend = LoadTrend::default();
        let t0 = Instant::now();
        assert!(!trend.rising(A_MODEL, t0, Load::kv(0.5)));
        // Rates become known: 4 req/s is no rise from half a KV cache.
        assert!(!trend.rising(A_MODEL, at(t0, 1), Load::arrivals(4.0)));
        assert!(trend.rising(A_MODEL, at(t0, 2), Load::arrivals(8.0)));
    }
}
