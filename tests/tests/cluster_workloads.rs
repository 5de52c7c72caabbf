//! A worker Deployment scaled on a Redis queue's depth on the real control
//! plane, as docs/workloads.md sets it up: Redis and its exporter from
//! Debian's packages run by the local node, and the webhook injecting
//! generic agents that forward the depth. Then either consumer:
//!
//! - KEDA, with no Prometheus: a ScaledObject whose annotations declare the
//!   scaling target (KEDA carries them to its HPA, where wva finds them)
//!   and whose external-push trigger applies wva's answer;
//! - the HPA, annotated itself, reading wva's workload gauge through
//!   Prometheus and prometheus-adapter with the sample values.
//!
//! The assertions are on the Deployment's replicas and on what the external
//! metrics API serves.

use std::time::Duration;

use serde_json::{Value, json};
use wva_e2e::consumers::{Monitoring, WORKLOAD_DECISION};
use wva_e2e::controlplane::ControlPlane;
use wva_e2e::install::*;
use wva_e2e::keda::{Keda, authenticate_to_wva, scaled_object_following};
use wva_e2e::node::LocalNode;
use wva_e2e::redis::RedisClient;
use wva_e2e::*;

const WORKER: &str = "worker";
const QUEUE: &str = "jobs";
/// Time for a queue change to reach the Deployment: the exporter's and the
/// agent's next reads, an analysis, KEDA's push or its HPA's sync (15 s),
/// with room for a busy machine.
const THROUGH_KEDA: Duration = Duration::from_secs(120);
/// The same through Prometheus: its scrape interval (15 s) comes on top.
const THROUGH_THE_HPA: Duration = Duration::from_secs(150);
/// The scaling target's annotations, as docs/workloads.md writes them.
fn target_annotations() -> Value {
    json!({
        "wva.llmd.ai/signal": "queue_depth",
        "wva.llmd.ai/target-per-pod": "5",
        "wva.llmd.ai/signal-across-pods": "max",
    })
}

/// Redis and its Service.
fn redis() -> [Value; 2] {
    [
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "redis", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "redis"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "redis"},
                        "annotations": {"wva.llmd.ai/inject-agent": "false"},
                    },
                    "spec": {"containers": [{
                        "name": "redis",
                        "image": "redis:7.0",
                        // As Redis's own image runs it: reachable from other pods.
                        "args": ["--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                        "ports": [{"containerPort": 6379}],
                    }]},
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "redis", "namespace": NS},
            "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]},
        }),
    ]
}

/// The workers: each pod has the exporter beside it (standing in for the
/// worker process, which the local node has no image for) and, injected,
/// an agent that forwards the queue's depth from it.
fn workers() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": WORKER, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": WORKER}},
            "template": {
                "metadata": {
                    "labels": {"app": WORKER},
                    "annotations": {
                        "wva.llmd.ai/agent-role": "generic",
                        "wva.llmd.ai/agent-target-port": "9121",
                        "wva.llmd.ai/agent-signals": format!("queue_depth=max(redis_key_size{{key=\"{QUEUE}\"}})"),
                    },
                },
                "spec": {"containers": [{
                    "name": "exporter",
                    "image": "oliver006/redis_exporter:v1.45.0",
                    "args": [
                        format!("--redis.addr=redis://redis.{NS}.svc:6379"),
                        "--web.listen-address=0.0.0.0:9121",
                        format!("--check-single-keys={QUEUE}"),
                    ],
                    "ports": [{"containerPort": 9121}],
                }]},
            },
        },
    })
}

/// The ScaledObject: its annotations declare the scaling target, its
/// trigger follows wva's answer for the workload.
fn scaled_object() -> Value {
    let mut object = scaled_object_following(NS, WORKER, 1, ("workload", WORKER));
    object["metadata"]["annotations"] = target_annotations();
    object
}

/// Awaits the workers at `want` replicas, within `within`.
async fn workers_at(client: &kube::Client, within: Duration, want: i32) -> anyhow::Result<()> {
    let what = format!("the workers at {want} replicas");
    eventually(within, &what, || async {
        Ok(spec_replicas(client, NS, WORKER)
            .await?
            .filter(|r| *r == want))
    })
    .await
    .map(|_| ())
}

/// Redis in a pod of `NS`, once it answers.
async fn redis_on(
    plane: &ControlPlane,
    client: &kube::Client,
    node: &LocalNode,
) -> anyhow::Result<RedisClient> {
    for object in redis() {
        plane.create(&object).await?;
    }
    let redis_pod = controller_pods(client, "redis", 1).await?.remove(0);
    let redis_name = redis_pod.metadata.name.unwrap_or_default();
    let redis_ip = eventually(WITHIN, "Redis's pod address", || {
        let ip = node.pod_ip(NS, &redis_name);
        async move { Ok(ip) }
    })
    .await?;
    let queue = RedisClient {
        addr: (redis_ip, 6379).into(),
    };
    let answered = eventually(WITHIN, "Redis to answer", || async {
        Ok(queue.llen(QUEUE).await.ok())
    })
    .await;
    if let Err(e) = answered {
        anyhow::bail!("{e:#}\nredis:\n{}", node.log(NS, &redis_name, "redis"));
    }
    Ok(queue)
}

