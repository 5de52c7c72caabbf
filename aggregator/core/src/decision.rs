//! The one decision per variant that every output (gauges, actuator, JSON
//! view, later status and KEDA) is a view of.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::analysis::model::{Reason, ReplicaLoad};
use crate::analysis::saturation::ModelAnalysis;
use crate::analysis::tokens::TokenAnalysis;
use crate::config::saturation::SaturationConfig;
use crate::config::service_class::ServiceClass;
use crate::hybrid::profile::{Profile, Quality};
use crate::variants::VariantKey;
use crate::workload::WorkloadSignal;

/// Where a safety-net value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    PreviousDesired,
    CurrentReplicas,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::PreviousDesired => "previous-desired",
            Fallback::CurrentReplicas => "current-replicas",
        }
    }
}

/// Why the desired value is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Analysis(Reason),
    /// The variant's data is missing; the value is held.
    SafetyNet(Fallback),
    /// A workload's forwarded signal against its target per pod.
    Signal,
}

impl Basis {
    /// Stable label value (`reason` of `wva_replica_scaling_total`, logs, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Analysis(r) => r.as_str(),
            Basis::SafetyNet(_) => "safety_net",
            Basis::Signal => "signal",
        }
    }
}

impl Serialize for Basis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a variant cannot take the replicas its model needs. All but
/// [`LimitReason::AtMaxReplicas`] come from a step not carried out within the
/// convergence timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// Replicas stayed not ready (Pending for lack of GPUs or quota, an image
    /// that cannot be pulled, a crash loop).
    PodsPending,
    /// More replicas stayed ready than the target has.
    PodsNotStopping,
    /// Ready pods sent no sample.
    PodsNotReporting,
    /// The published value was not applied to the target.
    ScalerNotActing,
    /// The model needs more than the scaler's `maxReplicas` allows.
    AtMaxReplicas,
}

impl LimitReason {
    /// Stable name, as in JSON, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::PodsPending => "pods_pending",
            LimitReason::PodsNotStopping => "pods_not_stopping",
            LimitReason::PodsNotReporting => "pods_not_reporting",
            LimitReason::ScalerNotActing => "scaler_not_acting",
            LimitReason::AtMaxReplicas => "at_max_replicas",
        }
    }

    /// The reason of a Kubernetes condition.
    pub fn condition_reason(self) -> &'static str {
        match self {
            LimitReason::PodsPending => "PodsPending",
            LimitReason::PodsNotStopping => "PodsNotStopping",
            LimitReason::PodsNotReporting => "PodsNotReporting",
            LimitReason::ScalerNotActing => "ScalerNotActing",
            LimitReason::AtMaxReplicas => "AtMaxReplicas",
        }
    }

    /// What happened and what the model does about it, for people.
    pub fn describe(self) -> &'static str {
        match self {
            LimitReason::PodsPending => {
                "replicas stayed not ready past the convergence timeout; they no longer count as coming capacity and the model's scale-ups go to other variants"
            }
            LimitReason::PodsNotStopping => {
                "surplus ready replicas stayed past the convergence timeout; the model no longer waits for them"
            }
            LimitReason::PodsNotReporting => {
                "ready pods sent no metrics past the convergence timeout; they do not count as capacity and the model's scale-ups go to other variants"
            }
            LimitReason::ScalerNotActing => {
                "the desired replicas were not applied within the convergence timeout; the step was abandoned and the model's scale-ups go to other variants"
            }
            LimitReason::AtMaxReplicas => {
                "the model needs more replicas than the autoscaler's maxReplicas allows; the rest go to other variants"
            }
        }
    }
}

impl Serialize for LimitReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How complete the variant's signals were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    /// Every ready replica reported a fresh, healthy sample.
    Fresh,
    /// Some ready replicas did not.
    Partial,
    /// Replicas are ready but none reported.
    Missing,
    /// No ready replica, so nothing to report.
    Idle,
}

