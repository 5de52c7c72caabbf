//! Turns a model's sized step into one target per variant: scale-ups go to
//! the cheapest variants that can grow, scale-downs come from the most
//! expensive ones that can shrink, and nothing moves while an earlier step
//! still converges.

use super::model::{Need, Reason, VariantState, VariantTarget};

/// What a model needs in each dimension of capacity its analysis measures,
/// and what one replica of each variant brings in each (same order as the
/// variants). V1 counts replicas, so its one dimension is 1 per replica; V2
/// measures KV-cache tokens and request rates, which differ by accelerator.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacities {
    pub need: Demand,
    pub per_replica: Vec<Vec<f64>>,
    /// The need was sized from what the load asks of the model (request
    /// rates, tokens), not from readings that starting replicas will relieve,
    /// so a scale-up may add to a step that still converges, counting the
    /// step and the starting replicas as coming capacity.
    pub counts_coming: bool,
}

/// What a model needs, per dimension.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// At least this much.
    Up(Vec<f64>),
    /// No less than this much may remain.
    Down(Vec<f64>),
    Hold,
}

impl Capacities {
    /// A need counted in replicas of equal capacity (V1).
    pub fn replicas(need: Need, variants: usize) -> Self {
        Capacities {
            need: match need {
                Need::Up(n) => Demand::Up(vec![n]),
                Need::Down(n) => Demand::Down(vec![n]),
                Need::Hold => Demand::Hold,
            },
            per_replica: vec![vec![1.0]; variants],
            counts_coming: false,
        }
    }
}

/// One target per variant for a need counted in replicas (V1); see [`allocate`].
pub fn targets(variants: &[VariantState], need: Need, max_up: u32) -> Vec<VariantTarget> {
    allocate(
        variants,
        &Capacities::replicas(need, variants.len()),
        max_up,
    )
}

/// One target per variant (same order as `variants`).
///
/// - While any variant converges ([`VariantState::is_converging`]), every
///   variant keeps its held value ([`VariantState::held_target`]) with
///   [`Reason::Converging`]. One exception: when the model needs capacity, a
///   scale-down not carried out yet is called off, back to the current
///   replicas, with [`Reason::ScaleDownWithdrawn`]; that is not a new step.
/// - Variants are taken by cost per replica's capacity (in the first
///   dimension; for V1, by cost), then name.
/// - A scale-up adds replicas (at least one, at most `max_up`) to the
///   variants in that order, each up to its ceiling
///   ([`VariantState::ceiling`]), until the anticipated capacity
///   ([`VariantState::anticipated_replicas`]) meets the need in every
///   dimension.
/// - A scale-down removes replicas from the variants in the reverse order,
///   each down to its `min_replicas`, while what remains still meets the
///   need in every dimension.
pub fn allocate(
    variants: &[VariantState],
    capacities: &Capacities,
    max_up: u32,
) -> Vec<VariantTarget> {
    let mut out: Vec<VariantTarget> = variants
        .iter()
        .map(|v| VariantTarget {
            name: v.name.clone(),
            target_replicas: v.current_replicas,
            reason: Reason::Steady,
            at_max: false,
        })
        .collect();
    let units = &capacities.per_replica;
    let up = matches!(capacities.need, Demand::Up(_));
    let converging = variants.iter().any(VariantState::is_converging);
    if converging {
        for (v, t) in variants.iter().zip(&mut out) {
            let held = v.held_target();
            (t.target_replicas, t.reason) = if up && held < v.current_replicas {
                (v.current_replicas, Reason::ScaleDownWithdrawn)
            } else {
                (held, Reason::Converging)
            };
        }
        if !(up && capacities.counts_coming) {
            return out;
        }
    }
    // What each variant has or has coming: its held value while the model
    // converges, else its replicas; only reporting ones when it is blocked.
    let base: Vec<u32> = out.iter().map(|t| t.target_replicas).collect();
    let have = |d: usize| -> f64 {
        variants
            .iter()
            .zip(units)
            .zip(&base)
            .map(|((v, u), &b)| {
                let coming = if v.blocked {
                    v.anticipated_replicas()
                } else {
                    b
                };
                f64::from(coming) * u[d]
            })
            .sum()
    };
    let order = efficiency_order(variants, units);
    match &capacities.need {
        Demand::Up(wanted) => {
            let mut missing: Vec<f64> = (0..wanted.len()).map(|d| wanted[d] - have(d)).collect();
            let mut budget = max_up;
            for &i in &order {
                let v = &variants[i];
                // The verdict asked for capacity: at least one replica, unless
                // a step in flight may already bring it.
                let first = budget == max_up && !converging;
                let wanted = replicas_for(&missing, &units[i]).max(u32::from(first));
                let wanted = wanted.min(budget);
                let add = v.ceiling().saturating_sub(base[i]).min(wanted);
                if add < wanted && !v.blocked && v.max_replicas.is_some() {
                    out[i].at_max = true;
                }
                if add > 0 {
                    out[i].target_replicas = base[i] + add;
                    out[i].reason = Reason::ScaleUpSaturation;
                    budget -= add;
                    for (m, u) in missing.iter_mut().zip(&units[i]) {
                        *m -= f64::from(add) * u;
                    }
                }
            }
        }
        Demand::Down(kept) => {
            let mut spare: Vec<f64> = (0..kept.len()).map(|d| have(d) - kept[d]).collect();
            for &i in order.iter().rev() {
                let v = &variants[i];
                let affordable = spare
                    .iter()
                    .zip(&units[i])
                    .filter(|(_, u)| **u > 0.0)
                    .map(|(s, u)| whole(s / u))
                    .min()
                    .unwrap_or(0);
                let remove = v
                    .current_replicas
                    .saturating_sub(v.min_replicas)
                    .min(affordable);
                if remove > 0 {
                    out[i].target_replicas = v.current_replicas - remove;
                    out[i].reason = Reason::ScaleDownSpare;
                    for (s, u) in spare.iter_mut().zip(&units[i]) {
                        *s -= f64::from(remove) * u;
                    }
                }
            }
        }
        Demand::Hold => {}
    }
    out
}

