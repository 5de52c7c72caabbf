//! WVA's V2, token-based analysis (`analyzerName: saturation`), per model
//! across its variants.
//!
//! Capacity and demand are measured in two dimensions:
//!
//! - **KV-cache tokens**, as WVA's V2 measures them: a replica's demand is
//!   the tokens it holds (KV usage × `num_gpu_blocks × block_size`) plus its
//!   waiting requests × their mean prompt length; a replica of a variant
//!   holds `kvCacheThreshold` of its KV cache (the median over its pods).
//! - **Requests per second**, where WVA's V2 estimates compute capacity as a
//!   KV stock (which drains prefill-heavy models to one replica): the demand
//!   is the requests' arrival rate plus the backlog drained within 30 s, and
//!   a replica of a variant finishes what its busy replicas were last seen
//!   finishing.
//!
//! The model scales up when its demand exceeds `scaleUpThreshold` of its
//! anticipated capacity in either dimension, and down while what remains
//! keeps its demand below `scaleDownBoundary` of it in both; between the two
//! it holds. The rules, with a worked example, are in `docs/saturation.md`.

use serde::Serialize;

use super::model::{DRAIN_SECONDS, ReplicaLoad, VariantState, arrivals_and_backlog, plausible};
use super::steps::{Capacities, Demand};
use crate::config::saturation::SaturationConfig;

/// What V2 measured for a model.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnalysis {
    /// KV tokens in use and waiting to be.
    pub demand_tokens: f64,
    /// KV tokens the model's replicas (ready or starting) hold at
    /// `kvCacheThreshold`.
    pub capacity_tokens: f64,
    /// Requests per second arriving, with the backlog's drain; `None`
    /// before any replica of the model was seen busy.
    pub demand_rate: Option<f64>,
    /// Requests per second the replicas finish while busy.
    pub capacity_rate: Option<f64>,
    pub scale_up: bool,
    pub scale_down: bool,
}

/// Sizes the model; `None` when no replica reports the size of its KV cache.
pub fn analyze(
    variants: &[VariantState],
    config: &SaturationConfig,
) -> Option<(TokenAnalysis, Capacities)> {
    let loads = || variants.iter().flat_map(|v| &v.loads);
    let mut sizes: Vec<f64> = loads().filter_map(known_size).collect();
    let model_size = median(&mut sizes)?;
    let prompts: Vec<f64> = loads()
        .filter_map(|l| usable(l.mean_prompt_tokens))
        .collect();
    let model_prompt = mean(&prompts).unwrap_or(0.0);

    // KV tokens.
    let mut demand_tokens = 0.0;
    for load in loads() {
        let size = known_size(load).unwrap_or(model_size);
        let usage = if plausible(load.kv_cache_usage) {
            load.kv_cache_usage.min(1.0)
        } else {
            1.0
        };
        let waiting = usable(Some(load.requests_waiting)).unwrap_or(config.queue_length_threshold);
        let prompt = usable(load.mean_prompt_tokens).unwrap_or(model_prompt);
        demand_tokens += usage * size + waiting * prompt;
    }
    let kv_unit: Vec<f64> = variants
        .iter()
        .map(|v| {
            let mut own: Vec<f64> = v.loads.iter().filter_map(known_size).collect();
            median(&mut own).unwrap_or(model_size) * config.kv_cache_threshold
        })
        .collect();

    // Requests per second, once some replica was seen busy.
    let known: Vec<f64> = variants.iter().filter_map(|v| v.request_capacity).collect();
    let rate_unit: Option<Vec<f64>> = mean(&known).map(|model_rate| {
        variants
            .iter()
            .map(|v| v.request_capacity.unwrap_or(model_rate))
            .collect()
    });
    let (arriving, backlog) = arrivals_and_backlog(loads());
    let demand_rate = rate_unit
        .as_ref()
        .map(|_| arriving + backlog / DRAIN_SECONDS);

    let anticipated = |unit: &[f64]| -> f64 {
        variants
            .iter()
            .zip(unit)
            .map(|(v, u)| f64::from(v.anticipated_replicas()) * u)
            .sum()
    };
    let capacity_tokens = anticipated(&kv_unit);
    let capacity_rate = rate_unit.as_deref().map(anticipated);

    let mut demand = vec![demand_tokens];
    let mut capacity = vec![capacity_tokens];
    let mut per_replica: Vec<Vec<f64>> = kv_unit.iter().map(|&u| vec![u]).collect();
    if let (Some(units), Some(rate), Some(have)) = (&rate_unit, demand_rate, capacity_rate) {
        demand.push(rate);
        capacity.push(have);
        for (unit, u) in per_replica.iter_mut().zip(units) {
            unit.push(*u);
        }
    }
    let reporting = loads().count() > 0;
    let scale_up = reporting
        && demand
            .iter()
            .zip(&capacity)
            .any(|(d, c)| d / config.scale_up_threshold > *c);
    let scale_down = reporting
        && !scale_up
        && demand
            .iter()
            .zip(&capacity)
            .all(|(d, c)| *c - d / config.scale_down_boundary > 0.0);
    let need = if scale_up {
        Demand::Up(
            demand
                .iter()
                .map(|d| d / config.scale_up_threshold)
                .collect(),
        )
    } else if scale_down {
        Demand::Down(
            demand
                .iter()
                .map(|d| d / config.scale_down_boundary)
                .collect(),
        )
    } else {
        Demand::Hold
    };
    let analysis = TokenAnalysis {
        demand_tokens,
        capacity_tokens,
        demand_rate,
        capacity_rate,
        scale_up,
        scale_down,
    };
    let capacities = Capacities {
        need,
        per_replica,
        counts_coming: true,
    };
    Some((analysis, capacities))
}

