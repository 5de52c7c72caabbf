use std::collections::BTreeMap;

use wva_proto::v1::{Hello, ModelSignals, Role, Sample};

use super::*;
use crate::analysis::model::Reason;
use crate::decision::{FailedSource, Fallback, LimitReason};
use crate::variants::ScaleTarget;

mod hybrid;
mod workload;

const MODEL: &str = "meta/llama";
const STALENESS: Duration = Duration::from_secs(5);
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(600);
/// Loads under WVA's default thresholds (kv 0.80, queue 5).
const IDLE: (f64, f64) = (0.0, 0.0);
const SATURATED: (f64, f64) = (0.9, 0.0);

fn va(namespace: &str, name: &str, target: &str, cost: f64) -> Variant {
    Variant {
        name: name.to_string(),
        namespace: namespace.to_string(),
        model_id: MODEL.to_string(),
        target: ScaleTarget {
            kind: "Deployment".to_string(),
            name: target.to_string(),
            api_version: None,
        },
        cost,
        accelerator: "L4".to_string(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        signal: None,
    }
}

fn sample(model: &str, (kv, queue): (f64, f64)) -> Sample {
    Sample {
        seq: 1,
        up: true,
        models: vec![ModelSignals {
            model: model.to_string(),
            kv_cache_usage: kv,
            requests_waiting: queue,
            ..ModelSignals::default()
        }],
        ..Sample::default()
    }
}

/// The default thresholds and steps, with scale-downs taken at once.
fn without_window() -> SaturationConfigSet {
    let data = BTreeMap::from([(
        "default".to_string(),
        "scaleDownStabilizationSeconds: 0".to_string(),
    )]);
    SaturationConfigSet::from_data(&data).unwrap()
}

/// A test world: pods, replica counts and a clock.
struct World {
    now: Instant,
    pods: HashMap<PodKey, PodEntry>,
    replicas: Option<HashMap<VariantKey, ReplicaCounts>>,
    config: SaturationConfigSet,
    scale_to_zero: Option<ScaleToZeroConfigSet>,
    hybrid: Option<HybridConfig>,
}

impl World {
    fn new() -> Self {
        World {
            now: Instant::now() + Duration::from_secs(60),
            pods: HashMap::new(),
            replicas: None,
            config: without_window(),
            scale_to_zero: None,
            hybrid: None,
        }
    }

    /// A pod whose agent says it belongs to `variant`, with a sample that
    /// arrived `age` before `now` (none when `sample` is `None`).
    fn pod(
        &mut self,
        namespace: &str,
        pod: &str,
        variant: &str,
        sample: Option<(Sample, Duration)>,
    ) -> &mut Self {
        let key = PodKey {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        };
        let entry = PodEntry {
            stream_id: self.pods.len() as u64 + 1,
            hello: Hello {
                pod: pod.to_string(),
                namespace: namespace.to_string(),
                variant: variant.to_string(),
                ..Hello::default()
            },
            registered_at: self.now - Duration::from_secs(30),
            latest: sample.map(|(s, age)| (s, self.now - age)),
        };
        self.pods.insert(key, entry);
        self
    }

    /// A pod of `variant` in `ns` reporting `load` for [`MODEL`] just now.
    fn reporting(&mut self, pod: &str, variant: &str, load: (f64, f64)) -> &mut Self {
        self.pod(
            "ns",
            pod,
            variant,
            Some((sample(MODEL, load), Duration::ZERO)),
        )
    }

    fn counts(&mut self, variant: &str, current: u32, ready: u32) -> &mut Self {
        self.floored(variant, (current, ready), 0)
    }

    /// Counts of a target whose autoscaler cannot go below `floor`.
    fn floored(&mut self, variant: &str, (current, ready): (u32, u32), floor: u32) -> &mut Self {
        self.replicas.get_or_insert_with(HashMap::new).insert(
            VariantKey::new("ns", variant),
            ReplicaCounts {
                current,
                ready,
                floor,
                ceiling: None,
            },
        );
        self
    }

    /// Sets the most replicas the target's autoscaler can set.
    fn ceiling(&mut self, variant: &str, max: u32) -> &mut Self {
        let counts = self.replicas.as_mut().expect("counts first");
        counts
            .get_mut(&VariantKey::new("ns", variant))
            .expect("counts first")
            .ceiling = Some(max);
        self
    }

    /// Moves the clock on; every sample is then as old as `by`.
    fn advance(&mut self, by: Duration) -> &mut Self {
        self.now += by;
        self
    }

    fn run(&self, engine: &mut Engine, variants: &[Variant]) -> (Vec<Decision>, Vec<ScalingEvent>) {
        self.run_failing(engine, variants, &HashMap::new())
    }

    /// Like [`World::run`], with polled sources failing for some variants.
    fn run_failing(
        &self,
        engine: &mut Engine,
        variants: &[Variant],
        failures: &HashMap<VariantKey, SourceFailure>,
    ) -> (Vec<Decision>, Vec<ScalingEvent>) {
        engine.evaluate(&Inputs {
            now: self.now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            variants,
            pods: &self.pods,
            replicas: self.replicas.as_ref(),
            config: &self.config,
            staleness: STALENESS,
            convergence_timeout: CONVERGENCE_TIMEOUT,
            scale_to_zero: self.scale_to_zero.as_ref(),
            failures,
            hybrid: self.hybrid.as_ref(),
        })
    }

    /// The single decision of a one-variant evaluation with a fresh engine.
    fn decide(&self, variant: Variant) -> Decision {
        let (mut decisions, _) = self.run(&mut Engine::default(), &[variant]);
        assert_eq!(decisions.len(), 1);
        decisions.remove(0)
    }
}

fn pods_of(d: &Decision) -> Vec<&str> {
    d.inputs.iter().map(|l| &*l.pod).collect()
}

fn desired(decisions: &[Decision]) -> Vec<(&str, u32)> {
    decisions
        .iter()
        .map(|d| (d.variant.name.as_str(), d.desired_replicas))
        .collect()
}

#[test]
fn a_scale_down_goes_to_a_variant_its_autoscaler_can_shrink() {
    let variants = [va("ns", "l4", "l4", 10.0), va("ns", "h100", "h100", 40.0)];
    let idle_model = |floor: u32| {
        let mut w = World::new();
        w.reporting("l4-0", "l4", IDLE)
            .reporting("l4-1", "l4", IDLE)
            .reporting("h100-0", "h100", IDLE)
            .counts("l4", 2, 2)
            .floored("h100", (1, 1), floor);
        let (decisions, _) = w.run(&mut Engine::default(), &variants);
        decisions
            .iter()
            .map(|d| (d.variant.name.clone(), d.desired_replicas))
            .collect::<Vec<_>>()
    };
    // Idle, one replica is enough. Without a floor the expensive variant
    // goes first, to zero, then the cheap one to the replica it keeps.
    assert_eq!(idle_model(0), [("h100".into(), 0), ("l4".into(), 1)]);
    // An HPA with minReplicas 1 cannot take it there: the model would
    // wait for that step forever. The cheap variant shrinks instead.
    assert_eq!(idle_model(1), [("h100".into(), 1), ("l4".into(), 1)]);
}

#[test]
fn pods_match_by_namespace_and_target_or_va_name() {
    let mut w = World::new();
    w.reporting("by-target", "llama-l4-deploy", IDLE)
        .reporting("by-va-name", "llama-l4", IDLE)
        .reporting("unrelated", "something-else", IDLE)
        .pod(
            "other-ns",
            "elsewhere",
            "llama-l4-deploy",
            Some((sample(MODEL, IDLE), Duration::ZERO)),
        );
    let d = w.decide(va("ns", "llama-l4", "llama-l4-deploy", 10.0));
    assert_eq!(pods_of(&d), ["by-target", "by-va-name"]);
    assert_eq!((d.current_replicas, d.ready_replicas), (2, 2));
    assert_eq!(d.data, DataState::Fresh);
}

#[test]
fn a_pod_of_a_targeted_deployment_never_counts_for_a_va_of_that_name() {
    // VA "a" scales Deployment "b"; VA "b" scales Deployment "c". A pod of
    // Deployment "b" feeds "a" only.
    let mut w = World::new();
    w.reporting("b-0", "b", IDLE).reporting("c-0", "c", IDLE);
    let (decisions, _) = w.run(
        &mut Engine::default(),
        &[va("ns", "a", "b", 10.0), va("ns", "b", "c", 20.0)],
    );
    let inputs: Vec<(&str, Vec<&str>)> = decisions
        .iter()
        .map(|d| (d.variant.name.as_str(), pods_of(d)))
        .collect();
    assert_eq!(inputs, [("a", vec!["b-0"]), ("b", vec!["c-0"])]);
}

#[test]
fn same_variant_name_in_two_namespaces_stays_apart() {
    let mut w = World::new();
    w.reporting("a-0", "v", IDLE)
        .reporting("a-1", "v", IDLE)
        .pod(
            "prod",
            "b-0",
            "v",
            Some((sample(MODEL, IDLE), Duration::ZERO)),
        );
    let (decisions, _) = w.run(
        &mut Engine::default(),
        &[va("prod", "v", "v", 10.0), va("ns", "v", "v", 10.0)],
    );
    let got: Vec<_> = decisions
        .iter()
        .map(|d| (d.variant.to_string(), pods_of(d)))
        .collect();
    assert_eq!(
        got,
        [
            ("ns/v".to_string(), vec!["a-0", "a-1"]),
            ("prod/v".to_string(), vec!["b-0"]),
        ],
        "decisions are ordered by variant key and see only their namespace"
    );
}

#[test]
fn data_state_compares_fresh_loads_with_ready_replicas() {
    let cases = [
        (
            "no ready replica is idle even with reports",
            (2, 0),
            2,
            DataState::Idle,
        ),
        ("every ready replica reports", (2, 2), 2, DataState::Fresh),
        (
            "one of two ready replicas reports",
            (2, 2),
            1,
            DataState::Partial,
        ),
        (
            "ready replicas but no report",
            (2, 2),
            0,
            DataState::Missing,
        ),
        (
            "pending replica does not need to report",
            (3, 2),
            2,
            DataState::Fresh,
        ),
    ];
    for (case, (current, ready), reporting, want) in cases {
        let mut w = World::new();
        w.counts("v", current, ready);
        for i in 0..reporting {
            w.reporting(&format!("p-{i}"), "v", IDLE);
        }
        let d = w.decide(va("ns", "v", "v", 10.0));
        assert_eq!(d.data, want, "{case}");
        assert_eq!(
            (d.current_replicas, d.ready_replicas),
            (current, ready),
            "{case}"
        );
    }
}

#[test]
fn counts_are_derived_from_connected_pods_without_replica_source() {
    let mut w = World::new();
    w.reporting("fresh", "v", IDLE)
        .pod("ns", "silent", "v", None)
        .pod(
            "ns",
            "other-model",
            "v",
            Some((sample("other", IDLE), Duration::ZERO)),
        );
    let d = w.decide(va("ns", "v", "v", 10.0));
    assert_eq!((d.current_replicas, d.ready_replicas), (3, 3));
    assert_eq!(
        pods_of(&d),
        ["fresh"],
        "only the pod reporting this model is an input"
    );
    assert_eq!(d.data, DataState::Partial);

    let d = World::new().decide(va("ns", "v", "v", 10.0));
    assert_eq!(
        (d.current_replicas, d.ready_replicas, d.data),
        (0, 0, DataState::Idle)
    );
}

#[test]
fn replica_source_overrides_pod_count() {
    let mut w = World::new();
    w.reporting("p-0", "v", IDLE).counts("v", 4, 3);
    let d = w.decide(va("ns", "v", "v", 10.0));
    assert_eq!((d.current_replicas, d.ready_replicas), (4, 3));
    assert_eq!(d.data, DataState::Partial);

    // A variant the source does not know has no replicas, whatever reports.
    let d = w.decide(va("ns", "unknown", "unknown", 10.0));
    assert_eq!(
        (d.current_replicas, d.ready_replicas, d.data),
        (0, 0, DataState::Idle)
    );
}

#[test]
fn stale_and_failed_samples_are_ignored() {
    let just_stale = STALENESS + Duration::from_millis(1);
    let down = Sample {
        up: false,
        ..sample(MODEL, IDLE)
    };
    for (case, sample, age) in [
        ("stale", sample(MODEL, IDLE), just_stale),
        ("up = false", down, Duration::ZERO),
    ] {
        let mut w = World::new();
        w.pod("ns", "p-0", "v", Some((sample, age)))
            .counts("v", 1, 1);
        let d = w.decide(va("ns", "v", "v", 10.0));
        assert_eq!(d.data, DataState::Missing, "{case}");
        assert!(d.inputs.is_empty(), "{case}");
        assert_eq!(d.data_age, None, "{case}");
    }
}

#[test]
fn sample_at_the_staleness_bound_is_used_and_age_is_the_oldest() {
    let mut w = World::new();
    w.pod("ns", "p-0", "v", Some((sample(MODEL, IDLE), STALENESS)))
        .pod(
            "ns",
            "p-1",
            "v",
            Some((sample(MODEL, IDLE), Duration::from_secs(1))),
        );
    let d = w.decide(va("ns", "v", "v", 10.0));
    assert_eq!(d.data, DataState::Fresh);
    assert_eq!(pods_of(&d), ["p-0", "p-1"]);
    assert_eq!(d.data_age, Some(STALENESS));
}

#[test]
fn safety_net_holds_current_replicas_without_a_previous_decision() {
    let mut w = World::new();
    w.counts("v", 3, 3);
    let (decisions, events) = w.run(&mut Engine::default(), &[va("ns", "v", "v", 10.0)]);
    let d = &decisions[0];
    assert_eq!(d.data, DataState::Missing);
    assert_eq!(d.desired_replicas, 3);
    assert_eq!(d.basis, Basis::SafetyNet(Fallback::CurrentReplicas));
    assert_eq!(events, []);
}

#[test]
fn safety_net_holds_the_previous_desired_value() {
    let key = VariantKey::new("ns", "v");
    let mut engine = Engine::with_previous(HashMap::from([(key, 5)]));
    let mut w = World::new();
    w.counts("v", 3, 3);
    let (decisions, events) = w.run(&mut engine, &[va("ns", "v", "v", 10.0)]);
    assert_eq!(decisions[0].desired_replicas, 5);
    assert_eq!(
        decisions[0].basis,
        Basis::SafetyNet(Fallback::PreviousDesired)
    );
    assert_eq!(events, [], "holding the previous value is no change");
}

#[test]
fn safety_net_never_drops_the_cheapest_below_its_minimum() {
    let variants = [
        va("ns", "cheap", "cheap", 10.0),
        va("ns", "pricey", "pricey", 30.0),
    ];
    let previous = || {
        HashMap::from([
            (VariantKey::new("ns", "cheap"), 0),
            (VariantKey::new("ns", "pricey"), 0),
        ])
    };
    let mut w = World::new();
    w.counts("cheap", 2, 2).counts("pricey", 2, 2);

    let (decisions, events) = w.run(&mut Engine::with_previous(previous()), &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);
    assert!(decisions.iter().all(|d| d.data == DataState::Missing));
    assert_eq!(
        events,
        [ScalingEvent {
            variant: VariantKey::new("ns", "cheap"),
            from: 0,
            to: 1,
            reason: "safety_net",
        }]
    );

    // A model idle past its retention may be held at zero.
    w.scale_to_zero = Some(scale_to_zero_after("0s"));
    let (decisions, _) = w.run(&mut Engine::with_previous(previous()), &variants);
    assert_eq!(desired(&decisions), [("cheap", 0), ("pricey", 0)]);
}

#[test]
fn cheapest_is_chosen_per_model_with_ties_broken_by_name() {
    let mut other_model = va("ns", "solo", "solo", 50.0);
    other_model.model_id = "other/model".to_string();
    let variants = [
        va("ns", "b", "b", 10.0),
        va("ns", "a", "a", 10.0),
        other_model,
    ];
    let previous = variants.iter().map(|v| (v.key(), 0)).collect();
    let mut w = World::new();
    for v in &variants {
        w.counts(&v.name, 1, 1);
    }
    let (decisions, _) = w.run(&mut Engine::with_previous(previous), &variants);
    assert_eq!(desired(&decisions), [("a", 1), ("b", 0), ("solo", 1)]);
}

#[test]
fn min_replicas_stops_analysis_from_scaling_the_cheapest_to_zero() {
    // The pricey variant is at zero but a terminating pod still reports:
    // two idle replicas make a scale-down safe, and only the cheapest has one.
    let variants = [
        va("ns", "cheap", "cheap", 10.0),
        va("ns", "pricey", "pricey", 30.0),
    ];
    let mut w = World::new();
    w.reporting("c-0", "cheap", IDLE)
        .reporting("p-0", "pricey", IDLE)
        .counts("cheap", 1, 1)
        .counts("pricey", 0, 0);
    let (decisions, events) = w.run(&mut Engine::default(), &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::Steady));
    assert_eq!(events, []);

    // Scale to zero on, but the model has not been idle long enough.
    w.scale_to_zero = Some(scale_to_zero_after("10m"));
    let (decisions, _) = w.run(&mut Engine::default(), &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);
}

