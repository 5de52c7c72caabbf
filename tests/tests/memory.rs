//! Memory under attack: the aggregator and the agent, attacked as a client
//! on the cluster network would, stay within the chart's memory limits
//! (aggregator 512 MiB, agent 32 MiB). Each test prints the peak resident
//! memory (`VmHWM`); `cargo test --release` (after `cargo build --release
//! --workspace --bins`) measures the release binaries, as in
//! docs/reliability.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wva_e2e::*;
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, Hello, ModelSignals, Role, Sample, agent_message};

const AGGREGATOR_LIMIT: u64 = 512 << 20;
const AGENT_LIMIT: u64 = 32 << 20;

fn within(what: &str, process: &Proc, limit: u64) -> anyhow::Result<()> {
    let peak = process.peak_rss_bytes()?;
    println!("{what}: peak {:.1} MiB", peak as f64 / f64::from(1 << 20));
    assert!(peak < limit, "{what}: peak {peak} bytes, over {limit}");
    Ok(())
}

/// A connection to the aggregator's gRPC port, once it listens.
async fn channel(grpc: SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    eventually(Duration::from_secs(10), "the gRPC port", || async move {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?;
        Ok(endpoint.connect().await.ok())
    })
    .await
}

async fn connect_from(last: u8, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, last)),
        0,
    ))?;
    Ok(socket.connect(addr).await?)
}

/// 400 connections from 200 addresses, each sending 400 KB of headers that
/// never end (182 MB of aggregator memory before the listener limits).
async fn unfinished_headers(addr: SocketAddr) -> anyhow::Result<()> {
    let chunk = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(4_000));
    let mut held = Vec::new();
    for i in 0..400u32 {
        // A connection over a peer's share may be closed at once; the
        // attack goes on with the others.
        let Ok(mut stream) = connect_from((i % 200 + 1) as u8, addr).await else {
            continue;
        };
        let chunk = chunk.clone();
        held.push(tokio::spawn(async move {
            for _ in 0..100 {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            // Hold the connection open past the header deadline.
            tokio::time::sleep(Duration::from_secs(12)).await;
        }));
    }
    let connected = held.len();
    for task in held {
        let _ = task.await;
    }
    anyhow::ensure!(
        connected >= 300,
        "only {connected} of 400 attacking connections opened"
    );
    Ok(())
}

#[tokio::test]
async fn unfinished_headers_leave_both_http_ports_within_their_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", "v", "m");
    let (grpc, metrics) = (free_addr(), free_addr());
    let aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let agent_addr = free_addr();
    let listen = agent_addr.to_string();
    let agent = start_agent(&AgentSpec {
        target: free_addr(),
        aggregator: &format!("http://{grpc}"),
        pod: "p",
        namespace: "e2e",
        variant: "v",
        model: "m",
        interval: "1s",
        extra: &["--listen", &listen],
    })?;
    for addr in [metrics, agent_addr] {
        eventually(Duration::from_secs(10), "the HTTP port", || async move {
            Ok(http_get(addr, "/healthz").await.ok().map(|_| ()))
        })
        .await?;
    }
    let (a, b) = tokio::join!(unfinished_headers(metrics), unfinished_headers(agent_addr));
    a?;
    b?;
    within(
        "aggregator, 400 unfinished 400 KB headers",
        &aggregator,
        AGGREGATOR_LIMIT,
    )?;
    within("agent, 400 unfinished 400 KB headers", &agent, AGENT_LIMIT)
}

/// Streams for 6,000 made-up pods with names of the longest allowed length,
/// each with a sample of 64 models (2,000 such pods took 641 MB before the
/// caps on names and the memory budget): those beyond the budget are refused.
#[tokio::test]
async fn thousands_of_made_up_pods_stay_within_the_aggregators_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", "v", "m");
    let (grpc, metrics) = (free_addr(), free_addr());
    // Made-up pods stay until they are stale: here, for the whole attack.
    let aggregator = start_aggregator(&variants, grpc, metrics, &["--staleness", "10m"])?;
    let long = |tag: &str, i: usize| format!("{tag}-{i}-{}", "x".repeat(240));
    let mut streams = Vec::new();
    let mut connection = channel(grpc).await?;
    let mut refused = 0;
    for i in 0..6_000 {
        // A connection carries at most 1,024 streams at once.
        if i > 0 && i % 1_000 == 0 {
            connection = channel(grpc).await?;
        }
        let (tx, rx) = mpsc::channel::<AgentMessage>(2);
        let hello = Hello {
            pod: long("pod", i),
            namespace: "e2e".into(),
            variant: "v".into(),
            role: Role::Vllm as i32,
            models: (0..64).map(|m| long("model", m)).collect(),
            ..Hello::default()
        };
        let sample = Sample {
            seq: 1,
            up: true,
            models: (0..64)
                .map(|m| ModelSignals {
                    model: long("model", m),
                    ..ModelSignals::default()
                })
                .collect(),
            ..Sample::default()
        };
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        })
        .await?;
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Sample(sample)),
        })
        .await?;
        let mut client = TelemetryClient::new(connection.clone());
        match client.stream(ReceiverStream::new(rx)).await {
            Ok(answers) => streams.push((tx, answers)),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(status) => return Err(status).with_context(|| format!("stream {i}")),
        }
    }
    println!("{} pods held, {refused} refused", streams.len());
    assert!(refused > 0, "the budget refuses pods before 6,000");
    let held = streams.len() as f64;
    // Every pod's sample was taken in (they leave the analysis once stale;
    // the peak stays recorded).
    eventually(
        Duration::from_secs(30),
        "every sample received",
        || async move {
            let received = metric(metrics, "wva_samples_received_total").await?;
            let stripped = metric(metrics, "wva_samples_rejected_total").await?;
            let count = received
                .iter()
                .chain(&stripped)
                .map(|(_, v)| v)
                .sum::<f64>();
            Ok((count >= held).then_some(()))
        },
    )
    .await?;
    within(
        "aggregator, 6,000 pods of 64 long-named models offered",
        &aggregator,
        AGGREGATOR_LIMIT,
    )
}

