//! The aggregator stream against a real in-process tonic server.

#[path = "support/aggregator.rs"]
mod aggregator;
#[path = "support/certs.rs"]
mod certs;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aggregator::{TestAggregator, within};
use certs::{Pki, SERVER_NAME};
use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;
use wva_agent::args::{Args, DEFAULT_INTERVAL};
use wva_agent::latest::{self, Publisher};
use wva_agent::stream::{self, StreamConfig, StreamError};
use wva_agent::telemetry::Telemetry;
use wva_proto::v1::{Role, Sample};

fn args(aggregator: &str, extra: &[&str]) -> Args {
    let base = [
        "wva-agent",
        "--target",
        "http://127.0.0.1:8000/metrics",
        "--aggregator",
        aggregator,
        "--pod-name",
        "vllm-0",
        "--namespace",
        "serving",
        "--variant",
        "llama-8b-h100",
    ];
    Args::try_parse_from(base.iter().chain(extra)).unwrap()
}

fn sample(seq: u64) -> Sample {
    Sample {
        seq,
        up: true,
        ..Sample::default()
    }
}

/// A running stream task fed by hand-built samples.
struct Agent {
    publisher: Publisher,
    interval: watch::Receiver<Duration>,
    telemetry: Arc<Telemetry>,
    stop: Option<watch::Sender<()>>,
    task: JoinHandle<()>,
}

impl Agent {
    fn start(args: &Args) -> Self {
        wva_agent::tls::install_crypto_provider();
        let config = StreamConfig::from_args(args).unwrap();
        config.validate().unwrap();
        let (publisher, subscriber) = latest::channel();
        let (interval_tx, interval) = watch::channel(args.interval.unwrap_or(DEFAULT_INTERVAL));
        let (stop, stop_rx) = watch::channel(());
        let telemetry = Arc::new(Telemetry::new());
        let task = tokio::spawn(stream::run(
            config,
            subscriber,
            Arc::new(interval_tx),
            telemetry.clone(),
            stop_rx,
        ));
        Agent {
            publisher,
            interval,
            telemetry,
            stop: Some(stop),
            task,
        }
    }

    fn publish(&self, seq: u64) -> bool {
        self.publisher.publish(sample(seq))
    }
}

fn http_url(server: &TestAggregator) -> String {
    format!("http://{}", server.addr)
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

#[tokio::test]
async fn hello_comes_first_then_samples_in_order() {
    let mut server = TestAggregator::start(None).await;
    let args = args(
        &http_url(&server),
        &[
            "--role",
            "epp",
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--model",
            "lora-a",
            "--accelerator",
            "H100",
            "--pod-uid",
            "3f0c6a",
            "--interval",
            "2s",
        ],
    );
    let agent = Agent::start(&args);
    let mut conn = server.accept().await;

    let hello = conn.hello().await;
    assert_eq!(hello.pod, "vllm-0");
    assert_eq!(hello.namespace, "serving");
    assert_eq!(hello.variant, "llama-8b-h100");
    assert_eq!(hello.role(), Role::Epp);
    assert_eq!(hello.models, ["meta-llama/Llama-3.1-8B-Instruct", "lora-a"]);
    assert_eq!(hello.accelerator, "H100");
    assert_eq!(hello.pod_uid, "3f0c6a");
    assert_eq!(hello.interval_ms, 2000);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(conn.authorization(), None);

    for seq in 1..=3 {
        assert!(!agent.publish(seq));
        assert_eq!(conn.sample().await.seq, seq);
    }
    assert_eq!(agent.telemetry.samples_sent.get(), 3);
    assert_eq!(agent.telemetry.samples_dropped.get(), 0);
    assert_eq!(agent.telemetry.stream_connected.get(), 1);
}

#[tokio::test]
async fn token_is_sent_and_reread_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write(&token, "first-token\n");
    let mut server = TestAggregator::start(None).await;
    let args = args(
        &http_url(&server),
        &["--token-file", token.to_str().unwrap()],
    );
    let agent = Agent::start(&args);

    let mut conn = server.accept().await;
    conn.hello().await;
    assert_eq!(conn.authorization(), Some("Bearer first-token"));

    // The kubelet rotates the projected token in place.
    write(&token, "second-token");
    drop(conn);
    let mut conn = server.accept().await;
    conn.hello().await;
    assert_eq!(conn.authorization(), Some("Bearer second-token"));
    assert_eq!(agent.telemetry.stream_failure("closed").get(), 1);
    assert_eq!(agent.telemetry.stream_reconnects.get(), 1);
}