fn scale_to_zero_after(retention: &str) -> ScaleToZeroConfigSet {
    let data = BTreeMap::from([(
        crate::config::scale_to_zero::DEFAULTS_KEY.to_string(),
        format!("retention_period: {retention}"),
    )]);
    ScaleToZeroConfigSet::from_data(&data).unwrap()
}

fn with_successes(successes: f64, running: f64) -> Sample {
    let mut s = sample(MODEL, IDLE);
    s.models[0].requests_running = running;
    s.models[0].counters = Some(wva_proto::v1::Counters {
        request_success: successes,
        ..Default::default()
    });
    s
}

#[test]
fn a_model_without_requests_for_its_retention_goes_to_zero() {
    let variants = [
        va("ns", "cheap", "cheap", 10.0),
        va("ns", "pricey", "pricey", 30.0),
    ];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.scale_to_zero = Some(scale_to_zero_after("5m"));
    w.counts("cheap", 1, 1).counts("pricey", 0, 0);
    let report = |w: &mut World, successes: f64| {
        w.pod(
            "ns",
            "c-0",
            "cheap",
            Some((with_successes(successes, 0.0), Duration::ZERO)),
        );
    };
    report(&mut w, 10.0);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);

    // A request succeeded after 4 minutes: the idle period restarts.
    w.now += Duration::from_secs(240);
    report(&mut w, 11.0);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);

    // 4 more quiet minutes: not yet.
    w.now += Duration::from_secs(240);
    report(&mut w, 11.0);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions)[0], ("cheap", 1));

    // 5 quiet minutes since the last success: zero, and it says why.
    w.now += Duration::from_secs(60);
    report(&mut w, 11.0);
    let (decisions, events) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("cheap", 0), ("pricey", 0)]);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::ScaleToZero));
    assert_eq!(events[0].reason, "scale_to_zero");
}

