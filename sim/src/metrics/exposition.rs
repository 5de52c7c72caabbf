//! Writes the `vllm:` families exactly as vLLM 0.11 (V1, single API server)
//! does: same order, names, HELP text, label names in sorted order, bucket
//! bounds, `_created` companions and number format.

use std::fmt::Write;

use super::lora::LoraInfo;
use super::text::write_float;
use super::{EngineMetrics, Histogram, SpecDecodeMetrics};
use crate::finish::FinishReason;

/// Content type of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Live state of one engine rank at scrape time.
pub struct EngineView<'a> {
    pub running: usize,
    pub waiting: usize,
    pub kv_cache_usage: f64,
    pub metrics: &'a EngineMetrics,
}

/// Everything one scrape writes.
pub struct Exposition<'a> {
    /// Served model name, already escaped with [`escape_label_value`].
    pub model_label: &'a str,
    pub block_size: u32,
    pub num_gpu_blocks: u32,
    /// Engines in rank order.
    pub engines: &'a [EngineView<'a>],
    pub lora: Option<&'a LoraInfo>,
}

type CounterOf = fn(&EngineMetrics) -> u64;
type HistogramOf = fn(&EngineMetrics) -> &Histogram;

const GAUGE_RUNNING: (&str, &str) = (
    "vllm:num_requests_running",
    "Number of requests in model execution batches.",
);
const GAUGE_WAITING: (&str, &str) = (
    "vllm:num_requests_waiting",
    "Number of requests waiting to be processed.",
);
const GAUGE_KV: (&str, &str) = (
    "vllm:kv_cache_usage_perc",
    "KV-cache usage. 1 means 100 percent usage.",
);

/// Plain per-engine counters, by base name (without `_total`).
const COUNTERS: [(&str, &str, CounterOf); 5] = [
    (
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        |m| m.prefix_cache_queries,
    ),
    (
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        |m| m.prefix_cache_hits,
    ),
    (
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        |m| m.preemptions,
    ),
    (
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        |m| m.prompt_tokens,
    ),
    (
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        |m| m.generation_tokens,
    ),
];

const REQUEST_SUCCESS: (&str, &str) = (
    "vllm:request_success",
    "Count of successfully processed requests.",
);

const HISTOGRAMS: [(&str, &str, HistogramOf); 15] = [
    (
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        |m| &m.request_prompt_tokens,
    ),
    (
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        |m| &m.request_generation_tokens,
    ),
    (
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        |m| &m.iteration_tokens,
    ),
    (
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        |m| &m.request_max_num_generation_tokens,
    ),
    (
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        |m| &m.request_params_n,
    ),
    (
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        |m| &m.request_params_max_tokens,
    ),
    (
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        |m| &m.time_to_first_token,
    ),
    (
        "vllm:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
        |m| &m.inter_token_latency,
    ),
    (
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        |m| &m.inter_token_latency,
    ),
    (
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        |m| &m.request_time_per_output_token,
    ),
    (
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        |m| &m.e2e_request_latency,
    ),
    (
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        |m| &m.request_queue_time,
    ),
    (
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        |m| &m.request_inference_time,
    ),
    (
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        |m| &m.request_prefill_time,
    ),
    (
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        |m| &m.request_decode_time,
    ),
];

type SpecCounterOf = fn(&SpecDecodeMetrics) -> u64;

const SPEC_COUNTERS: [(&str, &str, SpecCounterOf); 3] = [
    (
        "vllm:spec_decode_num_drafts",
        "Number of spec decoding drafts.",
        |s| s.drafts,
    ),
    (
        "vllm:spec_decode_num_draft_tokens",
        "Number of draft tokens.",
        |s| s.draft_tokens,
    ),
    (
        "vllm:spec_decode_num_accepted_tokens",
        "Number of accepted tokens.",
        |s| s.accepted_tokens,
    ),
];
const SPEC_PER_POSITION: (&str, &str) = (
    "vllm:spec_decode_num_accepted_tokens_per_pos",
    "Accepted tokens per draft position.",
);

/// A label written between `engine` and `model_name`, or after `model_name`
/// (label names are written in sorted order, as vLLM's client does).
#[derive(Clone, Copy)]
enum Extra<'a> {
    None,
    FinishedReason(&'a str),
    Le(f64),
    Position(usize),
}

impl<'a> Exposition<'a> {
    /// Appends the whole exposition to `out`.
    pub fn write(&self, out: &mut String) {
        if self
            .engines
            .first()
            .is_some_and(|e| e.metrics.spec_decode.is_some())
        {
            self.write_spec_decode(out);
        }
        let (name, help) = GAUGE_RUNNING;
        self.gauge(out, name, help, |e| e.running as f64);
        let (name, help) = GAUGE_WAITING;
        self.gauge(out, name, help, |e| e.waiting as f64);
        let (name, help) = GAUGE_KV;
        self.gauge(out, name, help, |e| e.kv_cache_usage);
        for (name, help, value) in COUNTERS {
            self.counter(out, name, help, || {
                self.per_engine()
                    .map(move |(rank, m)| (rank, Extra::None, value(m)))
            });
        }
        let (name, help) = REQUEST_SUCCESS;
        // vLLM writes every engine's series of one reason before the next reason.
        self.counter(out, name, help, || {
            FinishReason::ALL.into_iter().flat_map(move |reason| {
                self.per_engine().map(move |(rank, m)| {
                    let count = m.request_success[reason.index()];
                    (rank, Extra::FinishedReason(reason.as_str()), count)
                })
            })
        });
        for (name, help, histogram) in HISTOGRAMS {
            header(out, name, "", help, "histogram");
            for (rank, metrics) in self.per_engine() {
                self.histogram(out, name, rank, histogram(metrics));
            }
            header(out, name, "_created", help, "gauge");
            for (rank, metrics) in self.per_engine() {
                self.sample(out, name, "_created", rank, Extra::None, metrics.created);
            }
        }
        if let Some(lora) = self.lora {
            lora.write(out);
        }
        self.write_cache_config(out);
    }

