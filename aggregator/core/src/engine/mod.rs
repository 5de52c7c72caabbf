//! Turns the pod store, the variants and the replica counts into one
//! [`Decision`] per variant: groups variants by model, feeds the saturation
//! analysis, and applies the safety net and scale to zero. Pure: the caller
//! passes the clock.
//!
//! One model's evaluation, in order: [`reporting`] finds each variant's pods
//! and fresh loads; [`scale_to_zero`] says whether the model is idle or must
//! wake; the saturation analysis sizes the model; each variant then takes the
//! analysis' target, or the [`safety_net`]'s held value when its data is
//! missing; [`Engine::record`] remembers the value and builds the decision.

mod reporting;
mod safety_net;
mod scale_to_zero;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use self::reporting::{PodView, Reporting, derived_counts, fresh_loads};
use self::safety_net::SafetyNet;
use self::scale_to_zero::{Policy, Zero};
use crate::activity::{ActivityTracker, ModelKey};
use crate::analysis::saturation::{self, ModelAnalysis, VariantState};
use crate::config::saturation::{SaturationConfig, SaturationConfigSet};
use crate::config::scale_to_zero::ScaleToZeroConfigSet;
use crate::decision::{Basis, DataState, Decision, Saturation, ScalingEvent, SourceFailure};
use crate::snapshot::ReplicaCounts;
use crate::store::{PodEntry, PodKey};
use crate::variants::{Variant, VariantKey};

/// Inputs of one evaluation.
pub struct Inputs<'a> {
    pub now: Instant,
    pub wall: SystemTime,
    pub variants: &'a [Variant],
    pub pods: &'a HashMap<PodKey, PodEntry>,
    /// Replica counts per variant from an actuator or the cluster; `None`
    /// derives them from the pods that report for each variant.
    pub replicas: Option<&'a HashMap<VariantKey, ReplicaCounts>>,
    pub config: &'a SaturationConfigSet,
    pub staleness: Duration,
    /// Per-model scale-to-zero policies; `None` when scale to zero is off,
    /// and the cheapest variant of every model keeps at least 1 replica.
    pub scale_to_zero: Option<&'a ScaleToZeroConfigSet>,
    /// Why polled sources failed, by variant: shown on the decisions they hold.
    pub failures: &'a HashMap<VariantKey, SourceFailure>,
}

/// Remembers what was published so the next step can detect convergence and
/// the safety net can fall back to it.
#[derive(Debug, Default)]
pub struct Engine {
    previous: HashMap<VariantKey, u32>,
    safety_net: SafetyNet,
    /// Why each variant's desired value last changed.
    change_reasons: HashMap<VariantKey, &'static str>,
    activity: ActivityTracker,
}

/// What one variant brings to its model's analysis, beside its state.
struct Observed {
    key: VariantKey,
    counts: ReplicaCounts,
    data: DataState,
    /// Age of the oldest fresh sample used.
    age: Option<Duration>,
}

impl Engine {
    /// Seeds the previous desired values (for example from a status after a restart).
    pub fn with_previous(previous: HashMap<VariantKey, u32>) -> Self {
        Engine {
            previous,
            ..Engine::default()
        }
    }

    /// Decides every variant. Returns the decisions (ordered by variant) and the changes.
    pub fn evaluate(&mut self, inputs: &Inputs<'_>) -> (Vec<Decision>, Vec<ScalingEvent>) {
        let mut by_model: BTreeMap<(&str, &str), Vec<&Variant>> = BTreeMap::new();
        for va in inputs.variants {
            by_model
                .entry((va.namespace.as_str(), va.model_id.as_str()))
                .or_default()
                .push(va);
        }
        let reporting = Reporting::read(inputs.variants, inputs.pods, inputs.now, inputs.staleness);
        let mut decisions = Vec::with_capacity(inputs.variants.len());
        let mut events = Vec::new();
        for (model, variants) in by_model {
            self.evaluate_model(
                inputs,
                &reporting,
                model,
                &variants,
                (&mut decisions, &mut events),
            );
        }
        let live: HashSet<&VariantKey> = decisions.iter().map(|d| &d.variant).collect();
        let models: HashSet<ModelKey> = decisions
            .iter()
            .map(|d| (d.variant.namespace.clone(), d.model_id.clone()))
            .collect();
        self.activity.retain(&models, &inputs.pods.keys().collect());
        self.previous.retain(|k, _| live.contains(k));
        self.safety_net.retain(&live);
        self.change_reasons.retain(|k, _| live.contains(k));
        decisions.sort_by(|a, b| a.variant.cmp(&b.variant));
        (decisions, events)
    }

