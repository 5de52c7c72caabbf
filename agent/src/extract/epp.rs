//! Endpoint-picker signals: flow-control queue per target model and pool
//! averages. Routers since the llm-d move emit every family twice, under the
//! canonical `llm_d_epp_*` name and the deprecated `inference_*` one; the
//! canonical series win and the two are never added.

use wva_proto::v1::EppSignals;

use super::seen::Seen;
use super::slots::{Overflow, Reset, Slots, resized};
use crate::parse::Sample;

/// Families that identify an endpoint picker (GIE and llm-d router names).
const PREFIXES: [&str; 5] = [
    "llm_d_epp_",
    "inference_pool_",
    "inference_objective_",
    "inference_extension_",
    "inference_model_",
];

/// Index into the `[_; 2]` accumulators: the canonical name, or the
/// deprecated one.
const CANONICAL: usize = 0;
const DEPRECATED: usize = 1;

#[derive(Debug, Clone, Copy)]
enum Field {
    QueueSize,
    QueueBytes,
    PoolKvCache,
    PoolQueue,
    PoolRunning,
}

/// Whether `name` is a family the extractor reads.
pub(super) fn reads(name: &str) -> bool {
    classify(name).is_some()
}

/// The samples read, with the naming generation each name belongs to.
const READ: [(&str, Field, usize); 10] = {
    use Field::*;
    [
        ("llm_d_epp_flow_control_queue_size", QueueSize, CANONICAL),
        (
            "inference_extension_flow_control_queue_size",
            QueueSize,
            DEPRECATED,
        ),
        ("llm_d_epp_flow_control_queue_bytes", QueueBytes, CANONICAL),
        (
            "inference_extension_flow_control_queue_bytes",
            QueueBytes,
            DEPRECATED,
        ),
        (
            "llm_d_epp_average_kv_cache_utilization",
            PoolKvCache,
            CANONICAL,
        ),
        (
            "inference_pool_average_kv_cache_utilization",
            PoolKvCache,
            DEPRECATED,
        ),
        ("llm_d_epp_average_queue_size", PoolQueue, CANONICAL),
        ("inference_pool_average_queue_size", PoolQueue, DEPRECATED),
        ("llm_d_epp_average_running_requests", PoolRunning, CANONICAL),
        (
            "inference_pool_average_running_requests",
            PoolRunning,
            DEPRECATED,
        ),
    ]
};

fn classify(name: &str) -> Option<(Field, usize)> {
    READ.iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, field, generation)| (field, generation))
}

/// Names of the samples [`Epp::observe`] reads.
pub(super) fn read_samples() -> impl Iterator<Item = &'static str> {
    READ.iter().map(|&(name, ..)| name)
}

/// Flow-control queue of one target model, summed over fairness ids,
/// priorities and pools.
#[derive(Debug, Default)]
struct QueueAcc {
    size: [f64; 2],
    bytes: [f64; 2],
    seen: [bool; 2],
}

impl Reset for QueueAcc {
    fn reset(&mut self) {
        *self = QueueAcc::default();
    }
}

#[derive(Debug, Default)]
struct PoolAcc {
    kv_cache: [Option<f64>; 2],
    queue: [Option<f64>; 2],
    running: [Option<f64>; 2],
}

impl Reset for PoolAcc {
    fn reset(&mut self) {
        *self = PoolAcc::default();
    }
}

#[derive(Debug, Default)]
pub(super) struct Epp {
    /// Keyed by `target_model_name` (the model a request is routed to),
    /// else `model_name`; empty on routers that label neither.
    queues: Slots<QueueAcc>,
    /// Keyed by the pool's `name`.
    pools: Slots<PoolAcc>,
}

impl Epp {
    pub(super) fn clear(&mut self) {
        self.queues.clear();
        self.pools.clear();
    }

    /// The set that dropped a key this scrape, and why, if any.
    pub(super) fn overflow(&self) -> Option<(&'static str, Overflow)> {
        let named = |what, slots: Option<Overflow>| slots.map(|o| (what, o));
        named("flow-control queues", self.queues.overflow())
            .or_else(|| named("pools", self.pools.overflow()))
    }

    /// Accumulates one sample.
    pub(super) fn observe(&mut self, sample: &Sample<'_>) -> Seen {
        if !PREFIXES.iter().any(|p| sample.name.starts_with(p)) {
            return Seen::Foreign;
        }
        let Some((field, generation)) = classify(sample.name) else {
            return Seen::Unread;
        };
        let value = sample.value;
        match field {
            Field::QueueSize | Field::QueueBytes => {
                let (mut target, mut model) = ("", "");
                for label in sample.labels {
                    match label.name {
                        "target_model_name" => target = label.raw_value,
                        "model_name" => model = label.raw_value,
                        _ => {}
                    }
                }
                let key = if target.is_empty() { model } else { target };
                let Some(queue) = self.queues.entry(key) else {
                    return Seen::Read;
                };
                queue.seen[generation] = true;
                match field {
                    Field::QueueSize => queue.size[generation] += value,
                    _ => queue.bytes[generation] += value,
                }
            }
            Field::PoolKvCache | Field::PoolQueue | Field::PoolRunning => {
                let name = sample.labels.get("name").map_or("", |l| l.raw_value);
                let Some(pool) = self.pools.entry(name) else {
                    return Seen::Read;
                };
                let slot = match field {
                    Field::PoolKvCache => &mut pool.kv_cache,
                    Field::PoolQueue => &mut pool.queue,
                    _ => &mut pool.running,
                };
                slot[generation] = Some(value);
            }
        }
        Seen::Read
    }

    pub(super) fn fill(&self, out: &mut EppSignals) {
        let queues = resized(&mut out.queues, self.queues.len());
        for (q, (model, acc)) in queues.iter_mut().zip(self.queues.iter()) {
            let generation = if acc.seen[CANONICAL] {
                CANONICAL
            } else {
                DEPRECATED
            };
            q.model.clear();
            q.model.push_str(model);
            q.queue_size = acc.size[generation];
            q.queue_bytes = acc.bytes[generation];
        }
        let pools = resized(&mut out.pools, self.pools.len());
        for (p, (name, acc)) in pools.iter_mut().zip(self.pools.iter()) {
            let pick = |v: [Option<f64>; 2]| v[CANONICAL].or(v[DEPRECATED]);
            p.pool.clear();
            p.pool.push_str(name);
            p.kv_cache_avg = pick(acc.kv_cache);
            p.queue_avg = pick(acc.queue);
            p.running_avg = pick(acc.running);
        }
    }
}
