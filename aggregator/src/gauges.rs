//! Decision gauges in WVA's names (`wva_*`) and, unless disabled, the legacy
//! `inferno_*` names, for the HPA through Prometheus.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wva_core::decision::{Decision, ScalingEvent};
use wva_core::variants::VariantKey;

/// `variant_name`, `namespace`, `accelerator_type` and, when set, `controller_instance`.
type Labels = Vec<(&'static str, String)>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// A decision series' name in WVA's contract and its legacy `inferno_` name.
struct Contract {
    name: &'static str,
    legacy: &'static str,
    help: &'static str,
}

const DESIRED_REPLICAS: Contract = Contract {
    name: "wva_desired_replicas",
    legacy: "inferno_desired_replicas",
    help: "Desired replicas of the variant",
};
const CURRENT_REPLICAS: Contract = Contract {
    name: "wva_current_replicas",
    legacy: "inferno_current_replicas",
    help: "Current replicas of the variant",
};
const DESIRED_RATIO: Contract = Contract {
    name: "wva_desired_ratio",
    legacy: "inferno_desired_ratio",
    help: "Desired over current replicas (desired when current is 0)",
};
/// A counter: exposed as `wva_replica_scaling_total` (and `inferno_…`).
const REPLICA_SCALING: Contract = Contract {
    name: "wva_replica_scaling",
    legacy: "inferno_replica_scaling",
    help: "Changes of desired replicas, by direction and reason",
};
const METRICS_AGE: &str = "wva_variant_metrics_age_seconds";

/// The series of workloads scaled on a signal: wva's own names, labelled
/// `namespace`, `workload`, `signal` (and `controller_instance`), apart
/// from the variants' contract series.
#[derive(Debug, Default)]
struct WorkloadFamilies {
    desired: Family<Labels, F64Gauge>,
    current: Family<Labels, F64Gauge>,
    /// Absent while no pod reports the signal fresh.
    total: Family<Labels, F64Gauge>,
}

impl WorkloadFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = WorkloadFamilies::default();
        registry.register(
            "wva_workload_desired_replicas",
            "Desired replicas of a workload scaled on a forwarded signal",
            families.desired.clone(),
        );
        registry.register(
            "wva_workload_current_replicas",
            "Current replicas of a workload scaled on a forwarded signal",
            families.current.clone(),
        );
        registry.register(
            "wva_workload_signal",
            "The workload's total of the signal it scales on; absent while no pod reports it fresh",
            families.total.clone(),
        );
        families
    }

    fn set(&self, labels: &Labels, d: &Decision, total: Option<f64>) {
        self.desired
            .get_or_create(labels)
            .set(f64::from(d.desired_replicas));
        self.current
            .get_or_create(labels)
            .set(f64::from(d.current_replicas));
        match total {
            Some(total) => {
                self.total.get_or_create(labels).set(total);
            }
            None => {
                self.total.remove(labels);
            }
        }
    }

    fn remove(&self, labels: &Labels) {
        self.desired.remove(labels);
        self.current.remove(labels);
        self.total.remove(labels);
    }
}

/// One series family under each published name.
#[derive(Debug)]
struct Names<M> {
    families: Vec<Family<Labels, M>>,
}

impl<
    M: prometheus_client::metrics::TypedMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
> Names<M>
where
    M: prometheus_client::encoding::EncodeMetric,
{
    fn register(registry: &mut Registry, contract: &Contract, legacy: bool) -> Self {
        let both = [contract.name, contract.legacy];
        let names = if legacy { &both[..] } else { &both[..1] };
        let families = names
            .iter()
            .map(|name| {
                let family = Family::<Labels, M>::default();
                registry.register(*name, contract.help, family.clone());
                family
            })
            .collect();
        Names { families }
    }

    fn each(&self, labels: &Labels, f: impl Fn(&M)) {
        for family in &self.families {
            f(&family.get_or_create(labels));
        }
    }

    fn remove(&self, labels: &Labels) {
        for family in &self.families {
            family.remove(labels);
        }
    }
}

#[derive(Debug)]
pub struct DecisionGauges {
    controller_instance: Option<String>,
    desired: Names<F64Gauge>,
    current: Names<F64Gauge>,
    ratio: Names<F64Gauge>,
    scaling: Names<Counter>,
    data_age: Family<Labels, F64Gauge>,
    workloads: WorkloadFamilies,
    /// Label sets published per variant, so vanished variants lose their series.
    published: Mutex<HashMap<VariantKey, Labels>>,
}

