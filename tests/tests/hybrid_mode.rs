//! HYBRID mode end to end, standalone: a real `vllm-sim` serving requests,
//! its `wva-agent`, and `wva-aggregator` started with
//! `EXPERIMENTAL_PROACTIVE_MODEL=true` and a serviceclass file. The
//! variant's decision carries the model-based view under the file's class;
//! an edit of the file applies, an invalid one keeps the classes in force;
//! and a bad file or mode stops the start, naming what is wrong. Under a
//! rising load the plan scales the variant before its replica saturates;
//! objectives the sim cannot meet are reported, not chased.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use wva_e2e::*;

const MODEL: &str = "e2e/llama";

/// The sim's own latencies (10 ms per step plus 0.2 ms per running
/// request; 20 ms plus 0.1 ms per prompt token to prefill), given as the
/// variant's profile so the plan need not wait for a fit.
const PROFILE: &str = r#"{"itl": {"intercept": 10, "slope": 0.2}, "prefill": {"intercept": 20, "slope": 0.1}, "maxBatch": 256}"#;

/// Long enough for the arrival rate to be measured (over at least 5 s)
/// on a loaded machine.
const WITHIN: Duration = Duration::from_secs(60);

/// Variant `e2e/chat` of `MODEL`, with `profile` in its annotation.
fn variants_file(dir: &Path, profile: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("variants.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata:\n  name: chat\n  namespace: e2e\n  annotations:\n    \
             wva.llmd.ai/performance-profile: '{profile}'\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: chat}}, modelID: {MODEL}}}\n"
        ),
    )?;
    Ok(path)
}

/// A serviceclass ConfigMap manifest with one class of `MODEL`.
fn service_classes(name: &str, priority: u32) -> String {
    service_class_with(name, priority, 50)
}

/// The same, with an ITL objective of `slo_itl` ms.
fn service_class_with(name: &str, priority: u32, slo_itl: u32) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: serviceclass}}\ndata:\n  \
         serviceClasses: |\n    \
         - {{name: {name}, model: {MODEL}, priority: {priority}, slo-itl: {slo_itl}, slo-ttw: 2000}}\n  \
         headroom: \"0.2\"\n"
    )
}

/// Writes `text` to `path` whole: the aggregator re-reads the file every
/// second and must never see half of it.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// The `modelBased` view of chat's first decision, decided after `after`
/// (Unix ms), that satisfies `pred`.
async fn model_based_where(
    metrics: std::net::SocketAddr,
    what: &str,
    after: i64,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let decision = decision_where(metrics, WITHIN, what, |d| {
        d["variant"]["name"] == "chat"
            && d["decidedAt"].as_i64().is_some_and(|t| t > after)
            && pred(&d["modelBased"])
    })
    .await?;
    Ok(decision["modelBased"].clone())
}

fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::test]
async fn decisions_show_the_plan_under_the_files_class_and_follow_its_edits() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let variants = variants_file(dir.path(), PROFILE)?;
    let classes = dir.path().join("serviceclass.yaml");
    std::fs::write(&classes, service_classes("Premium", 1))?;
    let (_sim, sim) = start_sim(MODEL, &[]).await?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let mut aggregator = standalone_aggregator(
        &variants,
        grpc,
        metrics,
        &["--service-class-config", classes.to_str().context("path")?],
    );
    // As WVA's users set it, in the environment, in any case.
    aggregator.env("EXPERIMENTAL_PROACTIVE_MODEL", "True");
    let _aggregator = Proc {
        child: aggregator.spawn().context("start wva-aggregator")?,
    };
    let _agent = chat_agent(sim, grpc)?;

    // In HYBRID mode every decision has the view; before any request has
    // finished, the plan abstains and says why.
    let view = model_based_where(metrics, "the model-based view", 0, |m| m.is_object()).await?;
    assert_eq!(view["fitted"], false, "{view}");

    // Short requests, a few a second, each finishing in about 100 ms.
    let load = tokio::spawn(async move {
        loop {
            let request = hold_completion(sim, MODEL, 32, 8).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(request);
        }
    });

    let view = model_based_where(metrics, "the plan under class Premium", 0, |m| {
        m["class"] == "Premium"
    })
    .await?;
    assert_eq!(view["priority"], 1, "{view}");
    assert_eq!(view["fitted"], false, "the annotation's profile: {view}");
    assert_eq!(view["profile"]["itl"]["slope"], 0.2, "{view}");
    assert!(
        view["perReplica"].as_f64().is_some_and(|r| r > 0.0),
        "{view}"
    );
    assert!(view["planned"].as_u64().is_some(), "{view}");
    assert!(view.get("abstains").is_none(), "{view}");

    // An edit of the file applies within its re-read.
    replace_file(&classes, &service_classes("Gold", 2))?;
    let view = model_based_where(metrics, "the plan under class Gold", 0, |m| {
        m["class"] == "Gold"
    })
    .await?;
    assert_eq!(view["priority"], 2, "{view}");

    // An invalid edit is refused: Gold stays in force through re-reads
    // (every second) and the aggregator keeps serving.
    replace_file(&classes, &service_classes("Broken", 0))?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after_invalid = unix_ms();
    let view = model_based_where(
        metrics,
        "a decision after the invalid edit",
        after_invalid,
        |m| m.is_object(),
    )
    .await?;
    assert_eq!(view["class"], "Gold", "the previous classes stay: {view}");
    assert_eq!(http_get(metrics, "/healthz").await?.0, 200);

    // The watch goes on: the next valid edit applies.
    replace_file(&classes, &service_classes("Silver", 3))?;
    model_based_where(metrics, "the plan under class Silver", 0, |m| {
        m["class"] == "Silver"
    })
    .await?;
    load.abort();
    Ok(())
}

