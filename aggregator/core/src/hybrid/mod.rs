//! HYBRID mode's model-based side (`EXPERIMENTAL_PROACTIVE_MODEL=true`):
//! each (model, accelerator)'s performance profile, learned from the
//! agents' latency histograms and token counters; the arrival rate one
//! replica sustains within a service class's latency objectives; the
//! cheapest mix of replicas for a model's load; and the arbitration with
//! the saturation analysis, which always wins on capacity. Pure: no I/O,
//! no clocks.

pub mod arbitration;
pub mod plan;
pub mod profile;
pub mod replica;
