//! The Kubernetes controller on a real control plane, wva installed by its
//! chart and its pods run by the tests' local node (docs/testing.md): a
//! VariantAutoscaling through its life, agents' identity by bound tokens,
//! configuration live and static, watches across an API-server restart, and
//! leader election on a real Lease.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use wva_e2e::install::*;
use wva_e2e::pod_agent::PodAgent;
use wva_e2e::*;

/// A saturation config under which a request from `hold_completion` (about
/// 40 % of a `SLOW_DECODING_SIM`'s KV cache) saturates a replica, and each
/// decision adds one replica, so the tests see exactly 1 → 2.
const ONE_STEP_AT_LOW_THRESHOLD: &str =
    "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\nmaxScaleUpReplicas: 1\nmaxScaleUpPercent: 0\n";

#[tokio::test]
async fn deployments_run_with_injected_agents_and_their_variant_settles() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let aggregator = &replicas[0];

    // a. The VariantAutoscaling comes first: its Deployment is reported missing.
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    let va = va_where(&client, "the missing Deployment in status", |va| {
        condition(va, "Ready").is_some()
    })
    .await?;
    assert_condition(
        &va,
        "TargetResolved",
        ("False", "TargetNotFound", "Deployment 'chat' not found"),
    );
    assert_condition(
        &va,
        "Ready",
        (
            "False",
            "DeploymentNotFound",
            "Target deployment 'chat' not found",
        ),
    );
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(aggregator.pod.as_str())
    );

    // b. The Deployment: the controllers make its pod, kube-apiserver calls
    // the webhook through its Service, the node runs the sim and the agent.
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let sidecars: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        sidecars,
        ["wva-agent"],
        "injected by the webhook on creation"
    );
    // It streams over TLS: an https:// address and the aggregator's own CA.
    let agent_env: BTreeMap<String, String> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        agent_env.get("WVA_AGGREGATOR").map(String::as_str),
        Some("https://wva-headless.wva-system.svc:9443")
    );
    assert_eq!(agent_env.get("WVA_TLS_CA_PEM"), aggregator.grpc_ca.as_ref());
    assert!(
        aggregator.grpc_ca.is_some(),
        "the chart serves TLS by default"
    );
    let va = va_where(&client, "fresh metrics and a decision", |va| {
        has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va).is_some()
    })
    .await?;
    assert_condition(
        &va,
        "TargetResolved",
        ("True", "TargetFound", "Deployment 'chat' found"),
    );
    assert_condition(
        &va,
        "MetricsAvailable",
        (
            "True",
            "MetricsFound",
            "all 1 ready replicas report fresh metrics",
        ),
    );
    assert_eq!(desired_in_status(&va), Some(1), "{}", va["status"]);
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["accelerator"], "L4");
    let metrics = aggregator.metrics;
    eventually(WITHIN, "wva_desired_replicas of chat", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;
    let injected = metric(metrics, "wva_webhook_admissions_total").await?;
    assert!(
        injected
            .iter()
            .any(|(l, n)| l.get("outcome").map(String::as_str) == Some("injected") && *n >= 1.0),
        "{injected:?}"
    );
    let events = va_events(&client).await?;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "DeploymentNotFound"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "TargetFound"),
        "{events:?}"
    );

    // What a user sees (docs/quickstart.md shows this table).
    let table = kubectl(&plane, &["get", "va", "-n", NS]).await?;
    println!("kubectl get va -n {NS}\n{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .context("a row")?
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&CHAT), "{table}");
    assert!(
        row.contains(&MODEL) && row.contains(&"L4") && row.contains(&"True"),
        "{table}"
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .context("a header")?
        .split_whitespace()
        .collect();
    let quickstart = std::fs::read_to_string(workspace().join("docs/quickstart.md"))?;
    assert!(
        quickstart
            .lines()
            .any(|l| l.split_whitespace().eq(header.iter().copied())),
        "docs/quickstart.md shows the columns kubectl prints: {header:?}"
    );

    // Steady state: analyses go on (one per sample), the status is not
    // written again.
    let writes = status_writes(&plane, CHAT)?;
    assert!(
        writes >= 2,
        "status written by the ServiceAccount: {writes}"
    );
    let runs = scalar(metrics, "wva_analysis_runs_total").await?;
    eventually(WITHIN, "ten more analyses", || async move {
        Ok((scalar(metrics, "wva_analysis_runs_total").await? >= runs + 10.0).then_some(()))
    })
    .await?;
    assert_eq!(
        status_writes(&plane, CHAT)?,
        writes,
        "unchanged analyses write nothing"
    );

    // c. The Deployment is deleted (the garbage collector takes its
    // ReplicaSet and pods, the node stops them): the decision is withdrawn,
    // the VariantAutoscaling stays.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .delete(CHAT, &DeleteParams::background())
        .await?;
    let va = va_where(&client, "the deleted Deployment in status", |va| {
        has_condition(va, "Ready", "False", "DeploymentNotFound")
    })
    .await?;
    assert_condition(
        &va,
        "Ready",
        (
            "False",
            "DeploymentNotFound",
            "Target deployment 'chat' no longer exists",
        ),
    );
    assert_condition(
        &va,
        "TargetResolved",
        ("False", "TargetNotFound", "Deployment 'chat' not found"),
    );
    assert_eq!(desired_in_status(&va), None, "{}", va["status"]);
    eventually(WITHIN, "the gauge withdrawn", || async move {
        Ok(desired_gauge(metrics).await?.is_none().then_some(()))
    })
    .await?;
    controller_pods(&client, CHAT, 0).await?;

    // d. The Deployment comes back: new pods, injected, and the variant
    // settles again by itself.
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    let va = va_where(&client, "the recreated Deployment in status", |va| {
        has_condition(va, "Ready", "True", "TargetReady")
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va) == Some(1)
    })
    .await?;
    assert_condition(
        &va,
        "OptimizationReady",
        (
            "True",
            "OptimizationSucceeded",
            "desired 1 replicas (steady)",
        ),
    );
    eventually(
        WITHIN,
        "wva_desired_replicas of chat again",
        || async move { Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0)) },
    )
    .await?;

    // Everything above was done with the chart's permissions and no more.
    assert_no_forbidden_request(&plane)?;
    drop(node);
    Ok(())
}

