//! One model's analysis up to each variant's target, as the engine hands
//! it from the saturation analysis to HYBRID mode's plan and on to the
//! decisions.

use std::time::Duration;

use super::load::Load;
use super::reporting::PodView;
use super::scale_to_zero::Zero;
use crate::analysis::model::{VariantState, VariantTarget};
use crate::decision::{DataState, LimitReason, ModelBased, Saturation};
use crate::model_key::ModelRef;
use crate::snapshot::ReplicaCounts;
use crate::variants::{Variant, VariantKey};

/// One model's analysis, up to each variant's target: what HYBRID mode's
/// plan and the decisions start from. The lists run in the order of
/// `variants`.
pub(super) struct Assessed<'v, 'r, 'p> {
    pub(super) model: ModelRef<'v>,
    pub(super) variants: Vec<&'v Variant>,
    /// Each variant's reporting pods and replica counts.
    pub(super) pods: Vec<(Vec<&'r PodView<'p>>, ReplicaCounts)>,
    pub(super) zero: Zero<'v>,
    pub(super) states: Vec<VariantState>,
    pub(super) observed: Vec<Observed>,
    pub(super) targets: Vec<VariantTarget>,
    /// HYBRID mode's view of each variant; empty in CAPACITY-ONLY mode.
    pub(super) plans: Vec<Option<ModelBased>>,
    pub(super) saturation: Saturation,
    pub(super) load: Load,
}

/// What one variant brings to its model's analysis, beside its state.
pub(super) struct Observed {
    pub(super) key: VariantKey,
    pub(super) counts: ReplicaCounts,
    pub(super) data: DataState,
    /// Age of the oldest fresh sample used.
    pub(super) age: Option<Duration>,
    /// Why it cannot take what the model needs, if it cannot.
    pub(super) limit: Option<LimitReason>,
}
