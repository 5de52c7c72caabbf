//! vLLM signals per served model (`model_name`), aggregated over the
//! data-parallel engine ranks (`engine`) of the pod.
//!
//! vLLM names its families `vllm:…`. Collectors and proxies that escape
//! names to the legacy Prometheus charset without `:` (OpenTelemetry's
//! Prometheus exporter, some gateways) serve them as `vllm_…`; both forms
//! are read alike. A body that somehow holds both is read in the form of
//! its first vLLM sample, so no series is counted twice.

use wva_proto::v1::{Counters, ModelSignals};

use super::seen::Seen;
use super::slots::{Overflow, Reset, Slots, resized};
use crate::parse::Sample;

const PREFIX: &str = "vllm:";

/// The byte after `vllm` in one of vLLM's names: `:`, or `_` when escaped;
/// none for any other name. Matched as bytes: this runs for every sample.
fn separator(name: &str) -> Option<u8> {
    match name.as_bytes() {
        [b'v', b'l', b'l', b'm', separator @ (b':' | b'_'), ..] => Some(*separator),
        _ => None,
    }
}

/// Whether a family or sample name is one of vLLM's, in either form.
pub(super) fn is_vllm(name: &str) -> bool {
    separator(name).is_some()
}

/// Series summed over engine ranks and over any other label
/// (`finished_reason`, …). The discriminant indexes [`ModelAcc::sums`].
#[derive(Debug, Clone, Copy)]
enum Summed {
    Running,
    Waiting,
    PromptTokens,
    GenerationTokens,
    PromptLenSum,
    PromptLenCount,
    GenerationLenSum,
    GenerationLenCount,
    Success,
    PrefixHits,
    PrefixQueries,
    PrefixHitsV0,
    PrefixQueriesV0,
    TtftSum,
    TtftCount,
    ItlSum,
    ItlCount,
    TpotSum,
    TpotCount,
}

const SUMMED: usize = Summed::TpotCount as usize + 1;

impl Summed {
    fn bit(self) -> u32 {
        1 << self as u32
    }
}

#[derive(Debug, Clone, Copy)]
enum Series {
    Summed(Summed),
    /// V1 `kv_cache_usage_perc`.
    Kv,
    /// V0 `gpu_cache_usage_perc` (removed in 0.12).
    KvV0,
    CacheConfig,
}

/// The samples read, by name: the only ones a filtered scrape asks for.
/// OpenMetrics counters keep `_total` on their samples, so one name serves
/// both formats; `_created` series and everything else fall through.
const READ: [(&str, Series); 24] = {
    use Series::Summed as S;
    use Summed::*;
    [
        ("vllm:kv_cache_usage_perc", Series::Kv),
        ("vllm:gpu_cache_usage_perc", Series::KvV0),
        ("vllm:cache_config_info", Series::CacheConfig),
        ("vllm:num_requests_running", S(Running)),
        ("vllm:num_requests_waiting", S(Waiting)),
        ("vllm:prompt_tokens_total", S(PromptTokens)),
        ("vllm:generation_tokens_total", S(GenerationTokens)),
        ("vllm:request_prompt_tokens_sum", S(PromptLenSum)),
        ("vllm:request_prompt_tokens_count", S(PromptLenCount)),
        ("vllm:request_generation_tokens_sum", S(GenerationLenSum)),
        (
            "vllm:request_generation_tokens_count",
            S(GenerationLenCount),
        ),
        ("vllm:request_success_total", S(Success)),
        ("vllm:prefix_cache_hits_total", S(PrefixHits)),
        ("vllm:prefix_cache_queries_total", S(PrefixQueries)),
        ("vllm:gpu_prefix_cache_hits", S(PrefixHitsV0)),
        ("vllm:gpu_prefix_cache_hits_total", S(PrefixHitsV0)),
        ("vllm:gpu_prefix_cache_queries", S(PrefixQueriesV0)),
        ("vllm:gpu_prefix_cache_queries_total", S(PrefixQueriesV0)),
        ("vllm:time_to_first_token_seconds_sum", S(TtftSum)),
        ("vllm:time_to_first_token_seconds_count", S(TtftCount)),
        ("vllm:inter_token_latency_seconds_sum", S(ItlSum)),
        ("vllm:inter_token_latency_seconds_count", S(ItlCount)),
        ("vllm:time_per_output_token_seconds_sum", S(TpotSum)),
        ("vllm:time_per_output_token_seconds_count", S(TpotCount)),
    ]
};

