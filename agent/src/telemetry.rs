//! The agent's own metrics, served on its `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Scrape durations of a healthy target are milliseconds; the upper buckets
/// reach the largest default timeout.
const SCRAPE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Metric handles; cloning a handle shares the underlying value.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    pub scrape_duration: Histogram,
    pub scrapes: Counter,
    pub scrape_failures: Family<ReasonLabel, Counter>,
    pub scrape_filtered: Gauge,
    pub stream_connected: Gauge,
    pub stream_reconnects: Counter,
    pub stream_failures: Family<ReasonLabel, Counter>,
    pub samples_sent: Counter,
    pub samples_dropped: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let scrape_duration = Histogram::new(SCRAPE_BUCKETS);
        let scrapes = Counter::default();
        let scrape_failures = Family::<ReasonLabel, Counter>::default();
        let scrape_filtered = Gauge::default();
        let stream_connected = Gauge::default();
        let stream_reconnects = Counter::default();
        let stream_failures = Family::<ReasonLabel, Counter>::default();
        let samples_sent = Counter::default();
        let samples_dropped = Counter::default();

        // Counter names get their `_total` suffix from the encoder.
        registry.register(
            "wva_agent_scrape_duration_seconds",
            "Duration of scrapes of the local target",
            scrape_duration.clone(),
        );
        registry.register(
            "wva_agent_scrapes",
            "Scrapes of the local target",
            scrapes.clone(),
        );
        registry.register(
            "wva_agent_scrape_failures",
            "Scrapes that produced no signals, by reason",
            scrape_failures.clone(),
        );
        registry.register(
            "wva_agent_scrape_filtered",
            "1 while the target serves only the samples the agent reads",
            scrape_filtered.clone(),
        );
        registry.register(
            "wva_agent_stream_connected",
            "Streams to aggregator replicas that are open",
            stream_connected.clone(),
        );
        registry.register(
            "wva_agent_stream_reconnects",
            "Connection attempts to the aggregator after a failure",
            stream_reconnects.clone(),
        );
        registry.register(
            "wva_agent_stream_failures",
            "Failed or closed aggregator streams, by reason",
            stream_failures.clone(),
        );
        registry.register(
            "wva_agent_samples_sent",
            "Samples handed to the aggregator stream",
            samples_sent.clone(),
        );
        registry.register(
            "wva_agent_samples_dropped",
            "Samples replaced by a newer one before they could be sent",
            samples_dropped.clone(),
        );
        registry.register(
            "wva_agent_build",
            "Build of this agent",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );

        Telemetry {
            registry,
            scrape_duration,
            scrapes,
            scrape_failures,
            scrape_filtered,
            stream_connected,
            stream_reconnects,
            stream_failures,
            samples_sent,
            samples_dropped,
        }
    }

    pub fn scrape_failure(&self, reason: &'static str) -> Counter {
        self.scrape_failures
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    pub fn stream_failure(&self, reason: &'static str) -> Counter {
        self.stream_failures
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    /// OpenMetrics text of all metrics.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let telemetry = Telemetry::new();
        telemetry.scrapes.inc();
        telemetry.scrape_failure("timeout").inc();
        telemetry.stream_failure("connect").inc();
        telemetry.scrape_duration.observe(0.003);
        let text = telemetry.encode();
        for line in [
            "wva_agent_scrapes_total 1",
            "wva_agent_scrape_failures_total{reason=\"timeout\"} 1",
            "wva_agent_stream_failures_total{reason=\"connect\"} 1",
            "wva_agent_scrape_duration_seconds_bucket{le=\"0.005\"} 1",
            "wva_agent_stream_connected 0",
            "wva_agent_stream_reconnects_total 0",
            "wva_agent_samples_sent_total 0",
            "wva_agent_samples_dropped_total 0",
            concat!(
                "wva_agent_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