/// An endpoint picker in `ns` holding `queued` requests for [`MODEL`].
fn epp(w: &mut World, queued: f64) {
    let sample = Sample {
        seq: 1,
        up: true,
        epp: Some(wva_proto::v1::EppSignals {
            queues: vec![wva_proto::v1::EppModelQueue {
                model: MODEL.to_string(),
                queue_size: queued,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Sample::default()
    };
    w.pod("ns", "epp-0", "gateway-epp", Some((sample, Duration::ZERO)));
    let entry = w
        .pods
        .values_mut()
        .find(|e| e.hello.pod == "epp-0")
        .unwrap();
    entry.hello.role = Role::Epp as i32;
}

#[test]
fn requests_queued_at_the_gateway_bring_the_cheapest_variant_back_from_zero() {
    let variants = [
        va("ns", "cheap", "cheap", 10.0),
        va("ns", "pricey", "pricey", 30.0),
    ];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.scale_to_zero = Some(scale_to_zero_after("1m"));
    w.counts("cheap", 0, 0).counts("pricey", 0, 0);
    epp(&mut w, 0.0);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("cheap", 0), ("pricey", 0)]);

    epp(&mut w, 3.0);
    let (decisions, events) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("cheap", 1), ("pricey", 0)]);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::ScaleFromZero));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "scale_from_zero");

    // A stale EPP sample is no demand.
    w.now += STALENESS + Duration::from_secs(1);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_ne!(decisions[0].basis, Basis::Analysis(Reason::ScaleFromZero));
}

