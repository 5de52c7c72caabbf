//! Kubernetes mode end to end: the real `wva-aggregator` against the
//! API-server double, fed by real `wva-agent`s scraping real `vllm-sim`s.
//! Each agent presents its pod's token, so every stream goes through the
//! aggregator's identity check.
//!
//! What the real control plane covers lives in `control_plane.rs`; what
//! stays here is not ported yet (docs/testing.md keeps the list): a fatal
//! parameter at start, scale to zero, the HPA floor, configuration
//! precedence, pod scraping and endpoint pickers.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use wva_e2e::apiserver::Resource;
use wva_e2e::cluster::*;
use wva_e2e::*;

const NS: &str = "e2e";
const MODEL: &str = "e2e/llama";
/// The VariantAutoscaling and the Deployment it scales share this name.
const CHAT: &str = "chat";
/// Upper bound for anything a watch or an analysis should bring about.
const WITHIN: Duration = Duration::from_secs(20);

/// A Deployment as its controller leaves it: one ReplicaSet, one Pod.
struct Workload {
    replica_set: Value,
    pod: Value,
}

/// Deployment `CHAT` (1 replica, `ready` ready), its ReplicaSet and Pod `pod`.
async fn workload(cluster: &Cluster, pod: &str, ready: i32) -> anyhow::Result<Workload> {
    let deployment = cluster.deployment(NS, CHAT, 1, ready).await?;
    let replica_set = cluster.replica_set(&deployment).await?;
    let pod = cluster.pod(&replica_set, pod).await?;
    Ok(Workload { replica_set, pod })
}

/// A sim and the agent of `pod` (with its own token) streaming to `aggregators`.
async fn serve_pod(
    cluster: &Cluster,
    pod: &Value,
    aggregators: &str,
    sim_flags: &[&str],
) -> anyhow::Result<(Proc, SocketAddr, Proc)> {
    let (sim, addr) = start_sim(MODEL, sim_flags).await?;
    let token = cluster.pod_token(pod)?;
    let agent = PodAgent::of(pod, Some(&token), addr, aggregators, MODEL).start()?;
    Ok((sim, addr, agent))
}

/// Puts `sim` under a steady load: one request holding ~40% of a
/// [`SLOW_DECODING_SIM`]'s KV cache for minutes, until the connection is dropped.
async fn load(sim: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    hold_completion(sim, MODEL, 400, 500).await
}

/// Adds `annotations` to the VariantAutoscaling `va`.
async fn annotate(cluster: &Cluster, va: &Value, annotations: Value) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"annotations": annotations}});
    cluster
        .merge_patch(Resource::VariantAutoscalings, NS, name_of(va), patch, false)
        .await?;
    Ok(())
}

/// A Service `name` selecting the pods labelled `app: app`.
async fn service_selecting(
    cluster: &Cluster,
    name: &str,
    app: &str,
    port: u16,
) -> anyhow::Result<()> {
    let service = json!({"metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": port}]}});
    cluster
        .create(Resource::Services, Some(NS), service)
        .await?;
    Ok(())
}

/// Gives pod `name` an IP and its Ready condition, as the kubelet would.
async fn running_at(cluster: &Cluster, name: &str, ip: &str, ready: bool) -> anyhow::Result<()> {
    let ready = if ready { "True" } else { "False" };
    let status = json!({"status": {"podIP": ip,
        "conditions": [{"type": "Ready", "status": ready}]}});
    cluster
        .merge_patch(Resource::Pods, NS, name, status, true)
        .await?;
    Ok(())
}

/// Awaits the VariantAutoscaling `CHAT` satisfying `pred`.
async fn va_where(
    cluster: &Cluster,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(WITHIN, what, || {
        let va = cluster.va(NS, CHAT).filter(|va| pred(va));
        async move { Ok(va) }
    })
    .await
}

/// `desiredOptimizedAlloc.numReplicas`, when set.
fn desired_in_status(va: &Value) -> Option<i64> {
    va["status"]["desiredOptimizedAlloc"]["numReplicas"].as_i64()
}

