//! The HTTP ports of the release binaries against hostile clients on the
//! network: one address holding every connection, oversized headers, and
//! headers that never end. The aggregator's metrics port and the agent's
//! port must keep answering everyone else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use wva_e2e::*;

/// Connections one peer may hold on each HTTP port (`wva_listen::Limits::DEFAULT`).
const PER_PEER: usize = 32;
/// How long a client may take to send its headers there, plus a margin.
const HEADER_DEADLINE: Duration = Duration::from_secs(10 + 5);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn connect_from(from: IpAddr, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(timeout(Duration::from_secs(5), socket.connect(addr)).await??)
}

/// Sends `request` and reads until the server closes; empty when it closed
/// without answering.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> anyhow::Result<String> {
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let _ = timeout(HEADER_DEADLINE, stream.read_to_end(&mut raw))
        .await
        .context("the server neither answered nor closed")?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Holds every connection one peer may have, then checks that its next one
/// is closed unanswered while another peer is served, and that a 100 KB
/// header is refused.
async fn one_peer_holds_its_share(addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        held.push(connect_from(loopback(1), addr).await?);
    }
    let mut extra = connect_from(loopback(1), addr).await?;
    let answer = exchange(&mut extra, HEALTHZ).await?;
    assert_eq!(
        answer, "",
        "{name}: a peer's connection beyond its share is closed"
    );
    let mut other = connect_from(loopback(2), addr).await?;
    let answer = exchange(&mut other, HEALTHZ).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");

    let mut big = connect_from(loopback(3), addr).await?;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = exchange(&mut big, request.as_bytes()).await?;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
    drop(held);
    Ok(())
}

/// A client that starts its headers and never finishes is cut off.
async fn slow_headers_are_cut_off(addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let mut slow = connect_from(loopback(4), addr).await?;
    let answer = exchange(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await?;
    assert!(!answer.contains("200"), "{name}: {answer}");
    Ok(())
}

#[tokio::test]
async fn the_aggregator_and_agent_http_ports_stay_open_to_everyone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let variants = one_variant_file(dir.path(), "e2e", "v", "m");
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let agent_addr = free_addr();
    let _agent = command("wva-agent")
        .args(["--target", &format!("http://{}/metrics", free_addr())])
        .args(["--aggregator", &format!("http://{grpc}")])
        .args(["--pod-name", "p", "--namespace", "e2e", "--variant", "v"])
        .args(["--listen", &agent_addr.to_string()])
        .spawn()
        .context("start wva-agent")?;
    for addr in [metrics, agent_addr] {
        eventually(
            Duration::from_secs(10),
            "the HTTP port answers",
            || async move {
                let (status, _) = http_get(addr, "/healthz").await?;
                Ok((status == 200).then_some(()))
            },
        )
        .await?;
    }
    let (aggregator, agent) = tokio::join!(
        async {
            one_peer_holds_its_share(metrics, "aggregator").await?;
            slow_headers_are_cut_off(metrics, "aggregator").await
        },
        async {
            one_peer_holds_its_share(agent_addr, "agent").await?;
            slow_headers_are_cut_off(agent_addr, "agent").await
        },
    );
    aggregator?;
    agent
}