impl DecisionGauges {
    pub fn register(
        registry: &mut Registry,
        legacy_names: bool,
        controller_instance: Option<String>,
    ) -> Self {
        let data_age = Family::<Labels, F64Gauge>::default();
        registry.register(
            METRICS_AGE,
            "Age of the oldest pod sample behind the variant's current decision; absent while the variant has no fresh data",
            data_age.clone(),
        );
        DecisionGauges {
            controller_instance,
            desired: Names::register(registry, &DESIRED_REPLICAS, legacy_names),
            current: Names::register(registry, &CURRENT_REPLICAS, legacy_names),
            ratio: Names::register(registry, &DESIRED_RATIO, legacy_names),
            scaling: Names::register(registry, &REPLICA_SCALING, legacy_names),
            data_age,
            workloads: WorkloadFamilies::register(registry),
            published: Mutex::new(HashMap::new()),
        }
    }

    fn labels(&self, d: &Decision) -> Labels {
        let variant = &d.variant;
        let mut labels = match &d.workload {
            Some(w) => vec![
                ("namespace", variant.namespace.clone()),
                ("workload", variant.name.clone()),
                ("signal", w.target.signal.clone()),
            ],
            None => vec![
                ("variant_name", variant.name.clone()),
                ("namespace", variant.namespace.clone()),
                ("accelerator_type", d.accelerator.clone()),
            ],
        };
        if let Some(instance) = &self.controller_instance {
            labels.push(("controller_instance", instance.clone()));
        }
        labels
    }

