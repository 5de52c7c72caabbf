//! wva-agent: scrape a local vLLM or EPP `/metrics`, extract the signals that
//! matter and stream them to wva-aggregator.
#![forbid(unsafe_code)]

pub mod extract;
pub mod parse;