#[test]
fn a_queue_for_another_model_or_namespace_wakes_nothing() {
    let variants = [va("ns", "v", "v", 10.0)];
    let mut w = World::new();
    w.scale_to_zero = Some(scale_to_zero_after("0s"));
    w.counts("v", 0, 0);
    let sample = Sample {
        seq: 1,
        up: true,
        epp: Some(wva_proto::v1::EppSignals {
            queues: vec![wva_proto::v1::EppModelQueue {
                model: "other/model".to_string(),
                queue_size: 9.0,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Sample::default()
    };
    w.pod(
        "elsewhere",
        "epp-1",
        "epp",
        Some((sample.clone(), Duration::ZERO)),
    );
    w.pod("ns", "epp-0", "epp", Some((sample, Duration::ZERO)));
    for entry in w.pods.values_mut() {
        entry.hello.role = Role::Epp as i32;
    }
    let (decisions, _) = w.run(&mut Engine::default(), &variants);
    assert_eq!(desired(&decisions), [("v", 0)]);
}

#[test]
fn running_requests_keep_a_model_awake_and_a_disabled_model_never_sleeps() {
    let variants = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.scale_to_zero = Some(scale_to_zero_after("1m"));
    w.counts("v", 1, 1);
    for _ in 0..3 {
        w.pod(
            "ns",
            "v-0",
            "v",
            Some((with_successes(0.0, 1.0), Duration::ZERO)),
        );
        let (decisions, _) = w.run(&mut engine, &variants);
        assert_eq!(desired(&decisions), [("v", 1)]);
        w.now += Duration::from_secs(60);
    }

    let data = BTreeMap::from([(
        "m".to_string(),
        format!("model_id: {MODEL}\nenable_scale_to_zero: false\nretention_period: 1s"),
    )]);
    w.scale_to_zero = Some(ScaleToZeroConfigSet::from_data(&data).unwrap());
    w.pod(
        "ns",
        "v-0",
        "v",
        Some((with_successes(0.0, 0.0), Duration::ZERO)),
    );
    w.now += Duration::from_secs(3600);
    let (decisions, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&decisions), [("v", 1)]);
}

#[test]
fn fresh_data_releases_the_safety_net() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.counts("v", 1, 1);
    let (decisions, _) = w.run(&mut engine, &v);
    assert!(matches!(decisions[0].basis, Basis::SafetyNet(_)));

    w.reporting("p-0", "v", IDLE);
    let (decisions, events) = w.run(&mut engine, &v);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::Steady));
    assert_eq!(decisions[0].desired_replicas, 1);
    assert_eq!(events, []);
}

