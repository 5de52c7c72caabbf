//! Performance profiles: how a (model, accelerator)'s latency grows with
//! load, fitted online from the agents' cumulative counters.
//!
//! A vLLM engine's inter-token latency grows about linearly with its decode
//! batch (`itl ≈ α + β·batch`) and its prefill time with the prompt
//! (`prefill ≈ γ + δ·tokens`). Two consecutive samples of one pod give an
//! [`Interval`]; a [`ProfileFit`] feeds intervals to two weighted
//! least-squares fits that forget old points, and abstains until both are
//! good enough to extrapolate from.
//!
//! Batches are per engine rank: a pod's signals are summed over its
//! data-parallel ranks, and each rank decodes its own batch.

use std::fmt;

use serde::{Deserialize, Serialize};
use wva_proto::v1::{Counters, ModelSignals};

/// Half-life of the fits, in points, when the operator gives none: about
/// eight minutes of one pod sampled twice a second, under a minute of ten.
/// Long enough to average over load swings, short enough to follow a new
/// vLLM version or driver within a rollout.
pub const DEFAULT_HALF_LIFE_POINTS: f64 = 1000.0;

/// `intercept + slope·x`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub intercept: f64,
    pub slope: f64,
}

impl Linear {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// Weighted least squares of `y` on `x` and, optionally, a second
/// regressor `z`, kept as running centred sums so that a new point costs
/// O(1) and old points fade geometrically.
///
/// `z` is there for the decode fit: a step that also prefills is longer by
/// its prompt tokens, so the ITL a pod measures rises with the arrival rate
/// as well as with the batch (`itl ≈ α + β·batch + c·prompt tokens per
/// step`). Where `z` never varied, or only ever moved with `x`, the fit is
/// the line in `x` alone.
#[derive(Debug, Clone)]
pub struct LinearFit {
    /// Factor applied to everything seen before each new point.
    decay: f64,
    weight: f64,
    mean_x: f64,
    mean_z: f64,
    mean_y: f64,
    /// Weighted sums of squared and crossed deviations from the means. Kept
    /// centred (West's update): raw sums of x² would cancel catastrophically
    /// for prompts of 100,000 tokens that vary by ten.
    sxx: f64,
    sxz: f64,
    szz: f64,
    sxy: f64,
    szy: f64,
    syy: f64,
}

/// What a [`LinearFit`] says about its data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// `y` against `x`, with `z`'s part taken out.
    pub line: Linear,
    /// The coefficient of `z`; none when the fit has no such term (`z`
    /// never varied apart from `x`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z_slope: Option<f64>,
    /// Share of the variance of y the fit explains; 1 when y never varied.
    pub r_squared: f64,
    /// Sum of the (decayed) weights.
    pub weight: f64,
    /// Weighted mean of x.
    pub x_mean: f64,
    /// Weighted mean of y.
    pub y_mean: f64,
    /// Weighted standard deviation of x, less what `z` explains: a slope
    /// needs x to have varied on its own.
    pub x_spread: f64,
    /// Weighted RMS distance of y from the fit, in y's unit.
    pub residual: f64,
}

/// Below this share of its variance left once the other regressor explains
/// what it can, a regressor is taken to move with the other one, and the
/// two cannot be told apart.
const COLLINEAR: f64 = 1e-3;

impl LinearFit {
    /// A fit where a point's weight halves every `half_life_points` newer
    /// points. Infinite, zero, negative or NaN: no forgetting.
    pub fn new(half_life_points: f64) -> Self {
        let decay = if half_life_points > 0.0 {
            0.5_f64.powf(half_life_points.recip())
        } else {
            1.0
        };
        LinearFit {
            decay,
            weight: 0.0,
            mean_x: 0.0,
            mean_z: 0.0,
            mean_y: 0.0,
            sxx: 0.0,
            sxz: 0.0,
            szz: 0.0,
            sxy: 0.0,
            szy: 0.0,
            syy: 0.0,
        }
    }

    /// Adds a point of the line in `x` alone; see [`LinearFit::add_with`].
    pub fn add(&mut self, x: f64, y: f64, weight: f64) -> bool {
        self.add_with(x, 0.0, y, weight)
    }

