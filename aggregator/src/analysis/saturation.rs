//! WVA's CAPACITY-ONLY saturation analysis (V1), per model across its variants.

use crate::config::saturation::SaturationConfig;

/// Load of one reporting replica (pod) of a variant.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLoad {
    pub pod: String,
    /// KV-cache usage, fraction 0..1.
    pub kv_cache_usage: f64,
    /// Requests waiting in the pod's queue.
    pub queue_length: f64,
}

/// Everything the analysis knows about one variant of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantState {
    pub name: String,
    /// Cost per replica (`variantCost`).
    pub cost: f64,
    /// Replicas the target has now (spec).
    pub current_replicas: u32,
    /// Replicas that are ready; `current - ready` are pending.
    pub ready_replicas: u32,
    /// The last desired value published for this variant, if any.
    pub previous_desired: Option<u32>,
    /// Lowest replica count a scale-down may leave (1 for the cheapest
    /// variant when scale to zero is off, else 0).
    pub min_replicas: u32,
    /// Fresh signals of the pods that report for this variant.
    pub replicas: Vec<ReplicaLoad>,
}

/// Saturation verdict over all replicas of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAnalysis {
    pub total_replicas: usize,
    pub saturated_replicas: usize,
    pub non_saturated_replicas: usize,
    /// Average spare KV (threshold − usage) over non-saturated replicas; 0 when there are none.
    pub avg_spare_kv: f64,
    /// Average spare queue (threshold − length) over non-saturated replicas; 0 when there are none.
    pub avg_spare_queue: f64,
    pub should_scale_up: bool,
    pub scale_down_safe: bool,
}

/// Why a variant's target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Spare capacity below a trigger (or every replica saturated): this variant is the cheapest eligible.
    ScaleUpSaturation,
    /// Removing one replica keeps both spares above their triggers: this variant is the most expensive eligible.
    ScaleDownSpare,
    /// No change needed.
    Steady,
    /// Another step of this model is still converging (desired ≠ current, pods pending or not yet reporting).
    Converging,
}

impl Reason {
    /// Stable label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUpSaturation => "saturation",
            Reason::ScaleDownSpare => "spare_capacity",
            Reason::Steady => "steady",
            Reason::Converging => "converging",
        }
    }
}

/// The target the analysis proposes for one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantTarget {
    pub name: String,
    pub target_replicas: u32,
    pub reason: Reason,
}

/// Classifies every replica and computes spare capacity and the two verdicts.
pub fn analyze(variants: &[VariantState], config: &SaturationConfig) -> ModelAnalysis {
    let _ = (variants, config);
    todo!("implemented in the analysis change")
}

/// Turns the model-wide verdict into one target per variant (same order as `variants`).
pub fn targets(variants: &[VariantState], analysis: &ModelAnalysis) -> Vec<VariantTarget> {
    let _ = (variants, analysis);
    todo!("implemented in the analysis change")
}
