//! The telemetry stream to the aggregator.
//!
//! One bidirectional gRPC stream at a time: a Hello, then each new sample from
//! the latest-sample slot; control messages come back. Any failure (connect,
//! refusal, error status, server closing the stream) is logged once and
//! retried with exponential backoff and full jitter. Credentials (token file,
//! TLS files) are read again at every attempt, so rotations take effect at
//! the next reconnect.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Uri;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::Stream;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, ControlMessage, Hello, Role, agent_message, control_message};

use crate::args::{Args, MAX_INTERVAL, MIN_INTERVAL};
use crate::backoff::Backoff;
use crate::latest::{Subscriber, Unsent};
use crate::scrape::error_chain;
use crate::telemetry::Telemetry;
use crate::tls::{TlsError, TlsFiles};
use crate::token::{TokenError, read_bearer};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on TCP connect, TLS and HTTP/2 handshakes together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find a dead peer (node gone, network partition) that TCP
/// would only notice after minutes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the aggregator may take to accept or refuse a stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the aggregator to acknowledge the end.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to aggregator {uri}: {reason}")]
    Connect { uri: Uri, reason: String },
    #[error("aggregator did not answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
    #[error("aggregator refused the stream: {}", describe(.0))]
    Refused(Status),
    #[error("aggregator stream failed: {}", describe(.0))]
    Broken(Status),
    #[error("aggregator closed the stream")]
    Closed,
}

impl StreamError {
    /// Value of the `reason` label of `wva_agent_stream_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StreamError::Token(_) => "token",
            StreamError::Tls(_) => "tls",
            StreamError::Connect { .. } => "connect",
            StreamError::NoAnswer(_) => "no_answer",
            StreamError::Refused(_) => "refused",
            StreamError::Broken(_) => "broken",
            StreamError::Closed => "closed",
        }
    }
}

/// "PermissionDenied: pod not found", plus the transport cause if any.
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub aggregator: Uri,
    /// Set for an https aggregator URL.
    pub tls: Option<TlsFiles>,
    pub token_file: Option<PathBuf>,
    /// Identity sent in every Hello; `interval_ms` is set per connection.
    pub hello: Hello,
}

