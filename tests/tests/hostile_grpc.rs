//! The aggregator's gRPC port against misbehaving clients, with the release
//! binary on loopback and real tonic clients.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use wva_e2e::*;
use wva_proto::MAX_MESSAGE_BYTES;
use wva_proto::v1::telemetry_client::TelemetryClient;
use wva_proto::v1::{AgentMessage, Hello, Role, Sample, agent_message};

fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

/// A stream for `hello` on a fresh connection: the sender of its messages
/// and the aggregator's answers, or the status it was refused with.
async fn open_stream(
    grpc: SocketAddr,
    hello: Hello,
) -> anyhow::Result<
    Result<
        (
            mpsc::Sender<AgentMessage>,
            tonic::Streaming<wva_proto::v1::ControlMessage>,
        ),
        tonic::Status,
    >,
> {
    let mut client = eventually(Duration::from_secs(10), "the gRPC port", || async move {
        Ok(TelemetryClient::connect(format!("http://{grpc}"))
            .await
            .ok())
    })
    .await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(message(agent_message::Kind::Hello(hello))).await?;
    Ok(match client.stream(ReceiverStream::new(rx)).await {
        Ok(answers) => Ok((tx, answers.into_inner())),
        Err(status) => Err(status),
    })
}

/// A standalone aggregator with one variant, `v`, of model `m`: its
/// directory, process, gRPC and metrics addresses.
fn aggregator() -> anyhow::Result<(tempfile::TempDir, Proc, SocketAddr, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let variants = one_variant_file(dir.path(), "e2e", "v", "m");
    let aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    Ok((dir, aggregator, grpc, metrics))
}

fn hello(pod: &str, instance: &str) -> Hello {
    Hello {
        pod: pod.into(),
        namespace: "e2e".into(),
        variant: "v".into(),
        role: Role::Vllm as i32,
        instance: instance.into(),
        interval_ms: 1_000,
        ..Hello::default()
    }
}

#[tokio::test]
async fn a_sample_over_the_limit_ends_its_stream_as_resource_exhausted_and_is_counted()
-> anyhow::Result<()> {
    let (_dir, _aggregator, grpc, metrics) = aggregator()?;
    let (tx, mut answers) = open_stream(grpc, hello("p", "a"))
        .await?
        .context("the stream is admitted")?;
    answers.message().await?.context("Accepted")?;
    let oversized = Sample {
        seq: 1,
        error: "x".repeat(MAX_MESSAGE_BYTES + 1),
        ..Sample::default()
    };
    tx.send(message(agent_message::Kind::Sample(oversized)))
        .await?;
    let end = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .context("the aggregator answers the oversized sample")?;
    let status = end.expect_err("the stream ends with an error status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let counted = metric(metrics, "wva_samples_rejected_total").await?;
    assert!(
        counted
            .iter()
            .any(
                |(labels, value)| labels.get("reason").map(String::as_str) == Some("too_large")
                    && *value == 1.0
            ),
        "{counted:?}"
    );
    Ok(())
}

/// With a shared token (or none) a stream does not prove its pod: another
/// agent cannot take a live pod over, while the pod's own agent can reconnect.
#[tokio::test]
async fn another_agent_cannot_take_over_a_live_pod_but_its_own_can_reconnect() -> anyhow::Result<()>
{
    let (_dir, _aggregator, grpc, metrics) = aggregator()?;
    let (tx, mut answers) = open_stream(grpc, hello("p", "real"))
        .await?
        .context("the pod's agent is admitted")?;
    answers.message().await?.context("Accepted")?;
    let sample = |seq| {
        message(agent_message::Kind::Sample(Sample {
            seq,
            up: true,
            ..Sample::default()
        }))
    };
    tx.send(sample(1)).await?;

    let refused = open_stream(grpc, hello("p", "impostor"))
        .await?
        .err()
        .context("another agent is refused while the pod's agent sends")?;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("held by another agent"),
        "{refused:?}"
    );
    let counted = metric(metrics, "wva_agent_stream_refusals_total").await?;
    assert!(
        counted
            .iter()
            .any(|(labels, _)| labels.get("reason").map(String::as_str) == Some("pod_in_use")),
        "{counted:?}"
    );

    // The pod's own agent reconnecting replaces its old stream at once.
    let (_tx2, mut answers2) = open_stream(grpc, hello("p", "real"))
        .await?
        .context("the same agent instance is admitted")?;
    answers2.message().await?.context("Accepted")?;
    tx.send(sample(2)).await?;
    let old = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .context("the old stream is told it was replaced")?;
    assert_eq!(old.expect_err("superseded").code(), Code::Aborted);
    Ok(())
}

/// The HTTP/2 settings a server announces first on a new connection.
async fn server_settings(addr: SocketAddr) -> anyhow::Result<Vec<(u16, u32)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    // The client preface, then an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await?;
    loop {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await?;
        // A SETTINGS frame that is not an acknowledgement.
        if header[3] == 0x4 && header[4] & 0x1 == 0 {
            return Ok(payload
                .chunks_exact(6)
                .map(|s| {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
                })
                .collect());
        }
    }
}

#[tokio::test]
async fn one_connection_may_not_open_unbounded_streams() -> anyhow::Result<()> {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let (_dir, _aggregator, grpc, _) = aggregator()?;
    let settings = eventually(Duration::from_secs(10), "the gRPC port", || async move {
        Ok(server_settings(grpc).await.ok())
    })
    .await?;
    let cap = settings
        .iter()
        .find(|(id, _)| *id == MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v);
    assert_eq!(
        cap,
        Some(wva_aggregator::grpc::MAX_STREAMS_PER_CONNECTION),
        "{settings:?}"
    );
    Ok(())
}
