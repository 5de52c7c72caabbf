//! Turns the pod store, the variants and the replica counts into one
//! [`Decision`] per variant: groups variants by model, feeds the saturation
//! analysis, and applies the safety net and scale to zero. Pure: the caller
//! passes the clock.
//!
//! One model's evaluation, in order: [`reporting`] finds each variant's pods
//! and fresh loads; [`scale_to_zero`] says whether the model is idle or must
//! wake; [`convergence`] says which variants still wait for an earlier step
//! and which waited past the deadline; the saturation analysis sizes the
//! model's step, which [`flapping`] and [`trend`] keep from scaling down
//! where that was undone before or the load is rising, and spreads it over
//! the variants; a stabilization [`Window`] holds scale-downs for the
//! model's window; each variant then takes that target,
//! or the [`safety_net`]'s held value when its data is missing;
//! [`Engine::record`] remembers the value and builds the decision.
//!
//! Workloads scaled on a forwarded signal (`crate::workload`) are decided
//! apart, after the models, by [`workload`]: the HPA's rule over their
//! pods' fresh values, with the same safety net.

mod assessed;
mod convergence;
mod flapping;
mod hybrid;
mod load;
mod rates;
mod reporting;
mod safety_net;
mod scale_to_zero;
#[cfg(test)]
mod tests;
mod trend;
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use self::assessed::{Assessed, Observed};
use self::convergence::Convergence;
use self::flapping::FlapGuard;
use self::hybrid::HybridState;
use self::load::Load;
use self::rates::RateTracker;
use self::reporting::{PodView, Reporting, derived_counts, fresh_loads};
use self::safety_net::SafetyNet;
use self::scale_to_zero::{Policy, Zero};
use self::trend::LoadTrend;
use crate::activity::ActivityTracker;
use crate::analysis::model::{Need, Reason, VariantState, VariantTarget, busy_capacity};
use crate::analysis::saturation;
use crate::analysis::steps::{self, Capacities, Demand};
use crate::analysis::tokens;
use crate::config::hybrid::HybridConfig;
use crate::config::saturation::{Analyzer, SaturationConfig, SaturationConfigSet};
use crate::config::scale_to_zero::ScaleToZeroConfigSet;
use crate::decision::{
    Basis, DataState, Decision, LimitReason, ModelBased, Saturation, ScalingEvent, SourceFailure,
};
use crate::fast_hash::{Map, Set};
use crate::model_key::ModelRef;
use crate::snapshot::ReplicaCounts;
use crate::stabilization::Window;
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
    /// How long a variant may take to carry out a step before its model goes
    /// on without it.
    pub convergence_timeout: Duration,
    /// Per-model scale-to-zero policies; `None` when scale to zero is off,
    /// and the cheapest variant of every model keeps at least 1 replica.
    pub scale_to_zero: Option<&'a ScaleToZeroConfigSet>,
    /// Why polled sources failed, by variant: shown on the decisions they hold.
    pub failures: &'a HashMap<VariantKey, SourceFailure>,
    /// HYBRID mode's configuration; `None` in CAPACITY-ONLY mode.
    pub hybrid: Option<&'a HybridConfig>,
}

/// Remembers what was published so the next step can detect convergence and
/// the safety net can fall back to it.
#[derive(Debug, Default)]
pub struct Engine {
    previous: Map<VariantKey, u32>,
    convergence: Convergence,
    /// Each variant's recent recommendations, for scale-down stabilization.
    windows: Map<VariantKey, Window>,
    safety_net: SafetyNet,
    /// Why each variant's desired value last changed.
    change_reasons: Map<VariantKey, &'static str>,
    /// Each pod's request rates.
    rates: RateTracker,
    /// Scale-downs each model had to undo.
    flaps: FlapGuard,
    /// Each model's recent load, to tell a rising one.
    trend: LoadTrend,
    /// Requests per second a busy replica of each variant last finished.
    request_capacity: Map<VariantKey, f64>,
    /// Variants whose pods reported at the last evaluation: without replica
    /// counts, all of them vanishing at once means lost, not idle.
    reported: Set<VariantKey>,
    activity: ActivityTracker,
    /// HYBRID mode's profiles and the samples they are learned from.
    hybrid: HybridState,
}

