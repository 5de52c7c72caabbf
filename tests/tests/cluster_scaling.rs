//! Decisions on a real control plane, wva installed by its chart and its pods
//! run by the tests' local node (docs/testing.md): scale to zero, an HPA's
//! floor and ceiling, and metrics from pods without an agent (pod scraping,
//! endpoint pickers).

use anyhow::Context;
use serde_json::{Value, json};
use wva_e2e::controlplane::tool_source;
use wva_e2e::install::*;
use wva_e2e::keda::scaled_object;
use wva_e2e::*;

#[tokio::test]
async fn a_model_without_requests_for_its_retention_scales_to_zero() -> anyhow::Result<()> {
    let (wva, decision) = idle_model(None).await?;
    assert_eq!(decision["desiredReplicas"], 0, "{decision}");
    va_where(&wva.client, "zero in status", |va| {
        desired_in_status(va) == Some(0)
    })
    .await?;
    let metrics = wva.replicas[0].metrics;
    eventually(WITHIN, "wva_desired_replicas of chat at 0", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 0.0))
    })
    .await?;
    let decreased = va_event(&wva.client, "DesiredReplicasDecreased").await?;
    assert_eq!(decreased.2, "desired replicas 1 → 0 (scale_to_zero)");
    Ok(())
}

#[tokio::test]
async fn an_hpas_min_replicas_is_the_floor_of_its_variants_decisions() -> anyhow::Result<()> {
    // The HPA of the quickstart's shape; with no metrics adapter here, the
    // real HPA controller only holds the Deployment at minReplicas.
    let (wva, decision) = idle_model(Some(chat_hpa(1, 4))).await?;
    held_at_one(&wva, &decision).await
}

/// The idle model's decision held at a floor of 1, never below it.
async fn held_at_one(wva: &Wva, decision: &Value) -> anyhow::Result<()> {
    assert_eq!(
        decision["desiredReplicas"], 1,
        "held at the floor: {decision}"
    );
    let events = va_events(&wva.client).await?;
    assert!(
        events
            .iter()
            .all(|(_, r, _)| r != "DesiredReplicasDecreased"),
        "no decrease below the floor: {events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_keda_hpas_floor_is_its_scaled_objects_min_replica_count() -> anyhow::Result<()> {
    // KEDA's own ScaledObject CRD, but no KEDA: the test makes the HPA KEDA
    // would (at 1, as KEDA's HPAs always are), which alone would be a floor
    // of 0.
    let wva = wva_on_a_node(1, &SCALE_TO_ZERO).await?;
    let crd = tool_source("keda-operator")
        .await?
        .join("config/crd/bases/keda.sh_scaledobjects.yaml");
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(crd)?)?;
    wva.plane.apply(&crd).await?;
    let scaled_object = scaled_object(NS, CHAT, 1);
    eventually(WITHIN, "the ScaledObject created", || async {
        Ok(wva.plane.create(&scaled_object).await.ok())
    })
    .await?;
    let mut hpa = chat_hpa(1, 8);
    hpa["metadata"]["name"] = format!("keda-hpa-{CHAT}").into();
    hpa["metadata"]["labels"] = json!({"scaledobject.keda.sh/name": CHAT});
    let (wva, decision) = idle_model_on(wva, Some(hpa)).await?;
    held_at_one(&wva, &decision).await
}

#[tokio::test]
async fn an_hpas_max_replicas_caps_its_variant_which_says_so() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    // A held request saturates a replica at this threshold.
    saturating_on_a_held_request(&client, "").await?;
    plane.create(&chat_hpa(1, 1)).await?;
    let (_, _request) = chat_holding_a_request(&plane, &client, &node).await?;

    // The model needs more, but the HPA cannot go above 1: the decision
    // stays within it and says why.
    let decision = chat_decision_where(
        replicas[0].metrics,
        "a decision limited by maxReplicas",
        |d| d["limit"] == "at_max_replicas",
    )
    .await?;
    assert_eq!(decision["desiredReplicas"], 1, "{decision}");
    assert_eq!(
        decision["saturation"]["analysis"]["shouldScaleUp"], true,
        "{decision}"
    );
    va_where(
        &client,
        "ScalingLimited=True AtMaxReplicas in status",
        |va| has_condition(va, "ScalingLimited", "True", "AtMaxReplicas"),
    )
    .await?;
    let limited = va_event(&client, "ScalingLimited").await?;
    assert!(limited.2.contains("maxReplicas"), "{limited:?}");
    let events = va_events(&client).await?;
    assert!(
        events
            .iter()
            .all(|(_, r, _)| r != "DesiredReplicasIncreased"),
        "no decision above the ceiling: {events:?}"
    );
    Ok(())
}

