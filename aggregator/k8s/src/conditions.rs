//! `metav1.Condition` bookkeeping: the condition types and reasons a
//! VariantAutoscaling carries, and how a new set is merged into the old one so
//! `lastTransitionTime` moves only when a condition's status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const TARGET_RESOLVED: &str = "TargetResolved";
pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
pub const OPTIMIZATION_READY: &str = "OptimizationReady";
/// True while the variant cannot take what its model needs (its reason is a
/// `LimitReason`), as the HPA's condition of that name.
pub const SCALING_LIMITED: &str = "ScalingLimited";
/// HYBRID mode only: whether the model-based side planned the variant, or
/// why it abstains.
pub const MODEL_BASED_PLAN: &str = "ModelBasedPlan";

/// Stable reasons, as WVA names them where it has a name.
pub mod reason {
    pub const TARGET_FOUND: &str = "TargetFound";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const TARGET_READY: &str = "TargetReady";
    pub const DEPLOYMENT_NOT_FOUND: &str = "DeploymentNotFound";
    pub const METRICS_FOUND: &str = "MetricsFound";
    pub const METRICS_MISSING: &str = "MetricsMissing";
    pub const METRICS_STALE: &str = "MetricsStale";
    pub const PROMETHEUS_ERROR: &str = "PrometheusError";
    pub const POD_SCRAPING_ERROR: &str = "PodScrapingError";
    pub const METRICS_SOURCE_ERROR: &str = "MetricsSourceError";
    pub const OPTIMIZATION_SUCCEEDED: &str = "OptimizationSucceeded";
    pub const OPTIMIZATION_FAILED: &str = "OptimizationFailed";
    pub const INVALID_CONFIGURATION: &str = "InvalidConfiguration";
    pub const AWAITING_ANALYSIS: &str = "AwaitingAnalysis";
    pub const NOT_LIMITED: &str = "NotLimited";
    pub const PLANNED: &str = "Planned";
    pub const PLAN_ABSTAINS: &str = "PlanAbstains";
    /// A lone request already misses an objective of the model's class.
    pub const OBJECTIVES_UNATTAINABLE: &str = "ObjectivesUnattainable";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// One condition as the controller wants it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl Wanted {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Wanted {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions to write: `wanted` in its order, each keeping the previous
/// `lastTransitionTime` when its status did not change, then any condition of
/// another type that someone else set, untouched.
pub fn merge(
    previous: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = wanted
        .iter()
        .map(|w| {
            let before = previous.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match before {
                Some(c) if c.status == w.status.as_str() => c.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: w.type_.to_string(),
                status: w.status.as_str().to_string(),
                reason: w.reason.to_string(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    out.extend(
        previous
            .iter()
            .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
            .cloned(),
    );
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[Wanted::new(
                READY,
                Status::False,
                reason::DEPLOYMENT_NOT_FOUND,
                "gone",
            )],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));

        // Same status, new reason and message: the transition time stays.
        let same = merge(
            &first,
            &[Wanted::new(
                READY,
                Status::False,
                reason::INVALID_CONFIGURATION,
                "bad",
            )],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time, at(100));
        assert_eq!(same[0].reason, reason::INVALID_CONFIGURATION);
        assert_eq!(same[0].message, "bad");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(
            &same,
            &[Wanted::new(READY, Status::True, reason::TARGET_READY, "ok")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped[0].status, "True");
        assert_eq!(flipped[0].last_transition_time, at(300));
    }

    #[test]
    fn foreign_conditions_are_kept_after_ours() {
        let foreign = Condition {
            type_: "Audited".into(),
            status: "True".into(),
            reason: "ByHand".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(5),
        };
        let merged = merge(
            std::slice::from_ref(&foreign),
            &[Wanted::new(READY, Status::True, reason::TARGET_READY, "")],
            None,
            &at(10),
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].type_, READY);
        assert_eq!(merged[1], foreign);
    }

    #[test]
    fn find_returns_the_condition_of_a_type() {
        let merged = merge(
            &[],
            &[
                Wanted::new(TARGET_RESOLVED, Status::True, reason::TARGET_FOUND, ""),
                Wanted::new(READY, Status::True, reason::TARGET_READY, ""),
            ],
            None,
            &at(1),
        );
        assert_eq!(find(&merged, READY).unwrap().reason, reason::TARGET_READY);
        assert!(find(&merged, METRICS_AVAILABLE).is_none());
    }
}