    /// Adds a point; false, and nothing changes, unless x, z and y are
    /// finite and non-negative (latencies, batches and token counts all
    /// are) and the weight is finite and positive.
    pub fn add_with(&mut self, x: f64, z: f64, y: f64, weight: f64) -> bool {
        let usable = |v: f64| v.is_finite() && v >= 0.0;
        if !(usable(x) && usable(z) && usable(y) && weight.is_finite() && weight > 0.0) {
            return false;
        }
        for sum in [
            &mut self.weight,
            &mut self.sxx,
            &mut self.sxz,
            &mut self.szz,
            &mut self.sxy,
            &mut self.szy,
            &mut self.syy,
        ] {
            *sum *= self.decay;
        }
        let total = self.weight + weight;
        let (dx, dz, dy) = (x - self.mean_x, z - self.mean_z, y - self.mean_y);
        self.mean_x += dx * weight / total;
        self.mean_z += dz * weight / total;
        self.mean_y += dy * weight / total;
        // The deviation from the old mean times the one from the new mean
        // adds exactly this point's share of the centred sums.
        let (ex, ez, ey) = (x - self.mean_x, z - self.mean_z, y - self.mean_y);
        self.sxx += weight * dx * ex;
        self.sxz += weight * dx * ez;
        self.szz += weight * dz * ez;
        self.sxy += weight * dx * ey;
        self.szy += weight * dz * ey;
        self.syy += weight * dy * ey;
        self.weight = total;
        true
    }

    /// The best fit so far; none before the first point. When x never
    /// varied the line is flat through the mean y, and its zero spread says
    /// the slope is unknown.
    pub fn estimate(&self) -> Option<Estimate> {
        if self.weight <= 0.0 {
            return None;
        }
        let (slope, z_slope, sxx_alone) = self.solve();
        let explained = slope * self.sxy + z_slope.unwrap_or(0.0) * self.szy;
        // Rounding may leave a perfect fit a hair below zero.
        let unexplained = (self.syy - explained).max(0.0);
        let r_squared = if self.syy > 0.0 {
            1.0 - unexplained / self.syy
        } else {
            1.0
        };
        Some(Estimate {
            line: Linear {
                intercept: self.mean_y - slope * self.mean_x - z_slope.unwrap_or(0.0) * self.mean_z,
                slope,
            },
            z_slope,
            r_squared,
            weight: self.weight,
            x_mean: self.mean_x,
            y_mean: self.mean_y,
            x_spread: (sxx_alone.max(0.0) / self.weight).sqrt(),
            residual: (unexplained / self.weight).sqrt(),
        })
    }

    /// The slopes of x and z, and x's centred sum of squares left once z
    /// has explained what it can. z takes part only when it varied apart
    /// from x and its slope is not negative: a step is never shorter for
    /// prefilling.
    fn solve(&self) -> (f64, Option<f64>, f64) {
        let alone = || {
            let slope = if self.sxx > 0.0 {
                self.sxy / self.sxx
            } else {
                0.0
            };
            (slope, None, self.sxx)
        };
        if self.sxx <= 0.0 || self.szz <= 0.0 {
            return alone();
        }
        let det = self.sxx * self.szz - self.sxz * self.sxz;
        if det <= COLLINEAR * self.sxx * self.szz {
            return alone();
        }
        let z_slope = (self.szy * self.sxx - self.sxy * self.sxz) / det;
        if z_slope < 0.0 {
            return alone();
        }
        let slope = (self.sxy * self.szz - self.szy * self.sxz) / det;
        (slope, Some(z_slope), det / self.szz)
    }
}

/// One weighted observation of a fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    /// The second regressor; zero where the fit has none.
    pub z: f64,
    pub y: f64,
    pub weight: f64,
}

/// What one pod did for one model between two consecutive samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Mean batch per engine rank and prompt tokens prefilled per decode
    /// step → mean ITL in ms, weighted by the tokens timed. None when no
    /// token was.
    pub decode: Option<Point>,
    /// Mean prompt tokens → mean TTFT in ms, weighted by the first tokens
    /// timed. None when none was.
    pub prefill: Option<Point>,
    /// Requests waited at either end: TTFT then includes queueing.
    pub waited: bool,
}

impl Interval {
    /// None when either sample lacks counters or a counter went backwards
    /// (the pod restarted: the two samples measure different lives).
    pub fn between(previous: &ModelSignals, current: &ModelSignals) -> Option<Interval> {
        let (before, after) = (previous.counters.as_ref()?, current.counters.as_ref()?);
        let grew = |counter: fn(&Counters) -> f64| {
            let d = counter(after) - counter(before);
            // NaN fails the comparison too.
            (d >= 0.0).then_some(d)
        };
        let itl_sum = grew(|c| c.itl_seconds_sum)?;
        let tokens = grew(|c| c.itl_seconds_count)?;
        let ttft_sum = grew(|c| c.ttft_seconds_sum)?;
        let first_tokens = grew(|c| c.ttft_seconds_count)?;
        // vLLM (and vllm-sim) count a request's prompt tokens when its first
        // token comes, as TTFT is observed: the same requests. The prompt
        // histogram is observed at completion, on other requests.
        let prompt_tokens = grew(|c| c.prompt_tokens)?;
        let batch = (per_rank(previous) + per_rank(current)) / 2.0;
        Some(Interval {
            // Each rank's step gives each of its `batch` requests a token,
            // so the ranks took `tokens / batch` steps between them, and
            // the prompts were prefilled across those steps.
            decode: (tokens > 0.0).then(|| Point {
                x: batch,
                z: prompt_tokens * batch / tokens,
                y: itl_sum / tokens * 1000.0,
                weight: tokens,
            }),
            prefill: (first_tokens > 0.0).then(|| Point {
                x: prompt_tokens / first_tokens,
                z: 0.0,
                y: ttft_sum / first_tokens * 1000.0,
                weight: first_tokens,
            }),
            waited: previous.requests_waiting > 0.0 || current.requests_waiting > 0.0,
        })
    }
}

