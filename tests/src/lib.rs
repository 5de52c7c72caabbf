//! Harness for end-to-end tests: starts the real binaries on loopback and
//! observes them through their HTTP endpoints.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod controlplane;
pub mod exporter;
pub mod https;
pub mod install;
pub mod keda;
pub mod netns;
pub mod node;
pub mod pki;
pub mod pod_agent;
pub mod prometheus;
pub mod redis;
pub mod samples;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tool installed by `scripts/fetch-tools` (`helm`, `kubectl`), or the
/// binary named by `env` (e.g. `WVA_HELM`). A missing tool fails the test: a
/// skipped chart or cluster test would pass a broken chart.
pub fn tool(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/tools").join(name));
    assert!(
        path.is_file(),
        "{name} not found at {}: run scripts/fetch-tools (or set {env} to a {name} binary)",
        path.display()
    );
    path
}

/// Path of a workspace binary, built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
        path.display()
    );
    path
}

/// A free loopback port (bound and released), never one this test binary
/// handed out before: the kernel may give a just-released port to the next
/// bind, and two tests running side by side then start servers on one port
/// (seen in CI: one aggregator failed to bind, its test talked to the other
/// test's). Another process may still take a port; that race is rare.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`) through kill(1).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{signal} {} failed: {status}", self.pid());
        }
        Ok(())
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// The most memory the process has held resident so far (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .context("VmHWM in /proc/<pid>/status")?
            .trim()
            .parse()?;
        Ok(kib * 1024)
    }
}

/// The command of a workspace binary: killed when dropped, logging at
/// `WVA_TEST_LOG` (`warn` unless set).
pub fn command(name: &str) -> Command {
    command_at(&bin(name))
}

/// The program at `path`, set up as [`command`] sets up a workspace binary.
pub fn command_at(path: &Path) -> Command {
    program(Command::new(path))
}

/// [`command`] run inside network namespace `netns` (`ip netns exec`, which
/// becomes the program, so signals reach it).
pub fn command_in_netns(netns: &str, name: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(bin(name));
    program(cmd)
}

fn program(mut cmd: Command) -> Command {
    cmd.stdin(Stdio::null()).kill_on_drop(true).env(
        "RUST_LOG",
        std::env::var("WVA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// Flags of a sim with a small KV cache whose requests decode one token a
/// second: a long request from [`hold_completion`] holds a large share of the
/// cache, running, for the whole of a test.
pub const SLOW_DECODING_SIM: [&str; 6] = [
    "--num-gpu-blocks",
    "64",
    "--max-model-len",
    "1024",
    "--itl-base",
    "1s",
];

/// Starts a `vllm-sim` on an ephemeral port and returns it with its address.
pub async fn start_sim(model: &str, extra: &[&str]) -> anyhow::Result<(Proc, SocketAddr)> {
    start_sim_at("127.0.0.1:0".parse()?, model, extra).await
}

/// Starts a `vllm-sim` on `addr` (port 0 picks one) and returns it with the
/// address it bound.
pub async fn start_sim_at(
    addr: SocketAddr,
    model: &str,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    start_sim_with(command("vllm-sim"), addr, model, extra).await
}

/// [`start_sim_at`] with the `vllm-sim` command `sim` (e.g. in a network
/// namespace).
pub async fn start_sim_with(
    mut sim: Command,
    addr: SocketAddr,
    model: &str,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut child = sim
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string(), "--model", model])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start vllm-sim")?;
    let stdout = child.stdout.take().context("vllm-sim stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("vllm-sim did not report its address")??
        .context("vllm-sim exited before reporting its address")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected vllm-sim line {line:?}"))?;
    Ok((Proc { child }, addr))
}

/// Identity and target of one agent.
pub struct AgentSpec<'a> {
    pub target: SocketAddr,
    pub aggregator: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub variant: &'a str,
    pub model: &'a str,
    /// Scrape interval, as the agent's `--interval` flag reads it; empty
    /// for the agent's default.
    pub interval: &'a str,
    pub extra: &'a [&'a str],
}

