//! Scale from zero end to end: an endpoint picker's agent reports requests
//! queued for a model that has no replica, and the aggregator brings the
//! model's cheapest variant back to one. A KEDA client on the external
//! scaler sees the variant become active, pushed as the decision is made.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wva_e2e::*;
use wva_proto::keda::external_scaler_client::ExternalScalerClient;
use wva_proto::keda::{GetMetricsRequest, IsActiveResponse, ScaledObjectRef};

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
            Ok(all.into_iter().find(|d| {
                d["variant"]["name"] == name
                    && d["desiredReplicas"] == want
                    && basis.is_none_or(|b| d["basis"] == b)
            }))
        })
    };
    desired("cheap", 0, None).await?;

    // KEDA's view, through the exact messages of its external scaler.
    let mut keda = ExternalScalerClient::connect(aggregator.clone()).await?;
    let cheap = scaled_object("cheap");
    let mut active = keda.stream_is_active(cheap.clone()).await?.into_inner();
    assert!(!next(&mut active).await?.result, "inactive at zero");
    assert!(!keda.is_active(cheap.clone()).await?.into_inner().result);
    let spec = keda.get_metric_spec(cheap.clone()).await?.into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].target_size_float, 1.0);

    *queue.lock().unwrap() = flow_control(MODEL, 3);
    assert!(next(&mut active).await?.result, "pushed active");
    let pushed_at = unix_ms();
    let decision = desired("cheap", 1, Some("scale_from_zero")).await?;
    let latency = pushed_at - decision["decidedAt"].as_i64().unwrap_or_default();
    eprintln!("StreamIsActive pushed {latency} ms after the decision");
    // Analyses are at least a second apart, so the decision read right
    // after the push is the one that made the change.
    assert!(
        (0..=100).contains(&latency),
        "pushed {latency} ms after the decision"
    );
    desired("pricey", 0, None).await?;
    let metrics = keda
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(cheap.clone()),
            metric_name: spec.metric_specs[0].metric_name.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(metrics.metric_values[0].metric_value_float, 1.0);
    assert!(keda.is_active(cheap).await?.into_inner().result);

    let unknown = keda
        .is_active(scaled_object("no-such-variant"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("e2e/no-such-variant"),
        "{unknown:?}"
    );
    Ok(())
}

/// A ScaledObject in `e2e` whose trigger follows VariantAutoscaling `name`.
fn scaled_object(name: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: format!("{name}-so"),
        namespace: "e2e".into(),
        scaler_metadata: [("variantAutoscaling".to_string(), name.to_string())].into(),
    }
}

/// The stream's next answer, within the test's patience.
async fn next(stream: &mut tonic::Streaming<IsActiveResponse>) -> anyhow::Result<IsActiveResponse> {
    let answer = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .map_err(|_| anyhow::anyhow!("no answer pushed within 20 s"))??;
    answer.ok_or_else(|| anyhow::anyhow!("the stream ended"))
}
