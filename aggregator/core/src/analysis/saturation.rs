//! WVA's CAPACITY-ONLY saturation analysis (V1), per model across its variants.
//!
//! [`analyze`] pools the reporting replicas of every variant of one model and
//! decides whether the model needs one more replica or can safely lose one;
//! [`targets`] turns that verdict into at most one ±1 step on one variant,
//! chosen by cost. The rules, with a worked example, are in `docs/saturation.md`.

use crate::config::saturation::SaturationConfig;

/// Load of one reporting replica (pod) of a variant.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLoad {
    pub pod: String,
    /// KV-cache usage, fraction 0..1.
    pub kv_cache_usage: f64,
    /// Requests waiting in the pod's queue.
    pub requests_waiting: f64,
}

/// Everything the analysis knows about one variant of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantState {
    pub name: String,
    /// Cost per replica (`variantCost`).
    pub cost: f64,
    /// Replicas the target has now (spec).
    pub current_replicas: u32,
    /// Replicas that are ready; `current - ready` are pending.
    pub ready_replicas: u32,
    /// The last desired value published for this variant, if any.
    pub previous_desired: Option<u32>,
    /// Lowest replica count a scale-down may leave (1 for the cheapest
    /// variant when scale to zero is off, else 0).
    pub min_replicas: u32,
    /// Fresh signals of the pods that report for this variant.
    pub loads: Vec<ReplicaLoad>,
}

/// Saturation verdict over all replicas of one model.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelAnalysis {
    pub total_replicas: usize,
    pub saturated_replicas: usize,
    pub non_saturated_replicas: usize,
    /// Average spare KV (threshold − usage) over non-saturated replicas; 0 when there are none.
    pub avg_spare_kv: f64,
    /// Average spare queue (threshold − length) over non-saturated replicas; 0 when there are none.
    pub avg_spare_queue: f64,
    pub should_scale_up: bool,
    pub scale_down_safe: bool,
}

/// Why a variant's target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Spare capacity below a trigger (or every replica saturated): this variant is the cheapest eligible.
    ScaleUpSaturation,
    /// Removing one replica keeps both spares above their triggers: this variant is the most expensive eligible.
    ScaleDownSpare,
    /// No change needed.
    Steady,
    /// Another step of this model is still converging (desired ≠ current, pods pending or not yet reporting).
    Converging,
    /// A scale-down not yet carried out, called off because the model saturated meanwhile.
    ScaleDownWithdrawn,
    /// The model had no request for its scale-to-zero retention period.
    ScaleToZero,
    /// Requests wait in an endpoint picker's queue while the model has no replica.
    ScaleFromZero,
}

impl Reason {
    /// Stable label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUpSaturation => "saturation",
            Reason::ScaleDownSpare => "spare_capacity",
            Reason::Steady => "steady",
            Reason::Converging => "converging",
            Reason::ScaleDownWithdrawn => "scale_down_withdrawn",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::ScaleFromZero => "scale_from_zero",
        }
    }
}

/// The target the analysis proposes for one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantTarget {
    pub name: String,
    pub target_replicas: u32,
    pub reason: Reason,
}

impl VariantState {
    /// Whether this variant is still moving toward an earlier step: a published
    /// desired value it has not reached, ready replicas that differ from its
    /// replicas (pods starting, or surplus pods of a rollout), or ready pods that
    /// have not reported yet. While any variant of a model converges, the model
    /// takes no new step, so one step is judged on the load it produced.
    pub fn is_converging(&self) -> bool {
        self.previous_desired
            .is_some_and(|desired| desired != self.current_replicas)
            || self.ready_replicas != self.current_replicas
            || self.loads.len() < self.ready_replicas as usize
    }

    /// The target re-published while the model converges, and the safety net's
    /// value: the previous desired value (so the HPA keeps moving toward it),
    /// or the current replicas when there is none, but never a scale-down below
    /// `min_replicas` (the minimum can rise after the desired value was set, for
    /// example when a cheaper variant is removed).
    pub fn held_target(&self) -> u32 {
        let held = self.previous_desired.unwrap_or(self.current_replicas);
        if held < self.current_replicas {
            held.max(self.min_replicas.min(self.current_replicas))
        } else {
            held
        }
    }
}