#[tokio::test]
async fn unreadable_token_fails_validation_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-token");
    let empty = dir.path().join("empty-token");
    write(&empty, " \n");
    for (path, expected) in [(&missing, "cannot read token file"), (&empty, "is empty")] {
        let args = args(
            "http://127.0.0.1:1",
            &["--token-file", path.to_str().unwrap()],
        );
        let err = StreamConfig::from_args(&args)
            .unwrap()
            .validate()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(expected) && text.contains(path.to_str().unwrap()),
            "{text}"
        );
        assert_eq!(err.metric_label(), "token");
    }
}

#[tokio::test]
async fn server_closing_or_failing_the_stream_leads_to_a_reconnect() {
    let mut server = TestAggregator::start(None).await;
    let agent = Agent::start(&args(&http_url(&server), &[]));

    let mut conn = server.accept().await;
    conn.hello().await;
    agent.publish(1);
    assert_eq!(conn.sample().await.seq, 1);
    drop(conn);

    // The sample sent on the closed stream is not repeated; the next one
    // is the first on the new stream.
    let mut conn = server.accept().await;
    conn.hello().await;
    agent.publish(2);
    assert_eq!(conn.sample().await.seq, 2);

    conn.fail(Status::permission_denied(
        "pod vllm-0 is not in variant llama-8b-h100",
    ))
    .await;
    let mut conn = server.accept().await;
    conn.hello().await;
    agent.publish(3);
    assert_eq!(conn.sample().await.seq, 3);

    let t = &agent.telemetry;
    assert_eq!(t.stream_failure("closed").get(), 1);
    assert_eq!(t.stream_failure("broken").get(), 1);
    assert_eq!(t.stream_reconnects.get(), 2);
    assert_eq!(t.samples_dropped.get(), 0);
}

#[tokio::test]
async fn after_a_refusal_the_first_sample_is_the_latest() {
    let mut server = TestAggregator::start(None).await;
    let refused = server.refuse_next(Status::unavailable("aggregator is starting"));
    let agent = Agent::start(&args(&http_url(&server), &[]));
    within("the refusal", refused).await.unwrap();

    // Nothing queues up while the aggregator is away, and the refused
    // attempt consumed nothing.
    assert!(!agent.publish(1));
    assert!(agent.publish(2), "1 was overwritten unsent");
    assert!(agent.publish(3), "2 was overwritten unsent");

    let mut conn = server.accept().await;
    conn.hello().await;
    assert_eq!(conn.sample().await.seq, 3);
    assert_eq!(agent.telemetry.stream_failure("refused").get(), 1);
    assert_eq!(agent.telemetry.stream_reconnects.get(), 1);
    assert_eq!(agent.telemetry.samples_sent.get(), 1);
}

#[tokio::test]
async fn set_interval_is_applied_clamped_and_reported() {
    let mut server = TestAggregator::start(None).await;
    let mut agent = Agent::start(&args(&http_url(&server), &[]));

    let mut conn = server.accept().await;
    assert_eq!(conn.hello().await.interval_ms, 1000);
    for (requested, applied) in [(250, 250), (5, 100), (3_600_000, 60_000)] {
        conn.set_interval(requested).await;
        within("the interval change", agent.interval.changed())
            .await
            .unwrap();
        assert_eq!(
            *agent.interval.borrow_and_update(),
            Duration::from_millis(applied)
        );
    }
    drop(conn);
    let mut conn = server.accept().await;
    assert_eq!(conn.hello().await.interval_ms, 60_000);
}

