//! The benchmark "From a load step to new replicas" of docs/benchmarks.md:
//! the time from a load step on the samples of `examples/` to the
//! Deployment's `spec.replicas` raised, through each real consumer of wva's
//! decisions. A benchmark, not a test: `cargo test` skips it, and
//! `scripts/bench-consumers` runs every path side by side in one run, each
//! on a control plane of its own (prometheus-adapter and KEDA both serve
//! `external.metrics.k8s.io`).
//!
//! A step: with the model settled at one replica per variant, wait a random
//! phase, then hold a request on each variant's replica (which saturates
//! it), and time wva's decision for the L4 variant rising and the L4
//! Deployment's `spec.replicas` following; release the requests and let
//! the model settle again.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use tokio::time::Instant;
use wva_e2e::consumers::{Monitoring, PodMonitor};
use wva_e2e::controlplane::ControlPlane;
use wva_e2e::install::*;
use wva_e2e::keda::{Keda, authenticate_to_wva, scaled_object};
use wva_e2e::node::LocalNode;
use wva_e2e::samples::{self, H100, L4, SAMPLES, hold, sample_sim, samples};
use wva_e2e::*;

/// Steps per path.
const STEPS: usize = 5;

/// kube-controller-manager's default HPA sync period.
const HPA_SYNC: Duration = Duration::from_secs(15);

/// Longest a step, or settling after one, may take on the slowest path.
const STEP_WITHIN: Duration = Duration::from_secs(300);

/// The chart's defaults: the test suite's shorter analysis and lease
/// intervals ([`TEST_VALUES`]) undone.
const CHART_DEFAULTS: &str = "extraArgs=null";

/// Scale-downs at once (the samples' HPAs hold none either), so that the
/// model settles between steps; scale-ups are what is measured.
const SETTLE_AT_ONCE: &str = "scaleDownStabilizationSeconds: 0\n";

#[tokio::test]
#[ignore = "a benchmark: scripts/bench-consumers"]
async fn agent_to_prometheus_to_adapter_to_hpa() -> anyhow::Result<()> {
    let path = "(a) agent → aggregator → Prometheus → adapter → HPA";
    agents_through_the_adapter(path, &[]).await
}

/// Path (a) with the ServiceMonitor's interval at 5 s instead of the
/// chart's 15 s.
#[tokio::test]
#[ignore = "a benchmark: scripts/bench-consumers"]
async fn agent_to_prometheus_every_5s_to_adapter_to_hpa() -> anyhow::Result<()> {
    let path = "(a5) as (a), Prometheus scraping the aggregator every 5 s";
    agents_through_the_adapter(path, &["serviceMonitor.interval=5s"]).await
}

async fn agents_through_the_adapter(path: &str, monitor: &[&str]) -> anyhow::Result<()> {
    let wva = wva_on(ControlPlane::start().await?, 1, &[CHART_DEFAULTS], vec![]).await?;
    saturating_on_a_held_request(&wva.client, SETTLE_AT_ONCE).await?;
    let monitoring = Monitoring::start_with(&wva.plane, monitor, None).await?;
    let gpus = samples::deploy(&wva.plane, true).await?;
    through_the_adapter(&wva.plane, &monitoring).await?;
    steps(
        path,
        &wva,
        &gpus,
        Some(&monitoring),
        Duration::from_secs(30),
    )
    .await
}

#[tokio::test]
#[ignore = "a benchmark: scripts/bench-consumers"]
async fn agent_to_keda() -> anyhow::Result<()> {
    let wva = wva_on(ControlPlane::start().await?, 1, &[CHART_DEFAULTS], vec![]).await?;
    saturating_on_a_held_request(&wva.client, SETTLE_AT_ONCE).await?;
    let _keda = Keda::install(&wva.plane).await?;
    let gpus = samples::deploy(&wva.plane, true).await?;
    authenticate_to_wva(&wva.plane, SAMPLES).await?;
    for variant in [L4, H100] {
        wva.plane
            .create(&scaled_object(SAMPLES, variant, 1))
            .await?;
    }
    let path = "(b) agent → aggregator → KEDA (external-push) → HPA";
    steps(path, &wva, &gpus, None, Duration::from_secs(30)).await
}

