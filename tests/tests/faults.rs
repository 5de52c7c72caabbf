//! Faults, end to end with the real binaries: a network partition between
//! an agent's pod and the aggregator (a network namespace and a veth pair
//! made by the test), the aggregator restarted under load, and the agent's
//! token file failing. For each: no spurious scale-down while it lasts, and
//! recovery without help, timed (printed with `--nocapture`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use wva_e2e::netns::Host;
use wva_e2e::*;

const MODEL: &str = "e2e/llama";
const VARIANT: &str = "chat";

/// A saturation config under which a request from [`hold_completion`]
/// (about 40% of a [`SLOW_DECODING_SIM`]'s KV cache) saturates a replica,
/// and each decision adds one replica.
fn low_threshold(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("saturation.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: saturation-scaling-config}\n\
         data:\n  default: |\n    kvCacheThreshold: 0.3\n    kvSpareTrigger: 0.1\n    \
         maxScaleUpReplicas: 1\n    maxScaleUpPercent: 0\n",
    )?;
    Ok(path.to_string_lossy().into_owned())
}

/// The agent of pod `pod` of the variant, scraping `target` every 250 ms.
fn agent<'a>(
    target: SocketAddr,
    aggregator: &'a str,
    pod: &'a str,
    extra: &'a [&'a str],
) -> AgentSpec<'a> {
    AgentSpec {
        target,
        aggregator,
        pod,
        namespace: "e2e",
        variant: VARIANT,
        model: MODEL,
        interval: "250ms",
        extra,
    }
}

fn desired(decision: &serde_json::Value) -> i64 {
    decision["desiredReplicas"].as_i64().unwrap_or(-1)
}