/// Requests running per data-parallel rank; an agent that reports no ranks
/// runs one.
fn per_rank(s: &ModelSignals) -> f64 {
    s.requests_running / f64::from(s.engines.max(1))
}

/// A (model, accelerator)'s latency: ITL in ms against the batch per engine
/// rank, prefill in ms against prompt tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub itl: Linear,
    pub prefill: Linear,
    /// vLLM's `max_num_seqs`, when the operator gave it: a fit never learns
    /// it (the largest batch seen is only a lower bound, in [`Quality`]).
    pub max_batch: Option<u32>,
}

/// The simulator's defaults (`vllm-sim`: 10 ms + 0.2 ms per running
/// request a token, 20 ms + 0.1 ms per prompt token of prefill), which the
/// tests recover and plan with.
#[cfg(test)]
pub(crate) const SIMULATOR: Profile = Profile {
    itl: Linear {
        intercept: 10.0,
        slope: 0.2,
    },
    prefill: Linear {
        intercept: 20.0,
        slope: 0.1,
    },
    max_batch: None,
};

/// When a fit is trusted. Latencies are in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitRules {
    /// Tokens behind the decode fit. 1,000 is a second of a pod at batch
    /// ten: several intervals, each mean ITL over many tokens.
    pub decode_min_tokens: f64,
    /// Standard deviation of the batch, in requests: below one the batch
    /// barely moved and the slope is mostly noise.
    pub decode_min_batch_spread: f64,
    /// Requests behind the prefill fit. A TTFT varies by up to a step (it
    /// waits for the running one to end), so twenty of them, whose mean is
    /// then within a few percent; more would leave a ramp unplanned until
    /// it has already filled the replicas.
    pub prefill_min_requests: f64,
    /// Standard deviation of the prompt as a share of its mean: prompts all
    /// of one size cannot tell the per-token cost from the overhead, so
    /// below it the prefill is their mean TTFT, flat.
    pub prefill_min_prompt_spread: f64,
    /// A line explaining this share of the variance is trusted...
    pub min_r_squared: f64,
    /// ...and so is one whose RMS residual is within this share of the mean
    /// latency: where load varied little, a flat but accurate line is still
    /// a good prediction though it explains little variance.
    pub max_relative_residual: f64,
}

impl Default for FitRules {
    fn default() -> Self {
        FitRules {
            decode_min_tokens: 1000.0,
            decode_min_batch_spread: 1.0,
            prefill_min_requests: 20.0,
            prefill_min_prompt_spread: 0.1,
            min_r_squared: 0.7,
            max_relative_residual: 0.05,
        }
    }
}

/// The two fits as they stand, for the decision's status.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quality {
    /// Batch → ITL (ms); weight in tokens. Its `zSlope` is what each
    /// prompt token prefilled in a step adds to that step, in ms.
    pub decode: Option<Estimate>,
    /// Prompt tokens → TTFT (ms); weight in requests.
    pub prefill: Option<Estimate>,
    /// The largest mean batch the decode fit saw: beyond it, extrapolation.
    pub largest_batch: f64,
}

/// Which fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Decode,
    Prefill,
}