    /// Publishes a full set of decisions; series of variants absent from it are removed.
    pub fn publish(&self, decisions: &[Decision], events: &[ScalingEvent]) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::with_capacity(decisions.len());
        let mut workloads = HashSet::new();
        for d in decisions {
            let labels = self.labels(d);
            if let Some(old) = published.remove(&d.variant)
                && old != labels
            {
                self.remove(&old);
            }
            if let Some(workload) = &d.workload {
                workloads.insert(&d.variant);
                self.workloads.set(&labels, d, workload.total);
                next.insert(d.variant.clone(), labels);
                continue;
            }
            self.desired.each(&labels, |g| {
                g.set(f64::from(d.desired_replicas));
            });
            self.current.each(&labels, |g| {
                g.set(f64::from(d.current_replicas));
            });
            self.ratio.each(&labels, |g| {
                g.set(d.ratio());
            });
            match d.data_age {
                Some(age) => {
                    self.data_age.get_or_create(&labels).set(age.as_secs_f64());
                }
                None => {
                    self.data_age.remove(&labels);
                }
            }
            next.insert(d.variant.clone(), labels);
        }
        for (_, stale) in published.drain() {
            self.remove(&stale);
        }
        for e in events {
            let Some(base) = next.get(&e.variant) else {
                continue;
            };
            // Workloads' changes are not the variants' contract series.
            if workloads.contains(&e.variant) {
                continue;
            }
            let mut labels = base.clone();
            labels.push(("direction", e.direction().to_string()));
            labels.push(("reason", e.reason.to_string()));
            self.scaling.each(&labels, |c| {
                c.inc();
            });
        }
        *published = next;
    }

    fn remove(&self, labels: &Labels) {
        self.desired.remove(labels);
        self.current.remove(labels);
        self.ratio.remove(labels);
        self.data_age.remove(labels);
        self.workloads.remove(labels);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use prometheus_client::encoding::text::encode;

    use super::*;
    use wva_core::analysis::model::Reason;
    use wva_core::decision::{Basis, DataState};

    fn decision(name: &str, accelerator: &str, current: u32, desired: u32) -> Decision {
        Decision {
            variant: VariantKey::new("ns", name),
            model_id: "m".to_string(),
            accelerator: accelerator.to_string(),
            cost: 10.0,
            current_replicas: current,
            ready_replicas: current,
            desired_replicas: desired,
            basis: Basis::Analysis(Reason::Steady),
            change_reason: None,
            source_failure: None,
            limit: None,
            data: DataState::Fresh,
            data_age: None,
            inputs: Vec::new(),
            saturation: Default::default(),
            model_based: None,
            decided_at: SystemTime::UNIX_EPOCH,
            workload: None,
        }
    }

    fn event(name: &str, from: u32, to: u32, reason: &'static str) -> ScalingEvent {
        ScalingEvent {
            variant: VariantKey::new("ns", name),
            from,
            to,
            reason,
        }
    }

    fn setup(legacy: bool, instance: Option<&str>) -> (Registry, DecisionGauges) {
        let mut registry = Registry::default();
        let gauges = DecisionGauges::register(&mut registry, legacy, instance.map(str::to_string));
        (registry, gauges)
    }

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    /// The sample lines (not `#` comments) of the exposition.
    fn samples(registry: &Registry) -> Vec<String> {
        render(registry)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The value of the series with exactly this name and label text.
    fn value(registry: &Registry, series: &str) -> Option<f64> {
        samples(registry).iter().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    const L4: &str = r#"{variant_name="v",namespace="ns",accelerator_type="L4"}"#;

    #[test]
    fn publishes_wva_and_legacy_series_with_variant_labels() {
        let (registry, gauges) = setup(true, None);
        gauges.publish(&[decision("v", "L4", 2, 3)], &[]);
        for prefix in ["wva", "inferno"] {
            assert_eq!(
                value(&registry, &format!("{prefix}_desired_replicas{L4}")),
                Some(3.0)
            );
            assert_eq!(
                value(&registry, &format!("{prefix}_current_replicas{L4}")),
                Some(2.0)
            );
            assert_eq!(
                value(&registry, &format!("{prefix}_desired_ratio{L4}")),
                Some(1.5)
            );
        }
        let text = render(&registry);
        assert!(text.contains("# TYPE wva_desired_replicas gauge"), "{text}");
        assert!(
            text.contains("# TYPE inferno_desired_ratio gauge"),
            "{text}"
        );
    }

    #[test]
    fn ratio_is_desired_when_current_is_zero() {
        let (registry, gauges) = setup(false, None);
        gauges.publish(&[decision("v", "L4", 0, 2)], &[]);
        assert_eq!(
            value(&registry, &format!("wva_desired_ratio{L4}")),
            Some(2.0)
        );
    }

    #[test]
    fn controller_instance_label_is_added_when_set() {
        let (registry, gauges) = setup(true, Some("blue"));
        gauges.publish(
            &[decision("v", "L4", 1, 1)],
            &[event("v", 2, 1, "spare_capacity")],
        );
        let labels =
            r#"{variant_name="v",namespace="ns",accelerator_type="L4",controller_instance="blue"}"#;
        for prefix in ["wva", "inferno"] {
            assert_eq!(
                value(&registry, &format!("{prefix}_desired_replicas{labels}")),
                Some(1.0)
            );
        }
        let counter = r#"wva_replica_scaling_total{variant_name="v",namespace="ns",accelerator_type="L4",controller_instance="blue",direction="down",reason="spare_capacity"}"#;
        assert_eq!(value(&registry, counter), Some(1.0));
        assert_eq!(value(&registry, &format!("wva_desired_replicas{L4}")), None);
    }

    #[test]
    fn legacy_names_are_absent_when_disabled() {
        let (registry, gauges) = setup(false, None);
        gauges.publish(
            &[decision("v", "L4", 1, 2)],
            &[event("v", 1, 2, "saturation")],
        );
        let text = render(&registry);
        assert!(!text.contains("inferno"), "{text}");
        assert_eq!(
            value(&registry, &format!("wva_desired_replicas{L4}")),
            Some(2.0)
        );
    }

    #[test]
    fn vanished_variant_loses_its_series() {
        let (registry, gauges) = setup(true, None);
        gauges.publish(&[decision("v", "L4", 1, 1), decision("w", "L4", 2, 2)], &[]);
        assert_eq!(
            value(
                &registry,
                r#"inferno_current_replicas{variant_name="w",namespace="ns",accelerator_type="L4"}"#
            ),
            Some(2.0)
        );

        gauges.publish(&[decision("v", "L4", 1, 1)], &[]);
        let gauge_lines: Vec<String> = samples(&registry)
            .into_iter()
            .filter(|l| !l.contains("_scaling_total"))
            .collect();
        assert!(
            gauge_lines
                .iter()
                .all(|l| !l.contains(r#"variant_name="w""#)),
            "{gauge_lines:#?}"
        );
        assert_eq!(
            gauge_lines
                .iter()
                .filter(|l| l.contains(r#"variant_name="v""#))
                .count(),
            6,
            "three series under two names: {gauge_lines:#?}"
        );

        gauges.publish(&[], &[]);
        assert_eq!(samples(&registry), Vec::<String>::new());
    }

    #[test]
    fn changed_accelerator_replaces_the_series() {
        let (registry, gauges) = setup(false, None);
        gauges.publish(&[decision("v", "L4", 1, 1)], &[]);
        gauges.publish(&[decision("v", "H100", 1, 1)], &[]);
        let h100 = r#"{variant_name="v",namespace="ns",accelerator_type="H100"}"#;
        assert_eq!(
            value(&registry, &format!("wva_desired_replicas{h100}")),
            Some(1.0)
        );
        assert_eq!(value(&registry, &format!("wva_desired_replicas{L4}")), None);
        assert_eq!(value(&registry, &format!("wva_current_replicas{L4}")), None);
    }

    #[test]
    fn values_follow_the_latest_decision() {
        let (registry, gauges) = setup(false, None);
        gauges.publish(&[decision("v", "L4", 1, 2)], &[]);
        gauges.publish(&[decision("v", "L4", 2, 2)], &[]);
        assert_eq!(
            value(&registry, &format!("wva_current_replicas{L4}")),
            Some(2.0)
        );
        assert_eq!(
            value(&registry, &format!("wva_desired_ratio{L4}")),
            Some(1.0)
        );
    }

    #[test]
    fn scaling_counter_counts_by_direction_and_reason() {
        let (registry, gauges) = setup(true, None);
        let series = |prefix: &str, direction: &str, reason: &str| {
            format!(
                r#"{prefix}_replica_scaling_total{{variant_name="v",namespace="ns",accelerator_type="L4",direction="{direction}",reason="{reason}"}}"#
            )
        };
        let d = [decision("v", "L4", 1, 2)];
        gauges.publish(&d, &[event("v", 1, 2, "saturation")]);
        gauges.publish(&d, &[]);
        gauges.publish(&d, &[event("v", 2, 3, "saturation")]);
        gauges.publish(&d, &[event("v", 3, 2, "safety_net")]);
        for prefix in ["wva", "inferno"] {
            assert_eq!(
                value(&registry, &series(prefix, "up", "saturation")),
                Some(2.0)
            );
            assert_eq!(
                value(&registry, &series(prefix, "down", "safety_net")),
                Some(1.0)
            );
            assert_eq!(
                value(&registry, &series(prefix, "down", "saturation")),
                None
            );
        }
        let text = render(&registry);
        assert!(
            text.contains("# TYPE wva_replica_scaling counter"),
            "{text}"
        );
    }

    #[test]
    fn events_of_unpublished_variants_are_not_counted() {
        let (registry, gauges) = setup(false, None);
        gauges.publish(
            &[decision("v", "L4", 1, 1)],
            &[event("ghost", 1, 2, "saturation")],
        );
        let text = render(&registry);
        assert!(!text.contains("ghost"), "{text}");
        assert!(!text.contains("wva_replica_scaling_total{"), "{text}");
    }

    #[test]
    fn data_age_is_published_only_with_fresh_data() {
        let (registry, gauges) = setup(false, None);
        let mut d = decision("v", "L4", 1, 1);
        d.data_age = Some(Duration::from_millis(1500));
        gauges.publish(std::slice::from_ref(&d), &[]);
        let series = format!("wva_variant_metrics_age_seconds{L4}");
        assert_eq!(value(&registry, &series), Some(1.5));
        d.data_age = None;
        gauges.publish(&[d], &[]);
        assert_eq!(value(&registry, &series), None);
    }

    #[test]
    fn a_workload_has_its_own_series() {
        use wva_core::workload::{Across, SignalTarget, WorkloadSignal};
        let (registry, gauges) = setup(true, None);
        let mut worker = decision("worker", "", 2, 8);
        worker.basis = Basis::Signal;
        worker.workload = Some(WorkloadSignal {
            target: SignalTarget {
                signal: "jobs".into(),
                target_per_pod: 5.0,
                across: Across::Max,
                min_replicas: 1,
                max_replicas: 10,
            },
            total: Some(37.0),
            reporting: 1,
        });
        gauges.publish(&[worker.clone()], &[event("worker", 2, 8, "signal")]);
        let labels = r#"{namespace="ns",workload="worker",signal="jobs"}"#;
        let series = |name: &str| value(&registry, &format!("{name}{labels}"));
        assert_eq!(series("wva_workload_desired_replicas"), Some(8.0));
        assert_eq!(series("wva_workload_current_replicas"), Some(2.0));
        assert_eq!(series("wva_workload_signal"), Some(37.0));
        // None of the variants' contract series, nor their counter.
        let text = render(&registry);
        assert!(!text.contains("worker\",accelerator_type"), "{text}");
        assert!(!text.contains("wva_replica_scaling_total{"), "{text}");

        // The signal gone, its series goes; the decision's stay.
        worker.workload.as_mut().unwrap().total = None;
        gauges.publish(&[worker], &[]);
        assert_eq!(series("wva_workload_signal"), None);
        assert_eq!(series("wva_workload_desired_replicas"), Some(8.0));
        // The workload gone, all of them go.
        gauges.publish(&[], &[]);
        assert_eq!(series("wva_workload_desired_replicas"), None);
    }
}