impl Engine {
    /// Seeds the previous desired values (for example from a status after a restart).
    pub fn with_previous(previous: HashMap<VariantKey, u32>) -> Self {
        Engine {
            previous: previous.into_iter().collect(),
            ..Engine::default()
        }
    }

    /// Decides every variant. Returns the decisions (ordered by variant) and the changes.
    pub fn evaluate(&mut self, inputs: &Inputs<'_>) -> (Vec<Decision>, Vec<ScalingEvent>) {
        let mut by_model: BTreeMap<(&str, &str), Vec<&Variant>> = BTreeMap::new();
        let mut workloads = Vec::new();
        for va in inputs.variants {
            if let Some(target) = &va.signal {
                workloads.push((va, target));
                continue;
            }
            by_model
                .entry((va.namespace.as_str(), va.model_id.as_str()))
                .or_default()
                .push(va);
        }
        let reporting = Reporting::read(inputs.variants, inputs.pods, inputs.now, inputs.staleness);
        let mut decisions = Vec::with_capacity(inputs.variants.len());
        let mut events = Vec::new();
        match inputs.hybrid {
            // The plan weighs every model at once (accelerator limits).
            Some(config) => {
                let mut assessed: Vec<Assessed<'_, '_, '_>> = by_model
                    .into_iter()
                    .map(|(model, variants)| self.assess(inputs, &reporting, model, variants))
                    .collect();
                self.hybrid.plan(config, inputs.now, &mut assessed);
                for model in assessed {
                    self.decide(inputs, model, (&mut decisions, &mut events));
                }
            }
            // Each model decided while its data is still in the cache: a
            // tenth of a large fleet's analysis otherwise.
            None => {
                for (model, variants) in by_model {
                    let assessed = self.assess(inputs, &reporting, model, variants);
                    self.decide(inputs, assessed, (&mut decisions, &mut events));
                }
            }
        }
        for (va, target) in workloads {
            let decision = self.decide_workload(inputs, &reporting, (va, target), &mut events);
            decisions.push(decision);
        }
        self.forget_gone(inputs.pods, &decisions);
        decisions.sort_by(|a, b| a.variant.cmp(&b.variant));
        (decisions, events)
    }

    /// Forgets the variants, models and pods that no longer are.
    fn forget_gone(&mut self, pods: &HashMap<PodKey, PodEntry>, decisions: &[Decision]) {
        let live: Set<&VariantKey> = decisions.iter().map(|d| &d.variant).collect();
        let models: Set<ModelRef<'_>> = decisions
            .iter()
            .map(|d| ModelRef {
                namespace: &d.variant.namespace,
                model: &d.model_id,
            })
            .collect();
        let in_store = |pod: &PodKey| pods.contains_key(pod);
        self.activity.retain(&models, in_store);
        self.flaps.retain(&models);
        self.trend.retain(&models);
        self.rates.retain(in_store);
        self.hybrid.retain(in_store, &models);
        self.previous.retain(|k, _| live.contains(k));
        self.convergence.retain(&live);
        self.windows.retain(|k, _| live.contains(k));
        self.safety_net.retain(&live);
        self.change_reasons.retain(|k, _| live.contains(k));
        self.reported.retain(|k| live.contains(k));
        self.request_capacity.retain(|k, _| live.contains(k));
    }

