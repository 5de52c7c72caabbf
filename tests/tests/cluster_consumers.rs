//! The loop closed by the real consumers of wva's decisions (docs/hpa.md):
//! the samples of `examples/` applied as a user applies them, the decisions
//! scraped by Prometheus as the chart's ServiceMonitor says, served by
//! prometheus-adapter with the sample values, and read by
//! kube-controller-manager's HPA controller, which scales the sample
//! Deployments whose pods the local nodes run. What stands in for what is
//! in `wva_e2e::consumers`. The assertions are on the Deployments' replicas
//! and their pods, not on wva's own gauges.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use wva_e2e::consumers::Monitoring;
use wva_e2e::controlplane::ControlPlane;
use wva_e2e::install::*;
use wva_e2e::samples::{self, H100, L4, SAMPLES, hold_on, samples};
use wva_e2e::*;

/// How long a decision may take to reach a Deployment: the ServiceMonitor's
/// scrape interval (15 s) and the HPA controller's sync period (15 s), with
/// room for a busy machine.
const THROUGH_THE_HPA: Duration = Duration::from_secs(120);

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

/// The verification steps of WVA's HPA guide, in the samples' names, work
/// as written once the HPAs exist.
async fn seed_verification_steps(plane: &ControlPlane) -> anyhow::Result<()> {
    // "look for actual values instead of <unknown>"
    let hpas = eventually(THROUGH_THE_HPA, "the HPA to show the decision", || async {
        let table = kubectl(plane, &["get", "hpa", "-n", SAMPLES]).await?;
        let read = table
            .lines()
            .any(|row| row.starts_with(L4) && row.contains("1/1 (avg)"));
        Ok(read.then_some(()))
    })
    .await;
    let shown_hpas = shown(plane, &["get", "hpa", "-n", SAMPLES]).await?;
    hpas.with_context(|| shown_hpas)?;
    let vas = shown(plane, &["get", "variantautoscaling", "-n", SAMPLES]).await?;
    assert!(vas.lines().any(|row| row.starts_with(L4)), "{vas}");
    let metrics = shown(
        plane,
        &["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"],
    )
    .await?;
    for name in ["wva_desired_replicas", "inferno_desired_replicas"] {
        assert!(metrics.contains(name), "{name} not listed: {metrics}");
    }
    let described = shown(plane, &["describe", "hpa", L4, "-n", SAMPLES]).await?;
    assert!(described.contains("ValidMetricFound"), "{described}");
    let legacy = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{SAMPLES}/inferno_desired_replicas?labelSelector=variant_name%3D{L4}"
    );
    let legacy: serde_json::Value =
        serde_json::from_str(&shown(plane, &["get", "--raw", &legacy]).await?)?;
    assert_eq!(legacy["items"][0]["value"], "1", "{legacy}");
    Ok(())
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
    let gpus = samples::deploy(&plane, true).await?;

    // The HPA reads the idle model's decision through the adapter.
    let served = monitoring.serve_decision(&plane, SAMPLES, L4).await?;
    for object in samples("examples/hpa.yaml")? {
        plane.create(&object).await?;
    }
    assert_eq!(served["items"][0]["value"], "1", "{served}");
    assert_eq!(spec_replicas(&client, SAMPLES, L4).await?, Some(1));
    seed_verification_steps(&plane).await?;

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
    shown(&plane, &["get", "hpa,va", "-n", SAMPLES]).await?;
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
