//! The safety net: a variant whose pods report no fresh data keeps a held
//! value instead of one computed from nothing.

use tracing::{info, warn};

use crate::decision::{Basis, Fallback};
use crate::fast_hash::Set;
use crate::snapshot::ReplicaCounts;
use crate::variants::VariantKey;

/// The variants the net holds now, so each catch and release is logged once.
#[derive(Debug, Default)]
pub(super) struct SafetyNet {
    holding: Set<VariantKey>,
}

impl SafetyNet {
    /// Holds `value` for a variant without data: what its `previous`
    /// desired value (else its current replicas) makes of it.
    pub(super) fn hold(
        &mut self,
        key: &VariantKey,
        value: u32,
        previous: Option<u32>,
        counts: ReplicaCounts,
    ) -> (u32, Basis) {
        let source = match previous {
            Some(_) => Fallback::PreviousDesired,
            None => Fallback::CurrentReplicas,
        };
        if self.holding.insert(key.clone()) {
            warn!(
                variant = %key,
                currentReplicas = counts.current,
                desiredReplicas = value,
                fallbackSource = source.as_str(),
                "Safety net activated: emitted fallback metrics (no fresh metrics from the variant's pods)"
            );
        }
        (value, Basis::SafetyNet(source))
    }

    /// Lets go of a variant whose data is back.
    pub(super) fn release(&mut self, key: &VariantKey) {
        if self.holding.remove(key) {
            info!(variant = %key, "Safety net released: fresh metrics are back");
        }
    }

    /// Forgets variants that no longer exist.
    pub(super) fn retain(&mut self, live: &Set<&VariantKey>) {
        self.holding.retain(|k| live.contains(k));
    }
}
