//! The channels the analysis reads its inputs from.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use wva_core::config::hybrid::HybridConfig;
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::config::scale_to_zero::ScaleToZeroConfigSet;
use wva_core::snapshot::{Published, Replicas, Tuning, Variants};
use wva_core::variants::VariantKey;

/// Where decisions come from.
pub struct Upstream {
    pub variants: watch::Receiver<Variants>,
    pub saturation: watch::Receiver<Arc<SaturationConfigSet>>,
    /// Per-model scale-to-zero policies (used when `Settings::scale_to_zero`).
    pub scale_to_zero: watch::Receiver<Arc<ScaleToZeroConfigSet>>,
    /// The serviceclass config (used when `Settings::hybrid`).
    pub hybrid: watch::Receiver<Arc<HybridConfig>>,
    /// Replica counts from an actuator; `None` derives them from reporting pods.
    pub replicas: Option<watch::Receiver<Replicas>>,
    /// Whether this replica leads; only a leader publishes decision gauges,
    /// so Prometheus never sees two competing series.
    pub leading: watch::Receiver<bool>,
    /// Desired replicas decided before this process started (from status).
    pub previous: HashMap<VariantKey, u32>,
    pub tuning: watch::Receiver<Tuning>,
    /// In a cluster, the desired replicas the leader published in status,
    /// which a follower's KEDA scaler answers.
    pub published: Option<watch::Receiver<Published>>,
}

impl Upstream {
    /// Sources of an aggregator that runs alone and starts afresh (standalone
    /// mode): it always leads and has no earlier decisions.
    pub fn alone(
        variants: watch::Receiver<Variants>,
        saturation: watch::Receiver<Arc<SaturationConfigSet>>,
        scale_to_zero: watch::Receiver<Arc<ScaleToZeroConfigSet>>,
        hybrid: watch::Receiver<Arc<HybridConfig>>,
        replicas: Option<watch::Receiver<Replicas>>,
        tuning: Tuning,
    ) -> Self {
        Upstream {
            variants,
            saturation,
            scale_to_zero,
            hybrid,
            replicas,
            leading: watch::channel(true).1,
            previous: HashMap::new(),
            tuning: watch::channel(tuning).1,
            published: None,
        }
    }
}