#[test]
fn events_are_emitted_only_when_the_decision_changes() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.reporting("p-0", "v", SATURATED).counts("v", 1, 1);

    let (decisions, events) = w.run(&mut engine, &v);
    assert_eq!(decisions[0].desired_replicas, 2);
    assert_eq!(
        decisions[0].basis,
        Basis::Analysis(Reason::ScaleUpSaturation)
    );
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.from, e.to, e.reason, e.direction()),
        (1, 2, "saturation", "up")
    );

    // Same inputs: the step is in flight, the decision is held, no new event.
    let (decisions, events) = w.run(&mut engine, &v);
    assert_eq!(decisions[0].desired_replicas, 2);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::Converging));
    assert_eq!(events, []);

    // The step is done and the load is spread: steady at 2, still no event.
    w.pods.clear();
    w.reporting("p-0", "v", (0.5, 0.0))
        .reporting("p-1", "v", (0.5, 0.0))
        .counts("v", 2, 2);
    let (decisions, events) = w.run(&mut engine, &v);
    assert_eq!(desired(&decisions), [("v", 2)]);
    assert_eq!(events, []);
}

#[test]
fn a_decision_remembers_why_its_value_last_changed() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.reporting("p-0", "v", SATURATED).counts("v", 1, 1);
    let (decisions, _) = w.run(&mut engine, &v);
    assert_eq!(decisions[0].desired_replicas, 2);
    assert_eq!(decisions[0].change_reason, Some("saturation"));
    // Held while the Deployment converges: the basis changes, the reason stays.
    let (decisions, _) = w.run(&mut engine, &v);
    assert_eq!(decisions[0].basis, Basis::Analysis(Reason::Converging));
    assert_eq!(decisions[0].change_reason, Some("saturation"));
}

#[test]
fn scale_down_event_goes_down_with_spare_capacity_reason() {
    let mut w = World::new();
    w.reporting("p-0", "v", IDLE)
        .reporting("p-1", "v", IDLE)
        .reporting("p-2", "v", IDLE);
    let (decisions, events) = w.run(&mut Engine::default(), &[va("ns", "v", "v", 10.0)]);
    assert_eq!(desired(&decisions), [("v", 1)]);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.from, e.to, e.reason, e.direction()),
        (3, 1, "spare_capacity", "down")
    );
}

#[test]
fn removed_variant_forgets_its_previous_decision() {
    let a = va("ns", "a", "a", 10.0);
    let b = va("ns", "b", "b", 20.0);
    let mut engine = Engine::with_previous(HashMap::from([(a.key(), 5), (b.key(), 7)]));
    let mut w = World::new();
    w.counts("a", 3, 3).counts("b", 3, 3);

    // b is gone for one evaluation...
    let (decisions, _) = w.run(&mut engine, std::slice::from_ref(&a));
    assert_eq!(desired(&decisions), [("a", 5)]);

    // ...so when it comes back, nothing of its old decision remains.
    let (decisions, _) = w.run(&mut engine, &[a, b]);
    assert_eq!(desired(&decisions), [("a", 5), ("b", 3)]);
    assert_eq!(
        decisions[1].basis,
        Basis::SafetyNet(Fallback::CurrentReplicas)
    );
}

