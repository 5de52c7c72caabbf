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
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use wva_core::admission::{Admission, Refusal, RefusalCode};
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::store::{Offer, PodKey, PodStore, RegisterError, Takeover};
use wva_core::verdict::Verdict;
use wva_proto::v1::telemetry_server::Telemetry;
use wva_proto::v1::{
    Accepted, AgentMessage, ControlMessage, Hello, Role, Sample, agent_message, control_message,
};
use wva_proto::{MAX_MESSAGE_BYTES, MAX_SIGNAL_NAME_BYTES, MAX_SIGNALS};

use super::admission;
use super::taps::Taps;
use super::throttle::Throttle;
use crate::runtime::trigger::Trigger;
use crate::telemetry::SelfMetrics;

/// Least time between two warnings about rejected streams, and between two
/// about one stream's invalid samples (the counters count every one).
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(1);
const INVALID_LOG_EVERY: Duration = Duration::from_secs(60);

/// Least silence of a pod's agent before a stream from another agent may
/// take the pod over, where the credential does not prove the pod (three of
/// the holder's scrape intervals when longer).
const TAKEOVER_SILENCE: Duration = Duration::from_secs(3);

/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ingest {
    store: Arc<PodStore>,
    trigger: Arc<Trigger>,
    /// The thresholds each sample's verdict is judged against.
    saturation: watch::Receiver<Arc<SaturationConfigSet>>,
    metrics: Arc<SelfMetrics>,
    admission: Arc<dyn Admission>,
    /// Pods an operator taps (diagnostics).
    taps: Arc<Taps>,
    next_stream: AtomicU64,
    /// Rejected streams are logged at most once a second.
    rejections: Throttle,
    /// Ends every stream with UNAVAILABLE so agents move on at once.
    shutdown: CancellationToken,
}

impl Ingest {
    pub fn new(
        store: Arc<PodStore>,
        trigger: Arc<Trigger>,
        saturation: watch::Receiver<Arc<SaturationConfigSet>>,
        metrics: Arc<SelfMetrics>,
        admission: Arc<dyn Admission>,
        taps: Arc<Taps>,
        shutdown: CancellationToken,
    ) -> Self {
        Ingest {
            store,
            trigger,
            saturation,
            metrics,
            admission,
            taps,
            next_stream: AtomicU64::new(1),
            rejections: Throttle::new(REJECTION_LOG_EVERY),
            shutdown,
        }
    }

    fn refuse(&self, refusal: Refusal) -> Status {
        self.metrics.stream_refused(refusal.reason);
        self.reject(admission::status(&refusal))
    }

    fn reject(&self, status: Status) -> Status {
        self.metrics.stream_rejected(status.code());
        if let Some(left_out) = self.rejections.allow() {
            warn!(code = ?status.code(), message = status.message(), left_out, "rejected agent stream");
        }
        status
    }
}

/// Longest name a Hello or Sample may carry: Kubernetes object names are at
/// most 253 bytes, and served model names are shorter.
pub const MAX_NAME_BYTES: usize = 253;
/// Models one Hello may list.
const MAX_HELLO_MODELS: usize = 64;
/// Models one sample may carry (a base model and its LoRA adapters); with
/// the store's pod cap this bounds the memory of every sample held.
const MAX_SAMPLE_MODELS: usize = 64;

/// `text` cut to `MAX_NAME_BYTES` (at a character boundary) for logs and
/// error messages, so a hostile value cannot flood either.
fn clip(text: &str) -> String {
    if text.len() <= MAX_NAME_BYTES {
        return text.to_string();
    }
    let mut end = MAX_NAME_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
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
    let named = required.into_iter().chain([
        ("pod_uid", &hello.pod_uid),
        ("accelerator", &hello.accelerator),
        ("agent_version", &hello.agent_version),
        ("instance", &hello.instance),
    ]);
    for (field, value) in named.chain(hello.models.iter().map(|m| ("models[]", m))) {
        if value.len() > MAX_NAME_BYTES {
            return Err(format!(
                "hello.{field} is {} bytes, over {MAX_NAME_BYTES}: {}",
                value.len(),
                clip(value)
            ));
        }
    }
    if hello.models.len() > MAX_HELLO_MODELS {
        return Err(format!(
            "hello.models lists {} models, over {MAX_HELLO_MODELS}",
            hello.models.len()
        ));
    }
    match Role::try_from(hello.role) {
        Ok(Role::Vllm | Role::Epp | Role::Generic) => Ok(()),
        _ => Err(format!(
            "hello.role must be VLLM, EPP or GENERIC, got {}",
            hello.role
        )),
    }
}

