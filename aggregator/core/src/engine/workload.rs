//! A workload scaled on a forwarded signal: the HPA's `AverageValue` rule
//! over the total its pods report, with the same freshness and safety net
//! as a model's variants.

use super::Engine;
use super::reporting::{Reporting, derived_counts};
use crate::decision::{Basis, DataState, Decision, LimitReason, Saturation, ScalingEvent};
use crate::variants::Variant;
use crate::workload::{SignalTarget, WorkloadSignal};

impl Engine {
    /// Decides one workload from its pods' fresh values of its signal; a
    /// workload none of whose pods reports the signal fresh holds its value.
    pub(super) fn decide_workload(
        &mut self,
        inputs: &super::Inputs<'_>,
        reporting: &Reporting<'_, '_>,
        (va, target): (&Variant, &SignalTarget),
        events: &mut Vec<ScalingEvent>,
    ) -> Decision {
        let key = va.key();
        let pods = reporting.pods_of(va);
        // Counted by the cluster when it knows the workload, else by the
        // pods that report (a local actuator runs no workloads).
        let counts = inputs
            .replicas
            .and_then(|map| map.get(&key).copied())
            .unwrap_or_else(|| derived_counts(&pods));
        let fresh: Vec<(f64, std::time::Instant)> = pods
            .iter()
            .filter_map(|pod| pod.fresh_signal(&target.signal, inputs.now))
            .collect();
        let total = target.across.total(fresh.iter().map(|(v, _)| *v));
        let oldest = fresh.iter().map(|(_, at)| *at).min();
        let (desired, basis, limit, data) = match total {
            Some(total) => {
                self.safety_net.release(&key);
                let (desired, capped) = target.desired(total, counts.current);
                let data = if (fresh.len() as u32) < counts.ready {
                    DataState::Partial
                } else {
                    DataState::Fresh
                };
                let limit = capped.then_some(LimitReason::AtMaxReplicas);
                (desired, Basis::Signal, limit, data)
            }
            None => {
                let previous = self.previous.get(&key).copied();
                let value = previous.unwrap_or(counts.current).max(target.min_replicas);
                let (desired, basis) = self.safety_net.hold(&key, value, previous, counts);
                let data = if counts.ready == 0 {
                    DataState::Idle
                } else {
                    DataState::Missing
                };
                (desired, basis, None, data)
            }
        };
        self.remember(&key, counts, (desired, basis), events);
        Decision {
            change_reason: self.change_reasons.get(&key).copied(),
            source_failure: inputs.failures.get(&key).cloned(),
            variant: key,
            model_id: String::new(),
            accelerator: String::new(),
            cost: va.cost,
            current_replicas: counts.current,
            ready_replicas: counts.ready,
            desired_replicas: desired,
            basis,
            limit,
            data,
            data_age: oldest.map(|t| inputs.now.saturating_duration_since(t)),
            inputs: Vec::new(),
            saturation: Saturation::default(),
            model_based: None,
            workload: Some(WorkloadSignal {
                target: target.clone(),
                total,
                reporting: fresh.len() as u32,
            }),
            decided_at: inputs.wall,
        }
    }
}
