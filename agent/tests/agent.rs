//! The whole agent in-process: scrape loop, stream and own endpoints.

#[path = "support/aggregator.rs"]
mod aggregator;
#[path = "support/target.rs"]
mod target;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator::{TestAggregator, within};
use bytes::Bytes;
use clap::Parser;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use target::{Reply, Target, gzip};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wva_agent::Agent;
use wva_agent::args::Args;

/// A data-parallel vLLM V1 pod (two engine ranks) in the text format.
const VLLM_BODY: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
"#;

struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn run_agent(target: &Uri, aggregator: &str, extra: &[&str]) -> Running {
    let base = [
        "wva-agent",
        "--target",
        &target.to_string(),
        "--aggregator",
        aggregator,
        "--pod-name",
        "vllm-0",
        "--namespace",
        "serving",
        "--variant",
        "llama-8b",
        "--listen",
        "127.0.0.1:0",
    ];
    let args = Args::try_parse_from(base.iter().copied().chain(extra.iter().copied())).unwrap();
    let agent = Agent::start(args).await.unwrap();
    let addr = agent.local_addr();
    let (shutdown, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = signal.await;
    }));
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: Uri = format!("http://{addr}{path}").parse().unwrap();
    let response = within(path, client.get(uri)).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn failed_scrapes_are_streamed_and_probes_follow_the_scrape_loop() {
    let mut target = Target::start(Reply::Hang).await;
    let mut server = TestAggregator::start(None).await;
    let agent = run_agent(
        &target.url,
        &format!("http://{}", server.addr),
        &["--interval", "100ms", "--scrape-timeout", "1s"],
    )
    .await;

    // The first scrape hangs until its timeout: not ready yet, but alive.
    within("the first scrape", target.request()).await;
    assert_eq!(
        get(agent.addr, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(agent.addr, "/healthz").await.0, StatusCode::OK);
    target.set(Reply::Status(StatusCode::SERVICE_UNAVAILABLE));

    let mut conn = server.accept().await;
    assert_eq!(conn.hello().await.interval_ms, 100);
    let first = conn.sample().await;
    assert_eq!((first.seq, first.up), (1, false));
    assert_eq!(first.error, "scrape timed out after 1s");
    let second = conn.sample().await;
    assert_eq!((second.seq, second.up), (2, false));
    assert_eq!(second.error, "target returned HTTP 503");
    assert!(second.scraped_at_ms >= first.scraped_at_ms + 1000);

    assert_eq!(
        get(agent.addr, "/readyz").await,
        (StatusCode::OK, "ok\n".into())
    );
    let (status, metrics) = get(agent.addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "wva_agent_scrape_failures_total{reason=\"timeout\"} 1",
        "wva_agent_stream_connected 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    assert_eq!(get(agent.addr, "/nope").await.0, StatusCode::NOT_FOUND);

    // Shutdown: the aggregator sees a clean end and the agent returns fast.
    agent.shutdown.send(()).unwrap();
    within("the end of the stream", async {
        // Samples already in flight may come first.
        while let Some(message) = conn.inbound.message().await.expect("clean end") {
            assert!(message.kind.is_some());
        }
    })
    .await;
    drop(conn);
    tokio::time::timeout(Duration::from_secs(1), agent.task)
        .await
        .expect("agent did not stop within 1s")
        .unwrap();
}

#[tokio::test]
async fn readiness_does_not_depend_on_the_aggregator() {
    let mut target = Target::start(Reply::Status(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let aggregator = closed_port().await;
    let agent = run_agent(
        &target.url,
        &format!("http://{aggregator}"),
        &["--interval", "100ms"],
    )
    .await;

    // Ticks never overlap: when the second scrape starts, the first is done.
    within("the first scrape", target.request()).await;
    within("the second scrape", target.request()).await;
    assert_eq!(get(agent.addr, "/readyz").await.0, StatusCode::OK);
    let (_, metrics) = get(agent.addr, "/metrics").await;
    assert!(
        metrics.contains("\nwva_agent_stream_connected 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn set_interval_changes_the_cadence() {
    let target = Target::start(Reply::Status(StatusCode::SERVICE_UNAVAILABLE)).await;
    let mut server = TestAggregator::start(None).await;
    let _agent = run_agent(
        &target.url,
        &format!("http://{}", server.addr),
        &["--interval", "60s"],
    )
    .await;

    let mut conn = server.accept().await;
    conn.hello().await;
    // The first tick is immediate; the next would be a minute away.
    assert_eq!(conn.sample().await.seq, 1);
    conn.set_interval(100).await;
    let mut previous = conn.sample().await;
    for _ in 0..3 {
        let sample = conn.sample().await;
        assert_eq!(sample.seq, previous.seq + 1);
        let gap = sample.scraped_at_ms - previous.scraped_at_ms;
        assert!((90..1000).contains(&gap), "{gap} ms between ticks");
        previous = sample;
    }
}

#[tokio::test]
async fn the_first_sample_after_a_reconnect_is_fresh() {
    let target = Target::start(Reply::Status(StatusCode::SERVICE_UNAVAILABLE)).await;
    let mut server = TestAggregator::start(None).await;
    let _agent = run_agent(
        &target.url,
        &format!("http://{}", server.addr),
        &["--interval", "100ms"],
    )
    .await;

    let mut conn = server.accept().await;
    conn.hello().await;
    let mut last = conn.sample().await;
    for _ in 0..2 {
        last = conn.sample().await;
    }
    drop(conn);
    let dropped_at = unix_millis();

    let mut conn = server.accept().await;
    conn.hello().await;
    let first = conn.sample().await;
    assert!(first.seq > last.seq, "{} after {}", first.seq, last.seq);
    // At most one interval old when the old stream went away.
    assert!(first.scraped_at_ms >= dropped_at - 100, "stale sample");
}

#[tokio::test]
async fn extracts_signals_and_reports_a_malformed_body() {
    let target = Target::start(Reply::Encoded("gzip", gzip(VLLM_BODY.as_bytes()))).await;
    let mut server = TestAggregator::start(None).await;
    let agent = run_agent(
        &target.url,
        &format!("http://{}", server.addr),
        &["--interval", "100ms"],
    )
    .await;

    let mut conn = server.accept().await;
    conn.hello().await;
    let sample = conn.sample().await;
    assert!(sample.up, "{}", sample.error);
    assert!(sample.error.is_empty());
    let [model] = &sample.models[..] else {
        panic!("expected one model, got {:?}", sample.models);
    };
    assert_eq!(model.model, "meta-llama/Llama-3.1-8B-Instruct");
    // Engine ranks of one pod are summed.
    assert_eq!(model.requests_running, 5.0);
    assert_eq!(model.requests_waiting, 1.0);
    assert_eq!(model.engines, 2);

    // The body with its names escaped, as some collectors serve it, and
    // three more requests waiting: read like the original.
    let escaped = VLLM_BODY.replace("vllm:", "vllm_").replace(
        "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1.0",
        "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 4.0",
    );
    target.set(Reply::Text(escaped.into_bytes()));
    let escaped = within("a sample of the escaped body", async {
        loop {
            let sample = conn.sample().await;
            if sample
                .models
                .first()
                .is_some_and(|m| m.requests_waiting == 4.0)
            {
                break sample;
            }
        }
    })
    .await;
    assert!(escaped.up, "{}", escaped.error);
    let mut expected = model.clone();
    expected.requests_waiting = 4.0;
    assert_eq!(escaped.models, [expected]);

    target.set(Reply::Text(
        b"vllm:num_requests_running{model_name=\"m\" 3\n".to_vec(),
    ));
    let sample = loop {
        let sample = conn.sample().await;
        if !sample.up {
            break sample;
        }
    };
    assert!(
        sample.error.starts_with("malformed exposition"),
        "{}",
        sample.error
    );
    assert!(sample.models.is_empty());
    let (_, metrics) = get(agent.addr, "/metrics").await;
    assert!(
        metrics.contains("wva_agent_scrape_failures_total{reason=\"extract\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn configured_signals_are_streamed_and_asked_for() {
    let body = format!(
        "{VLLM_BODY}redis_key_size{{db=\"db0\",key=\"jobs\"}} 12\nredis_key_size{{db=\"db0\",key=\"mail\"}} 3\n"
    );
    let target = Target::start(Reply::Text(body.into_bytes())).await;
    let mut server = TestAggregator::start(None).await;
    let _agent = run_agent(
        &target.url,
        &format!("http://{}", server.addr),
        &[
            "--interval",
            "100ms",
            "--signal",
            r#"queue_depth=sum(redis_key_size{key="jobs"})"#,
            "--signal",
            "busiest_engine=max(vllm:num_requests_running)",
            "--signal",
            "gone=sum(redis_stream_length)",
        ],
    )
    .await;

    let mut conn = server.accept().await;
    conn.hello().await;
    let sample = conn.sample().await;
    assert!(sample.up, "{}", sample.error);
    let got: Vec<_> = sample
        .signals
        .iter()
        .map(|s| (s.name.as_str(), s.value))
        .collect();
    // A signal nothing matched is absent, not 0.
    assert_eq!(got, [("queue_depth", 12.0), ("busiest_engine", 3.0)]);
    assert_eq!(sample.models.len(), 1, "the role's signals still flow");
    // A filtered scrape asks for the signals' samples too.
    let first = &target.asked()[0];
    assert!(
        first.contains("name%5B%5D=redis_key_size&name%5B%5D=redis_stream_length"),
        "{first}"
    );
}

#[tokio::test]
async fn signals_from_a_second_target_join_the_vllm_sample_and_fail_alone() {
    let vllm = Target::start(Reply::Text(VLLM_BODY.into())).await;
    let exporter = Target::start(Reply::Text(
        b"redis_up 1\nredis_key_size{db=\"db0\",key=\"jobs\"} 12\n".to_vec(),
    ))
    .await;
    let mut server = TestAggregator::start(None).await;
    let agent = run_agent(
        &vllm.url,
        &format!("http://{}", server.addr),
        &[
            "--interval",
            "100ms",
            "--signals-target",
            &exporter.url.to_string(),
            "--signal",
            r#"queue_depth=max(redis_key_size{key="jobs"})"#,
        ],
    )
    .await;
    let mut conn = server.accept().await;
    conn.hello().await;
    let sample = conn.sample().await;
    assert!(sample.up, "{}", sample.error);
    assert_eq!(sample.models.len(), 1, "vLLM's signals from --target");
    let signal = |s: &wva_proto::v1::Sample| -> Vec<(String, f64)> {
        s.signals
            .iter()
            .map(|v| (v.name.clone(), v.value))
            .collect()
    };
    assert_eq!(signal(&sample), [("queue_depth".to_string(), 12.0)]);
    // The vLLM target is not asked for the signal's series.
    assert!(
        !vllm.asked()[0].contains("redis_key_size"),
        "{:?}",
        vllm.asked()
    );

    // The exporter failing costs the signals only.
    exporter.set(Reply::Status(StatusCode::SERVICE_UNAVAILABLE));
    let sample = loop {
        let sample = conn.sample().await;
        if sample.signals.is_empty() {
            break sample;
        }
    };
    assert!(sample.up, "{}", sample.error);
    assert_eq!(sample.models.len(), 1);
    let (_, metrics) = get(agent.addr, "/metrics").await;
    assert!(
        metrics.contains("wva_agent_scrape_failures_total{reason=\"signals_target\"}"),
        "{metrics}"
    );
    exporter.set(Reply::Text(b"redis_key_size{key=\"jobs\"} 4\n".to_vec()));
    let sample = loop {
        let sample = conn.sample().await;
        if !sample.signals.is_empty() {
            break sample;
        }
    };
    assert_eq!(signal(&sample), [("queue_depth".to_string(), 4.0)]);
}

#[tokio::test]
async fn bad_configuration_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("token");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--token-file", missing.to_str().unwrap()],
            "cannot read token file",
        ),
        (
            &["--signal", "q=sum(a)", "--signal", "q=max(b)"],
            "--signal name \"q\" is given twice",
        ),
        (&["--listen", "192.0.2.1:0"], "cannot listen on 192.0.2.1:0"),
        (
            &["--signals-target", "http://127.0.0.1:9121/metrics"],
            "--signals-target without --signal",
        ),
        (
            &[
                "--role",
                "generic",
                "--signal",
                "q=sum(a)",
                "--signals-target",
                "http://127.0.0.1:9121/metrics",
            ],
            "--signals-target is for the vllm and epp roles",
        ),
    ];
    for (extra, expected) in cases {
        let base = [
            "wva-agent",
            "--target",
            "http://127.0.0.1:8000/metrics",
            "--aggregator",
            "http://127.0.0.1:1",
            "--pod-name",
            "p",
            "--namespace",
            "n",
            "--variant",
            "v",
        ];
        let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
        let err = Agent::start(args).await.err().expect("started");
        assert!(err.to_string().starts_with(expected), "{err}");
    }
}
