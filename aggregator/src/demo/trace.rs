//! The demo's load traces: the ramp a newcomer watches, and the two the
//! step-size benchmark (`scripts/bench-steps`, docs/benchmarks.md) runs.

use clap::ValueEnum;

/// Requests per second of the demo's shape (2048-character prompt, 128
/// tokens out) one `llama-8b-l4` replica serves with every slot busy, as
/// `scripts/sim-capacity` measures it (6.1). The step trace is sized in it.
pub const L4_REPLICA_RPS: f64 = 6.0;

/// How many L4 replicas' worth one `llama-8b-h100` replica serves (9.9
/// req/s measured the same way).
pub const H100_PER_L4: f64 = 1.6;

/// Requests per second over time: linear pieces between (seconds, rate) points.
#[derive(Debug, Clone)]
pub struct Profile {
    pub points: Vec<(f64, f64)>,
}

impl Profile {
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut prev = (0.0, 0.0);
        for &(pt, rate) in &self.points {
            if t <= pt {
                let span = pt - prev.0;
                return if span <= 0.0 {
                    rate
                } else {
                    prev.1 + (rate - prev.1) * (t - prev.0) / span
                };
            }
            prev = (pt, rate);
        }
        prev.1
    }

    pub fn duration(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trace {
    /// Up to 14 req/s over 30 s, held 40 s, down over 20 s.
    Ramp,
    /// 10 % of one replica's capacity for 30 s, a step to 400 % for 150 s,
    /// back to 10 % for 60 s.
    Step,
    /// A steady 250 % of one replica's capacity for 10 minutes: Poisson
    /// arrivals make the readings noisy, the load itself does not change.
    Noisy,
}

impl Trace {
    /// The trace's rates at speed 1, as `(seconds, req/s)` points.
    fn points(self) -> Vec<(f64, f64)> {
        let c = L4_REPLICA_RPS;
        match self {
            Trace::Ramp => vec![
                (10.0, 0.0),
                (40.0, 14.0),
                (80.0, 14.0),
                (100.0, 0.0),
                (101.0, 0.0),
            ],
            Trace::Step => vec![
                (0.0, 0.1 * c),
                (30.0, 0.1 * c),
                (30.001, 4.0 * c),
                (180.0, 4.0 * c),
                (180.001, 0.1 * c),
                (240.0, 0.1 * c),
            ],
            Trace::Noisy => vec![(0.0, 2.5 * c), (600.0, 2.5 * c)],
        }
    }

    /// The load profile at `speed` (2.0 runs twice as fast).
    pub fn profile(self, speed: f64) -> Profile {
        Profile {
            points: self
                .points()
                .into_iter()
                .map(|(t, rate)| (t / speed, rate))
                .collect(),
        }
    }

    /// When the step of [`Trace::Step`] has reached its top, at `speed`.
    pub fn step_at(self, speed: f64) -> Option<f64> {
        (self == Trace::Step).then_some(30.001 / speed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_interpolates_between_points_and_holds_the_last_rate() {
        let p = Profile {
            points: vec![(10.0, 10.0), (20.0, 10.0), (30.0, 0.0)],
        };
        assert_eq!(p.rate_at(0.0), 0.0);
        assert_eq!(p.rate_at(5.0), 5.0);
        assert_eq!(p.rate_at(15.0), 10.0);
        assert_eq!(p.rate_at(25.0), 5.0);
        assert_eq!(p.rate_at(40.0), 0.0);
        assert_eq!(p.duration(), 30.0);
    }

    #[test]
    fn the_step_goes_from_a_tenth_to_four_replicas_and_back() {
        let p = Trace::Step.profile(2.0);
        let c = L4_REPLICA_RPS;
        assert_eq!(p.rate_at(10.0), 0.1 * c);
        assert_eq!(p.rate_at(16.0), 4.0 * c);
        assert_eq!(p.rate_at(89.0), 4.0 * c);
        assert_eq!(p.rate_at(91.0), 0.1 * c);
        assert_eq!(p.duration(), 120.0);
        assert_eq!(Trace::Step.step_at(2.0), Some(15.0005));
        assert_eq!(Trace::Noisy.step_at(1.0), None);
    }
}
