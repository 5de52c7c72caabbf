//! Kubernetes mode: configuration from flags, environment and ConfigMaps,
//! the controller, leader election and the analysis service, started
//! together and stopped together.

pub mod configmaps;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_agent::tls::TargetTls;
use wva_certs::{CertBundle, ExpiryGauge, Kept};
use wva_k8s::controller::{self, Controller};
use wva_k8s::identity::ClusterAdmission;
use wva_k8s::scrape_source::PodScrapingSource;
use wva_k8s::scraping::ScrapeConfig;
use wva_k8s::{leader, pods};
use wva_webhook::server::WebhookMetrics;
use wva_webhook::{self, WebhookSettings};

use self::configmaps::{Names, Outputs};

/// How often the self-made gRPC certificate is checked for renewal.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(30);
use crate::args::{ActuatorKind, Args};
use crate::params;
use crate::runtime::{self, Upstream};
use crate::startup;

/// Runs until shutdown. Missing or invalid configuration fails before
/// anything is served, naming the key and the problem.
pub async fn run(
    argv: Vec<OsString>,
    first: Args,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if first.actuator != ActuatorKind::None {
        bail!("--actuator local is for standalone mode; in a cluster the HPA scales");
    }
    let namespace = first
        .pod_namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .context("POD_NAMESPACE (--pod-namespace) is required in Kubernetes mode: the configuration ConfigMaps and the leader Lease live there")?;
    let client = wva_k8s::bounded::client()
        .await
        .context("cannot configure the Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let names = Names {
        namespace,
        main: first.config_map_name.clone(),
        saturation: first
            .saturation_config
            .is_none()
            .then(|| first.saturation_config_map_name.clone()),
        scale_to_zero: first
            .scale_to_zero_config
            .is_none()
            .then(|| first.scale_to_zero_config_map_name.clone()),
        service_class: first
            .service_class_config
            .is_none()
            .then(|| first.service_class_config_map_name.clone()),
    };
    let initial = configmaps::read(client.clone(), &names).await?;
    let parsed = params::parse(&argv, &names.main, &initial.main)?;
    let args = parsed.args.clone();
    // Keys without a flag (PROMETHEUS_*): the environment, then the ConfigMap.
    let config_map = &initial.main;
    let lookup = |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| config_map.get(key).cloned())
    };
    let mut settings = startup::settings(&args, lookup)?;
    if settings.readers.is_open() {
        warn!(
            "KEDA's external scaler and the diagnostics service answer anyone who reaches the gRPC port: \
             set WVA_READER_TOKEN_FILE or WVA_GRPC_TLS_CLIENT_CA (see docs/security.md)"
        );
    }
    settings.polled.push(Arc::new(PodScrapingSource::new(
        client.clone(),
        ScrapeConfig {
            timeout: args.scrape_timeout,
            max_concurrent: args.max_concurrent_scrapes,
            ttl: args.scrape_cache_ttl,
            token: lookup("WVA_SCRAPE_BEARER_TOKEN").map(|t| t.trim().to_string()),
            role: wva_proto::v1::Role::Vllm,
            tls: scrape_tls(&args)?,
        },
    )));
    let mut tasks = Vec::new();
    let (agent_ca_tx, agent_ca) = watch::channel(None);
    match &args.grpc_tls_secret {
        Some(secret) => {
            let (served, task) = self_made_grpc_certificate(
                &args,
                client.clone(),
                &names.namespace,
                secret,
                agent_ca_tx,
                shutdown.clone(),
            )
            .await?;
            settings.tls = Some(served);
            tasks.push(task);
        }
        None if settings.tls.is_none() => warn!(
            "the gRPC port serves plaintext: agents' tokens travel in the clear unless the network \
             encrypts them; set WVA_GRPC_TLS_SECRET (the chart's default) or WVA_GRPC_TLS_CERT"
        ),
        None => {}
    }
    if let Some(addr) = args.webhook_addr {
        let webhook = WebhookSettings {
            addr,
            injection: args.injection_config.clone().expect("required by clap"),
            cert_dir: args.webhook_cert_dir.clone(),
            service: args.webhook_service.clone(),
            namespace: names.namespace.clone(),
            secret: args.webhook_secret.clone(),
            configuration: args.webhook_configuration.clone(),
            agent_ca: args.grpc_tls_secret.is_some().then_some(agent_ca),
        };
        let metrics = WebhookMetrics::default();
        tasks.extend(
            wva_webhook::start(client.clone(), webhook, metrics.clone(), shutdown.clone()).await?,
        );
        settings.webhook_metrics = Some(metrics);
    }
    let election = election_config(&args)?;
    let reporter = Reporter {
        controller: "wva-aggregator".to_string(),
        instance: args.pod_name.clone(),
    };

    let (tuning_tx, tuning) = watch::channel(args.tuning());
    let (saturation, saturation_tx) = from_file_or_config_map(
        startup::saturation_file(&args, shutdown.clone())?,
        initial.saturation,
    );
    let (scale_to_zero, scale_to_zero_tx) = from_file_or_config_map(
        startup::scale_to_zero_file(&args, shutdown.clone())?,
        initial.scale_to_zero,
    );
    let (hybrid, service_class_tx) = from_file_or_config_map(
        startup::service_class_file(&args, shutdown.clone())?,
        initial.service_class,
    );
    let config_task = tokio::spawn(configmaps::run(
        client.clone(),
        configmaps::Running {
            names,
            argv,
            parsed,
            main: initial.main,
            reporter: reporter.clone(),
        },
        Outputs {
            tuning: tuning_tx,
            saturation: saturation_tx,
            scale_to_zero: scale_to_zero_tx,
            service_class: service_class_tx,
        },
        shutdown.clone(),
    ));

    // An empty WATCH_NAMESPACE, as charts often render it, means all.
    let watch_namespace = args.watch_namespace.clone().filter(|ns| !ns.is_empty());
    let previous = controller::stored_decisions(client.clone(), watch_namespace.as_deref()).await?;
    info!(
        variants = previous.len(),
        "continuing from the decisions in status"
    );
    let mut pods_task = None;
    if args.verify_agent_identity {
        if args.agent_token_file.is_some() {
            bail!(
                "WVA_AGENT_TOKEN_FILE (--agent-token-file) and agent identity verification exclude each other: agents present their own pod's token; set WVA_VERIFY_AGENT_IDENTITY=false to use a shared token"
            );
        }
        let (index, task) =
            pods::start(client.clone(), watch_namespace.as_deref(), shutdown.clone());
        pods_task = Some(task);
        settings.admission = Arc::new(ClusterAdmission::new(
            client.clone(),
            args.token_audience.clone(),
            index.pods,
            index.replica_sets,
        ));
    }
    let (controller, feeds) = Controller::new(
        client.clone(),
        controller::Options {
            namespace: watch_namespace,
            controller_instance: args.controller_instance.clone(),
            reporter,
        },
    );
    let (leading_tx, leading) = watch::channel(election.is_none());
    let election_task = election
        .map(|config| tokio::spawn(leader::run(client, config, leading_tx, shutdown.clone())));
    let (grpc, http) = startup::listen(&args).await?;
    let running = runtime::start(
        settings,
        grpc,
        http,
        Upstream {
            variants: feeds.variants,
            saturation,
            scale_to_zero,
            hybrid,
            replicas: Some(feeds.replicas),
            leading: leading.clone(),
            previous,
            tuning,
            published: Some(feeds.published),
        },
        shutdown.clone(),
    );
    let controller_task =
        tokio::spawn(controller.run(running.decisions.clone(), leading, shutdown));
    running.join().await?;
    controller_task.await??;
    config_task.await??;
    if let Some(task) = pods_task {
        task.await?;
    }
    if let Some(task) = election_task {
        task.await??;
    }
    for task in tasks {
        task.await??;
    }
    info!("stopped");
    Ok(())
}

