//! HYBRID mode through the engine: the plan, the arbitration and what a
//! decision shows of them.

use super::*;
use crate::config::service_class::{CLASSES_KEY, Objectives};
use crate::engine::hybrid::PROFILE_ANNOTATION;
use crate::hybrid::profile::{Profile, SIMULATOR};
use crate::hybrid::replica::{Sustains, TokenMix, sustains};

/// The simulator's profile, given in the annotation.
const GIVEN: &str = r#"{"itl": {"intercept": 10, "slope": 0.2},
    "prefill": {"intercept": 20, "slope": 0.1}, "maxBatch": 64}"#;

const MIX: TokenMix = TokenMix {
    prompt: 1000.0,
    output: 200.0,
};

fn hybrid(classes: &str) -> HybridConfig {
    let data = BTreeMap::from([(CLASSES_KEY.to_string(), classes.to_string())]);
    HybridConfig::from_data(&data).unwrap()
}

fn premium(itl_ms: f64) -> String {
    format!("- {{name: Premium, model: {MODEL}, priority: 1, slo-itl: {itl_ms}, slo-ttw: 500}}")
}

fn profiled(name: &str) -> Variant {
    let mut v = va("ns", name, name, 10.0);
    v.annotations
        .insert(PROFILE_ANNOTATION.to_string(), GIVEN.to_string());
    v
}

/// A sample of a pod that finished `finished` requests of [`MIX`] since it
/// started, with the KV cache at `kv`.
fn serving(finished: f64, kv: f64) -> Sample {
    let mut s = with_successes(finished, 4.0);
    s.models[0].kv_cache_usage = kv;
    s.models[0].num_gpu_blocks = 10_000;
    s.models[0].block_size = 16;
    let counters = s.models[0].counters.as_mut().expect("counters");
    counters.request_prompt_tokens_sum = MIX.prompt * finished;
    counters.request_prompt_tokens_count = finished;
    counters.request_generation_tokens_sum = MIX.output * finished;
    counters.request_generation_tokens_count = finished;
    s
}

/// Two evaluations 6 s apart over one pod that finished `per_second`
/// requests a second between them, its cache at `kv` in the second; the
/// second's decision.
fn after_a_measured_rate(w: &mut World, variant: &Variant, per_second: f64, kv: f64) -> Decision {
    let mut engine = Engine::default();
    let v = [variant.clone()];
    w.counts(&variant.name, 1, 1);
    w.pod(
        "ns",
        "p-0",
        &variant.name,
        Some((serving(100.0, 0.1), Duration::ZERO)),
    );
    w.run(&mut engine, &v);
    w.advance(Duration::from_secs(6));
    let finished = 100.0 + 6.0 * per_second;
    w.pod(
        "ns",
        "p-0",
        &variant.name,
        Some((serving(finished, kv), Duration::ZERO)),
    );
    let (mut decisions, _) = w.run(&mut engine, &v);
    decisions.remove(0)
}

fn per_replica(itl_ms: f64) -> f64 {
    let profile = Profile {
        max_batch: Some(64),
        ..SIMULATOR
    };
    let objectives = Objectives {
        itl_ms,
        ttft_ms: 500.0,
    };
    match sustains(profile, MIX, 64, objectives) {
        Sustains::Rate { per_second, .. } => per_second,
        Sustains::Unattainable(miss) => panic!("{miss}"),
    }
}

#[test]
fn the_plan_scales_up_before_the_cache_fills() {
    let mut w = World::new();
    w.hybrid = Some(hybrid(&premium(24.0)));
    // 10 requests a second on one replica whose cache is barely in use:
    // the saturation analysis holds, the plan wants what the rate needs.
    let d = after_a_measured_rate(&mut w, &profiled("v"), 10.0, 0.1);
    let plan = d.model_based.as_ref().expect("HYBRID mode");
    let needed = (10.0 * 1.1 / per_replica(24.0)).ceil() as u32;
    assert!(needed > 1, "the rate needs more than one replica");
    assert_eq!(plan.planned, Some(needed), "{plan:?}");
    assert_eq!(d.desired_replicas, needed);
    assert_eq!(d.basis, Basis::Analysis(Reason::Optimizer));
    assert_eq!(plan.class.as_deref(), Some("Premium"));
    assert!(!plan.fitted, "the profile was given");
    assert_eq!(plan.abstains, None);
    // As /v1/decisions shows it.
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["basis"], "optimizer");
    let shown = &json["modelBased"];
    assert_eq!(shown["class"], "Premium");
    assert_eq!(shown["planned"], needed);
    assert_eq!(shown["profile"]["itl"]["slope"], 0.2);
    assert_eq!(shown["profile"]["maxBatch"], 64);
    assert!(
        shown["perReplica"].as_f64().is_some_and(|r| r > 0.0),
        "{shown}"
    );
}

#[test]
fn saturation_wins_where_it_asks_for_more() {
    let mut w = World::new();
    w.hybrid = Some(hybrid(&premium(24.0)));
    // A trickle the plan carries on one replica, on a saturated cache.
    let d = after_a_measured_rate(&mut w, &profiled("v"), 0.5, 0.95);
    assert_eq!(d.model_based.as_ref().and_then(|p| p.planned), Some(1));
    assert_eq!(d.basis, Basis::Analysis(Reason::ScaleUpSaturation));
    assert_eq!(d.desired_replicas, 2);
}

