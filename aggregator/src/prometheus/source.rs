//! Prometheus as a polled source: the variant's pods and their signals, from
//! the series vLLM's pods export.

use wva_core::sources::{PolledPod, PolledSource, SourceKind};
use wva_core::variants::Variant;
use wva_proto::v1::{Counters, ModelSignals};

use super::client::{PodSignals, PrometheusClient};
use super::promql::Namespace;

#[async_trait::async_trait]
impl PolledSource for PrometheusClient {
    fn kind(&self) -> SourceKind {
        SourceKind::Prometheus
    }

    async fn poll(&self, va: &Variant) -> Result<Vec<PolledPod>, String> {
        let namespace = Namespace::parse(&va.namespace).map_err(|e| e.to_string())?;
        let pods = self
            .pod_signals(&namespace, &va.model_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pods
            .into_iter()
            .map(|(pod, s)| PolledPod::serving(pod, signals(&va.model_id, &s)))
            .collect())
    }
}

/// Prometheus' answer in the agents' shape; a signal Prometheus lacks is 0.
fn signals(model: &str, s: &PodSignals) -> ModelSignals {
    ModelSignals {
        model: model.to_string(),
        kv_cache_usage: s.kv_cache_usage.unwrap_or(0.0),
        requests_waiting: s.requests_waiting.unwrap_or(0.0),
        requests_running: s.requests_running.unwrap_or(0.0),
        counters: Some(Counters {
            request_success: s.request_success.unwrap_or(0.0),
            ..Counters::default()
        }),
        ..ModelSignals::default()
    }
}
