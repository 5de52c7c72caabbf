//! The aggregator under test: a child process pinned to one core, its
//! variants file, and what /proc and /metrics say about it.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::metrics::{self, Histogram};
use super::{agents, probe};

pub struct Aggregator {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    /// Kernel clock ticks per second, for /proc/<pid>/stat.
    ticks: u64,
}

/// One look at the aggregator's counters and CPU time.
pub struct Reading {
    pub at: Instant,
    pub cpu: Duration,
    pub samples: f64,
    pub analyses: f64,
    pub histogram: Histogram,
}

impl Aggregator {
    /// Writes one variant per model plus the probe's, starts the binary on
    /// `cpu` and waits until it serves.
    pub async fn start(
        binary: &Path,
        cpu: usize,
        dir: &Path,
        models: usize,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let variants = dir.join("variants.yaml");
        std::fs::write(&variants, variants_yaml(models))?;
        let (grpc, http) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("aggregator.log"))?;
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(binary)
            .args(["--standalone", "--variants"])
            .arg(&variants)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--metrics-addr", &http.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let ticks = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
            .trim()
            .parse()?;
        let aggregator = Aggregator {
            child,
            grpc,
            http,
            ticks,
        };
        // Ready once the first analysis ran (after its start-up grace).
        let deadline = Instant::now() + Duration::from_secs(30);
        while metrics::get(http, "/readyz")
            .await
            .map_or(true, |r| !r.contains(" 200 "))
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the aggregator did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(aggregator)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn wait_connected(&self, want: usize) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let body = metrics::get(self.http, "/metrics").await?;
            let n = metrics::value(&body, "wva_connected_agents").unwrap_or(0.0) as usize;
            if n >= want || Instant::now() > deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn reading(&self) -> anyhow::Result<Reading> {
        let body = metrics::get(self.http, "/metrics").await?;
        let counter = |name| metrics::value(&body, name).with_context(|| format!("{name} missing"));
        Ok(Reading {
            at: Instant::now(),
            cpu: self.cpu_time()?,
            samples: counter("wva_samples_received_total")?,
            analyses: counter("wva_analysis_runs_total")?,
            histogram: Histogram::parse(&body, "wva_ingest_to_decision_seconds"),
        })
    }

    /// User plus system time of the whole process.
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(Duration::from_secs_f64(ticks as f64 / self.ticks as f64))
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS")?
            .trim()
            .trim_end_matches(" kB")
            .parse()?;
        Ok(kib * 1024)
    }

    /// The aggregator's own pid: taskset execs it in place.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One VariantAutoscaling per model, each scaling a Deployment of its own,
/// and the probe's.
fn variants_yaml(models: usize) -> String {
    let mut yaml = String::new();
    let names = (0..models)
        .map(|m| (agents::deployment(m), agents::model(m)))
        .chain([(probe::DEPLOYMENT.to_string(), probe::MODEL.to_string())]);
    for (deployment, model) in names {
        let _ = write!(
            yaml,
            "---\napiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata: {{name: {deployment}, namespace: {ns}}}\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: {deployment}}}, modelID: {model}}}\n",
            ns = agents::NAMESPACE,
        );
    }
    yaml
}