impl StreamConfig {
    pub fn from_args(args: &Args) -> Result<Self, TlsError> {
        let tls = TlsFiles {
            ca: args.tls_ca.clone(),
            ca_pem: args.tls_ca_pem.clone(),
            client: args.tls_cert.clone().zip(args.tls_key.clone()),
            server_name: args.tls_server_name.clone(),
        };
        let urls = || {
            let all: Vec<String> = args.aggregator.iter().map(Uri::to_string).collect();
            all.join(",")
        };
        let https = args.aggregator_tls();
        if args
            .aggregator
            .iter()
            .any(|u| (u.scheme_str() == Some("https")) != https)
        {
            return Err(TlsError::MixedSchemes(urls()));
        }
        let tls = if https {
            Some(tls)
        } else if tls.any_set() {
            return Err(TlsError::NeedsHttps(urls()));
        } else {
            None
        };
        Ok(StreamConfig {
            // The first target; the fan-out gives each stream its own.
            aggregator: args.aggregator[0].clone(),
            tls,
            token_file: args.token_file.clone(),
            hello: Hello {
                pod: args.pod_name.clone(),
                namespace: args.namespace.clone(),
                role: Role::from(args.role).into(),
                models: args.models.clone(),
                variant: args.variant.clone(),
                accelerator: args.accelerator.clone().unwrap_or_default(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                interval_ms: 0,
                pod_uid: args.pod_uid.clone().unwrap_or_default(),
                instance: instance_id(),
            },
        })
    }

    /// This configuration aimed at `uri`, an address of the configured `url`;
    /// TLS still verifies the configured host's name.
    pub fn for_target(&self, uri: Uri, url: &Uri) -> StreamConfig {
        let mut config = self.clone();
        if let Some(tls) = &mut config.tls
            && tls.server_name.is_none()
            && uri.host() != url.host()
        {
            tls.server_name = url.host().map(str::to_string);
        }
        config.aggregator = uri;
        config
    }

    /// Reads the credentials once, so a misconfigured agent fails at start
    /// with the reason instead of retrying forever.
    pub fn validate(&self) -> Result<(), StreamError> {
        self.endpoint()?;
        self.token()?;
        Ok(())
    }

    fn endpoint(&self) -> Result<Endpoint, StreamError> {
        let endpoint = Endpoint::from(self.aggregator.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match &self.tls {
            None => Ok(endpoint),
            Some(files) => endpoint
                .tls_config(files.load()?)
                .map_err(|e| TlsError::Config(error_chain(&e)).into()),
        }
    }

    /// The `authorization` metadata value, read from the token file now.
    fn token(&self) -> Result<Option<AsciiMetadataValue>, StreamError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        Ok(Some(read_bearer(path)?))
    }
}

/// Opens a connection (TCP, TLS, HTTP/2) to the aggregator.
pub async fn connect(config: &StreamConfig) -> Result<Channel, StreamError> {
    let endpoint = config.endpoint()?;
    let connect_error = |reason| StreamError::Connect {
        uri: config.aggregator.clone(),
        reason,
    };
    match timeout(HANDSHAKE_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(connect_error(error_chain(&e))),
        Err(_) => Err(connect_error(format!(
            "no connection within {}",
            humantime::format_duration(HANDSHAKE_TIMEOUT)
        ))),
    }
}

/// Keeps a stream to the aggregator open until `stop` fires, feeding it the
/// samples of `samples` and applying `SetInterval` to `interval`.
pub async fn run(
    config: StreamConfig,
    samples: Subscriber,
    interval: Arc<watch::Sender<Duration>>,
    telemetry: Arc<Telemetry>,
    stop: watch::Receiver<()>,
) {
    Streamer {
        config,
        samples,
        interval,
        telemetry,
        stop,
    }
    .run()
    .await
}

struct Streamer {
    config: StreamConfig,
    samples: Subscriber,
    interval: Arc<watch::Sender<Duration>>,
    telemetry: Arc<Telemetry>,
    stop: watch::Receiver<()>,
}

impl Streamer {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            let mut connected_at = None;
            let result = self.session(&mut connected_at).await;
            if connected_at.is_some() {
                self.telemetry.stream_connected.dec();
            }
            let Err(error) = result else { return };
            self.telemetry.stream_failure(error.metric_label()).inc();
            backoff.session_ended(connected_at.is_some());
            let delay = backoff.next_delay(&mut rand::rng());
            warn!(
                aggregator = %self.config.aggregator,
                %error,
                retry_in = %humantime::format_duration(delay),
                "aggregator stream failed"
            );
            tokio::select! {
                _ = sleep(delay) => {}
                _ = self.stop.changed() => return,
            }
            self.telemetry.stream_reconnects.inc();
        }
    }

    /// One connection; `Ok` when stopped, the reason it ended otherwise.
    async fn session(&mut self, connected_at: &mut Option<Instant>) -> Result<(), StreamError> {
        let token = self.config.token()?;
        let channel = tokio::select! {
            channel = connect(&self.config) => channel?,
            _ = self.stop.changed() => return Ok(()),
        };
        // Samples wait until the aggregator accepts the stream, so a refused
        // attempt consumes none. Dropping `close` ends this connection's
        // outbound half, whichever way the session returns.
        let (accept, accepted) = oneshot::channel::<()>();
        let (close, closed) = oneshot::channel::<()>();
        let hello = Hello {
            interval_ms: u32::try_from(self.interval.borrow().as_millis()).unwrap_or(u32::MAX),
            ..self.config.hello.clone()
        };
        let outbound = Outbound {
            hello: Some(hello),
            accepted: Some(accepted),
            samples: self.samples.unsent(),
            closed,
            done: false,
            sent: self.telemetry.samples_sent.clone(),
        };
        let mut request = tonic::Request::new(outbound);
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", token);
        }
        let mut client = TelemetryClient::new(channel);
        let answer = tokio::select! {
            answer = timeout(ANSWER_TIMEOUT, client.stream(request)) => answer,
            _ = self.stop.changed() => return Ok(()),
        };
        let mut inbound = answer
            .map_err(|_| StreamError::NoAnswer(ANSWER_TIMEOUT))?
            .map_err(StreamError::Refused)?
            .into_inner();
        // The receiver is gone only if the outbound half already ended.
        let _ = accept.send(());
        *connected_at = Some(Instant::now());
        self.telemetry.stream_connected.inc();
        info!(aggregator = %self.config.aggregator, "stream to aggregator open");
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.control(message),
                    Ok(None) => return Err(StreamError::Closed),
                    Err(status) => return Err(StreamError::Broken(status)),
                },
                _ = self.stop.changed() => {
                    // End our half cleanly and give the aggregator a moment
                    // to end its half, so it sees a goodbye, not an error.
                    drop(close);
                    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
                    let _ = timeout(DRAIN_TIMEOUT, drain).await;
                    return Ok(());
                }
            }
        }
    }

    fn control(&self, message: ControlMessage) {
        match message.kind {
            Some(control_message::Kind::Accepted(accepted)) => info!(
                aggregator_version = %accepted.aggregator_version,
                "aggregator accepted the stream"
            ),
            Some(control_message::Kind::SetInterval(set)) => self.set_interval(set.interval_ms),
            None => debug!("ignoring a control message of an unknown kind"),
        }
    }

    fn set_interval(&self, interval_ms: u32) {
        if interval_ms == 0 {
            warn!("ignoring SetInterval without an interval");
            return;
        }
        let requested = Duration::from_millis(interval_ms.into());
        let interval = requested.clamp(MIN_INTERVAL, MAX_INTERVAL);
        if interval != requested {
            warn!(
                requested = %humantime::format_duration(requested),
                applied = %humantime::format_duration(interval),
                "SetInterval outside the allowed range, clamped"
            );
        }
        let changed = self.interval.send_if_modified(|current| {
            let changed = *current != interval;
            *current = interval;
            changed
        });
        if changed {
            info!(interval = %humantime::format_duration(interval), "scrape interval set by the aggregator");
        }
    }
}

/// Outbound half of one connection: the Hello, then, once the aggregator
/// accepted the stream, each unsent sample.
struct Outbound {
    hello: Option<Hello>,
    /// Resolves when the aggregator answered; `None` once it has.
    accepted: Option<oneshot::Receiver<()>>,
    samples: Unsent,
    closed: oneshot::Receiver<()>,
    done: bool,
    sent: Counter,
}

impl Stream for Outbound {
    type Item = AgentMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AgentMessage>> {
        let this = self.get_mut();
        // The close check comes first so a finished connection never takes
        // a sample away from the next one.
        if this.done || Pin::new(&mut this.closed).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        if let Some(hello) = this.hello.take() {
            return Poll::Ready(Some(message(agent_message::Kind::Hello(hello))));
        }
        if let Some(accepted) = &mut this.accepted {
            if ready!(Pin::new(accepted).poll(cx)).is_err() {
                this.done = true;
                return Poll::Ready(None);
            }
            this.accepted = None;
        }
        match ready!(Pin::new(&mut this.samples).poll_next(cx)) {
            Some(sample) => {
                this.sent.inc();
                Poll::Ready(Some(message(agent_message::Kind::Sample(sample))))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

/// A random id for this agent process, sent in every Hello: 64 bits, enough
/// to tell two agents apart.
fn instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
