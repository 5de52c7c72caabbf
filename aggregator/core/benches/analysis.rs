//! One analysis cycle over a large fleet: 1,000 models of one variant each,
//! 10 reporting pods per variant (10,000 pods), every sample fresh. Measures
//! `Engine::evaluate` alone: grouping pods by variant, each model's
//! saturation analysis, the decision (with its inputs) of every variant.
//!
//!     cargo bench -p wva-core --bench analysis

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::engine::{Engine, Inputs};
use wva_core::store::{PodEntry, PodKey};
use wva_core::variants::{ScaleTarget, Variant};
use wva_proto::v1::{Counters, Hello, ModelSignals, Role, Sample};

const MODELS: usize = 1_000;
const PODS_PER_MODEL: usize = 10;

fn variant(m: usize) -> Variant {
    Variant {
        name: format!("model-{m}"),
        namespace: "fleet".into(),
        model_id: format!("fleet/model-{m}"),
        target: ScaleTarget {
            kind: "Deployment".into(),
            name: format!("model-{m}"),
            api_version: None,
        },
        cost: 10.0,
        accelerator: "L4".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        signal: None,
    }
}

fn pods(now: Instant) -> HashMap<PodKey, PodEntry> {
    (0..MODELS * PODS_PER_MODEL)
        .map(|i| {
            let m = i % MODELS;
            let key = PodKey {
                namespace: "fleet".into(),
                pod: format!("pod-{i}"),
            };
            let hello = Hello {
                pod: key.pod.clone(),
                namespace: key.namespace.clone(),
                role: Role::Vllm as i32,
                variant: format!("model-{m}"),
                interval_ms: 1000,
                ..Hello::default()
            };
            let sample = Sample {
                seq: 1,
                up: true,
                models: vec![ModelSignals {
                    model: format!("fleet/model-{m}"),
                    kv_cache_usage: 0.3 + (i % 20) as f64 * 0.01,
                    requests_running: 12.0,
                    num_gpu_blocks: 26944,
                    block_size: 16,
                    counters: Some(Counters::default()),
                    engines: 1,
                    ..ModelSignals::default()
                }],
                ..Sample::default()
            };
            let entry = PodEntry {
                stream_id: i as u64,
                hello,
                registered_at: now,
                latest: Some((sample, now)),
            };
            (key, entry)
        })
        .collect()
}

fn analysis(c: &mut Criterion) {
    let variants: Vec<Variant> = (0..MODELS).map(variant).collect();
    let start = Instant::now();
    let pods = pods(start);
    let config = SaturationConfigSet::default();
    let failures = HashMap::new();
    let mut engine = Engine::default();
    let name = format!("evaluate {MODELS} models x {PODS_PER_MODEL} pods");
    c.bench_function(&name, |b| {
        b.iter(|| {
            engine.evaluate(&Inputs {
                // Within the samples' staleness bound however long it runs.
                now: start + Duration::from_millis(500),
                wall: SystemTime::now(),
                variants: &variants,
                pods: &pods,
                replicas: None,
                config: &config,
                staleness: Duration::from_secs(10),
                convergence_timeout: Duration::from_secs(600),
                scale_to_zero: None,
                failures: &failures,
                hybrid: None,
            })
        })
    });
}

criterion_group!(benches, analysis);
criterion_main!(benches);
