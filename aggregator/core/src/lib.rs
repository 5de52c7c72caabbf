//! wva-core: the aggregator's pure core. Variants, the pod store, the
//! saturation analysis, configuration parsing and the engine that turns them
//! into one decision per variant. No async runtime, network or Kubernetes
//! crate: the layers above feed it and publish what it decides.
#![forbid(unsafe_code)]

pub mod activity;
pub mod admission;
pub mod analysis;
pub mod config;
pub mod decision;
pub mod engine;
mod fast_hash;
pub mod hybrid;
pub mod model_key;
pub mod pod_models;
pub mod snapshot;
pub mod sources;
pub mod stabilization;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod variants;
pub mod verdict;
pub mod workload;