type Feed<T> = watch::Sender<Arc<T>>;

/// The file's channel when a file is configured; otherwise a channel seeded
/// from the ConfigMap read at start, and its sender for the ConfigMap watch.
fn from_file_or_config_map<T: Default + Send + Sync + 'static>(
    file: Option<watch::Receiver<Arc<T>>>,
    initial: Option<T>,
) -> (watch::Receiver<Arc<T>>, Option<Feed<T>>) {
    match file {
        Some(rx) => (rx, None),
        None => {
            let (tx, rx) = watch::channel(Arc::new(initial.unwrap_or_default()));
            (rx, Some(tx))
        }
    }
}

/// The election settings, or `None` when election is off.
/// The self-made certificate of the gRPC port, kept current like the
/// webhook's; its CA (first the current one, then each renewal's) goes to
/// `agent_ca` for the webhook to give injected agents.
async fn self_made_grpc_certificate(
    args: &Args,
    client: kube::Client,
    namespace: &str,
    secret: &str,
    agent_ca: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    (Arc<rustls::ServerConfig>, ExpiryGauge),
    JoinHandle<anyhow::Result<()>>,
)> {
    if args.grpc_tls_services.is_empty() {
        bail!(
            "WVA_GRPC_TLS_SECRET needs WVA_GRPC_TLS_SERVICES: the Services agents and KEDA reach the gRPC port by"
        );
    }
    let kept = Kept {
        client,
        namespace: namespace.to_string(),
        name: secret.to_string(),
        names: args
            .grpc_tls_services
            .iter()
            .flat_map(|service| wva_certs::dns_names(service, namespace))
            .collect(),
        what: "the gRPC port",
    };
    let hand_out = {
        let agent_ca = agent_ca.clone();
        move |bundle: CertBundle| {
            agent_ca.send_replace(Some(bundle.ca));
            async { Ok(()) }
        }
    };
    let expiry = ExpiryGauge::default();
    let (served, first, task) =
        wva_certs::serve_self_made(kept, expiry.clone(), CERTIFICATE_CHECK, hand_out, shutdown)
            .await?;
    agent_ca.send_replace(Some(first.ca));
    let config = startup::grpc_tls(args, served)?;
    Ok((
        (config, expiry),
        tokio::spawn(async move { Ok(task.await?) }),
    ))
}

