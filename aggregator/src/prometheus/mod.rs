//! Prometheus as a metrics source: the PromQL each signal is read with, the
//! HTTP client that runs it, and the polled source built on both.

pub mod client;
pub mod promql;
mod source;
