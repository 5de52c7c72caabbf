//! The status a VariantAutoscaling should carry, computed from what the
//! controller knows about it. Pure: the caller passes the previous status and
//! the clock, and writes only when the result differs from what is stored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wva_core::decision::{Basis, DataState, Decision, FailedSource, Fallback, ModelBased};
use wva_core::snapshot::ReplicaCounts;
use wva_core::variants::FieldError;

use super::conditions::{
    self, METRICS_AVAILABLE, MODEL_BASED_PLAN, OPTIMIZATION_READY, READY, SCALING_LIMITED, Status,
    TARGET_RESOLVED, Wanted, reason,
};
use super::crd::{Actuation, CurrentAlloc, OptimizedAlloc, VariantAutoscalingStatus};

/// Where one VariantAutoscaling stands.
#[derive(Debug, Clone, Copy)]
pub enum Situation<'a> {
    /// The object failed validation; nothing is analysed for it.
    Invalid(&'a FieldError),
    /// Its `scaleTargetRef` names a Deployment that does not exist.
    TargetMissing { name: &'a str },
    /// The target exists. `decision` is `None` until the analysis has run
    /// with this variant in it.
    Running {
        name: &'a str,
        replicas: ReplicaCounts,
        decision: Option<&'a Decision>,
    },
}

/// The status to store next.
pub fn next(
    previous: Option<&VariantAutoscalingStatus>,
    situation: Situation<'_>,
    generation: Option<i64>,
    now: &Time,
) -> VariantAutoscalingStatus {
    let empty = VariantAutoscalingStatus::default();
    let previous = previous.unwrap_or(&empty);
    let mut status = VariantAutoscalingStatus::default();
    let wanted = match situation {
        Situation::Invalid(error) => invalid(error),
        Situation::TargetMissing { name } => target_missing(previous, name),
        Situation::Running {
            name,
            replicas,
            decision,
        } => {
            let accelerator = decision.map(|d| d.accelerator.clone());
            status.current_alloc = Some(CurrentAlloc {
                accelerator: accelerator.clone().unwrap_or_default(),
                num_replicas: count(replicas.current),
            });
            status.desired_optimized_alloc = match decision {
                Some(d) => alloc(&previous.desired_optimized_alloc, d, now),
                // Not analysed yet (a new target, or a new leader): keep what is there.
                None => previous.desired_optimized_alloc.clone(),
            };
            status.actuation =
                status
                    .desired_optimized_alloc
                    .num_replicas
                    .map(|desired| Actuation {
                        applied: desired == count(replicas.current),
                    });
            running(previous, name, decision)
        }
    };
    status.conditions = conditions::merge(&previous.conditions, &wanted, generation, now);
    if let Situation::Running {
        decision: Some(d), ..
    } = situation
        && d.model_based.is_none()
    {
        // CAPACITY-ONLY mode: a plan's condition from before is stale.
        status.conditions.retain(|c| c.type_ != MODEL_BASED_PLAN);
    }
    status
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The decision as `desiredOptimizedAlloc`; `lastRunTime` moves only when
/// the allocation does, so an unchanged decision writes nothing.
fn alloc(previous: &OptimizedAlloc, decision: &Decision, now: &Time) -> OptimizedAlloc {
    let accelerator = Some(decision.accelerator.clone());
    let num_replicas = Some(count(decision.desired_replicas));
    let unchanged = previous.accelerator == accelerator && previous.num_replicas == num_replicas;
    OptimizedAlloc {
        last_run_time: match &previous.last_run_time {
            Some(t) if unchanged => Some(t.clone()),
            _ => Some(now.clone()),
        },
        accelerator,
        num_replicas,
    }
}

fn invalid(error: &FieldError) -> Vec<Wanted> {
    let message = format!("invalid VariantAutoscaling: {error}");
    vec![
        Wanted::new(
            TARGET_RESOLVED,
            Status::Unknown,
            reason::INVALID_CONFIGURATION,
            &message,
        ),
        Wanted::new(
            METRICS_AVAILABLE,
            Status::Unknown,
            reason::INVALID_CONFIGURATION,
            &message,
        ),
        Wanted::new(
            OPTIMIZATION_READY,
            Status::False,
            reason::INVALID_CONFIGURATION,
            &message,
        ),
        Wanted::new(READY, Status::False, reason::INVALID_CONFIGURATION, message),
    ]
}

fn target_missing(previous: &VariantAutoscalingStatus, name: &str) -> Vec<Wanted> {
    let gone = format!("Target deployment '{name}' no longer exists");
    // The target was found before: just now (TargetResolved was True), or
    // earlier, as the status already says, so the next sync keeps saying it.
    let was_found = conditions::find(&previous.conditions, TARGET_RESOLVED)
        .is_some_and(|c| c.status == Status::True.as_str())
        || conditions::find(&previous.conditions, READY)
            .is_some_and(|c| c.reason == reason::DEPLOYMENT_NOT_FOUND && c.message == gone);
    let ready_message = if was_found {
        gone
    } else {
        format!("Target deployment '{name}' not found")
    };
    vec![
        Wanted::new(
            TARGET_RESOLVED,
            Status::False,
            reason::TARGET_NOT_FOUND,
            format!("Deployment '{name}' not found"),
        ),
        Wanted::new(
            METRICS_AVAILABLE,
            Status::False,
            reason::METRICS_MISSING,
            format!("no metrics without target deployment '{name}'"),
        ),
        Wanted::new(
            OPTIMIZATION_READY,
            Status::False,
            reason::OPTIMIZATION_FAILED,
            format!("nothing to optimize until deployment '{name}' exists"),
        ),
        Wanted::new(
            READY,
            Status::False,
            reason::DEPLOYMENT_NOT_FOUND,
            ready_message,
        ),
    ]
}

fn running(
    previous: &VariantAutoscalingStatus,
    name: &str,
    decision: Option<&Decision>,
) -> Vec<Wanted> {
    let mut wanted = vec![Wanted::new(
        TARGET_RESOLVED,
        Status::True,
        reason::TARGET_FOUND,
        format!("Deployment '{name}' found"),
    )];
    match decision {
        Some(d) => {
            wanted.push(metrics(d));
            wanted.push(optimization(d));
            wanted.push(limited(d));
            wanted.extend(d.model_based.as_ref().map(model_based));
        }
        None => {
            // Until the first analysis, keep what a previous leader wrote
            // rather than flapping to Unknown and back.
            for type_ in [METRICS_AVAILABLE, OPTIMIZATION_READY, SCALING_LIMITED] {
                if conditions::find(&previous.conditions, type_).is_none() {
                    wanted.push(Wanted::new(
                        type_,
                        Status::Unknown,
                        reason::AWAITING_ANALYSIS,
                        "waiting for the first analysis",
                    ));
                }
            }
        }
    }
    wanted.push(Wanted::new(
        READY,
        Status::True,
        reason::TARGET_READY,
        format!("monitoring and scaling deployment '{name}'"),
    ));
    wanted
}

fn metrics(d: &Decision) -> Wanted {
    if let Some(failure) = &d.source_failure {
        let why = match failure.source {
            FailedSource::Prometheus => reason::PROMETHEUS_ERROR,
            FailedSource::PodScraping => reason::POD_SCRAPING_ERROR,
            FailedSource::Annotation | FailedSource::Agent => reason::METRICS_SOURCE_ERROR,
        };
        return Wanted::new(
            METRICS_AVAILABLE,
            Status::False,
            why,
            format!("{}: {}", failure.source, failure.error),
        );
    }
    let reporting = d.inputs.len();
    let ready = d.ready_replicas;
    match d.data {
        DataState::Fresh => Wanted::new(
            METRICS_AVAILABLE,
            Status::True,
            reason::METRICS_FOUND,
            format!("all {ready} ready replicas report fresh metrics"),
        ),
        DataState::Partial => Wanted::new(
            METRICS_AVAILABLE,
            Status::True,
            reason::METRICS_FOUND,
            format!("{reporting} of {ready} ready replicas report fresh metrics"),
        ),
        DataState::Missing => {
            // Having had a decision to hold means metrics existed and went stale.
            let stale = matches!(d.basis, Basis::SafetyNet(Fallback::PreviousDesired));
            let (why, text) = if stale {
                (reason::METRICS_STALE, "stopped reporting fresh metrics")
            } else {
                (reason::METRICS_MISSING, "report no metrics")
            };
            Wanted::new(
                METRICS_AVAILABLE,
                Status::False,
                why,
                format!("{ready} ready replicas {text}"),
            )
        }
        DataState::Idle => Wanted::new(
            METRICS_AVAILABLE,
            Status::Unknown,
            reason::METRICS_MISSING,
            "no ready replica to report metrics",
        ),
    }
}

fn limited(d: &Decision) -> Wanted {
    match d.limit {
        Some(limit) => Wanted::new(
            SCALING_LIMITED,
            Status::True,
            limit.condition_reason(),
            format!(
                "{} (replicas {}, ready {}, desired {})",
                limit.describe(),
                d.current_replicas,
                d.ready_replicas,
                d.desired_replicas
            ),
        ),
        None => Wanted::new(
            SCALING_LIMITED,
            Status::False,
            reason::NOT_LIMITED,
            "the variant can take the replicas its model asks of it",
        ),
    }
}

fn optimization(d: &Decision) -> Wanted {
    match d.basis {
        Basis::Analysis(r) => Wanted::new(
            OPTIMIZATION_READY,
            Status::True,
            reason::OPTIMIZATION_SUCCEEDED,
            format!("desired {} replicas ({})", d.desired_replicas, r.as_str()),
        ),
        Basis::Signal => Wanted::new(
            OPTIMIZATION_READY,
            Status::True,
            reason::OPTIMIZATION_SUCCEEDED,
            format!("desired {} replicas (signal)", d.desired_replicas),
        ),
        Basis::SafetyNet(fallback) => Wanted::new(
            OPTIMIZATION_READY,
            Status::False,
            reason::OPTIMIZATION_FAILED,
            format!(
                "safety net holds {} replicas ({}) until metrics return",
                d.desired_replicas,
                fallback.as_str()
            ),
        ),
    }
}

fn model_based(plan: &ModelBased) -> Wanted {
    let class = plan.class.as_deref().unwrap_or("none");
    match (&plan.abstains, plan.planned) {
        (None, Some(planned)) => Wanted::new(
            MODEL_BASED_PLAN,
            Status::True,
            reason::PLANNED,
            format!(
                "class {class:?}: planned {planned} replicas at {:.2} requests/s each{}",
                plan.per_replica.unwrap_or(0.0),
                if plan.carried == Some(false) {
                    "; accelerator limits stop the model short of its load"
                } else {
                    ""
                }
            ),
        ),
        (why, _) => Wanted::new(
            MODEL_BASED_PLAN,
            Status::False,
            if plan.unattainable {
                reason::OBJECTIVES_UNATTAINABLE
            } else {
                reason::PLAN_ABSTAINS
            },
            format!(
                "the saturation analysis decides alone: {}",
                why.as_deref().unwrap_or("no plan")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use wva_core::analysis::model::Reason;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn decision(desired: u32, basis: Basis, data: DataState, reporting: usize) -> Decision {
        wva_core::testing::decision(2, desired, basis, data, reporting)
    }

    const TWO: ReplicaCounts = ReplicaCounts {
        current: 2,
        ready: 2,
        floor: 0,
        ceiling: None,
    };

    fn condition<'a>(s: &'a VariantAutoscalingStatus, type_: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&s.conditions, type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn running<'a>(d: Option<&'a Decision>) -> Situation<'a> {
        Situation::Running {
            name: "llama-8b",
            replicas: TWO,
            decision: d,
        }
    }

    #[test]
    fn missing_target_before_it_ever_existed() {
        let s = next(
            None,
            Situation::TargetMissing { name: "llama-8b" },
            Some(1),
            &at(1),
        );
        assert_eq!(
            condition(&s, TARGET_RESOLVED),
            ("False", reason::TARGET_NOT_FOUND)
        );
        assert_eq!(
            condition(&s, READY),
            ("False", reason::DEPLOYMENT_NOT_FOUND)
        );
        let ready = conditions::find(&s.conditions, READY).unwrap();
        assert_eq!(ready.message, "Target deployment 'llama-8b' not found");
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(s.desired_optimized_alloc, OptimizedAlloc::default());
        assert_eq!(s.current_alloc, None);
    }

    #[test]
    fn deleted_target_clears_the_decision_and_says_it_no_longer_exists() {
        let d = decision(
            3,
            Basis::Analysis(Reason::ScaleUpSaturation),
            DataState::Fresh,
            2,
        );
        let up = next(None, running(Some(&d)), Some(1), &at(1));
        assert_eq!(up.desired_optimized_alloc.num_replicas, Some(3));
        let gone = next(
            Some(&up),
            Situation::TargetMissing { name: "llama-8b" },
            Some(1),
            &at(2),
        );
        assert_eq!(gone.desired_optimized_alloc, OptimizedAlloc::default());
        assert_eq!(gone.current_alloc, None);
        assert_eq!(gone.actuation, None);
        let ready = conditions::find(&gone.conditions, READY).unwrap();
        assert_eq!(
            ready.message,
            "Target deployment 'llama-8b' no longer exists"
        );
        assert_eq!(ready.last_transition_time, at(2));
        // The cleared parts serialize as nulls so a merge patch removes them.
        let json = serde_json::to_value(&gone).unwrap();
        assert!(json["desiredOptimizedAlloc"]["numReplicas"].is_null());
        assert!(json.as_object().unwrap().contains_key("currentAlloc"));
        // The next sync keeps saying so: nothing to write.
        let still = next(
            Some(&gone),
            Situation::TargetMissing { name: "llama-8b" },
            Some(1),
            &at(3),
        );
        assert_eq!(still, gone);
        // Another missing target was never found.
        let other = next(
            Some(&gone),
            Situation::TargetMissing { name: "llama-70b" },
            Some(2),
            &at(4),
        );
        let ready = conditions::find(&other.conditions, READY).unwrap();
        assert_eq!(ready.message, "Target deployment 'llama-70b' not found");
    }

    #[test]
    fn hybrid_mode_says_what_the_plan_did_and_capacity_only_mode_drops_it() {
        let mut planned = decision(4, Basis::Analysis(Reason::Optimizer), DataState::Fresh, 2);
        planned.model_based = Some(ModelBased {
            planned: Some(4),
            per_replica: Some(3.21),
            carried: Some(true),
            abstains: None,
            ..ModelBased::abstaining(String::new())
        });
        let s = next(None, running(Some(&planned)), Some(1), &at(10));
        assert_eq!(condition(&s, MODEL_BASED_PLAN), ("True", reason::PLANNED));
        let mut unmet = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh, 2);
        unmet.model_based = Some(ModelBased {
            unattainable: true,
            ..ModelBased::abstaining("objectives of class \"Premium\" unattainable".into())
        });
        let s = next(Some(&s), running(Some(&unmet)), Some(1), &at(20));
        assert_eq!(
            condition(&s, MODEL_BASED_PLAN),
            ("False", reason::OBJECTIVES_UNATTAINABLE)
        );
        let message = &conditions::find(&s.conditions, MODEL_BASED_PLAN)
            .unwrap()
            .message;
        assert_eq!(
            message,
            "the saturation analysis decides alone: objectives of class \"Premium\" unattainable"
        );
        let capacity_only = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh, 2);
        let s = next(Some(&s), running(Some(&capacity_only)), Some(1), &at(30));
        assert!(conditions::find(&s.conditions, MODEL_BASED_PLAN).is_none());
    }

    #[test]
    fn analysed_variant_is_ready_with_its_allocation() {
        let d = decision(
            3,
            Basis::Analysis(Reason::ScaleUpSaturation),
            DataState::Fresh,
            2,
        );
        let s = next(None, running(Some(&d)), Some(4), &at(10));
        assert_eq!(condition(&s, READY), ("True", reason::TARGET_READY));
        assert_eq!(
            condition(&s, TARGET_RESOLVED),
            ("True", reason::TARGET_FOUND)
        );
        assert_eq!(
            condition(&s, METRICS_AVAILABLE),
            ("True", reason::METRICS_FOUND)
        );
        assert_eq!(
            condition(&s, OPTIMIZATION_READY),
            ("True", reason::OPTIMIZATION_SUCCEEDED)
        );
        assert_eq!(
            s.desired_optimized_alloc,
            OptimizedAlloc {
                last_run_time: Some(at(10)),
                accelerator: Some("L4".into()),
                num_replicas: Some(3),
            }
        );
        assert_eq!(s.current_alloc.as_ref().unwrap().num_replicas, 2);
        assert_eq!(s.actuation, Some(Actuation { applied: false }));
    }

    #[test]
    fn an_unchanged_decision_yields_an_identical_status() {
        let d = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh, 2);
        let first = next(None, running(Some(&d)), Some(1), &at(10));
        let again = next(Some(&first), running(Some(&d)), Some(1), &at(99));
        assert_eq!(again, first);
        assert_eq!(first.actuation, Some(Actuation { applied: true }));
    }

    #[test]
    fn a_new_desired_value_moves_last_run_time() {
        let two = decision(2, Basis::Analysis(Reason::Steady), DataState::Fresh, 2);
        let three = decision(
            3,
            Basis::Analysis(Reason::ScaleUpSaturation),
            DataState::Fresh,
            2,
        );
        let first = next(None, running(Some(&two)), Some(1), &at(10));
        let second = next(Some(&first), running(Some(&three)), Some(1), &at(20));
        assert_eq!(second.desired_optimized_alloc.last_run_time, Some(at(20)));
        // OptimizationReady stayed True: its transition time does not move.
        let c = conditions::find(&second.conditions, OPTIMIZATION_READY).unwrap();
        assert_eq!(c.last_transition_time, at(10));
        assert_eq!(c.message, "desired 3 replicas (saturation)");
    }

    #[test]
    fn safety_net_reports_stale_or_missing_metrics() {
        let held = decision(
            2,
            Basis::SafetyNet(Fallback::PreviousDesired),
            DataState::Missing,
            0,
        );
        let s = next(None, running(Some(&held)), None, &at(1));
        assert_eq!(
            condition(&s, METRICS_AVAILABLE),
            ("False", reason::METRICS_STALE)
        );
        assert_eq!(
            condition(&s, OPTIMIZATION_READY),
            ("False", reason::OPTIMIZATION_FAILED)
        );
        let never = decision(
            2,
            Basis::SafetyNet(Fallback::CurrentReplicas),
            DataState::Missing,
            0,
        );
        let s = next(None, running(Some(&never)), None, &at(1));
        assert_eq!(
            condition(&s, METRICS_AVAILABLE),
            ("False", reason::METRICS_MISSING)
        );
    }

    #[test]
    fn a_failing_metrics_source_is_named() {
        let mut d = decision(
            2,
            Basis::SafetyNet(Fallback::PreviousDesired),
            DataState::Missing,
            0,
        );
        d.source_failure = Some(wva_core::decision::SourceFailure {
            source: wva_core::decision::FailedSource::Prometheus,
            error: "Prometheus query at http://p:9090 timed out after 10s".into(),
        });
        let s = next(None, running(Some(&d)), None, &at(1));
        assert_eq!(
            condition(&s, METRICS_AVAILABLE),
            ("False", reason::PROMETHEUS_ERROR)
        );
        let c = conditions::find(&s.conditions, METRICS_AVAILABLE).unwrap();
        assert!(
            c.message.starts_with("prometheus: Prometheus query"),
            "{}",
            c.message
        );
    }

    #[test]
    fn partial_data_names_how_many_replicas_report() {
        let d = decision(2, Basis::Analysis(Reason::Steady), DataState::Partial, 1);
        let s = next(None, running(Some(&d)), None, &at(1));
        let c = conditions::find(&s.conditions, METRICS_AVAILABLE).unwrap();
        assert_eq!(c.message, "1 of 2 ready replicas report fresh metrics");
    }

    #[test]
    fn before_the_first_analysis_a_previous_leaders_status_is_kept() {
        let d = decision(
            4,
            Basis::Analysis(Reason::ScaleUpSaturation),
            DataState::Fresh,
            2,
        );
        let written = next(None, running(Some(&d)), Some(1), &at(10));
        let resumed = next(Some(&written), running(None), Some(1), &at(50));
        assert_eq!(
            resumed.desired_optimized_alloc,
            written.desired_optimized_alloc
        );
        assert_eq!(
            conditions::find(&resumed.conditions, METRICS_AVAILABLE),
            conditions::find(&written.conditions, METRICS_AVAILABLE)
        );
        // With nothing written before, the conditions say the analysis is pending.
        let fresh = next(None, running(None), Some(1), &at(50));
        assert_eq!(
            condition(&fresh, OPTIMIZATION_READY),
            ("Unknown", reason::AWAITING_ANALYSIS)
        );
        assert_eq!(fresh.desired_optimized_alloc, OptimizedAlloc::default());
        assert_eq!(fresh.actuation, None);
    }

    #[test]
    fn invalid_object_says_which_field() {
        let error = FieldError {
            field: "spec.variantCost",
            problem: "\"abc\" must match".into(),
        };
        let s = next(None, Situation::Invalid(&error), Some(3), &at(1));
        assert_eq!(
            condition(&s, OPTIMIZATION_READY),
            ("False", reason::INVALID_CONFIGURATION)
        );
        let ready = conditions::find(&s.conditions, READY).unwrap();
        assert!(
            ready.message.contains("spec.variantCost"),
            "{}",
            ready.message
        );
    }
}