#[test]
fn decision_carries_the_variant_facts() {
    let mut w = World::new();
    w.reporting("p-0", "v", (0.25, 2.0));
    let mut v = va("ns", "v", "v", 12.5);
    v.accelerator = "H100".to_string();
    let d = w.decide(v);
    assert_eq!(d.model_id, MODEL);
    assert_eq!(d.accelerator, "H100");
    assert_eq!(d.cost, 12.5);
    assert_eq!(
        d.decided_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    assert_eq!(
        (d.inputs[0].kv_cache_usage, d.inputs[0].requests_waiting),
        (0.25, 2.0)
    );
}

/// The decisions' `(name, desired, basis, limit)`, for compact assertions.
fn outcome(decisions: &[Decision]) -> Vec<(&str, u32, &'static str, Option<LimitReason>)> {
    decisions
        .iter()
        .map(|d| {
            let name = d.variant.name.as_str();
            (name, d.desired_replicas, d.basis.as_str(), d.limit)
        })
        .collect()
}

#[test]
fn a_step_never_carried_out_stops_holding_its_model_at_the_deadline() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    // Nothing acts on the decision: the target keeps 1 replica.
    w.reporting("p-0", "v", SATURATED).counts("v", 1, 1);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "saturation", None)]);
    // The load leaves, but the step still holds the model...
    w.advance(CONVERGENCE_TIMEOUT - Duration::from_secs(1))
        .reporting("p-0", "v", IDLE);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "converging", None)]);
    // ...until the deadline: the step is abandoned and the decision returns.
    w.advance(Duration::from_secs(1))
        .reporting("p-0", "v", IDLE);
    let (d, events) = w.run(&mut engine, &v);
    assert_eq!(
        outcome(&d),
        [("v", 1, "steady", Some(LimitReason::ScalerNotActing))]
    );
    assert_eq!((events[0].from, events[0].to), (2, 1));
    // A model that needs nothing more lets the variant try again next time.
    w.reporting("p-0", "v", SATURATED);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "saturation", None)]);
}

#[test]
fn a_value_no_scaler_acted_on_never_holds_its_model() {
    // Standalone without an actuator: the variant is decided before any
    // agent connects, then three replicas report a steady load.
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(desired(&d), [("v", 0)]);
    for pod in ["p-0", "p-1", "p-2"] {
        w.reporting(pod, "v", (0.6, 1.0));
    }
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 3, "steady", None)]);
    // Likewise a value from before a manual scale: 3 published, 5 running.
    for pod in ["p-0", "p-1", "p-2", "p-3", "p-4"] {
        w.reporting(pod, "v", (0.6, 1.0));
    }
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 5, "steady", None)]);
}

#[test]
fn a_variant_whose_pods_stay_pending_hands_the_step_to_the_next_one() {
    let variants = [va("ns", "l4", "l4", 10.0), va("ns", "h100", "h100", 30.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.reporting("l4-0", "l4", SATURATED)
        .reporting("h100-0", "h100", SATURATED)
        .counts("l4", 1, 1)
        .counts("h100", 1, 1);
    // Their load (KV 1.8) needs 3 replicas: one more, on the cheaper l4.
    let (d, _) = w.run(&mut engine, &variants);
    assert_eq!(desired(&d), [("h100", 1), ("l4", 2)]);
    // The Deployment took the step, but no GPU is free: the pod stays Pending.
    w.counts("l4", 2, 1);
    let (d, _) = w.run(&mut engine, &variants);
    assert_eq!(
        outcome(&d),
        [
            ("h100", 1, "converging", None),
            ("l4", 2, "converging", None)
        ]
    );
    w.advance(CONVERGENCE_TIMEOUT)
        .reporting("l4-0", "l4", SATURATED)
        .reporting("h100-0", "h100", SATURATED);
    let (d, _) = w.run(&mut engine, &variants);
    // Two replicas report; the pending one is not coming capacity, so the
    // same need (3) goes to h100, and l4 keeps what it asked for.
    assert_eq!(
        outcome(&d),
        [
            ("h100", 2, "saturation", None),
            ("l4", 2, "steady", Some(LimitReason::PodsPending))
        ]
    );
    // Once the pod runs, l4 is an ordinary variant again.
    w.counts("l4", 2, 2).reporting("l4-1", "l4", IDLE);
    let (d, _) = w.run(&mut engine, &variants);
    assert_eq!(d[1].limit, None);
}

#[test]
fn an_hpa_max_replicas_is_a_ceiling_and_the_rest_goes_to_the_next_variant() {
    let variants = [va("ns", "l4", "l4", 10.0), va("ns", "h100", "h100", 30.0)];
    let mut w = World::new();
    w.reporting("l4-0", "l4", SATURATED)
        .reporting("l4-1", "l4", SATURATED)
        .reporting("h100-0", "h100", SATURATED)
        .counts("l4", 2, 2)
        .ceiling("l4", 2)
        .counts("h100", 1, 1);
    let (d, _) = w.run(&mut Engine::default(), &variants);
    assert_eq!(
        outcome(&d),
        [
            ("h100", 2, "saturation", None),
            ("l4", 2, "steady", Some(LimitReason::AtMaxReplicas))
        ]
    );
}

#[test]
fn a_deep_queue_gets_the_replicas_it_needs_in_one_decision() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut w = World::new();
    // 30 waiting under the default thresholds (queue 5, trigger 3): 15
    // replicas would keep 2 waiting each; the default step allows 4 more.
    w.reporting("p-0", "v", (0.5, 30.0)).counts("v", 1, 1);
    let (d, _) = w.run(&mut Engine::default(), &v);
    assert_eq!(desired(&d), [("v", 5)]);
    w.config = SaturationConfigSet::from_data(&BTreeMap::from([(
        "default".to_string(),
        "maxScaleUpReplicas: 20".to_string(),
    )]))
    .unwrap();
    let (d, _) = w.run(&mut Engine::default(), &v);
    assert_eq!(desired(&d), [("v", 15)]);
}

#[test]
fn a_scale_down_waits_for_the_models_window() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.config = SaturationConfigSet::from_data(&BTreeMap::from([(
        "default".to_string(),
        "scaleDownStabilizationSeconds: 60".to_string(),
    )]))
    .unwrap();
    w.reporting("p-0", "v", IDLE)
        .reporting("p-1", "v", IDLE)
        .counts("v", 2, 2);
    let (d, events) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "stabilizing", None)]);
    assert_eq!(events, [], "holding is no change");
    w.advance(Duration::from_secs(59))
        .reporting("p-0", "v", IDLE)
        .reporting("p-1", "v", IDLE);
    assert_eq!(desired(&w.run(&mut engine, &v).0), [("v", 2)]);
    w.advance(Duration::from_secs(1))
        .reporting("p-0", "v", IDLE)
        .reporting("p-1", "v", IDLE);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 1, "spare_capacity", None)]);
}

