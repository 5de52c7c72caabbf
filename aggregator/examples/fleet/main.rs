//! Fleet-scale harness: starts the real `wva-aggregator` binary (standalone,
//! pinned to one core), connects a fleet of agent streams to it from this
//! process (one HTTP/2 connection per agent, as real sidecars have), and
//! reports what one aggregator core costs at that scale: samples/s, its CPU
//! from /proc, resident memory per stream, its own ingest-to-decision
//! histogram, and the latency from a probe agent's sample to the published
//! decision that used it.
//!
//!     scripts/bench-fleet [--streams 10000] [--rate 1] [--seconds 30] ...
//!
//! `--rate 0` floods: every agent sends as fast as flow control allows
//! (with 10,000 streams, add `--probe none`: connecting takes minutes).

mod agents;
mod metrics;
mod probe;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use self::probe::ProbeKind;
use self::server::Aggregator;

#[derive(Debug, Parser)]
struct Args {
    /// The aggregator binary to measure.
    #[arg(long, default_value = "target/release/wva-aggregator")]
    aggregator: PathBuf,
    /// The core the aggregator is pinned to (this process should run on another).
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Agent streams, the probe's included (the store holds at most 10,000 pods).
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Samples per second of each agent; 0 floods.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Models (one variant each) the agents' pods spread over.
    #[arg(long, default_value_t = 1_000)]
    models: usize,
    /// Length of the measured window, after every stream is connected.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// What the probe agent's samples change: the model's saturation verdict,
    /// or only a number the verdict does not depend on.
    #[arg(long, value_enum, default_value = "verdict")]
    probe: ProbeKind,
    /// Extra flags for the aggregator (e.g. "--min-analysis-interval=1s").
    #[arg(long, allow_hyphen_values = true)]
    aggregator_arg: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The generator: a current-thread runtime, so it stays on its core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut aggregator = Aggregator::start(
        &args.aggregator,
        args.cpu,
        dir.path(),
        args.models,
        &args.aggregator_arg,
    )
    .await?;
    let idle_rss = aggregator.rss_bytes()?;

    // First, so that a flooding fleet cannot keep it from connecting.
    let probe = match args.probe {
        ProbeKind::None => None,
        kind => Some(probe::Probe::connect(&aggregator.grpc_url(), kind).await?),
    };
    let ordinary = args.streams - usize::from(probe.is_some());
    let fleet = agents::Fleet {
        url: aggregator.grpc_url(),
        models: args.models,
        rate: args.rate,
    };
    let connecting = Instant::now();
    let mut agents = fleet.spawn(ordinary);
    let connected = aggregator.wait_connected(args.streams).await?;
    let connect_time = connecting.elapsed();
    // Let connection bursts, first samples and startup analyses settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = aggregator.reading().await?;
    let window = Duration::from_secs(args.seconds);
    let latencies = match probe {
        Some(probe) => Some(probe.run_for(window).await?),
        None => {
            tokio::time::sleep(window).await;
            None
        }
    };
    let after = aggregator.reading().await?;
    let rss = aggregator.rss_bytes()?;
    agents.abort_all();
    aggregator.stop();

    let elapsed = (after.at - before.at).as_secs_f64();
    let samples = after.samples - before.samples;
    let cpu = (after.cpu - before.cpu).as_secs_f64();
    println!(
        "streams: {} connected of {} in {:.1} s; rate per stream: {}; models: {}",
        connected,
        args.streams,
        connect_time.as_secs_f64(),
        if args.rate > 0.0 {
            format!("{} Hz", args.rate)
        } else {
            "flood".to_string()
        },
        args.models,
    );
    println!(
        "ingest: {:.0} samples/s over {elapsed:.1} s; aggregator CPU {:.1} % of its core ({:.0} samples per CPU-second)",
        samples / elapsed,
        100.0 * cpu / elapsed,
        samples / cpu,
    );
    println!(
        "analyses: {:.1}/s",
        (after.analyses - before.analyses) / elapsed
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "memory: RSS idle {:.1} MiB, with {connected} streams {:.1} MiB: {:.1} KiB per stream",
        mib(idle_rss),
        mib(rss),
        (rss.saturating_sub(idle_rss)) as f64 / 1024.0 / connected.max(1) as f64,
    );
    let histogram = after.histogram.minus(&before.histogram);
    println!("wva_ingest_to_decision_seconds over the window: {histogram}");
    if let Some(latencies) = latencies {
        println!(
            "probe ({:?} changes), sample sent → decision received: {latencies}",
            args.probe
        );
    }
    Ok(())
}
