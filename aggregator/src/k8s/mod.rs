//! Kubernetes mode: the VariantAutoscaling resource, its status and the
//! controller that keeps both in step with the analysis.

pub mod conditions;
pub mod configmaps;
pub mod controller;
pub mod crd;
pub mod events;
pub mod leader;
pub mod mode;
pub mod resolve;
pub mod status;
pub mod writer;