/// A reading counts as healthy only when both numbers are finite and
/// non-negative and below their thresholds. Anything else (NaN, infinities,
/// negative values) is treated as saturated, so a broken reading can ask for
/// capacity but never make a replica look idle.
pub fn is_saturated(load: &ReplicaLoad, config: &SaturationConfig) -> bool {
    let plausible = |v: f64| v.is_finite() && v >= 0.0;
    !(plausible(load.kv_cache_usage) && plausible(load.requests_waiting))
        || load.kv_cache_usage >= config.kv_cache_threshold
        || load.requests_waiting >= config.queue_length_threshold
}

/// Classifies every replica and computes spare capacity and the two verdicts.
///
/// With no reporting replica at all the model is at zero: no scale-up here
/// (scaling from zero is decided elsewhere) and nothing to scale down.
pub fn analyze(variants: &[VariantState], config: &SaturationConfig) -> ModelAnalysis {
    let mut total_replicas = 0;
    let mut healthy = 0;
    let (mut kv_sum, mut queue_sum) = (0.0, 0.0);
    for load in variants.iter().flat_map(|v| &v.loads) {
        total_replicas += 1;
        if !is_saturated(load, config) {
            healthy += 1;
            kv_sum += load.kv_cache_usage;
            queue_sum += load.requests_waiting;
        }
    }
    // Average spare capacity when the healthy replicas' load is spread over `n`
    // replicas (threshold − average usage = average of threshold − usage).
    let spare_over = |n: usize| {
        (
            config.kv_cache_threshold - kv_sum / n as f64,
            config.queue_length_threshold - queue_sum / n as f64,
        )
    };
    let below_trigger = |(kv, queue): (f64, f64)| {
        kv < config.kv_spare_trigger || queue < config.queue_spare_trigger
    };
    let (avg_spare_kv, avg_spare_queue) = if healthy == 0 {
        (0.0, 0.0)
    } else {
        spare_over(healthy)
    };
    ModelAnalysis {
        total_replicas,
        saturated_replicas: total_replicas - healthy,
        non_saturated_replicas: healthy,
        avg_spare_kv,
        avg_spare_queue,
        should_scale_up: total_replicas > 0
            && (healthy == 0 || below_trigger((avg_spare_kv, avg_spare_queue))),
        scale_down_safe: healthy >= 2 && !below_trigger(spare_over(healthy - 1)),
    }
}

/// Turns the model-wide verdict into one target per variant (same order as `variants`).
///
/// - While any variant converges ([`VariantState::is_converging`]), every
///   variant keeps its previous desired value (or its current replicas) with
///   [`Reason::Converging`]. One exception: when the model needs capacity, a
///   scale-down that has not happened yet (an HPA's stabilization window may
///   hold it for minutes) is called off, back to the current replicas, with
///   [`Reason::ScaleDownWithdrawn`]. That is not a new step, so it does not
///   stack on the one in flight; it only stops removing capacity under load.
/// - Otherwise variants are ordered by `(cost, name)`. A scale-up adds one
///   replica to the first (the cheapest; among equal costs the first name); a
///   scale-down removes one from the last variant above its `min_replicas`
///   (the most expensive; among equal costs the last name). Scale-up wins if
///   both verdicts are set. Every other variant stays at its current replicas.
pub fn targets(variants: &[VariantState], analysis: &ModelAnalysis) -> Vec<VariantTarget> {
    let target = |v: &VariantState, target_replicas, reason| VariantTarget {
        name: v.name.clone(),
        target_replicas,
        reason,
    };
    if variants.iter().any(VariantState::is_converging) {
        return variants
            .iter()
            .map(|v| match v.held_target() {
                held if analysis.should_scale_up && held < v.current_replicas => {
                    target(v, v.current_replicas, Reason::ScaleDownWithdrawn)
                }
                held => target(v, held, Reason::Converging),
            })
            .collect();
    }

    let order = cost_order(variants);
    let step = if analysis.should_scale_up {
        order.first().and_then(|&i| {
            let up = variants[i].current_replicas.checked_add(1)?;
            Some((i, up, Reason::ScaleUpSaturation))
        })
    } else if analysis.scale_down_safe {
        order
            .iter()
            .rev()
            .find(|&&i| variants[i].current_replicas > variants[i].min_replicas)
            .map(|&i| (i, variants[i].current_replicas - 1, Reason::ScaleDownSpare))
    } else {
        None
    };
    variants
        .iter()
        .enumerate()
        .map(|(i, v)| match step {
            Some((chosen, replicas, reason)) if chosen == i => target(v, replicas, reason),
            _ => target(v, v.current_replicas, Reason::Steady),
        })
        .collect()
}

