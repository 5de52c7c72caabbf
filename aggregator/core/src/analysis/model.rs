//! The types every analysis shares: what it knows about a model's variants,
//! why a target is what it is, and the sized step between them.

use std::sync::Arc;

/// Load of one reporting replica (pod) of a variant.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLoad {
    pub pod: Arc<str>,
    /// KV-cache usage, fraction 0..1.
    pub kv_cache_usage: f64,
    /// Requests waiting in the pod's queue.
    pub requests_waiting: f64,
    /// How fast the pod finishes and receives requests, once measured.
    pub rates: Option<RequestRates>,
    /// Its KV cache in tokens (`num_gpu_blocks × block_size`), when known.
    pub kv_capacity_tokens: Option<f64>,
    /// The mean prompt length of the requests it served, in tokens, when
    /// it served any.
    pub mean_prompt_tokens: Option<f64>,
}

/// A backlog is planned to drain within this many seconds.
pub const DRAIN_SECONDS: f64 = 30.0;

/// Whether a reading is usable: a finite, non-negative number.
pub fn plausible(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

/// The requests arriving per second where measured, and the requests
/// waiting, summed over the usable readings of `loads`.
pub fn arrivals_and_backlog<'a>(loads: impl Iterator<Item = &'a ReplicaLoad>) -> (f64, f64) {
    let (mut arriving, mut backlog) = (0.0, 0.0);
    for load in loads {
        if let Some(rates) = load.rates
            && plausible(rates.arriving)
        {
            arriving += rates.arriving;
        }
        if plausible(load.requests_waiting) {
            backlog += load.requests_waiting;
        }
    }
    (arriving, backlog)
}

/// The mean rate at which busy replicas (requests waiting all through the
/// span of their rates) finish requests: such a replica works as fast as it
/// can, so this is one replica's capacity. `None` when no replica was busy.
pub fn busy_capacity<'a>(loads: impl Iterator<Item = &'a ReplicaLoad>) -> Option<f64> {
    let (mut busy, mut sum) = (0u32, 0.0);
    for rates in loads.filter_map(|l| l.rates).filter(|r| r.busy) {
        let finished = rates.finished;
        if finished.is_finite() && finished > 0.0 {
            busy += 1;
            sum += finished;
        }
    }
    (busy > 0).then(|| sum / f64::from(busy))
}

/// Requests per second of one pod, over a few seconds of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRates {
    pub finished: f64,
    /// Finished plus the growth of its queue (never negative).
    pub arriving: f64,
    /// Requests waited at both ends of the span: the pod worked as fast as
    /// it could all along, so `finished` is its capacity.
    pub busy: bool,
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
    /// Most replicas the variant's scaler can set (an HPA's `maxReplicas`).
    pub max_replicas: Option<u32>,
    /// The variant waited longer than the convergence deadline: it no longer
    /// holds its model, takes no scale-up, and its replicas that are not
    /// ready are not counted as coming capacity.
    pub blocked: bool,
    /// Requests per second one replica of this variant finishes while busy,
    /// as last measured (kept while no replica is busy).
    pub request_capacity: Option<f64>,
    /// Fresh signals of the pods that report for this variant.
    pub loads: Vec<ReplicaLoad>,
}

/// What a variant still waits for after an earlier step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// A published desired value that its scaler has not applied yet.
    Scaler,
    /// Replicas that are not ready yet (starting, or Pending).
    PodsStarting,
    /// More ready replicas than the target has (a rollout's surplus).
    PodsStopping,
    /// Ready pods that have not reported a sample yet.
    PodsReporting,
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
    /// A scale-down held back by the stabilization window: a higher value
    /// was recommended within it.
    Stabilizing,
    /// A scale-down not yet carried out, called off because the model saturated meanwhile.
    ScaleDownWithdrawn,
    /// The model had no request for its scale-to-zero retention period.
    ScaleToZero,
    /// Requests wait in an endpoint picker's queue while the model has no replica.
    ScaleFromZero,
    /// HYBRID mode's plan wants more than the saturation analysis: its
    /// model's arrival rate needs it to meet the class's objectives.
    Optimizer,
}

impl Reason {
    /// Stable label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUpSaturation => "saturation",
            Reason::ScaleDownSpare => "spare_capacity",
            Reason::Steady => "steady",
            Reason::Converging => "converging",
            Reason::Stabilizing => "stabilizing",
            Reason::ScaleDownWithdrawn => "scale_down_withdrawn",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::ScaleFromZero => "scale_from_zero",
            Reason::Optimizer => "optimizer",
        }
    }
}

impl VariantState {
    /// What this variant still waits for after an earlier step, if anything:
    /// a published desired value it has not reached, ready replicas that
    /// differ from its replicas, or ready pods that have not reported yet.
    pub fn waiting(&self) -> Option<Wait> {
        if self
            .previous_desired
            .is_some_and(|desired| desired != self.current_replicas)
        {
            Some(Wait::Scaler)
        } else if self.ready_replicas < self.current_replicas {
            Some(Wait::PodsStarting)
        } else if self.ready_replicas > self.current_replicas {
            Some(Wait::PodsStopping)
        } else if self.loads.len() < self.ready_replicas as usize {
            Some(Wait::PodsReporting)
        } else {
            None
        }
    }

    /// Whether this variant still converges toward an earlier step, within
    /// the deadline. While any variant of a model does, the model takes no new
    /// step, so each step is judged on the load it produced.
    pub fn is_converging(&self) -> bool {
        !self.blocked && self.waiting().is_some()
    }

    /// Replicas that count as the variant's capacity, now or soon: all of
    /// them, unless it is blocked, when only those that report do.
    pub fn anticipated_replicas(&self) -> u32 {
        if self.blocked {
            self.current_replicas.min(self.loads.len() as u32)
        } else {
            self.current_replicas
        }
    }

    /// The most replicas a scale-up may give this variant: its scaler's
    /// maximum, and no more than it has while it is blocked.
    pub fn ceiling(&self) -> u32 {
        let ceiling = self.max_replicas.unwrap_or(u32::MAX);
        if self.blocked {
            ceiling.min(self.current_replicas)
        } else {
            ceiling
        }
    }

    /// The target re-published while the model converges: the step in
    /// flight (so the HPA keeps moving toward it), else the current replicas.
    pub fn held_target(&self) -> u32 {
        self.held(self.previous_desired)
    }

    /// `previous`, or the current replicas when there is none, but never a
    /// scale-down below `min_replicas` (the minimum can rise after the value
    /// was set, for example when a cheaper variant is removed).
    pub fn held(&self, previous: Option<u32>) -> u32 {
        let held = previous.unwrap_or(self.current_replicas);
        if held < self.current_replicas {
            held.max(self.min_replicas.min(self.current_replicas))
        } else {
            held
        }
    }
}

/// How many replicas the model should have, as its analysis sized it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Need {
    /// At least this many.
    Up(f64),
    /// No fewer than this many.
    Down(f64),
    Hold,
}

/// The target the analysis proposes for one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantTarget {
    pub name: String,
    pub target_replicas: u32,
    pub reason: Reason,
    /// The model needed replicas this variant would have taken, but its
    /// scaler's `maxReplicas` stopped it.
    pub at_max: bool,
}
