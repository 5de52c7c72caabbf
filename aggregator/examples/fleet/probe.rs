//! The probe: one more agent, of a model of its own, whose every sample
//! carries a new KV-cache reading; a diagnostics watcher on its variant
//! notes when a published decision first shows that reading. The time in
//! between is the sample's way through ingest, store, analysis and
//! publication, as a client of the aggregator sees it.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use wva_proto::v1::diagnostics_client::DiagnosticsClient;
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, DecisionFilter, agent_message};

use super::agents::{self, NAMESPACE};

pub const MODEL: &str = "fleet/probe";
pub const DEPLOYMENT: &str = "probe";
const POD: &str = "probe-0";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProbeKind {
    /// Alternately below and above the KV-cache threshold.
    Verdict,
    /// Always well below it.
    Plain,
    /// No probe: a flooding fleet can keep it from sending for longer than
    /// the staleness bound, and its pod would expire.
    None,
}

pub struct Probe {
    kind: ProbeKind,
    tx: mpsc::Sender<AgentMessage>,
    /// The probe pod's KV-cache reading in the latest published decision.
    seen: watch::Receiver<f64>,
    _control: tonic::Streaming<wva_proto::v1::ControlMessage>,
    _watcher: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub async fn connect(url: &str, kind: ProbeKind) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let hello = agents::hello(POD, DEPLOYMENT, MODEL, None);
        tx.send(agents::message(agent_message::Kind::Hello(hello)))
            .await?;
        let control = TelemetryClient::connect(url.to_string())
            .await?
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut decisions = DiagnosticsClient::connect(url.to_string())
            .await?
            .watch_decisions(DecisionFilter {
                namespace: NAMESPACE.into(),
                variant: DEPLOYMENT.into(),
                ..DecisionFilter::default()
            })
            .await?
            .into_inner();
        let (seen_tx, seen) = watch::channel(f64::NAN);
        let watcher = tokio::spawn(async move {
            while let Ok(Some(snapshot)) = decisions.message().await {
                let kv = snapshot
                    .decisions
                    .iter()
                    .flat_map(|d| &d.inputs)
                    .find(|p| p.pod == POD)
                    .map(|p| p.kv_cache_usage);
                if let Some(kv) = kv {
                    seen_tx.send_replace(kv);
                }
            }
        });
        Ok(Probe {
            kind,
            tx,
            seen,
            _control: control,
            _watcher: watcher,
        })
    }

    /// Sends readings, each awaited in a decision, a random 0.2 to 0.6 s
    /// apart, for `window`.
    pub async fn run_for(mut self, window: Duration) -> anyhow::Result<Latencies> {
        let end = Instant::now() + window;
        let mut latencies = Latencies::default();
        for seq in 1u64.. {
            if Instant::now() >= end {
                break;
            }
            // Unique per sample, so the decision that used it is recognised.
            let base = match self.kind {
                ProbeKind::Verdict if seq % 2 == 1 => 0.95,
                _ => 0.2,
            };
            let kv = base + seq as f64 * 1e-7;
            let sample = agents::sample(seq, MODEL, kv, seq as f64);
            let sent = Instant::now();
            self.tx
                .send(agents::message(agent_message::Kind::Sample(sample)))
                .await?;
            let seen = self.seen.wait_for(|&v| v == kv);
            match tokio::time::timeout(Duration::from_secs(5), seen).await {
                Ok(seen) => {
                    seen?;
                    latencies.0.push(sent.elapsed());
                }
                Err(_) => latencies.1 += 1,
            }
            let pause = rand::rng().random_range(200..600);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(latencies)
    }
}

/// Sample-to-decision times, and the samples no decision showed within 5 s.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>, usize);

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.0.clone();
        sorted.sort();
        let Some(&max) = sorted.last() else {
            return write!(f, "no probe came back ({} lost)", self.1);
        };
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{} probes, median {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} lost",
            sorted.len(),
            ms(at(0.5)),
            ms(at(0.95)),
            ms(at(0.99)),
            ms(max),
            self.1
        )
    }
}