/// WVA's own shape: no agent; Prometheus scrapes vLLM and the aggregator
/// every 30 s (the seed's ServiceMonitor interval), and the aggregator
/// reads vLLM from Prometheus once a minute (GLOBAL_OPT_INTERVAL 60 s).
#[tokio::test]
#[ignore = "a benchmark: scripts/bench-consumers"]
async fn prometheus_source_to_prometheus_to_adapter_to_hpa() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let every_30s = "serviceMonitor.interval=30s";
    let vllm = PodMonitor {
        namespace: SAMPLES.into(),
        port: "http".into(),
        interval: "30s".into(),
    };
    let monitoring = Monitoring::start_with(&plane, &[every_30s], Some(vllm)).await?;
    let ca: Secret = serde_json::from_value(json!({
        "metadata": {"name": "prometheus-ca"},
        "stringData": {"ca.crt": std::fs::read_to_string(&monitoring.ca_file)?},
    }))?;
    let url = format!(
        "config.PROMETHEUS_BASE_URL=https://{}:{}",
        monitoring.server_name,
        monitoring.prometheus.addr.port()
    );
    let values = [
        CHART_DEFAULTS,
        &url,
        "config.WVA_METRICS_SOURCE=prometheus",
        "config.WVA_POLL_INTERVAL=60s",
        "config.GLOBAL_OPT_INTERVAL=60s",
        "extraEnv[0].name=PROMETHEUS_CA_CERT_PATH",
        "extraEnv[0].value=/etc/wva/prometheus/ca.crt",
        "extraVolumes[0].name=prometheus-ca",
        "extraVolumes[0].secret.secretName=prometheus-ca",
        "extraVolumeMounts[0].name=prometheus-ca",
        "extraVolumeMounts[0].mountPath=/etc/wva/prometheus",
    ];
    let wva = wva_on(plane, 1, &values, vec![ca]).await?;
    saturating_on_a_held_request(&wva.client, SETTLE_AT_ONCE).await?;
    let gpus = samples::deploy(&wva.plane, false).await?;
    through_the_adapter(&wva.plane, &monitoring).await?;
    let path = "(c) no agent: vLLM → Prometheus → aggregator → Prometheus → adapter → HPA";
    steps(
        path,
        &wva,
        &gpus,
        Some(&monitoring),
        Duration::from_secs(60),
    )
    .await
}

/// prometheus-adapter serving the decisions, and the sample HPAs reading
/// them.
async fn through_the_adapter(plane: &ControlPlane, monitoring: &Monitoring) -> anyhow::Result<()> {
    monitoring.serve_decision(plane, SAMPLES, L4).await?;
    for object in samples("examples/hpa.yaml")? {
        plane.create(&object).await?;
    }
    Ok(())
}

/// Creates the L4 HPA anew after a random wait of up to its sync period.
/// An HPA syncs when created and every 15 s from then, as Prometheus
/// scrapes every interval from its own start: on a cluster the one follows
/// the other by a fixed offset, which this makes as random as the step's
/// phase (a real HPA's creation has nothing to do with a scrape).
async fn l4_hpa_at_a_random_phase(wva: &Wva) -> anyhow::Result<()> {
    let hpa = samples("examples/hpa.yaml")?
        .into_iter()
        .find(|o| o["metadata"]["name"] == L4)
        .context("the L4 HPA in examples/hpa.yaml")?;
    kubectl(&wva.plane, &["delete", "hpa", L4, "-n", SAMPLES, "--wait"]).await?;
    tokio::time::sleep(HPA_SYNC.mul_f64(random_fraction())).await;
    wva.plane.create(&hpa).await?;
    Ok(())
}

