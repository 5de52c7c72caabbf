//! How many requests a second one replica sustains within a class's
//! latency objectives: a queueing model of a continuous-batching server.
//!
//! A replica holds `n` requests; it runs `b = min(n, B)` of them as one
//! batch (`B`, the largest batch it can hold) and queues the rest. Each
//! engine step emits one token for every running request and takes the
//! profile's inter-token latency at that batch, `α + β·b`; each request
//! also needs its prefill, `γ + δ·prompt`, during which the batch waits.
//! Serving `b` requests to completion thus takes `b·P + out·(α + β·b)`,
//! so in state `n` requests leave at the rate
//! `μ(b) = b / (b·P + out·(α + β·b))`.
//!
//! With Poisson arrivals at `λ` this is a birth-death chain whose
//! stationary distribution is `p(n) ∝ Π λ/μ(min(k, B))` — exact for the
//! states up to `B`, geometric beyond, stable while `λ < μ(B)`. From it:
//! the mean batch a running request shares, hence its inter-token latency,
//! stretched by the share of time the server spends on others' prefills
//! (`λ·P`); and the mean queue, hence by Little's law the wait before the
//! prefill, which with the prefill itself is the time to the first token.
//! Both grow with `λ`, so the largest `λ` that meets both objectives is
//! found by bisection.
//!
//! Why this model: it is the smallest one that has the two effects that
//! decide an LLM replica's capacity, latency that grows with the batch
//! and queueing once the batch is full, and its inputs are exactly what
//! the profile fit learns. It assumes exponential service, which
//! overstates the queue a little for the near-deterministic decode of a
//! fixed token mix: the error is on the safe side.

use super::profile::Profile;
use crate::config::service_class::Objectives;

/// The mean tokens of a model's requests, from its counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenMix {
    pub prompt: f64,
    pub output: f64,
}

/// What one replica sustains, or why it cannot meet the objectives at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sustains {
    /// Requests per second, and the latencies at that rate.
    Rate {
        per_second: f64,
        itl_ms: f64,
        ttft_ms: f64,
    },
    /// Even a lone request misses an objective: no number of replicas
    /// helps.
    Unattainable(Miss),
}

/// Which objective a lone request misses, and by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Miss {
    Itl { lone_ms: f64, objective_ms: f64 },
    Ttft { lone_ms: f64, objective_ms: f64 },
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Itl {
                lone_ms,
                objective_ms,
            } => write!(
                f,
                "a lone request's inter-token latency is {lone_ms:.1} ms, over the objective of {objective_ms} ms"
            ),
            Miss::Ttft {
                lone_ms,
                objective_ms,
            } => write!(
                f,
                "a lone request's time to first token is {lone_ms:.1} ms, over the objective of {objective_ms} ms"
            ),
        }
    }
}

/// Latencies of one replica at one arrival rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latencies {
    itl_ms: f64,
    ttft_ms: f64,
}

/// One replica of a profile serving a token mix, with its largest batch.
struct Server {
    profile: Profile,
    mix: TokenMix,
    batch: u32,
}

impl Server {
    /// Prefill time of one request, ms.
    fn prefill_ms(&self) -> f64 {
        self.profile.prefill.at(self.mix.prompt).max(0.0)
    }

    /// Inter-token latency at batch `b`, ms.
    fn itl_ms(&self, b: f64) -> f64 {
        self.profile.itl.at(b).max(0.0)
    }

    /// Requests completed per ms with `b` running.
    fn rate(&self, b: u32) -> f64 {
        let b = f64::from(b);
        b / (b * self.prefill_ms() + self.mix.output * self.itl_ms(b))
    }

    /// Latencies at `lambda` requests per ms; `None` when the queue grows
    /// without bound.
    fn at(&self, lambda: f64) -> Option<Latencies> {
        let full = self.rate(self.batch);
        if lambda >= full {
            return None;
        }
        // Unnormalised p(n) for n = 0..=B, then the geometric tail.
        let (mut p, mut total, mut batch_weight, mut running) = (1.0, 1.0, 0.0, 0.0);
        for n in 1..=self.batch {
            p *= lambda / self.rate(n);
            total += p;
            batch_weight += p * f64::from(n);
            running += p;
        }
        let rho = lambda / full;
        // States B+1, B+2, …: p(B)·ρ^k; their batch is B and their queue k.
        let tail = p * rho / (1.0 - rho);
        let queued = p * rho / ((1.0 - rho) * (1.0 - rho));
        total += tail;
        batch_weight += tail * f64::from(self.batch);
        running += tail;
        // The batch a running request shares, weighted by how many share it.
        let busy_batch = if running > 0.0 {
            batch_weight / running
        } else {
            1.0
        };
        let prefill = self.prefill_ms();
        let stalled = (1.0 - lambda * prefill).max(f64::MIN_POSITIVE);
        let wait = if lambda > 0.0 {
            queued / total / lambda
        } else {
            0.0
        };
        Some(Latencies {
            itl_ms: self.itl_ms(busy_batch.max(1.0)) / stalled,
            ttft_ms: wait + prefill,
        })
    }
}

