//! Which Kubernetes Events a status change deserves. Pure: derived from the
//! status before and after, so an event fires once per transition and never
//! for a status that did not move.

use wva_core::decision::{Basis, Decision};

use super::conditions::{
    self, METRICS_AVAILABLE, OPTIMIZATION_READY, READY, SCALING_LIMITED, reason,
};
use super::crd::VariantAutoscalingStatus;

/// One event to publish about a VariantAutoscaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// Stable, CamelCase.
    pub reason: &'static str,
    pub message: String,
}

pub mod event_reason {
    pub const TARGET_FOUND: &str = "TargetFound";
    pub const DEPLOYMENT_NOT_FOUND: &str = "DeploymentNotFound";
    pub const INVALID_CONFIGURATION: &str = "InvalidConfiguration";
    pub const SCALED_UP: &str = "DesiredReplicasIncreased";
    pub const SCALED_DOWN: &str = "DesiredReplicasDecreased";
    pub const SAFETY_NET: &str = "SafetyNetActivated";
    pub const METRICS_MISSING: &str = "MetricsMissing";
    pub const METRICS_STALE: &str = "MetricsStale";
    pub const SOURCE_FAILED: &str = "MetricsSourceFailed";
    pub const SCALING_LIMITED: &str = "ScalingLimited";
}

