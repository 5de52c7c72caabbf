//! Which pods report for which variant, and what they report: the inputs of
//! one model's analysis, read from the pod store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wva_proto::v1::{ModelSignals, Role, Sample};

use super::rates::{RateTracker, Reading};
use crate::analysis::model::ReplicaLoad;
use crate::fast_hash::{Map, Set};
use crate::snapshot::ReplicaCounts;
use crate::store::{PodEntry, PodKey};
use crate::variants::Variant;

/// The signals one pod contributes to one variant.
pub(super) struct PodView<'a> {
    pub(super) key: &'a PodKey,
    pub(super) sample: Option<(&'a Sample, Instant)>,
    /// How old its sample may be ([`PodEntry::staleness`]).
    pub(super) fresh_within: Duration,
}

impl<'a> PodView<'a> {
    /// The pod's signals for `model` and when they arrived, if its sample
    /// is up and fresh at `now`.
    pub(super) fn fresh_signals(
        &self,
        model: &str,
        now: Instant,
    ) -> Option<(&'a ModelSignals, Instant)> {
        let (sample, at) = self.sample?;
        if !sample.up || now.saturating_duration_since(at) > self.fresh_within {
            return None;
        }
        let signals = sample.models.iter().find(|m| m.model == model)?;
        Some((signals, at))
    }

    /// The value of the forwarded signal `name` and when it arrived, if the
    /// pod's sample is up, fresh at `now`, and carries it.
    pub(super) fn fresh_signal(&self, name: &str, now: Instant) -> Option<(f64, Instant)> {
        let (sample, at) = self.sample?;
        if !sample.up || now.saturating_duration_since(at) > self.fresh_within {
            return None;
        }
        let value = sample.signals.iter().find(|s| s.name == name)?.value;
        Some((value, at))
    }
}

/// The pods grouped by the variant they report for.
pub(super) struct Reporting<'v, 'p> {
    by_variant: Map<(&'p str, &'p str), Vec<PodView<'p>>>,
    /// `(namespace, Deployment)` of every VA's target.
    targets: Set<(&'v str, &'v str)>,
    /// Requests held in the endpoint pickers' flow-control queues, per
    /// `(namespace, model)`: the largest any fresh EPP sample reports.
    epp_queues: Map<(&'p str, &'p str), f64>,
}

impl<'v, 'p> Reporting<'v, 'p> {
    /// Groups the store's pods by the variant they report for, and reads the
    /// endpoint pickers' queues.
    pub(super) fn read(
        variants: &'v [Variant],
        pods: &'p HashMap<PodKey, PodEntry>,
        now: Instant,
        staleness: Duration,
    ) -> Self {
        // Sized for an even spread, so that most lists never grow.
        let per_variant = pods.len().div_ceil(variants.len().max(1));
        let mut reporting = Reporting {
            by_variant: Map::with_capacity_and_hasher(variants.len(), Default::default()),
            targets: variants
                .iter()
                .map(|va| (va.namespace.as_str(), va.target.name.as_str()))
                .collect(),
            epp_queues: Map::default(),
        };
        for (key, entry) in pods {
            if entry.hello.role == Role::Epp as i32 {
                reporting.add_epp(key, entry, now, staleness);
            }
            reporting
                .by_variant
                .entry((key.namespace.as_str(), entry.hello.variant.as_str()))
                .or_insert_with(|| Vec::with_capacity(per_variant))
                .push(PodView {
                    key,
                    sample: entry.latest.as_ref().map(|(s, at)| (s, *at)),
                    fresh_within: entry.staleness(staleness),
                });
        }
        reporting
    }

    fn add_epp(&mut self, key: &'p PodKey, entry: &'p PodEntry, now: Instant, staleness: Duration) {
        let Some((sample, at)) = &entry.latest else {
            return;
        };
        if !sample.up || now.saturating_duration_since(*at) > entry.staleness(staleness) {
            return;
        }
        for queue in sample.epp.iter().flat_map(|e| &e.queues) {
            let slot = self
                .epp_queues
                .entry((key.namespace.as_str(), queue.model.as_str()))
                .or_default();
            *slot = slot.max(queue.queue_size);
        }
    }

    pub(super) fn epp_queue(&self, namespace: &str, model: &str) -> f64 {
        self.epp_queues
            .get(&(namespace, model))
            .copied()
            .unwrap_or(0.0)
    }

    /// The pods that report for a variant: same namespace, and the agent's
    /// variant is the VA's target Deployment's name, or the VA's own name
    /// when that is no VA's target (so a pod never counts for two variants).
    pub(super) fn pods_of<'s>(&'s self, va: &'s Variant) -> Vec<&'s PodView<'p>> {
        let ns = va.namespace.as_str();
        let mut pods: Vec<&'s PodView<'p>> = Vec::new();
        if let Some(by_target) = self.by_variant.get(&(ns, va.target.name.as_str())) {
            pods.extend(by_target);
        }
        if va.name != va.target.name
            && !self.targets.contains(&(ns, va.name.as_str()))
            && let Some(by_name) = self.by_variant.get(&(ns, va.name.as_str()))
        {
            pods.extend(by_name);
        }
        pods
    }
}

/// Fresh, healthy loads for `model_id`, sorted by pod, and the oldest
/// arrival among them; `rates` measures each pod's request rates.
pub(super) fn fresh_loads(
    pods: &[&PodView<'_>],
    model_id: &str,
    now: Instant,
    rates: &mut RateTracker,
) -> (Vec<ReplicaLoad>, Option<Instant>) {
    let mut loads = Vec::with_capacity(pods.len());
    let mut oldest: Option<Instant> = None;
    for pod in pods {
        let Some((signals, at)) = pod.fresh_signals(model_id, now) else {
            continue;
        };
        let reading = signals.counters.as_ref().map(|c| Reading {
            at,
            finished: c.request_success,
            waiting: signals.requests_waiting,
        });
        let (name, rates) = rates.observe(pod.key, model_id, reading);
        let blocks = signals.num_gpu_blocks as f64 * f64::from(signals.block_size);
        let prompts = signals.counters.as_ref().and_then(|c| {
            (c.request_prompt_tokens_count > 0.0)
                .then(|| c.request_prompt_tokens_sum / c.request_prompt_tokens_count)
        });
        loads.push(ReplicaLoad {
            pod: name,
            kv_cache_usage: signals.kv_cache_usage,
            requests_waiting: signals.requests_waiting,
            rates,
            kv_capacity_tokens: (blocks > 0.0).then_some(blocks),
            mean_prompt_tokens: prompts,
        });
        oldest = Some(oldest.map_or(at, |o| o.min(at)));
    }
    loads.sort_by(|a, b| a.pod.cmp(&b.pod));
    (loads, oldest)
}

/// Without an actuator: every connected pod is a ready replica; whether it
/// also reports usable signals is judged separately (see `DataState`).
pub(super) fn derived_counts(pods: &[&PodView<'_>]) -> ReplicaCounts {
    let n = pods.len() as u32;
    ReplicaCounts {
        current: n,
        ready: n,
        floor: 0,
        ceiling: None,
    }
}