/// The `wva_desired_replicas` series of `CHAT`, checking its labels.
async fn desired_gauge(metrics: SocketAddr) -> anyhow::Result<Option<f64>> {
    let series = metric(metrics, "wva_desired_replicas").await?;
    let mut ours = series.iter().filter(|(l, _)| l["variant_name"] == CHAT);
    let found = ours.next().map(|(labels, value)| {
        assert_eq!(labels["namespace"], NS, "{labels:?}");
        assert_eq!(labels["accelerator_type"], ACCELERATOR, "{labels:?}");
        *value
    });
    assert!(ours.next().is_none(), "one series per variant: {series:?}");
    Ok(found)
}

async fn gauge_becomes(metrics: SocketAddr, want: Option<f64>) -> anyhow::Result<()> {
    let what = format!("wva_desired_replicas of {CHAT} to be {want:?}");
    eventually(WITHIN, &what, || async move {
        Ok((desired_gauge(metrics).await? == want).then_some(()))
    })
    .await
}

/// `CHAT`'s decision on an aggregator, once it satisfies `pred`.
async fn decision_where(
    metrics: SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(WITHIN, what, || {
        let pred = &pred;
        async move {
            let all = decisions(metrics).await?;
            Ok(all
                .into_iter()
                .find(|d| d["variant"]["name"] == CHAT && pred(d)))
        }
    })
    .await
}

fn input_pods(decision: &Value) -> Vec<&str> {
    decision["inputs"]
        .as_array()
        .map(|inputs| inputs.iter().filter_map(|i| i["pod"].as_str()).collect())
        .unwrap_or_default()
}

fn va_events(cluster: &Cluster) -> Vec<EventSummary> {
    cluster.events_about(NS, "VariantAutoscaling", CHAT)
}

/// Awaits the Event of `reason` about `CHAT` (published just after the
/// status write) having occurred `count` times, and checks it is the only
/// one of that reason and occurred no more often.
async fn va_event(cluster: &Cluster, reason: &str, count: u64) -> anyhow::Result<EventSummary> {
    let what = format!("{reason} about {CHAT} to have occurred {count} times");
    let event = eventually(WITHIN, &what, || {
        let event = va_events(cluster)
            .into_iter()
            .find(|e| e.reason == reason && e.count >= count);
        async move { Ok(event) }
    })
    .await?;
    let events = va_events(cluster);
    let same: Vec<_> = events.iter().filter(|e| e.reason == reason).collect();
    assert_eq!(same, [&event], "{events:?}");
    assert_eq!(event.count, count, "{events:?}");
    Ok(event)
}

#[tokio::test]
async fn an_invalid_parameter_at_start_is_fatal_and_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[]).await?;
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("GLOBAL_OPT_INTERVAL", "soon")])
        .await?;
    let mut command = cluster.aggregator_command("wva-0", free_addr(), free_addr(), &[]);
    command.stderr(std::process::Stdio::piped());
    let output = tokio::time::timeout(WITHIN, command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("GLOBAL_OPT_INTERVAL"), "{stderr}");
    assert!(stderr.contains(MAIN_CONFIG_MAP), "{stderr}");
    assert_eq!(cluster.leader(), None, "it stopped before the election");
    Ok(())
}

#[tokio::test]
async fn a_model_without_requests_for_its_retention_scales_to_zero() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, aggregator, _pod) = idle_model(dir.path(), None).await?;
    // The idle sim serves no request: once the retention has passed since
    // the model was first seen, every variant goes to zero and says why.
    let decision = decision_where(aggregator.metrics, "the model at zero", |d| {
        d["desiredReplicas"] == 0
    })
    .await?;
    assert_eq!(decision["basis"], "scale_to_zero", "{decision}");
    assert_eq!(decision["data"], "fresh", "it had data and saw no request");
    va_where(&cluster, "zero in status", |va| {
        desired_in_status(va) == Some(0)
    })
    .await?;
    let event = va_event(&cluster, "DesiredReplicasDecreased", 1).await?;
    assert_eq!(event.note, "desired replicas 1 → 0 (scale_to_zero)");
    gauge_becomes(aggregator.metrics, Some(0.0)).await
}

