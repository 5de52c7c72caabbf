//! The shared values every task reads: each is published whole on a watch
//! channel (one writer, many readers), so a reader never sees half an update.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::decision::{Decision, SourceFailure};
use crate::variants::{Variant, VariantKey};

/// The variants being scaled.
pub type Variants = Arc<Vec<Variant>>;
/// The replica counts of each variant's target.
pub type Replicas = Arc<HashMap<VariantKey, ReplicaCounts>>;
/// The latest decision of every variant, built once per analysis.
pub type Decisions = Arc<Vec<Decision>>;
/// The current failures of polled sources, by variant.
pub type Failures = Arc<HashMap<VariantKey, SourceFailure>>;
/// Desired replicas as the statuses hold them: the leader's published decisions.
pub type Published = Arc<HashMap<VariantKey, u32>>;

/// Replica counts of a variant's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaCounts {
    /// Replicas the target has (spec).
    pub current: u32,
    /// Replicas that are ready.
    pub ready: u32,
    /// The fewest replicas the target's scaler can set (an HPA's
    /// `minReplicas`); 0 without one. A decision never asks for fewer, or
    /// the model would wait forever for a step its scaler cannot take.
    pub floor: u32,
    /// The most replicas the target's scaler can set (an HPA's
    /// `maxReplicas`); `None` without one. A scale-up never asks for more,
    /// and what the model needs beyond it goes to its other variants.
    pub ceiling: Option<u32>,
}

/// The timing of the analysis; may change while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub min_analysis_interval: Duration,
    /// The fewest time between two analyses when a sample changed a
    /// saturation verdict ([`crate::verdict`]).
    pub min_verdict_interval: Duration,
    pub analysis_interval: Duration,
    pub staleness: Duration,
    /// How long a step may take before its model goes on without it.
    pub convergence_timeout: Duration,
}
