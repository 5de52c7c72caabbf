//! Scaling targets for workloads that are not vLLM: a worker Deployment
//! scaled on a signal its pods' agents forward (a queue depth read from an
//! exporter, say), the way the HPA scales on an `AverageValue` target.
//!
//! A target is declared by annotations on a HorizontalPodAutoscaler (in
//! the variants file, or later in the cluster): the HPA's `scaleTargetRef`
//! is the workload, its `minReplicas`/`maxReplicas` bound the answer, and
//! the annotations name the signal and the value each pod should carry.
//! KEDA copies a ScaledObject's annotations into the HPA it creates, so the
//! same annotations on a ScaledObject declare the same target.

use std::collections::BTreeMap;

use serde::Serialize;

/// The signal to scale on, as named by the agents' `--signal NAME=…`.
pub const SIGNAL_ANNOTATION: &str = "wva.llmd.ai/signal";
/// How much of the signal one pod should carry: the HPA's `AverageValue`.
pub const TARGET_ANNOTATION: &str = "wva.llmd.ai/target-per-pod";
/// How the pods' values make the workload's total: `sum` (each pod
/// reports its own share, the default) or `max` (every pod reads the same
/// shared value, a queue's depth, so adding them would count it twice).
pub const ACROSS_ANNOTATION: &str = "wva.llmd.ai/signal-across-pods";
pub const HPA_API_VERSION: &str = "autoscaling/v2";
pub const HPA_KIND: &str = "HorizontalPodAutoscaler";
/// The HPA's default tolerance: a ratio of total to capacity within 10 %
/// of 1 keeps the current replicas.
pub const TOLERANCE: f64 = 0.1;

/// How the values of a workload's pods combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Across {
    Sum,
    Max,
}

impl Across {
    pub fn as_str(self) -> &'static str {
        match self {
            Across::Sum => "sum",
            Across::Max => "max",
        }
    }

    /// The total of `values`; `None` when there are none.
    pub fn total(self, values: impl IntoIterator<Item = f64>) -> Option<f64> {
        values.into_iter().fold(None, |acc, v| {
            Some(match (self, acc) {
                (_, None) => v,
                (Across::Sum, Some(a)) => a + v,
                (Across::Max, Some(a)) => a.max(v),
            })
        })
    }
}

/// What a workload scales on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalTarget {
    pub signal: String,
    pub target_per_pod: f64,
    pub across: Across,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl SignalTarget {
    /// The replicas the HPA would want for `total` with `current` replicas:
    /// `ceil(total / target)`, unless the usage ratio (the average per pod
    /// over the target) is within the tolerance of 1, bounded by the HPA's
    /// limits. Whether the upper bound cut it is returned too.
    pub fn desired(&self, total: f64, current: u32) -> (u32, bool) {
        let wanted = (total / self.target_per_pod).ceil().max(0.0);
        let ratio = total / (f64::from(current) * self.target_per_pod);
        let within_tolerance = current > 0 && (ratio - 1.0).abs() <= TOLERANCE;
        let raw = if within_tolerance {
            current
        } else {
            // Saturates: a huge total is at most the maximum anyway.
            wanted as u32
        };
        let bounded = raw.clamp(self.min_replicas, self.max_replicas);
        (bounded, raw > self.max_replicas)
    }
}

/// An annotation or field of a scaling target that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    pub field: &'static str,
    pub problem: String,
}

/// Reads a target from an HPA's annotations and limits; `Ok(None)` when the
/// signal annotation is absent (an HPA wva does not compute for).
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
    min_replicas: Option<i64>,
    max_replicas: Option<i64>,
) -> Result<Option<SignalTarget>, TargetError> {
    let fail = |field, problem: String| Err(TargetError { field, problem });
    let Some(signal) = annotations.get(SIGNAL_ANNOTATION) else {
        return Ok(None);
    };
    let signal = signal.trim();
    if !wva_proto::is_signal_name(signal) {
        return fail(
            "metadata.annotations[wva.llmd.ai/signal]",
            format!(
                "{signal:?} must be a signal name as the agents' --signal give it ([a-z_][a-z0-9_]*, at most {} bytes)",
                wva_proto::MAX_SIGNAL_NAME_BYTES
            ),
        );
    }
    let Some(target) = annotations.get(TARGET_ANNOTATION) else {
        return fail(
            "metadata.annotations[wva.llmd.ai/target-per-pod]",
            "is required beside wva.llmd.ai/signal (the value one pod should carry)".to_string(),
        );
    };
    let target_per_pod = match target.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 => t,
        _ => {
            return fail(
                "metadata.annotations[wva.llmd.ai/target-per-pod]",
                format!("{target:?} must be a number above 0"),
            );
        }
    };
    let across = match annotations.get(ACROSS_ANNOTATION).map(|a| a.trim()) {
        None | Some("sum") => Across::Sum,
        Some("max") => Across::Max,
        Some(other) => {
            return fail(
                "metadata.annotations[wva.llmd.ai/signal-across-pods]",
                format!("{other:?} must be \"sum\" or \"max\""),
            );
        }
    };
    let min_replicas = match min_replicas {
        None => 1,
        Some(n) if (1..=i64::from(i32::MAX)).contains(&n) => n as u32,
        Some(n) => return fail("spec.minReplicas", format!("{n} must be at least 1")),
    };
    let max_replicas = match max_replicas {
        None => return fail("spec.maxReplicas", "is required".to_string()),
        Some(n) if n >= i64::from(min_replicas) && n <= i64::from(i32::MAX) => n as u32,
        Some(n) => {
            return fail(
                "spec.maxReplicas",
                format!("{n} must be at least minReplicas ({min_replicas})"),
            );
        }
    };
    Ok(Some(SignalTarget {
        signal: signal.to_string(),
        target_per_pod,
        across,
        min_replicas,
        max_replicas,
    }))
}