fn election_config(args: &Args) -> anyhow::Result<Option<leader::ElectionConfig>> {
    let e = &args.election;
    if !e.leader_elect {
        return Ok(None);
    }
    if e.renew_deadline >= e.lease_duration {
        bail!(
            "RENEW_DEADLINE ({:?}) must be shorter than LEASE_DURATION ({:?}) so a leader steps down before another may take over",
            e.renew_deadline,
            e.lease_duration
        );
    }
    let namespace = args.pod_namespace.clone().unwrap_or_default();
    let identity = args.pod_name.clone().filter(|n| !n.is_empty()).context(
        "POD_NAME (--pod-name) is required for leader election: it names this replica in the Lease",
    )?;
    Ok(Some(leader::ElectionConfig {
        namespace,
        name: e.leader_election_id.clone(),
        identity,
        lease_duration: e.lease_duration,
        renew_deadline: e.renew_deadline,
        retry_period: e.retry_period,
    }))
}

/// How the pod scraping source verifies https pods; a CA file that cannot
/// be used fails the start rather than every scrape.
fn scrape_tls(args: &Args) -> anyhow::Result<TargetTls> {
    if args.scrape_insecure_skip_verify {
        warn!(
            "WVA_SCRAPE_INSECURE_SKIP_VERIFY=true: https pods' certificates are not verified; for development only"
        );
    }
    let tls = TargetTls {
        ca: args.scrape_ca_file.clone(),
        server_name: args.scrape_server_name.clone(),
        insecure_skip_verify: args.scrape_insecure_skip_verify,
    };
    if tls.ca.is_some() || tls.server_name.is_some() {
        tls.client_config()
            .context("pod scraping TLS (WVA_SCRAPE_CA_FILE, WVA_SCRAPE_SERVER_NAME)")?;
    }
    Ok(tls)
}
