//! HYBRID mode end to end, standalone: a real `vllm-sim` serving requests,
//! its `wva-agent`, and `wva-aggregator` started with
//! `EXPERIMENTAL_PROACTIVE_MODEL=true` and a serviceclass file. The
//! variant's decision carries the model-based view under the file's class;
//! an edit of the file applies, an invalid one keeps the classes in force;
//! and a bad file or mode stops the start, naming what is wrong.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use wva_e2e::*;

const MODEL: &str = "e2e/llama";

/// The sim's own latencies (10 ms per step plus 0.2 ms per running
/// request; 20 ms plus 0.1 ms per prompt token to prefill), given as the
/// variant's profile so the plan need not wait for a fit.
const PROFILE: &str = r#"{"itl": {"intercept": 10, "slope": 0.2}, "prefill": {"intercept": 20, "slope": 0.1}, "maxBatch": 256}"#;

/// Long enough for the arrival rate to be measured (over at least 5 s)
/// on a loaded machine.
const WITHIN: Duration = Duration::from_secs(60);

/// Variant `e2e/chat` of `MODEL`, with the profile annotation.
fn variants_file(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("variants.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata:\n  name: chat\n  namespace: e2e\n  annotations:\n    \
             wva.llmd.ai/performance-profile: '{PROFILE}'\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: chat}}, modelID: {MODEL}}}\n"
        ),
    )?;
    Ok(path)
}

/// A serviceclass ConfigMap manifest with one class of `MODEL`.
fn service_classes(name: &str, priority: u32) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: serviceclass}}\ndata:\n  \
         serviceClasses: |\n    \
         - {{name: {name}, model: {MODEL}, priority: {priority}, slo-itl: 50, slo-ttw: 1000}}\n  \
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
    let variants = variants_file(dir.path())?;
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
    let aggregator_url = format!("http://{grpc}");
    let _agent = start_agent(&AgentSpec {
        target: sim,
        aggregator: &aggregator_url,
        pod: "chat-0",
        namespace: "e2e",
        variant: "chat",
        model: MODEL,
        interval: "200ms",
        extra: &[],
    })?;

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