    /// Decides the variants of one model together.
    fn evaluate_model(
        &mut self,
        inputs: &Inputs<'_>,
        reporting: &Reporting<'_, '_>,
        (namespace, model_id): (&str, &str),
        variants: &[&Variant],
        (decisions, events): (&mut Vec<Decision>, &mut Vec<ScalingEvent>),
    ) {
        let config = inputs.config.for_model(model_id, namespace);
        let pods: Vec<(Vec<&PodView<'_>>, ReplicaCounts)> = variants
            .iter()
            .map(|va| {
                let pods = reporting.pods_of(va);
                let counts = match inputs.replicas {
                    Some(map) => map.get(&va.key()).copied().unwrap_or_default(),
                    None => derived_counts(&pods),
                };
                (pods, counts)
            })
            .collect();
        let cheapest = variants
            .iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)))
            .map(|va| va.key());
        let policy = Policy {
            now: inputs.now,
            staleness: inputs.staleness,
            policies: inputs.scale_to_zero,
        };
        let waiting = reporting.epp_queue(namespace, model_id) > 0.0;
        let zero = Zero::observe(
            &mut self.activity,
            &policy,
            (namespace, model_id),
            &pods,
            waiting,
            cheapest,
        );

        let (states, observed): (Vec<VariantState>, Vec<Observed>) = variants
            .iter()
            .zip(&pods)
            .map(|(va, (pods, counts))| {
                self.variant_state(inputs, model_id, va, pods, *counts, &zero)
            })
            .unzip();
        let analysis = saturation::analyze(&states, &config);
        let targets = saturation::targets(&states, &analysis);

        for (((va, state), target), seen) in variants.iter().zip(states).zip(targets).zip(observed)
        {
            let (desired, basis) = if seen.data == DataState::Missing {
                let previous = self.previous.get(&seen.key).copied();
                self.safety_net
                    .hold(&seen.key, &state, previous, seen.counts)
            } else {
                self.safety_net.release(&seen.key);
                zero.desired(&seen.key, &target, seen.counts)
            };
            let outcome = Outcome {
                desired,
                basis,
                state,
                analysis: &analysis,
                config,
            };
            decisions.push(self.record(inputs, va, seen, outcome, events));
        }
    }

    /// One variant's input to its model's analysis.
    fn variant_state(
        &self,
        inputs: &Inputs<'_>,
        model_id: &str,
        va: &Variant,
        pods: &[&PodView<'_>],
        counts: ReplicaCounts,
        zero: &Zero,
    ) -> (VariantState, Observed) {
        let key = va.key();
        let (loads, oldest) = fresh_loads(pods, model_id, inputs.now, inputs.staleness);
        let data = match (counts.ready, loads.len()) {
            (0, _) => DataState::Idle,
            (_, 0) => DataState::Missing,
            (ready, n) if (n as u32) < ready => DataState::Partial,
            _ => DataState::Fresh,
        };
        // Only an idle model goes to zero; until then its cheapest variant
        // keeps one replica.
        let min_replicas = u32::from(zero.keeps_a_replica(&key)).max(counts.floor);
        let state = VariantState {
            name: va.name.clone(),
            cost: va.cost,
            current_replicas: counts.current,
            ready_replicas: counts.ready,
            previous_desired: self.previous.get(&key).copied(),
            min_replicas,
            loads,
        };
        let age = oldest.map(|t| inputs.now.saturating_duration_since(t));
        (
            state,
            Observed {
                key,
                counts,
                data,
                age,
            },
        )
    }

    /// Remembers a variant's new desired value (and why it changed) and
    /// builds its decision.
    fn record(
        &mut self,
        inputs: &Inputs<'_>,
        va: &Variant,
        seen: Observed,
        outcome: Outcome<'_>,
        events: &mut Vec<ScalingEvent>,
    ) -> Decision {
        let Observed {
            key,
            counts,
            data,
            age,
        } = seen;
        let Outcome {
            desired,
            basis,
            state,
            analysis,
            config,
        } = outcome;
        let from = self.previous.get(&key).copied().unwrap_or(counts.current);
        if desired != from {
            events.push(ScalingEvent {
                variant: key.clone(),
                from,
                to: desired,
                reason: basis.as_str(),
            });
            self.change_reasons.insert(key.clone(), basis.as_str());
        }
        self.previous.insert(key.clone(), desired);
        let change_reason = self.change_reasons.get(&key).copied();
        let source_failure = inputs.failures.get(&key).cloned();
        Decision {
            variant: key,
            model_id: va.model_id.clone(),
            accelerator: va.accelerator.clone(),
            cost: va.cost,
            current_replicas: counts.current,
            ready_replicas: counts.ready,
            desired_replicas: desired,
            basis,
            change_reason,
            source_failure,
            data,
            data_age: age,
            inputs: state.loads,
            saturation: Saturation {
                analysis: analysis.clone(),
                config,
            },
            decided_at: inputs.wall,
        }
    }
}

/// What the analysis decided for one variant.
struct Outcome<'a> {
    desired: u32,
    basis: Basis,
    state: VariantState,
    analysis: &'a ModelAnalysis,
    config: SaturationConfig,
}