/// The largest arrival rate one replica sustains within `objectives`.
/// `batch` is the largest batch the replica holds.
pub fn sustains(profile: Profile, mix: TokenMix, batch: u32, objectives: Objectives) -> Sustains {
    let server = Server {
        profile,
        mix,
        batch: batch.max(1),
    };
    let lone = Latencies {
        itl_ms: server.itl_ms(1.0),
        ttft_ms: server.prefill_ms(),
    };
    if lone.itl_ms > objectives.itl_ms {
        return Sustains::Unattainable(Miss::Itl {
            lone_ms: lone.itl_ms,
            objective_ms: objectives.itl_ms,
        });
    }
    if lone.ttft_ms > objectives.ttft_ms {
        return Sustains::Unattainable(Miss::Ttft {
            lone_ms: lone.ttft_ms,
            objective_ms: objectives.ttft_ms,
        });
    }
    let meets = |lambda: f64| {
        server
            .at(lambda)
            .filter(|l| l.itl_ms <= objectives.itl_ms && l.ttft_ms <= objectives.ttft_ms)
    };
    // Bisection on [0, μ(B)): both latencies grow with the rate.
    let (mut low, mut high) = (0.0, server.rate(server.batch));
    let mut at_low = lone;
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        match meets(mid) {
            Some(latencies) => (low, at_low) = (mid, latencies),
            None => high = mid,
        }
    }
    Sustains::Rate {
        per_second: low * 1000.0,
        itl_ms: at_low.itl_ms,
        ttft_ms: at_low.ttft_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hybrid::profile::SIMULATOR;

    fn sim() -> Profile {
        SIMULATOR
    }

    const MIX: TokenMix = TokenMix {
        prompt: 1000.0,
        output: 200.0,
    };

    fn rate(s: Sustains) -> f64 {
        match s {
            Sustains::Rate { per_second, .. } => per_second,
            Sustains::Unattainable(miss) => panic!("{miss}"),
        }
    }

    #[test]
    fn at_the_rate_found_the_binding_objective_is_met_exactly() {
        let loose_ttft = Objectives {
            itl_ms: 20.0,
            ttft_ms: 60_000.0,
        };
        let Sustains::Rate {
            itl_ms, ttft_ms, ..
        } = sustains(sim(), MIX, 256, loose_ttft)
        else {
            panic!("attainable");
        };
        assert!((itl_ms - 20.0).abs() < 1e-6, "ITL binds: {itl_ms}");
        assert!(ttft_ms < 60_000.0);
        let loose_itl = Objectives {
            itl_ms: 1_000.0,
            ttft_ms: 500.0,
        };
        let Sustains::Rate { ttft_ms, .. } = sustains(sim(), MIX, 256, loose_itl) else {
            panic!("attainable");
        };
        assert!((ttft_ms - 500.0).abs() < 1e-6, "TTFT binds: {ttft_ms}");
    }

    #[test]
    fn the_rate_is_below_the_full_batchs_throughput_and_above_a_lone_requests() {
        let objectives = Objectives {
            itl_ms: 30.0,
            ttft_ms: 2_000.0,
        };
        let per_second = rate(sustains(sim(), MIX, 64, objectives));
        // One request alone: 120 ms prefill + 200 × 10.2 ms = 2.16 s.
        assert!(per_second > 1.0 / 2.16, "{per_second}");
        // 64 running: 64 / (64 × 120 ms + 200 × 22.8 ms) = 5.23/s.
        assert!(per_second < 5.23, "{per_second}");
    }

    #[test]
    fn tighter_objectives_and_longer_requests_sustain_less() {
        let objectives = |itl_ms, ttft_ms| Objectives { itl_ms, ttft_ms };
        let base = rate(sustains(sim(), MIX, 128, objectives(24.0, 500.0)));
        let tighter_itl = rate(sustains(sim(), MIX, 128, objectives(15.0, 500.0)));
        let longer = TokenMix {
            prompt: 1000.0,
            output: 400.0,
        };
        let long = rate(sustains(sim(), longer, 128, objectives(24.0, 500.0)));
        assert!(
            tighter_itl < base && long < base,
            "{tighter_itl} {long} vs {base}"
        );
        // A batch of 4 fills early, and then requests queue: the time to
        // first token binds, and a tighter one sustains less.
        let small = rate(sustains(sim(), MIX, 4, objectives(24.0, 500.0)));
        let small_tight = rate(sustains(sim(), MIX, 4, objectives(24.0, 200.0)));
        assert!(
            small_tight < small && small < base,
            "{small_tight} {small} vs {base}"
        );
        // Where the batch never fills, a time to first token above the
        // prefill costs nothing.
        let tighter_ttft = rate(sustains(sim(), MIX, 128, objectives(24.0, 200.0)));
        assert_eq!(tighter_ttft, base);
    }

    #[test]
    fn an_objective_a_lone_request_misses_is_unattainable() {
        let miss = sustains(
            sim(),
            MIX,
            64,
            Objectives {
                itl_ms: 8.0,
                ttft_ms: 500.0,
            },
        );
        assert_eq!(
            miss,
            Sustains::Unattainable(Miss::Itl {
                lone_ms: 10.2,
                objective_ms: 8.0
            })
        );
        let Sustains::Unattainable(miss) = sustains(
            sim(),
            MIX,
            64,
            Objectives {
                itl_ms: 24.0,
                ttft_ms: 100.0,
            },
        ) else {
            panic!("prefill alone takes 120 ms");
        };
        assert_eq!(
            miss.to_string(),
            "a lone request's time to first token is 120.0 ms, over the objective of 100 ms"
        );
    }
}
