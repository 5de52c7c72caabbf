//! The benchmark "From a load change to a decision" of docs/benchmarks.md:
//! the time from a queue building up on a real `vllm-sim` to wva's decision
//! for its variant rising, through the real agent and aggregator on
//! loopback. A benchmark, not a test: `cargo test` skips it, and
//! `scripts/bench-reaction` runs it.
//!
//! Two arms run side by side, each its own simulator, agent and aggregator
//! (at the aggregator's default pace): the agent as it ships (filtered
//! scrapes, at 250 ms while the target filters) and the agent scraping the
//! whole body every second (`--filtered-scrape false`, the interval before
//! filtering). A step: with the variant settled at one replica, wait a
//! random phase, queue requests behind the one running (more than the
//! queue threshold), and time the first decision above one replica,
//! watched on the aggregator's diagnostics stream; then release the
//! requests and let the decision settle.
//!
//! With `WVA_BASELINE_BINS` naming a directory holding another build's
//! `wva-agent` and `wva-aggregator` (e.g. the release before these
//! changes), a third arm runs them beside the others, the agent at `1s`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use wva_e2e::*;
use wva_proto::v1::DecisionFilter;
use wva_proto::v1::diagnostics_client::DiagnosticsClient;

const MODEL: &str = "bench/llama";

/// Steps per arm.
const STEPS: usize = 25;

/// Requests queued by a step, behind the one running: above the default
/// queue threshold of 5.
const QUEUED: usize = 7;

/// One running sequence at a time, each decoding for as long as a step
/// lasts.
const SIM: [&str; 4] = ["--max-num-seqs", "1", "--itl-base", "1s"];

/// Longest a step or settling after it may take.
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
#[ignore = "a benchmark: scripts/bench-reaction"]
async fn load_change_to_decision() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shipped = Arm::start(dir.path(), "filtered", &[]).await?;
    let whole = Arm::start(
        dir.path(),
        "whole",
        &["--filtered-scrape", "false", "--interval", "1s"],
    )
    .await?;
    let baseline = match std::env::var_os("WVA_BASELINE_BINS") {
        Some(bins) => Some(
            Arm::start_with(
                dir.path(),
                "baseline",
                &["--interval", "1s"],
                Path::new(&bins),
            )
            .await?,
        ),
        None => None,
    };
    let baseline_steps = async {
        match &baseline {
            Some(arm) => Some(arm.steps().await),
            None => None,
        }
    };
    let (a, b, c) = tokio::join!(shipped.steps(), whole.steps(), baseline_steps);
    println!("{}", summary("agent as shipped (filtered, 250 ms)", a?));
    println!("{}", summary("whole body every 1 s", b?));
    if let Some(c) = c {
        println!("{}", summary("the baseline build, agent at 1 s", c?));
    }
    Ok(())
}

/// One simulator, its agent and an aggregator of its own.
struct Arm {
    name: &'static str,
    sim: SocketAddr,
    grpc: SocketAddr,
    _procs: [Proc; 3],
}

impl Arm {
    async fn start(dir: &Path, name: &'static str, agent: &[&str]) -> anyhow::Result<Arm> {
        Self::start_binaries(
            dir,
            name,
            agent,
            [command("wva-aggregator"), command("wva-agent")],
        )
        .await
    }

    /// An arm running the `wva-aggregator` and `wva-agent` of `bins`.
    async fn start_with(
        dir: &Path,
        name: &'static str,
        agent: &[&str],
        bins: &Path,
    ) -> anyhow::Result<Arm> {
        let commands = ["wva-aggregator", "wva-agent"].map(|b| command_at(&bins.join(b)));
        Self::start_binaries(dir, name, agent, commands).await
    }

    async fn start_binaries(
        dir: &Path,
        name: &'static str,
        agent: &[&str],
        [aggregator, agent_command]: [tokio::process::Command; 2],
    ) -> anyhow::Result<Arm> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let variants = one_variant_file(&dir, "bench", name, MODEL);
        let saturation = dir.join("saturation.yaml");
        // Scale-downs at once, so the variant settles between steps.
        std::fs::write(
            &saturation,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: saturation-scaling-config}\n\
             data:\n  default: |\n    scaleDownStabilizationSeconds: 0\n",
        )?;
        let (grpc, metrics) = (free_addr(), free_addr());
        // The aggregator's defaults, not the tests' faster pace, except for
        // the convergence deadline: no scaler carries the step out here, so
        // the raised decision would otherwise be held for ten minutes.
        let saturation = saturation.to_string_lossy();
        let aggregator = standalone_aggregator_with(
            aggregator,
            &variants,
            grpc,
            metrics,
            &[
                "--min-analysis-interval",
                "1s",
                "--staleness",
                "10s",
                "--convergence-timeout",
                "1s",
                "--saturation-config",
                &saturation,
            ],
        )
        .spawn()
        .context("start wva-aggregator")?;
        let (sim_proc, sim) = start_sim(MODEL, &SIM).await?;
        let agent = start_agent_with(
            agent_command,
            &AgentSpec {
                target: sim,
                aggregator: &format!("http://{grpc}"),
                pod: &format!("{name}-0"),
                namespace: "bench",
                variant: name,
                model: MODEL,
                interval: "",
                extra: agent,
            },
        )?;
        Ok(Arm {
            name,
            sim,
            grpc,
            _procs: [Proc { child: aggregator }, sim_proc, agent],
        })
    }

    /// Times [`STEPS`] steps.
    async fn steps(&self) -> anyhow::Result<Vec<Duration>> {
        let channel = eventually(WITHIN, "the gRPC port", || async move {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))?;
            Ok(endpoint.connect().await.ok())
        })
        .await?;
        let mut decisions = DiagnosticsClient::new(channel)
            .watch_decisions(DecisionFilter::default())
            .await?
            .into_inner();
        let mut desired = async || -> anyhow::Result<(u32, Instant)> {
            let snapshot = decisions
                .next()
                .await
                .context("the diagnostics stream ended")??;
            let at = Instant::now();
            let d = snapshot.decisions.iter().find(|d| d.name == self.name);
            Ok((d.map_or(0, |d| d.desired_replicas), at))
        };
        let mut times = Vec::with_capacity(STEPS);
        for step in 0..STEPS {
            // Settled: one replica, data fresh, nothing queued.
            tokio::time::timeout(WITHIN, async {
                while desired().await?.0 != 1 {}
                anyhow::Ok(())
            })
            .await
            .with_context(|| format!("{}: step {step} did not settle", self.name))??;
            tokio::time::sleep(Duration::from_secs_f64(1.0 + random_fraction())).await;

            let held = self.queue().await?;
            let changed = Instant::now();
            let decided = tokio::time::timeout(WITHIN, async {
                loop {
                    let (replicas, at) = desired().await?;
                    if replicas > 1 {
                        return anyhow::Ok(at);
                    }
                }
            })
            .await
            .with_context(|| format!("{}: no decision for step {step}", self.name))??;
            times.push(decided - changed);
            drop(held);
        }
        Ok(times)
    }

    /// Sends one request to run and [`QUEUED`] to wait behind it.
    async fn queue(&self) -> anyhow::Result<Vec<TcpStream>> {
        let mut requests = Vec::with_capacity(QUEUED + 1);
        for _ in 0..=QUEUED {
            requests.push(hold_completion(self.sim, MODEL, 10, 1000).await?);
        }
        Ok(requests)
    }
}

fn summary(arm: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    format!(
        "{arm}: median {}, p95 {}, worst {}, best {} ({} steps)",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(at(1.0)),
        ms(at(0.0)),
        times.len()
    )
}
