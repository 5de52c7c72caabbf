//! Scale to zero and back: a model idle for its retention period goes to
//! zero; requests waiting at the gateway for a model at zero wake its
//! cheapest variant.

use std::time::Instant;

use super::reporting::PodView;
use crate::activity::ActivityTracker;
use crate::analysis::model::Reason;
use crate::analysis::model::VariantTarget;
use crate::config::scale_to_zero::ScaleToZeroConfigSet;
use crate::decision::Basis;
use crate::model_key::ModelRef;
use crate::snapshot::ReplicaCounts;
use crate::variants::{Variant, VariantKey};

/// What one model's analysis needs to know about zero.
#[derive(Debug)]
pub(super) struct Zero<'v> {
    /// The model had no request for its retention period.
    pub(super) idle: bool,
    /// Requests wait at the gateway while every variant is at zero.
    pub(super) wake: bool,
    /// The variant that keeps the model's last replica, or wakes it.
    pub(super) cheapest: Option<&'v Variant>,
}

/// The clock and policies the idle check reads.
pub(super) struct Policy<'a> {
    pub(super) now: Instant,
    /// `None` when scale to zero is off.
    pub(super) policies: Option<&'a ScaleToZeroConfigSet>,
}

impl<'v> Zero<'v> {
    /// Observes the model's activity and says whether it is idle or must wake.
    /// Requests waiting at the gateway (`waiting`) count as activity.
    pub(super) fn observe(
        activity: &mut ActivityTracker,
        policy: &Policy<'_>,
        model: ModelRef<'_>,
        observed: &[(Vec<&PodView<'_>>, ReplicaCounts)],
        waiting: bool,
        cheapest: Option<&'v Variant>,
    ) -> Self {
        let current: u32 = observed.iter().map(|(_, c)| c.current).sum();
        // Without scale to zero nothing is ever idle, and the (static) flag
        // cannot turn it on later: no activity to track.
        let idle = policy.policies.is_some_and(|configs| {
            let signals = observed
                .iter()
                .flat_map(|(pods, _)| pods)
                .filter_map(|pod| {
                    let (signals, _) = pod.fresh_signals(model.model, policy.now)?;
                    Some((pod.key, signals))
                });
            let idle_for = activity.observe(policy.now, model, signals, current, waiting);
            let config = configs.for_model(model.model, model.namespace);
            config.enabled && idle_for >= config.retention
        });
        Zero {
            idle,
            wake: waiting && current == 0,
            cheapest,
        }
    }

    fn is_cheapest(&self, key: &VariantKey) -> bool {
        self.cheapest
            .is_some_and(|va| va.namespace == key.namespace && va.name == key.name)
    }

    /// Whether `key` is the variant that keeps the model's guaranteed replica.
    pub(super) fn keeps_a_replica(&self, key: &VariantKey) -> bool {
        !self.idle && self.is_cheapest(key)
    }

    /// The desired replicas of a variant with fresh data.
    pub(super) fn desired(
        &self,
        key: &VariantKey,
        target: &VariantTarget,
        counts: ReplicaCounts,
    ) -> (u32, Basis) {
        if self.wake && self.is_cheapest(key) {
            // Requests wait at the gateway and no replica can serve them.
            (
                target.target_replicas.max(1),
                Basis::Analysis(Reason::ScaleFromZero),
            )
        } else if self.idle {
            (counts.floor, Basis::Analysis(Reason::ScaleToZero))
        } else {
            (target.target_replicas, Basis::Analysis(target.reason))
        }
    }
}