#[tokio::test]
async fn bound_tokens_speak_only_for_their_own_live_pod() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let (metrics, replica) = (replicas[0].metrics, &replicas[0]);
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 2)).await?;
    let pods = controller_pods(&client, CHAT, 2).await?;
    let (a, b) = (&pods[0], &pods[1]);
    eventually(WITHIN, "both pods' agents streaming", || async move {
        Ok((scalar(metrics, "wva_connected_agents").await? == 2.0).then_some(()))
    })
    .await?;
    let before = refusals(metrics).await?;

    // Pod a's genuine token (as the node projected it), presented by a
    // stream claiming to be pod b: refused, counted, and the honest streams
    // go on.
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let a_token = node.volume_file(NS, &name(a), "wva-agent-token", "token");
    let a_sim: SocketAddr = (node.pod_ip(NS, &name(a)).context("a's address")?, 8000).into();
    let (a_value, b_value) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let _impostor = PodAgent {
        token: Some(&a_token),
        ..PodAgent::of(&b_value, None, a_sim, replica, MODEL)
    }
    .start()?;
    // A token bound to pod b, for another audience.
    let b_uid = b.metadata.uid.as_deref().context("uid")?;
    let wrong_audience = plane
        .token(NS, "default", &["someone-else"], Some((&name(b), b_uid)))
        .await?;
    let dir = tempfile::tempdir()?;
    let wrong_audience_file = dir.path().join("wrong-audience.token");
    std::fs::write(&wrong_audience_file, wrong_audience)?;
    let _stranger =
        PodAgent::of(&b_value, Some(&wrong_audience_file), a_sim, replica, MODEL).start()?;
    // A made-up token, and no token at all.
    let forged_file = dir.path().join("forged.token");
    std::fs::write(&forged_file, "eyJhbGciOiJSUzI1NiJ9.forged.sig")?;
    let _forger = PodAgent::of(&b_value, Some(&forged_file), a_sim, replica, MODEL).start()?;
    let _anonymous = PodAgent::of(&b_value, None, a_sim, replica, MODEL).start()?;
    let before_ref = &before;
    let refused = eventually(WITHIN, "four refusals", || async move {
        let now = refusals(metrics).await?;
        let grown = |reason: &str| {
            now.get(reason).copied().unwrap_or(0.0) - before_ref.get(reason).copied().unwrap_or(0.0)
        };
        let counts = [
            grown("no_token"),
            grown("pod_mismatch"),
            grown("token_invalid"),
        ];
        let done = counts[0] >= 1.0 && counts[1] >= 1.0 && counts[2] >= 2.0;
        Ok(done.then(|| new_refusals(before_ref, now)))
    })
    .await?;
    assert_eq!(refused, ["no_token", "pod_mismatch", "token_invalid"]);
    assert_eq!(scalar(metrics, "wva_connected_agents").await?, 2.0);
    let mut honest = vec![name(a), name(b)];
    honest.sort();
    let honest_ref = &honest;
    chat_decision_where(metrics, "only the honest pods in the analysis", |d| {
        d["data"] == "fresh" && input_pods(d) == *honest_ref
    })
    .await?;

    // Pod a is deleted (its ReplicaSet replaces it): its token dies with it.
    let a_token_text = std::fs::read_to_string(&a_token)?;
    let saved = dir.path().join("a.token");
    std::fs::write(&saved, &a_token_text)?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    pod_api.delete(&name(a), &DeleteParams::default()).await?;
    let a_name = name(a);
    eventually(WITHIN, "pod a to be gone", || {
        let (pod_api, a_name) = (pod_api.clone(), a_name.clone());
        async move { Ok(pod_api.get_opt(&a_name).await?.is_none().then_some(())) }
    })
    .await?;
    // The API server's own authenticator lags the deletion a little (it
    // reads pods from its cache); the aggregator's pod watch covers the gap.
    let error = eventually(WITHIN, "the API server to refuse the token", || async {
        let review = plane.review_token(&a_token_text, "wva-aggregator").await?;
        Ok(review
            .authenticated
            .is_none()
            .then_some(review.error.unwrap_or_default()))
    })
    .await?;
    assert!(error.contains("token has been invalidated"), "{error}");
    let before = refusals(metrics).await?;
    let b_sim: SocketAddr = (node.pod_ip(NS, &name(b)).context("b's address")?, 8000).into();
    let _late = PodAgent::of(&a_value, Some(&saved), b_sim, replica, MODEL).start()?;
    let before_ref = &before;
    let refused = eventually(WITHIN, "the dead pod's token refused", || async move {
        let new = new_refusals(before_ref, refusals(metrics).await?);
        Ok((!new.is_empty()).then_some(new))
    })
    .await?;
    // Refused as unknown while a cached review still vouches for the token,
    // as invalid once the aggregator asks the API server again.
    assert!(
        refused
            .iter()
            .all(|r| r == "pod_unknown" || r == "token_invalid"),
        "{refused:?}"
    );
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