/// An HPA of the quickstart's shape for `CHAT`, between `min` and `max`.
fn chat_hpa(min: u32, max: u32) -> Value {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": CHAT, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": CHAT},
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "wva_desired_replicas", "selector": {"matchLabels": {"variant_name": CHAT}}},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
        },
    })
}

/// `CHAT` with one idle pod, its decision once the scale-to-zero analysis
/// has had its say, and the Events about it.
async fn idle_model(hpa: Option<Value>) -> anyhow::Result<(Wva, Value)> {
    idle_model_on(wva_on_a_node(1, &SCALE_TO_ZERO).await?, hpa).await
}

/// [`idle_model`] on wva already installed with [`SCALE_TO_ZERO`].
async fn idle_model_on(wva: Wva, hpa: Option<Value>) -> anyhow::Result<(Wva, Value)> {
    if let Some(hpa) = hpa {
        wva.plane.create(&hpa).await?;
    }
    wva.plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    wva.plane.create(&vllm_deployment(CHAT, 1)).await?;
    let metrics = wva.replicas[0].metrics;
    let decision = chat_decision_where(metrics, "the idle model's scale-to-zero decision", |d| {
        d["basis"] == "scale_to_zero" && d["data"] == "fresh"
    })
    .await?;
    Ok((wva, decision))
}

#[tokio::test]
async fn a_variant_annotated_for_pod_scraping_is_driven_by_its_services_ready_pods()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    // No agent in these pods: the aggregator scrapes them itself through
    // the Service the VariantAutoscaling names.
    let mut va = variant_autoscaling(CHAT, CHAT);
    va["metadata"]["annotations"] = json!({
        "wva.llmd.ai/metrics-source": "pod-scraping",
        "wva.llmd.ai/metrics-service": "chat-metrics",
        "wva.llmd.ai/metrics-port": "8000",
    });
    plane.create(&va).await?;
    plane
        .create(&service_selecting("chat-metrics", CHAT, 8000))
        .await?;
    let mut deployment = vllm_deployment_with(CHAT, 2, &SLOW_DECODING_SIM);
    deployment["spec"]["template"]["metadata"]["annotations"] =
        json!({"wva.llmd.ai/inject-agent": "false"});
    plane.create(&deployment).await?;
    let pods = controller_pods(&client, CHAT, 2).await?;
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert!(
        pods.iter()
            .all(|p| p.spec.iter().all(|s| s.init_containers.is_none())),
        "opted out of injection"
    );
    let busy = names[0].clone();
    let sim = serving_sim(&node, &busy).await?;
    let _request = hold_completion(sim, MODEL, 400, 500).await?;

    let names_ref = &names;
    let decision = chat_decision_where(replicas[0].metrics, "inputs from both ready pods", |d| {
        input_pods(d) == *names_ref
    })
    .await?;
    assert_eq!(decision["data"], "fresh", "{decision}");
    let loaded = decision["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["pod"] == *busy.as_str())
        .context("the loaded pod's input")?;
    assert!(
        loaded["kvCacheUsage"].as_f64().unwrap_or_default() > 0.0,
        "the loaded sim's KV usage is seen: {decision}"
    );
    Ok(())
}

#[tokio::test]
async fn requests_queued_at_a_scraped_endpoint_picker_bring_a_model_back_from_zero()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node(1, &WAKING_FROM_ZERO).await?;
    plane.create(&vllm_deployment(CHAT, 0)).await?;
    let mut va = variant_autoscaling(CHAT, CHAT);
    let queue = endpoint_picker(&plane, &client, &mut va).await?;
    plane.create(&va).await?;

    let metrics = replicas[0].metrics;
    chat_decision_where(metrics, "the idle model at zero", |d| {
        d["desiredReplicas"] == 0
    })
    .await?;
    *queue.lock().unwrap_or_else(|p| p.into_inner()) = flow_control(MODEL, 3);
    let decision = chat_decision_where(metrics, "one replica for the queue", |d| {
        d["desiredReplicas"] == 1
    })
    .await?;
    assert_eq!(decision["basis"], "scale_from_zero", "{decision}");
    Ok(())
}