/// A sim slow enough that a few requests a second fill it: 40 ms a step
/// plus 4 ms per running request, at most 8 running; more wait.
const SLOW_SIM: [&str; 6] = [
    "--itl-base",
    "40ms",
    "--itl-per-seq",
    "4ms",
    "--max-num-seqs",
    "8",
];

/// [`SLOW_SIM`]'s latencies, as its variant's profile.
const SLOW_PROFILE: &str = r#"{"itl": {"intercept": 40, "slope": 4}, "prefill": {"intercept": 20, "slope": 0.1}, "maxBatch": 8}"#;

/// The sim, its agent and a HYBRID aggregator whose one class has an ITL
/// objective of `slo_itl` ms; the processes and the aggregator's HTTP
/// address.
async fn slow_variant(
    dir: &Path,
    slo_itl: u32,
) -> anyhow::Result<(Vec<Proc>, std::net::SocketAddr, std::net::SocketAddr)> {
    let variants = variants_file(dir, SLOW_PROFILE)?;
    let classes = dir.join("serviceclass.yaml");
    std::fs::write(&classes, service_class_with("Standard", 1, slo_itl))?;
    let (sim_proc, sim) = start_sim(MODEL, &SLOW_SIM).await?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let mut aggregator = standalone_aggregator(
        &variants,
        grpc,
        metrics,
        &[
            "--experimental-proactive-model",
            "true",
            "--service-class-config",
            classes.to_str().context("path")?,
        ],
    );
    let aggregator = Proc {
        child: aggregator.spawn().context("start wva-aggregator")?,
    };
    let agent = chat_agent(sim, grpc)?;
    Ok((vec![sim_proc, aggregator, agent], sim, metrics))
}

/// The agent of pod `chat-0` of variant `chat`, beside `sim`.
fn chat_agent(sim: std::net::SocketAddr, aggregator: std::net::SocketAddr) -> anyhow::Result<Proc> {
    start_agent(&AgentSpec {
        target: sim,
        aggregator: &format!("http://{aggregator}"),
        pod: "chat-0",
        namespace: "e2e",
        variant: "chat",
        model: MODEL,
        interval: "200ms",
        extra: &[],
    })
}

/// Sends requests of 16 prompt and 16 output tokens, open loop, at
/// `rate(seconds since start)` a second, each read to its end.
fn open_loop(
    sim: std::net::SocketAddr,
    rate: impl Fn(f64) -> f64 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        loop {
            let per_second = rate(start.elapsed().as_secs_f64()).max(0.1);
            tokio::spawn(async move {
                if let Ok(mut request) = hold_completion(sim, MODEL, 16, 16).await {
                    let mut response = Vec::new();
                    let _ = request.read_to_end(&mut response).await;
                }
            });
            tokio::time::sleep(Duration::from_secs_f64(per_second.recip())).await;
        }
    })
}

