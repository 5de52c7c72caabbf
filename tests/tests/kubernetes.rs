//! Kubernetes mode end to end: the real `wva-aggregator` against the
//! API-server double, fed by real `wva-agent`s scraping real `vllm-sim`s.
//! Each agent presents its pod's token, so every stream goes through the
//! aggregator's identity check.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wva_e2e::apiserver::{ChangeKind, Resource};
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

fn has_condition(va: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(va, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

/// Asserts one condition entirely.
fn assert_condition(va: &Value, type_: &str, want: (&str, &str, &str)) {
    let (status, reason, message) = want;
    assert_eq!(
        condition(va, type_),
        Some((status.into(), reason.into(), message.into())),
        "condition {type_} of {}",
        va["status"]
    );
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

/// A counter or gauge without labels, 0 when absent.
async fn scalar(metrics: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(metric(metrics, name).await?.first().map_or(0.0, |s| s.1))
}

/// `wva_agent_stream_refusals_total` by reason.
async fn refusals(metrics: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let series = metric(metrics, "wva_agent_stream_refusals_total").await?;
    Ok(series
        .into_iter()
        .map(|(mut labels, n)| (labels.remove("reason").unwrap_or_default(), n))
        .collect())
}

/// How many status writes `CHAT` has had.
fn status_writes(cluster: &Cluster) -> usize {
    let path = format!("/apis/llmd.ai/v1alpha1/namespaces/{NS}/variantautoscalings/{CHAT}/status");
    cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == path && r.status == 200)
        .count()
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
async fn a_variant_follows_its_deployment_through_creation_deletion_and_recreation()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    // GLOBAL_OPT_INTERVAL is an hour: nothing below may wait for it.
    let aggregator = cluster.start_aggregator("wva-0", &["--analysis-interval", "1h"])?;
    let metrics = aggregator.metrics;

    // a. The VariantAutoscaling comes first: its Deployment is reported missing.
    cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let va = va_where(&cluster, "the missing Deployment in status", |va| {
        condition(va, "Ready").is_some()
    })
    .await?;
    assert_eq!(
        cluster.leader().as_deref(),
        Some("wva-0"),
        "only a leader writes"
    );
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
    assert_eq!(desired_in_status(&va), None, "{}", va["status"]);
    va_event(&cluster, "DeploymentNotFound", 1).await?;
    assert_eq!(
        va_events(&cluster),
        [EventSummary {
            type_: "Warning".into(),
            reason: "DeploymentNotFound".into(),
            note: "Target deployment 'chat' not found".into(),
            count: 1,
        }]
    );
    assert_eq!(
        desired_gauge(metrics).await?,
        None,
        "nothing to publish yet"
    );
    assert!(decisions(metrics).await?.is_empty(), "nothing is analysed");

    // b. The Deployment appears, its pod not ready yet: the Deployment watch
    // resolves the target at once.
    let created = Instant::now();
    let Workload { pod, .. } = workload(&cluster, "chat-5d8f7-x2x9q", 0).await?;
    let va = va_where(&cluster, "the target to resolve", |va| {
        has_condition(va, "Ready", "True", "TargetReady")
    })
    .await?;
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "{:?}",
        created.elapsed()
    );
    assert_condition(
        &va,
        "TargetResolved",
        ("True", "TargetFound", "Deployment 'chat' found"),
    );
    assert_condition(
        &va,
        "Ready",
        (
            "True",
            "TargetReady",
            "monitoring and scaling deployment 'chat'",
        ),
    );
    // The pod's agent streams; once the pod is ready its metrics count.
    let (_sim, _, _agent) = serve_pod(&cluster, &pod, &aggregator.url(), &[]).await?;
    let decision = decision_where(metrics, "the pod's samples in the analysis", |d| {
        !input_pods(d).is_empty()
    })
    .await?;
    assert_eq!(
        input_pods(&decision),
        ["chat-5d8f7-x2x9q"],
        "the pod feeds its owning Deployment's variant, whatever its agent claims: {decision}"
    );
    cluster.set_ready_replicas(NS, CHAT, 1).await?;
    let va = va_where(&cluster, "fresh metrics and a decision", |va| {
        has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va).is_some()
    })
    .await?;
    let running = |va: &Value| {
        assert_condition(
            va,
            "MetricsAvailable",
            (
                "True",
                "MetricsFound",
                "all 1 ready replicas report fresh metrics",
            ),
        );
        assert_condition(
            va,
            "OptimizationReady",
            (
                "True",
                "OptimizationSucceeded",
                "desired 1 replicas (steady)",
            ),
        );
        assert_eq!(va["status"]["desiredOptimizedAlloc"]["numReplicas"], 1);
        assert_eq!(
            va["status"]["desiredOptimizedAlloc"]["accelerator"],
            ACCELERATOR
        );
        assert_eq!(va["status"]["currentAlloc"]["numReplicas"], 1);
    };
    running(&va);
    gauge_becomes(metrics, Some(1.0)).await?;
    va_event(&cluster, "TargetFound", 1).await?;
    let events = va_events(&cluster);
    assert!(
        events
            .iter()
            .all(|e| e.type_ == "Normal" || e.reason == "DeploymentNotFound"),
        "no warning while the target runs: {events:?}"
    );

    // Steady state: analyses go on (one per sample), status stays untouched.
    let writes = status_writes(&cluster);
    let resource_version = va["metadata"]["resourceVersion"].clone();
    let runs = scalar(metrics, "wva_analysis_runs_total").await?;
    eventually(WITHIN, "ten more analyses", || async move {
        Ok((scalar(metrics, "wva_analysis_runs_total").await? >= runs + 10.0).then_some(()))
    })
    .await?;

    // c. The Deployment is deleted: the decision is withdrawn, the object stays.
    cluster.delete(Resource::Deployments, NS, CHAT).await?;
    let va = va_where(&cluster, "the deleted Deployment in status", |va| {
        has_condition(va, "Ready", "False", "DeploymentNotFound")
    })
    .await?;
    assert_ne!(va["metadata"]["resourceVersion"], resource_version);
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
    assert_eq!(
        va["spec"]["scaleTargetRef"]["name"], CHAT,
        "the object is kept"
    );
    gauge_becomes(metrics, None).await?;
    assert!(decisions(metrics).await?.is_empty());
    // The analysis without the variant is out; once the controller has
    // written a later object it has synced `CHAT` against it too.
    cluster
        .variant_autoscaling(NS, "probe", "absent", MODEL)
        .await?;
    eventually(WITHIN, "the probe's status", || {
        let written = cluster
            .va(NS, "probe")
            .is_some_and(|va| condition(&va, "Ready").is_some());
        async move { Ok(written.then_some(())) }
    })
    .await?;
    assert_eq!(
        status_writes(&cluster),
        writes + 1,
        "unchanged analyses write nothing; the deletion writes once"
    );
    assert_eq!(
        cluster.va(NS, CHAT).as_ref(),
        Some(&va),
        "the status stays as written"
    );
    let missing = va_event(&cluster, "DeploymentNotFound", 2).await?;
    assert_eq!(missing.type_, "Warning");

    // d. The Deployment comes back (its pod never left): all by itself.
    cluster.deployment(NS, CHAT, 1, 1).await?;
    let va = va_where(&cluster, "the recreated Deployment in status", |va| {
        has_condition(va, "Ready", "True", "TargetReady")
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va).is_some()
    })
    .await?;
    running(&va);
    gauge_becomes(metrics, Some(1.0)).await?;
    va_event(&cluster, "TargetFound", 2).await?;
    Ok(())
}

