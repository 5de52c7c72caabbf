//! gRPC ingest: the `wva.v1.Telemetry/Stream` server.
//!
//! One stream per pod. The first message must be a `Hello`; every later
//! `Sample` replaces the pod's previous one in the [`PodStore`]. When the
//! stream ends, for any reason, the pod leaves the store at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use wva_proto::v1::telemetry_server::Telemetry;
use wva_proto::v1::{
    Accepted, AgentMessage, ControlMessage, Hello, Role, Sample, agent_message, control_message,
};

use crate::store::{Offer, PodKey, PodStore};
use crate::telemetry::SelfMetrics;
use crate::trigger::Trigger;

/// Largest message an agent may send; a Sample is a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ingest {
    store: Arc<PodStore>,
    trigger: Arc<Trigger>,
    metrics: Arc<SelfMetrics>,
    /// Shared secret agents must present as `authorization: Bearer <token>`.
    token: Option<String>,
    next_stream: AtomicU64,
    /// Ends every stream with UNAVAILABLE so agents move on at once.
    shutdown: watch::Receiver<bool>,
}

impl Ingest {
    pub fn new(
        store: Arc<PodStore>,
        trigger: Arc<Trigger>,
        metrics: Arc<SelfMetrics>,
        token: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Ingest {
            store,
            trigger,
            metrics,
            token,
            next_stream: AtomicU64::new(1),
            shutdown,
        }
    }

    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing authorization metadata (Bearer token)")
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        let token = presented.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("authorization metadata must be `Bearer <token>`")
        })?;
        if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("bearer token rejected"))
        }
    }

    fn reject(&self, status: Status) -> Status {
        self.metrics.stream_rejected(status.code());
        warn!(code = ?status.code(), message = status.message(), "rejected agent stream");
        status
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the identity an agent claims; the error names the field.
pub fn validate_hello(hello: &Hello) -> Result<(), String> {
    let required = [
        ("pod", &hello.pod),
        ("namespace", &hello.namespace),
        ("variant", &hello.variant),
    ];
    for (field, value) in required {
        if value.trim().is_empty() {
            return Err(format!("hello.{field} must not be empty"));
        }
    }
    match Role::try_from(hello.role) {
        Ok(Role::Vllm | Role::Epp) => Ok(()),
        _ => Err(format!(
            "hello.role must be VLLM or EPP, got {}",
            hello.role
        )),
    }
}

/// Checks that a sample's signals are usable numbers; the error names the field.
pub fn validate_sample(sample: &Sample) -> Result<(), String> {
    if !sample.up {
        return Ok(());
    }
    for m in &sample.models {
        let checks = [
            ("kv_cache_usage", m.kv_cache_usage, 0.0..=1.0),
            ("requests_waiting", m.requests_waiting, 0.0..=f64::MAX),
            ("requests_running", m.requests_running, 0.0..=f64::MAX),
        ];
        for (field, value, range) in checks {
            if !range.contains(&value) {
                return Err(format!(
                    "model {:?}: {field} = {value} is outside {}..={}",
                    m.model,
                    range.start(),
                    range.end()
                ));
            }
        }
    }
    Ok(())
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// The tonic service: a handle on the shared [`Ingest`].
#[derive(Clone)]
pub struct IngestService(pub Arc<Ingest>);

#[tonic::async_trait]
impl Telemetry for IngestService {
    type StreamStream = ControlStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.0.open(request).await
    }
}

impl Ingest {
    /// Admits a stream: checks credentials and the Hello, registers the pod,
    /// then pumps its samples on a task of their own.
    async fn open(
        self: &Arc<Self>,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ControlStream>, Status> {
        self.check_token(&request).map_err(|s| self.reject(s))?;
        let mut inbound = request.into_inner();

        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| self.reject(Status::deadline_exceeded("no Hello within 10s")))?
            .map_err(|s| self.reject(s))?;
        let hello = match first.and_then(|m| m.kind) {
            Some(agent_message::Kind::Hello(h)) => h,
            _ => {
                return Err(self.reject(Status::invalid_argument(
                    "the first message of a stream must be a Hello",
                )));
            }
        };
        validate_hello(&hello).map_err(|e| self.reject(Status::invalid_argument(e)))?;

        let key = PodKey {
            namespace: hello.namespace.clone(),
            pod: hello.pod.clone(),
        };
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        info!(pod = %key, variant = %hello.variant, role = hello.role, agent_version = %hello.agent_version, "agent connected");
        if let Some(old) = self
            .store
            .register(key.clone(), stream_id, hello, Instant::now())
        {
            debug!(pod = %key, old_stream = old, "a newer stream replaced the previous one");
        }
        self.metrics.set_connected(self.store.len());

        let (tx, rx) = mpsc::channel(4);
        let accepted = ControlMessage {
            kind: Some(control_message::Kind::Accepted(Accepted {
                aggregator_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
        };
        // The channel is empty, so this cannot fail for lack of room.
        let _ = tx.try_send(Ok(accepted));

        let this = Arc::clone(self);
        tokio::spawn(async move {
            let end = this.pump(&key, stream_id, &mut inbound, &tx).await;
            if this.store.remove(&key, stream_id) {
                info!(pod = %key, reason = %end, "agent disconnected; pod left the analysis");
                this.trigger.fire(Instant::now());
            }
            this.metrics.set_connected(this.store.len());
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Moves samples from one stream into the store until it ends; returns why it ended.
    async fn pump(
        &self,
        key: &PodKey,
        stream_id: u64,
        inbound: &mut Streaming<AgentMessage>,
        tx: &mpsc::Sender<Result<ControlMessage, Status>>,
    ) -> String {
        let mut shutdown = self.shutdown.clone();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                _ = crate::shutdown::requested(&mut shutdown) => {
                    let _ = tx.send(Err(Status::unavailable("aggregator shutting down"))).await;
                    return "aggregator shutting down".to_string();
                }
            };
            let message = match next {
                Ok(Some(m)) => m,
                Ok(None) => return "stream closed by agent".to_string(),
                Err(status) => return format!("stream error: {}", status.message()),
            };
            let sample = match message.kind {
                Some(agent_message::Kind::Sample(s)) => s,
                Some(agent_message::Kind::Hello(_)) => {
                    let status = Status::invalid_argument("Hello sent twice on one stream");
                    let _ = tx.send(Err(status)).await;
                    return "Hello sent twice".to_string();
                }
                // A kind this version does not know: skip it, stay compatible.
                None => continue,
            };
            let now = Instant::now();
            let sample = match validate_sample(&sample) {
                Ok(()) => sample,
                Err(e) => {
                    self.metrics.sample_rejected("invalid");
                    warn!(pod = %key, error = %e, "invalid sample treated as a failed scrape");
                    Sample {
                        up: false,
                        error: format!("invalid sample: {e}"),
                        models: Vec::new(),
                        epp: None,
                        ..sample
                    }
                }
            };
            match self.store.offer(key, stream_id, sample, now) {
                Offer::Accepted => {
                    self.metrics.sample_received();
                    self.trigger.fire(now);
                }
                Offer::OutOfOrder { last } => {
                    self.metrics.sample_rejected("out_of_order");
                    debug!(pod = %key, last, "sample with a sequence number that did not advance ignored");
                }
                Offer::Superseded => {
                    let status =
                        Status::aborted(format!("superseded by a newer stream for pod {key}"));
                    let _ = tx.send(Err(status)).await;
                    return "superseded by a newer stream".to_string();
                }
            }
        }
    }
}
