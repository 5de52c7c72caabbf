//! Turns the pod store, the variants and the replica counts into one
//! [`Decision`] per variant: groups variants by model, feeds the saturation
//! analysis, and applies the safety net. Pure: the caller passes the clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};
use wva_proto::v1::Sample;

use crate::analysis::saturation::{self, ReplicaLoad, VariantState};
use crate::config::saturation::SaturationConfigSet;
use crate::decision::{Basis, DataState, Decision, Fallback};
use crate::store::{PodEntry, PodKey};
use crate::variants::{VariantAutoscaling, VariantKey};

/// Replica counts of a variant's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaCounts {
    /// Replicas the target has (spec).
    pub current: u32,
    /// Replicas that are ready.
    pub ready: u32,
}

/// A change of desired replicas, for the scaling counter and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingEvent {
    pub variant: VariantKey,
    pub from: u32,
    pub to: u32,
    pub reason: &'static str,
}

impl ScalingEvent {
    pub fn direction(&self) -> &'static str {
        if self.to > self.from { "up" } else { "down" }
    }
}

/// Inputs of one evaluation.
pub struct Inputs<'a> {
    pub now: Instant,
    pub wall: SystemTime,
    pub variants: &'a [VariantAutoscaling],
    pub pods: &'a HashMap<PodKey, PodEntry>,
    /// Replica counts per variant from an actuator or the cluster; `None`
    /// derives them from the pods that report for each variant.
    pub replicas: Option<&'a HashMap<VariantKey, ReplicaCounts>>,
    pub config: &'a SaturationConfigSet,
    pub staleness: Duration,
    /// With scale to zero off, the cheapest variant of a model keeps ≥ 1 replica.
    pub scale_to_zero: bool,
}

/// Remembers what was published so the next step can detect convergence and
/// the safety net can fall back to it.
#[derive(Debug, Default)]
pub struct Engine {
    previous: HashMap<VariantKey, u32>,
    in_safety_net: HashSet<VariantKey>,
}

/// The signals one pod contributes to one variant.
struct PodView<'a> {
    key: &'a PodKey,
    sample: Option<(&'a Sample, Instant)>,
}

impl Engine {
    /// Seeds the previous desired values (for example from a status after a restart).
    pub fn with_previous(previous: HashMap<VariantKey, u32>) -> Self {
        Engine {
            previous,
            in_safety_net: HashSet::new(),
        }
    }

    /// Decides every variant. Returns the decisions (ordered by variant) and the changes.
    pub fn evaluate(&mut self, inputs: &Inputs<'_>) -> (Vec<Decision>, Vec<ScalingEvent>) {
        let mut by_model: BTreeMap<(&str, &str), Vec<&VariantAutoscaling>> = BTreeMap::new();
        for va in inputs.variants {
            by_model
                .entry((va.namespace.as_str(), va.model_id.as_str()))
                .or_default()
                .push(va);
        }
        let mut by_variant: HashMap<(&str, &str), Vec<PodView<'_>>> = HashMap::new();
        for (key, entry) in inputs.pods {
            by_variant
                .entry((key.namespace.as_str(), entry.hello.variant.as_str()))
                .or_default()
                .push(PodView {
                    key,
                    sample: entry.latest.as_ref().map(|(s, at)| (s, *at)),
                });
        }
        let mut decisions = Vec::with_capacity(inputs.variants.len());
        let mut events = Vec::new();
        for ((namespace, model_id), variants) in by_model {
            self.evaluate_model(
                inputs,
                &by_variant,
                (namespace, model_id),
                &variants,
                (&mut decisions, &mut events),
            );
        }
        let live: HashSet<&VariantKey> = decisions.iter().map(|d| &d.variant).collect();
        self.previous.retain(|k, _| live.contains(k));
        self.in_safety_net.retain(|k| live.contains(k));
        decisions.sort_by(|a, b| a.variant.cmp(&b.variant));
        (decisions, events)
    }

