//! Command-line flags; every flag can also come from the environment variable
//! named beside it (flag > env > default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use wva_core::snapshot::Tuning;
use wva_core::sources::SourceKind;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "wva-aggregator",
    version,
    about = "Ingests wva-agent telemetry, analyses saturation per model and publishes desired replicas",
    // The gRPC port's certificate: files, or self-made in Kubernetes mode.
    group(clap::ArgGroup::new("grpc_tls").args(["tls_cert", "grpc_tls_secret"]))
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Run without Kubernetes: VariantAutoscalings come from --variants.
    #[arg(long, env = "WVA_STANDALONE")]
    pub standalone: bool,

    /// Run the self-contained demo: embedded variants, local actuator, load ramp, live table.
    #[arg(long, conflicts_with_all = ["variants", "standalone"])]
    pub demo: bool,

    /// Speeds the demo's load profile up (2.0 = twice as fast).
    #[arg(long, env = "WVA_DEMO_SPEED", default_value_t = 1.0, requires = "demo")]
    pub demo_speed: f64,

    /// The demo's load: the ramp, or the step-size benchmark's step or noisy load.
    #[arg(long, value_enum, default_value = "ramp", requires = "demo")]
    pub demo_trace: crate::demo::trace::Trace,

    /// YAML file of VariantAutoscaling objects (several per file); reloaded when it changes.
    #[arg(long, env = "WVA_VARIANTS_FILE")]
    pub variants: Option<PathBuf>,

    /// Kubernetes mode: watch only this namespace (default: the whole cluster).
    #[arg(long, env = "WATCH_NAMESPACE", conflicts_with = "standalone")]
    pub watch_namespace: Option<String>,

    /// This pod's name (downward API): the leader-election identity and the
    /// reporting instance in Events.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace (downward API): where the leader Lease and the
    /// configuration ConfigMaps live.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Main configuration ConfigMap, in POD_NAMESPACE (Kubernetes mode).
    #[arg(
        long,
        env = "CONFIG_MAP_NAME",
        default_value = "workload-variant-autoscaler-variantautoscaling-config"
    )]
    pub config_map_name: String,

    /// Saturation-scaling ConfigMap, in POD_NAMESPACE (Kubernetes mode;
    /// --saturation-config takes precedence).
    #[arg(
        long,
        env = "SATURATION_CONFIG_MAP_NAME",
        default_value = "saturation-scaling-config"
    )]
    pub saturation_config_map_name: String,

    /// Scale-to-zero ConfigMap, in POD_NAMESPACE (Kubernetes mode;
    /// --scale-to-zero-config takes precedence).
    #[arg(
        long,
        env = "SCALE_TO_ZERO_CONFIG_MAP_NAME",
        default_value = "model-scale-to-zero-config"
    )]
    pub scale_to_zero_config_map_name: String,

    /// HYBRID mode's serviceclass ConfigMap, in POD_NAMESPACE (Kubernetes
    /// mode; --service-class-config takes precedence).
    #[arg(
        long,
        env = "SERVICE_CLASS_CONFIG_MAP_NAME",
        default_value = "serviceclass"
    )]
    pub service_class_config_map_name: String,

    #[command(flatten)]
    pub election: ElectionArgs,

    /// Address of the gRPC ingest for agents.
    #[arg(long, env = "WVA_GRPC_ADDR", default_value = "0.0.0.0:9443")]
    pub grpc_addr: SocketAddr,

    /// Address of /metrics, /healthz, /readyz and /v1/decisions.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Saturation-scaling ConfigMap (YAML manifest); reloaded when it changes.
    #[arg(long, env = "WVA_SATURATION_CONFIG")]
    pub saturation_config: Option<PathBuf>,

    /// Scale-to-zero ConfigMap (YAML manifest); reloaded when it changes.
    /// Applies only with --scale-to-zero.
    #[arg(long, env = "WVA_SCALE_TO_ZERO_CONFIG")]
    pub scale_to_zero_config: Option<PathBuf>,

    /// HYBRID mode's serviceclass ConfigMap (YAML manifest); reloaded when
    /// it changes. Applies only with --experimental-proactive-model true.
    #[arg(long, env = "WVA_SERVICE_CLASS_CONFIG")]
    pub service_class_config: Option<PathBuf>,

    /// Fewest time between two analyses; arriving data triggers them.
    #[arg(long, env = "WVA_MIN_ANALYSIS_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_analysis_interval: Duration,

    /// Fewest time between two analyses when a sample changes a saturation
    /// verdict (a pod crossing its model's thresholds or spare triggers, or
    /// its scrape failing or recovering): such a sample does not wait for
    /// --min-analysis-interval.
    #[arg(long, env = "WVA_MIN_VERDICT_ANALYSIS_INTERVAL", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub min_verdict_analysis_interval: Duration,

    /// Longest time between two analyses when no data arrives.
    #[arg(long, env = "GLOBAL_OPT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub analysis_interval: Duration,

    /// How often polled sources (Prometheus, pod scraping) are asked.
    #[arg(long, env = "WVA_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Source of variants without a `wva.llmd.ai/metrics-source` annotation.
    #[arg(long, env = "WVA_METRICS_SOURCE", default_value = "agent", value_parser = source_kind())]
    pub metrics_source: SourceKind,

    /// Pod scraping source: PEM CA bundle for https pods [default: the system roots].
    #[arg(long, env = "WVA_SCRAPE_CA_FILE")]
    pub scrape_ca_file: Option<PathBuf>,

    /// Pod scraping source: name to verify in https pods' certificates
    /// [default: the pod IP].
    #[arg(long, env = "WVA_SCRAPE_SERVER_NAME")]
    pub scrape_server_name: Option<String>,

    /// Pod scraping source: accept any certificate from https pods
    /// (development only).
    #[arg(long, env = "WVA_SCRAPE_INSECURE_SKIP_VERIFY", default_value_t = false, action = clap::ArgAction::Set)]
    pub scrape_insecure_skip_verify: bool,

    /// Serve the agent-injection webhook (HTTPS) here (Kubernetes mode).
    #[arg(long, env = "WVA_WEBHOOK_ADDR", requires = "injection_config")]
    pub webhook_addr: Option<SocketAddr>,

    /// The injection configuration (YAML): agent image, aggregator address,
    /// resources.
    #[arg(long, env = "WVA_INJECTION_CONFIG")]
    pub injection_config: Option<PathBuf>,

    /// Directory with the webhook's `tls.crt` and `tls.key` (cert-manager),
    /// re-read when renewed [default: a certificate made and shared through
    /// --webhook-secret].
    #[arg(long, env = "WVA_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,

    /// The Service the API server calls the webhook through; names the
    /// self-made certificate.
    #[arg(long, env = "WVA_WEBHOOK_SERVICE", default_value = "wva-webhook")]
    pub webhook_service: String,

    /// The Secret (in --pod-namespace) that holds the self-made certificate.
    #[arg(long, env = "WVA_WEBHOOK_SECRET", default_value = "wva-webhook-tls")]
    pub webhook_secret: String,

    /// The MutatingWebhookConfiguration whose caBundle gets the self-made CA.
    #[arg(
        long,
        env = "WVA_WEBHOOK_CONFIGURATION",
        default_value = "wva-agent-injector"
    )]
    pub webhook_configuration: String,

    /// Pod scraping source: time limit of one pod's scrape.
    #[arg(long, env = "WVA_SCRAPE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub scrape_timeout: Duration,

    /// Pod scraping source: pods scraped at once.
    #[arg(long, env = "WVA_MAX_CONCURRENT_SCRAPES", default_value_t = 10)]
    pub max_concurrent_scrapes: usize,

    /// Pod scraping source: how long a scrape's result is kept.
    #[arg(long, env = "WVA_SCRAPE_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub scrape_cache_ttl: Duration,

    /// A pod whose latest sample is older than this leaves the analysis.
    #[arg(long, env = "WVA_STALENESS", default_value = "10s", value_parser = humantime::parse_duration)]
    pub staleness: Duration,

    /// How long a variant may take to carry out a step (its scaler applying
    /// it, its new pods becoming ready and reporting) before its model goes
    /// on without it. Size it to a slow vLLM start: image pull, weights, warm-up.
    #[arg(long, env = "WVA_CONVERGENCE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub convergence_timeout: Duration,

    /// Also publish the legacy `inferno_*` series.
    #[arg(long, env = "WVA_LEGACY_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub legacy_metrics: bool,

    /// Adds `controller_instance` to every published series.
    #[arg(long, env = "CONTROLLER_INSTANCE")]
    pub controller_instance: Option<String>,

    /// Let a model with no request for its retention period (scale-to-zero
    /// config, default 10m) go to zero replicas; off, the cheapest variant of
    /// every model keeps one.
    #[arg(long, env = "WVA_SCALE_TO_ZERO", default_value_t = false, action = clap::ArgAction::Set)]
    pub scale_to_zero: bool,

    /// The operating mode: true is HYBRID mode, the model-based optimizer
    /// (service classes, learned performance profiles) beside the saturation
    /// analysis; false is CAPACITY-ONLY mode, the saturation analysis alone.
    #[arg(
        long,
        env = "EXPERIMENTAL_PROACTIVE_MODEL",
        default_value = "false",
        value_parser = proactive_model,
        action = clap::ArgAction::Set
    )]
    pub experimental_proactive_model: bool,

    /// Kubernetes mode: verify each agent's projected service-account token
    /// with a TokenReview and take its variant from the pod's owning
    /// Deployment. Off: agents are trusted (with --agent-token-file, one
    /// shared secret).
    #[arg(long, env = "WVA_VERIFY_AGENT_IDENTITY", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_agent_identity: bool,

    /// Audience the agents' projected tokens are minted for.
    #[arg(long, env = "WVA_TOKEN_AUDIENCE", default_value = "wva-aggregator")]
    pub token_audience: String,

    /// File holding the bearer token agents must present.
    #[arg(long, env = "WVA_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// PEM certificate chain for the gRPC ingest (enables TLS).
    #[arg(long, env = "WVA_GRPC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "WVA_GRPC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle for client certificates on the gRPC port; who must
    /// present one is --tls-client-auth.
    #[arg(long, env = "WVA_GRPC_TLS_CLIENT_CA", requires = "grpc_tls")]
    pub tls_client_ca: Option<PathBuf>,

    /// Which gRPC clients must present a certificate signed by --tls-client-ca.
    #[arg(
        long,
        env = "WVA_GRPC_TLS_CLIENT_AUTH",
        value_enum,
        default_value_t = ClientAuth::All,
        requires = "tls_client_ca"
    )]
    pub tls_client_auth: ClientAuth,

    /// Kubernetes mode: serve the gRPC port over TLS with a certificate the
    /// aggregator makes, renews and shares through this Secret in
    /// --pod-namespace; the injection webhook gives agents its CA.
    #[arg(long, env = "WVA_GRPC_TLS_SECRET", conflicts_with = "tls_cert")]
    pub grpc_tls_secret: Option<String>,

    /// Services in --pod-namespace whose in-cluster names the self-made gRPC
    /// certificate covers (comma-separated).
    #[arg(
        long,
        env = "WVA_GRPC_TLS_SERVICES",
        value_delimiter = ',',
        requires = "grpc_tls_secret"
    )]
    pub grpc_tls_services: Vec<String>,

    /// File holding a bearer token that KEDA and diagnostics clients
    /// (wvactl) may present instead of a client certificate.
    #[arg(long, env = "WVA_READER_TOKEN_FILE")]
    pub reader_token_file: Option<PathBuf>,

    /// Who sets replica counts in standalone mode.
    #[arg(long, env = "WVA_ACTUATOR", value_enum, default_value_t = ActuatorKind::None)]
    pub actuator: ActuatorKind,

    #[command(flatten)]
    pub local: LocalActuatorArgs,
}