    fn per_engine(&self) -> impl Iterator<Item = (usize, &'a EngineMetrics)> + use<'a> {
        self.engines
            .iter()
            .enumerate()
            .map(|(rank, engine)| (rank, engine.metrics))
    }

    fn gauge(&self, out: &mut String, name: &str, help: &str, value: fn(&EngineView) -> f64) {
        header(out, name, "", help, "gauge");
        for (rank, engine) in self.engines.iter().enumerate() {
            self.sample(out, name, "", rank, Extra::None, value(engine));
        }
    }

    /// A counter family (`name_total`) and its `name_created` companion, with
    /// the series that `series` lists in order.
    fn counter<I>(&self, out: &mut String, name: &str, help: &str, series: impl Fn() -> I)
    where
        I: Iterator<Item = (usize, Extra<'a>, u64)>,
    {
        header(out, name, "_total", help, "counter");
        for (rank, extra, value) in series() {
            self.sample(out, name, "_total", rank, extra, value as f64);
        }
        header(out, name, "_created", help, "gauge");
        for (rank, extra, _) in series() {
            let created = self.engines[rank].metrics.created;
            self.sample(out, name, "_created", rank, extra, created);
        }
    }

    fn histogram(&self, out: &mut String, name: &str, rank: usize, histogram: &Histogram) {
        let bounds = histogram.bounds().iter().copied().chain([f64::INFINITY]);
        for (bound, count) in bounds.zip(histogram.cumulative()) {
            self.sample(out, name, "_bucket", rank, Extra::Le(bound), count as f64);
        }
        self.sample(
            out,
            name,
            "_count",
            rank,
            Extra::None,
            histogram.count() as f64,
        );
        self.sample(out, name, "_sum", rank, Extra::None, histogram.sum());
    }

    fn write_spec_decode(&self, out: &mut String) {
        for (name, help, value) in SPEC_COUNTERS {
            self.counter(out, name, help, || {
                self.per_engine().filter_map(move |(rank, m)| {
                    m.spec_decode
                        .as_ref()
                        .map(|spec| (rank, Extra::None, value(spec)))
                })
            });
        }
        let (name, help) = SPEC_PER_POSITION;
        self.counter(out, name, help, || {
            self.per_engine().flat_map(|(rank, m)| {
                let positions = m.spec_decode.iter().flat_map(|s| &s.accepted_per_position);
                positions
                    .enumerate()
                    .map(move |(pos, count)| (rank, Extra::Position(pos), *count))
            })
        });
    }

    fn write_cache_config(&self, out: &mut String) {
        header(
            out,
            "vllm:cache_config_info",
            "",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        for rank in 0..self.engines.len() {
            let _ = writeln!(
                out,
                "vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",\
                 calculate_kv_scales=\"False\",cpu_kvcache_space_bytes=\"None\",\
                 cpu_offload_gb=\"0\",enable_prefix_caching=\"True\",engine=\"{rank}\",\
                 gpu_memory_utilization=\"0.9\",is_attention_free=\"False\",\
                 kv_cache_memory_bytes=\"None\",kv_sharing_fast_prefill=\"False\",\
                 mamba_cache_dtype=\"auto\",mamba_page_size_padded=\"None\",\
                 mamba_ssm_cache_dtype=\"auto\",num_cpu_blocks=\"0\",num_gpu_blocks=\"{}\",\
                 num_gpu_blocks_override=\"None\",prefix_caching_hash_algo=\"sha256\",\
                 sliding_window=\"None\",swap_space=\"4.0\",swap_space_bytes=\"4294967296.0\"}} 1.0",
                self.block_size, self.num_gpu_blocks,
            );
        }
    }

    /// One sample line: `name{engine="r",…,model_name="m",…} value`.
    fn sample(
        &self,
        out: &mut String,
        name: &str,
        suffix: &str,
        rank: usize,
        extra: Extra<'_>,
        value: f64,
    ) {
        out.push_str(name);
        out.push_str(suffix);
        let _ = write!(out, "{{engine=\"{rank}\"");
        match extra {
            Extra::FinishedReason(reason) => {
                out.push_str(",finished_reason=\"");
                out.push_str(reason);
                out.push('"');
            }
            Extra::Le(bound) => {
                out.push_str(",le=\"");
                write_float(out, bound);
                out.push('"');
            }
            Extra::None | Extra::Position(_) => {}
        }
        out.push_str(",model_name=\"");
        out.push_str(self.model_label);
        out.push('"');
        if let Extra::Position(position) = extra {
            let _ = write!(out, ",position=\"{position}\"");
        }
        out.push_str("} ");
        write_float(out, value);
        out.push('\n');
    }
}

fn header(out: &mut String, name: &str, suffix: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP {name}{suffix} {help}\n# TYPE {name}{suffix} {kind}"
    );
}