impl DataState {
    /// Stable name, as in the JSON view.
    pub fn as_str(self) -> &'static str {
        match self {
            DataState::Fresh => "fresh",
            DataState::Partial => "partial",
            DataState::Missing => "missing",
            DataState::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub variant: VariantKey,
    pub model_id: String,
    pub accelerator: String,
    pub cost: f64,
    pub current_replicas: u32,
    pub ready_replicas: u32,
    pub desired_replicas: u32,
    pub basis: Basis,
    /// Why the desired value last changed (the basis of that analysis),
    /// while later analyses may hold it for another reason.
    pub change_reason: Option<&'static str>,
    /// Why the variant's polled metrics source gave no answer, if it did not.
    pub source_failure: Option<SourceFailure>,
    /// Why the variant cannot take what its model needs, if it cannot.
    pub limit: Option<LimitReason>,
    pub data: DataState,
    /// Age of the oldest sample used, when any was.
    #[serde(serialize_with = "seconds")]
    pub data_age: Option<Duration>,
    /// The fresh per-pod loads the analysis saw.
    #[serde(serialize_with = "loads")]
    pub inputs: Vec<ReplicaLoad>,
    /// The model's saturation analysis and the thresholds it used.
    pub saturation: Saturation,
    /// HYBRID mode's model-based side, in that mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_based: Option<ModelBased>,
    /// For a workload scaled on a signal: the signal, its target and the
    /// total the pods reported. Such a decision has no model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSignal>,
    #[serde(serialize_with = "unix_ms")]
    pub decided_at: SystemTime,
}

/// What HYBRID mode's model-based side found for one variant: the class
/// its model is served under, the profile and the capacity it planned
/// with, the replicas it planned, or why it abstains.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelBased {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The replicas the plan wants; the arbitration may take more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<u32>,
    /// False when accelerator limits stopped the model's plan short of its
    /// load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried: Option<bool>,
    /// Requests a second one replica sustains within the class's objectives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_replica: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Whether the profile was fitted (else given in the annotation).
    pub fitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Why the plan abstains for this variant, when it does: the saturation
    /// analysis then decides alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstains: Option<String>,
    /// It abstains because a lone request already misses an objective: no
    /// number of replicas would meet it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unattainable: bool,
}

impl ModelBased {
    pub fn abstaining(why: String) -> Self {
        ModelBased {
            class: None,
            priority: None,
            planned: None,
            carried: None,
            per_replica: None,
            profile: None,
            fitted: false,
            quality: None,
            abstains: Some(why),
            unattainable: false,
        }
    }

    pub fn for_class(class: &ServiceClass) -> Self {
        ModelBased {
            class: Some(class.name.clone()),
            priority: Some(class.priority),
            abstains: None,
            ..ModelBased::abstaining(String::new())
        }
    }
}

/// Why a variant's polled source gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceFailure {
    pub source: FailedSource,
    pub error: String,
}

/// What failed to give a variant its metrics; a status condition's reason
/// follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedSource {
    /// The variant's metrics-source annotation names no source.
    Annotation,
    /// The agents' streams (never polled, so never failing today).
    Agent,
    PodScraping,
    Prometheus,
}

impl FailedSource {
    /// Stable name, as in logs, JSON and condition messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FailedSource::Annotation => "annotation",
            FailedSource::Agent => "agent",
            FailedSource::PodScraping => "pod-scraping",
            FailedSource::Prometheus => "prometheus",
        }
    }
}

impl std::fmt::Display for FailedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailedSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A change of desired replicas, for the scaling counter and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingEvent {
    pub variant: VariantKey,
    pub from: u32,
    pub to: u32,
    pub reason: &'static str,
}

impl ScalingEvent {
    pub fn direction(&self) -> &'static str {
        if self.to > self.from { "up" } else { "down" }
    }
}

/// The saturation analysis of a decision's model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Saturation {
    pub analysis: ModelAnalysis,
    /// What the token-based (V2) analysis measured, when the model uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenAnalysis>,
    pub config: SaturationConfig,
}

impl Decision {
    /// `desired / current`, with WVA's convention of `desired` when current is 0.
    pub fn ratio(&self) -> f64 {
        if self.current_replicas == 0 {
            f64::from(self.desired_replicas)
        } else {
            f64::from(self.desired_replicas) / f64::from(self.current_replicas)
        }
    }

    /// Average KV usage and total queue over the inputs.
    pub fn load_summary(&self) -> Option<(f64, f64)> {
        let n = self.inputs.len();
        (n > 0).then(|| {
            let kv = self.inputs.iter().map(|l| l.kv_cache_usage).sum::<f64>() / n as f64;
            (kv, self.inputs.iter().map(|l| l.requests_waiting).sum())
        })
    }
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn unix_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    s.serialize_u64(ms)
}

fn loads<S: serde::Serializer>(loads: &[ReplicaLoad], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(loads.len()))?;
    for l in loads {
        seq.serialize_element(&serde_json::json!({
            "pod": &*l.pod,
            "kvCacheUsage": l.kv_cache_usage,
            "queueLength": l.requests_waiting,
        }))?;
    }
    seq.end()
}