/// Leader election among aggregator replicas (Kubernetes mode).
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// Elect one leader through a Lease; only it writes status and publishes
    /// decision gauges. Off: this replica always leads (run one replica only).
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_ID",
        default_value = "wva-aggregator-leader"
    )]
    pub leader_election_id: String,

    /// How long a leader that stopped renewing keeps the Lease.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// A leader that could not renew for this long steps down (< --lease-duration).
    #[arg(long, env = "RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,

    /// Interval between election rounds.
    #[arg(long, env = "RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Print the VariantAutoscaling CustomResourceDefinition as YAML and exit.
    PrintCrd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientAuth {
    /// Every client: agents, KEDA and diagnostics.
    All,
    /// KEDA and diagnostics clients only (or the reader token); agents
    /// authenticate by token, e.g. their pod's own in Kubernetes mode.
    Readers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActuatorKind {
    /// Replica counts are what the reporting pods show.
    None,
    /// Start and stop local vllm-sim + wva-agent pairs to follow desired replicas.
    Local,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LocalActuatorArgs {
    /// Time a new simulated replica takes before it is ready.
    #[arg(long, env = "WVA_COLD_START", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,

    /// Scale-down stabilization window, as an HPA's
    /// `behavior.scaleDown.stabilizationWindowSeconds`: replicas are removed
    /// only down to the highest desired value seen within it.
    #[arg(long, env = "WVA_SCALE_DOWN_STABILIZATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub scale_down_stabilization: Duration,

    /// Replicas each variant starts with.
    #[arg(long, env = "WVA_INITIAL_REPLICAS", default_value_t = 1)]
    pub initial_replicas: u32,

    /// Scrape interval of the started agents.
    #[arg(long, env = "WVA_AGENT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub agent_interval: Duration,

    /// vllm-sim binary (default: beside this executable).
    #[arg(long, env = "WVA_SIM_BIN")]
    pub sim_bin: Option<PathBuf>,

    /// wva-agent binary (default: beside this executable).
    #[arg(long, env = "WVA_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
}

impl Args {
    /// The timing of the analysis these arguments set.
    pub fn tuning(&self) -> Tuning {
        Tuning {
            min_analysis_interval: self.min_analysis_interval,
            min_verdict_interval: self.min_verdict_analysis_interval,
            analysis_interval: self.analysis_interval,
            staleness: self.staleness,
            convergence_timeout: self.convergence_timeout,
        }
    }
}

/// The operating mode, as WVA spells it: "true" (HYBRID) or "false"
/// (CAPACITY-ONLY), in any case and with surrounding blanks.
fn proactive_model(value: &str) -> Result<bool, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected \"true\" (HYBRID mode) or \"false\" (CAPACITY-ONLY mode)".to_string())
    }
}

/// Parses a source by name, listing the names in help and errors.
fn source_kind() -> impl TypedValueParser<Value = SourceKind> {
    PossibleValuesParser::new(SourceKind::ALL.map(SourceKind::as_str))
        .try_map(|name| SourceKind::named(&name).ok_or("names no source"))
}
