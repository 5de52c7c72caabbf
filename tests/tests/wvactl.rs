//! `wvactl` end to end: the built binary against a standalone aggregator fed
//! by a real simulator and agent, read the way an operator or a script reads
//! it (stdout, stderr, exit code).

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use wva_e2e::*;

const MODEL: &str = "e2e/llama";
const NAMESPACE: &str = "e2e";
const VARIANT: &str = "chat-l4";
const POD: &str = "chat-l4-0";
/// Guard on every wait; the awaited output usually comes within a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// An aggregator that knows one variant, whose one pod's agent streams.
struct World {
    server: String,
    agent: Proc,
    _sim: Proc,
    _aggregator: Proc,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let variants = dir.path().join("variants.yaml");
        std::fs::write(
            &variants,
            format!(
                "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
                 metadata: {{name: {VARIANT}, namespace: {NAMESPACE}}}\n\
                 spec: {{scaleTargetRef: {{kind: Deployment, name: {VARIANT}}}, modelID: {MODEL}}}\n"
            ),
        )?;
        let (grpc, metrics) = (free_addr(), free_addr());
        let aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
        let (sim, target) = start_sim(MODEL, &[]).await?;
        let server = format!("http://{grpc}");
        let agent = start_agent(&AgentSpec {
            target,
            aggregator: &server,
            pod: POD,
            namespace: NAMESPACE,
            variant: VARIANT,
            model: MODEL,
            interval: "200ms",
            extra: &[],
        })?;
        // Ready once an analysis has used the pod's samples.
        eventually(PATIENCE, "a decision fed by the agent", || async {
            let all = decisions(metrics).await?;
            let fed = all
                .iter()
                .any(|d| d["variant"]["name"] == VARIANT && d["inputs"][0].is_object());
            Ok(fed.then_some(()))
        })
        .await?;
        Ok(World {
            server,
            agent,
            _sim: sim,
            _aggregator: aggregator,
            _dir: dir,
        })
    }

    /// Runs `wvactl --server <this aggregator> args…` to completion.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(&self.server, args).await
    }

    /// Starts a streaming `wvactl` command; its stdout lines can be awaited.
    fn spawn(&self, args: &[&str]) -> anyhow::Result<Streaming> {
        let mut child = wvactl(&self.server, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start wvactl")?;
        let stdout = child.stdout.take().context("wvactl stdout")?;
        Ok(Streaming {
            lines: BufReader::new(stdout).lines(),
            _child: child,
        })
    }
}

/// A running `wvactl` (killed when dropped) and its output lines.
struct Streaming {
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Streaming {
    async fn next_line(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(PATIENCE, self.lines.next_line()).await {
            Err(_) => bail!("wvactl printed no line within {PATIENCE:?}"),
            Ok(line) => line?.context("wvactl ended its output"),
        }
    }

    async fn next_json(&mut self) -> anyhow::Result<Value> {
        let line = self.next_line().await?;
        serde_json::from_str(&line).with_context(|| format!("not a JSON line: {line:?}"))
    }
}

/// The `wvactl` command aimed at `server`, unaffected by the caller's
/// environment.
fn wvactl(server: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("wvactl"));
    cmd.args(args)
        .args(["--server", server])
        .env_remove("WVA_SERVER")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(server: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = wvactl(server, args).output();
    tokio::time::timeout(PATIENCE, output)
        .await
        .with_context(|| format!("wvactl {args:?} did not finish within {PATIENCE:?}"))?
        .context("run wvactl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a failure the way operators see it: exit code 1, nothing on
/// stdout, and exactly one line on stderr.
fn one_line_failure(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    text.trim_end().to_string()
}

#[tokio::test]
async fn get_shows_the_variant_its_decision_and_the_inputs_behind_it() -> anyhow::Result<()> {
    let world = World::start().await?;

    let json = world.run(&["get", "--output", "json"]).await?;
    assert!(json.status.success(), "{json:?}");
    let snapshot: Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(snapshot["leading"], true, "a standalone aggregator leads");
    let decisions = snapshot["decisions"].as_array().context("decisions")?;
    assert_eq!(decisions.len(), 1, "{snapshot:#}");
    let d = &decisions[0];
    assert_eq!(
        (&d["namespace"], &d["name"], &d["modelId"]),
        (&NAMESPACE.into(), &VARIANT.into(), &MODEL.into())
    );
    assert!(d["desiredReplicas"].is_u64(), "{d:#}");
    assert!(d["basis"].as_str().is_some_and(|b| !b.is_empty()), "{d:#}");
    assert_eq!(d["inputs"][0]["pod"], POD, "{d:#}");
    assert!(d["inputs"][0]["kvCacheUsage"].is_f64(), "{d:#}");
    assert!(d["saturation"]["kvCacheThreshold"].is_f64(), "{d:#}");

    let table = world.run(&["get"]).await?;
    assert!(table.status.success(), "{table:?}");
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "header and one row: {text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "VARIANT",
            "MODEL",
            "ACCELERATOR",
            "CURRENT",
            "READY",
            "DESIRED",
            "BASIS",
            "DATA",
            "KV",
            "QUEUE",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..3], [NAMESPACE, VARIANT, MODEL], "{text}");
    assert!(row[9].ends_with('%'), "KV is a percentage: {text}");
    Ok(())
}

#[tokio::test]
async fn filters_that_match_nothing_print_no_rows() -> anyhow::Result<()> {
    let world = World::start().await?;

    let table = world.run(&["get", "--model", "other"]).await?;
    assert!(table.status.success(), "{table:?}");
    assert_eq!(stdout(&table), "", "no rows, no header");
    assert!(stderr(&table).contains("model=other"), "{table:?}");

    let json = world
        .run(&["get", "--namespace", "elsewhere", "-o", "json"])
        .await?;
    assert!(json.status.success(), "{json:?}");
    let snapshot: Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(snapshot["decisions"], serde_json::json!([]));

    let matching = world
        .run(&[
            "get",
            "--namespace",
            NAMESPACE,
            "--variant",
            VARIANT,
            "-o",
            "json",
        ])
        .await?;
    let snapshot: Value = serde_json::from_slice(&matching.stdout)?;
    assert_eq!(snapshot["decisions"][0]["name"], VARIANT);
    Ok(())
}

#[tokio::test]
async fn top_once_prints_one_frame_with_the_variant() -> anyhow::Result<()> {
    let world = World::start().await?;
    let top = world.run(&["top", "--once"]).await?;
    assert!(top.status.success(), "{top:?}");
    let frame = stdout(&top);
    assert!(
        !frame.contains('\x1b'),
        "no ANSI codes into a pipe: {frame:?}"
    );
    let lines: Vec<&str> = frame.lines().collect();
    assert!(
        lines[0].contains(&world.server) && lines[0].contains("(leader)"),
        "{frame}"
    );
    assert!(lines[2].starts_with("NAMESPACE"), "{frame}");
    let row: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(row[..3], [NAMESPACE, VARIANT, MODEL], "{frame}");
    assert_eq!(lines.len(), 4, "one frame, one variant: {frame}");
    Ok(())
}

#[tokio::test]
async fn watch_prints_each_variant_then_its_changes_as_json_lines() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut watch = world.spawn(&["watch", "--output", "json", "--namespace", NAMESPACE])?;

