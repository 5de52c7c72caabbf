//! Builders of analysis inputs for the unit tests.

use super::model::{Reason, ReplicaLoad, VariantState, VariantTarget};

/// `(name, target, reason)` per variant, for compact assertions.
pub type Summary<'a> = Vec<(&'a str, u32, Reason)>;

pub fn summary(targets: &[VariantTarget]) -> Summary<'_> {
    targets
        .iter()
        .map(|t| (t.name.as_str(), t.target_replicas, t.reason))
        .collect()
}

pub fn load(kv: f64, queue: f64) -> ReplicaLoad {
    ReplicaLoad {
        pod: "".into(),
        kv_cache_usage: kv,
        requests_waiting: queue,
        rates: None,
        kv_capacity_tokens: None,
        mean_prompt_tokens: None,
    }
}

/// A settled variant: every replica ready and reporting an idle load.
pub fn variant(name: &str, cost: f64, replicas: u32) -> VariantState {
    VariantState {
        name: name.to_string(),
        cost,
        current_replicas: replicas,
        ready_replicas: replicas,
        previous_desired: None,
        min_replicas: 0,
        max_replicas: None,
        blocked: false,
        request_capacity: None,
        loads: (0..replicas).map(|_| load(0.0, 0.0)).collect(),
    }
}

pub fn with_loads(name: &str, loads: &[(f64, f64)]) -> VariantState {
    let mut v = variant(name, 10.0, loads.len() as u32);
    v.loads = loads.iter().map(|&(kv, q)| load(kv, q)).collect();
    v
}