/// What a workload's decision scaled on, for its outputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSignal {
    #[serde(flatten)]
    pub target: SignalTarget,
    /// The workload's total, when a pod reported the signal fresh.
    pub total: Option<f64>,
    /// Pods whose fresh sample carried the signal.
    pub reporting: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn target(per_pod: f64, min: u32, max: u32) -> SignalTarget {
        SignalTarget {
            signal: "jobs".into(),
            target_per_pod: per_pod,
            across: Across::Sum,
            min_replicas: min,
            max_replicas: max,
        }
    }

    #[test]
    fn desired_is_the_hpas_average_value_rule() {
        let t = target(5.0, 1, 20);
        // ceil(37 / 5) = 8, far from 2.
        assert_eq!(t.desired(37.0, 2), (8, false));
        // 7 / 5 → 2 from 4: down.
        assert_eq!(t.desired(7.0, 4), (2, false));
        // 23 over 4 pods is 1.15 times the target: up to ceil(4.6).
        assert_eq!(t.desired(23.0, 4), (5, false));
        // 52 over 10 pods is 1.04 times the target, within the tolerance:
        // 10 stay, though ceil(52 / 5) is 11. 57 is 1.14 times: 12.
        assert_eq!(t.desired(52.0, 10), (10, false));
        assert_eq!(t.desired(57.0, 10), (12, false));
        assert_eq!(t.desired(45.0, 10), (10, false));
        assert_eq!(t.desired(44.0, 10), (9, false));
        // Exactly 1.1 is just outside, in floating point as in the HPA.
        assert_eq!(t.desired(11.0, 2), (3, false));
        // From zero replicas the tolerance does not apply.
        assert_eq!(t.desired(1.0, 0), (1, false));
    }

    #[test]
    fn desired_stays_within_the_hpas_limits() {
        let t = target(5.0, 2, 6);
        assert_eq!(t.desired(0.0, 3), (2, false));
        assert_eq!(t.desired(100.0, 3), (6, true));
        assert_eq!(t.desired(f64::MAX, 3), (6, true));
    }

    #[test]
    fn pods_values_sum_or_take_the_largest() {
        assert_eq!(Across::Sum.total([3.0, 4.0]), Some(7.0));
        assert_eq!(Across::Max.total([3.0, 4.0, 2.0]), Some(4.0));
        assert_eq!(Across::Sum.total([]), None);
    }

    #[test]
    fn annotations_declare_a_target() {
        let a = annotations(&[
            (SIGNAL_ANNOTATION, "jobs"),
            (TARGET_ANNOTATION, "2.5"),
            (ACROSS_ANNOTATION, "max"),
        ]);
        assert_eq!(
            from_annotations(&a, None, Some(10)).unwrap(),
            Some(SignalTarget {
                signal: "jobs".into(),
                target_per_pod: 2.5,
                across: Across::Max,
                min_replicas: 1,
                max_replicas: 10,
            })
        );
        assert_eq!(from_annotations(&BTreeMap::new(), None, None), Ok(None));
    }

    #[test]
    fn wrong_annotations_say_which_and_why() {
        let error = |pairs: &[(&str, &str)], min, max| {
            let e = from_annotations(&annotations(pairs), min, max).unwrap_err();
            format!("{} {}", e.field, e.problem)
        };
        let jobs = (SIGNAL_ANNOTATION, "jobs");
        assert_eq!(
            error(&[jobs], None, Some(3)),
            "metadata.annotations[wva.llmd.ai/target-per-pod] is required beside wva.llmd.ai/signal (the value one pod should carry)"
        );
        assert_eq!(
            error(&[jobs, (TARGET_ANNOTATION, "0")], None, Some(3)),
            "metadata.annotations[wva.llmd.ai/target-per-pod] \"0\" must be a number above 0"
        );
        assert_eq!(
            error(
                &[(SIGNAL_ANNOTATION, "Jobs"), (TARGET_ANNOTATION, "1")],
                None,
                Some(3)
            ),
            "metadata.annotations[wva.llmd.ai/signal] \"Jobs\" must be a signal name as the agents' --signal give it ([a-z_][a-z0-9_]*, at most 63 bytes)"
        );
        assert_eq!(
            error(
                &[jobs, (TARGET_ANNOTATION, "1"), (ACROSS_ANNOTATION, "avg")],
                None,
                Some(3)
            ),
            "metadata.annotations[wva.llmd.ai/signal-across-pods] \"avg\" must be \"sum\" or \"max\""
        );
        assert_eq!(
            error(&[jobs, (TARGET_ANNOTATION, "1")], None, None),
            "spec.maxReplicas is required"
        );
        assert_eq!(
            error(&[jobs, (TARGET_ANNOTATION, "1")], Some(4), Some(3)),
            "spec.maxReplicas 3 must be at least minReplicas (4)"
        );
        assert_eq!(
            error(&[jobs, (TARGET_ANNOTATION, "1")], Some(0), Some(3)),
            "spec.minReplicas 0 must be at least 1"
        );
    }
}