#[tokio::test]
async fn configuration_changes_apply_live_and_a_static_change_is_rejected() -> anyhow::Result<()> {
    // In HYBRID mode, which reads the serviceclass ConfigMap too.
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &["config.EXPERIMENTAL_PROACTIVE_MODEL=true"]).await?;
    let aggregator = &replicas[0];
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": "kvCacheThreshold: 0.8\nkvSpareTrigger: 0.1\n"}),
    )
    .await?;
    // The variant names its class, so the plan's answer lists the classes
    // the aggregator holds for the model (its held request never finishes,
    // so the plan never gets further, and the saturation analysis decides).
    let mut va = variant_autoscaling(CHAT, CHAT);
    va["metadata"]["annotations"] = json!({"wva.llmd.ai/service-class": "Premium"});
    plane.create(&va).await?;
    plane
        .create(&vllm_deployment_with(CHAT, 1, &SLOW_DECODING_SIM))
        .await?;
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let sim = serving_sim(&node, &pod_name).await?;
    va_where(&client, "one desired replica with fresh metrics", |va| {
        desired_in_status(va) == Some(1)
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
    })
    .await?;
    // ~40% of the sim's KV cache, held for the whole test: below 0.8.
    let _request = hold_completion(sim, MODEL, 400, 500).await?;

    // The same load saturates a replica at a 0.3 threshold.
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": ONE_STEP_AT_LOW_THRESHOLD}),
    )
    .await?;
    va_where(&client, "two desired replicas in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    let metrics = aggregator.metrics;
    eventually(WITHIN, "wva_desired_replicas of chat at 2", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 2.0))
    })
    .await?;
    let up = va_event(&client, "DesiredReplicasIncreased").await?;
    assert!(up.2.starts_with("desired replicas 1 → 2 ("), "{up:?}");
    let scaled = metric(metrics, "wva_replica_scaling_total").await?;
    let scaled: Vec<(&str, &str, f64)> = scaled
        .iter()
        .map(|(l, v)| (l["direction"].as_str(), l["reason"].as_str(), *v))
        .collect();
    assert_eq!(scaled, [("up", "saturation", 1.0)]);

    // The serviceclass ConfigMap: the chart's has no class; an edit applies
    // at once, an invalid one is refused with an Event and the previous
    // classes stay.
    let abstains = |defined: &'static str| {
        move |d: &serde_json::Value| {
            d["modelBased"]["abstains"]
                == format!(
                    "service class \"Premium\" is not defined for model \"{MODEL}\" (defined: {defined})"
                )
        }
    };
    chat_decision_where(metrics, "no class defined", abstains("none")).await?;
    let standard =
        "- {name: Standard, model: e2e/llama, priority: 5, slo-itl: 50, slo-ttw: 1000}\n";
    patch_config_map(&client, "serviceclass", json!({"serviceClasses": standard})).await?;
    chat_decision_where(metrics, "class Standard defined", abstains("\"Standard\"")).await?;
    let invalid = format!(
        "{standard}- {{name: Premium, model: e2e/llama, priority: 0, slo-itl: 24, slo-ttw: 500}}\n"
    );
    patch_config_map(&client, "serviceclass", json!({"serviceClasses": invalid})).await?;
    let refused = eventually(WITHIN, "the invalid serviceclass event", || async {
        let events = events_about(&client, SYSTEM, "ConfigMap", "serviceclass").await?;
        Ok(events
            .into_iter()
            .find(|(_, r, _)| r == "InvalidServiceClassConfig"))
    })
    .await?;
    assert_eq!(refused.0, "Warning");
    assert_eq!(
        refused.2,
        "serviceclass entry 1 (\"Premium\"): priority must be a whole number from 1 (the highest), got 0"
    );
    let since = decision_where(metrics, WITHIN, "chat's decision", |d| {
        d["variant"]["name"] == CHAT
    })
    .await?["decidedAt"]
        .as_i64()
        .unwrap_or_default();
    let kept = chat_decision_where(metrics, "a decision after the refused edit", |d| {
        d["decidedAt"].as_i64() > Some(since)
    })
    .await?;
    assert!(abstains("\"Standard\"")(&kept), "{}", kept["modelBased"]);

    // Objectives no replica can meet: the sim decodes a token a second,
    // as the variant's profile now says, and class Premium asks for half
    // that. The condition says so, and the saturation analysis decides.
    let premium = format!(
        "{standard}- {{name: Premium, model: e2e/llama, priority: 1, slo-itl: 500, slo-ttw: 5000}}\n"
    );
    patch_config_map(&client, "serviceclass", json!({"serviceClasses": premium})).await?;
    let profile =
        r#"{"itl": {"intercept": 1000, "slope": 0}, "prefill": {"intercept": 20, "slope": 0.1}}"#;
    vas(&client)
        .patch(
            CHAT,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {"wva.llmd.ai/performance-profile": profile}}}),
            ),
        )
        .await?;
    // Requests of one token finish with their prefill: the token mix.
    for _ in 0..3 {
        let mut finished = hold_completion(sim, MODEL, 8, 1).await?;
        let mut response = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut finished, &mut response).await?;
    }
    let va = va_where(&client, "the objectives unattainable", |va| {
        has_condition(va, "ModelBasedPlan", "False", "ObjectivesUnattainable")
    })
    .await?;
    assert_condition(
        &va,
        "ModelBasedPlan",
        (
            "False",
            "ObjectivesUnattainable",
            "the saturation analysis decides alone: objectives of class \"Premium\" unattainable: a lone request's inter-token latency is 1000.0 ms, over the objective of 500 ms",
        ),
    );

    // A static parameter cannot change while running: an Event says so and
    // the aggregator goes on as it started.
    patch_config_map(
        &client,
        "workload-variant-autoscaler-variantautoscaling-config",
        json!({"WVA_SCALE_TO_ZERO": "true", "EXPERIMENTAL_PROACTIVE_MODEL": "false"}),
    )
    .await?;
    let rejected = eventually(WITHIN, "the rejection event", || async {
        let events = events_about(
            &client,
            SYSTEM,
            "ConfigMap",
            "workload-variant-autoscaler-variantautoscaling-config",
        )
        .await?;
        Ok(events
            .into_iter()
            .find(|(_, r, _)| r == "ImmutableConfigChangeRejected"))
    })
    .await?;
    assert_eq!(rejected.0, "Warning");
    assert!(rejected.2.contains("WVA_SCALE_TO_ZERO"), "{}", rejected.2);
    assert!(
        rejected.2.contains("EXPERIMENTAL_PROACTIVE_MODEL"),
        "{}",
        rejected.2
    );
    // Still in HYBRID mode.
    chat_decision_where(metrics, "the model-based view", |d| {
        d["modelBased"].is_object()
    })
    .await?;
    assert_eq!(http_get(aggregator.metrics, "/healthz").await?.0, 200);
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(aggregator.pod.as_str())
    );
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

