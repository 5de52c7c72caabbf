//! Queue-depth scaling against a real Redis and Prometheus Redis exporter:
//! the exporter follows a list's length as jobs are pushed and taken, and
//! a worker workload's agents forward that depth to the aggregator, which
//! sizes the workload as the HPA would and answers KEDA with it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use wva_e2e::redis::{KEY_SIZE, Redis, RedisExporter};
use wva_e2e::*;
use wva_proto::keda::external_scaler_client::ExternalScalerClient;
use wva_proto::keda::{GetMetricsRequest, ScaledObjectRef};

const QUEUE: &str = "jobs";
/// Upper bound for the exporter to show a change; it reads Redis at each scrape.
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exporter_follows_the_queue_depth() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let queue = redis.client();
    let exporter = RedisExporter::start(&redis, QUEUE).await?;

    assert_eq!(queue.push(QUEUE, 37).await?, 37);
    exported_depth(&exporter, 37.0).await?;

    let taken = queue.pop(QUEUE, 30).await?;
    assert_eq!(taken.len(), 30);
    assert_eq!(taken[0], "jobs-0", "a queue hands out its oldest job first");
    assert_eq!(queue.llen(QUEUE).await?, 7);
    exported_depth(&exporter, 7.0).await?;
    Ok(())
}

/// Awaits the exporter's [`KEY_SIZE`] of the queue reading `depth`.
async fn exported_depth(exporter: &RedisExporter, depth: f64) -> anyhow::Result<()> {
    eventually(
        WITHIN,
        &format!("{KEY_SIZE} of {QUEUE} to be {depth}"),
        || async {
            match exporter.key_size(QUEUE).await? {
                size if size == depth => Ok(Some(())),
                size => bail!("{KEY_SIZE} is {size}"),
            }
        },
    )
    .await
}

/// The worker's scaling target as docs/workloads.md declares it: 5 jobs
/// per worker, every worker reading the same queue.
const WORKER_HPA: &str = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: worker
  namespace: jobs
  annotations:
    wva.llmd.ai/signal: queue_depth
    wva.llmd.ai/target-per-pod: "5"
    wva.llmd.ai/signal-across-pods: max
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: worker}
  minReplicas: 1
  maxReplicas: 10
"#;

/// Time for a queue change to reach a decision: the exporter's next read,
/// the agent's next scrape (1 s) and an analysis.
const DECIDED: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_worker_workload_follows_its_queue_depth() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let queue = redis.client();
    let exporter = RedisExporter::start(&redis, QUEUE).await?;
    let dir = tempfile::tempdir()?;
    let variants = dir.path().join("variants.yaml");
    std::fs::write(&variants, WORKER_HPA)?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let aggregator = format!("http://{grpc}");
    // Three workers, each with an agent reading the shared exporter.
    let signal = format!("--signal=queue_depth=max({KEY_SIZE}{{db=\"db0\",key=\"{QUEUE}\"}})");
    let _agents = ["worker-7c9f-a", "worker-7c9f-b", "worker-7c9f-c"]
        .into_iter()
        .map(|pod| {
            start_agent(&AgentSpec {
                target: exporter.addr,
                aggregator: &aggregator,
                pod,
                namespace: "jobs",
                variant: "worker",
                model: "none",
                interval: "",
                extra: &["--role", "generic", &signal],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // An empty queue: the minimum, from the signal.
    let d = worker_where(metrics, "an empty queue", |d| d["workload"]["total"] == 0.0).await?;
    assert_eq!(
        (d["desiredReplicas"].as_u64(), d["basis"].as_str()),
        (Some(1), Some("signal"))
    );
    assert_eq!(d["currentReplicas"], 3, "the reporting workers");

    // 37 jobs: ceil(37 / 5) = 8 workers, the depth counted once, not once
    // per reader.
    let pushed_at = unix_ms();
    queue.push(QUEUE, 37).await?;
    let d = worker_where(metrics, "37 queued", |d| d["workload"]["total"] == 37.0).await?;
    // Reported, not asserted: docs/benchmarks.md has the figures.
    let latency = d["decidedAt"].as_i64().unwrap_or_default() - pushed_at;
    eprintln!("decided {latency} ms after the jobs were queued");
    assert_eq!(d["desiredReplicas"], 8);
    assert_eq!(d["workload"]["reporting"], 3);
    let labels = [
        ("namespace", "jobs"),
        ("workload", "worker"),
        ("signal", "queue_depth"),
    ];
    assert_eq!(
        gauge(metrics, "wva_workload_desired_replicas", &labels).await?,
        Some(8.0)
    );
    assert_eq!(
        gauge(metrics, "wva_workload_signal", &labels).await?,
        Some(37.0)
    );
    // KEDA's view of the same decision.
    let mut keda = ExternalScalerClient::connect(aggregator.clone()).await?;
    let worker = ScaledObjectRef {
        name: "worker".into(),
        namespace: "jobs".into(),
        scaler_metadata: [("workload".to_string(), "worker".to_string())].into(),
    };
    let spec = keda.get_metric_spec(worker.clone()).await?.into_inner();
    let keda_desired = keda
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(worker.clone()),
            metric_name: spec.metric_specs[0].metric_name.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(keda_desired.metric_values[0].metric_value_float, 8.0);
    assert!(keda.is_active(worker).await?.into_inner().result);

    // Drained to 16 over 3 workers: 1.07 times the target, within the HPA's
    // tolerance, so 3 stay though ceil(16 / 5) is 4. Then 3 left: 1.
    queue.pop(QUEUE, 21).await?;
    let d = worker_where(metrics, "16 queued", |d| d["workload"]["total"] == 16.0).await?;
    assert_eq!(d["desiredReplicas"], 3);
    queue.pop(QUEUE, 13).await?;
    let d = worker_where(metrics, "3 queued", |d| d["workload"]["total"] == 3.0).await?;
    assert_eq!(d["desiredReplicas"], 1);
    queue.push(QUEUE, 50).await?;
    let d = worker_where(metrics, "53 queued", |d| d["workload"]["total"] == 53.0).await?;
    assert_eq!(
        d["desiredReplicas"], 10,
        "ceil(53 / 5) = 11, bounded by maxReplicas"
    );
    assert_eq!(d["limit"], "at_max_replicas");

    // Redis gone: the exporter still answers, without the key's series. The
    // depth is unknown, not zero: the safety net holds 10.
    redis.proc.signal("KILL").await?;
    let d = worker_where(metrics, "the safety net", |d| d["basis"] == "safety_net").await?;
    assert_eq!(d["desiredReplicas"], 10);
    assert_eq!(d["workload"]["total"], Value::Null);
    assert_eq!(gauge(metrics, "wva_workload_signal", &labels).await?, None);
    assert_eq!(
        gauge(metrics, "wva_workload_desired_replicas", &labels).await?,
        Some(10.0)
    );
    Ok(())
}

/// The worker's first decision that `pred` accepts.
async fn worker_where(
    metrics: SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    decision_where(
        metrics,
        DECIDED,
        &format!("the worker's decision at {what}"),
        |d| d["variant"]["name"] == "worker" && pred(d),
    )
    .await
}

/// The value of the series of `name` with exactly `labels`, if served.
async fn gauge(
    metrics: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<Option<f64>> {
    Ok(metric(metrics, name).await?.into_iter().find_map(|(l, v)| {
        let same = l.len() == labels.len()
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want));
        same.then_some(v)
    }))
}
