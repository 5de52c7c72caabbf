//! Wires the aggregator together: gRPC ingest → pod store → analysis loop →
//! decisions → gauges and the decisions channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};
use tracing::{info, warn};
use wva_proto::keda::external_scaler_server::ExternalScalerServer;
use wva_proto::v1::diagnostics_server::DiagnosticsServer;
use wva_proto::v1::telemetry_server::TelemetryServer;

use crate::admission::Admission;
use crate::config::saturation::SaturationConfigSet;
use crate::config::scale_to_zero::ScaleToZeroConfigSet;
use crate::decision::Decision;
use crate::diagnostics::{DiagnosticsService, Taps};
use crate::engine::{Engine, Inputs, ReplicaCounts};
use crate::gauges::DecisionGauges;
use crate::http::{self, HttpState};
use crate::ingest::{Ingest, IngestService, MAX_MESSAGE_BYTES};
use crate::k8s::controller::Published;
use crate::keda::Scaler;
use crate::sources::{Failures, PolledSource, Poller, SourceKind};
use crate::store::PodStore;
use crate::telemetry::SelfMetrics;
use crate::trigger::Trigger;
use crate::variants::{VariantAutoscaling, VariantKey};
use crate::webhook::server::WebhookMetrics;

/// How long in-flight connections may take to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(2);

pub type Variants = Arc<Vec<VariantAutoscaling>>;
pub type Replicas = Arc<HashMap<VariantKey, ReplicaCounts>>;
pub type Decisions = Arc<Vec<Decision>>;

/// The timing of the analysis; may change while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub min_analysis_interval: Duration,
    pub analysis_interval: Duration,
    pub staleness: Duration,
}

impl Tuning {
    pub fn from_args(args: &crate::args::Args) -> Self {
        Tuning {
            min_analysis_interval: args.min_analysis_interval,
            analysis_interval: args.analysis_interval,
            staleness: args.staleness,
        }
    }
}

#[derive(Clone)]
pub struct Settings {
    pub legacy_metrics: bool,
    pub controller_instance: Option<String>,
    pub scale_to_zero: bool,
    /// Who may stream, and which variant each pod feeds.
    pub admission: Arc<dyn Admission>,
    pub tls: Option<ServerTlsConfig>,
    /// Sources asked for the pods of variants that name one, and how often.
    pub polled: Vec<Arc<dyn PolledSource>>,
    /// The source of variants that name none.
    pub default_source: SourceKind,
    pub poll_interval: Duration,
    /// The agent-injection webhook's counters, served with the others.
    pub webhook_metrics: Option<WebhookMetrics>,
}

/// Where decisions come from.
pub struct Sources {
    pub variants: watch::Receiver<Variants>,
    pub saturation: watch::Receiver<Arc<SaturationConfigSet>>,
    /// Per-model scale-to-zero policies (used when `Settings::scale_to_zero`).
    pub scale_to_zero: watch::Receiver<Arc<ScaleToZeroConfigSet>>,
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

impl Sources {
    /// Sources of an aggregator that runs alone and starts afresh (standalone
    /// mode): it always leads and has no earlier decisions.
    pub fn alone(
        variants: watch::Receiver<Variants>,
        saturation: watch::Receiver<Arc<SaturationConfigSet>>,
        scale_to_zero: watch::Receiver<Arc<ScaleToZeroConfigSet>>,
        replicas: Option<watch::Receiver<Replicas>>,
        tuning: Tuning,
    ) -> Self {
        Sources {
            variants,
            saturation,
            scale_to_zero,
            replicas,
            leading: watch::channel(true).1,
            previous: HashMap::new(),
            tuning: watch::channel(tuning).1,
            published: None,
        }
    }
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
    sources: Sources,
    shutdown: watch::Receiver<bool>,
) -> Running {
    let mut registry = Registry::default();
    let metrics = Arc::new(SelfMetrics::register(&mut registry));
    if let Some(webhook) = &settings.webhook_metrics {
        webhook.register(&mut registry);
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
        Arc::clone(&metrics),
        Arc::clone(&settings.admission),
        Arc::clone(&taps),
        shutdown.clone(),
    ));
    let scaler = Scaler {
        decisions: decisions_rx.clone(),
        leading: sources.leading.clone(),
        published: sources.published.clone(),
    };
    let diagnostics = DiagnosticsService {
        decisions: decisions_rx.clone(),
        leading: sources.leading.clone(),
        store: Arc::clone(&store),
        taps,
    };
    let grpc_task = tokio::spawn(serve_grpc(
        ingest,
        (scaler, diagnostics),
        grpc,
        settings.tls.clone(),
        shutdown.clone(),
    ));

