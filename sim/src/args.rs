//! Command line and environment of `vllm-sim` (flag > env > default).

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use crate::config::{ConfigError, EngineConfig, SimConfig, SpecDecodeConfig};
use crate::latency::LatencyModel;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "vllm-sim",
    version,
    about = "Simulates one vLLM V1 replica: OpenAI-style endpoints, continuous batching, \
             KV cache and vLLM-format /metrics"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "VLLM_SIM_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one; the bound address is printed on stdout).
    #[arg(long, env = "VLLM_SIM_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Served model name (vLLM's `model_name` label).
    #[arg(long, env = "VLLM_SIM_MODEL")]
    pub model: String,

    /// Continuous-batching limit: most requests running at once, per engine.
    #[arg(long, env = "VLLM_SIM_MAX_NUM_SEQS", default_value_t = 256)]
    pub max_num_seqs: u32,

    /// Waiting-queue capacity per engine; a request arriving when it is full gets HTTP 429
    /// [default: unbounded, like vLLM].
    #[arg(long, env = "VLLM_SIM_MAX_WAITING")]
    pub max_waiting: Option<u32>,

    /// KV-cache blocks per engine.
    #[arg(long, env = "VLLM_SIM_NUM_GPU_BLOCKS", default_value_t = 2048)]
    pub num_gpu_blocks: u32,

    /// Tokens per KV-cache block.
    #[arg(long, env = "VLLM_SIM_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: u32,

    /// Longest prompt plus output, in tokens.
    #[arg(long, env = "VLLM_SIM_MAX_MODEL_LEN", default_value_t = 8192)]
    pub max_model_len: u32,

    /// Token budget of one engine step (chunked prefill splits longer prompts).
    #[arg(long, env = "VLLM_SIM_MAX_NUM_BATCHED_TOKENS", default_value_t = 8192)]
    pub max_num_batched_tokens: u32,

    /// Fixed cost of a step that prefills prompt tokens.
    #[arg(long, env = "VLLM_SIM_PREFILL_OVERHEAD", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub prefill_overhead: Duration,

    /// Cost of each prompt token prefilled in a step.
    #[arg(long, env = "VLLM_SIM_PREFILL_PER_TOKEN", default_value = "100us", value_parser = humantime::parse_duration)]
    pub prefill_per_token: Duration,

    /// Cost of a decode step with one running sequence.
    #[arg(long, env = "VLLM_SIM_ITL_BASE", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub itl_base: Duration,

    /// Added decode-step cost per decoding sequence.
    #[arg(long, env = "VLLM_SIM_ITL_PER_SEQ", default_value = "200us", value_parser = humantime::parse_duration)]
    pub itl_per_seq: Duration,

    /// Simulated model load: /health and the completion endpoints answer 503 until it has passed.
    #[arg(long, env = "VLLM_SIM_STARTUP_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub startup_delay: Duration,

    /// Data-parallel engines, each with its own batch and KV cache (`engine` label "0", "1", …).
    #[arg(long, env = "VLLM_SIM_DATA_PARALLEL_SIZE", default_value_t = 1)]
    pub data_parallel_size: u32,

    /// Seed of every random choice (generated text, stop positions, draft acceptance, ids).
    #[arg(long, env = "VLLM_SIM_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Output length of a request that omits max_tokens (capped by max-model-len).
    #[arg(long, env = "VLLM_SIM_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: u32,

    /// Chance that each generated token is end-of-sequence (finish reason "stop");
    /// 0 makes every request run to max_tokens.
    #[arg(long, env = "VLLM_SIM_EOS_PROBABILITY", default_value_t = 0.0)]
    pub eos_probability: f64,

    /// Speculative decoding: draft tokens proposed per decode step (0 = off). Turns on the
    /// `vllm:spec_decode_*` families.
    #[arg(long, env = "VLLM_SIM_NUM_SPECULATIVE_TOKENS", default_value_t = 0)]
    pub num_speculative_tokens: u32,

    /// Chance that a draft token is accepted, given that the ones before it were.
    #[arg(long, env = "VLLM_SIM_SPEC_ACCEPTANCE_RATE", default_value_t = 0.7)]
    pub spec_acceptance_rate: f64,

    /// LoRA adapters served beside the base model (comma list). Turns on
    /// `vllm:lora_requests_info`.
    #[arg(long, env = "VLLM_SIM_LORA_ADAPTERS", value_delimiter = ',')]
    pub lora_adapters: Vec<String>,

    /// Most distinct LoRA adapters in one batch.
    #[arg(long, env = "VLLM_SIM_MAX_LORAS", default_value_t = 1)]
    pub max_loras: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests may still finish before exit.
    #[arg(long, env = "VLLM_SIM_DRAIN_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl Args {
    /// The validated simulation settings.
    pub fn to_config(&self) -> Result<SimConfig, ConfigError> {
        let spec_decode = (self.num_speculative_tokens > 0).then_some(SpecDecodeConfig {
            num_tokens: self.num_speculative_tokens,
            acceptance_rate: self.spec_acceptance_rate,
        });
        let config = SimConfig {
            model: self.model.clone(),
            startup_delay: self.startup_delay,
            data_parallel_size: self.data_parallel_size,
            seed: self.seed,
            default_max_tokens: self.default_max_tokens,
            eos_probability: self.eos_probability,
            lora_adapters: self.lora_adapters.clone(),
            engine: EngineConfig {
                max_num_seqs: self.max_num_seqs,
                max_waiting: self.max_waiting,
                num_gpu_blocks: self.num_gpu_blocks,
                block_size: self.block_size,
                max_model_len: self.max_model_len,
                max_num_batched_tokens: self.max_num_batched_tokens,
                latency: LatencyModel {
                    prefill_overhead: self.prefill_overhead,
                    prefill_per_token: self.prefill_per_token,
                    itl_base: self.itl_base,
                    itl_per_seq: self.itl_per_seq,
                },
                spec_decode,
                max_loras: self.max_loras,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["vllm-sim", "--model", "m"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("valid arguments")
    }

    #[test]
    fn defaults_describe_a_valid_replica() {
        let config = parse(&[]).to_config().expect("defaults are valid");
        assert_eq!(config.engine.max_num_seqs, 256);
        assert_eq!(config.engine.block_size, 16);
        assert_eq!(config.engine.latency.itl_base, Duration::from_millis(10));
        assert!(config.engine.spec_decode.is_none());
        assert!(config.lora_adapters.is_empty());
    }

    #[test]
    fn durations_use_humantime() {
        let args = parse(&[
            "--startup-delay",
            "1s 500ms",
            "--prefill-per-token",
            "250us",
        ]);
        assert_eq!(args.startup_delay, Duration::from_millis(1500));
        assert_eq!(args.prefill_per_token, Duration::from_micros(250));
    }

    #[test]
    fn lora_and_spec_flags_turn_features_on() {
        let config = parse(&[
            "--lora-adapters",
            "a,b",
            "--max-loras",
            "2",
            "--num-speculative-tokens",
            "3",
        ])
        .to_config()
        .expect("valid");
        assert_eq!(config.lora_adapters, ["a", "b"]);
        assert_eq!(config.engine.max_loras, 2);
        assert_eq!(config.engine.spec_decode.expect("spec on").num_tokens, 3);
    }

    #[test]
    fn kv_cache_smaller_than_one_request_is_rejected() {
        let err = parse(&["--num-gpu-blocks", "4", "--max-model-len", "100"])
            .to_config()
            .expect_err("4 blocks of 16 cannot hold 100 tokens");
        assert!(err.to_string().contains("max-model-len"), "{err}");
    }
}