#[test]
fn the_plan_abstains_with_a_reason_and_the_saturation_analysis_decides() {
    let cases = [
        (
            // An objective a lone request misses: no scale-up forever.
            premium(8.0),
            profiled("v"),
            "objectives of class \"Premium\" unattainable: a lone request's inter-token \
             latency is 10.2 ms, over the objective of 8 ms",
        ),
        (
            "- {name: Premium, model: other, priority: 1, slo-itl: 24, slo-ttw: 500}".to_string(),
            profiled("v"),
            "no service class is defined for model \"meta/llama\"",
        ),
        (
            premium(24.0),
            va("ns", "v", "v", 10.0),
            "variant v: profile still learning: inter-token latency: not observed yet",
        ),
    ];
    for (classes, variant, why) in cases {
        let mut w = World::new();
        w.hybrid = Some(hybrid(&classes));
        let d = after_a_measured_rate(&mut w, &variant, 10.0, 0.1);
        let plan = d.model_based.as_ref().expect("HYBRID mode");
        assert_eq!(plan.abstains.as_deref(), Some(why));
        assert_eq!(plan.unattainable, why.contains("unattainable"));
        assert_eq!(plan.planned, None);
        assert_eq!(
            (d.desired_replicas, d.basis),
            (1, Basis::Analysis(Reason::Steady))
        );
    }
}

#[test]
fn capacity_only_mode_shows_no_plan() {
    let mut w = World::new();
    let d = after_a_measured_rate(&mut w, &profiled("v"), 10.0, 0.1);
    assert_eq!(d.model_based, None);
    assert_eq!(d.desired_replicas, 1);
}

#[test]
fn a_profile_learned_from_the_pods_counters_is_planned_with() {
    let mut w = World::new();
    w.hybrid = Some(hybrid(&premium(24.0)));
    let v = [va("ns", "v", "v", 10.0)];
    w.counts("v", 1, 1);
    let mut engine = Engine::default();
    let mut sample = serving(100.0, 0.1);
    let mut last = None;
    // A second at a time: the batch and the prompts vary, ten requests
    // start and ten finish, every latency on the simulator's lines.
    for step in 0..40 {
        let batch = f64::from(1 + step % 20);
        let prompt = 500.0 + 50.0 * f64::from(step % 21);
        let signals = &mut sample.models[0];
        signals.requests_running = batch;
        let c = signals.counters.as_mut().expect("counters");
        let itl_ms = 10.0 + 0.2 * batch;
        let tokens = batch * 1000.0 / itl_ms;
        c.itl_seconds_count += tokens;
        c.itl_seconds_sum += tokens * itl_ms / 1000.0;
        c.ttft_seconds_count += 10.0;
        c.ttft_seconds_sum += 10.0 * (20.0 + 0.1 * prompt) / 1000.0;
        c.prompt_tokens += 10.0 * prompt;
        c.request_success += 10.0;
        c.request_prompt_tokens_sum += 10.0 * MIX.prompt;
        c.request_prompt_tokens_count += 10.0;
        c.request_generation_tokens_sum += 10.0 * MIX.output;
        c.request_generation_tokens_count += 10.0;
        w.pod("ns", "p-0", "v", Some((sample.clone(), Duration::ZERO)));
        let (mut d, _) = w.run(&mut engine, &v);
        last = d.pop();
        w.advance(Duration::from_secs(1));
    }
    let plan = last.and_then(|d| d.model_based).expect("HYBRID mode");
    assert!(plan.fitted, "{plan:?}");
    let profile = plan.profile.expect("a profile");
    let close = |got: f64, want: f64| (got - want).abs() <= 0.01 * want;
    assert!(
        close(profile.itl.intercept, 10.0) && close(profile.itl.slope, 0.2),
        "{profile:?}"
    );
    assert!(
        close(profile.prefill.intercept, 20.0) && close(profile.prefill.slope, 0.1),
        "{profile:?}"
    );
    assert!(plan.planned.is_some(), "{plan:?}");
}

#[test]
fn a_running_variant_still_learning_holds_the_models_plan_and_one_at_zero_does_not() {
    let plan_with = |unprofiled_replicas: u32| {
        let mut w = World::new();
        w.hybrid = Some(hybrid(&premium(24.0)));
        let v = [profiled("known"), va("ns", "new", "new", 5.0)];
        w.counts("known", 1, 1)
            .counts("new", unprofiled_replicas, unprofiled_replicas);
        if unprofiled_replicas > 0 {
            w.pod(
                "ns",
                "n-0",
                "new",
                Some((serving(0.0, 0.1), Duration::ZERO)),
            );
        }
        let mut engine = Engine::default();
        w.pod(
            "ns",
            "k-0",
            "known",
            Some((serving(100.0, 0.1), Duration::ZERO)),
        );
        w.run(&mut engine, &v);
        w.advance(Duration::from_secs(6));
        w.pod(
            "ns",
            "k-0",
            "known",
            Some((serving(160.0, 0.1), Duration::ZERO)),
        );
        let (decisions, _) = w.run(&mut engine, &v);
        decisions
            .into_iter()
            .map(|d| (d.variant.name.clone(), d.model_based.expect("HYBRID mode")))
            .collect::<BTreeMap<_, _>>()
    };
    // The cheaper variant runs but has no profile: the plan would give all
    // the load to the other one.
    let waiting = plan_with(1);
    for plan in waiting.values() {
        assert_eq!(plan.planned, None);
        assert_eq!(
            plan.abstains.as_deref(),
            Some("variant new: profile still learning: inter-token latency: not observed yet")
        );
    }
    // At zero it has nothing to learn from: the other one is planned.
    let planned = plan_with(0);
    assert!(
        planned["known"].planned.is_some_and(|n| n > 1),
        "{planned:?}"
    );
    assert_eq!(planned["new"].planned, None);
}