    let http_state = Arc::new(HttpState {
        registry,
        decisions: decisions_rx.clone(),
        ready: ready_rx,
    });
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        http::serve(http_listener, http_state, http_shutdown).await?;
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
            poller.run(sources.variants.clone(), shutdown.clone()),
        ));
    }
    let analysis = AnalysisLoop {
        failures,
        settings,
        store,
        trigger,
        metrics,
        gauges,
        sources,
        decisions: decisions_tx,
        ready: ready_tx,
    };
    tasks.push(tokio::spawn(analysis.run(shutdown)));
    Running {
        decisions: decisions_rx,
        tasks,
    }
}

/// Serves agent ingest, KEDA's external scaler and diagnostics on one port.
async fn serve_grpc(
    ingest: Arc<Ingest>,
    (scaler, diagnostics): (Scaler, DiagnosticsService),
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let service =
        TelemetryServer::new(IngestService(ingest)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stop = shutdown.clone();
    let server = builder
        .add_service(service)
        .add_service(ExternalScalerServer::new(scaler))
        .add_service(DiagnosticsServer::new(diagnostics))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            crate::shutdown::requested(&mut stop).await;
        });
    tokio::select! {
        result = server => Ok(result?),
        _ = async {
            crate::shutdown::requested(&mut shutdown).await;
            tokio::time::sleep(DRAIN).await;
        } => {
            warn!("gRPC connections did not drain in time; closing them");
            Ok(())
        }
    }
}

struct AnalysisLoop {
    /// Failures of polled sources, shown on the decisions they hold.
    failures: watch::Receiver<Failures>,
    settings: Settings,
    store: Arc<PodStore>,
    trigger: Arc<Trigger>,
    metrics: Arc<SelfMetrics>,
    gauges: DecisionGauges,
    sources: Sources,
    decisions: watch::Sender<Decisions>,
    ready: watch::Sender<bool>,
}

impl AnalysisLoop {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut engine = Engine::with_previous(std::mem::take(&mut self.sources.previous));
        let mut last_run: Option<Instant> = None;
        loop {
            let tuning = *self.sources.tuning.borrow_and_update();
            // Wake often enough to expire silent pods within the staleness bound.
            let period = tuning.analysis_interval.min(tuning.staleness / 2);
            if let Some(last) = last_run {
                let earliest = last + tuning.min_analysis_interval;
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest.into()) => {}
                    _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
                }
                tokio::select! {
                    _ = self.trigger.fired() => {}
                    _ = changed(&mut self.sources.variants) => {}
                    _ = changed_opt(&mut self.sources.replicas) => {}
                    _ = changed(&mut self.sources.leading) => {}
                    _ = changed(&mut self.sources.tuning) => {}
                    _ = tokio::time::sleep_until((last + period).max(earliest).into()) => {}
                    _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
                }
            }
            last_run = Some(Instant::now());
            self.analyse(&mut engine, tuning.staleness);
        }
    }

    fn analyse(&mut self, engine: &mut Engine, staleness: Duration) {
        let now = Instant::now();
        let pending_since = self.trigger.take();
        for pod in self.store.expire(now, staleness) {
            warn!(%pod, ?staleness, "no sample within the staleness bound; pod left the analysis");
        }
        let variants = self.sources.variants.borrow_and_update().clone();
        let config = self.sources.saturation.borrow().clone();
        let scale_to_zero = self.sources.scale_to_zero.borrow().clone();
        let replicas = self
            .sources
            .replicas
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone());
        let (mut decisions, events) = self.store.with_pods(|pods| {
            engine.evaluate(&Inputs {
                now,
                wall: SystemTime::now(),
                variants: &variants,
                pods,
                replicas: replicas.as_deref(),
                config: &config,
                staleness,
                scale_to_zero: self.settings.scale_to_zero.then_some(&*scale_to_zero),
            })
        });
        for e in &events {
            info!(variant = %e.variant, from = e.from, to = e.to, direction = e.direction(), reason = e.reason, "desired replicas changed");
        }
        if *self.sources.leading.borrow_and_update() {
            self.gauges.publish(&decisions, &events);
        } else {
            self.gauges.publish(&[], &[]);
        }
        let failures = self.failures.borrow().clone();
        for d in &mut decisions {
            d.source_failure = failures.get(&d.variant).cloned();
        }
        self.decisions.send_replace(Arc::new(decisions));
        self.ready.send_replace(true);
        self.metrics
            .analysis_ran(pending_since.map(|t| t.elapsed()));
    }
}

/// Resolves when the channel changes; never once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Like [`changed`]; never when there is no channel.
async fn changed_opt<T>(rx: &mut Option<watch::Receiver<T>>) {
    match rx {
        Some(rx) => changed(rx).await,
        None => std::future::pending().await,
    }
}