/// The series a name after its prefix (`num_requests_running`) is. Lengths
/// are compared first: most names differ in length, and this runs for
/// every sample.
fn classify(unprefixed: &str) -> Option<Series> {
    let len = PREFIX.len() + unprefixed.len();
    READ.iter()
        .find(|(n, _)| n.len() == len && n.as_bytes()[PREFIX.len()..] == *unprefixed.as_bytes())
        .map(|&(_, s)| s)
}

/// Names of the samples [`Vllm::observe`] reads.
pub(super) fn read_samples() -> impl Iterator<Item = &'static str> {
    READ.iter().map(|&(name, _)| name)
}

#[derive(Debug, Default)]
struct ModelAcc {
    sums: [f64; SUMMED],
    /// Bits of the [`Summed`] series present, to choose between renames.
    seen: u32,
    engines: Slots<EngineAcc>,
}

impl Reset for ModelAcc {
    fn reset(&mut self) {
        self.sums = [0.0; SUMMED];
        self.seen = 0;
        self.engines.clear();
    }
}

#[derive(Debug, Default)]
struct EngineAcc {
    kv: Option<f64>,
    kv_v0: Option<f64>,
}

impl Reset for EngineAcc {
    fn reset(&mut self) {
        *self = EngineAcc::default();
    }
}

/// `vllm:cache_config_info` of one engine rank.
#[derive(Debug, Default)]
struct CacheConfig {
    num_gpu_blocks: Option<u64>,
    block_size: Option<u32>,
}

impl Reset for CacheConfig {
    fn reset(&mut self) {
        *self = CacheConfig::default();
    }
}

#[derive(Debug, Default)]
pub(super) struct Vllm {
    models: Slots<ModelAcc>,
    /// Keyed by `engine`; `cache_config_info` has no `model_name`.
    cache: Slots<CacheConfig>,
    /// The separator after `vllm` in this body's first vLLM sample.
    form: Option<u8>,
}

impl Vllm {
    pub(super) fn clear(&mut self) {
        self.models.clear();
        self.cache.clear();
        self.form = None;
    }

    /// The set that dropped a key this scrape, and why, if any.
    pub(super) fn overflow(&self) -> Option<(&'static str, Overflow)> {
        let engines = self
            .models
            .iter()
            .find_map(|(_, m)| m.engines.overflow())
            .or(self.cache.overflow());
        let models = self.models.overflow().map(|o| ("models", o));
        models.or(engines.map(|o| ("engines", o)))
    }

    /// Accumulates one sample.
    pub(super) fn observe(&mut self, sample: &Sample<'_>) -> Seen {
        let Some(form) = separator(sample.name) else {
            return Seen::Foreign;
        };
        if *self.form.get_or_insert(form) != form {
            return Seen::Unread;
        }
        let Some(series) = classify(&sample.name[PREFIX.len()..]) else {
            return Seen::Unread;
        };
        let (mut model, mut engine) = (None, "");
        let (mut blocks, mut block_size) = (None, None);
        for label in sample.labels {
            match label.name {
                "model_name" => model = Some(label.raw_value),
                "engine" => engine = label.raw_value,
                "num_gpu_blocks" => blocks = label.raw_value.parse().ok(),
                "block_size" => block_size = label.raw_value.parse().ok(),
                _ => {}
            }
        }
        if let Series::CacheConfig = series {
            // "None" before the engine has profiled its memory: unknown.
            if let Some(config) = self.cache.entry(engine) {
                config.num_gpu_blocks = blocks;
                config.block_size = block_size;
            }
            return Seen::Read;
        }
        let Some(model) = model else {
            return Seen::Read;
        };
        let Some(acc) = self.models.entry(model) else {
            return Seen::Read;
        };
        let Some(rank) = acc.engines.entry(engine) else {
            return Seen::Read;
        };
        match series {
            Series::Kv => rank.kv = Some(sample.value),
            Series::KvV0 => rank.kv_v0 = Some(sample.value),
            Series::Summed(s) => {
                acc.sums[s as usize] += sample.value;
                acc.seen |= s.bit();
            }
            Series::CacheConfig => {}
        }
        Seen::Read
    }