/// Longest error text a failed scrape's sample may carry.
const MAX_ERROR_BYTES: usize = 1024;

/// Operator-configured signals are bounded as the agent bounds its flags,
/// so that they cannot grow what the store holds per pod, and carry finite
/// values (an unmatched signal is absent, never NaN).
fn check_signals(sample: &Sample) -> Result<(), String> {
    if sample.signals.len() > MAX_SIGNALS {
        return Err(format!(
            "the sample carries {} signals, over {MAX_SIGNALS}",
            sample.signals.len()
        ));
    }
    for signal in &sample.signals {
        if signal.name.is_empty() || signal.name.len() > MAX_SIGNAL_NAME_BYTES {
            return Err(format!(
                "signal name of {} bytes, outside 1..={MAX_SIGNAL_NAME_BYTES}: {}",
                signal.name.len(),
                clip(&signal.name)
            ));
        }
        if !signal.value.is_finite() {
            return Err(format!(
                "signal {:?} = {} is not a finite number",
                signal.name, signal.value
            ));
        }
    }
    Ok(())
}

/// An invalid sample as the store keeps it: a failed scrape saying why,
/// holding none of what it carried. Only its sequence and timing are kept,
/// so a field added to `Sample` later is dropped too.
fn as_failed_scrape(sample: Sample, error: &str) -> Sample {
    Sample {
        seq: sample.seq,
        scraped_at_ms: sample.scraped_at_ms,
        scrape_duration_us: sample.scrape_duration_us,
        up: false,
        error: format!("invalid sample: {error}"),
        ..Sample::default()
    }
}

