//! The hot path with real processes on loopback: vllm-sim → wva-agent →
//! gRPC → wva-aggregator → decisions.

use std::time::Duration;

use wva_e2e::*;

const MODEL: &str = "e2e/llama";

fn variants_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("variants.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: llmd.ai/v1alpha1
kind: VariantAutoscaling
metadata:
  name: chat
  namespace: e2e
spec:
  scaleTargetRef:
    kind: Deployment
    name: chat
  modelID: {MODEL}
"
        ),
    )
    .expect("write variants file");
    path
}

#[tokio::test]
async fn killed_agent_leaves_at_once_and_agents_return_after_an_aggregator_restart()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = variants_file(dir.path());
    let (grpc, metrics) = (free_addr(), free_addr());
    let aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let url = format!("http://{grpc}");

    let (_sim1, addr1) = start_sim(MODEL, &[]).await?;
    let (_sim2, addr2) = start_sim(MODEL, &[]).await?;
    let agent = |target, pod| AgentSpec {
        target,
        aggregator: &url,
        pod,
        namespace: "e2e",
        variant: "chat",
        model: MODEL,
        interval: "1s",
        extra: &[],
    };
    let _agent1 = start_agent(&agent(addr1, "chat-1"))?;
    let agent2 = start_agent(&agent(addr2, "chat-2"))?;

    decision_where(
        metrics,
        Duration::from_secs(20),
        "both pods in the analysis",
        |d| input_pods(d) == ["chat-1", "chat-2"],
    )
    .await?;

    // The stream ends with the process: the pod must leave within two scrape intervals.
    agent2.kill().await;
    let d = decision_where(metrics, Duration::from_secs(2), "chat-2 to leave", |d| {
        input_pods(d) == ["chat-1"]
    })
    .await?;
    assert_eq!(
        d["currentReplicas"], 1,
        "a vanished pod no longer counts: {d}"
    );

    // Restart the aggregator on the same addresses: the surviving agent reconnects.
    aggregator.kill().await;
    let _aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let d = decision_where(
        metrics,
        Duration::from_secs(20),
        "chat-1 to reconnect",
        |d| input_pods(d) == ["chat-1"] && d["data"] == "fresh",
    )
    .await?;
    assert_eq!(d["currentReplicas"], 1, "no stale pod after restart: {d}");
    assert_eq!(
        d["desiredReplicas"], 1,
        "an idle single replica stays at one: {d}"
    );
    Ok(())
}

#[tokio::test]
async fn unresponsive_vllm_is_reported_down_and_the_safety_net_holds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = variants_file(dir.path());
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let url = format!("http://{grpc}");
    let (sim, addr) = start_sim(MODEL, &[]).await?;
    let _agent = start_agent(&AgentSpec {
        target: addr,
        aggregator: &url,
        pod: "chat-1",
        namespace: "e2e",
        variant: "chat",
        model: MODEL,
        interval: "250ms",
        extra: &[],
    })?;
    decision_where(metrics, Duration::from_secs(20), "fresh data", |d| {
        d["data"] == "fresh"
    })
    .await?;

    // A frozen server accepts connections but never answers.
    sim.signal("STOP").await?;
    let held = decision_where(metrics, Duration::from_secs(10), "the safety net", |d| {
        d["basis"] == "safety_net"
    })
    .await?;
    assert_eq!(held["data"], "missing", "{held}");
    assert_eq!(
        held["desiredReplicas"], 1,
        "the previous desired value is held: {held}"
    );
    assert!(
        input_pods(&held).is_empty(),
        "a down pod feeds no signals: {held}"
    );

    sim.signal("CONT").await?;
    decision_where(metrics, Duration::from_secs(10), "fresh data again", |d| {
        d["data"] == "fresh" && d["basis"] != "safety_net"
    })
    .await?;
    Ok(())
}