/// Whole replicas of capacity `per_replica` that cover every positive
/// `missing` amount.
fn replicas_for(missing: &[f64], per_replica: &[f64]) -> u32 {
    missing
        .iter()
        .zip(per_replica)
        .filter(|(m, u)| **m > 0.0 && **u > 0.0)
        .map(|(m, u)| whole((m / u).ceil()))
        .max()
        .unwrap_or(0)
}

/// `x` rounded down to a replica count: saturating, NaN and negatives are 0.
fn whole(x: f64) -> u32 {
    x.floor().max(0.0) as u32
}

/// Indices of `variants`, the cheapest per unit of capacity (in the first
/// dimension) first; equal ratios by name.
fn efficiency_order(variants: &[VariantState], units: &[Vec<f64>]) -> Vec<usize> {
    let price = |i: usize| variants[i].cost / units[i].first().copied().unwrap_or(1.0);
    let mut order: Vec<usize> = (0..variants.len()).collect();
    order.sort_by(|&a, &b| {
        price(a)
            .total_cmp(&price(b))
            .then_with(|| variants[a].name.cmp(&variants[b].name))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{Summary, load, summary, variant};
    use proptest::prelude::*;

    /// The targets of a one-replica step: `+1` up, `-1` down, `0` none.
    fn one_step(variants: &[VariantState], delta: i32) -> Vec<VariantTarget> {
        let total: u32 = variants.iter().map(|v| v.current_replicas).sum();
        let need = match delta {
            1 => Need::Up(f64::from(total) + 1.0),
            -1 => Need::Down(f64::from(total) - 1.0),
            _ => Need::Hold,
        };
        targets(variants, need, 1)
    }

    #[test]
    fn targets_steady_without_a_need() {
        let variants = [variant("a", 10.0, 2), variant("b", 30.0, 1)];
        assert_eq!(
            summary(&one_step(&variants, 0)),
            [("a", 2, Reason::Steady), ("b", 1, Reason::Steady)]
        );
    }

    #[test]
    fn targets_choose_the_variant_by_cost_then_name() {
        let cases: &[(&str, Vec<VariantState>, i32, Summary)] = &[
            (
                "scale-up goes to the cheapest",
                vec![variant("h100", 30.0, 1), variant("l4", 10.0, 1)],
                1,
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
                1,
                vec![
                    ("b", 1, Reason::Steady),
                    ("a", 4, Reason::ScaleUpSaturation),
                    ("c", 1, Reason::Steady),
                ],
            ),
            (
                "scale-down comes from the most expensive",
                vec![variant("l4", 10.0, 2), variant("h100", 30.0, 2)],
                -1,
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
                -1,
                vec![
                    ("b", 1, Reason::ScaleDownSpare),
                    ("a", 2, Reason::Steady),
                    ("c", 2, Reason::Steady),
                ],
            ),
            (
                "a zero-replica cheapest variant is scaled up from zero",
                vec![variant("h100", 30.0, 2), variant("l4", 10.0, 0)],
                1,
                vec![
                    ("h100", 2, Reason::Steady),
                    ("l4", 1, Reason::ScaleUpSaturation),
                ],
            ),
            (
                "a zero-replica expensive variant is skipped by scale-down",
                vec![variant("h100", 30.0, 0), variant("l4", 10.0, 2)],
                -1,
                vec![
                    ("h100", 0, Reason::Steady),
                    ("l4", 1, Reason::ScaleDownSpare),
                ],
            ),
        ];
        for (name, variants, need, want) in cases {
            assert_eq!(&summary(&one_step(variants, *need)), want, "{name}");
        }
    }

    #[test]
    fn scale_down_respects_min_replicas() {
        let mut cheap = variant("l4", 10.0, 2);
        cheap.min_replicas = 1;
        let mut pricey = variant("h100", 30.0, 1);
        pricey.min_replicas = 1;
        // The most expensive is at its minimum: the next one gives a replica.
        assert_eq!(
            summary(&one_step(&[cheap.clone(), pricey.clone()], -1)),
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
            summary(&one_step(&[cheap.clone(), pricey], -1)),
            [("l4", 1, Reason::Steady), ("h100", 1, Reason::Steady)]
        );
        // A single variant with a single replica and min 1 stays.
        assert_eq!(
            summary(&one_step(&[cheap], -1)),
            [("l4", 1, Reason::Steady)]
        );
    }

    #[test]
    fn converging_variants_block_every_step_of_the_model() {
        let mut moving = variant("h100", 30.0, 2);
        moving.previous_desired = Some(3);
        let cheap = variant("l4", 10.0, 1);
        // The previous desired keeps being published; the cheap one is not scaled.
        assert_eq!(
            summary(&one_step(&[cheap.clone(), moving.clone()], 1)),
            [
                ("l4", 1, Reason::Converging),
                ("h100", 3, Reason::Converging)
            ]
        );
        // A previous desired equal to current is settled.
        moving.previous_desired = Some(2);
        assert_eq!(
            summary(&one_step(&[cheap, moving], 1)),
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
            summary(&one_step(&both, 1)),
            [
                ("l4", 1, Reason::Converging),
                ("h100", 3, Reason::ScaleDownWithdrawn)
            ],
            "the scale-down is called off; l4 takes no step yet"
        );
        assert_eq!(
            summary(&one_step(&both, 0)),
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
            summary(&one_step(&[rising], 1)),
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
            summary(&one_step(&[pending.clone(), other.clone()], 1)),
            [
                ("l4", 3, Reason::Converging),
                ("h100", 1, Reason::Converging)
            ]
        );
        // Pending pods block even without a previous desired value (a restart).
        pending.previous_desired = None;
        assert!(pending.is_converging());
        assert_eq!(
            summary(&one_step(&[pending, other], -1)),
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
            summary(&one_step(&[rolling], -1)),
            [("a", 2, Reason::Converging)]
        );
    }

    #[test]
    fn unreported_ready_pods_block_steps() {
        let mut quiet = variant("a", 10.0, 2);
        quiet.loads.truncate(1);
        assert!(quiet.is_converging());
        assert_eq!(
            summary(&one_step(&[quiet, variant("b", 20.0, 2)], -1)),
            [("a", 2, Reason::Converging), ("b", 2, Reason::Converging)]
        );
    }

    #[test]
    fn held_scale_down_never_goes_below_min_replicas() {
        let mut v = variant("a", 10.0, 2);
        v.previous_desired = Some(0);
        v.min_replicas = 1;
        assert_eq!(
            summary(&one_step(&[v.clone()], 0)),
            [("a", 1, Reason::Converging)]
        );
        // A held scale-up is kept as is, even from below the minimum.
        v.current_replicas = 0;
        v.ready_replicas = 0;
        v.loads.clear();
        v.previous_desired = Some(2);
        assert_eq!(summary(&one_step(&[v], 0)), [("a", 2, Reason::Converging)]);
    }

    #[test]
    fn no_variants_no_targets() {
        assert!(targets(&[], Need::Up(1.0), 4).is_empty());
    }

    #[test]
    fn a_deep_need_is_spread_cheapest_first_up_to_each_ceiling() {
        let mut l4 = variant("l4", 10.0, 2);
        l4.max_replicas = Some(4);
        let a100 = variant("a100", 20.0, 1);
        let h100 = variant("h100", 30.0, 1);
        let model = [h100, l4, a100];
        // 4 reporting, 9 needed: l4 takes 2 (its maximum), a100 the other 3.
        let out = targets(&model, Need::Up(9.0), 8);
        assert_eq!(
            summary(&out),
            [
                ("h100", 1, Reason::Steady),
                ("l4", 4, Reason::ScaleUpSaturation),
                ("a100", 4, Reason::ScaleUpSaturation),
            ]
        );
        assert_eq!(
            out.iter().map(|t| t.at_max).collect::<Vec<_>>(),
            [false, true, false],
            "l4 would have taken more"
        );
        // A fractional need is rounded up to whole replicas.
        let out = targets(&model, Need::Up(5.5), 8);
        assert_eq!(out[1].target_replicas, 4);
        assert!(!out[1].at_max, "l4 had room for the whole step");
    }

    #[test]
    fn a_need_sized_by_rates_adds_to_a_step_in_flight_without_asking_twice() {
        // l4 was told 1 → 3; its Deployment has 3, one still starting.
        let mut l4 = variant("l4", 10.0, 3);
        l4.ready_replicas = 2;
        l4.loads.truncate(2);
        l4.previous_desired = Some(3);
        let model = [l4.clone(), variant("h100", 30.0, 0)];
        let sized = |n: f64| Capacities {
            counts_coming: true,
            ..Capacities::replicas(Need::Up(n), 2)
        };
        // The load still needs 3: the step in flight brings them, nothing more.
        assert_eq!(
            summary(&allocate(&model, &sized(3.0), 4)),
            [
                ("l4", 3, Reason::Converging),
                ("h100", 0, Reason::Converging)
            ]
        );
        // The ramp went on: 5 are needed now, 2 more on top of the 3.
        assert_eq!(
            summary(&allocate(&model, &sized(5.0), 4)),
            [
                ("l4", 5, Reason::ScaleUpSaturation),
                ("h100", 0, Reason::Converging)
            ]
        );
        // The scaler has not even applied the step yet: it still counts.
        let mut unapplied = l4;
        unapplied.current_replicas = 1;
        unapplied.ready_replicas = 1;
        unapplied.loads.truncate(1);
        let model = [unapplied, variant("h100", 30.0, 0)];
        assert_eq!(
            summary(&allocate(&model, &sized(3.0), 4))[0],
            ("l4", 3, Reason::Converging)
        );
        // Sized from readings the starting replicas will relieve, it waits.
        assert_eq!(
            summary(&allocate(
                &model,
                &Capacities::replicas(Need::Up(5.0), 2),
                4
            ))[0],
            ("l4", 3, Reason::Converging)
        );
    }

    #[test]
    fn a_step_is_capped_and_at_least_one_replica() {
        let model = [variant("a", 10.0, 2)];
        assert_eq!(
            summary(&targets(&model, Need::Up(40.0), 4)),
            [("a", 6, Reason::ScaleUpSaturation)]
        );
        // A need already covered still adds one replica: the verdict wants one.
        assert_eq!(
            summary(&targets(&model, Need::Up(1.0), 4)),
            [("a", 3, Reason::ScaleUpSaturation)]
        );
    }

    #[test]
    fn every_variant_at_its_maximum_takes_nothing_and_says_so() {
        let mut a = variant("a", 10.0, 3);
        a.max_replicas = Some(3);
        let out = targets(&[a], Need::Up(5.0), 4);
        assert_eq!(summary(&out), [("a", 3, Reason::Steady)]);
        assert!(out[0].at_max);
    }

    #[test]
    fn a_blocked_variant_hands_its_step_to_the_next_and_counts_only_reporting_replicas() {
        // l4 asked for 4 replicas; 2 never became ready and the deadline passed.
        let mut l4 = variant("l4", 10.0, 4);
        l4.ready_replicas = 2;
        l4.loads.truncate(2);
        l4.blocked = true;
        let h100 = variant("h100", 30.0, 1);
        assert!(
            !l4.is_converging(),
            "a blocked variant does not hold its model"
        );
        assert_eq!(l4.anticipated_replicas(), 2);
        // 3 replicas report, 5 are needed: both go to h100.
        let out = targets(&[l4.clone(), h100], Need::Up(5.0), 4);
        assert_eq!(
            summary(&out),
            [
                ("l4", 4, Reason::Steady),
                ("h100", 3, Reason::ScaleUpSaturation)
            ]
        );
        assert!(!out[0].at_max, "blocked is its own condition");
        // It can still shrink when the load leaves.
        let out = targets(&[l4], Need::Down(1.0), 4);
        assert_eq!(summary(&out), [("l4", 3, Reason::ScaleDownSpare)]);
    }

    #[test]
    fn a_scale_down_removes_every_replica_above_the_need_most_expensive_first() {
        let mut l4 = variant("l4", 10.0, 4);
        l4.min_replicas = 1;
        let mut h100 = variant("h100", 30.0, 2);
        h100.min_replicas = 1;
        // 6 reporting, 2 needed: h100 gives 1 (down to its floor), l4 gives 3.
        assert_eq!(
            summary(&targets(&[l4, h100], Need::Down(2.0), 4)),
            [
                ("l4", 1, Reason::ScaleDownSpare),
                ("h100", 1, Reason::ScaleDownSpare)
            ]
        );
    }

    fn arb_variant(index: usize) -> impl Strategy<Value = VariantState> {
        (
            prop::sample::select(vec![10.0, 20.0, 30.0]),
            0u32..6,
            0u32..3,
            prop::option::of(0u32..8),
            any::<bool>(),
            0u32..6,
        )
            .prop_map(move |(cost, current, min, max, blocked, ready)| {
                let mut v = variant(&format!("v{index}"), cost, current);
                v.min_replicas = min;
                v.max_replicas = max;
                if blocked {
                    v.blocked = true;
                    v.ready_replicas = ready.min(current);
                    v.loads.truncate(v.ready_replicas as usize);
                }
                v
            })
    }

    fn arb_model() -> impl Strategy<Value = Vec<VariantState>> {
        (0usize..5).prop_flat_map(|n| (0..n).map(arb_variant).collect::<Vec<_>>())
    }

    fn arb_need() -> impl Strategy<Value = Need> {
        prop_oneof![
            (0.0..30.0f64).prop_map(Need::Up),
            (0.0..30.0f64).prop_map(Need::Down),
            Just(Need::Hold),
        ]
    }

    proptest! {
        #[test]
        fn steps_stay_within_every_bound(variants in arb_model(), need in arb_need(), max_up in 1u32..6) {
            let out = targets(&variants, need, max_up);
            prop_assert_eq!(out.len(), variants.len());
            let mut added = 0;
            for (v, t) in variants.iter().zip(&out) {
                prop_assert_eq!(&v.name, &t.name);
                if t.target_replicas > v.current_replicas {
                    prop_assert!(matches!(need, Need::Up(_)));
                    prop_assert!(!v.blocked, "{:?}", v);
                    prop_assert!(t.target_replicas <= v.max_replicas.unwrap_or(u32::MAX));
                    prop_assert_eq!(t.reason, Reason::ScaleUpSaturation);
                    added += t.target_replicas - v.current_replicas;
                } else if t.target_replicas < v.current_replicas {
                    prop_assert!(matches!(need, Need::Down(_)));
                    prop_assert!(t.target_replicas >= v.min_replicas);
                    prop_assert_eq!(t.reason, Reason::ScaleDownSpare);
                } else {
                    prop_assert_eq!(t.reason, Reason::Steady);
                }
            }
            prop_assert!(added <= max_up);
            if let Need::Up(wanted) = need {
                let anticipated: u32 = variants.iter().map(VariantState::anticipated_replicas).sum();
                let most = (wanted - f64::from(anticipated)).ceil().max(1.0);
                prop_assert!(f64::from(added) <= most);
            }
        }

        #[test]
        fn a_scale_up_never_skips_a_cheaper_variant_with_room(variants in arb_model(), wanted in 0.0..30.0f64) {
            let out = targets(&variants, Need::Up(wanted), 4);
            for (i, t) in out.iter().enumerate() {
                if t.target_replicas <= variants[i].current_replicas {
                    continue;
                }
                for (j, v) in variants.iter().enumerate() {
                    let cheaper = (v.cost, &v.name) < (variants[i].cost, &variants[i].name);
                    if cheaper {
                        prop_assert_eq!(out[j].target_replicas, v.ceiling().max(v.current_replicas), "{:?}", v);
                    }
                }
            }
        }
    }
}