/// Direction changes of one variant's desired replicas under a steady load
/// of 2.2 replicas' worth of KV and 4 waiting requests, each reading off by
/// up to ±20 %, with an ideal actuator (replicas follow at once), analysed
/// every second for 30 minutes from 4 replicas.
fn directions_under_noise(config: SaturationConfigSet) -> Vec<&'static str> {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.config = config;
    let mut replicas = 4u32;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        0.8 + (seed % 1000) as f64 / 2500.0
    };
    let mut directions = Vec::new();
    for _ in 0..1800 {
        w.pods.clear();
        w.counts("v", replicas, replicas);
        let per = f64::from(replicas);
        for i in 0..replicas {
            let load = (2.2 / per * noise(), 4.0 / per * noise());
            w.reporting(&format!("p-{i}"), "v", load);
        }
        let (d, events) = w.run(&mut engine, &v);
        for e in &events {
            if directions.last() != Some(&e.direction()) {
                directions.push(e.direction());
            }
        }
        replicas = d[0].desired_replicas;
        w.advance(Duration::from_secs(1));
    }
    directions
}

#[test]
fn steady_noisy_load_never_changes_direction() {
    // At 4 replicas the load never asks for a fifth, but a dip often makes
    // 3 look enough, where the next bump asks for 4 again. The window holds
    // 4 through every dip.
    assert_eq!(
        directions_under_noise(SaturationConfigSet::default()),
        Vec::<&str>::new()
    );
    // Without a window, a dip takes the model to 3 and the next bump brings
    // it back; the flap guard then keeps it from doing that again.
    assert_eq!(directions_under_noise(without_window()), ["down", "up"]);
}

#[test]
fn pods_lost_without_replica_counts_hold_the_decision() {
    // Standalone without an actuator: replicas are the pods the source reports.
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.reporting("p-0", "v", (0.5, 1.0))
        .reporting("p-1", "v", (0.5, 1.0));
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(desired(&d), [("v", 2)]);
    // Its pods go silent before the source's failure is known: held.
    w.pods.clear();
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!((d[0].data, d[0].desired_replicas), (DataState::Missing, 2));
    // The failure is known: still held.
    let failure = SourceFailure {
        source: FailedSource::Prometheus,
        error: "timed out".into(),
    };
    let failures = HashMap::from([(v[0].key(), failure)]);
    let (d, events) = w.run_failing(&mut engine, &v, &failures);
    assert_eq!(d[0].data, DataState::Missing);
    assert_eq!(
        (d[0].desired_replicas, d[0].basis),
        (2, Basis::SafetyNet(Fallback::PreviousDesired))
    );
    assert_eq!(events, []);
}