#[tokio::test]
async fn streams_with_a_forged_or_borrowed_identity_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    let aggregator = cluster.start_aggregator("wva-0", &[])?;
    let (metrics, url) = (aggregator.metrics, aggregator.url());
    cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let Workload { replica_set, pod } = workload(&cluster, "chat-a", 1).await?;
    let (_sim, sim, _agent) = serve_pod(&cluster, &pod, &url, &[]).await?;
    // (Had it connected before the aggregator's Pod watch listed its pod, it
    // was refused as unknown once; only refusals from here on count.)
    let before = eventually(WITHIN, "the honest stream", || async move {
        let connected = scalar(metrics, "wva_connected_agents").await?;
        Ok(if connected == 1.0 {
            Some(refusals(metrics).await?)
        } else {
            None
        })
    })
    .await?;

    // Three more pods of the same Deployment, none of them honest.
    let pod_b = cluster.pod(&replica_set, "chat-b").await?;
    let pod_c = cluster.pod(&replica_set, "chat-c").await?;
    let pod_d = cluster.pod(&replica_set, "chat-d").await?;
    let forged = cluster.token_file("forged.token", "eyJhbGciOiJSUzI1NiJ9.forged.sig")?;
    let b_token = cluster.pod_token(&pod_b)?;
    let _forger = PodAgent::of(&pod_d, Some(&forged), sim, &url, MODEL).start()?;
    // chat-b's genuine token, but the stream claims to be chat-c.
    let _impostor = PodAgent {
        token: Some(&b_token),
        ..PodAgent::of(&pod_c, None, sim, &url, MODEL)
    }
    .start()?;
    let _anonymous = PodAgent::of(&pod_b, None, sim, &url, MODEL).start()?;

    let before = &before;
    let refused = eventually(WITHIN, "three refusals", || async move {
        let now = refusals(metrics).await?;
        let new: Vec<String> = now
            .into_iter()
            .filter(|(reason, n)| *n > before.get(reason).copied().unwrap_or(0.0))
            .map(|(reason, _)| reason)
            .collect();
        Ok((new.len() >= 3).then_some(new))
    })
    .await?;
    assert_eq!(refused, ["no_token", "pod_mismatch", "token_invalid"]);
    assert_eq!(scalar(metrics, "wva_connected_agents").await?, 1.0);
    let decision =
        decision_where(metrics, "the honest pod's data", |d| d["data"] == "fresh").await?;
    assert_eq!(input_pods(&decision), ["chat-a"], "{decision}");
    assert_eq!(decision["currentReplicas"], 1, "{decision}");
    let va = va_where(&cluster, "fresh metrics in status", |va| {
        has_condition(va, "MetricsAvailable", "True", "MetricsFound")
    })
    .await?;
    assert_condition(
        &va,
        "MetricsAvailable",
        (
            "True",
            "MetricsFound",
            "all 1 ready replicas report fresh metrics",
        ),
    );
    Ok(())
}