/// Runs [`STEPS`] steps, each after a random phase of up to `phases`, and
/// prints when each stage saw the step: wva's decision, the decision in
/// Prometheus (on the paths through it), and the Deployment; then each
/// stage's median and worst.
async fn steps(
    path: &str,
    wva: &Wva,
    gpus: &LocalNode,
    monitoring: Option<&Monitoring>,
    phases: Duration,
) -> anyhow::Result<()> {
    let metrics = wva.replicas[0].metrics;
    let mut stages: [(&str, Vec<Duration>); 3] = [
        ("decision", Vec::new()),
        ("in Prometheus", Vec::new()),
        ("spec.replicas", Vec::new()),
    ];
    for step in 1..=STEPS {
        settled(wva, metrics).await?;
        if monitoring.is_some() {
            l4_hpa_at_a_random_phase(wva).await?;
        }
        let sims = [
            sample_sim(&wva.client, gpus, L4).await?,
            sample_sim(&wva.client, gpus, H100).await?,
        ];
        tokio::time::sleep(phases.mul_f64(random_fraction())).await;
        let start = Instant::now();
        let held = (hold(sims[0]).await?, hold(sims[1]).await?);
        let raised = |value: Option<f64>| value.filter(|v| *v > 1.0).map(|_| start.elapsed());
        let timed = tokio::try_join!(
            eventually(STEP_WITHIN, "wva to raise the L4 decision", || async {
                Ok(raised(l4_decision(metrics).await?.map(|d| d as f64)))
            }),
            async {
                let Some(monitoring) = monitoring else {
                    return Ok(None);
                };
                eventually(STEP_WITHIN, "the raised decision in Prometheus", || async {
                    Ok(raised(monitoring.decision(SAMPLES, L4).await?))
                })
                .await
                .map(Some)
            },
            eventually(STEP_WITHIN, "the L4 Deployment raised", || async {
                let replicas = spec_replicas(&wva.client, SAMPLES, L4).await?;
                Ok(raised(replicas.map(f64::from)))
            }),
        );
        let (decision, scraped, replicas) = match timed {
            Ok(timed) => timed,
            Err(e) => anyhow::bail!("{e:#}\n{}", what_each_part_saw(wva, metrics).await?),
        };
        let mut line = format!("{path}: step {step}:");
        for ((name, times), time) in
            stages
                .iter_mut()
                .zip([Some(decision), scraped, Some(replicas)])
        {
            if let Some(time) = time {
                line += &format!(" {name} {},", seconds(time));
                times.push(time);
            }
        }
        println!("{}", line.trim_end_matches(','));
        drop(held);
    }
    let mut summary = format!("{path}:");
    for (name, times) in &mut stages {
        if !times.is_empty() {
            times.sort();
            let median = times[times.len() / 2];
            let worst = times[times.len() - 1];
            summary += &format!(
                " {name} median {}, worst {};",
                seconds(median),
                seconds(worst)
            );
        }
    }
    println!("{summary} ({STEPS} steps)");
    Ok(())
}

/// wva's decisions, what the HPAs saw and the pods, for failure messages.
async fn what_each_part_saw(wva: &Wva, metrics: SocketAddr) -> anyhow::Result<String> {
    let decisions = serde_json::to_string(&decisions(metrics).await?)?;
    let hpas = kubectl(&wva.plane, &["get", "hpa", "-n", SAMPLES, "-o", "yaml"]).await?;
    let pods = kubectl(&wva.plane, &["get", "pods", "-n", SAMPLES]).await?;
    Ok(format!(
        "wva's decisions: {decisions}\nthe HPAs: {hpas}\nthe pods: {pods}"
    ))
}

/// Awaits the model at one replica per variant: both Deployments at one,
/// their old pods gone, and wva's L4 decision back at one.
async fn settled(wva: &Wva, metrics: SocketAddr) -> anyhow::Result<()> {
    let client = &wva.client;
    let settled = eventually(
        STEP_WITHIN,
        "the model settled at one replica each",
        || async {
            for variant in [L4, H100] {
                if spec_replicas(client, SAMPLES, variant).await? != Some(1) {
                    return Ok(None);
                }
            }
            Ok((l4_decision(metrics).await? == Some(1)).then_some(()))
        },
    )
    .await;
    if let Err(e) = settled {
        anyhow::bail!("{e:#}\n{}", what_each_part_saw(wva, metrics).await?);
    }
    for variant in [L4, H100] {
        live_pods(client, SAMPLES, &format!("app={variant}"), 1).await?;
    }
    Ok(())
}

/// wva's desired replicas for the L4 variant.
async fn l4_decision(metrics: SocketAddr) -> anyhow::Result<Option<i64>> {
    Ok(decisions(metrics)
        .await?
        .iter()
        .find(|d| d["variant"]["name"] == L4)
        .and_then(|d| d["desiredReplicas"].as_i64()))
}

fn seconds(time: Duration) -> String {
    format!("{:.1} s", time.as_secs_f64())
}