/// Watches the decision for `span` and returns the lowest desired count
/// published, so a scale-down at any moment of a fault is caught.
async fn lowest_desired_for(metrics: SocketAddr, span: Duration) -> anyhow::Result<i64> {
    let end = Instant::now() + span;
    let mut lowest = i64::MAX;
    while Instant::now() < end {
        if let Some(d) = decisions(metrics).await?.first() {
            lowest = lowest.min(desired(d));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(lowest)
}

fn token_files(dir: &Path) -> anyhow::Result<(String, String)> {
    let (agents, readers) = (dir.join("agents.token"), dir.join("readers.token"));
    std::fs::write(&agents, "agents-s3cret\n")?;
    std::fs::write(&readers, "readers-s3cret\n")?;
    Ok((
        agents.to_string_lossy().into_owned(),
        readers.to_string_lossy().into_owned(),
    ))
}

/// The pod's agent and vLLM live on a host of their own; the link to the
/// aggregator is cut for longer than the connection's keepalive, then
/// restored.
#[tokio::test]
async fn a_partition_holds_the_decision_and_heals_by_itself() -> anyhow::Result<()> {
    let host = Host::new().await?;
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", VARIANT, MODEL);
    let (agents_token, readers_token) = token_files(dir.path())?;
    let grpc = std::net::TcpListener::bind((host.outside, 0))?.local_addr()?;
    let metrics = free_addr();
    let saturation = low_threshold(dir.path())?;
    let _aggregator = start_aggregator(
        &variants,
        grpc,
        metrics,
        &[
            "--agent-token-file",
            &agents_token,
            "--reader-token-file",
            &readers_token,
            "--saturation-config",
            &saturation,
        ],
    )?;
    let (_sim, bound) = start_sim_with(
        command_in_netns(&host.name, "vllm-sim"),
        (Ipv4Addr::UNSPECIFIED, 0).into(),
        MODEL,
        &SLOW_DECODING_SIM,
    )
    .await?;
    let url = format!("http://{grpc}");
    let target = (Ipv4Addr::LOCALHOST, bound.port()).into();
    let _agent = start_agent_with(
        command_in_netns(&host.name, "wva-agent"),
        &agent(target, &url, "chat-1", &["--token-file", &agents_token]),
    )?;
    let _request = hold_completion((host.inside, bound.port()).into(), MODEL, 400, 500).await?;
    decision_where(
        metrics,
        Duration::from_secs(30),
        "a scale-up under load",
        |d| d["data"] == "fresh" && desired(d) == 2,
    )
    .await?;

    // Longer than the aggregator's keepalive (10 s, then 5 s for the answer):
    // it drops the silent stream while the link is down.
    host.cut().await?;
    let cut_at = Instant::now();
    let lowest = lowest_desired_for(metrics, Duration::from_secs(20)).await?;
    assert_eq!(lowest, 2, "no scale-down while the pod cannot be heard");
    // The silent stream was dropped, so the heal below is a reconnect.
    let connected = metric(metrics, "wva_connected_agents").await?;
    assert_eq!(
        connected.first().map(|(_, v)| *v),
        Some(0.0),
        "the partitioned agent's stream is gone"
    );
    let held = decisions(metrics).await?.remove(0);
    assert_ne!(held["data"], "fresh", "{held}");

    host.heal().await?;
    let healed = Instant::now();
    let back = decision_where(
        metrics,
        Duration::from_secs(40),
        "fresh data after the partition heals",
        |d| d["data"] == "fresh" && input_pods(d) == ["chat-1"],
    )
    .await?;
    println!(
        "partition of {:?}: fresh data again {:?} after the link came back",
        healed - cut_at,
        healed.elapsed()
    );
    assert_eq!(desired(&back), 2, "{back}");
    Ok(())
}

/// Six loaded pods; the aggregator is killed and started again on the same
/// addresses. Nothing is published before they are back, and the first
/// decision has them all.
#[tokio::test]
async fn an_aggregator_restarted_under_load_comes_back_with_every_pod() -> anyhow::Result<()> {
    const PODS: usize = 6;
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", VARIANT, MODEL);
    let saturation = low_threshold(dir.path())?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let flags = ["--saturation-config", saturation.as_str()];
    let aggregator = start_aggregator(&variants, grpc, metrics, &flags)?;
    let url = format!("http://{grpc}");
    let mut pods = Vec::new();
    let mut requests = Vec::new();
    let names: Vec<String> = (1..=PODS).map(|i| format!("chat-{i}")).collect();
    for name in &names {
        let (sim, addr) = start_sim(MODEL, &SLOW_DECODING_SIM).await?;
        let process = start_agent(&agent(addr, &url, name, &[]))?;
        requests.push(hold_completion(addr, MODEL, 400, 500).await?);
        pods.push((sim, process));
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let before = decision_where(
        metrics,
        Duration::from_secs(30),
        "every loaded pod in a scale-up",
        |d| d["data"] == "fresh" && input_pods(d) == all && desired(d) > PODS as i64,
    )
    .await?;

    aggregator.kill().await;
    let restarted = Instant::now();
    let _aggregator = start_aggregator(&variants, grpc, metrics, &flags)?;
    let first = eventually(Duration::from_secs(30), "the first decision", || async {
        Ok(decisions(metrics)
            .await
            .ok()
            .and_then(|d| d.into_iter().next()))
    })
    .await?;
    println!(
        "first decision {:?} after the restart, with {} of {PODS} pods",
        restarted.elapsed(),
        input_pods(&first).len()
    );
    assert_eq!(input_pods(&first), all, "{first}");
    assert!(
        desired(&first) >= desired(&before) - 1 && desired(&first) >= PODS as i64,
        "no scale-down below the loaded pods after a restart: {before} then {first}"
    );
    Ok(())
}

/// The agent's token file goes bad (emptied, as a full disk leaves a
/// rewritten file): the open stream goes on; a reconnect fails in the agent
/// itself, counted with the reason, until the file is good again.
#[tokio::test]
async fn a_bad_token_file_costs_no_open_stream_and_recovers_when_fixed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", VARIANT, MODEL);
    // The aggregator's copy of the secret and the agent's, as in a cluster.
    let expected = dir.path().join("expected");
    std::fs::write(&expected, "s3cret\n")?;
    let expected_flag = expected.to_string_lossy().into_owned();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n")?;
    let token_flag = token.to_string_lossy().into_owned();
    let (grpc, metrics) = (free_addr(), free_addr());
    let flags = ["--agent-token-file", expected_flag.as_str()];
    let aggregator = start_aggregator(&variants, grpc, metrics, &flags)?;
    let (_sim, addr) = start_sim(MODEL, &[]).await?;
    let url = format!("http://{grpc}");
    let agent_metrics = free_addr();
    let listen = agent_metrics.to_string();
    let agent_flags = [
        "--token-file",
        token_flag.as_str(),
        "--listen",
        listen.as_str(),
    ];
    let _agent = start_agent(&agent(addr, &url, "chat-1", &agent_flags))?;
    decision_where(metrics, Duration::from_secs(20), "fresh data", |d| {
        d["data"] == "fresh"
    })
    .await?;
    let sent = || async {
        let samples = metric(agent_metrics, "wva_agent_samples_sent_total").await?;
        anyhow::Ok(samples.first().map_or(0.0, |s| s.1))
    };

    // The file is emptied: the open stream needs no token and goes on, and
    // the pod's data stays fresh.
    std::fs::write(&token, "")?;
    let then = sent().await?;
    eventually(
        Duration::from_secs(10),
        "samples sent on the open stream",
        || async { Ok((sent().await? >= then + 4.0).then_some(())) },
    )
    .await?;

    let still = decisions(metrics).await?.remove(0);
    assert_eq!(still["data"], "fresh", "{still}");

    // A restart forces a reconnect, which the agent cannot authenticate.
    aggregator.kill().await;
    let _aggregator = start_aggregator(&variants, grpc, metrics, &flags)?;
    let errors = eventually(
        Duration::from_secs(20),
        "the agent to report the token file",
        || async {
            let (_, body) = http_get(agent_metrics, "/metrics").await?;
            Ok(body
                .lines()
                .find(|l| l.starts_with("wva_agent_stream_failures_total{reason=\"token\"}"))
                .map(str::to_string))
        },
    )
    .await?;
    println!("while the token file is empty: {errors}");

    std::fs::write(&token, "s3cret\n")?;
    let fixed = Instant::now();
    decision_where(metrics, Duration::from_secs(20), "the pod back", |d| {
        d["data"] == "fresh" && input_pods(d) == ["chat-1"]
    })
    .await
    .context("the agent reconnects once the file is good")?;
    println!("back {:?} after the token file was fixed", fixed.elapsed());
    Ok(())
}