#[tokio::test]
async fn an_hpas_min_replicas_is_the_floor_of_its_variants_decisions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hpa = json!({
        "metadata": {"name": CHAT},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": CHAT},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "wva_desired_replicas", "selector": {"matchLabels": {"variant_name": CHAT}}},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
        },
    });
    let (cluster, aggregator, _pod) = idle_model(dir.path(), Some(hpa)).await?;
    // Idle past its retention, the model would go to zero; its HPA cannot
    // go below one, so the decision stays there.
    let decision = decision_where(aggregator.metrics, "the idle model at its floor", |d| {
        d["basis"] == "scale_to_zero"
    })
    .await?;
    assert_eq!(decision["desiredReplicas"], 1, "{decision}");
    let events = va_events(&cluster);
    assert!(
        events
            .iter()
            .all(|e| e.reason != "DesiredReplicasDecreased"),
        "no decrease below the floor: {events:?}"
    );
    Ok(())
}

/// An aggregator with scale to zero after 2 s of idleness, and `CHAT`'s one
/// idle pod streaming to it; `hpa`, when given, scales `CHAT` from the start.
async fn idle_model(
    dir: &std::path::Path,
    hpa: Option<Value>,
) -> anyhow::Result<(Cluster, Aggregator, [Proc; 2])> {
    let cluster = Cluster::start(dir, &[NS]).await?;
    if let Some(hpa) = hpa {
        cluster
            .create(Resource::HorizontalPodAutoscalers, Some(NS), hpa)
            .await?;
    }
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("WVA_SCALE_TO_ZERO", "true")])
        .await?;
    cluster
        .apply_config_map(
            SCALE_TO_ZERO_CONFIG_MAP,
            &[("__defaults__", "retention_period: 2s\n")],
        )
        .await?;
    let aggregator = cluster.start_aggregator("wva-0", &[])?;
    cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let Workload { pod, .. } = workload(&cluster, "chat-a", 1).await?;
    let (sim, _addr, agent) = serve_pod(&cluster, &pod, &aggregator.url(), &[]).await?;
    Ok((cluster, aggregator, [sim, agent]))
}

#[tokio::test]
async fn flags_and_env_win_over_the_config_map_which_wins_over_defaults() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    let labelled = |name: &'static str, instance: &'static str| {
        let cluster = &cluster;
        async move {
            let va = cluster.variant_autoscaling(NS, name, name, MODEL).await?;
            let label = json!({"metadata": {"labels": {
                "wva.llmd.ai/controller-instance": instance}}});
            cluster
                .merge_patch(
                    Resource::VariantAutoscalings,
                    NS,
                    name_of(&va),
                    label,
                    false,
                )
                .await
        }
    };
    // Objects are synced in name order, so once the last managed one has a
    // status, an earlier unmanaged one would have had one too.
    labelled("a-green", "green").await?;
    labelled("b-blue", "blue").await?;
    labelled("c-green", "green").await?;
    labelled("d-blue", "blue").await?;
    let has_status = |name: &str| {
        cluster
            .api
            .get(Resource::VariantAutoscalings, Some(NS), name)
            .is_some_and(|va| !va["status"].is_null())
    };
    let written = |name: &'static str| {
        let has_status = &has_status;
        eventually(WITHIN, name, move || async move {
            Ok(has_status(name).then_some(()))
        })
    };

    // The ConfigMap sets the instance (over the default: manage everything).
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("CONTROLLER_INSTANCE", "blue")])
        .await?;
    let blue = cluster.start_aggregator("wva-0", &[])?;
    written("d-blue").await?;
    assert!(has_status("b-blue"));
    assert!(!has_status("a-green") && !has_status("c-green"));
    blue.proc.kill().await;

    // The environment wins over the ConfigMap.
    let mut command = cluster.aggregator_command("wva-1", free_addr(), free_addr(), &[]);
    command.env("CONTROLLER_INSTANCE", "green");
    let _green = Proc {
        child: command.spawn()?,
    };
    written("c-green").await?;
    assert!(has_status("a-green"));
    Ok(())
}