#[tokio::test]
async fn the_controller_resumes_after_kube_apiserver_restarts() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let metrics = replicas[0].metrics;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    va_where(&client, "one ready replica reporting", |va| {
        va["status"]["currentAlloc"]["numReplicas"] == 1
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
    })
    .await?;

    plane.restart("kube-apiserver").await?;
    // Every watch broke; a change made after the restart must still reach
    // the status: the Deployment scaled to two (by hand, as a user would).
    let client = plane.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .patch(
            CHAT,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let va = va_where(&client, "two replicas reporting after the restart", |va| {
        va["status"]["currentAlloc"]["numReplicas"] == 2
            && condition(va, "MetricsAvailable").is_some_and(|(s, _, m)| {
                s == "True" && m == "all 2 ready replicas report fresh metrics"
            })
    })
    .await?;
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["accelerator"], "L4");
    eventually(WITHIN, "both agents streaming", || async move {
        Ok((scalar(metrics, "wva_connected_agents").await? == 2.0).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_environment_wins_over_the_config_map_which_wins_over_defaults() -> anyhow::Result<()> {
    // The ConfigMap names the controller instance: only its objects are managed.
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &["config.CONTROLLER_INSTANCE=blue"]).await?;
    let labelled = |name: &str, instance: &str| {
        let mut va = variant_autoscaling(name, name);
        va["metadata"]["labels"]["wva.llmd.ai/controller-instance"] = json!(instance);
        va
    };
    // Objects are synced in name order, so once the last managed one has a
    // status, an earlier unmanaged one would have had one too.
    for (name, instance) in [
        ("a-green", "green"),
        ("b-blue", "blue"),
        ("c-green", "green"),
        ("d-blue", "blue"),
    ] {
        plane.create(&labelled(name, instance)).await?;
    }
    let has_status = |name: &'static str| {
        let client = &client;
        async move {
            Ok::<_, anyhow::Error>(
                va(client, name)
                    .await?
                    .is_some_and(|v| !v["status"].is_null()),
            )
        }
    };
    eventually(WITHIN, "d-blue's status", || async {
        Ok(has_status("d-blue").await?.then_some(()))
    })
    .await?;
    assert!(has_status("b-blue").await?);
    assert!(!has_status("a-green").await? && !has_status("c-green").await?);

    // The environment (the chart's extraEnv) wins over the ConfigMap: the
    // upgrade rolls a new pod, which manages the green ones.
    let chart = workspace().join("charts/wva");
    let chart = chart.to_str().context("chart path")?;
    let upgraded = helm(
        &plane,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--reuse-values",
            "--set",
            "extraEnv[0].name=CONTROLLER_INSTANCE",
            "--set",
            "extraEnv[0].value=green",
        ],
    )
    .await?;
    succeeded(&upgraded, "helm upgrade")?;
    eventually(WITHIN, "c-green's status", || async {
        Ok(has_status("c-green").await?.then_some(()))
    })
    .await?;
    assert!(has_status("a-green").await?);
    let first = &replicas[0].pod;
    assert!(
        node.pod_ip(SYSTEM, first).is_none(),
        "the old replica was replaced"
    );
    Ok(())
}