    fn evaluate_model(
        &mut self,
        inputs: &Inputs<'_>,
        pods_by_variant: &HashMap<(&str, &str), Vec<PodView<'_>>>,
        (namespace, model_id): (&str, &str),
        variants: &[&VariantAutoscaling],
        (decisions, events): (&mut Vec<Decision>, &mut Vec<ScalingEvent>),
    ) {
        let config = inputs.config.for_model(model_id, namespace);
        let cheapest = variants
            .iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)))
            .map(|va| va.key());

        let mut states = Vec::with_capacity(variants.len());
        let mut facts = Vec::with_capacity(variants.len());
        for va in variants {
            let key = va.key();
            let pods = pods_of(pods_by_variant, va);
            let (loads, oldest) = fresh_loads(&pods, model_id, inputs.now, inputs.staleness);
            let counts = match inputs.replicas {
                Some(map) => map.get(&key).copied().unwrap_or_default(),
                None => derived_counts(&pods),
            };
            let data = match (counts.ready, loads.len()) {
                (0, _) => DataState::Idle,
                (_, 0) => DataState::Missing,
                (ready, n) if (n as u32) < ready => DataState::Partial,
                _ => DataState::Fresh,
            };
            let min_replicas = u32::from(!inputs.scale_to_zero && cheapest.as_ref() == Some(&key));
            states.push(VariantState {
                name: va.name.clone(),
                cost: va.cost,
                current_replicas: counts.current,
                ready_replicas: counts.ready,
                previous_desired: self.previous.get(&key).copied(),
                min_replicas,
                replicas: loads,
            });
            facts.push((
                key,
                counts,
                data,
                oldest.map(|t| inputs.now.saturating_duration_since(t)),
            ));
        }

        let analysis = saturation::analyze(&states, &config);
        let targets = saturation::targets(&states, &analysis);

        for (((va, state), target), (key, counts, data, age)) in
            variants.iter().zip(states).zip(targets).zip(facts)
        {
            let previous = self.previous.get(&key).copied();
            let (desired, basis) = if data == DataState::Missing {
                // Never below the replica the model is guaranteed, even when the
                // previous 0 was decided while the variant had no replica.
                let value = state.held_target();
                let source = match previous {
                    Some(_) => Fallback::PreviousDesired,
                    None => Fallback::CurrentReplicas,
                };
                if self.in_safety_net.insert(key.clone()) {
                    warn!(
                        variant = %key,
                        currentReplicas = counts.current,
                        desiredReplicas = value,
                        fallbackSource = source.as_str(),
                        "Safety net activated: emitted fallback metrics (no fresh metrics from the variant's pods)"
                    );
                }
                (value, Basis::SafetyNet(source))
            } else {
                if self.in_safety_net.remove(&key) {
                    info!(variant = %key, "Safety net released: fresh metrics are back");
                }
                (target.target_replicas, Basis::Analysis(target.reason))
            };

            let from = previous.unwrap_or(counts.current);
            if desired != from {
                events.push(ScalingEvent {
                    variant: key.clone(),
                    from,
                    to: desired,
                    reason: basis.as_str(),
                });
            }
            self.previous.insert(key.clone(), desired);
            decisions.push(Decision {
                variant: key,
                model_id: model_id.to_string(),
                accelerator: va.accelerator.clone(),
                cost: va.cost,
                current_replicas: counts.current,
                ready_replicas: counts.ready,
                desired_replicas: desired,
                basis,
                data,
                data_age: age,
                inputs: state.replicas,
                decided_at: inputs.wall,
            });
        }
    }
}

/// The pods that report for a variant: same namespace, and the agent's
/// variant is the VA's target Deployment's name or the VA's own name.
fn pods_of<'p, 'a>(
    by_variant: &'p HashMap<(&str, &str), Vec<PodView<'a>>>,
    va: &'p VariantAutoscaling,
) -> Vec<&'p PodView<'a>> {
    let mut names = vec![va.target.name.as_str()];
    if va.name != va.target.name {
        names.push(va.name.as_str());
    }
    names
        .into_iter()
        .filter_map(|name| by_variant.get(&(va.namespace.as_str(), name)))
        .flatten()
        .collect()
}

/// Fresh, healthy loads for `model_id`, sorted by pod, and the oldest arrival among them.
fn fresh_loads(
    pods: &[&PodView<'_>],
    model_id: &str,
    now: Instant,
    staleness: Duration,
) -> (Vec<ReplicaLoad>, Option<Instant>) {
    let mut loads = Vec::with_capacity(pods.len());
    let mut oldest: Option<Instant> = None;
    for pod in pods {
        let Some((sample, at)) = pod.sample else {
            continue;
        };
        if !sample.up || now.saturating_duration_since(at) > staleness {
            continue;
        }
        let Some(signals) = sample.models.iter().find(|m| m.model == model_id) else {
            continue;
        };
        loads.push(ReplicaLoad {
            pod: pod.key.pod.clone(),
            kv_cache_usage: signals.kv_cache_usage,
            queue_length: signals.requests_waiting,
        });
        oldest = Some(oldest.map_or(at, |o| o.min(at)));
    }
    loads.sort_by(|a, b| a.pod.cmp(&b.pod));
    (loads, oldest)
}

/// Without an actuator: every connected pod is a ready replica; whether it
/// also reports usable signals is judged separately (see [`DataState`]).
fn derived_counts(pods: &[&PodView<'_>]) -> ReplicaCounts {
    let n = pods.len() as u32;
    ReplicaCounts {
        current: n,
        ready: n,
    }
}