    /// Analyses the variants of one model together, up to each variant's
    /// target.
    fn assess<'v, 'r, 'p>(
        &mut self,
        inputs: &Inputs<'v>,
        reporting: &'r Reporting<'v, 'p>,
        (namespace, model_id): (&'v str, &'v str),
        variants: Vec<&'v Variant>,
    ) -> Assessed<'v, 'r, 'p> {
        let config = inputs.config.for_model(model_id, namespace);
        let keys: Vec<VariantKey> = variants.iter().map(|va| va.key()).collect();
        let pods: Vec<(Vec<&'r PodView<'p>>, ReplicaCounts)> = variants
            .iter()
            .zip(&keys)
            .map(|(va, key)| {
                let pods = reporting.pods_of(va);
                let counts = match inputs.replicas {
                    Some(map) => map.get(key).copied().unwrap_or_default(),
                    None => derived_counts(&pods),
                };
                (pods, counts)
            })
            .collect();
        let cheapest = variants
            .iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)))
            .copied();
        let model = ModelRef {
            namespace,
            model: model_id,
        };
        let policy = Policy {
            now: inputs.now,
            policies: inputs.scale_to_zero,
        };
        let waiting = reporting.epp_queue(namespace, model_id) > 0.0;
        let zero = Zero::observe(&mut self.activity, &policy, model, &pods, waiting, cheapest);

        let (states, observed): (Vec<VariantState>, Vec<Observed>) = variants
            .iter()
            .zip(keys)
            .zip(&pods)
            .map(|((va, key), (pods, counts))| {
                self.variant_state(inputs, model_id, (va, key), pods, *counts, &zero)
            })
            .unzip();
        let analysis = saturation::analyze(&states, &config);
        let (mut capacities, token_analysis) = match config.analyzer_name {
            Analyzer::Capacity => {
                let need = saturation::need(&states, &config, &analysis);
                let mut capacities = Capacities::replicas(need, states.len());
                let loads = states.iter().flat_map(|s| &s.loads);
                capacities.counts_coming = saturation::replicas_for_the_rate(loads).is_some();
                (capacities, None)
            }
            Analyzer::Tokens => match tokens::analyze(&states, &config) {
                Some((measured, capacities)) => (capacities, Some(measured)),
                None => (Capacities::replicas(Need::Hold, states.len()), None),
            },
        };
        let load = Load::of(&states);
        let rising = self.trend.rising(model, inputs.now, load);
        if matches!(capacities.need, Demand::Down(_))
            && (rising || !self.flaps.allows_down(model, load))
        {
            capacities.need = Demand::Hold;
        }
        if !matches!(capacities.need, Demand::Up(_)) {
            for seen in &observed {
                self.convergence.forgive_scalers(&seen.key);
            }
        }
        let replicas: u32 = states.iter().map(|s| s.current_replicas).sum();
        let targets = steps::allocate(&states, &capacities, config.max_scale_up(replicas));
        Assessed {
            model,
            variants,
            pods,
            zero,
            states,
            observed,
            targets,
            plans: Vec::new(),
            saturation: Saturation {
                analysis,
                tokens: token_analysis,
                config,
            },
            load,
        }
    }

    /// Decides the variants of one assessed model.
    fn decide(
        &mut self,
        inputs: &Inputs<'_>,
        assessed: Assessed<'_, '_, '_>,
        (decisions, events): (&mut Vec<Decision>, &mut Vec<ScalingEvent>),
    ) {
        let Assessed {
            model,
            variants,
            zero,
            states,
            observed,
            targets,
            plans,
            saturation,
            load,
            ..
        } = assessed;
        let config = saturation.config;
        let first_event = events.len();
        for ((((va, state), mut target), seen), plan) in variants
            .iter()
            .zip(states)
            .zip(targets)
            .zip(observed)
            // No plans in CAPACITY-ONLY mode.
            .zip(plans.into_iter().chain(std::iter::repeat_with(|| None)))
        {
            let (desired, basis) = if seen.data == DataState::Missing {
                // Never below the replica the model is guaranteed, even
                // when a previous 0 was decided while it had none.
                let previous = self.previous.get(&seen.key).copied();
                let value = state.held(previous);
                self.safety_net
                    .hold(&seen.key, value, previous, seen.counts)
            } else {
                self.safety_net.release(&seen.key);
                self.stabilize(inputs.now, &config, &seen, &mut target);
                zero.desired(&seen.key, &target, seen.counts)
            };
            let limit = seen
                .limit
                .or(target.at_max.then_some(LimitReason::AtMaxReplicas));
            let outcome = Outcome {
                desired,
                basis,
                limit,
                state,
                saturation: &saturation,
                plan,
            };
            decisions.push(self.record(inputs, va, seen, outcome, events));
        }
        let stepped = |reason: Reason| {
            events[first_event..]
                .iter()
                .any(|e| e.reason == reason.as_str())
        };
        let clock = (inputs.now, config.scale_down_window());
        if stepped(Reason::ScaleUpSaturation) || stepped(Reason::ScaleDownWithdrawn) {
            self.flaps.stepped(model, clock, true, load);
        } else if stepped(Reason::ScaleDownSpare) {
            self.flaps.stepped(model, clock, false, load);
        }
    }

    /// Holds a scale-down the model's window does not allow yet.
    fn stabilize(
        &mut self,
        now: Instant,
        config: &SaturationConfig,
        seen: &Observed,
        target: &mut VariantTarget,
    ) {
        let current = seen.counts.current;
        let window = config.scale_down_window();
        // A variant first seen (or seen again after a restart) keeps its
        // replicas for one window.
        let published = self
            .windows
            .entry_ref(&seen.key)
            .or_insert_with(|| Window::holding(now, current))
            .stabilize(now, window, target.target_replicas, current);
        if published != target.target_replicas {
            target.target_replicas = published;
            target.reason = Reason::Stabilizing;
        }
    }

    /// One variant's input to its model's analysis.
    fn variant_state(
        &mut self,
        inputs: &Inputs<'_>,
        model_id: &str,
        (va, key): (&Variant, VariantKey),
        pods: &[&PodView<'_>],
        counts: ReplicaCounts,
        zero: &Zero,
    ) -> (VariantState, Observed) {
        let (loads, oldest) = fresh_loads(pods, model_id, inputs.now, &mut self.rates);
        // Without replica counts, replicas are the pods that report; when a
        // source fails, or every pod goes silent at once, they are lost, not
        // idle, and the safety net holds the variant.
        let lost = inputs.replicas.is_none() && self.reported.contains(&key);
        let failed = inputs.failures.contains_key(&key);
        let data = match (counts.ready, loads.len()) {
            (_, 0) if failed || lost => DataState::Missing,
            (0, _) => DataState::Idle,
            (_, 0) => DataState::Missing,
            (ready, n) if (n as u32) < ready => DataState::Partial,
            _ => DataState::Fresh,
        };
        // Only an idle model goes to zero; until then its cheapest variant
        // keeps one replica.
        if let Some(busy) = busy_capacity(loads.iter()) {
            self.request_capacity.entry_ref(&key).insert(busy);
        }
        let min_replicas = u32::from(zero.keeps_a_replica(&key)).max(counts.floor);
        let mut state = VariantState {
            name: va.name.clone(),
            cost: va.cost,
            current_replicas: counts.current,
            ready_replicas: counts.ready,
            previous_desired: self.convergence.step(&key),
            min_replicas,
            // A ceiling below the floor is no ceiling the scaler can keep.
            max_replicas: counts.ceiling.map(|c| c.max(counts.floor)),
            blocked: false,
            request_capacity: self.request_capacity.get(&key).copied(),
            loads,
        };
        let limit = self
            .convergence
            .observe(&key, &state, inputs.now, inputs.convergence_timeout);
        // A blocked step is abandoned.
        state.previous_desired = self.convergence.step(&key);
        state.blocked = limit.is_some();
        if !state.loads.is_empty() {
            self.reported.get_or_insert_with(&key, VariantKey::clone);
        } else if data == DataState::Idle {
            self.reported.remove(&key);
        }
        let age = oldest.map(|t| inputs.now.saturating_duration_since(t));
        (
            state,
            Observed {
                key,
                counts,
                data,
                age,
                limit,
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
            limit: _,
        } = seen;
        let Outcome {
            desired,
            basis,
            limit,
            state,
            saturation,
            plan,
        } = outcome;
        if self.remember(&key, counts, (desired, basis), events) {
            self.convergence
                .published(&key, desired, counts.current, inputs.now);
        }
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
            limit,
            data,
            data_age: age,
            inputs: state.loads,
            saturation: saturation.clone(),
            model_based: plan,
            workload: None,
            decided_at: inputs.wall,
        }
    }

    /// Remembers a variant's desired value; when it changed, records the
    /// event and why, and returns true.
    fn remember(
        &mut self,
        key: &VariantKey,
        counts: ReplicaCounts,
        (desired, basis): (u32, Basis),
        events: &mut Vec<ScalingEvent>,
    ) -> bool {
        let from = self.previous.get(key).copied().unwrap_or(counts.current);
        self.previous.entry_ref(key).insert(desired);
        if desired == from {
            return false;
        }
        events.push(ScalingEvent {
            variant: key.clone(),
            from,
            to: desired,
            reason: basis.as_str(),
        });
        self.change_reasons.insert(key.clone(), basis.as_str());
        true
    }
}

/// What the analysis decided for one variant.
struct Outcome<'a> {
    desired: u32,
    basis: Basis,
    limit: Option<LimitReason>,
    state: VariantState,
    saturation: &'a Saturation,
    plan: Option<ModelBased>,
}