/// The annotated HPA: wva's workload decision as its replica count.
fn hpa() -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": WORKER, "namespace": NS, "annotations": target_annotations()},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER},
            "minReplicas": 1,
            "maxReplicas": 6,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "wva_workload_desired_replicas", "selector": {"matchLabels": {"workload": WORKER}}},
                "target": {"type": "AverageValue", "averageValue": "1"},
            }}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
    })
}

#[tokio::test]
async fn the_hpa_scales_a_worker_deployment_on_its_queue_depth_through_wva_and_the_adapter()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let monitoring = Monitoring::start(&plane).await?;
    let queue = redis_on(&plane, &client, &node).await?;
    plane.create(&workers()).await?;
    plane.create(&hpa()).await?;

    // The adapter lists the series when it starts: the decision first.
    let served = monitoring
        .serve(&plane, WORKLOAD_DECISION, NS, WORKER)
        .await?;
    assert_eq!(served["items"][0]["value"], "1", "an empty queue: {served}");

    queue.push(QUEUE, 23).await?;
    if let Err(e) = workers_at(&client, THROUGH_THE_HPA, 5).await {
        let decisions = decisions(replicas[0].metrics).await?;
        shown(&plane, &["describe", "hpa", WORKER, "-n", NS]).await?;
        anyhow::bail!(
            "{e:#}\nwva's decisions: {}",
            serde_json::to_string(&decisions)?
        );
    }
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/wva_workload_desired_replicas?labelSelector=workload%3D{WORKER}"
    );
    let served: Value = serde_json::from_str(&kubectl(&plane, &["get", "--raw", &path]).await?)?;
    assert_eq!(served["items"][0]["value"], "5", "{served}");

    queue.pop(QUEUE, 20).await?;
    workers_at(&client, THROUGH_THE_HPA, 1).await
}

#[tokio::test]
async fn keda_scales_a_worker_deployment_on_its_queue_depth_through_wva() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let keda = Keda::install(&plane).await?;
    authenticate_to_wva(&plane, NS).await?;
    let queue = redis_on(&plane, &client, &node).await?;
    plane.create(&workers()).await?;
    plane.create(&scaled_object()).await?;

    // 23 jobs: ceil(23 / 5) = 5 workers.
    queue.push(QUEUE, 23).await?;
    let through_keda = async |want: i32| -> anyhow::Result<()> {
        let Err(e) = workers_at(&client, THROUGH_KEDA, want).await else {
            return Ok(());
        };
        shown(
            &plane,
            &["get", "scaledobject,hpa,pods", "-n", NS, "-o", "yaml"],
        )
        .await?;
        let wva = node.log(SYSTEM, &replicas[0].pod, "aggregator");
        anyhow::bail!("{e:#}\n{}\n== wva\n{wva}", keda.logs(&client).await?)
    };
    through_keda(5).await?;
    shown(&plane, &["get", "scaledobject,hpa,pods", "-n", NS]).await?;

    // The metric is served where the HPA reads it: KEDA's external metrics
    // API, which asks wva's scaler.
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/s0-wva-desired-replicas?labelSelector=scaledobject.keda.sh%2Fname%3D{WORKER}"
    );
    let served: Value = serde_json::from_str(&kubectl(&plane, &["get", "--raw", &path]).await?)?;
    assert_eq!(served["items"][0]["value"], "5", "{served}");
    // And by wva itself, on its own gauge: every worker reads the same queue.
    let metrics = replicas[0].metrics;
    let decision = decision_where(metrics, THROUGH_KEDA, "5 workers reporting", |d| {
        d["variant"]["name"] == WORKER && d["workload"]["reporting"] == 5
    })
    .await?;
    assert_eq!(decision["workload"]["total"], 23.0, "{decision}");
    assert_eq!(
        decision["desiredReplicas"], 5,
        "23 / 25 is within the tolerance"
    );
    let gauge = metric(metrics, "wva_workload_desired_replicas").await?;
    let worker_gauge = gauge
        .iter()
        .find(|(labels, _)| labels.get("workload").map(String::as_str) == Some(WORKER));
    assert_eq!(worker_gauge.map(|(_, v)| *v), Some(5.0), "{gauge:?}");

    // Drained to 3 jobs: one worker.
    queue.pop(QUEUE, 20).await?;
    through_keda(1).await?;
    Ok(())
}
