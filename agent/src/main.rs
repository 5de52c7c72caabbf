//! `wva-agent`: the sidecar binary. Everything but process setup lives in the
//! library so tests run the same code in-process.

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use wva_agent::Agent;
use wva_agent::args::Args;

// One thread is plenty: the agent does one scrape and one stream at a time.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::INFO.into())
                .from_env_lossy(),
        )
        .init();
    wva_agent::tls::install_crypto_provider();
    match Agent::start(args).await {
        Ok(agent) => {
            agent.run(shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (kubelet) or SIGINT (terminal).
async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        Ok(()) = tokio::signal::ctrl_c() => {}
    }
}
