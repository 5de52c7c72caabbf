//! wva-aggregator: the binary that ingests agent telemetry, runs the core's
//! analysis and publishes its decisions. It wires `wva-core` (the pure
//! analysis), `wva-k8s` (the Kubernetes adapters) and `wva-webhook` (agent
//! injection) to the runtime, gRPC, HTTP and metrics; see docs/design.md,
//! "Where things are".
#![forbid(unsafe_code)]

pub mod args;
pub mod cluster;
pub mod demo;
pub mod gauges;
pub mod grpc;
pub mod http;
pub mod params;
pub mod prometheus;
pub mod runtime;
pub mod standalone;
pub mod startup;
pub mod telemetry;
pub mod watchfile;
