#![forbid(unsafe_code)]
//! `vllm-sim`: a simulator of one vLLM V1 (0.11) server under load.
//!
//! It serves the OpenAI-style endpoints with a continuous-batching scheduler
//! per engine rank (waiting queue, KV-cache blocks, preemption, chunked
//! prefill), a step-time latency model and vLLM 0.11's `/metrics`
//! exposition, with every number consistent with the simulated state.
//!
//! [`Replica::start`] runs the engines on the current tokio runtime;
//! [`server::serve`] puts them behind HTTP. Tests can drive an
//! [`engine::Engine`] directly under paused tokio time.

pub mod api;
pub mod args;
pub mod config;
pub mod engine;
pub mod finish;
pub mod latency;
pub mod metrics;
pub mod replica;
pub mod server;
pub mod tokens;

pub use args::Args;
pub use config::{ConfigError, EngineConfig, SimConfig, SpecDecodeConfig};
pub use replica::Replica;
