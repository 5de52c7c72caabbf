//! WVA's CAPACITY-ONLY saturation analysis (V1), per model across its variants.
//!
//! [`analyze`] pools the reporting replicas of every variant of one model and
//! decides whether the model needs more replicas or can safely lose some;
//! [`need`] sizes that step from the pooled load, and
//! [`steps::targets`](super::steps::targets) spreads it over the variants by
//! cost. The rules, with a worked example, are in `docs/saturation.md`.

use super::model::{
    DRAIN_SECONDS, Need, ReplicaLoad, VariantState, arrivals_and_backlog, busy_capacity, plausible,
};
use crate::config::saturation::SaturationConfig;

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

/// A reading counts as healthy only when both numbers are finite and
/// non-negative and below their thresholds. Anything else (NaN, infinities,
/// negative values) is treated as saturated, so a broken reading can ask for
/// capacity but never make a replica look idle.
pub fn is_saturated(load: &ReplicaLoad, config: &SaturationConfig) -> bool {
    is_saturated_at(load.kv_cache_usage, load.requests_waiting, config)
}

/// [`is_saturated`] for a KV-cache usage and a queue length.
pub fn is_saturated_at(kv_cache_usage: f64, waiting: f64, config: &SaturationConfig) -> bool {
    !(plausible(kv_cache_usage) && plausible(waiting))
        || kv_cache_usage >= config.kv_cache_threshold
        || waiting >= config.queue_length_threshold
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

/// A replica is planned at this share of the rate it sustains while busy.
const TARGET_UTILIZATION: f64 = 0.9;

/// Sizes the step the verdict asks for, in replicas of the model (V1 treats
/// every replica alike).
///
/// - Scale-up: enough replicas for both the KV cache and the queue, and at
///   least one more than report now. For the KV cache, the fewest over which
///   the pooled usage of *all* reporting replicas leaves the KV spare at or
///   above its trigger (a saturated replica counts with its real usage, an
///   implausible reading as exactly at its threshold). For the queue, when
///   [`replicas_for_the_rate`] can tell, the replicas the requests' arrival
///   rate needs; otherwise the fewest over which the pooled queue leaves the
///   queue spare at or above its trigger.
/// - Scale-down: the fewest that keep V1's own scale-down test true: the
///   healthy replicas' load spread over the healthy ones that remain.
pub fn need(
    variants: &[VariantState],
    config: &SaturationConfig,
    analysis: &ModelAnalysis,
) -> Need {
    let loads = || variants.iter().flat_map(|v| &v.loads);
    let reporting = analysis.total_replicas as u32;
    if analysis.should_scale_up {
        let (mut kv, mut queue) = (0.0, 0.0);
        for load in loads() {
            kv += if plausible(load.kv_cache_usage) {
                load.kv_cache_usage.min(1.0)
            } else {
                config.kv_cache_threshold
            };
            queue += if plausible(load.requests_waiting) {
                load.requests_waiting
            } else {
                config.queue_length_threshold
            };
        }
        let at_least = reporting + 1;
        let for_kv = fewest(at_least, |m| fits_over(config, (kv, 0.0), m));
        let for_queue = match replicas_for_the_rate(loads()) {
            Some(m) => (m.ceil() as u32).max(at_least),
            None => fewest(at_least, |m| fits_over(config, (0.0, queue), m)),
        };
        Need::Up(f64::from(for_kv.max(for_queue)))
    } else if analysis.scale_down_safe {
        let (mut kv, mut queue) = (0.0, 0.0);
        for load in loads().filter(|l| !is_saturated(l, config)) {
            kv += load.kv_cache_usage;
            queue += load.requests_waiting;
        }
        let healthy = analysis.non_saturated_replicas as u32;
        // The verdict guarantees that `healthy - 1` fit.
        let keep = fewest(1, |m| fits_over(config, (kv, queue), m)).min(healthy - 1);
        Need::Down(f64::from(reporting - (healthy - keep)))
    } else {
        Need::Hold
    }
}

/// The replicas the requests' arrival rate needs, when the loads can tell: a
/// replica with requests waiting finishes them as fast as it can, so the
/// mean rate of such busy replicas is one replica's capacity. The model
/// needs its arrivals at [`TARGET_UTILIZATION`] of that, plus its backlog
/// drained within [`DRAIN_SECONDS`] (every replica's queue counts; arrivals
/// only where measured). A queue alone overstates the need once
/// a backlog built up while replicas started; the rate does not. `None`
/// without a busy replica whose rates are measured.
pub fn replicas_for_the_rate<'a>(
    loads: impl Iterator<Item = &'a ReplicaLoad> + Clone,
) -> Option<f64> {
    let capacity = busy_capacity(loads.clone())?;
    let (arriving, backlog) = arrivals_and_backlog(loads);
    Some(arriving / (capacity * TARGET_UTILIZATION) + backlog / (capacity * DRAIN_SECONDS))
}