#[tokio::test]
async fn a_follower_takes_the_real_lease_over_from_a_crashed_leader_and_keeps_the_decision()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(2, &[]).await?;
    // A steady load saturates the replica at this threshold: the decision
    // (2) differs from the replica count (1), so a restart from scratch
    // would show.
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": ONE_STEP_AT_LOW_THRESHOLD}),
    )
    .await?;
    let first = eventually(WITHIN, "a leader", || async { leader(&client).await }).await?;
    let leading = replicas
        .iter()
        .find(|r| r.pod == first)
        .context("the leader")?;
    let follower = replicas
        .iter()
        .find(|r| r.pod != first)
        .context("a follower")?;
    let (pod_name, _request) = chat_holding_a_request(&plane, &client, &node).await?;

    // The agent streams to both replicas (fan-out through the headless
    // Service): both decide the same; only the leader publishes and writes.
    va_where(&client, "the leader's decision in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    let (leader_metrics, follower_metrics) = (leading.metrics, follower.metrics);
    eventually(WITHIN, "the leader's gauge", || async move {
        Ok(desired_gauge(leader_metrics).await?.filter(|v| *v == 2.0))
    })
    .await?;
    let followed = chat_decision_where(follower_metrics, "the follower's own decision", |d| {
        d["desiredReplicas"] == 2 && input_pods(d) == [pod_name.clone()]
    })
    .await?;
    assert_eq!(followed["data"], "fresh", "{followed}");
    assert_eq!(
        desired_gauge(follower_metrics).await?,
        None,
        "a follower publishes nothing"
    );

    // The leader's processes die without releasing the Lease.
    let crashed = Instant::now();
    node.crash(SYSTEM, &first).await?;
    let follower_pod = follower.pod.clone();
    eventually(
        Duration::from_secs(10),
        "the follower to take the Lease over",
        || async {
            Ok((leader(&client).await?.as_deref() == Some(follower_pod.as_str())).then_some(()))
        },
    )
    .await?;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "taken before the lease expired: {took:?}"
    );
    let seen = std::sync::Mutex::new(Vec::new());
    let seen_ref = &seen;
    eventually(WITHIN, "the new leader's series", || async move {
        let value = desired_gauge(follower_metrics).await?;
        seen_ref
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(value);
        Ok(value.map(|_| ()))
    })
    .await?;
    assert_eq!(
        seen.into_inner().unwrap_or_else(|p| p.into_inner()),
        [2.0],
        "the new leader publishes the held decision"
    );
    let va = va(&client, CHAT).await?.context("the VariantAutoscaling")?;
    assert_eq!(desired_in_status(&va), Some(2), "{}", va["status"]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get("wva-aggregator-leader").await?;
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

#[tokio::test]
async fn cut_off_from_the_api_server_a_leader_steps_down_and_no_call_hangs() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let metrics = replicas[0].metrics;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    eventually(WITHIN, "the leader's decision published", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;

    // kube-apiserver stops answering (its connections stay open): the
    // leader cannot renew, and must stop publishing before the Lease (3 s in
    // the test values) could go to another replica.
    let pods = controller_pods(&client, CHAT, 1).await?;
    let pod_name = pods[0].metadata.name.clone().unwrap_or_default();
    let pod = serde_json::to_value(&pods[0])?;
    let (node_ref, pod_ref) = (&node, &pod_name);
    let ip = eventually(WITHIN, "the pod's address", || async move {
        Ok(node_ref.pod_ip(NS, pod_ref))
    })
    .await?;
    let sim: SocketAddr = (ip, 8000).into();
    let dir = tempfile::tempdir()?;
    let unseen = dir.path().join("unseen.token");
    std::fs::write(&unseen, "eyJhbGciOiJSUzI1NiJ9.never-reviewed.sig")?;
    let before = refusals(metrics).await?;
    plane.signal("kube-apiserver", "STOP").await?;
    let paused = Instant::now();
    let stepped_down = eventually(
        Duration::from_secs(3),
        "the leader to step down",
        || async move {
            Ok(desired_gauge(metrics)
                .await?
                .is_none()
                .then(|| paused.elapsed()))
        },
    )
    .await;
    // A stream whose token was never reviewed: its TokenReview cannot be
    // answered, and is given up after the call bound (15 s), refused as
    // UNAVAILABLE, instead of holding the stream forever.
    let _agent = PodAgent::of(&pod, Some(&unseen), sim, &replicas[0], MODEL).start()?;
    let before_ref = &before;
    let review_given_up = eventually(WITHIN, "the TokenReview given up", || async move {
        let refused = new_refusals(before_ref, refusals(metrics).await?);
        Ok(refused
            .contains(&"review_failed".to_string())
            .then(|| paused.elapsed()))
    })
    .await;
    plane.signal("kube-apiserver", "CONT").await?;
    let stepped_down = stepped_down?;
    println!("stepped down {stepped_down:?} after kube-apiserver was paused");
    let review_given_up = review_given_up?;
    println!("TokenReview given up {review_given_up:?} after kube-apiserver was paused");

    // Once the API server answers again, it leads and publishes again.
    eventually(WITHIN, "the decision published again", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(replicas[0].pod.as_str())
    );
    drop(node);
    Ok(())
}
