//! The loop closed by the real consumers of wva's decisions (docs/hpa.md):
//! the samples of `examples/` applied as a user applies them, the decisions
//! scraped by Prometheus as the chart's ServiceMonitor says, served by
//! prometheus-adapter with the sample values, and read by
//! kube-controller-manager's HPA controller, which scales the sample
//! Deployments whose pods the local nodes run. What stands in for what is
//! in `wva_e2e::consumers`. The assertions are on the Deployments' replicas
//! and their pods, not on wva's own gauges.

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use serde::Deserialize;
use serde_json::{Value, json};
use wva_aggregator::prometheus::client::{PrometheusClient, PrometheusConfig};
use wva_e2e::consumers::Monitoring;
use wva_e2e::install::*;
use wva_e2e::node::LocalNode;
use wva_e2e::*;

/// The samples' namespace and model.
const SAMPLES: &str = "llm-inference";
const SAMPLE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const L4: &str = "llama-8b-l4";
const H100: &str = "llama-8b-h100";

/// How long a decision may take to reach a Deployment: the ServiceMonitor's
/// scrape interval (15 s) and the HPA controller's sync period (15 s), with
/// room for a busy machine.
const THROUGH_THE_HPA: Duration = Duration::from_secs(120);

/// The objects of a sample file.
fn samples(file: &str) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(workspace().join(file))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Ok(Value::deserialize(doc)?))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// A sample Deployment whose simulated vLLM has a KV cache of just its
/// `--max-model-len` (8192 tokens) and decodes one token a second, so a
/// request held on it ([`hold_on`]) holds about 40 % of the cache for the
/// whole test.
fn with_slow_sims(mut object: Value) -> Value {
    if object["kind"] == "Deployment" {
        let args = &mut object["spec"]["template"]["spec"]["containers"][0]["args"];
        if let Some(args) = args.as_array_mut() {
            args.extend(["--num-gpu-blocks", "512", "--itl-base", "1s"].map(Value::from));
        }
    }
    object
}

/// Awaits Deployment `name` at `replicas`, set by its HPA; on failure, says
/// what wva decided and what the HPA saw.
async fn scaled_to(
    client: &kube::Client,
    metrics: std::net::SocketAddr,
    name: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    let what = format!("the HPA to set {name} to {replicas} replicas");
    let scaled = eventually(THROUGH_THE_HPA, &what, || async {
        Ok((spec_replicas(client, SAMPLES, name).await? == Some(replicas)).then_some(()))
    })
    .await;
    if let Err(e) = scaled {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), SAMPLES);
        let hpa = hpas.get(name).await?;
        let decision = decisions(metrics)
            .await?
            .into_iter()
            .find(|d| d["variant"]["name"] == name);
        anyhow::bail!(
            "{e:#}\nwva's decision: {}\nthe HPA's status: {}",
            serde_json::to_string(&decision)?,
            serde_json::to_string(&hpa.status)?
        );
    }
    Ok(())
}

/// A request held on the pod of Deployment `name`.
async fn hold_on(
    client: &kube::Client,
    node: &LocalNode,
    name: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    let pod = live_pods(client, SAMPLES, &format!("app={name}"), 1)
        .await?
        .remove(0);
    let pod = pod.metadata.name.unwrap_or_default();
    let sim = serving_sim_in(node, SAMPLES, &pod).await?;
    hold_completion(sim, SAMPLE_MODEL, 3200, 500).await
}

#[tokio::test]
async fn the_sample_hpas_scale_the_sample_deployments_on_wva_decisions() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node: _wva_node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    // A held request saturates a replica at this threshold; scale-downs are
    // not held by wva's window (the samples' HPAs have none either).
    saturating_on_a_held_request(&client, "scaleDownStabilizationSeconds: 0\n").await?;
    let monitoring = Monitoring::start(&plane).await?;
    plane
        .create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SAMPLES}}))
        .await?;
    plane.default_service_account(SAMPLES).await?;
    let gpus = LocalNode::start(&plane, "gpus", &[SAMPLES]).await?;
    for object in samples("examples/variantautoscaling.yaml")? {
        plane.create(&with_slow_sims(object)).await?;
    }

    // The decisions are in Prometheus, under the labels users get, before
    // the adapter first lists its series.
    let prometheus = PrometheusClient::new(PrometheusConfig {
        ca_cert: Some(monitoring.ca_file.clone()),
        server_name: Some(monitoring.server_name.clone()),
        ..PrometheusConfig::new(format!("https://{}", monitoring.prometheus.addr).parse()?)
    })?;
    let query = format!(
        "wva_desired_replicas{{exported_namespace=\"{SAMPLES}\",variant_name=\"{L4}\",namespace=\"{SYSTEM}\"}}"
    );
    eventually(THROUGH_THE_HPA, "the L4 decision in Prometheus", || async {
        Ok(prometheus
            .query(&query)
            .await
            .ok()
            .filter(|s| !s.is_empty()))
    })
    .await?;
    monitoring.start_adapter(&plane).await?;
    for object in samples("examples/hpa.yaml")? {
        plane.create(&object).await?;
    }

    // The HPA reads the idle model's decision through the adapter.
    let external = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{SAMPLES}/wva_desired_replicas?labelSelector=variant_name%3D{L4}"
    );
    let served = eventually(
        THROUGH_THE_HPA,
        "the adapter to serve the L4 decision",
        || async {
            let request = http::Request::get(&external).body(Vec::new())?;
            Ok(client.request::<Value>(request).await.ok())
        },
    )
    .await;
    let served = match served {
        Ok(served) => served,
        Err(e) => anyhow::bail!("{e:#}\n{}", monitoring.adapter_log(&client).await?),
    };
    assert_eq!(served["items"][0]["value"], "1", "{served}");
    assert_eq!(spec_replicas(&client, SAMPLES, L4).await?, Some(1));

    // Both variants saturated: wva asks for more of the cheaper one, the
    // HPA sets it, and the new pods start, report and settle the model.
    let l4_request = hold_on(&client, &gpus, L4).await?;
    let h100_request = hold_on(&client, &gpus, H100).await?;
    let metrics = replicas[0].metrics;
    let raised = eventually(
        THROUGH_THE_HPA,
        "the L4 raised, started and settled",
        || async {
            let Some(replicas) = spec_replicas(&client, SAMPLES, L4)
                .await?
                .filter(|r| *r > 1)
            else {
                return Ok(None);
            };
            let all = decisions(metrics).await?;
            let settled = all.iter().any(|d| {
                d["variant"]["name"] == L4
                    && d["desiredReplicas"] == replicas
                    && d["readyReplicas"] == replicas
                    && d["inputs"].as_array().map(Vec::len) == Some(replicas as usize)
            });
            Ok(settled.then_some(replicas))
        },
    )
    .await?;
    live_pods(&client, SAMPLES, &format!("app={L4}"), raised as usize).await?;
    assert_eq!(
        spec_replicas(&client, SAMPLES, H100).await?,
        Some(1),
        "H100 at its floor"
    );

    // The load leaves: back to one L4 replica through the same chain.
    drop((l4_request, h100_request));
    scaled_to(&client, metrics, L4, 1).await?;
    live_pods(&client, SAMPLES, &format!("app={L4}"), 1).await?;
    assert_eq!(spec_replicas(&client, SAMPLES, H100).await?, Some(1));
    Ok(())
}
