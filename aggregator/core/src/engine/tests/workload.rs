//! Workloads scaled on a forwarded signal.

use wva_proto::v1::NamedValue;

use super::*;
use crate::workload::{Across, SignalTarget};

/// `ns/worker`, scaled on `jobs` at 5 per pod, 1 to 10 replicas.
fn worker(across: Across) -> Variant {
    Variant {
        model_id: String::new(),
        accelerator: String::new(),
        signal: Some(SignalTarget {
            signal: "jobs".into(),
            target_per_pod: 5.0,
            across,
            min_replicas: 1,
            max_replicas: 10,
        }),
        ..va("ns", "worker", "worker", 0.0)
    }
}

fn signals(pairs: &[(&str, f64)]) -> Sample {
    Sample {
        seq: 1,
        up: true,
        signals: pairs
            .iter()
            .map(|(name, value)| NamedValue {
                name: name.to_string(),
                value: *value,
            })
            .collect(),
        ..Sample::default()
    }
}

impl World {
    fn worker_pod(&mut self, pod: &str, sample: Sample, age: Duration) -> &mut Self {
        self.pod("ns", pod, "worker", Some((sample, age)))
    }
}

#[test]
fn a_workload_wants_its_total_over_its_target_per_pod() {
    let mut w = World::new();
    w.counts("worker", 2, 2)
        .worker_pod("w-0", signals(&[("jobs", 20.0)]), Duration::ZERO)
        .worker_pod(
            "w-1",
            signals(&[("jobs", 17.0), ("other", 90.0)]),
            Duration::ZERO,
        );
    let d = w.decide(worker(Across::Sum));
    assert_eq!(d.desired_replicas, 8, "ceil(37 / 5)");
    assert_eq!(d.basis, Basis::Signal);
    assert_eq!(d.data, DataState::Fresh);
    let signal = d.workload.as_ref().unwrap();
    assert_eq!((signal.total, signal.reporting), (Some(37.0), 2));

    // Every pod reads the same queue: its depth once, not twice.
    let d = w.decide(worker(Across::Max));
    assert_eq!(d.desired_replicas, 4, "ceil(20 / 5)");
}

#[test]
fn a_workload_keeps_its_replicas_within_the_tolerance_and_its_limits() {
    let mut w = World::new();
    w.counts("worker", 4, 4)
        .worker_pod("w-0", signals(&[("jobs", 23.0)]), Duration::ZERO);
    // 23 over 4 pods is 15 % over the target: up to ceil(4.6).
    assert_eq!(w.decide(worker(Across::Sum)).desired_replicas, 5);
    // 19 is 5 % under: 4 stay.
    w.worker_pod("w-0", signals(&[("jobs", 19.0)]), Duration::ZERO);
    assert_eq!(w.decide(worker(Across::Sum)).desired_replicas, 4);
    // An empty queue goes to the HPA's minimum, a deep one to its maximum.
    w.worker_pod("w-0", signals(&[("jobs", 0.0)]), Duration::ZERO);
    assert_eq!(w.decide(worker(Across::Sum)).desired_replicas, 1);
    w.worker_pod("w-0", signals(&[("jobs", 500.0)]), Duration::ZERO);
    let d = w.decide(worker(Across::Sum));
    assert_eq!(
        (d.desired_replicas, d.limit),
        (10, Some(LimitReason::AtMaxReplicas))
    );
}

#[test]
fn a_workload_without_fresh_values_holds_what_it_had() {
    let mut w = World::new();
    let mut engine = Engine::default();
    let workload = [worker(Across::Max)];
    w.counts("worker", 2, 2)
        .worker_pod("w-0", signals(&[("jobs", 30.0)]), Duration::ZERO);
    let (d, events) = w.run(&mut engine, &workload);
    assert_eq!(d[0].desired_replicas, 6);
    assert_eq!(events[0].reason, "signal");

    // The exporter lost its queue: the signal is absent, not zero.
    w.worker_pod("w-0", signals(&[]), Duration::ZERO);
    let (d, events) = w.run(&mut engine, &workload);
    assert_eq!(
        (d[0].desired_replicas, d[0].basis, d[0].data),
        (
            6,
            Basis::SafetyNet(Fallback::PreviousDesired),
            DataState::Missing
        )
    );
    assert!(events.is_empty());
    assert_eq!(d[0].workload.as_ref().unwrap().total, None);

    // A stale value is no value either.
    w.worker_pod("w-0", signals(&[("jobs", 0.0)]), STALENESS * 2);
    let (d, _) = w.run(&mut engine, &workload);
    assert_eq!(d[0].desired_replicas, 6);

    // Back: the value decides again.
    w.worker_pod("w-0", signals(&[("jobs", 0.0)]), Duration::ZERO);
    let (d, events) = w.run(&mut engine, &workload);
    assert_eq!((d[0].desired_replicas, d[0].basis), (1, Basis::Signal));
    assert_eq!((events[0].from, events[0].to), (6, 1));
}

#[test]
fn a_workload_is_decided_beside_the_models_and_apart_from_them() {
    let mut w = World::new();
    w.counts("worker", 1, 1)
        .counts("chat", 1, 1)
        .worker_pod("w-0", signals(&[("jobs", 12.0)]), Duration::ZERO)
        .reporting("c-0", "chat", SATURATED);
    let variants = [worker(Across::Sum), va("ns", "chat", "chat", 10.0)];
    let (d, _) = w.run(&mut Engine::default(), &variants);
    assert_eq!(desired(&d), [("chat", 2), ("worker", 3)]);
    assert!(d[0].workload.is_none());
    // The worker's pod is no input of the model's analysis.
    assert_eq!(pods_of(&d[0]), ["c-0"]);
}