/// Checks that a sample is bounded and its signals usable numbers, whether
/// or not it reports a successful scrape; the error names the field.
pub fn validate_sample(sample: &Sample) -> Result<(), String> {
    if sample.error.len() > MAX_ERROR_BYTES {
        return Err(format!(
            "error text of {} bytes, over {MAX_ERROR_BYTES}",
            sample.error.len()
        ));
    }
    let epp = sample.epp.as_ref();
    let lists = [
        ("models", sample.models.len()),
        ("endpoint picker queues", epp.map_or(0, |e| e.queues.len())),
        ("endpoint picker pools", epp.map_or(0, |e| e.pools.len())),
    ];
    for (what, len) in lists {
        if len > MAX_SAMPLE_MODELS {
            return Err(format!(
                "the sample carries {len} {what}, over {MAX_SAMPLE_MODELS}"
            ));
        }
    }
    check_signals(sample)?;
    let names = (sample.models.iter().map(|m| ("model", &m.model)))
        .chain(
            epp.iter()
                .flat_map(|e| &e.queues)
                .map(|q| ("queue model", &q.model)),
        )
        .chain(epp.iter().flat_map(|e| &e.pools).map(|p| ("pool", &p.pool)));
    for (what, name) in names {
        if name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{what} name of {} bytes, over {MAX_NAME_BYTES}: {}",
                name.len(),
                clip(name)
            ));
        }
    }
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
    // An endpoint picker's queue can wake a model from zero and keep it
    // awake, so it must be a real count too.
    for q in sample.epp.iter().flat_map(|e| &e.queues) {
        let checks = [("queue_size", q.queue_size), ("queue_bytes", q.queue_bytes)];
        for (field, value) in checks {
            if !(0.0..=f64::MAX).contains(&value) {
                return Err(format!(
                    "endpoint picker queue of model {:?}: {field} = {value} is not a finite count >= 0",
                    clip(&q.model)
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
        let token = admission::bearer(request.metadata().get("authorization"))
            .map_err(|r| self.refuse(r))?;
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
        let mut hello = hello;
        // The cluster, not the agent, says which variant a pod feeds.
        hello.variant = self
            .admission
            .admit(token.as_deref(), &hello)
            .await
            .map_err(|r| self.refuse(r))?;

        let key = PodKey {
            namespace: hello.namespace.clone(),
            pod: hello.pod.clone(),
        };
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        info!(pod = %key, variant = %hello.variant, role = hello.role, agent_version = %hello.agent_version, "agent connected");
        let takeover = if self.admission.proves_pod() {
            Takeover::Anyone
        } else {
            Takeover::SameAgentOrSilent {
                least_silence: TAKEOVER_SILENCE,
            }
        };
        let replaced = self
            .store
            .try_register(key.clone(), stream_id, hello, Instant::now(), takeover)
            .map_err(|e| match e {
                RegisterError::Full { .. } | RegisterError::OverBudget { .. } => {
                    self.reject(Status::resource_exhausted(e.to_string()))
                }
                RegisterError::Held { .. } => self.refuse(Refusal::new(
                    RefusalCode::FailedPrecondition,
                    "pod_in_use",
                    e.to_string(),
                )),
            })?;
        if let Some(old) = replaced {
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
                this.taps.close(&key);
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
        let shutdown = self.shutdown.clone();
        let invalid = Throttle::new(INVALID_LOG_EVERY);
        // The verdict of the pod's latest sample: when a sample changes it,
        // the analysis runs soon rather than at its next batch.
        let mut verdict = Verdict::default();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                _ = shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("aggregator shutting down"))).await;
                    return "aggregator shutting down".to_string();
                }
            };
            let message = match next {
                Ok(Some(m)) => m,
                Ok(None) => return "stream closed by agent".to_string(),
                Err(status) => {
                    // The decoder refuses a message over the limit (as
                    // OUT_OF_RANGE) and the stream cannot go on: say so,
                    // with the code that names the cause, and count it.
                    let status = if status.code() == Code::OutOfRange {
                        self.metrics.sample_rejected("too_large");
                        Status::resource_exhausted(format!(
                            "message over the {MAX_MESSAGE_BYTES}-byte limit: {}",
                            status.message()
                        ))
                    } else {
                        status
                    };
                    let end = format!("stream error: {}", status.message());
                    let _ = tx.send(Err(status)).await;
                    return end;
                }
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
                    if let Some(left_out) = invalid.allow() {
                        warn!(pod = %key, error = %e, left_out, "invalid sample treated as a failed scrape");
                    }
                    as_failed_scrape(sample, &e)
                }
            };
            self.taps.offer(key, &sample);
            let judged = Verdict::of(&sample, &key.namespace, &self.saturation.borrow());
            match self.store.offer(key, stream_id, sample, now) {
                Offer::Accepted => {
                    self.metrics.sample_received();
                    if std::mem::replace(&mut verdict, judged) == judged {
                        self.trigger.fire(now);
                    } else {
                        self.trigger.fire_urgent(now);
                    }
                }
                Offer::OverBudget => {
                    self.metrics.sample_rejected("memory_budget");
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

#[cfg(test)]
mod tests {
    use wva_proto::v1::{EppModelQueue, EppPool, EppSignals, ModelSignals, NamedValue};

    use super::*;

    fn hello() -> Hello {
        Hello {
            pod: "llama-0".to_string(),
            namespace: "ns".to_string(),
            role: Role::Vllm as i32,
            variant: "llama-l4".to_string(),
            ..Hello::default()
        }
    }

    fn signals(kv: f64, waiting: f64, running: f64) -> ModelSignals {
        ModelSignals {
            model: "meta/llama".to_string(),
            kv_cache_usage: kv,
            requests_waiting: waiting,
            requests_running: running,
            ..ModelSignals::default()
        }
    }

    fn sample(models: Vec<ModelSignals>) -> Sample {
        Sample {
            seq: 1,
            up: true,
            models,
            ..Sample::default()
        }
    }

    /// Whatever a sample says of its scrape, what it carries is bounded:
    /// memory is spent on it before it is judged.
    #[test]
    fn failed_scrapes_and_endpoint_picker_lists_are_bounded_too() {
        let down = Sample {
            up: false,
            ..sample(vec![signals(0.1, 0.0, 0.0); MAX_SAMPLE_MODELS + 1])
        };
        let error = validate_sample(&down).unwrap_err();
        assert!(error.contains("65 models"), "{error}");
        let talkative = Sample {
            up: false,
            error: "x".repeat(MAX_ERROR_BYTES + 1),
            ..sample(Vec::new())
        };
        let error = validate_sample(&talkative).unwrap_err();
        assert!(error.starts_with("error text of 1025 bytes"), "{error}");
        let pools = Sample {
            epp: Some(EppSignals {
                pools: vec![EppPool::default(); MAX_SAMPLE_MODELS + 1],
                ..EppSignals::default()
            }),
            ..sample(Vec::new())
        };
        let error = validate_sample(&pools).unwrap_err();
        assert!(error.contains("65 endpoint picker pools"), "{error}");
        let named = Sample {
            epp: Some(EppSignals {
                pools: vec![EppPool {
                    pool: "p".repeat(MAX_NAME_BYTES + 1),
                    ..EppPool::default()
                }],
                ..EppSignals::default()
            }),
            ..sample(Vec::new())
        };
        let error = validate_sample(&named).unwrap_err();
        assert!(error.starts_with("pool name of 254 bytes"), "{error}");
        let instance = Hello {
            instance: "i".repeat(MAX_NAME_BYTES + 1),
            ..hello()
        };
        let error = validate_hello(&instance).unwrap_err();
        assert!(error.starts_with("hello.instance is 254 bytes"), "{error}");
    }

    #[test]
    fn forwarded_signals_are_bounded_named_and_finite() {
        let signal = |name: &str, value: f64| NamedValue {
            name: name.into(),
            value,
        };
        let forwarded = |signals: Vec<NamedValue>| Sample {
            up: false,
            signals,
            ..sample(Vec::new())
        };
        let within = forwarded(vec![
            signal(&"q".repeat(MAX_SIGNAL_NAME_BYTES), 7.0);
            MAX_SIGNALS
        ]);
        assert_eq!(validate_sample(&within), Ok(()));
        let many = forwarded(vec![signal("queue_depth", 7.0); MAX_SIGNALS + 1]);
        assert_eq!(
            validate_sample(&many),
            Err("the sample carries 17 signals, over 16".into())
        );
        let long = forwarded(vec![signal(&"q".repeat(MAX_SIGNAL_NAME_BYTES + 1), 7.0)]);
        let error = validate_sample(&long).unwrap_err();
        assert!(
            error.starts_with("signal name of 64 bytes, outside 1..=63"),
            "{error}"
        );
        let unnamed = forwarded(vec![signal("", 7.0)]);
        let error = validate_sample(&unnamed).unwrap_err();
        assert!(error.starts_with("signal name of 0 bytes"), "{error}");
        let nan = forwarded(vec![signal("queue_depth", f64::NAN)]);
        assert_eq!(
            validate_sample(&nan),
            Err("signal \"queue_depth\" = NaN is not a finite number".into())
        );
    }

    #[test]
    fn an_invalid_sample_is_kept_as_a_failed_scrape_holding_nothing() {
        let many = Sample {
            seq: 9,
            signals: vec![NamedValue::default(); MAX_SIGNALS + 1],
            epp: Some(EppSignals::default()),
            ..sample(vec![signals(0.1, 0.0, 0.0)])
        };
        let error = validate_sample(&many).unwrap_err();
        let kept = as_failed_scrape(many, &error);
        assert_eq!(
            kept,
            Sample {
                seq: 9,
                up: false,
                error: "invalid sample: the sample carries 17 signals, over 16".into(),
                ..Sample::default()
            }
        );
    }

    #[test]
    fn valid_hello_passes_for_every_role() {
        assert_eq!(validate_hello(&hello()), Ok(()));
        for role in [Role::Epp, Role::Generic] {
            let h = Hello {
                role: role as i32,
                ..hello()
            };
            assert_eq!(validate_hello(&h), Ok(()));
        }
    }

    #[test]
    fn hello_without_identity_names_the_field() {
        type Blank = fn(&mut Hello);
        let cases: [(&str, Blank); 3] = [
            ("hello.pod", |h| h.pod.clear()),
            ("hello.namespace", |h| h.namespace = "  ".to_string()),
            ("hello.variant", |h| h.variant = "\t".to_string()),
        ];
        for (field, blank) in cases {
            let mut h = hello();
            blank(&mut h);
            assert_eq!(
                validate_hello(&h),
                Err(format!("{field} must not be empty")),
                "{field}"
            );
        }
    }

    #[test]
    fn hello_role_must_be_vllm_epp_or_generic() {
        for role in [Role::Unspecified as i32, 7, -1] {
            let h = Hello { role, ..hello() };
            assert_eq!(
                validate_hello(&h),
                Err(format!(
                    "hello.role must be VLLM, EPP or GENERIC, got {role}"
                ))
            );
        }
    }

    #[test]
    fn valid_samples_pass_including_bounds() {
        for s in [
            sample(vec![]),
            sample(vec![signals(0.0, 0.0, 0.0)]),
            sample(vec![signals(1.0, 250.0, 32.0), signals(0.4, 0.0, 1.0)]),
        ] {
            assert_eq!(validate_sample(&s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn sample_with_unusable_signals_names_model_and_field() {
        let cases = [
            (
                signals(1.5, 0.0, 0.0),
                "kv_cache_usage = 1.5 is outside 0..=1",
            ),
            (
                signals(-0.1, 0.0, 0.0),
                "kv_cache_usage = -0.1 is outside 0..=1",
            ),
            (
                signals(f64::NAN, 0.0, 0.0),
                "kv_cache_usage = NaN is outside 0..=1",
            ),
            (signals(0.5, -1.0, 0.0), "requests_waiting = -1 is outside"),
            (
                signals(0.5, f64::INFINITY, 0.0),
                "requests_waiting = inf is outside",
            ),
            (
                signals(0.5, 0.0, f64::NAN),
                "requests_running = NaN is outside",
            ),
        ];
        for (bad, expected) in cases {
            let err = validate_sample(&sample(vec![bad])).expect_err(expected);
            assert!(err.starts_with(r#"model "meta/llama": "#), "{err}");
            assert!(err.contains(expected), "{err} should contain {expected:?}");
        }
    }

    #[test]
    fn one_bad_model_rejects_the_sample() {
        let mut bad = signals(2.0, 0.0, 0.0);
        bad.model = "second".to_string();
        let err = validate_sample(&sample(vec![signals(0.1, 0.0, 0.0), bad])).unwrap_err();
        assert!(
            err.starts_with(r#"model "second": kv_cache_usage"#),
            "{err}"
        );
    }

    #[test]
    fn oversized_names_are_refused_and_quoted_short() {
        let huge = "p".repeat(100_000);
        let mut long_pod = hello();
        long_pod.pod = huge.clone();
        let err = validate_hello(&long_pod).unwrap_err();
        assert!(
            err.starts_with("hello.pod is 100000 bytes, over 253"),
            "{err}"
        );
        assert!(err.len() < 600, "{} bytes", err.len());
        let mut many = hello();
        many.models = (0..65).map(|i| format!("m{i}")).collect();
        assert!(validate_hello(&many).unwrap_err().contains("65 models"));
        let crowded = sample((0..65).map(|_| signals(0.1, 0.0, 0.0)).collect());
        assert!(validate_sample(&crowded).unwrap_err().contains("65 models"));

        let mut model = signals(0.1, 0.0, 0.0);
        model.model = "é".repeat(50_000);
        let err = validate_sample(&sample(vec![model])).unwrap_err();
        assert!(
            err.starts_with("model name of 100000 bytes, over 253"),
            "{err}"
        );
        assert!(err.len() < 600, "{} bytes", err.len());
    }

    #[test]
    fn an_endpoint_pickers_queue_must_be_a_finite_count() {
        let picker = |size: f64| Sample {
            up: true,
            epp: Some(EppSignals {
                queues: vec![EppModelQueue {
                    model: "m".into(),
                    queue_size: size,
                    queue_bytes: 0.0,
                }],
                ..EppSignals::default()
            }),
            ..Sample::default()
        };
        assert!(validate_sample(&picker(3.0)).is_ok());
        for bad in [f64::INFINITY, f64::NAN, -1.0] {
            let err = validate_sample(&picker(bad)).unwrap_err();
            assert!(
                err.starts_with(r#"endpoint picker queue of model "m": queue_size"#),
                "{err}"
            );
        }
    }

    #[test]
    fn failed_scrape_is_not_checked() {
        let down = Sample {
            up: false,
            error: "connection refused".to_string(),
            ..sample(vec![signals(f64::NAN, -1.0, -1.0)])
        };
        assert_eq!(validate_sample(&down), Ok(()));
    }
}