/// An agent given the CA by `ca` (a flag and its value) and a client
/// certificate streams to an aggregator serving TLS.
async fn streams_over_tls(pki: &Pki, ca: [&str; 2]) {
    let mut server = TestAggregator::start(Some(pki.server_tls())).await;
    let tls = [
        "--tls-cert",
        pki.client_cert.to_str().unwrap(),
        "--tls-key",
        pki.client_key.to_str().unwrap(),
        "--tls-server-name",
        SERVER_NAME,
    ];
    let args = args(
        &format!("https://{}", server.addr),
        &[&ca[..], &tls].concat(),
    );
    let agent = Agent::start(&args);
    let mut conn = server.accept().await;
    assert_eq!(conn.hello().await.pod, "vllm-0");
    agent.publish(1);
    assert_eq!(conn.sample().await.seq, 1);
}

#[tokio::test]
async fn tls_with_ca_and_client_certificate() {
    let pki = Pki::new();
    streams_over_tls(&pki, ["--tls-ca", pki.ca.to_str().unwrap()]).await;
}

/// The injection webhook hands agents the aggregator's CA as text.
#[tokio::test]
async fn tls_with_the_ca_given_as_text() {
    let pki = Pki::new();
    let ca = std::fs::read_to_string(&pki.ca).unwrap();
    streams_over_tls(&pki, ["--tls-ca-pem", &ca]).await;

    let url = "https://aggregator:9443";
    let garbled = args(url, &["--tls-ca-pem", "not a certificate"]);
    let err = StreamConfig::from_args(&garbled)
        .unwrap()
        .tls
        .unwrap()
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CA --tls-ca-pem holds no valid PEM certificate"
    );
}

#[tokio::test]
async fn wrong_ca_fails_the_connection_with_the_reason() {
    wva_agent::tls::install_crypto_provider();
    let pki = Pki::new();
    let server = TestAggregator::start(Some(pki.server_tls())).await;
    let other_ca = pki.other_ca();
    let args = args(
        &format!("https://{}", server.addr),
        &[
            "--tls-ca",
            other_ca.to_str().unwrap(),
            "--tls-cert",
            pki.client_cert.to_str().unwrap(),
            "--tls-key",
            pki.client_key.to_str().unwrap(),
            "--tls-server-name",
            SERVER_NAME,
        ],
    );
    let config = StreamConfig::from_args(&args).unwrap();
    let err = stream::connect(&config).await.unwrap_err();
    assert!(matches!(err, StreamError::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(err.metric_label(), "connect");
}

#[tokio::test]
async fn tls_flags_without_https_are_rejected() {
    let err =
        StreamConfig::from_args(&args("http://127.0.0.1:1", &["--tls-ca", "ca.pem"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS flags need an https:// aggregator URL, not http://127.0.0.1:1/"
    );
}

#[tokio::test]
async fn stop_ends_the_stream_cleanly() {
    let mut server = TestAggregator::start(None).await;
    let mut agent = Agent::start(&args(&http_url(&server), &[]));
    let mut conn = server.accept().await;
    conn.hello().await;

    drop(agent.stop.take());
    // The aggregator sees the end of the stream, not an error.
    let end = within("the end of the stream", conn.inbound.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    drop(conn);
    within("the stream task", &mut agent.task).await.unwrap();
    assert_eq!(agent.telemetry.stream_connected.get(), 0);
}

/// Each agent process says who it is, the same on every stream it opens, so
/// the aggregator can tell its reconnect from another agent's claim.
#[test]
fn every_agent_has_an_instance_of_its_own_kept_across_targets() {
    let args = args("http://aggregator:9090", &[]);
    let one = StreamConfig::from_args(&args).unwrap();
    let other = StreamConfig::from_args(&args).unwrap();
    assert_eq!(one.hello.instance.len(), 16, "{:?}", one.hello.instance);
    assert_ne!(one.hello.instance, other.hello.instance);
    let target = one.for_target("http://10.0.0.7:9090".parse().unwrap(), &one.aggregator);
    assert_eq!(target.hello.instance, one.hello.instance);
}