/// The events for moving from `previous` to `next`; `decision` is what
/// produced `next`, when the analysis did.
pub fn between(
    previous: Option<&VariantAutoscalingStatus>,
    next: &VariantAutoscalingStatus,
    decision: Option<&Decision>,
) -> Vec<Note> {
    let reason_of = |s: Option<&VariantAutoscalingStatus>, type_: &str| {
        s.and_then(|s| conditions::find(&s.conditions, type_))
            .map(|c| c.reason.clone())
    };
    let entered = |type_: &str, wanted: &str| {
        reason_of(Some(next), type_).as_deref() == Some(wanted)
            && reason_of(previous, type_).as_deref() != Some(wanted)
    };
    let message = |type_: &str| {
        conditions::find(&next.conditions, type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let mut notes = Vec::new();
    let mut note = |warning, reason, message| {
        notes.push(Note {
            warning,
            reason,
            message,
        })
    };

    if entered(READY, reason::TARGET_READY) {
        note(false, event_reason::TARGET_FOUND, message(READY));
    }
    if entered(READY, reason::DEPLOYMENT_NOT_FOUND) {
        note(true, event_reason::DEPLOYMENT_NOT_FOUND, message(READY));
    }
    if entered(READY, reason::INVALID_CONFIGURATION) {
        note(true, event_reason::INVALID_CONFIGURATION, message(READY));
    }
    // Metrics problems matter only while the target runs; a missing target
    // already has its own event.
    let running = reason_of(Some(next), READY).as_deref() == Some(reason::TARGET_READY);
    let metrics_false = conditions::find(&next.conditions, METRICS_AVAILABLE)
        .is_some_and(|c| c.status == conditions::Status::False.as_str());
    if running && metrics_false && entered(METRICS_AVAILABLE, reason::METRICS_MISSING) {
        note(
            true,
            event_reason::METRICS_MISSING,
            message(METRICS_AVAILABLE),
        );
    }
    if running && entered(METRICS_AVAILABLE, reason::METRICS_STALE) {
        note(
            true,
            event_reason::METRICS_STALE,
            message(METRICS_AVAILABLE),
        );
    }
    if entered(OPTIMIZATION_READY, reason::OPTIMIZATION_FAILED)
        && decision.is_some_and(|d| matches!(d.basis, Basis::SafetyNet(_)))
    {
        note(true, event_reason::SAFETY_NET, message(OPTIMIZATION_READY));
    }

    // A new limit, or another reason for one.
    let limit = |s: Option<&VariantAutoscalingStatus>| {
        s.and_then(|s| conditions::find(&s.conditions, SCALING_LIMITED))
            .filter(|c| c.status == conditions::Status::True.as_str())
            .map(|c| c.reason.clone())
    };
    if running && limit(Some(next)).is_some() && limit(Some(next)) != limit(previous) {
        note(
            true,
            event_reason::SCALING_LIMITED,
            message(SCALING_LIMITED),
        );
    }

    let before = previous.and_then(|s| s.desired_optimized_alloc.num_replicas);
    let after = next.desired_optimized_alloc.num_replicas;
    if let (Some(from), Some(to), Some(d)) = (before, after, decision)
        && from != to
    {
        let reason = if to > from {
            event_reason::SCALED_UP
        } else {
            event_reason::SCALED_DOWN
        };
        note(
            false,
            reason,
            format!(
                "desired replicas {from} → {to} ({})",
                d.change_reason.unwrap_or(d.basis.as_str())
            ),
        );
    }
    notes
}

#[cfg(test)]
mod tests {

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::status::{self, Situation};
    use wva_core::analysis::model::Reason;
    use wva_core::decision::{DataState, Fallback, LimitReason};
    use wva_core::snapshot::ReplicaCounts;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn decision(desired: u32, basis: Basis, data: DataState) -> Decision {
        wva_core::testing::decision(1, desired, basis, data, 0)
    }

    fn running(d: &Decision) -> Situation<'_> {
        Situation::Running {
            name: "llama",
            replicas: ReplicaCounts {
                current: 1,
                ready: 1,
                floor: 0,
                ceiling: None,
            },
            decision: Some(d),
        }
    }

    fn reasons(notes: &[Note]) -> Vec<&'static str> {
        notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn each_lifecycle_transition_fires_once() {
        let missing = status::next(
            None,
            Situation::TargetMissing { name: "llama" },
            None,
            &at(1),
        );
        let notes = between(None, &missing, None);
        assert_eq!(reasons(&notes), [event_reason::DEPLOYMENT_NOT_FOUND]);
        assert!(notes[0].warning);
        assert!(notes[0].message.contains("'llama'"), "{}", notes[0].message);
        // Nothing moved: nothing fires.
        assert!(between(Some(&missing), &missing, None).is_empty());

        let d = decision(1, Basis::Analysis(Reason::Steady), DataState::Fresh);
        let found = status::next(Some(&missing), running(&d), None, &at(2));
        assert_eq!(
            reasons(&between(Some(&missing), &found, Some(&d))),
            [event_reason::TARGET_FOUND]
        );
    }

    #[test]
    fn a_desired_change_names_its_direction_and_reason() {
        let one = decision(1, Basis::Analysis(Reason::Steady), DataState::Fresh);
        let three = decision(
            3,
            Basis::Analysis(Reason::ScaleUpSaturation),
            DataState::Fresh,
        );
        let before = status::next(None, running(&one), None, &at(1));
        let after = status::next(Some(&before), running(&three), None, &at(2));
        let notes = between(Some(&before), &after, Some(&three));
        assert_eq!(reasons(&notes), [event_reason::SCALED_UP]);
        assert_eq!(notes[0].message, "desired replicas 1 → 3 (saturation)");
        assert!(!notes[0].warning);
        let back = status::next(Some(&after), running(&one), None, &at(3));
        assert_eq!(
            reasons(&between(Some(&after), &back, Some(&one))),
            [event_reason::SCALED_DOWN]
        );
    }

    #[test]
    fn a_change_seen_late_names_the_reason_that_made_it() {
        // The status writer may first see a new value on a later analysis that
        // holds it while the Deployment converges.
        let one = decision(1, Basis::Analysis(Reason::Steady), DataState::Fresh);
        let mut held = decision(3, Basis::Analysis(Reason::Converging), DataState::Fresh);
        held.change_reason = Some("saturation");
        let before = status::next(None, running(&one), None, &at(1));
        let after = status::next(Some(&before), running(&held), None, &at(2));
        let notes = between(Some(&before), &after, Some(&held));
        assert_eq!(notes[0].message, "desired replicas 1 → 3 (saturation)");
    }

    #[test]
    fn losing_metrics_activates_the_safety_net_once() {
        let ok = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh);
        let held = decision(
            2,
            Basis::SafetyNet(Fallback::PreviousDesired),
            DataState::Missing,
        );
        let before = status::next(None, running(&ok), None, &at(1));
        let after = status::next(Some(&before), running(&held), None, &at(2));
        let notes = between(Some(&before), &after, Some(&held));
        assert_eq!(
            reasons(&notes),
            [event_reason::METRICS_STALE, event_reason::SAFETY_NET]
        );
        assert!(notes.iter().all(|n| n.warning));
        let still = status::next(Some(&after), running(&held), None, &at(3));
        assert!(between(Some(&after), &still, Some(&held)).is_empty());
    }

    #[test]
    fn a_limit_is_a_warning_once_per_reason_in_the_status_and_events() {
        let ok = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh);
        let mut pending = ok.clone();
        pending.limit = Some(LimitReason::PodsPending);
        let before = status::next(None, running(&ok), None, &at(1));
        let limited = conditions::find(&before.conditions, SCALING_LIMITED).unwrap();
        assert_eq!(
            (limited.status.as_str(), limited.reason.as_str()),
            ("False", "NotLimited")
        );

        let after = status::next(Some(&before), running(&pending), None, &at(2));
        let limited = conditions::find(&after.conditions, SCALING_LIMITED).unwrap();
        assert_eq!(
            (limited.status.as_str(), limited.reason.as_str()),
            ("True", "PodsPending")
        );
        assert!(
            limited
                .message
                .contains("not ready past the convergence timeout"),
            "{}",
            limited.message
        );
        let notes = between(Some(&before), &after, Some(&pending));
        assert_eq!(reasons(&notes), [event_reason::SCALING_LIMITED]);
        assert!(notes[0].warning);
        // Still limited for the same reason: no new event.
        let still = status::next(Some(&after), running(&pending), None, &at(3));
        assert!(between(Some(&after), &still, Some(&pending)).is_empty());
        // Another reason is news.
        let mut at_max = ok.clone();
        at_max.limit = Some(LimitReason::AtMaxReplicas);
        let max = status::next(Some(&still), running(&at_max), None, &at(4));
        assert_eq!(
            reasons(&between(Some(&still), &max, Some(&at_max))),
            [event_reason::SCALING_LIMITED]
        );
        // Free again: the condition goes back to False without an event.
        let free = status::next(Some(&max), running(&ok), None, &at(5));
        assert!(between(Some(&max), &free, Some(&ok)).is_empty());
    }

    #[test]
    fn an_invalid_object_is_a_warning() {
        let error = wva_core::variants::FieldError {
            field: "spec.modelID",
            problem: "must not be empty".into(),
        };
        let s = status::next(None, Situation::Invalid(&error), None, &at(1));
        let notes = between(None, &s, None);
        assert_eq!(reasons(&notes), [event_reason::INVALID_CONFIGURATION]);
        assert!(notes[0].message.contains("spec.modelID"));
    }
}