    let first = watch.next_json().await?;
    assert_eq!(first["event"], "initial", "{first:#}");
    assert_eq!(
        (&first["namespace"], &first["variant"]),
        (&NAMESPACE.into(), &VARIANT.into())
    );
    assert!(first["previous"].is_null(), "{first:#}");
    assert_eq!(first["decision"]["data"], "fresh", "{first:#}");
    assert_eq!(first["decision"]["inputs"][0]["pod"], POD, "{first:#}");
    assert!(first["decision"]["desiredReplicas"].is_u64(), "{first:#}");

    // The pod's agent leaves: its samples leave the analysis at once, and
    // the data state that follows is an event (a basis settling after start
    // may come first).
    world.agent.signal("TERM").await?;
    let change = loop {
        let event = watch.next_json().await?;
        assert_eq!(event["event"], "changed", "{event:#}");
        assert!(event["previous"].is_object(), "{event:#}");
        if event["decision"]["data"] != "fresh" {
            break event;
        }
    };
    assert_eq!(change["previous"]["data"], "fresh", "{change:#}");
    assert_eq!(change["decision"]["inputs"], serde_json::json!([]));
    Ok(())
}

#[tokio::test]
async fn tap_streams_the_pods_samples_in_order() -> anyhow::Result<()> {
    let world = World::start().await?;
    let mut tap = world.spawn(&["tap", POD, "--namespace", NAMESPACE, "--output", "json"])?;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let sample = tap.next_json().await?;
        assert_eq!(
            (&sample["namespace"], &sample["pod"], &sample["variant"]),
            (&NAMESPACE.into(), &POD.into(), &VARIANT.into()),
            "{sample:#}"
        );
        assert_eq!(sample["role"], "vllm", "{sample:#}");
        assert_eq!(sample["sample"]["up"], true, "{sample:#}");
        assert_eq!(sample["sample"]["models"][0]["model"], MODEL, "{sample:#}");
        seqs.push(sample["sample"]["seq"].as_u64().context("seq")?);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases: {seqs:?}"
    );

    let mut lines = world.spawn(&["tap", POD, "-n", NAMESPACE])?;
    let line = lines.next_line().await?;
    assert!(
        line.contains(" up model=e2e/llama kv=") && line.contains(" waiting="),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn tapping_an_unknown_pod_names_it_and_exits_1() -> anyhow::Result<()> {
    let world = World::start().await?;
    let output = world
        .run(&["tap", "no-such-pod", "--namespace", NAMESPACE])
        .await?;
    let line = one_line_failure(&output);
    assert!(line.starts_with("wvactl: "), "{line}");
    assert!(line.contains("e2e/no-such-pod"), "{line}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_aggregator_is_one_line_and_exit_1() -> anyhow::Result<()> {
    // Bound and released: nobody listens there.
    let nobody: SocketAddr = free_addr();
    let server = format!("http://{nobody}");
    for args in [&["get"][..], &["watch"], &["tap", POD]] {
        let output = run(&server, args).await?;
        let line = one_line_failure(&output);
        assert!(
            line.starts_with(&format!(
                "wvactl: cannot reach the aggregator at {server}: "
            )),
            "{args:?}: {line}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_flags_are_usage_errors() -> anyhow::Result<()> {
    let output = run("http://127.0.0.1:9", &["get", "--output", "yaml"]).await?;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("yaml"), "{output:?}");
    Ok(())
}
