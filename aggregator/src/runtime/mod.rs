//! Wires the aggregator together at run time: gRPC ingest and polled sources
//! → pod store → analysis loop → decisions → gauges, HTTP, KEDA, diagnostics
//! (and, in a cluster, status).

mod analysis_loop;
pub mod poller;
pub mod trigger;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wva_certs::ExpiryGauge;
use wva_core::admission::Admission;
use wva_core::snapshot::{Decisions, Failures};
use wva_core::sources::{PolledSource, SourceKind};
use wva_core::store::PodStore;
use wva_webhook::server::WebhookMetrics;

use self::analysis_loop::AnalysisLoop;
use self::poller::Poller;
use self::trigger::Trigger;
pub use self::upstream::Upstream;
use crate::gauges::DecisionGauges;
use crate::grpc::{
    self, diagnostics::DiagnosticsService, ingest::Ingest, keda::Scaler, readers::ReaderAuth,
    taps::Taps,
};
use crate::http::{self, HttpState};
use crate::telemetry::SelfMetrics;

#[derive(Clone)]
pub struct Settings {
    pub legacy_metrics: bool,
    pub controller_instance: Option<String>,
    pub scale_to_zero: bool,
    /// HYBRID mode (`EXPERIMENTAL_PROACTIVE_MODEL=true`): the model-based
    /// optimizer beside the saturation analysis, with the service classes
    /// of `Upstream::hybrid`. Off: CAPACITY-ONLY mode.
    pub hybrid: bool,
    /// Who may stream, and which variant each pod feeds.
    pub admission: Arc<dyn Admission>,
    /// TLS on the gRPC port, and the gauge of its certificate's end.
    pub tls: Option<(Arc<rustls::ServerConfig>, ExpiryGauge)>,
    /// Who may use KEDA's external scaler and the diagnostics service.
    pub readers: ReaderAuth,
    /// Sources asked for the pods of variants that name one, and how often.
    pub polled: Vec<Arc<dyn PolledSource>>,
    /// The source of variants that name none.
    pub default_source: SourceKind,
    pub poll_interval: Duration,
    /// The agent-injection webhook's counters, served with the others.
    pub webhook_metrics: Option<WebhookMetrics>,
}

/// A started aggregator.
pub struct Running {
    pub decisions: watch::Receiver<Decisions>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Waits for every task to stop (after shutdown) and reports the first failure.
    pub async fn join(self) -> anyhow::Result<()> {
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

pub fn start(
    settings: Settings,
    grpc: TcpListener,
    http_listener: TcpListener,
    upstream: Upstream,
    shutdown: CancellationToken,
) -> Running {
    let mut registry = Registry::default();
    let metrics = Arc::new(SelfMetrics::register(&mut registry));
    if let Some(webhook) = &settings.webhook_metrics {
        webhook.register(&mut registry);
    }
    if let Some((_, expiry)) = &settings.tls {
        registry.register(
            "wva_grpc_certificate_expiry_timestamp_seconds",
            "Unix time the gRPC port's serving certificate expires",
            expiry.clone(),
        );
    }
    let gauges = DecisionGauges::register(
        &mut registry,
        settings.legacy_metrics,
        settings.controller_instance.clone(),
    );
    let store = Arc::new(PodStore::default());
    let trigger = Arc::new(Trigger::default());
    let (decisions_tx, decisions_rx) = watch::channel(Decisions::default());
    let (ready_tx, ready_rx) = watch::channel(false);

    let taps = Arc::new(Taps::default());
    let ingest = Arc::new(Ingest::new(
        Arc::clone(&store),
        Arc::clone(&trigger),
        upstream.saturation.clone(),
        Arc::clone(&metrics),
        Arc::clone(&settings.admission),
        Arc::clone(&taps),
        shutdown.clone(),
    ));
    let scaler = Scaler {
        decisions: decisions_rx.clone(),
        leading: upstream.leading.clone(),
        published: upstream.published.clone(),
    };
    let diagnostics = DiagnosticsService::new(
        decisions_rx.clone(),
        upstream.leading.clone(),
        Arc::clone(&store),
        taps,
    );
    let grpc_task = tokio::spawn(grpc::serve(
        ingest,
        (scaler, diagnostics),
        settings.readers.clone(),
        grpc,
        settings.tls.as_ref().map(|(config, _)| Arc::clone(config)),
        shutdown.clone(),
    ));

    let http_state = Arc::new(HttpState {
        registry,
        decisions: decisions_rx.clone(),
        ready: ready_rx,
    });
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        http::serve(http_listener, http_state, http_shutdown).await;
        Ok(())
    });

    let mut tasks = vec![grpc_task, http_task];
    let (failures_tx, failures) = watch::channel(Failures::default());
    if !settings.polled.is_empty() || settings.default_source != SourceKind::Agent {
        let poller = Poller::new(
            Arc::clone(&store),
            Arc::clone(&trigger),
            settings.polled.clone(),
            settings.default_source,
            settings.poll_interval,
            failures_tx,
        );
        tasks.push(tokio::spawn(
            poller.run(upstream.variants.clone(), shutdown.clone()),
        ));
    }
    let analysis = AnalysisLoop {
        failures,
        scale_to_zero: settings.scale_to_zero,
        hybrid: settings.hybrid,
        store,
        trigger,
        metrics,
        gauges,
        upstream,
        decisions: decisions_tx,
        ready: ready_tx,
    };
    tasks.push(tokio::spawn(analysis.run(shutdown)));
    Running {
        decisions: decisions_rx,
        tasks,
    }
}
