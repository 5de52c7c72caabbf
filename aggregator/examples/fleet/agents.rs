//! The fleet: one task per agent, each with its own HTTP/2 connection,
//! sending a `Hello` and then one sample per interval (at a phase of its
//! own), or as fast as flow control allows when flooding.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, Counters, Hello, ModelSignals, Role, Sample, agent_message};

pub const NAMESPACE: &str = "fleet";

/// Connections being set up at once: the aggregator's listen backlog takes
/// a burst of this size without dropping handshakes.
const CONNECTING_AT_ONCE: usize = 256;

pub fn model(m: usize) -> String {
    format!("fleet/model-{m}")
}

pub fn deployment(m: usize) -> String {
    format!("model-{m}")
}

pub struct Fleet {
    pub url: String,
    pub models: usize,
    /// Samples per second per agent; 0 floods.
    pub rate: f64,
}

impl Fleet {
    /// Starts `n` agents; pod `i` serves model `i % models`.
    pub fn spawn(&self, n: usize) -> JoinSet<anyhow::Result<()>> {
        let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
        let mut set = JoinSet::new();
        for i in 0..n {
            let agent = Agent {
                url: self.url.clone(),
                pod: format!("pod-{i}"),
                model: model(i % self.models),
                deployment: deployment(i % self.models),
                // Steady, below every threshold: no sample changes a verdict.
                kv: 0.3 + (i % 20) as f64 * 0.01,
                interval: (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate)),
                phase: i as f64 / n as f64,
            };
            let connecting = Arc::clone(&connecting);
            set.spawn(async move { agent.run(&connecting).await });
        }
        set
    }
}

struct Agent {
    url: String,
    pod: String,
    model: String,
    deployment: String,
    kv: f64,
    interval: Option<Duration>,
    /// Where in its interval this agent sends, as a fraction.
    phase: f64,
}

impl Agent {
    async fn run(self, connecting: &Semaphore) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(message(agent_message::Kind::Hello(hello(
            &self.pod,
            &self.deployment,
            &self.model,
            self.interval,
        ))))
        .await?;
        let _control = {
            let _place = connecting.acquire().await?;
            let channel = Endpoint::from_shared(self.url.clone())?.connect().await?;
            TelemetryClient::new(channel)
                .stream(ReceiverStream::new(rx))
                .await?
                .into_inner()
        };
        let mut ticks = self.interval.map(|every| {
            let start = tokio::time::Instant::now() + every.mul_f64(self.phase);
            tokio::time::interval_at(start, every)
        });
        for seq in 1.. {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            let sample = sample(seq, &self.model, self.kv, seq as f64 * 3.0);
            if tx
                .send(message(agent_message::Kind::Sample(sample)))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

pub fn hello(pod: &str, deployment: &str, model: &str, interval: Option<Duration>) -> Hello {
    Hello {
        pod: pod.into(),
        namespace: NAMESPACE.into(),
        role: Role::Vllm as i32,
        models: vec![model.into()],
        variant: deployment.into(),
        accelerator: "L4".into(),
        agent_version: "fleet".into(),
        interval_ms: interval.map_or(1000, |i| i.as_millis() as u32),
        ..Default::default()
    }
}

/// What an agent scraping a steadily busy vLLM sends.
pub fn sample(seq: u64, model: &str, kv: f64, finished: f64) -> Sample {
    Sample {
        seq,
        scraped_at_ms: 0,
        up: true,
        scrape_duration_us: 900,
        models: vec![ModelSignals {
            model: model.into(),
            kv_cache_usage: kv,
            requests_waiting: 0.0,
            requests_running: 12.0,
            num_gpu_blocks: 26944,
            block_size: 16,
            counters: Some(Counters {
                request_success: finished,
                ..Counters::default()
            }),
            engines: 1,
        }],
        ..Default::default()
    }
}

pub fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}