/// 64 diagnostics watchers that never read, over 300 variants (1.45 GB
/// before a watcher held one snapshot at most).
#[tokio::test]
async fn idle_diagnostics_watchers_stay_within_the_aggregators_limit() -> anyhow::Result<()> {
    use wva_proto::v1::DecisionFilter;
    use wva_proto::v1::diagnostics_client::DiagnosticsClient;

    let dir = tempfile::tempdir()?;
    let variants = dir.path().join("variants.yaml");
    let documents: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
                 metadata: {{name: v-{i}, namespace: e2e}}\n\
                 spec: {{scaleTargetRef: {{kind: Deployment, name: v-{i}}}, modelID: m-{i}}}\n"
            )
        })
        .collect();
    std::fs::write(&variants, documents.join("---\n"))?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let channel = channel(grpc).await?;
    let mut watchers = Vec::new();
    for _ in 0..64 {
        let stream = DiagnosticsClient::new(channel.clone())
            .watch_decisions(DecisionFilter::default())
            .await?;
        // Held, never read.
        watchers.push(stream);
    }
    // A pod's samples trigger analyses of all 300 variants, ten a second,
    // while nobody reads.
    let (_sim, sim) = start_sim("m-0", &[]).await?;
    let _agent = start_agent(&AgentSpec {
        target: sim,
        aggregator: &format!("http://{grpc}"),
        pod: "p",
        namespace: "e2e",
        variant: "v-0",
        model: "m-0",
        interval: "100ms",
        extra: &[],
    })?;
    let analyses = || async move {
        let value = metric(metrics, "wva_analysis_runs_total").await?;
        anyhow::Ok(value.first().map_or(0.0, |(_, v)| *v))
    };
    let start = analyses().await?;
    eventually(
        Duration::from_secs(60),
        "a hundred more analyses",
        || async move { Ok((analyses().await? >= start + 100.0).then_some(())) },
    )
    .await?;
    assert_eq!(decisions(metrics).await?.len(), 300);
    within(
        "aggregator, 64 idle watchers of 300 variants",
        &aggregator,
        AGGREGATOR_LIMIT,
    )
}

/// A "vLLM" that answers every scrape with an attack, in turn: a gzip body
/// that decodes to 64 MiB, a 3 MiB label and 60,000 model names (both under
/// the body budget, so the extractor meets them), and a chunked body that
/// never ends (66 MB of agent memory before one budget covered received and
/// decoded bytes; 100,000 names wedged the agent for about 100 s).
async fn hostile_target() -> anyhow::Result<SocketAddr> {
    use std::io::Write;

    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b'0'; 64 << 20])?;
    let bomb = encoder.finish()?;
    let label = format!(
        "vllm:num_requests_running{{model_name=\"{}\"}} 1\n",
        "m".repeat(3 << 20)
    );
    let names: String = (0..60_000)
        .map(|i| format!("vllm:num_requests_running{{model_name=\"model-{i}\"}} 1\n"))
        .collect();
    let replies: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                bomb.len()
            )
            .into_bytes(),
            bomb,
        ),
        (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", label.len()).into_bytes(),
            label.into_bytes(),
        ),
        (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", names.len()).into_bytes(),
            names.into_bytes(),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            Vec::new(),
        ),
    ];
    let replies = std::sync::Arc::new(replies);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut turn = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let replies = std::sync::Arc::clone(&replies);
            let reply = turn % replies.len();
            turn += 1;
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
                let (head, body) = &replies[reply];
                if stream.write_all(head).await.is_err() {
                    return;
                }
                if body.is_empty() {
                    // Endless: chunk after chunk until the agent hangs up.
                    let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
                    while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                } else {
                    let _ = stream.write_all(body).await;
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_hostile_vllm_leaves_the_agent_within_its_limit() -> anyhow::Result<()> {
    let target = hostile_target().await?;
    let agent_addr = free_addr();
    let listen = agent_addr.to_string();
    let agent = start_agent(&AgentSpec {
        target,
        aggregator: &format!("http://{}", free_addr()),
        pod: "p",
        namespace: "e2e",
        variant: "v",
        model: "m",
        interval: "100ms",
        extra: &["--listen", &listen, "--accept-gzip"],
    })?;
    let scrapes = || async move {
        let value = metric(agent_addr, "wva_agent_scrapes_total").await?;
        anyhow::Ok(value.first().map_or(0.0, |(_, v)| *v))
    };
    // Every attack five times over.
    eventually(
        Duration::from_secs(120),
        "twenty hostile scrapes",
        || async move { Ok(scrapes().await.ok().filter(|n| *n >= 20.0)) },
    )
    .await?;
    let failures = metric(agent_addr, "wva_agent_scrape_failures_total").await?;
    println!("scrape failures: {failures:?}");
    let reasons: Vec<&str> = failures.iter().map(|(l, _)| l["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"too_large") && reasons.contains(&"extract"),
        "the body budget and the extractor's limits both met an attack: {failures:?}"
    );
    within(
        "agent, a hostile vLLM (gzip bomb, 3 MiB label, 60k models, endless body)",
        &agent,
        AGENT_LIMIT,
    )
}
