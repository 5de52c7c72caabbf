//! Convergence with a deadline: which published steps are still in flight,
//! how long each variant has waited for its replicas to follow, and which
//! variants waited too long and no longer hold their model.
//!
//! Only a step the engine took (a published value that differed from the
//! replicas at the time) is waited for. A desired value that merely stayed put
//! while the replicas moved (the 0 published before any pod existed, a
//! manual scale, a restart) is not a step, so it never holds a model.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::analysis::model::{VariantState, Wait};
use crate::decision::LimitReason;
use crate::fast_hash::{Map, Set};
use crate::variants::VariantKey;

#[derive(Debug, Default)]
pub(super) struct Convergence {
    tracks: Map<VariantKey, Track>,
}

#[derive(Debug, Default)]
struct Track {
    /// The published value of a step not carried out yet.
    step: Option<u32>,
    /// Since when the variant has been waiting, without a break.
    waiting_since: Option<Instant>,
    blocked: Option<Block>,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    reason: Wait,
    /// The replicas when it was blocked: a scaler that moves them is acting again.
    replicas: u32,
}

impl Convergence {
    /// The value of the variant's step in flight, if any: what its model waits for.
    pub(super) fn step(&self, key: &VariantKey) -> Option<u32> {
        self.tracks.get(key).and_then(|t| t.step)
    }

    /// Updates the variant's wait from its state (whose `previous_desired` is
    /// [`Self::step`]) and says whether it is blocked. A variant that waited
    /// `timeout` without a break is blocked; a blocked step is abandoned.
    pub(super) fn observe(
        &mut self,
        key: &VariantKey,
        state: &VariantState,
        now: Instant,
        timeout: Duration,
    ) -> Option<LimitReason> {
        let track = self.tracks.entry_ref(key).or_default();
        if track.step == Some(state.current_replicas) {
            track.step = None;
        }
        let wait = state.waiting();
        if let Some(block) = track.blocked {
            let moved = block.replicas != state.current_replicas;
            let pods_caught_up = block.reason != Wait::Scaler && wait.is_none();
            if moved || pods_caught_up {
                info!(variant = %key, reason = limit(block.reason).as_str(), "variant no longer blocked");
                track.blocked = None;
            }
        }
        let Some(wait) = wait else {
            track.waiting_since = None;
            return track.blocked.map(|b| limit(b.reason));
        };
        let since = *track.waiting_since.get_or_insert(now);
        if track.blocked.is_none() && now.saturating_duration_since(since) >= timeout {
            warn!(
                variant = %key,
                reason = limit(wait).as_str(),
                currentReplicas = state.current_replicas,
                readyReplicas = state.ready_replicas,
                step = ?track.step,
                ?timeout,
                "step not carried out within the convergence timeout; the model goes on without it"
            );
            track.blocked = Some(Block {
                reason: wait,
                replicas: state.current_replicas,
            });
            track.step = None;
            track.waiting_since = None;
        }
        track.blocked.map(|b| limit(b.reason))
    }

    /// A model that needs no more capacity lets its variants whose scaler did
    /// not act try again next time it does.
    pub(super) fn forgive_scalers(&mut self, key: &VariantKey) {
        if let Some(track) = self.tracks.get_mut(key)
            && track.blocked.is_some_and(|b| b.reason == Wait::Scaler)
        {
            track.blocked = None;
        }
    }

    /// Remembers a newly published value: a step when it differs from the
    /// replicas the variant has, whose deadline runs from now.
    pub(super) fn published(&mut self, key: &VariantKey, desired: u32, current: u32, now: Instant) {
        let track = self.tracks.entry_ref(key).or_default();
        track.step = (desired != current).then_some(desired);
        if track.step.is_some() {
            track.waiting_since.get_or_insert(now);
        }
    }

    pub(super) fn retain(&mut self, live: &Set<&VariantKey>) {
        self.tracks.retain(|k, _| live.contains(k));
    }
}

/// The condition a wait that ran out becomes.
fn limit(wait: Wait) -> LimitReason {
    match wait {
        Wait::Scaler => LimitReason::ScalerNotActing,
        Wait::PodsStarting => LimitReason::PodsPending,
        Wait::PodsStopping => LimitReason::PodsNotStopping,
        Wait::PodsReporting => LimitReason::PodsNotReporting,
    }
}
