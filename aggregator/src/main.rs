use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use wva_aggregator::args::{ActuatorKind, Args, Command};
use wva_aggregator::runtime::{self, Upstream};
use wva_aggregator::standalone::actuator::{ActuatorConfig, LocalActuator};
use wva_aggregator::{cluster, demo, startup, watchfile};
use wva_core::variants;
use wva_k8s::crd;

fn main() -> ExitCode {
    // Kept to parse again with each configuration ConfigMap.
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = Args::parse_from(&argv);
    if let Some(Command::PrintCrd) = args.command {
        print!("{}", crd::crd_yaml());
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
    match runtime.block_on(run(argv, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("wva-aggregator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(argv: Vec<OsString>, args: Args) -> anyhow::Result<()> {
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
            "peak queue: {} requests waiting across the model's replicas; queued for {} s",
            summary.peak_queue, summary.queued_seconds
        );
        if let Some(p95) = summary.ttft_p95 {
            println!("time to first token: p95 {} ms", p95.as_millis());
        }
        println!(
            "replica-minutes: {:.1}; direction changes under load: {}",
            summary.replica_seconds as f64 / 60.0,
            summary.direction_changes
        );
        if let Some(cover) = summary.time_to_cover {
            println!(
                "capacity covered the step's demand after {:.0} s",
                cover.as_secs_f64()
            );
        }
        if let Some(lag) = summary.keda_max_lag {
            println!(
                "KEDA external scaler: every change seen within {} ms of its decision",
                lag.as_millis()
            );
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
    if args.standalone {
        run_standalone(args, shutdown).await
    } else {
        cluster::run(argv, args, shutdown).await
    }
}

async fn run_standalone(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    startup::check_standalone_exposure(&args)?;
    let settings = startup::settings(&args, |key| std::env::var(key).ok())?;
    let saturation_rx = startup::saturation_file(&args, shutdown.clone())?
        .unwrap_or_else(|| watch::channel(Arc::default()).1);
    let scale_to_zero_rx = startup::scale_to_zero_file(&args, shutdown.clone())?
        .unwrap_or_else(|| watch::channel(Arc::default()).1);
    let service_class_rx = startup::service_class_file(&args, shutdown.clone())?
        .unwrap_or_else(|| watch::channel(Arc::default()).1);
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
    let (grpc, http) = startup::listen(&args).await?;
    let grpc_addr = grpc.local_addr()?;
    let actuator = match args.actuator {
        ActuatorKind::None => None,
        ActuatorKind::Local => Some(LocalActuator::new(ActuatorConfig::from_args(
            &args.local,
            format!("http://{}", startup::loopback(grpc_addr)),
        )?)),
    };
    let running = runtime::start(
        settings,
        grpc,
        http,
        Upstream::alone(
            variants_rx.clone(),
            saturation_rx,
            scale_to_zero_rx,
            service_class_rx,
            actuator.as_ref().map(LocalActuator::counts),
            args.tuning(),
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

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let tx = token.clone();
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
        tx.cancel();
    });
    token
}
