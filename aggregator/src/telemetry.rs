//! The aggregator's own metrics: connected agents, ingest rate, rejections,
//! and how long a sample takes to become a decision.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type ReasonLabel = [(&'static str, String); 1];

#[derive(Debug)]
pub struct SelfMetrics {
    connected_agents: Gauge,
    samples_received: Counter,
    samples_rejected: Family<ReasonLabel, Counter>,
    streams_rejected: Family<ReasonLabel, Counter>,
    streams_refused: Family<ReasonLabel, Counter>,
    ingest_to_decision: Histogram,
    analysis_runs: Counter,
}

impl SelfMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = SelfMetrics {
            connected_agents: Gauge::default(),
            samples_received: Counter::default(),
            samples_rejected: Family::default(),
            streams_rejected: Family::default(),
            streams_refused: Family::default(),
            // 0.5 ms .. ~16 s
            ingest_to_decision: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            analysis_runs: Counter::default(),
        };
        registry.register(
            "wva_connected_agents",
            "Agent streams currently connected",
            m.connected_agents.clone(),
        );
        registry.register(
            "wva_samples_received",
            "Agent samples accepted into the pod store",
            m.samples_received.clone(),
        );
        registry.register(
            "wva_samples_rejected",
            "Agent samples not used, by reason",
            m.samples_rejected.clone(),
        );
        registry.register(
            "wva_agent_streams_rejected",
            "Agent streams refused, by gRPC status code",
            m.streams_rejected.clone(),
        );
        registry.register(
            "wva_agent_stream_refusals",
            "Agent streams refused on credentials or identity, by reason",
            m.streams_refused.clone(),
        );
        registry.register(
            "wva_ingest_to_decision_seconds",
            "Time from the arrival of the oldest unanalysed sample to the decision that used it",
            m.ingest_to_decision.clone(),
        );
        registry.register(
            "wva_analysis_runs",
            "Analysis runs over all variants",
            m.analysis_runs.clone(),
        );
        m
    }

    pub fn set_connected(&self, n: usize) {
        self.connected_agents.set(n as i64);
    }

    pub fn sample_received(&self) {
        self.samples_received.inc();
    }

    pub fn sample_rejected(&self, reason: &'static str) {
        self.samples_rejected
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    pub fn stream_refused(&self, reason: &'static str) {
        self.streams_refused
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    pub fn stream_rejected(&self, code: tonic::Code) {
        self.streams_rejected
            .get_or_create(&[("reason", format!("{code:?}"))])
            .inc();
    }

    pub fn analysis_ran(&self, ingest_to_decision: Option<Duration>) {
        self.analysis_runs.inc();
        if let Some(d) = ingest_to_decision {
            self.ingest_to_decision.observe(d.as_secs_f64());
        }
    }
}
