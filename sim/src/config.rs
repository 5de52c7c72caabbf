//! Validated simulation settings, shared by the engines, the API and `/metrics`.

use std::time::Duration;

use crate::latency::LatencyModel;

/// Settings that make no simulation sense, reported before the server starts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("--model must not be empty")]
    EmptyModel,
    #[error(
        "the KV cache holds {capacity} tokens ({blocks} blocks of {block_size}), fewer than \
         --max-model-len {max_model_len}: a request of that length could never be served"
    )]
    KvCacheTooSmall {
        capacity: u64,
        blocks: u32,
        block_size: u32,
        max_model_len: u32,
    },
    #[error("--max-num-batched-tokens ({batched}) must be at least --max-num-seqs ({seqs})")]
    BatchSmallerThanSeqs { batched: u32, seqs: u32 },
    #[error("--{flag} must be a probability in {range}, got {value}")]
    Probability {
        flag: &'static str,
        range: &'static str,
        value: f64,
    },
    #[error("LoRA adapter names must be non-empty, distinct and differ from --model; {0:?} is not")]
    LoraName(String),
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub model: String,
    pub startup_delay: Duration,
    pub data_parallel_size: u32,
    pub seed: u64,
    pub default_max_tokens: u32,
    pub eos_probability: f64,
    /// LoRA adapters served beside the base model; empty when LoRA is off.
    pub lora_adapters: Vec<String>,
    pub engine: EngineConfig,
}

/// One engine rank's scheduler and cost settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_num_seqs: u32,
    pub max_waiting: Option<u32>,
    pub num_gpu_blocks: u32,
    pub block_size: u32,
    pub max_model_len: u32,
    pub max_num_batched_tokens: u32,
    pub latency: LatencyModel,
    pub spec_decode: Option<SpecDecodeConfig>,
    /// Distinct LoRA adapters allowed in one batch.
    pub max_loras: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct SpecDecodeConfig {
    pub num_tokens: u32,
    pub acceptance_rate: f64,
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if self.model.is_empty() {
            return Err(ConfigError::EmptyModel);
        }
        for (flag, value) in [
            ("max-num-seqs", e.max_num_seqs),
            ("num-gpu-blocks", e.num_gpu_blocks),
            ("block-size", e.block_size),
            ("max-model-len", e.max_model_len),
            ("max-num-batched-tokens", e.max_num_batched_tokens),
            ("data-parallel-size", self.data_parallel_size),
            ("default-max-tokens", self.default_max_tokens),
            ("max-waiting", e.max_waiting.unwrap_or(1)),
            ("max-loras", e.max_loras),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        let capacity = u64::from(e.num_gpu_blocks) * u64::from(e.block_size);
        if capacity < u64::from(e.max_model_len) {
            return Err(ConfigError::KvCacheTooSmall {
                capacity,
                blocks: e.num_gpu_blocks,
                block_size: e.block_size,
                max_model_len: e.max_model_len,
            });
        }
        if e.max_num_batched_tokens < e.max_num_seqs {
            return Err(ConfigError::BatchSmallerThanSeqs {
                batched: e.max_num_batched_tokens,
                seqs: e.max_num_seqs,
            });
        }
        check_probability("eos-probability", self.eos_probability, false)?;
        if let Some(spec) = e.spec_decode {
            check_probability("spec-acceptance-rate", spec.acceptance_rate, true)?;
        }
        for (i, name) in self.lora_adapters.iter().enumerate() {
            if name.is_empty() || *name == self.model || self.lora_adapters[..i].contains(name) {
                return Err(ConfigError::LoraName(name.clone()));
            }
        }
        Ok(())
    }
}

/// A probability in [0, 1), or [0, 1] when `closed`.
fn check_probability(flag: &'static str, value: f64, closed: bool) -> Result<(), ConfigError> {
    let in_range = value >= 0.0 && (value < 1.0 || (closed && value == 1.0));
    if in_range {
        Ok(())
    } else {
        let range = if closed { "[0, 1]" } else { "[0, 1)" };
        Err(ConfigError::Probability { flag, range, value })
    }
}
