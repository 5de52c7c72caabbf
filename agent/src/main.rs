//! `wva-agent`: the sidecar binary. Everything but process setup lives in the
//! library so tests run the same code in-process.

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, warn};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wva_agent::Agent;
use wva_agent::args::Args;

// One thread is plenty: the agent does one scrape and one stream at a time.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (filter, invalid) = log_filter(std::env::var("RUST_LOG").ok());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    if let Some(e) = invalid {
        warn!(error = %e, "RUST_LOG ignored; logging at info");
    }
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

/// `RUST_LOG` as levels by target (`warn`, `info,wva_agent=debug`), else
/// `info`; an invalid value is reported once logging works.
fn log_filter(
    rust_log: Option<String>,
) -> (Targets, Option<tracing_subscriber::filter::ParseError>) {
    let info = Targets::new().with_default(LevelFilter::INFO);
    match rust_log.filter(|v| !v.trim().is_empty()).map(|v| v.parse()) {
        Some(Ok(targets)) => (targets, None),
        Some(Err(e)) => (info, Some(e)),
        None => (info, None),
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

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_sets_levels_by_target() {
        let (filter, invalid) = log_filter(Some("warn,wva_agent::stream=debug".into()));
        assert!(invalid.is_none());
        assert!(filter.would_enable("wva_agent::stream", &Level::DEBUG));
        assert!(!filter.would_enable("wva_agent::sampler", &Level::INFO));
        assert!(filter.would_enable("h2", &Level::WARN));
    }

    #[test]
    fn without_a_valid_rust_log_the_agent_logs_at_info() {
        for unset in [None, Some(String::new()), Some("  ".into())] {
            let (filter, invalid) = log_filter(unset);
            assert!(invalid.is_none());
            assert!(filter.would_enable("wva_agent", &Level::INFO));
            assert!(!filter.would_enable("wva_agent", &Level::DEBUG));
        }
        let (filter, invalid) = log_filter(Some("wva_agent=loud".into()));
        assert!(invalid.is_some());
        assert!(filter.would_enable("wva_agent", &Level::INFO));
    }
}