/// Whether a load `(kv, queue)` spread over `m` replicas leaves both spares
/// at or above their triggers.
fn fits_over(config: &SaturationConfig, (kv, queue): (f64, f64), m: u32) -> bool {
    let m = f64::from(m);
    config.kv_cache_threshold - kv / m >= config.kv_spare_trigger
        && config.queue_length_threshold - queue / m >= config.queue_spare_trigger
}

/// The fewest replicas, at least `from`, for which `fits` holds (it holds for
/// every larger count once it holds for one); `from` when no realistic count
/// fits (a trigger equal to its threshold), so the step is the smallest one.
fn fewest(from: u32, fits: impl Fn(u32) -> bool) -> u32 {
    const MOST: u32 = 1 << 20;
    if fits(from) || !fits(MOST) {
        return from;
    }
    let (mut lo, mut hi) = (from, MOST);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { hi = mid } else { lo = mid }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{load, summary, variant, with_loads};
    use crate::analysis::model::{Reason, RequestRates};
    use crate::analysis::steps::targets;
    use proptest::prelude::*;

    /// Thresholds whose differences are exact in binary, so boundaries are exact.
    const CONFIG: SaturationConfig = SaturationConfig {
        kv_cache_threshold: 0.75,
        queue_length_threshold: 8.0,
        kv_spare_trigger: 0.25,
        queue_spare_trigger: 2.0,
        analyzer_name: crate::config::saturation::Analyzer::Capacity,
        scale_up_threshold: 0.85,
        scale_down_boundary: 0.70,
        max_scale_up_replicas: 4,
        max_scale_up_percent: 100.0,
        scale_down_stabilization_seconds: 0,
    };

    const UP: (bool, bool) = (true, false);
    const DOWN: (bool, bool) = (false, true);
    const HOLD: (bool, bool) = (false, false);

    #[test]
    fn a_model_without_replicas_has_no_verdict() {
        assert_eq!(
            analyze(&[], &CONFIG),
            analyze(&[variant("a", 10.0, 0)], &CONFIG)
        );
        assert_eq!(need(&[], &CONFIG, &analyze(&[], &CONFIG)), Need::Hold);
    }

    #[test]
    fn need_sizes_the_step_from_the_pooled_load() {
        // (case, loads, need) with thresholds 0.75 / 8 and triggers 0.25 / 2.
        #[rustfmt::skip]
        type Case = (&'static str, &'static [(f64, f64)], Need);
        let cases: &[Case] = &[
            (
                "a queue of 30 wants 5 replicas of 6 waiting",
                &[(0.5, 30.0)],
                Need::Up(5.0),
            ),
            (
                "KV alone: 2.4 of KV over 0.5 spare each",
                &[(0.8, 0.0), (0.8, 0.0), (0.8, 0.0)],
                Need::Up(5.0),
            ),
            (
                "just over a trigger: one more",
                &[(0.5078125, 0.0)],
                Need::Up(2.0),
            ),
            (
                "an implausible reading counts at its thresholds",
                &[(f64::NAN, f64::NAN)],
                Need::Up(2.0),
            ),
            ("KV above 1 counts as full", &[(7.0, 0.0)], Need::Up(2.0)),
            (
                "light load: one of four is enough",
                &[(0.125, 0.0); 4],
                Need::Down(1.0),
            ),
            (
                "saturated replicas stay",
                &[(0.9, 0.0), (0.125, 0.0), (0.125, 0.0), (0.125, 0.0)],
                Need::Down(2.0),
            ),
            (
                "half the KV fits on half the replicas",
                &[(0.25, 0.0); 4],
                Need::Down(2.0),
            ),
            ("steady", &[(0.4, 4.0), (0.4, 4.0)], Need::Hold),
        ];
        for &(case, loads, want) in cases {
            let (a, b) = loads.split_at(loads.len() / 2);
            let model = [with_loads("a", a), with_loads("b", b)];
            let got = need(&model, &CONFIG, &analyze(&model, &CONFIG));
            assert_eq!(got, want, "{case}");
        }
        // A trigger equal to its threshold can never be met by more
        // replicas: the step is the smallest one.
        let tight = SaturationConfig {
            queue_spare_trigger: 8.0,
            ..CONFIG
        };
        let model = [with_loads("a", &[(0.1, 9.0)])];
        assert_eq!(
            need(&model, &tight, &analyze(&model, &tight)),
            Need::Up(2.0)
        );
    }

    fn busy(queue: f64, finished: f64, arriving: f64) -> ReplicaLoad {
        ReplicaLoad {
            rates: Some(RequestRates {
                finished,
                arriving,
                busy: queue >= 1.0,
            }),
            ..load(0.5, queue)
        }
    }

    #[test]
    fn the_arrival_rate_sizes_the_queue_part_once_a_busy_replica_shows_its_capacity() {
        // One replica finishes 6 requests/s while 24/s arrive and 30 wait:
        // 24 / (6 × 0.9) + 30 / (6 × 30 s) = 4.6, so 5 replicas, where the
        // queue alone (30 waiting, 2 allowed per replica) would ask for 15.
        let mut one = with_loads("a", &[(0.5, 30.0)]);
        let rate = replicas_for_the_rate(std::iter::once(&busy(30.0, 6.0, 24.0))).unwrap();
        assert!((rate - 4.6111).abs() < 1e-3, "{rate}");
        one.loads = vec![busy(30.0, 6.0, 24.0)];
        let model = [one];
        assert_eq!(
            need(&model, &CONFIG, &analyze(&model, &CONFIG)),
            Need::Up(5.0)
        );

        // Replicas without waiting requests say nothing of capacity; without
        // a busy one the queue sizes the step.
        let idle = [busy(0.0, 3.0, 3.0), busy(0.0, 2.0, 2.0)];
        assert_eq!(replicas_for_the_rate(idle.iter()), None);
        let mixed = [busy(0.0, 3.0, 3.0), busy(4.0, 5.0, 9.0), load(0.1, 2.0)];
        // Capacity 5/s (the busy one); 12/s arrive; 6 wait.
        let rate = replicas_for_the_rate(mixed.iter()).unwrap();
        assert!((rate - (12.0 / 4.5 + 6.0 / 150.0)).abs() < 1e-9, "{rate}");
        // A broken rate is no estimate.
        let broken = [busy(4.0, f64::NAN, 9.0)];
        assert_eq!(replicas_for_the_rate(broken.iter()), None);
        // Never less than one more replica than report.
        let mut calm = with_loads("a", &[(0.5, 7.0)]);
        calm.loads = vec![busy(7.0, 6.0, 1.0)];
        let model = [calm];
        assert_eq!(
            need(&model, &CONFIG, &analyze(&model, &CONFIG)),
            Need::Up(2.0)
        );
    }

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
        // The pooled load (KV 2.27, queue 7) needs 4 replicas: one more.
        let up = need(&variants, &config, &analysis);
        assert_eq!(up, Need::Up(4.0));
        assert_eq!(
            summary(&targets(&variants, up, config.max_scale_up(3))),
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
        // KV 0.8 and queue 1 fit on 2 replicas: two of the four can go.
        let down = need(&quiet, &config, &analysis);
        assert_eq!(down, Need::Down(2.0));
        assert_eq!(
            summary(&targets(&quiet, down, config.max_scale_up(4))),
            [
                ("llama-8b-l4", 2, Reason::ScaleDownSpare),
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
                        max_replicas: None,
                        blocked: false,
                        request_capacity: None,
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
        fn the_sized_step_agrees_with_the_verdict(variants in arb_model()) {
            let config = CONFIG;
            let a = analyze(&variants, &config);
            let reporting = a.total_replicas as f64;
            match need(&variants, &config, &a) {
                Need::Up(n) => {
                    prop_assert!(a.should_scale_up);
                    prop_assert!(n >= reporting + 1.0, "{} for {}", n, reporting);
                }
                Need::Down(n) => {
                    prop_assert!(a.scale_down_safe);
                    // Fewer, but every saturated replica and one healthy one stay.
                    prop_assert!(n < reporting);
                    prop_assert!(n >= (a.saturated_replicas + 1) as f64);
                }
                Need::Hold => prop_assert!(!a.should_scale_up && !a.scale_down_safe),
            }
        }
    }
}
