use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use kube::runtime::events::Reporter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use wva_aggregator::args::{ActuatorKind, Args, Command};
use wva_aggregator::config::saturation::SaturationConfigSet;
use wva_aggregator::k8s::controller::{self, Controller};
use wva_aggregator::k8s::leader;
use wva_aggregator::service::{self, Settings, Sources};
use wva_aggregator::standalone::actuator::{ActuatorConfig, LocalActuator};
use wva_aggregator::{demo, k8s, variants, watchfile};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::PrintCrd) = args.command {
        print!("{}", k8s::crd::crd_yaml());
        return ExitCode::SUCCESS;
    }
    let default_level = if args.demo { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("wva-aggregator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    if args.demo {
        let summary = demo::run(&args, shutdown).await?;
        println!();
        for (variant, peak) in &summary.peak_desired {
            let last = summary
                .final_desired
                .get(variant)
                .copied()
                .unwrap_or_default();
            println!("{variant}: peak desired {peak}, final desired {last}");
        }
        println!(
            "{} requests completed; {}",
            summary.completed,
            if summary.settled {
                "the fleet scaled back down"
            } else {
                "stopped before the fleet settled"
            }
        );
        return Ok(());
    }
    let saturation_rx = match &args.saturation_config {
        Some(path) => watchfile::load_and_watch(
            path.clone(),
            "saturation config",
            SaturationConfigSet::from_yaml_file_contents,
            shutdown.clone(),
        )?,
        None => watch::channel(Arc::new(SaturationConfigSet::default())).1,
    };
    let settings = Settings {
        min_analysis_interval: args.min_analysis_interval,
        analysis_interval: args.analysis_interval,
        staleness: args.staleness,
        legacy_metrics: args.legacy_metrics,
        controller_instance: args.controller_instance.clone(),
        scale_to_zero: args.scale_to_zero,
        agent_token: read_token(args.agent_token_file.as_deref())?,
        tls: tls_config(&args)?,
    };
    if args.standalone {
        run_standalone(args, settings, saturation_rx, shutdown).await
    } else {
        run_kubernetes(args, settings, saturation_rx, shutdown).await
    }
}

async fn listen(args: &Args) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    let http = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    info!(grpc = %grpc.local_addr()?, metrics = %http.local_addr()?, "aggregator listening");
    Ok((grpc, http))
}

async fn run_standalone(
    args: Args,
    settings: Settings,
    saturation_rx: watch::Receiver<Arc<SaturationConfigSet>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let variants_file = args
        .variants
        .clone()
        .context("--variants FILE (WVA_VARIANTS_FILE) is required in standalone mode")?;
    let variants_rx = watchfile::load_and_watch(
        variants_file,
        "variants",
        variants::parse_variants,
        shutdown.clone(),
    )?;
    let (grpc, http) = listen(&args).await?;
    let grpc_addr = grpc.local_addr()?;
    let actuator = match args.actuator {
        ActuatorKind::None => None,
        ActuatorKind::Local => Some(LocalActuator::new(ActuatorConfig::from_args(
            &args.local,
            format!("http://{}", loopback(grpc_addr)),
        )?)),
    };
    let running = service::start(
        settings,
        grpc,
        http,
        Sources::alone(
            variants_rx.clone(),
            saturation_rx,
            actuator.as_ref().map(LocalActuator::counts),
        ),
        shutdown.clone(),
    );
    let actuator_task =
        actuator.map(|a| tokio::spawn(a.run(variants_rx, running.decisions.clone(), shutdown)));
    running.join().await?;
    if let Some(task) = actuator_task {
        task.await?;
    }
    info!("stopped");
    Ok(())
}

async fn run_kubernetes(
    args: Args,
    settings: Settings,
    saturation_rx: watch::Receiver<Arc<SaturationConfigSet>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if args.actuator != ActuatorKind::None {
        bail!("--actuator local is for standalone mode; in a cluster the HPA scales");
    }
    let election = election_config(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster config or KUBECONFIG)")?;
    // An empty WATCH_NAMESPACE, as charts often render it, means all.
    let namespace = args.watch_namespace.clone().filter(|ns| !ns.is_empty());
    let previous = controller::stored_decisions(client.clone(), namespace.as_deref()).await?;
    info!(
        variants = previous.len(),
        "continuing from the decisions in status"
    );
    let (controller, feeds) = Controller::new(
        client.clone(),
        controller::Options {
            namespace,
            controller_instance: args.controller_instance.clone(),
            reporter: Reporter {
                controller: "wva-aggregator".to_string(),
                instance: args.pod_name.clone(),
            },
        },
    );
    let (leading_tx, leading) = watch::channel(election.is_none());
    let election_task = election
        .map(|config| tokio::spawn(leader::run(client, config, leading_tx, shutdown.clone())));
    let (grpc, http) = listen(&args).await?;
    let running = service::start(
        settings,
        grpc,
        http,
        Sources {
            variants: feeds.variants,
            saturation: saturation_rx,
            replicas: Some(feeds.replicas),
            leading: leading.clone(),
            previous,
        },
        shutdown.clone(),
    );
    let controller_task =
        tokio::spawn(controller.run(running.decisions.clone(), leading, shutdown));
    running.join().await?;
    controller_task.await??;
    if let Some(task) = election_task {
        task.await??;
    }
    info!("stopped");
    Ok(())
}

/// The election settings, or `None` when election is off.
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
    let namespace = args
        .pod_namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .context("POD_NAMESPACE (--pod-namespace) is required for leader election: the Lease lives there")?;
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

/// Agents started locally reach a wildcard listener through loopback.
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

fn read_token(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --agent-token-file {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("--agent-token-file {} is empty", path.display());
    }
    Ok(Some(token))
}

fn tls_config(args: &Args) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf, flag: &str| {
        std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "--tls-cert")?,
        read(key, "--tls-key")?,
    ));
    if let Some(ca) = &args.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
    }
    Ok(Some(tls))
}

/// Flips to true on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupt received; shutting down"),
        }
        tx.send_replace(true);
    });
    rx
}