    /// The cache config of an engine rank; one without an `engine` label
    /// describes every rank of the pod.
    fn cache_config(&self, engine: &str) -> Option<&CacheConfig> {
        self.cache.get(engine).or_else(|| self.cache.get(""))
    }

    pub(super) fn fill(&self, out: &mut Vec<ModelSignals>) {
        let outputs = resized(out, self.models.len());
        for (signals, (name, acc)) in outputs.iter_mut().zip(self.models.iter()) {
            signals.model.clear();
            signals.model.push_str(name);
            self.fill_model(acc, signals);
        }
    }

    fn fill_model(&self, acc: &ModelAcc, out: &mut ModelSignals) {
        let mut blocks_total = 0;
        let mut block_size = 0;
        // Weights are summed as floats and block counts saturate: an engine
        // may report any u64, and the sums must neither wrap nor panic.
        let (mut weighted, mut weight, mut all_weighted) = (0.0, 0.0, true);
        let (mut plain, mut ranks_with_kv) = (0.0, 0u32);
        for (engine, rank) in acc.engines.iter() {
            let config = self.cache_config(engine);
            let blocks = config.and_then(|c| c.num_gpu_blocks).filter(|&b| b > 0);
            blocks_total = blocks.unwrap_or(0).saturating_add(blocks_total);
            block_size = block_size.max(config.and_then(|c| c.block_size).unwrap_or(0));
            // V1 name first: 0.9–0.11 can serve both.
            if let Some(kv) = rank.kv.or(rank.kv_v0) {
                plain += kv;
                ranks_with_kv += 1;
                match blocks {
                    Some(b) => {
                        weighted += kv * b as f64;
                        weight += b as f64;
                    }
                    None => all_weighted = false,
                }
            }
        }
        out.kv_cache_usage = match (ranks_with_kv, all_weighted) {
            (0, _) => 0.0,
            (_, true) => weighted / weight,
            (n, false) => plain / f64::from(n),
        };
        out.num_gpu_blocks = blocks_total;
        out.block_size = block_size;
        out.engines = u32::try_from(acc.engines.len()).unwrap_or(u32::MAX);

        use Summed::*;
        let sum = |s: Summed| acc.sums[s as usize];
        let seen = |a: Summed, b: Summed| acc.seen & (a.bit() | b.bit()) != 0;
        out.requests_running = sum(Running);
        out.requests_waiting = sum(Waiting);
        let (hits, queries) = if seen(PrefixHits, PrefixQueries) {
            (PrefixHits, PrefixQueries)
        } else {
            (PrefixHitsV0, PrefixQueriesV0)
        };
        // Inter-token latency replaced time-per-output-token in 0.11.
        let (itl_sum, itl_count) = if seen(ItlSum, ItlCount) {
            (ItlSum, ItlCount)
        } else {
            (TpotSum, TpotCount)
        };
        out.counters = Some(Counters {
            prompt_tokens: sum(PromptTokens),
            generation_tokens: sum(GenerationTokens),
            request_prompt_tokens_sum: sum(PromptLenSum),
            request_prompt_tokens_count: sum(PromptLenCount),
            request_generation_tokens_sum: sum(GenerationLenSum),
            request_generation_tokens_count: sum(GenerationLenCount),
            request_success: sum(Success),
            prefix_cache_hits: sum(hits),
            prefix_cache_queries: sum(queries),
            ttft_seconds_sum: sum(TtftSum),
            ttft_seconds_count: sum(TtftCount),
            itl_seconds_sum: sum(itl_sum),
            itl_seconds_count: sum(itl_count),
        });
    }
}
