//! One simulated replica: a `vllm-sim` process and the `wva-agent` beside
//! it, started, probed for readiness and stopped together, like the two
//! containers of one pod.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::probe;

/// Everything needed to start one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub pod: String,
    pub namespace: String,
    /// The Deployment name the agent reports as its variant.
    pub deployment: String,
    pub model: String,
    pub accelerator: String,
    pub sim_bin: PathBuf,
    pub agent_bin: PathBuf,
    pub sim_args: Vec<String>,
    pub cold_start: Duration,
    pub agent_interval: Duration,
    pub aggregator_url: String,
    pub seed: u64,
}

#[derive(Debug)]
pub enum ReplicaEvent {
    /// The simulated server answers `/health`; it takes requests at `addr`.
    Ready { pod: String, addr: SocketAddr },
    /// A process of the replica exited or could not start.
    Exited { pod: String, reason: String },
}

/// How long a failed replica waits before reporting, so a broken binary
/// cannot make the actuator restart it in a tight loop.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// Events of one replica, tagged with the owner's key for it.
pub type Events<K> = mpsc::Sender<(K, ReplicaEvent)>;

/// Runs the replica until `stop` fires (or is dropped) or a process exits.
pub async fn run<K: Clone>(
    spec: ReplicaSpec,
    key: K,
    events: Events<K>,
    stop: oneshot::Receiver<()>,
) {
    let pod = spec.pod.clone();
    if let Err(reason) = supervise(spec, &key, &events, stop).await {
        warn!(%pod, %reason, "replica stopped");
        tokio::time::sleep(FAILURE_BACKOFF).await;
        let _ = events
            .send((key, ReplicaEvent::Exited { pod, reason }))
            .await;
    }
}

/// Returns `Ok` when stopped on request, `Err` with the reason otherwise.
async fn supervise<K: Clone>(
    spec: ReplicaSpec,
    key: &K,
    events: &Events<K>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let mut sim = Command::new(&spec.sim_bin)
        .args(["--port", "0", "--model", &spec.model])
        .args([
            "--startup-delay",
            &humantime::format_duration(spec.cold_start).to_string(),
        ])
        .args(["--seed", &spec.seed.to_string()])
        .args(&spec.sim_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.sim_bin.display()))?;
    let addr = tokio::select! {
        addr = listening_addr(&mut sim) => addr?,
        _ = &mut stop => return Ok(()),
    };
    debug!(pod = %spec.pod, %addr, "simulated server listening");

    let mut agent = Command::new(&spec.agent_bin)
        .args(["--target", &format!("http://{addr}/metrics")])
        .args(["--aggregator", &spec.aggregator_url])
        .args(["--pod-name", &spec.pod, "--namespace", &spec.namespace])
        .args(["--variant", &spec.deployment, "--model", &spec.model])
        .args(["--accelerator", &spec.accelerator])
        .args([
            "--interval",
            &humantime::format_duration(spec.agent_interval).to_string(),
        ])
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.agent_bin.display()))?;

    let client = probe::client();
    let health = format!("http://{addr}/health");
    let mut ready = false;
    let mut probe_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            status = sim.wait() => return Err(format!("vllm-sim exited: {}", describe(status))),
            status = agent.wait() => return Err(format!("wva-agent exited: {}", describe(status))),
            _ = probe_tick.tick(), if !ready => {
                if probe::get_status(&client, &health, Duration::from_secs(1)).await.is_ok_and(|s| s.is_success()) {
                    ready = true;
                    let ready = ReplicaEvent::Ready { pod: spec.pod.clone(), addr };
                    let _ = events.send((key.clone(), ready)).await;
                }
            }
        }
    }
    // Stopping a pod: both containers go at once.
    let _ = agent.start_kill();
    let _ = sim.start_kill();
    let _ = agent.wait().await;
    let _ = sim.wait().await;
    Ok(())
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Reads the simulator's `listening on http://ADDR` line.
async fn listening_addr(sim: &mut Child) -> Result<SocketAddr, String> {
    let stdout = sim.stdout.take().ok_or("vllm-sim stdout is not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "vllm-sim did not report its address within 10s".to_string())?
        .map_err(|e| format!("reading vllm-sim output: {e}"))?
        .ok_or("vllm-sim exited before reporting its address")?;
    // Keep reading so later output never meets a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line.trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from vllm-sim: {line:?}"))
}