/// Indices of `variants`, cheapest first; equal costs by name.
fn cost_order(variants: &[VariantState]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..variants.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&variants[a], &variants[b]);
        a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Thresholds whose differences are exact in binary, so boundaries are exact.
    const CONFIG: SaturationConfig = SaturationConfig {
        kv_cache_threshold: 0.75,
        queue_length_threshold: 8.0,
        kv_spare_trigger: 0.25,
        queue_spare_trigger: 2.0,
    };

    fn load(kv: f64, queue: f64) -> ReplicaLoad {
        ReplicaLoad {
            pod: String::new(),
            kv_cache_usage: kv,
            requests_waiting: queue,
        }
    }

    /// A settled variant: every replica ready and reporting an idle load.
    fn variant(name: &str, cost: f64, replicas: u32) -> VariantState {
        VariantState {
            name: name.to_string(),
            cost,
            current_replicas: replicas,
            ready_replicas: replicas,
            previous_desired: None,
            min_replicas: 0,
            loads: (0..replicas).map(|_| load(0.0, 0.0)).collect(),
        }
    }

    fn with_loads(name: &str, loads: &[(f64, f64)]) -> VariantState {
        let mut v = variant(name, 10.0, loads.len() as u32);
        v.loads = loads.iter().map(|&(kv, q)| load(kv, q)).collect();
        v
    }

    fn verdict(should_scale_up: bool, scale_down_safe: bool) -> ModelAnalysis {
        ModelAnalysis {
            total_replicas: 0,
            saturated_replicas: 0,
            non_saturated_replicas: 0,
            avg_spare_kv: 0.0,
            avg_spare_queue: 0.0,
            should_scale_up,
            scale_down_safe,
        }
    }

    /// `(name, target, reason)` per variant, for compact assertions.
    type Summary<'a> = Vec<(&'a str, u32, Reason)>;

    fn summary(targets: &[VariantTarget]) -> Summary<'_> {
        targets
            .iter()
            .map(|t| (t.name.as_str(), t.target_replicas, t.reason))
            .collect()
    }

    const UP: (bool, bool) = (true, false);
    const DOWN: (bool, bool) = (false, true);
    const HOLD: (bool, bool) = (false, false);

    #[test]
    fn analyze_classifies_and_decides() {
        // (case, loads as (kv, queue), saturated, (avg spare kv, avg spare queue), (up, down))
        type Case = (
            &'static str,
            &'static [(f64, f64)],
            usize,
            (f64, f64),
            (bool, bool),
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("no replicas (model at zero)", &[], 0, (0.0, 0.0), HOLD),
            ("one idle replica: no scale-down", &[(0.0, 0.0)], 0, (0.75, 8.0), HOLD),
            ("one replica, kv at threshold", &[(0.75, 0.0)], 1, (0.0, 0.0), UP),
            ("one replica, queue at threshold", &[(0.0, 8.0)], 1, (0.0, 0.0), UP),
            ("all saturated", &[(0.9, 0.0), (0.1, 9.0), (1.0, 20.0)], 3, (0.0, 0.0), UP),
            ("kv spare at trigger", &[(0.5, 0.0)], 0, (0.25, 8.0), HOLD),
            ("kv spare below trigger", &[(0.5078125, 0.0)], 0, (0.2421875, 8.0), UP),
            ("queue spare at trigger", &[(0.0, 6.0)], 0, (0.75, 2.0), HOLD),
            ("queue spare below trigger", &[(0.0, 6.5)], 0, (0.75, 1.5), UP),
            ("spare over healthy only", &[(0.875, 0.0), (0.25, 1.0), (0.5, 3.0)], 1, (0.375, 6.0), HOLD),
            ("light load", &[(0.125, 1.0), (0.125, 1.0), (0.125, 1.0)], 0, (0.625, 7.0), DOWN),
            ("kv spare after removal at trigger", &[(0.25, 0.0), (0.25, 0.0)], 0, (0.5, 8.0), DOWN),
            ("kv spare after removal below", &[(0.2578125, 0.0); 2], 0, (0.4921875, 8.0), HOLD),
            ("queue spare after removal at trigger", &[(0.0, 3.0), (0.0, 3.0)], 0, (0.75, 5.0), DOWN),
            ("queue spare after removal below", &[(0.0, 3.5), (0.0, 3.0)], 0, (0.75, 4.75), HOLD),
            ("scale-down over healthy only", &[(0.9, 0.0), (0.125, 0.0), (0.125, 0.0)], 1, (0.625, 8.0), DOWN),
            ("NaN kv is saturated, not idle", &[(f64::NAN, 0.0)], 1, (0.0, 0.0), UP),
            ("NaN queue is saturated, not idle", &[(0.0, f64::NAN)], 1, (0.0, 0.0), UP),
            ("infinite and negative readings are saturated",
             &[(f64::NEG_INFINITY, 0.0), (0.0, f64::INFINITY), (-0.5, 0.0), (0.0, -1.0)], 4, (0.0, 0.0), UP),
            ("NaN cannot make scale-down safe", &[(f64::NAN, f64::NAN), (0.125, 0.0)], 1, (0.625, 8.0), HOLD),
        ];
        for &(case, loads, saturated, (spare_kv, spare_queue), (up, down)) in cases {
            // Spread the loads over two variants: the analysis pools them.
            let (a, b) = loads.split_at(loads.len() / 2);
            let got = analyze(&[with_loads("a", a), with_loads("b", b)], &CONFIG);
            let want = ModelAnalysis {
                total_replicas: loads.len(),
                saturated_replicas: saturated,
                non_saturated_replicas: loads.len() - saturated,
                avg_spare_kv: spare_kv,
                avg_spare_queue: spare_queue,
                should_scale_up: up,
                scale_down_safe: down,
            };
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn targets_steady_without_a_verdict() {
        let variants = [variant("a", 10.0, 2), variant("b", 30.0, 1)];
        assert_eq!(
            summary(&targets(&variants, &verdict(false, false))),
            [("a", 2, Reason::Steady), ("b", 1, Reason::Steady)]
        );
    }

    #[test]
    fn targets_choose_the_variant_by_cost_then_name() {
        let up = verdict(true, false);
        let down = verdict(false, true);
        let cases: &[(&str, Vec<VariantState>, &ModelAnalysis, Summary)] = &[
            (
                "scale-up goes to the cheapest",
                vec![variant("h100", 30.0, 1), variant("l4", 10.0, 1)],
                &up,
                vec![
                    ("h100", 1, Reason::Steady),
                    ("l4", 2, Reason::ScaleUpSaturation),
                ],
            ),
            (
                "scale-up tie goes to the first name",
                vec![
                    variant("b", 10.0, 1),
                    variant("a", 10.0, 3),
                    variant("c", 20.0, 1),
                ],
                &up,
                vec![
                    ("b", 1, Reason::Steady),
                    ("a", 4, Reason::ScaleUpSaturation),
                    ("c", 1, Reason::Steady),
                ],
            ),
            (
                "scale-down comes from the most expensive",
                vec![variant("l4", 10.0, 2), variant("h100", 30.0, 2)],
                &down,
                vec![
                    ("l4", 2, Reason::Steady),
                    ("h100", 1, Reason::ScaleDownSpare),
                ],
            ),
            (
                "scale-down tie comes from the last name",
                vec![
                    variant("b", 10.0, 2),
                    variant("a", 10.0, 2),
                    variant("c", 5.0, 2),
                ],
                &down,
                vec![
                    ("b", 1, Reason::ScaleDownSpare),
                    ("a", 2, Reason::Steady),
                    ("c", 2, Reason::Steady),
                ],
            ),
            (
                "a zero-replica cheapest variant is scaled up from zero",
                vec![variant("h100", 30.0, 2), variant("l4", 10.0, 0)],
                &up,
                vec![
                    ("h100", 2, Reason::Steady),
                    ("l4", 1, Reason::ScaleUpSaturation),
                ],
            ),
            (
                "a zero-replica expensive variant is skipped by scale-down",
                vec![variant("h100", 30.0, 0), variant("l4", 10.0, 2)],
                &down,
                vec![
                    ("h100", 0, Reason::Steady),
                    ("l4", 1, Reason::ScaleDownSpare),
                ],
            ),
            (
                "scale-up wins when both verdicts are set",
                vec![variant("a", 10.0, 2), variant("b", 20.0, 2)],
                &verdict(true, true),
                vec![
                    ("a", 3, Reason::ScaleUpSaturation),
                    ("b", 2, Reason::Steady),
                ],
            ),
        ];
        for (name, variants, analysis, want) in cases {
            assert_eq!(&summary(&targets(variants, analysis)), want, "{name}");
        }
    }

    #[test]
    fn scale_down_respects_min_replicas() {
        let down = verdict(false, true);
        let mut cheap = variant("l4", 10.0, 2);
        cheap.min_replicas = 1;
        let mut pricey = variant("h100", 30.0, 1);
        pricey.min_replicas = 1;
        // The most expensive is at its minimum: the next one gives a replica.
        assert_eq!(
            summary(&targets(&[cheap.clone(), pricey.clone()], &down)),
            [
                ("l4", 1, Reason::ScaleDownSpare),
                ("h100", 1, Reason::Steady)
            ]
        );
        // Everything at its minimum: nothing moves.
        cheap.current_replicas = 1;
        cheap.ready_replicas = 1;
        cheap.loads.truncate(1);
        assert_eq!(
            summary(&targets(&[cheap.clone(), pricey], &down)),
            [("l4", 1, Reason::Steady), ("h100", 1, Reason::Steady)]
        );
        // A single variant with a single replica and min 1 stays.
        assert_eq!(
            summary(&targets(&[cheap], &down)),
            [("l4", 1, Reason::Steady)]
        );
    }

    #[test]
    fn converging_variants_block_every_step_of_the_model() {
        let up = verdict(true, false);
        let mut moving = variant("h100", 30.0, 2);
        moving.previous_desired = Some(3);
        let cheap = variant("l4", 10.0, 1);
        // The previous desired keeps being published; the cheap one is not scaled.
        assert_eq!(
            summary(&targets(&[cheap.clone(), moving.clone()], &up)),
            [
                ("l4", 1, Reason::Converging),
                ("h100", 3, Reason::Converging)
            ]
        );
        // A previous desired equal to current is settled.
        moving.previous_desired = Some(2);
        assert_eq!(
            summary(&targets(&[cheap, moving], &up)),
            [
                ("l4", 2, Reason::ScaleUpSaturation),
                ("h100", 2, Reason::Steady)
            ]
        );
    }

    #[test]
    fn saturation_withdraws_a_pending_scale_down_without_a_new_step() {
        // h100 was told to go 3 → 2, but still runs 3 (a stabilization window holds it).
        let mut pending = variant("h100", 30.0, 3);
        pending.previous_desired = Some(2);
        let cheap = variant("l4", 10.0, 1);
        let both = [cheap, pending];
        assert_eq!(
            summary(&targets(&both, &verdict(true, false))),
            [
                ("l4", 1, Reason::Converging),
                ("h100", 3, Reason::ScaleDownWithdrawn)
            ],
            "the scale-down is called off; l4 takes no step yet"
        );
        assert_eq!(
            summary(&targets(&both, &verdict(false, false))),
            [
                ("l4", 1, Reason::Converging),
                ("h100", 2, Reason::Converging)
            ],
            "without saturation the pending scale-down stands"
        );
        // A pending scale-up is never touched.
        let mut rising = variant("l4", 10.0, 1);
        rising.previous_desired = Some(2);
        assert_eq!(
            summary(&targets(&[rising], &verdict(true, false))),
            [("l4", 2, Reason::Converging)]
        );
    }

    #[test]
    fn pending_replicas_are_not_scaled_again() {
        // The cheapest variant was just scaled (3 replicas, 2 ready): it must
        // not get another one, and no other variant steps in for it.
        let mut pending = variant("l4", 10.0, 3);
        pending.ready_replicas = 2;
        pending.loads.truncate(2);
        pending.previous_desired = Some(3);
        let other = variant("h100", 30.0, 1);
        assert_eq!(
            summary(&targets(
                &[pending.clone(), other.clone()],
                &verdict(true, false)
            )),
            [
                ("l4", 3, Reason::Converging),
                ("h100", 1, Reason::Converging)
            ]
        );
        // Pending pods block even without a previous desired value (a restart).
        pending.previous_desired = None;
        assert!(pending.is_converging());
        assert_eq!(
            summary(&targets(&[pending, other], &verdict(false, true))),
            [
                ("l4", 3, Reason::Converging),
                ("h100", 1, Reason::Converging)
            ]
        );
    }

    #[test]
    fn surplus_ready_replicas_block_steps() {
        let mut rolling = variant("a", 10.0, 2);
        rolling.ready_replicas = 3;
        rolling.loads.push(load(0.0, 0.0));
        assert_eq!(
            summary(&targets(&[rolling], &verdict(false, true))),
            [("a", 2, Reason::Converging)]
        );
    }

    #[test]
    fn unreported_ready_pods_block_steps() {
        let mut quiet = variant("a", 10.0, 2);
        quiet.loads.truncate(1);
        assert!(quiet.is_converging());
        assert_eq!(
            summary(&targets(
                &[quiet, variant("b", 20.0, 2)],
                &verdict(false, true)
            )),
            [("a", 2, Reason::Converging), ("b", 2, Reason::Converging)]
        );
    }

    #[test]
    fn held_scale_down_never_goes_below_min_replicas() {
        let mut v = variant("a", 10.0, 2);
        v.previous_desired = Some(0);
        v.min_replicas = 1;
        assert_eq!(
            summary(&targets(&[v.clone()], &verdict(false, false))),
            [("a", 1, Reason::Converging)]
        );
        // A held scale-up is kept as is, even from below the minimum.
        v.current_replicas = 0;
        v.ready_replicas = 0;
        v.loads.clear();
        v.previous_desired = Some(2);
        assert_eq!(
            summary(&targets(&[v], &verdict(false, false))),
            [("a", 2, Reason::Converging)]
        );
    }

    #[test]
    fn no_variants_no_targets() {
        assert!(targets(&[], &verdict(true, false)).is_empty());
        assert_eq!(
            analyze(&[], &CONFIG),
            analyze(&[variant("a", 10.0, 0)], &CONFIG)
        );
    }

    /// The worked example of docs/saturation.md, with WVA's default thresholds.
    #[test]
    fn documented_worked_example() {
        let config = SaturationConfig::default();
        let mut l4 = with_loads("llama-8b-l4", &[(0.72, 2.0), (0.85, 1.0)]);
        l4.cost = 10.0;
        l4.min_replicas = 1;
        let mut h100 = with_loads("llama-8b-h100", &[(0.70, 4.0)]);
        h100.cost = 30.0;
        let variants = [l4, h100];

        let analysis = analyze(&variants, &config);
        assert_eq!(
            (analysis.saturated_replicas, analysis.non_saturated_replicas),
            (1, 2)
        );
        assert!((analysis.avg_spare_kv - 0.09).abs() < 1e-9, "{analysis:?}");
        assert_eq!(analysis.avg_spare_queue, 2.0);
        assert!(analysis.should_scale_up && !analysis.scale_down_safe);
        assert_eq!(
            summary(&targets(&variants, &analysis)),
            [
                ("llama-8b-l4", 3, Reason::ScaleUpSaturation),
                ("llama-8b-h100", 1, Reason::Steady)
            ]
        );

        // Later the load has dropped on all four replicas.
        let mut quiet: Vec<VariantState> = variants.to_vec();
        quiet[0] = VariantState {
            loads: vec![load(0.2, 0.0), load(0.1, 0.0), load(0.3, 1.0)],
            current_replicas: 3,
            ready_replicas: 3,
            ..quiet[0].clone()
        };
        quiet[1].loads = vec![load(0.2, 0.0)];
        let analysis = analyze(&quiet, &config);
        assert!(
            analysis.scale_down_safe && !analysis.should_scale_up,
            "{analysis:?}"
        );
        assert_eq!(
            summary(&targets(&quiet, &analysis)),
            [
                ("llama-8b-l4", 3, Reason::Steady),
                ("llama-8b-h100", 0, Reason::ScaleDownSpare)
            ]
        );
    }

    fn arb_reading() -> impl Strategy<Value = f64> {
        prop_oneof![
            6 => 0.0..1.2f64,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => -1.0..0.0f64,
        ]
    }

    fn arb_queue() -> impl Strategy<Value = f64> {
        prop_oneof![6 => 0.0..12.0f64, 1 => Just(f64::NAN), 1 => Just(-2.0)]
    }

    fn arb_variant(index: usize) -> impl Strategy<Value = VariantState> {
        (
            prop::sample::select(vec![10.0, 20.0, 30.0]),
            0u32..5,
            0u32..6,
            prop::option::of(0u32..6),
            0u32..3,
            prop::collection::vec((arb_reading(), arb_queue()), 0..6),
            any::<bool>(),
        )
            .prop_map(
                move |(cost, current, ready, previous, min, readings, settled)| {
                    // Half the variants are settled, so steps are exercised often.
                    let ready = if settled { current } else { ready };
                    let mut readings = readings;
                    if settled {
                        readings.resize(current as usize, (0.5, 1.0));
                    }
                    VariantState {
                        name: format!("v{index}"),
                        cost,
                        current_replicas: current,
                        ready_replicas: ready,
                        previous_desired: if settled { None } else { previous },
                        min_replicas: min,
                        loads: readings.into_iter().map(|(kv, q)| load(kv, q)).collect(),
                    }
                },
            )
    }

    fn arb_model() -> impl Strategy<Value = Vec<VariantState>> {
        (0usize..5).prop_flat_map(|n| (0..n).map(arb_variant).collect::<Vec<_>>())
    }

    proptest! {
        #[test]
        fn analysis_counts_add_up(variants in arb_model()) {
            let a = analyze(&variants, &SaturationConfig::default());
            let total: usize = variants.iter().map(|v| v.loads.len()).sum();
            prop_assert_eq!(a.total_replicas, total);
            prop_assert_eq!(a.saturated_replicas + a.non_saturated_replicas, total);
            prop_assert!(!(a.should_scale_up && a.scale_down_safe));
            prop_assert!(a.avg_spare_kv.is_finite() && a.avg_spare_queue.is_finite());
            if total == 0 {
                prop_assert!(!a.should_scale_up);
            }
        }

        #[test]
        fn targets_take_at_most_one_unit_step(variants in arb_model()) {
            let out = targets(&variants, &analyze(&variants, &SaturationConfig::default()));
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            let out_names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
            prop_assert_eq!(names, out_names);

            let converging = variants.iter().any(VariantState::is_converging);
            let mut changed = 0;
            for (v, t) in variants.iter().zip(&out) {
                if t.target_replicas < v.current_replicas {
                    prop_assert!(t.target_replicas >= v.min_replicas, "{:?} -> {:?}", v, t);
                }
                if converging {
                    if t.reason == Reason::ScaleDownWithdrawn {
                        prop_assert_eq!(t.target_replicas, v.current_replicas);
                    } else {
                        prop_assert_eq!(t.reason, Reason::Converging);
                    }
                    if t.target_replicas != v.current_replicas {
                        prop_assert!(v.previous_desired.is_some());
                    }
                    continue;
                }
                match t.target_replicas as i64 - v.current_replicas as i64 {
                    0 => prop_assert_eq!(t.reason, Reason::Steady),
                    1 => prop_assert_eq!(t.reason, Reason::ScaleUpSaturation),
                    -1 => prop_assert_eq!(t.reason, Reason::ScaleDownSpare),
                    other => prop_assert!(false, "step of {} on {:?}", other, v),
                }
                changed += usize::from(t.target_replicas != v.current_replicas);
            }
            prop_assert!(changed <= 1);
        }

        #[test]
        fn scale_up_goes_to_a_cheapest_variant(variants in arb_model()) {
            let out = targets(&variants, &verdict(true, false));
            if let Some(i) = out.iter().position(|t| t.reason == Reason::ScaleUpSaturation) {
                let cheapest = variants.iter().map(|v| v.cost).fold(f64::INFINITY, f64::min);
                prop_assert_eq!(variants[i].cost, cheapest);
            }
        }
    }
}
