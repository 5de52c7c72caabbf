//! wva-aggregator: ingest agent telemetry, analyse saturation per model, publish decisions.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod config;