/// The size of a replica's KV cache in tokens, when it reports a usable one.
fn known_size(load: &ReplicaLoad) -> Option<f64> {
    usable(load.kv_capacity_tokens).filter(|size| *size > 0.0)
}

/// `value` when it is a usable reading.
fn usable(value: Option<f64>) -> Option<f64> {
    value.filter(|v| plausible(*v))
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{load, variant};
    use crate::analysis::model::RequestRates;
    use crate::analysis::steps::allocate;

    /// WVA's V2 defaults: KV 0.80, up 0.85, down 0.70.
    fn config() -> SaturationConfig {
        SaturationConfig::default()
    }

    /// A replica with a KV cache of `size` tokens, `kv` of it used, `waiting`
    /// requests of `prompt` tokens on average.
    fn replica(size: f64, kv: f64, waiting: f64, prompt: f64) -> ReplicaLoad {
        ReplicaLoad {
            kv_capacity_tokens: Some(size),
            mean_prompt_tokens: Some(prompt),
            ..load(kv, waiting)
        }
    }

    fn with(name: &str, cost: f64, loads: Vec<ReplicaLoad>) -> VariantState {
        let mut v = variant(name, cost, loads.len() as u32);
        v.loads = loads;
        v
    }

    fn targets(variants: &[VariantState]) -> Vec<u32> {
        let (_, capacities) = analyze(variants, &config()).unwrap();
        allocate(variants, &capacities, 4)
            .iter()
            .map(|t| t.target_replicas)
            .collect()
    }

    #[test]
    fn demand_and_capacity_follow_the_documented_formulas() {
        // (case, (kv, waiting) per replica of 10 000 tokens and 500-token
        // prompts, demand, capacity, up, down, replicas after)
        type Case = (
            &'static str,
            &'static [(f64, f64)],
            f64,
            f64,
            bool,
            bool,
            u32,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // 2 × (8000 + 2 × 500) = 18 000 > 0.85 × 16 000: up by ⌈(18 000 / 0.85 − 16 000) / 8000⌉ = 1.
            ("above scaleUpThreshold", &[(0.8, 2.0), (0.8, 2.0)], 18_000.0, 16_000.0, true, false, 3),
            // 12 000 / 0.85 = 14 118 ≤ 16 000, and 16 000 − 12 000 / 0.70 < 0: the band between.
            ("between the two", &[(0.6, 0.0), (0.6, 0.0)], 12_000.0, 16_000.0, false, false, 2),
            // 16 000 − 4000 / 0.70 = 10 286 spare: one replica of 8000 goes.
            ("below scaleDownBoundary", &[(0.2, 0.0), (0.2, 0.0)], 4_000.0, 16_000.0, false, true, 1),
            // A broken reading counts as a full cache.
            ("implausible usage is full", &[(f64::NAN, 0.0)], 10_000.0, 8_000.0, true, false, 2),
        ];
        for &(case, loads, demand, capacity, up, down, after) in cases {
            let loads = loads
                .iter()
                .map(|&(kv, w)| replica(10_000.0, kv, w, 500.0))
                .collect();
            let model = [with("v", 10.0, loads)];
            let (a, _) = analyze(&model, &config()).unwrap();
            assert!((a.demand_tokens - demand).abs() < 1e-6, "{case}: {a:?}");
            assert_eq!(a.capacity_tokens, capacity, "{case}");
            assert_eq!((a.scale_up, a.scale_down), (up, down), "{case}");
            assert_eq!(targets(&model), [after], "{case}");
        }
    }

    #[test]
    fn capacity_is_per_variant_and_the_most_cost_efficient_grows_first() {
        // L4: 10 000 tokens for cost 10 (8000 at threshold, 1.25 per 1000);
        // H100: 40 000 for cost 30 (32 000, 0.94 per 1000): H100 first.
        let l4 = with("l4", 10.0, vec![replica(10_000.0, 0.9, 10.0, 1000.0)]);
        let h100 = with("h100", 30.0, vec![replica(40_000.0, 0.9, 10.0, 1000.0)]);
        let model = [l4, h100];
        let (a, capacities) = analyze(&model, &config()).unwrap();
        // (9000 + 10 000) + (36 000 + 10 000) = 65 000 over 40 000.
        assert_eq!(a.demand_tokens, 65_000.0);
        assert_eq!(a.capacity_tokens, 40_000.0);
        assert_eq!(capacities.per_replica, [vec![8_000.0], vec![32_000.0]]);
        // 65 000 / 0.85 = 76 471: two more H100s (64 000) cover the 36 471.
        assert_eq!(targets(&model), [1, 3]);
    }

    #[test]
    fn a_variant_without_reporting_pods_borrows_the_models_median_cache() {
        let mut idle = variant("spare", 5.0, 0);
        idle.loads.clear();
        let busy = with("busy", 10.0, vec![replica(10_000.0, 0.9, 4.0, 500.0)]);
        let (_, capacities) = analyze(&[idle, busy], &config()).unwrap();
        assert_eq!(capacities.per_replica, [vec![8_000.0], vec![8_000.0]]);
        // Without any cache size there is nothing to size with.
        let blind = with("v", 10.0, vec![load(0.9, 4.0)]);
        assert!(analyze(&[blind], &config()).is_none());
    }

    #[test]
    fn the_request_rate_keeps_a_prefill_heavy_model_from_draining() {
        // Three replicas hold little KV (long prompts finish fast), but 15
        // requests/s arrive and a busy replica was seen finishing 6/s.
        let rated = |arriving| ReplicaLoad {
            rates: Some(RequestRates {
                finished: arriving,
                arriving,
                busy: false,
            }),
            ..replica(10_000.0, 0.1, 0.0, 4000.0)
        };
        let mut v = with("v", 10.0, vec![rated(5.0), rated(5.0), rated(5.0)]);
        // By KV alone (3000 tokens of 24 000) two of the three would go.
        assert_eq!(targets(std::slice::from_ref(&v)), [1]);
        v.request_capacity = Some(6.0);
        let (a, capacities) = analyze(std::slice::from_ref(&v), &config()).unwrap();
        assert_eq!((a.demand_rate, a.capacity_rate), (Some(15.0), Some(18.0)));
        // 15 / 0.70 = 21.4 > 18: nothing goes; 15 / 0.85 = 17.6 ≤ 18: nothing comes.
        assert_eq!(capacities.need, Demand::Hold);
        assert_eq!(targets(std::slice::from_ref(&v)), [3]);
        // 20/s: 23.5 needed over 18, one more replica of 6.
        v.loads = vec![rated(20.0 / 3.0); 3];
        assert_eq!(targets(std::slice::from_ref(&v)), [4]);
    }

    #[test]
    fn a_backlog_counts_as_rate_to_drain_within_thirty_seconds() {
        let mut v = with(
            "v",
            10.0,
            vec![ReplicaLoad {
                rates: Some(RequestRates {
                    finished: 6.0,
                    arriving: 6.0,
                    busy: false,
                }),
                ..replica(100_000.0, 0.1, 60.0, 10.0)
            }],
        );
        v.request_capacity = Some(6.0);
        let (a, _) = analyze(&[v], &config()).unwrap();
        // 6/s arriving plus 60 waiting over 30 s.
        assert_eq!(a.demand_rate, Some(8.0));
    }
}
