//! The agent process: scrape loop, aggregator stream and own HTTP endpoints,
//! joined on one task and stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::args::{Args, DEFAULT_INTERVAL, scrape_timeout};
use crate::extract::{Extractor, read_samples};
use crate::fanout::{self, Targets};
use crate::filter::Filter;
use crate::latest;
use crate::sampler::Sampler;
use crate::scrape::{InvalidTarget, Scraper};
use crate::server::{self, Health};
use crate::signal_spec::{self, SpecError};
use crate::signals_target::SignalsTarget;
use crate::stream::{StreamConfig, StreamError};
use crate::telemetry::Telemetry;
use crate::tls::{TargetTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Target(#[from] InvalidTarget),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Signals(#[from] SpecError),
}

/// A configured agent with its listener bound, ready to run.
pub struct Agent {
    args: Args,
    listener: TcpListener,
    local_addr: SocketAddr,
    sampler: Sampler,
    stream: StreamConfig,
    telemetry: Arc<Telemetry>,
}

impl Agent {
    /// Checks the configuration (target URL, TLS files, token file,
    /// signals) and binds the listener of the agent's own endpoints.
    pub async fn start(args: Args) -> Result<Agent, StartError> {
        let separate = args.signals_target.is_some();
        signal_spec::check_for_role(args.role.into(), &args.signals, separate)?;
        let stream = StreamConfig::from_args(&args)?;
        stream.validate()?;
        let telemetry = Arc::new(Telemetry::new());
        let tls = TargetTls {
            ca: args.target_ca.clone(),
            server_name: args.target_server_name.clone(),
            insecure_skip_verify: args.target_insecure_skip_verify,
        };
        if tls.insecure_skip_verify {
            warn!(
                "--target-insecure-skip-verify: the target's certificate is not verified; for development only"
            );
        }
        let mut scraper = Scraper::with_tls(args.target.clone(), args.max_body_bytes, &tls)?
            .with_gzip(args.accept_gzip);
        if let Some(path) = &args.target_token_file {
            scraper = scraper.with_token_file(path.clone());
        }
        let role = args.role.into();
        // The signals come from the main target unless from a second one.
        let signals = if separate {
            Vec::new()
        } else {
            args.signals.clone()
        };
        let filter = if args.filtered_scrape {
            let mut names: Vec<&str> = read_samples(role).collect();
            for signal in &signals {
                if !names.contains(&signal.metric.as_str()) {
                    names.push(&signal.metric);
                }
            }
            Filter::new(&args.target, names)
        } else {
            Filter::disabled()
        };
        let extractor = Extractor::with_signals(role, signals);
        let mut sampler = Sampler::new(scraper, extractor, filter, telemetry.clone());
        if let Some(url) = &args.signals_target {
            let scraper = Scraper::with_tls(url.clone(), args.max_body_bytes, &tls)?;
            sampler =
                sampler.with_signals_target(SignalsTarget::new(scraper, args.signals.clone()));
        }
        let listen_error = |source| StartError::Listen {
            addr: args.listen,
            source,
        };
        let listener = TcpListener::bind(args.listen).await.map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        info!(addr = %local_addr, "serving /metrics, /healthz and /readyz");
        Ok(Agent {
            args,
            listener,
            local_addr,
            sampler,
            stream,
            telemetry,
        })
    }

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until `shutdown` completes, then stops scraping, ends the stream
    /// (waiting briefly for the aggregator) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Agent {
            args,
            listener,
            sampler,
            stream,
            telemetry,
            ..
        } = self;
        info!(
            target_url = %args.target,
            aggregator = ?args.aggregator.iter().map(ToString::to_string).collect::<Vec<_>>(),
            fan_out = args.aggregator_fan_out,
            interval = %args.interval.map_or("auto".into(), |i| humantime::format_duration(i).to_string()),
            filtered_scrape = args.filtered_scrape,
            "agent running"
        );
        // The stream's Hello reports the slower of the automatic intervals.
        let base_interval = args.interval.unwrap_or(DEFAULT_INTERVAL);
        let (interval_tx, interval_rx) = watch::channel(base_interval);
        let (publisher, subscriber) = latest::channel();
        let (stop_tx, stop_rx) = watch::channel(());
        let first_tick = base_interval + scrape_timeout(args.scrape_timeout, base_interval);
        let health = Arc::new(Health::new(2 * first_tick));

        let scrape = sampler.run(
            args.scrape_timeout,
            args.interval,
            interval_rx,
            publisher,
            health.clone(),
        );
        let scrape_until_shutdown = async move {
            tokio::select! {
                _ = scrape => {}
                _ = shutdown => info!("shutting down"),
            }
            // Dropping the sender is the stop signal.
            drop(stop_tx);
        };
        tokio::join!(
            scrape_until_shutdown,
            fanout::run(
                stream,
                Targets {
                    urls: args.aggregator.clone(),
                    fan_out: args.aggregator_fan_out,
                },
                subscriber,
                Arc::new(interval_tx),
                telemetry.clone(),
                stop_rx.clone()
            ),
            server::serve(listener, health, telemetry, stop_rx),
        );
    }
}
