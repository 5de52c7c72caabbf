//! The vLLM-shaped Python exporter (`tests/exporter/vllm_metrics.py`): the
//! real prometheus_client, prometheus-fastapi-instrumentator, FastAPI and
//! uvicorn serving a vLLM 0.11 fixture's `vllm:` families, wired as vLLM
//! wires its `/metrics`. Its packages come from PyPI through
//! `scripts/fetch-python-exporter` (pinned, under `target/tools/python`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::{Proc, workspace};

/// The vLLM 0.11 fixture with two engine ranks and speculative decoding.
pub const DP2_FIXTURE: &str = "vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom";

/// How the server routes `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// vLLM ≥ 0.9: the instrumentator's `GET /metrics` (whole body), then
    /// prometheus_client's ASGI app for every other `/metrics…` path.
    Current,
    /// Older vLLM: the ASGI app alone, `/metrics` included.
    Asgi,
}

/// Where the served values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    /// In the serving process's default registry (one vLLM API server).
    Single,
    /// In `PROMETHEUS_MULTIPROC_DIR`, written by this many processes and
    /// read back by a `MultiProcessCollector` (several vLLM API servers).
    Multi(usize),
}

/// A running exporter, killed when dropped.
pub struct Exporter {
    pub addr: SocketAddr,
    pub proc: Proc,
    /// Removed after the process (fields drop in order).
    _multiproc_dir: Option<tempfile::TempDir>,
}

/// A file of `shared/fixtures/metrics`, next to the repository.
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("../shared/fixtures/metrics").join(name)
}

/// The directory holding the exporter's Python packages, installed first
/// if they are not (which needs PyPI; `scripts/test` installs them before
/// the tests go offline). Once per test binary, so that concurrent tests do
/// not install side by side.
pub async fn python_packages() -> anyhow::Result<PathBuf> {
    static PACKAGES: OnceCell<PathBuf> = OnceCell::const_new();
    PACKAGES.get_or_try_init(install).await.cloned()
}

async fn install() -> anyhow::Result<PathBuf> {
    let output = Command::new(workspace().join("scripts/fetch-python-exporter"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("run scripts/fetch-python-exporter")?;
    if !output.status.success() {
        bail!(
            "scripts/fetch-python-exporter failed ({}): run it where PyPI is reachable",
            output.status
        );
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

impl Exporter {
    /// Starts the exporter of [`DP2_FIXTURE`] on a free loopback port and
    /// returns once it accepts connections.
    pub async fn start(wiring: Wiring, processes: Processes) -> anyhow::Result<Self> {
        let packages = python_packages().await?;
        let mut cmd = Command::new("python3");
        cmd.arg(workspace().join("tests/exporter/vllm_metrics.py"))
            .arg("--fixture")
            .arg(fixture(DP2_FIXTURE))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--wiring")
            .arg(match wiring {
                Wiring::Current => "current",
                Wiring::Asgi => "asgi",
            })
            .env("PYTHONPATH", packages)
            .env_remove("PROMETHEUS_MULTIPROC_DIR");
        let multiproc_dir = match processes {
            Processes::Single => None,
            Processes::Multi(writers) => {
                let dir = tempfile::tempdir()?;
                cmd.env("PROMETHEUS_MULTIPROC_DIR", dir.path())
                    .args(["--writers", &writers.to_string()]);
                Some(dir)
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start python3 tests/exporter/vllm_metrics.py")?;
        let stdout = child.stdout.take().context("exporter stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the exporter did not report its address")??
            .context("the exporter exited before reporting its address")?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected exporter line {line:?}"))?;
        Ok(Self {
            addr,
            proc: Proc { child },
            _multiproc_dir: multiproc_dir,
        })
    }

    /// CPU time (user + system) the serving process has used so far, in
    /// clock ticks (`/proc/<pid>/stat`; 100 a second on Linux).
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.pid()))?;
        // The command name (field 2) may hold spaces; count from after it.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("no ')' in /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after field 3.
        let tick = |i: usize| -> anyhow::Result<u64> {
            Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse()?)
        };
        Ok(tick(11)? + tick(12)?)
    }
}
