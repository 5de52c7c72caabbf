//! Ingest throughput harness: N concurrent agent streams push samples as fast
//! as flow control allows into an aggregator confined to ONE core (a
//! current-thread runtime on its own OS thread), for a fixed time; the
//! aggregator's own `wva_samples_received_total` gives the rate.
//!
//!     cargo bench -p wva-aggregator --bench ingest -- [STREAMS] [SECONDS]
//!
//! Pin the process to two cores (one aggregator, one load) for stable figures:
//!     taskset -c 0,1 cargo bench -p wva-aggregator --bench ingest

/// Reading the aggregator's /metrics, shared with the fleet harness (its
/// histogram reading is not needed here).
#[path = "../examples/fleet/metrics.rs"]
#[allow(dead_code)]
mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use wva_aggregator::runtime::{self, Settings, Upstream};
use wva_core::admission::SharedToken;
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::snapshot::Tuning;
use wva_core::variants::parse_variants;
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, Counters, Hello, ModelSignals, Role, Sample, agent_message};

const MODEL: &str = "bench/llama";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let streams: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse())?;

    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let stop = CancellationToken::new();

    // The aggregator: one core.
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            grpc.set_nonblocking(true)?;
            http.set_nonblocking(true)?;
            let variants = parse_variants(&format!(
                "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\nmetadata: {{name: bench, namespace: bench}}\n\
                 spec: {{scaleTargetRef: {{kind: Deployment, name: bench}}, modelID: {MODEL}}}\n"
            ))?;
            let (_vtx, variants) = watch::channel(Arc::new(variants));
            let (_stx, saturation) = watch::channel(Arc::new(SaturationConfigSet::default()));
            let running = runtime::start(
                Settings {
                    legacy_metrics: true,
                    controller_instance: None,
                    scale_to_zero: false,
                    hybrid: false,
                    admission: Arc::new(SharedToken(None)),
                    polled: Vec::new(),
                    default_source: wva_core::sources::SourceKind::Agent,
                    poll_interval: Duration::from_secs(5),
                    webhook_metrics: None,
                    tls: None,
                    readers: Default::default(),
                },
                TcpListener::from_std(grpc)?,
                TcpListener::from_std(http)?,
                Upstream::alone(
                    variants,
                    saturation,
                    watch::channel(Arc::default()).1,
                    watch::channel(Arc::default()).1,
                    None,
                    Tuning {
                        min_analysis_interval: Duration::from_secs(1),
                        min_verdict_interval: Duration::from_millis(20),
                        analysis_interval: Duration::from_secs(30),
                        staleness: Duration::from_secs(10),
                        convergence_timeout: Duration::from_secs(600),
                    },
                ),
                server_stop,
            );
            running.join().await
        })
    });

    // The agents: the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (rate, connected) = rt.block_on(async move {
        let url = format!("http://{grpc_addr}");
        let mut tasks = Vec::with_capacity(streams);
        for i in 0..streams {
            let url = url.clone();
            tasks.push(tokio::spawn(async move { agent(url, i).await }));
        }
        let connected = wait_connected(http_addr, streams).await?;
        let before = received(http_addr).await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = received(http_addr).await?;
        let rate = (after - before) / t0.elapsed().as_secs_f64();
        for t in tasks {
            t.abort();
        }
        anyhow::Ok((rate, connected))
    })?;
    stop.cancel();
    let _ = server.join();
    println!("streams: {streams} (connected {connected}), duration: {seconds}s");
    println!("ingest: {rate:.0} samples/s into one aggregator core");
    Ok(())
}

async fn agent(url: String, i: usize) -> anyhow::Result<()> {
    let mut client = TelemetryClient::connect(url).await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(message(agent_message::Kind::Hello(Hello {
        pod: format!("bench-{i}"),
        namespace: "bench".into(),
        role: Role::Vllm as i32,
        models: vec![MODEL.into()],
        variant: "bench".into(),
        ..Default::default()
    })))
    .await?;
    let response = client.stream(ReceiverStream::new(rx)).await?;
    let _control = response.into_inner();
    for seq in 1.. {
        let sample = Sample {
            seq,
            scraped_at_ms: 0,
            up: true,
            scrape_duration_us: 900,
            models: vec![ModelSignals {
                model: MODEL.into(),
                kv_cache_usage: 0.42,
                requests_waiting: 1.0,
                requests_running: 12.0,
                num_gpu_blocks: 26944,
                block_size: 16,
                counters: Some(Counters::default()),
                engines: 1,
            }],
            ..Default::default()
        };
        if tx
            .send(message(agent_message::Kind::Sample(sample)))
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    let body = metrics::get(addr, "/metrics").await?;
    metrics::value(&body, name).ok_or_else(|| anyhow::anyhow!("{name} not found"))
}

async fn received(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    metric(addr, "wva_samples_received_total").await
}

async fn wait_connected(addr: std::net::SocketAddr, want: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = metric(addr, "wva_connected_agents").await? as usize;
        if n >= want || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
