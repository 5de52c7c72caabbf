//! Small fixtures for the tests of this crate and the crates above it
//! (feature `test-support`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::analysis::model::ReplicaLoad;
use crate::decision::{Basis, DataState, Decision, Saturation};
use crate::variants::{ScaleTarget, Variant, VariantKey};

/// Variant `llm/chat` of model `m`, scaling Deployment `chat-deploy`, with
/// these annotations, for tests.
pub fn variant(annotations: &[(&str, &str)]) -> Variant {
    Variant {
        name: "chat".into(),
        namespace: "llm".into(),
        model_id: "m".into(),
        target: ScaleTarget {
            kind: "Deployment".into(),
            name: "chat-deploy".into(),
            api_version: None,
        },
        cost: 10.0,
        accelerator: String::new(),
        labels: BTreeMap::new(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        signal: None,
    }
}

/// A decision for variant `ns/va` of model `m` on L4, for tests:
/// `replicas` current and ready, `reporting` pods in its inputs.
pub fn decision(
    replicas: u32,
    desired: u32,
    basis: Basis,
    data: DataState,
    reporting: usize,
) -> Decision {
    Decision {
        variant: VariantKey::new("ns", "va"),
        model_id: "m".into(),
        accelerator: "L4".into(),
        cost: 10.0,
        current_replicas: replicas,
        ready_replicas: replicas,
        desired_replicas: desired,
        basis,
        change_reason: None,
        source_failure: None,
        limit: None,
        data,
        data_age: None,
        inputs: (0..reporting)
            .map(|i| ReplicaLoad {
                pod: format!("p{i}").into(),
                kv_cache_usage: 0.5,
                requests_waiting: 0.0,
                rates: None,
                kv_capacity_tokens: None,
                mean_prompt_tokens: None,
            })
            .collect(),
        saturation: Saturation::default(),
        model_based: None,
        workload: None,
        decided_at: SystemTime::UNIX_EPOCH,
    }
}

/// A ConfigMap `data` map from pairs, for tests.
pub fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
