//! Decision gauges in WVA's names (`wva_*`) and, unless disabled, the legacy
//! `inferno_*` names, for the HPA through Prometheus.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decision::Decision;
use crate::engine::ScalingEvent;
use crate::variants::VariantKey;

/// `variant_name`, `namespace`, `accelerator_type` and, when set, `controller_instance`.
type Labels = Vec<(&'static str, String)>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// One series family under each published name prefix.
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
    fn register(registry: &mut Registry, prefixes: &[&str], name: &str, help: &str) -> Self {
        let families = prefixes
            .iter()
            .map(|prefix| {
                let family = Family::<Labels, M>::default();
                registry.register(format!("{prefix}_{name}"), help, family.clone());
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
    /// Label sets published per variant, so vanished variants lose their series.
    published: Mutex<HashMap<VariantKey, Labels>>,
}

impl DecisionGauges {
    pub fn register(
        registry: &mut Registry,
        legacy_names: bool,
        controller_instance: Option<String>,
    ) -> Self {
        let prefixes: &[&str] = if legacy_names {
            &["wva", "inferno"]
        } else {
            &["wva"]
        };
        let data_age = Family::<Labels, F64Gauge>::default();
        registry.register(
            "wva_variant_metrics_age_seconds",
            "Age of the oldest pod sample behind the variant's current decision; absent while the variant has no fresh data",
            data_age.clone(),
        );
        DecisionGauges {
            controller_instance,
            desired: Names::register(
                registry,
                prefixes,
                "desired_replicas",
                "Desired replicas of the variant",
            ),
            current: Names::register(
                registry,
                prefixes,
                "current_replicas",
                "Current replicas of the variant",
            ),
            ratio: Names::register(
                registry,
                prefixes,
                "desired_ratio",
                "Desired over current replicas (desired when current is 0)",
            ),
            scaling: Names::register(
                registry,
                prefixes,
                "replica_scaling",
                "Changes of desired replicas, by direction and reason",
            ),
            data_age,
            published: Mutex::new(HashMap::new()),
        }
    }

    fn labels(&self, variant: &VariantKey, accelerator: &str) -> Labels {
        let mut labels = vec![
            ("variant_name", variant.name.clone()),
            ("namespace", variant.namespace.clone()),
            ("accelerator_type", accelerator.to_string()),
        ];
        if let Some(instance) = &self.controller_instance {
            labels.push(("controller_instance", instance.clone()));
        }
        labels
    }

    /// Publishes a full set of decisions; series of variants absent from it are removed.
    pub fn publish(&self, decisions: &[Decision], events: &[ScalingEvent]) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::with_capacity(decisions.len());
        for d in decisions {
            let labels = self.labels(&d.variant, &d.accelerator);
            if let Some(old) = published.remove(&d.variant)
                && old != labels
            {
                self.remove(&old);
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
    }
}