#[tokio::test]
async fn a_variant_annotated_for_pod_scraping_is_driven_by_its_services_ready_pods()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    // Two pod IPs on loopback, one port, as a Service's pods have.
    let (first, a) = start_sim_at("127.0.0.2:0".parse()?, MODEL, &SLOW_DECODING_SIM).await?;
    let b_addr = SocketAddr::new("127.0.0.3".parse()?, a.port());
    let (second, _) = start_sim_at(b_addr, MODEL, &[]).await?;
    let _sims = (first, second);
    let _request = load(a).await?;

    let aggregator = cluster.start_aggregator("wva-0", &[])?;
    let va = cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let port = a.port().to_string();
    let annotations = json!({
        "wva.llmd.ai/metrics-source": "pod-scraping",
        "wva.llmd.ai/metrics-service": "chat-metrics",
        "wva.llmd.ai/metrics-port": port,
    });
    annotate(&cluster, &va, annotations).await?;
    service_selecting(&cluster, "chat-metrics", CHAT, 8000).await?;
    let Workload { replica_set, pod } = workload(&cluster, "chat-a", 2).await?;
    let other = cluster.pod(&replica_set, "chat-b").await?;
    let unready = cluster.pod(&replica_set, "chat-c").await?;
    for (pod, ip, ready) in [
        (&pod, "127.0.0.2", true),
        (&other, "127.0.0.3", true),
        (&unready, "127.0.0.4", false),
    ] {
        running_at(&cluster, name_of(pod), ip, ready).await?;
    }

    // No agent runs: the Ready pods behind the Service are scraped directly.
    let decision = decision_where(aggregator.metrics, "inputs from both ready pods", |d| {
        input_pods(d) == ["chat-a", "chat-b"]
    })
    .await?;
    assert_eq!(decision["data"], "fresh", "{decision}");
    let busy = &decision["inputs"][0];
    assert!(
        busy["kvCacheUsage"].as_f64().unwrap_or_default() > 0.0,
        "the loaded sim's KV usage is seen: {decision}"
    );
    Ok(())
}

#[tokio::test]
async fn requests_queued_at_a_scraped_endpoint_picker_bring_a_model_back_from_zero()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("WVA_SCALE_TO_ZERO", "true")])
        .await?;
    // The picker's metrics, served at its own pod IP; it has no agent.
    let queue = std::sync::Arc::new(std::sync::Mutex::new(flow_control(MODEL, 0)));
    let epp = serve_metrics_at("127.0.0.5:0".parse()?, queue.clone()).await?;
    let aggregator = cluster.start_aggregator("wva-0", &["--poll-interval", "300ms"])?;
    cluster.deployment(NS, CHAT, 0, 0).await?;
    let va = cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let annotations = json!({
        "wva.llmd.ai/epp-service": "gateway-epp",
        "wva.llmd.ai/epp-metrics-port": epp.port().to_string(),
    });
    annotate(&cluster, &va, annotations).await?;
    service_selecting(&cluster, "gateway-epp", "gateway-epp", 9090).await?;
    let pod = json!({"metadata": {"name": "gateway-epp-0", "labels": {"app": "gateway-epp"}},
        "spec": {"containers": [{"name": "epp", "image": "epp"}]}});
    cluster.create(Resource::Pods, Some(NS), pod).await?;
    running_at(&cluster, "gateway-epp-0", "127.0.0.5", true).await?;

    decision_where(aggregator.metrics, "the idle model at zero", |d| {
        d["desiredReplicas"] == 0
    })
    .await?;
    *queue.lock().unwrap() = flow_control(MODEL, 3);
    let decision = decision_where(aggregator.metrics, "one replica for the queue", |d| {
        d["desiredReplicas"] == 1
    })
    .await?;
    assert_eq!(decision["basis"], "scale_from_zero", "{decision}");
    Ok(())
}