/// Why a fit is not trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoData,
    LittleWeight,
    NarrowSpread,
    Noisy,
    /// Latency falls with load, or is negative at zero, beyond the noise.
    Unphysical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Why {
    pub side: Side,
    pub reason: Reason,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (fit, x) = match self.side {
            Side::Decode => ("inter-token latency", "batch size"),
            Side::Prefill => ("time to first token", "prompt length"),
        };
        match self.reason {
            Reason::NoData => write!(f, "{fit}: not observed yet"),
            Reason::LittleWeight => write!(f, "{fit}: too few observations"),
            Reason::NarrowSpread => write!(f, "{fit}: {x} has not varied enough"),
            Reason::Noisy => write!(f, "{fit}: too noisy to fit a line"),
            Reason::Unphysical => write!(f, "{fit}: falls as {x} grows, or is negative"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fitted {
    Ready { profile: Profile, quality: Quality },
    Learning { quality: Quality, why: Why },
}

/// The profile being learned for one (model, accelerator).
#[derive(Debug, Clone)]
pub struct ProfileFit {
    decode: LinearFit,
    prefill: LinearFit,
    largest_batch: f64,
}

impl ProfileFit {
    pub fn new(half_life_points: f64) -> Self {
        ProfileFit {
            decode: LinearFit::new(half_life_points),
            prefill: LinearFit::new(half_life_points),
            largest_batch: 0.0,
        }
    }

    /// Adds an interval's decode point and, when no request waited (TTFT
    /// is then prefill, not queueing), its prefill point.
    pub fn observe(&mut self, interval: &Interval) {
        if let Some(p) = interval.decode
            && self.decode.add_with(p.x, p.z, p.y, p.weight)
        {
            self.largest_batch = self.largest_batch.max(p.x);
        }
        if let Some(p) = interval.prefill.filter(|_| !interval.waited) {
            self.prefill.add(p.x, p.y, p.weight);
        }
    }

    /// The profile, once both fits pass `rules`; otherwise the first reason
    /// they do not.
    pub fn profile(&self, rules: &FitRules) -> Fitted {
        let quality = Quality {
            decode: self.decode.estimate(),
            prefill: self.prefill.estimate(),
            largest_batch: self.largest_batch,
        };
        let lines = judge(Side::Decode, quality.decode, rules)
            .and_then(|itl| Ok((itl, judge(Side::Prefill, quality.prefill, rules)?)));
        match lines {
            Ok((itl, prefill)) => Fitted::Ready {
                profile: Profile {
                    itl,
                    prefill,
                    max_batch: None,
                },
                quality,
            },
            Err(why) => Fitted::Learning { quality, why },
        }
    }
}

/// The line to use, or why not.
fn judge(side: Side, estimate: Option<Estimate>, rules: &FitRules) -> Result<Linear, Why> {
    let fail = |reason| Why { side, reason };
    let e = estimate.ok_or(fail(Reason::NoData))?;
    let (min_weight, min_spread) = match side {
        Side::Decode => (rules.decode_min_tokens, rules.decode_min_batch_spread),
        Side::Prefill => (
            rules.prefill_min_requests,
            rules.prefill_min_prompt_spread * e.x_mean,
        ),
    };
    if e.weight < min_weight {
        return Err(fail(Reason::LittleWeight));
    }
    // Whatever the rules say, a slope needs x to have varied at all.
    if e.x_spread < min_spread || e.x_spread <= 0.0 {
        return match side {
            // The plan needs the ITL at batches not seen yet: a slope.
            Side::Decode => Err(fail(Reason::NarrowSpread)),
            // It needs the prefill only at the mix's mean prompt, which is
            // where prompts of one size put their mean TTFT. Once prompts
            // vary, a slope is fitted.
            Side::Prefill => Ok(Linear {
                intercept: e.line.at(e.x_mean),
                slope: 0.0,
            }),
        };
    }
    if e.r_squared < rules.min_r_squared && e.residual > rules.max_relative_residual * e.y_mean {
        return Err(fail(Reason::Noisy));
    }
    physical(&e).ok_or(fail(Reason::Unphysical))
}

/// The line with a negative slope or intercept that noise explains made
/// zero; none when noise cannot explain it. A slope is within noise when
/// its fall across one spread of x is below the residual; an intercept when
/// it is below the residual plus such a tilt carried from the mean to zero.
fn physical(e: &Estimate) -> Option<Linear> {
    let mut line = e.line;
    if line.slope < 0.0 {
        if -line.slope * e.x_spread > e.residual {
            return None;
        }
        line = Linear {
            intercept: line.at(e.x_mean),
            slope: 0.0,
        };
    }
    if line.intercept < 0.0 {
        let tolerance = e.residual * (1.0 + e.x_mean / e.x_spread);
        if -line.intercept > tolerance {
            return None;
        }
        line.intercept = 0.0;
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic noise without a dependency.
    struct Noise(u64);

    impl Noise {
        /// Uniform in [-1, 1).
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }

        /// Uniform in [lo, hi).
        fn between(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * (self.next() + 1.0) / 2.0
        }
    }

    /// vllm-sim's latency model.
    const ITL: Linear = SIMULATOR.itl;
    const PREFILL: Linear = SIMULATOR.prefill;

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs()
    }

    fn decode(batch: f64, itl_ms: f64, tokens: f64) -> Interval {
        Interval {
            decode: Some(Point {
                x: batch,
                z: 0.0,
                y: itl_ms,
                weight: tokens,
            }),
            prefill: None,
            waited: false,
        }
    }

    fn prefill(prompt: f64, ttft_ms: f64, requests: f64) -> Interval {
        Interval {
            decode: None,
            prefill: Some(Point {
                x: prompt,
                z: 0.0,
                y: ttft_ms,
                weight: requests,
            }),
            waited: false,
        }
    }

    /// A fit whose prefill side is ready, so the decode side decides.
    fn with_good_prefill(noise: &mut Noise) -> ProfileFit {
        let mut fit = ProfileFit::new(f64::INFINITY);
        for _ in 0..100 {
            let prompt = noise.between(100.0, 4000.0);
            fit.observe(&prefill(prompt, PREFILL.at(prompt), 2.0));
        }
        fit
    }

    fn why(fitted: Fitted) -> Option<Why> {
        match fitted {
            Fitted::Learning { why, .. } => Some(why),
            Fitted::Ready { .. } => None,
        }
    }

    fn ready(fitted: Fitted) -> Option<Profile> {
        match fitted {
            Fitted::Ready { profile, .. } => Some(profile),
            Fitted::Learning { .. } => None,
        }
    }

    fn signals(running: f64, waiting: f64, counters: Counters) -> ModelSignals {
        ModelSignals {
            model: "m".into(),
            requests_running: running,
            requests_waiting: waiting,
            counters: Some(counters),
            engines: 1,
            ..ModelSignals::default()
        }
    }

    /// A pod's cumulative counters after one more interval at `batch`
    /// running, with ±5 % noise on both latencies. Its prefills run apart
    /// from its decodes, as in disaggregated serving.
    fn serve(c: &mut Counters, noise: &mut Noise, batch: f64, prompt: f64) {
        let tokens = (batch * 50.0).round();
        let requests = 3.0;
        let itl_ms = ITL.at(batch) * (1.0 + 0.05 * noise.next());
        let ttft_ms = PREFILL.at(prompt) * (1.0 + 0.05 * noise.next());
        c.itl_seconds_count += tokens;
        c.itl_seconds_sum += tokens * itl_ms / 1000.0;
        c.ttft_seconds_count += requests;
        c.ttft_seconds_sum += requests * ttft_ms / 1000.0;
        c.prompt_tokens += requests * prompt;
    }

    #[test]
    fn recovers_the_simulators_profile_from_a_pods_counters() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut fit = ProfileFit::new(DEFAULT_HALF_LIFE_POINTS);
        let mut counters = Counters::default();
        let mut previous = signals(1.0, 0.0, counters);
        for _ in 0..2000 {
            // Both ends at the same batch, so the interval's mean is it.
            let batch = noise.between(1.0, 65.0).floor();
            let prompt = noise.between(100.0, 4000.0);
            serve(&mut counters, &mut noise, batch, prompt);
            let start = ModelSignals {
                requests_running: batch,
                ..previous
            };
            let current = signals(batch, 0.0, counters);
            let interval = Interval::between(&start, &current);
            fit.observe(&interval.expect("counters only grew"));
            previous = current;
        }
        let profile = ready(fit.profile(&FitRules::default())).expect("ready");
        // Within 5 %.
        assert!(close(profile.itl.intercept, 10.0, 0.05), "{profile:?}");
        assert!(close(profile.itl.slope, 0.2, 0.05), "{profile:?}");
        assert!(close(profile.prefill.intercept, 20.0, 0.05), "{profile:?}");
        assert!(close(profile.prefill.slope, 0.1, 0.05), "{profile:?}");
        assert_eq!(profile.max_batch, None);
    }

    #[test]
    fn prefills_sharing_the_decode_steps_are_taken_out_of_the_itl() {
        // The demo's shape: prompts of one size, arrivals rising with the
        // batch but Poisson-noisy, each prefill lengthening the step it
        // shares by the simulator's overhead and per-token cost.
        let prompt = 512.0;
        let steps = 50.0;
        let mut noise = Noise(0x5eed);
        let mut fit = ProfileFit::new(DEFAULT_HALF_LIFE_POINTS);
        let mut batch_alone = LinearFit::new(DEFAULT_HALF_LIFE_POINTS);
        let mut counters = Counters::default();
        let mut previous = signals(1.0, 0.0, counters);
        for _ in 0..600 {
            let rate = noise.between(0.5, 6.0);
            let batch = (2.5 * rate * (1.0 + 0.3 * noise.next())).round().max(1.0);
            // Poisson's spread: the standard deviation is √rate.
            let arrivals = (rate + 1.7 * rate.sqrt() * noise.next()).round().max(0.0);
            let shared = arrivals * PREFILL.at(prompt) / steps;
            let itl_ms = ITL.at(batch) * (1.0 + 0.05 * noise.next()) + shared;
            let tokens = steps * batch;
            counters.itl_seconds_count += tokens;
            counters.itl_seconds_sum += tokens * itl_ms / 1000.0;
            counters.ttft_seconds_count += arrivals;
            counters.ttft_seconds_sum += arrivals * PREFILL.at(prompt) / 1000.0;
            counters.prompt_tokens += arrivals * prompt;
            let start = ModelSignals {
                requests_running: batch,
                ..previous
            };
            let current = signals(batch, 0.0, counters);
            let interval = Interval::between(&start, &current).expect("counters only grew");
            fit.observe(&interval);
            let d = interval.decode.expect("tokens were timed");
            batch_alone.add(d.x, d.y, d.weight);
            previous = current;
        }
        // A line in the batch alone cannot tell a busier step from a
        // bigger batch.
        let alone = batch_alone.estimate().expect("points");
        assert!(alone.r_squared < 0.7, "{alone:?}");
        assert!(alone.residual > 0.05 * alone.y_mean, "{alone:?}");

        let Fitted::Ready { profile, quality } = fit.profile(&FitRules::default()) else {
            panic!(
                "the prefill work explains the noise: {:?}",
                fit.profile(&FitRules::default())
            );
        };
        assert!(close(profile.itl.intercept, 10.0, 0.05), "{profile:?}");
        assert!(close(profile.itl.slope, 0.2, 0.05), "{profile:?}");
        // With prompts of one size, the overhead shares the prompt's tokens.
        let per_token = PREFILL.at(prompt) / prompt;
        let decode = quality.decode.expect("fitted");
        let z_slope = decode
            .z_slope
            .expect("prefill work varied apart from the batch");
        assert!(close(z_slope, per_token, 0.05), "{decode:?}");
        assert!(decode.r_squared > 0.9, "{decode:?}");
    }

    #[test]
    fn an_interval_averages_the_counters_growth() {
        let before = Counters {
            itl_seconds_sum: 1.0,
            itl_seconds_count: 100.0,
            ttft_seconds_sum: 2.0,
            ttft_seconds_count: 10.0,
            prompt_tokens: 5000.0,
            ..Counters::default()
        };
        let after = Counters {
            // 200 tokens at 12 ms; 4 first tokens at 150 ms, of 1000-token prompts.
            itl_seconds_sum: 3.4,
            itl_seconds_count: 300.0,
            ttft_seconds_sum: 2.6,
            ttft_seconds_count: 14.0,
            prompt_tokens: 9000.0,
            ..Counters::default()
        };
        let mut end = signals(12.0, 0.0, after);
        end.engines = 2;
        let i = Interval::between(&signals(4.0, 0.0, before), &end).expect("grew");
        let d = i.decode.expect("tokens were timed");
        // (4 / 1 + 12 / 2) / 2 requests per rank.
        assert_eq!(d.x, 5.0);
        assert!(close(d.y, 12.0, 1e-9), "{d:?}");
        assert_eq!(d.weight, 200.0);
        let p = i.prefill.expect("first tokens were timed");
        assert_eq!((p.x, p.weight), (1000.0, 4.0));
        assert!(close(p.y, 150.0, 1e-9), "{p:?}");
        assert!(!i.waited);
    }

    #[test]
    fn a_restarted_pod_gives_no_interval() {
        let before = Counters {
            itl_seconds_sum: 5.0,
            itl_seconds_count: 500.0,
            ..Counters::default()
        };
        let after = Counters {
            itl_seconds_sum: 0.1,
            itl_seconds_count: 10.0,
            ..Counters::default()
        };
        assert_eq!(
            Interval::between(&signals(3.0, 0.0, before), &signals(3.0, 0.0, after)),
            None
        );
        let no_counters = ModelSignals::default();
        assert_eq!(Interval::between(&no_counters, &no_counters), None);
    }

    #[test]
    fn no_timed_token_gives_no_point() {
        let c = Counters {
            itl_seconds_sum: 5.0,
            itl_seconds_count: 500.0,
            ..Counters::default()
        };
        let i = Interval::between(&signals(3.0, 0.0, c), &signals(3.0, 0.0, c))
            .expect("nothing went back");
        assert_eq!((i.decode, i.prefill), (None, None));
    }

    #[test]
    fn waiting_requests_keep_ttft_out_of_the_prefill_fit() {
        let before = Counters::default();
        let after = Counters {
            itl_seconds_sum: 1.0,
            itl_seconds_count: 100.0,
            ttft_seconds_sum: 5.0,
            ttft_seconds_count: 10.0,
            prompt_tokens: 10_000.0,
            ..Counters::default()
        };
        let i =
            Interval::between(&signals(8.0, 0.0, before), &signals(8.0, 2.0, after)).expect("grew");
        assert!(i.waited);
        let mut fit = ProfileFit::new(f64::INFINITY);
        fit.observe(&i);
        let Fitted::Learning { quality, .. } = fit.profile(&FitRules::default()) else {
            panic!("one interval is not a profile");
        };
        assert!(quality.decode.is_some());
        assert_eq!(quality.prefill, None);
        assert_eq!(quality.largest_batch, 8.0);
    }

    #[test]
    fn abstains_when_the_batch_barely_varies_and_flattens_a_prefill_whose_prompt_does_not() {
        let mut noise = Noise(7);
        let mut fit = with_good_prefill(&mut noise);
        for _ in 0..200 {
            // A standard deviation of 0.3 requests.
            let batch = noise.between(7.5, 8.5);
            fit.observe(&decode(batch, ITL.at(batch), 400.0));
        }
        let why_not = why(fit.profile(&FitRules::default())).expect("learning");
        assert_eq!(
            why_not,
            Why {
                side: Side::Decode,
                reason: Reason::NarrowSpread
            }
        );
        assert_eq!(
            why_not.to_string(),
            "inter-token latency: batch size has not varied enough"
        );
        let mut fit = ProfileFit::new(f64::INFINITY);
        for _ in 0..200 {
            let batch = noise.between(1.0, 65.0);
            fit.observe(&decode(batch, ITL.at(batch), 400.0));
            // 3 % of the mean prompt.
            let prompt = noise.between(950.0, 1050.0);
            fit.observe(&prefill(prompt, PREFILL.at(prompt), 2.0));
        }
        let Fitted::Ready { profile, .. } = fit.profile(&FitRules::default()) else {
            panic!("prompts of one size still give their prefill");
        };
        // The mean TTFT of those prompts, flat.
        assert_eq!(profile.prefill.slope, 0.0);
        let mean = PREFILL.at(1000.0);
        assert!(
            (profile.prefill.intercept - mean).abs() < 0.01 * mean,
            "{profile:?}"
        );
    }

    #[test]
    fn abstains_with_too_little_weight() {
        let mut noise = Noise(11);
        let mut fit = with_good_prefill(&mut noise);
        for batch in [1.0, 30.0, 60.0] {
            fit.observe(&decode(batch, ITL.at(batch), 100.0));
        }
        assert_eq!(
            why(fit.profile(&FitRules::default())),
            Some(Why {
                side: Side::Decode,
                reason: Reason::LittleWeight
            })
        );
        let empty = ProfileFit::new(f64::INFINITY);
        assert_eq!(
            why(empty.profile(&FitRules::default())),
            Some(Why {
                side: Side::Decode,
                reason: Reason::NoData
            })
        );
    }

    #[test]
    fn abstains_on_noise() {
        let mut noise = Noise(13);
        let mut fit = with_good_prefill(&mut noise);
        for _ in 0..500 {
            let batch = noise.between(1.0, 65.0);
            fit.observe(&decode(batch, noise.between(5.0, 50.0), 100.0));
        }
        assert_eq!(
            why(fit.profile(&FitRules::default())),
            Some(Why {
                side: Side::Decode,
                reason: Reason::Noisy
            })
        );
    }

    #[test]
    fn abstains_when_latency_falls_with_load() {
        let mut noise = Noise(17);
        let mut fit = with_good_prefill(&mut noise);
        let falling = Linear {
            intercept: 30.0,
            slope: -0.2,
        };
        for _ in 0..500 {
            let batch = noise.between(1.0, 65.0);
            let itl = falling.at(batch) * (1.0 + 0.01 * noise.next());
            fit.observe(&decode(batch, itl, 100.0));
        }
        assert_eq!(
            why(fit.profile(&FitRules::default())),
            Some(Why {
                side: Side::Decode,
                reason: Reason::Unphysical
            })
        );
    }

    #[test]
    fn a_line_negative_within_noise_is_made_physical() {
        let mut noise = Noise(19);
        let mut fit = ProfileFit::new(f64::INFINITY);
        // ITL flat but for a fall far below the noise: a flat line at the mean.
        let nearly_flat = Linear {
            intercept: 16.0,
            slope: -0.001,
        };
        // A prefill overhead a little below zero, within the noise: zero.
        let below_zero = Linear {
            intercept: -2.0,
            slope: 0.1,
        };
        for _ in 0..2000 {
            let batch = noise.between(1.0, 65.0);
            let itl = nearly_flat.at(batch) * (1.0 + 0.01 * noise.next());
            fit.observe(&decode(batch, itl, 100.0));
            let prompt = noise.between(100.0, 4000.0);
            let ttft = below_zero.at(prompt) * (1.0 + 0.05 * noise.next());
            fit.observe(&prefill(prompt, ttft, 2.0));
        }
        let profile = ready(fit.profile(&FitRules::default())).expect("ready");
        assert_eq!(profile.itl.slope, 0.0);
        assert!(close(profile.itl.intercept, 15.97, 0.01), "{profile:?}");
        assert_eq!(profile.prefill.intercept, 0.0);
        assert!(close(profile.prefill.slope, 0.1, 0.05), "{profile:?}");
    }

    /// Decode points of `line` over batches 1..64.
    fn feed(fit: &mut LinearFit, noise: &mut Noise, line: Linear, points: usize) {
        for _ in 0..points {
            let batch = noise.between(1.0, 65.0);
            fit.add(batch, line.at(batch) * (1.0 + 0.02 * noise.next()), 100.0);
        }
    }

    #[test]
    fn forgetting_follows_a_change_within_seven_half_lives() {
        let newer = Linear {
            intercept: 15.0,
            slope: 0.4,
        };
        let mut noise = Noise(23);
        let mut forgetful = LinearFit::new(100.0);
        let mut everlasting = LinearFit::new(f64::INFINITY);
        for fit in [&mut forgetful, &mut everlasting] {
            feed(fit, &mut noise, ITL, 2000);
            // Seven half-lives: the old points weigh under 1 %.
            feed(fit, &mut noise, newer, 700);
        }
        let line = forgetful.estimate().expect("points").line;
        assert!(close(line.intercept, 15.0, 0.05), "{line:?}");
        assert!(close(line.slope, 0.4, 0.05), "{line:?}");
        // Without forgetting, the old profile still dominates.
        let stale = everlasting.estimate().expect("points").line;
        assert!(!close(stale.slope, 0.4, 0.05), "{stale:?}");
    }

    #[test]
    fn large_prompts_that_vary_little_keep_their_slope() {
        let mut noise = Noise(29);
        let mut fit = LinearFit::new(DEFAULT_HALF_LIFE_POINTS);
        for _ in 0..5000 {
            let prompt = 100_000.0 + 10.0 * noise.next();
            assert!(fit.add(prompt, PREFILL.at(prompt), 100.0));
        }
        let e = fit.estimate().expect("points");
        // Raw sums of x² lose about 1e-6 of the slope and of R² here.
        assert!(close(e.line.slope, 0.1, 1e-9), "{e:?}");
        assert!(e.r_squared > 1.0 - 1e-9, "{e:?}");
        assert!(close(e.x_spread, 10.0 / 3f64.sqrt(), 0.05), "{e:?}");
    }

    #[test]
    fn a_second_regressor_that_only_moves_with_the_first_is_left_out() {
        let mut noise = Noise(31);
        let mut fit = LinearFit::new(f64::INFINITY);
        for _ in 0..500 {
            let batch = noise.between(1.0, 65.0);
            // Four prompt tokens a step per request running, always.
            let y = ITL.at(batch) + 0.1 * 4.0 * batch;
            assert!(fit.add_with(batch, 4.0 * batch, y, 100.0));
        }
        let e = fit.estimate().expect("points");
        assert_eq!(e.z_slope, None);
        // The line in the batch alone carries both.
        assert!(close(e.line.slope, 0.2 + 0.4, 1e-9), "{e:?}");
        assert!(close(e.x_spread, 64.0 / 12f64.sqrt(), 0.1), "{e:?}");
    }

    #[test]
    fn a_step_is_never_shorter_for_prefilling() {
        let mut noise = Noise(37);
        let mut fit = LinearFit::new(f64::INFINITY);
        for _ in 0..500 {
            let batch = noise.between(1.0, 65.0);
            let prompt_tokens = noise.between(0.0, 100.0);
            let y = ITL.at(batch) - 0.01 * prompt_tokens;
            assert!(fit.add_with(batch, prompt_tokens, y, 100.0));
        }
        let e = fit.estimate().expect("points");
        assert_eq!(e.z_slope, None);
        assert!(close(e.line.slope, 0.2, 0.05), "{e:?}");
    }

    #[test]
    fn unusable_points_are_refused() {
        let mut fit = LinearFit::new(f64::NAN);
        assert!(!fit.add(f64::NAN, 1.0, 1.0));
        assert!(!fit.add(1.0, f64::INFINITY, 1.0));
        assert!(!fit.add(-1.0, 1.0, 1.0));
        assert!(!fit.add(1.0, -1.0, 1.0));
        assert!(!fit.add(1.0, 1.0, 0.0));
        assert!(!fit.add(1.0, 1.0, f64::NAN));
        assert_eq!(fit.estimate(), None);
        assert!(fit.add(1.0, 1.0, 1.0));
        assert!(fit.estimate().is_some());
    }
}