#[tokio::test]
async fn saturation_config_applies_live_and_a_static_change_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("GLOBAL_OPT_INTERVAL", "30s")])
        .await?;
    cluster
        .apply_config_map(
            SATURATION_CONFIG_MAP,
            &[("default", "kvCacheThreshold: 0.8\nkvSpareTrigger: 0.1\n")],
        )
        .await?;
    let aggregator = cluster.start_aggregator("wva-0", &[])?;
    let metrics = aggregator.metrics;
    cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let Workload { pod, .. } = workload(&cluster, "chat-a", 1).await?;
    let (_sim, sim, _agent) =
        serve_pod(&cluster, &pod, &aggregator.url(), &SLOW_DECODING_SIM).await?;
    let _request = load(sim).await?;

    // ~40% KV usage is comfortably below 0.8: one replica is enough.
    let decision = decision_where(metrics, "the loaded pod steady at one replica", |d| {
        d["inputs"][0]["kvCacheUsage"].as_f64().unwrap_or(0.0) > 0.3
    })
    .await?;
    assert_eq!(
        (&decision["desiredReplicas"], &decision["basis"]),
        (&Value::from(1), &Value::from("steady")),
        "{decision}"
    );
    va_where(&cluster, "one desired replica in status", |va| {
        desired_in_status(va) == Some(1)
    })
    .await?;

    // The same load saturates a replica at a 0.3 threshold.
    cluster
        .apply_config_map(
            SATURATION_CONFIG_MAP,
            &[("default", "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\n")],
        )
        .await?;
    decision_where(metrics, "a scale-up under the new threshold", |d| {
        d["desiredReplicas"] == 2
    })
    .await?;
    va_where(&cluster, "two desired replicas in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    gauge_becomes(metrics, Some(2.0)).await?;
    let up = va_event(&cluster, "DesiredReplicasIncreased", 1).await?;
    assert!(up.note.starts_with("desired replicas 1 → 2 ("), "{up:?}");
    let scaled = metric(metrics, "wva_replica_scaling_total").await?;
    let scaled: Vec<(&str, &str, f64)> = scaled
        .iter()
        .map(|(l, v)| (l["direction"].as_str(), l["reason"].as_str(), *v))
        .collect();
    assert_eq!(scaled, [("up", "saturation", 1.0)]);

    // A static parameter cannot change while running.
    cluster
        .apply_config_map(MAIN_CONFIG_MAP, &[("LEADER_ELECTION_ID", "another-lease")])
        .await?;
    let rejected = eventually(WITHIN, "the rejection event", || {
        let events = cluster.events_about(SYSTEM_NAMESPACE, "ConfigMap", MAIN_CONFIG_MAP);
        async move {
            Ok(events
                .into_iter()
                .find(|e| e.reason == "ImmutableConfigChangeRejected"))
        }
    })
    .await?;
    assert_eq!(rejected.type_, "Warning");
    assert!(
        rejected.note.contains("LEADER_ELECTION_ID"),
        "{}",
        rejected.note
    );
    // Still running, still leading through the original Lease.
    let mut proc = aggregator.proc;
    assert!(proc.child.try_wait()?.is_none(), "the aggregator exited");
    assert_eq!(http_get(metrics, "/healthz").await?.0, 200);
    let renewed = |cluster: &Cluster| {
        cluster
            .api
            .get(Resource::Leases, Some(SYSTEM_NAMESPACE), LEASE)
            .map(|l| l["spec"]["renewTime"].clone())
    };
    let before = renewed(&cluster);
    eventually(WITHIN, "the original Lease to be renewed", || {
        let now = renewed(&cluster);
        let before = before.clone();
        async move { Ok((now != before).then_some(())) }
    })
    .await?;
    assert_eq!(cluster.leader().as_deref(), Some("wva-0"));
    assert!(
        cluster
            .api
            .get(Resource::Leases, Some(SYSTEM_NAMESPACE), "another-lease")
            .is_none(),
        "the new Lease name applies only after a restart"
    );
    Ok(())
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
async fn a_follower_takes_over_from_a_killed_leader_and_keeps_the_decision() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &[NS]).await?;
    // The sim's steady load saturates a replica: the decision (2) differs
    // from the replica count (1), so a restart from scratch would show.
    cluster
        .apply_config_map(
            SATURATION_CONFIG_MAP,
            &[("default", "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\n")],
        )
        .await?;
    let first = cluster.start_aggregator("wva-0", &[])?;
    eventually(WITHIN, "wva-0 to lead", || {
        let leader = cluster.leader();
        async move { Ok((leader.as_deref() == Some("wva-0")).then_some(())) }
    })
    .await?;
    let second = cluster.start_aggregator("wva-1", &[])?;
    cluster.variant_autoscaling(NS, CHAT, CHAT, MODEL).await?;
    let Workload { pod, .. } = workload(&cluster, "chat-a", 1).await?;
    let both = format!("{},{}", first.url(), second.url());
    let (_sim, sim, _agent) = serve_pod(&cluster, &pod, &both, &SLOW_DECODING_SIM).await?;
    let _request = load(sim).await?;

    // Both analyse the same data; only the leader publishes and writes.
    va_where(&cluster, "the leader's decision in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    gauge_becomes(first.metrics, Some(2.0)).await?;
    let followed = decision_where(second.metrics, "the follower's own decision", |d| {
        d["desiredReplicas"] == 2 && input_pods(d) == ["chat-a"]
    })
    .await?;
    assert_eq!(followed["data"], "fresh", "{followed}");
    assert_eq!(
        desired_gauge(second.metrics).await?,
        None,
        "a follower publishes no decision"
    );

    // Kill the leader without a chance to release the Lease.
    let mut changes = cluster.api.subscribe();
    let killed = Instant::now();
    first.proc.kill().await;
    let takeover = Duration::from_secs(3) + Duration::from_secs(3);
    eventually(takeover, "wva-1 to take the Lease over", || {
        let leader = cluster.leader();
        async move { Ok((leader.as_deref() == Some("wva-1")).then_some(())) }
    })
    .await?;
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the Lease was taken before it expired: {took:?}"
    );
    let seen = RefCell::new(Vec::new());
    let seen_ref = &seen;
    eventually(WITHIN, "the new leader's series", || async move {
        let value = desired_gauge(second.metrics).await?;
        seen_ref.borrow_mut().extend(value);
        Ok(value.map(|_| ()))
    })
    .await?;
    assert_eq!(
        seen.into_inner(),
        [2.0],
        "the new leader publishes the held decision"
    );
    let decision = decision_where(second.metrics, "the survivor's decision", |_| true).await?;
    assert_eq!(
        (&decision["data"], input_pods(&decision)),
        (&Value::from("fresh"), vec!["chat-a"]),
        "the agent's stream to the survivor never stopped: {decision}"
    );

    let va = cluster.va(NS, CHAT).expect("the VariantAutoscaling");
    assert_eq!(desired_in_status(&va), Some(2), "{}", va["status"]);
    assert!(
        has_condition(&va, "Ready", "True", "TargetReady"),
        "{}",
        va["status"]
    );
    let lease = cluster
        .api
        .get(Resource::Leases, Some(SYSTEM_NAMESPACE), LEASE)
        .expect("the Lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    // Every status written since the kill kept the decision.
    while let Ok(change) = changes.try_recv() {
        if change.resource == Resource::VariantAutoscalings && change.kind == ChangeKind::Modified {
            assert_eq!(
                desired_in_status(&change.object),
                Some(2),
                "{}",
                change.object["status"]
            );
        }
    }
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
