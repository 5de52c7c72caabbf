//! The numbers behind `/metrics`: one [`EngineMetrics`] per engine rank,
//! updated by its scheduler, written in vLLM 0.11's exposition by
//! [`exposition`] and narrowed to a scrape's `name[]` by [`restrict`].

pub mod exposition;
pub mod lora;
pub mod restrict;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use crate::finish::FinishReason;

/// A Prometheus histogram with fixed upper bounds (`+Inf` implied).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Per-bucket (not cumulative) counts; the last one is the `+Inf` bucket.
    counts: Box<[u64]>,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: Arc<[f64]>) -> Self {
        let counts = vec![0; bounds.len() + 1].into_boxed_slice();
        Self {
            bounds,
            counts,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    pub fn observe_duration(&mut self, value: Duration) {
        self.observe(value.as_secs_f64());
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Cumulative counts, one per bound and a last one for `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0, |total, count| {
            *total += count;
            Some(*total)
        })
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, … up to `max`.
pub fn one_two_five_buckets(max: u32) -> Arc<[f64]> {
    let max = u64::from(max);
    let mut bounds = Vec::new();
    let mut scale = 1_u64;
    'outer: loop {
        for mantissa in [1, 2, 5] {
            let bound = mantissa * scale;
            if bound > max {
                break 'outer;
            }
            bounds.push(bound as f64);
        }
        scale *= 10;
    }
    bounds.into()
}

const ITERATION_TOKENS_BUCKETS: [f64; 13] = [
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const PARAMS_N_BUCKETS: [f64; 5] = [1.0, 2.0, 5.0, 10.0, 20.0];
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TOKEN_LATENCY_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Speculative-decoding counters (only with `--num-speculative-tokens`).
#[derive(Debug, Clone)]
pub struct SpecDecodeMetrics {
    pub drafts: u64,
    pub draft_tokens: u64,
    pub accepted_tokens: u64,
    /// Accepted tokens per draft position.
    pub accepted_per_position: Vec<u64>,
}

/// Everything one engine rank reports besides its live gauges.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Unix time at which the series were created (the `_created` samples).
    pub created: f64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Finished requests, indexed by [`FinishReason::index`].
    pub request_success: [u64; 3],
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    pub iteration_tokens: Histogram,
    pub request_max_num_generation_tokens: Histogram,
    pub request_params_n: Histogram,
    pub request_params_max_tokens: Histogram,
    pub time_to_first_token: Histogram,
    /// Also written as the deprecated `time_per_output_token_seconds`, which
    /// vLLM 0.11 observes with the same values.
    pub inter_token_latency: Histogram,
    pub request_time_per_output_token: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
    pub request_inference_time: Histogram,
    pub request_prefill_time: Histogram,
    pub request_decode_time: Histogram,
    pub spec_decode: Option<SpecDecodeMetrics>,
}

/// Timings and sizes of one finished sequence.
#[derive(Debug, Clone, Copy)]
pub struct FinishedRequest {
    pub reason: FinishReason,
    pub e2e: Duration,
    pub queued: Duration,
    pub prefill: Duration,
    pub decode: Duration,
    pub inference: Duration,
    pub prompt_tokens: u32,
    pub generation_tokens: u32,
    pub max_tokens_param: Option<u32>,
}

impl EngineMetrics {
    /// Empty metrics for an engine serving `max_model_len` tokens, with
    /// `spec_tokens` draft positions when speculative decoding is on.
    pub fn new(max_model_len: u32, spec_tokens: Option<u32>, created: f64) -> Self {
        let tokens = one_two_five_buckets(max_model_len);
        let token_latency: Arc<[f64]> = TOKEN_LATENCY_BUCKETS.into();
        let request_latency: Arc<[f64]> = REQUEST_LATENCY_BUCKETS.into();
        Self {
            created,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            request_success: [0; 3],
            request_prompt_tokens: Histogram::new(tokens.clone()),
            request_generation_tokens: Histogram::new(tokens.clone()),
            iteration_tokens: Histogram::new(ITERATION_TOKENS_BUCKETS.into()),
            request_max_num_generation_tokens: Histogram::new(tokens.clone()),
            request_params_n: Histogram::new(PARAMS_N_BUCKETS.into()),
            request_params_max_tokens: Histogram::new(tokens),
            time_to_first_token: Histogram::new(TTFT_BUCKETS.into()),
            inter_token_latency: Histogram::new(token_latency.clone()),
            request_time_per_output_token: Histogram::new(token_latency),
            e2e_request_latency: Histogram::new(request_latency.clone()),
            request_queue_time: Histogram::new(request_latency.clone()),
            request_inference_time: Histogram::new(request_latency.clone()),
            request_prefill_time: Histogram::new(request_latency.clone()),
            request_decode_time: Histogram::new(request_latency),
            spec_decode: spec_tokens.map(|k| SpecDecodeMetrics {
                drafts: 0,
                draft_tokens: 0,
                accepted_tokens: 0,
                accepted_per_position: vec![0; k as usize],
            }),
        }
    }

    /// Records a finished sequence the way vLLM's stat logger does.
    pub fn record_finished(&mut self, done: &FinishedRequest) {
        self.request_success[done.reason.index()] += 1;
        self.e2e_request_latency.observe_duration(done.e2e);
        self.request_queue_time.observe_duration(done.queued);
        self.request_prefill_time.observe_duration(done.prefill);
        self.request_inference_time.observe_duration(done.inference);
        self.request_decode_time.observe_duration(done.decode);
        self.request_prompt_tokens
            .observe(f64::from(done.prompt_tokens));
        self.request_generation_tokens
            .observe(f64::from(done.generation_tokens));
        // The first token comes from prefill, so it is not a decode interval.
        let per_token = match done.generation_tokens {
            0 | 1 => 0.0,
            n => done.decode.as_secs_f64() / f64::from(n - 1),
        };
        self.request_time_per_output_token.observe(per_token);
        if let Some(max_tokens) = done.max_tokens_param {
            self.request_params_max_tokens
                .observe(f64::from(max_tokens));
        }
    }

    /// Records a finished request (all `n` of its sequences).
    pub fn record_parent_finished(&mut self, n: u32, max_generation_tokens: u32) {
        self.request_params_n.observe(f64::from(n));
        self.request_max_num_generation_tokens
            .observe(f64::from(max_generation_tokens));
    }

    /// Records one speculative-decoding verification with `drafts` proposed
    /// and `accepted` of them accepted.
    pub fn record_drafts(&mut self, drafts: u32, accepted: u32) {
        if let Some(spec) = &mut self.spec_decode {
            spec.drafts += 1;
            spec.draft_tokens += u64::from(drafts);
            spec.accepted_tokens += u64::from(accepted);
            for count in spec
                .accepted_per_position
                .iter_mut()
                .take(accepted as usize)
            {
                *count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets_follow_max_model_len() {
        // The fixtures: 8192 gives 12 bounds (up to 5000), 131072 gives 16 (up to 100000).
        let short = one_two_five_buckets(8192);
        assert_eq!(short.len(), 12);
        assert_eq!(short.last(), Some(&5000.0));
        let long = one_two_five_buckets(131_072);
        assert_eq!(long.len(), 16);
        assert_eq!(long.last(), Some(&100_000.0));
        assert_eq!(
            &*one_two_five_buckets(100),
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }

    #[test]
    fn histogram_counts_values_on_bounds_as_inside() {
        let mut h = Histogram::new(Arc::from([1.0, 2.0]));
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative().collect::<Vec<_>>(), [2, 4, 5]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 8.0);
    }

    #[test]
    fn finished_request_updates_counters_and_histograms() {
        let mut m = EngineMetrics::new(8192, None, 0.0);
        m.record_finished(&FinishedRequest {
            reason: FinishReason::Length,
            e2e: Duration::from_secs(2),
            queued: Duration::from_millis(100),
            prefill: Duration::from_millis(100),
            decode: Duration::from_secs(1),
            inference: Duration::from_millis(1100),
            prompt_tokens: 10,
            generation_tokens: 11,
            max_tokens_param: None,
        });
        assert_eq!(m.request_success, [0, 1, 0]);
        assert_eq!(m.request_time_per_output_token.sum(), 0.1);
        assert_eq!(m.request_params_max_tokens.count(), 0);
        assert_eq!(m.e2e_request_latency.count(), 1);
    }

    #[test]
    fn drafts_count_accepted_positions() {
        let mut m = EngineMetrics::new(8192, Some(3), 0.0);
        m.record_drafts(3, 2);
        m.record_drafts(3, 0);
        let spec = m.spec_decode.expect("spec decode on");
        assert_eq!(
            (spec.drafts, spec.draft_tokens, spec.accepted_tokens),
            (2, 6, 2)
        );
        assert_eq!(spec.accepted_per_position, [1, 1, 0]);
    }
}
