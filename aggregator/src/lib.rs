//! wva-aggregator: ingest agent telemetry, analyse saturation per model, publish decisions.
#![forbid(unsafe_code)]

pub mod activity;
pub mod admission;
pub mod analysis;
pub mod args;
pub mod config;
pub mod decision;
pub mod demo;
pub mod diagnostics;
pub mod engine;
pub mod gauges;
pub mod http;
pub mod ingest;
pub mod k8s;
pub mod keda;
pub mod prometheus;
pub mod promql;
pub mod scraping;
pub mod service;
pub mod shutdown;
pub mod sources;
pub mod standalone;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod trigger;
pub mod variants;
pub mod watchfile;
pub mod webhook;