#[tokio::test]
async fn a_rising_load_is_planned_for_before_the_replica_saturates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // At 60 ms an output token, one replica of the slow sim carries about
    // 3.8 requests a second; with the class's 20 % headroom the plan wants
    // a second one from about 3.2. Its eight slots fill, and requests
    // queue, only past 6 a second.
    let (_procs, sim, metrics) = slow_variant(dir.path(), 60).await?;
    let load = open_loop(sim, |t| 1.0 + 8.0 * (t / 45.0).min(1.0));

    let first_up = decision_where(metrics, Duration::from_secs(90), "a scale-up", |d| {
        d["variant"]["name"] == "chat" && d["desiredReplicas"].as_u64() >= Some(2)
    })
    .await?;
    assert_eq!(first_up["basis"], "optimizer", "{first_up}");
    assert_eq!(
        first_up["saturation"]["analysis"]["saturatedReplicas"], 0,
        "no replica is saturated yet: {first_up}"
    );
    let planned = first_up["modelBased"]["planned"].as_u64();
    assert_eq!(planned, first_up["desiredReplicas"].as_u64(), "{first_up}");

    // The same load, rising on, then saturates the one replica: the
    // saturation analysis alone would have scaled only then.
    let scaled_at = first_up["decidedAt"].as_i64().context("decidedAt")?;
    let saturated = decision_where(
        metrics,
        Duration::from_secs(90),
        "a saturated replica",
        |d| {
            d["variant"]["name"] == "chat"
                && d["saturation"]["analysis"]["saturatedReplicas"].as_u64() >= Some(1)
        },
    )
    .await?;
    let saturated_at = saturated["decidedAt"].as_i64().context("decidedAt")?;
    assert!(scaled_at < saturated_at, "{first_up}\n{saturated}");
    load.abort();
    Ok(())
}

#[tokio::test]
async fn objectives_the_sim_cannot_meet_are_reported_not_chased() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A lone request of the slow sim already takes 44 ms a token.
    let (_procs, sim, metrics) = slow_variant(dir.path(), 30).await?;
    let load = open_loop(sim, |_| 3.0);
    let unattainable = model_based_where(metrics, "the objectives unattainable", 0, |m| {
        m["unattainable"] == true
    })
    .await?;
    assert_eq!(
        unattainable["abstains"],
        "objectives of class \"Standard\" unattainable: a lone request's inter-token latency is 44.0 ms, over the objective of 30 ms",
        "{unattainable}"
    );
    // Later decisions stay with the saturation analysis: no replica is
    // added for objectives no replica can meet.
    let since = unix_ms();
    let later = decision_where(metrics, WITHIN, "decisions 5 s later", |d| {
        d["variant"]["name"] == "chat" && d["decidedAt"].as_i64() > Some(since + 5000)
    })
    .await?;
    assert_eq!(later["desiredReplicas"], 1, "{later}");
    assert_ne!(later["basis"], "optimizer", "{later}");
    assert_eq!(later["modelBased"]["unattainable"], true, "{later}");
    load.abort();
    Ok(())
}

/// Runs the aggregator until it exits (within 10 s); its exit code and
/// stderr.
async fn failed_start(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Option<i32>, String)> {
    let variants = one_variant_file(dir, "e2e", "chat", MODEL);
    let mut aggregator = standalone_aggregator(&variants, free_addr(), free_addr(), extra);
    aggregator.envs(env.iter().copied()).stderr(Stdio::piped());
    aggregator.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), aggregator.output())
        .await
        .context("the aggregator did not stop")??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn an_invalid_serviceclass_file_or_mode_stops_the_start_naming_the_problem()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let classes = dir.path().join("serviceclass.yaml");
    std::fs::write(
        &classes,
        service_classes("Premium", 1).replace("slo-itl: 50", "slo-itl: 0"),
    )?;
    let path = classes.to_str().context("path")?;
    let (code, stderr) = failed_start(
        dir.path(),
        &[
            "--experimental-proactive-model",
            "true",
            "--service-class-config",
            path,
        ],
        &[],
    )
    .await?;
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "wva-aggregator: invalid serviceclass config file {path}: serviceclass entry 0 (\"Premium\"): slo-itl must be a positive number of milliseconds, got 0"
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let (code, stderr) = failed_start(
        dir.path(),
        &[],
        &[("EXPERIMENTAL_PROACTIVE_MODEL", "hybrid")],
    )
    .await?;
    assert_eq!(code, Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("invalid value 'hybrid' for '--experimental-proactive-model <EXPERIMENTAL_PROACTIVE_MODEL>': expected \"true\" (HYBRID mode) or \"false\" (CAPACITY-ONLY mode)"),
        "{stderr}"
    );
    Ok(())
}
