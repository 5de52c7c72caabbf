//! wva-agent: scrape a local vLLM or EPP `/metrics`, extract the signals that
//! matter and stream them to wva-aggregator.
#![forbid(unsafe_code)]

pub mod extract;
pub mod parse;

pub mod agent;
pub mod args;
pub mod backoff;
pub mod fanout;
pub mod filter;
pub mod latest;
pub mod sampler;
pub mod scrape;
pub mod server;
pub mod signal_spec;
pub mod signals_target;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use agent::{Agent, StartError};