#[test]
fn a_model_configured_for_v2_is_sized_in_tokens_from_the_agents_signals() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut w = World::new();
    w.config = SaturationConfigSet::from_data(&BTreeMap::from([(
        "default".to_string(),
        "analyzerName: saturation\nscaleDownStabilizationSeconds: 0".to_string(),
    )]))
    .unwrap();
    // 800 blocks of 16 tokens, 70 % used, 4 requests of 1000 prompt tokens
    // waiting: 8960 + 4000 tokens of demand over 10 240 of capacity.
    let mut busy = sample(MODEL, (0.7, 4.0));
    let signals = &mut busy.models[0];
    signals.num_gpu_blocks = 800;
    signals.block_size = 16;
    signals.counters = Some(wva_proto::v1::Counters {
        request_prompt_tokens_sum: 10_000.0,
        request_prompt_tokens_count: 10.0,
        ..Default::default()
    });
    w.pod("ns", "p-0", "v", Some((busy, Duration::ZERO)))
        .counts("v", 1, 1);
    let (d, _) = w.run(&mut Engine::default(), &v);
    let tokens = d[0].saturation.tokens.as_ref().expect("V2 measured");
    assert!((tokens.demand_tokens - 12_960.0).abs() < 1e-6, "{tokens:?}");
    assert_eq!(tokens.capacity_tokens, 10_240.0);
    // 12 960 / 0.85 = 15 247: one more replica of 10 240.
    assert_eq!(outcome(&d), [("v", 2, "saturation", None)]);
    // The same model under V1 sees a healthy replica (0.7 < 0.8, 4 < 5)
    // with too little spare queue (1 < 3), and also asks for one more.
    w.config = without_window();
    let (d, _) = w.run(&mut Engine::default(), &v);
    assert!(d[0].saturation.tokens.is_none());
}

#[test]
fn a_scale_down_undone_at_once_is_not_repeated_at_the_same_load() {
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    // Two replicas whose load looks like it fits on one...
    w.reporting("p-0", "v", (0.35, 0.0))
        .reporting("p-1", "v", (0.35, 0.0))
        .counts("v", 2, 2);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 1, "spare_capacity", None)]);
    // ...but on one replica it saturates at once (KV 0.85 in use where
    // 0.7 was): back to two.
    w.pods.clear();
    w.advance(Duration::from_secs(5))
        .reporting("p-0", "v", (0.85, 0.0))
        .counts("v", 1, 1);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "saturation", None)]);
    // A load within 20 % of that (0.7) no longer passes for one replica.
    w.advance(Duration::from_secs(5))
        .reporting("p-0", "v", (0.35, 0.0))
        .reporting("p-1", "v", (0.35, 0.0))
        .counts("v", 2, 2);
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 2, "steady", None)]);
    // A load that fell clearly lets it go.
    w.reporting("p-0", "v", (0.1, 0.0))
        .reporting("p-1", "v", (0.1, 0.0));
    let (d, _) = w.run(&mut engine, &v);
    assert_eq!(outcome(&d), [("v", 1, "spare_capacity", None)]);
}

/// The H100's desired replicas, second by second, while an L4 and an H100
/// replica share a load that starts at 2 req/s and grows by `slope` req/s
/// every second; the KV cache and queue look idle throughout.
fn h100_under_a_load_growing_by(slope: f64) -> Vec<u32> {
    let v = [va("ns", "l4", "l4", 10.0), va("ns", "h100", "h100", 30.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    w.config = SaturationConfigSet::from_data(&BTreeMap::from([(
        "default".to_string(),
        "scaleDownStabilizationSeconds: 20".to_string(),
    )]))
    .unwrap();
    let mut finished_each = 0.0;
    (0..40)
        .map(|s| {
            finished_each += (2.0 + slope * f64::from(s)) / 2.0;
            let sample = || Some((with_successes(finished_each, 1.0), Duration::ZERO));
            w.pod("ns", "p-l4", "l4", sample())
                .pod("ns", "p-h100", "h100", sample())
                .counts("l4", 1, 1)
                .counts("h100", 1, 1);
            let (d, _) = w.run(&mut engine, &v);
            w.advance(Duration::from_secs(1));
            d.iter()
                .find(|d| d.variant.name == "h100")
                .unwrap()
                .desired_replicas
        })
        .collect()
}

#[test]
fn a_model_does_not_scale_down_into_a_rising_load() {
    // A steady load that looks idle lets the H100 go once its first window
    // has passed...
    let steady = h100_under_a_load_growing_by(0.0);
    assert_eq!(steady.iter().position(|d| *d == 0), Some(20), "{steady:?}");
    // ...a ramp keeps it: the L4 alone would have to take all of it.
    let ramp = h100_under_a_load_growing_by(0.5);
    assert!(ramp.iter().all(|d| *d == 1), "{ramp:?}");
}

#[test]
fn an_undo_at_no_measured_arrivals_does_not_hold_the_model_forever() {
    // Long requests: the pods report a completion counter that does not
    // move, so the arrival rate reads 0 while the KV cache fills.
    let v = [va("ns", "v", "v", 10.0)];
    let mut engine = Engine::default();
    let mut w = World::new();
    let mut step = |w: &mut World, kvs: &[f64]| {
        w.pods.clear();
        for (i, kv) in kvs.iter().enumerate() {
            let mut sample = with_successes(7.0, 1.0);
            sample.models[0].kv_cache_usage = *kv;
            w.pod("ns", &format!("p-{i}"), "v", Some((sample, Duration::ZERO)));
        }
        let n = kvs.len() as u32;
        w.counts("v", n, n);
        let (d, _) = w.run(&mut engine, &v);
        w.advance(Duration::from_secs(6));
        outcome(&d)[0].1
    };
    assert_eq!(step(&mut w, &[0.1, 0.1]), 1, "spare capacity");
    assert_eq!(
        step(&mut w, &[0.9]),
        2,
        "saturated: the scale-down is undone"
    );
    // The requests end: nothing says the load is the same as at the undo.
    assert_eq!(step(&mut w, &[0.0, 0.0]), 1);
}
