//! Scale from zero end to end: an endpoint picker's agent reports requests
//! queued for a model that has no replica, and the aggregator brings the
//! model's cheapest variant back to one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wva_e2e::*;

const MODEL: &str = "e2e/llama";

#[tokio::test]
async fn requests_queued_at_the_gateway_bring_a_model_back_from_zero() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = dir.path().join("variants.yaml");
    let va = |name: &str, cost: &str| {
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata: {{name: {name}, namespace: e2e}}\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: {name}}}, modelID: {MODEL}, variantCost: \"{cost}\"}}\n"
        )
    };
    std::fs::write(
        &variants,
        format!("{}---\n{}", va("cheap", "10"), va("pricey", "30")),
    )?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(&variants, grpc, metrics, &["--scale-to-zero", "true"])?;

    // No replica runs (no pod reports for either variant); the gateway's
    // endpoint picker has an agent of its own.
    let queue = Arc::new(Mutex::new(flow_control(MODEL, 0)));
    let epp = serve_metrics(queue.clone()).await?;
    let aggregator = format!("http://{grpc}");
    let _agent = start_agent(&AgentSpec {
        target: epp,
        aggregator: &aggregator,
        pod: "gateway-epp-0",
        namespace: "e2e",
        variant: "gateway-epp",
        model: MODEL,
        interval: "200ms",
        extra: &["--role", "epp"],
    })?;

    let within = Duration::from_secs(20);
    let desired = |name: &'static str, want: u64, basis: Option<&'static str>| {
        eventually(within, name, move || async move {
            let all = decisions(metrics).await?;
            Ok(all
                .into_iter()
                .find(|d| {
                    d["variant"]["name"] == name
                        && d["desiredReplicas"] == want
                        && basis.is_none_or(|b| d["basis"] == b)
                })
                .map(|_| ()))
        })
    };
    desired("cheap", 0, None).await?;

    *queue.lock().unwrap() = flow_control(MODEL, 3);
    desired("cheap", 1, Some("scale_from_zero")).await?;
    desired("pricey", 0, None).await?;
    Ok(())
}