pub fn start_agent(spec: &AgentSpec<'_>) -> anyhow::Result<Proc> {
    start_agent_with(command("wva-agent"), spec)
}

/// [`start_agent`] with the `wva-agent` command `agent` (e.g. in a network
/// namespace).
pub fn start_agent_with(mut agent: Command, spec: &AgentSpec<'_>) -> anyhow::Result<Proc> {
    agent
        .args(["--target", &format!("http://{}/metrics", spec.target)])
        .args(["--aggregator", spec.aggregator])
        .args(["--pod-name", spec.pod, "--namespace", spec.namespace])
        .args(["--variant", spec.variant, "--model", spec.model])
        .args(spec.extra);
    if !spec.interval.is_empty() {
        agent.args(["--interval", spec.interval]);
    }
    // Its own port is of no interest unless a test names one.
    if !spec.extra.contains(&"--listen") {
        agent.args(["--listen", "127.0.0.1:0"]);
    }
    let child = agent
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start wva-agent")?;
    Ok(Proc { child })
}

/// The command of `wva-aggregator --standalone` on the given addresses with
/// the tests' pace (fast analyses, a 3 s staleness bound, unless `extra`
/// sets them), stdout discarded and stderr inherited.
pub fn standalone_aggregator(
    variants: &Path,
    grpc: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Command {
    standalone_aggregator_with(command("wva-aggregator"), variants, grpc, metrics, extra)
}

/// [`standalone_aggregator`] with the `wva-aggregator` command `cmd` (e.g.
/// another build's).
pub fn standalone_aggregator_with(
    mut cmd: Command,
    variants: &Path,
    grpc: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Command {
    cmd.args(["--grpc-addr", &grpc.to_string()])
        .args(["--metrics-addr", &metrics.to_string()]);
    for (flag, value) in [("--min-analysis-interval", "100ms"), ("--staleness", "3s")] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.arg("--standalone")
        .arg("--variants")
        .arg(variants)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Writes a variants file in `dir` holding one VariantAutoscaling,
/// `namespace/name` of model `model`, scaling Deployment `name`.
pub fn one_variant_file(dir: &Path, namespace: &str, name: &str, model: &str) -> PathBuf {
    let path = dir.join("variants.yaml");
    let text = format!(
        "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{scaleTargetRef: {{kind: Deployment, name: {name}}}, modelID: {model}}}\n"
    );
    std::fs::write(&path, text).expect("write the variants file");
    path
}

/// Starts `wva-aggregator --standalone` on the given addresses.
pub fn start_aggregator(
    variants: &Path,
    grpc: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let child = standalone_aggregator(variants, grpc, metrics, extra)
        .spawn()
        .context("start wva-aggregator")?;
    Ok(Proc { child })
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    get_over(stream, addr, path).await
}

/// One `GET` of `path` over `stream` (plain or TLS) to `addr`, the
/// connection closed after it.
async fn get_over<S>(mut stream: S, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk header")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk trailer")?;
    }
}

/// The aggregator's current decisions.
pub async fn decisions(metrics: SocketAddr) -> anyhow::Result<Vec<serde_json::Value>> {
    let (status, body) = http_get(metrics, "/v1/decisions").await?;
    if status != 200 {
        bail!("/v1/decisions answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// The first decision on the aggregator at `metrics` that satisfies `pred`,
/// awaited for up to `within`.
pub async fn decision_where(
    metrics: SocketAddr,
    within: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    eventually(within, what, || {
        let pred = &pred;
        async move {
            let all = decisions(metrics).await?;
            Ok(all.into_iter().find(|d| pred(d)))
        }
    })
    .await
}

/// The pods whose samples a decision used, sorted.
pub fn input_pods(decision: &serde_json::Value) -> Vec<String> {
    let mut pods: Vec<String> = decision["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["pod"].as_str().map(String::from))
        .collect();
    pods.sort();
    pods
}

/// One series of a `/metrics` page: its labels and value.
pub type Series = (BTreeMap<String, String>, f64);

/// The series of the metric `name` (exactly, e.g. `wva_desired_replicas` or
/// `wva_agent_stream_refusals_total`) on the `/metrics` page at `addr`.
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<Vec<Series>> {
    let (status, body) = http_get(addr, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    parse_metric(&body, name)
}

/// Parses the samples of `name` from Prometheus or OpenMetrics text.
pub fn parse_metric(text: &str, name: &str) -> anyhow::Result<Vec<Series>> {
    let mut series = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ").context("unterminated label set")?,
            None if rest.starts_with(' ') => ("", rest),
            // Another metric whose name starts with `name`.
            None => continue,
        };
        let mut map = BTreeMap::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').context("label without =")?;
            map.insert(key.to_string(), value.trim_matches('"').to_string());
        }
        let value = value.split_whitespace().next().context("no sample value")?;
        series.push((map, value.parse().context("sample value")?));
    }
    Ok(series)
}

/// Sends a completion request of about `prompt_tokens` prompt tokens and
/// `max_tokens` output tokens to a `vllm-sim`; it stays in flight (holding
/// its KV-cache blocks) until the returned connection is dropped or it ends.
/// The sim closes the connection after its response, so reading it to the
/// end waits for the request to finish.
pub async fn hold_completion(
    sim: SocketAddr,
    model: &str,
    prompt_tokens: usize,
    max_tokens: u32,
) -> anyhow::Result<TcpStream> {
    let body = serde_json::json!({
        "model": model,
        "prompt": "abcd".repeat(prompt_tokens),
        "max_tokens": max_tokens,
        "ignore_eos": true,
    })
    .to_string();
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(sim)).await??;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {sim}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// A fraction in [0, 1) from the process' random hashing keys.
pub fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `within`
/// with the last observation.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An endpoint picker's exposition: its flow-control queue holding `queued`
/// requests for `model`.
pub fn flow_control(model: &str, queued: u32) -> String {
    format!(
        "# TYPE llm_d_epp_flow_control_queue_size gauge\n\
         llm_d_epp_flow_control_queue_size{{fairness_id=\"default\",priority=\"0\",inference_pool=\"pool\",model_name=\"{model}\",target_model_name=\"{model}\"}} {queued}\n"
    )
}

/// A `/metrics` endpoint serving whatever `body` holds at each request, for
/// targets the simulator does not imitate (an endpoint picker). Each answer
/// closes its connection.
pub async fn serve_metrics(
    body: std::sync::Arc<std::sync::Mutex<String>>,
) -> anyhow::Result<SocketAddr> {
    serve_metrics_at("127.0.0.1:0".parse()?, body).await
}

/// [`serve_metrics`] on `addr` (another loopback IP stands for a pod IP).
pub async fn serve_metrics_at(
    addr: SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = body.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// The first place where `original` and `round_tripped` differ, as a path
/// and what happened there.
pub fn first_difference(
    original: &serde_json::Value,
    round_tripped: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let here = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, &here),
                    (Some(_), None) => Some(format!("{here} is dropped: not a field of the type")),
                    _ => Some(format!("{here} appears only after the round trip")),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if original == round_tripped => None,
        _ => Some(format!("{path}: {original} became {round_tripped}")),
    }
}

/// `value` read as a `T` and written back unchanged; a field the type does
/// not know (misspelled, or of another version) is dropped on the way and
/// named in the error. `path` prefixes the names.
pub fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &serde_json::Value,
    path: &str,
) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(value, &back, path) {
        Some(difference) => Err(difference),
        None => Ok(typed),
    }
}

/// The literal value of environment variable `name` of a container (JSON).
pub fn container_env<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// Wall-clock time, Unix epoch milliseconds (as decisions' `decidedAt`).
pub fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
