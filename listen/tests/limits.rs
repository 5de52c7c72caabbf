//! The limits of a listener, against real sockets on loopback.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use wva_listen::Limits;

use support::{connect_from, get, read_to_end, serve};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Bounds every wait, so a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::DEFAULT
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (addr, _listener) = serve(limits()).await;
    let mut slow = connect_from(LOCAL, addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = timeout(PATIENCE, read_to_end(&mut slow))
        .await
        .expect("the server closes a connection whose headers never end");
    assert!(!answer.contains("200"), "{answer}");
    assert!(started.elapsed() >= limits().header_timeout / 2);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let (addr, _listener) = serve(limits()).await;
    let mut idle = connect_from(LOCAL, addr).await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The response arrives, then nothing is sent: the server hangs up.
    let answer = timeout(PATIENCE, read_to_end(&mut idle))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_head_larger_than_the_buffer_is_refused() {
    let (addr, _listener) = serve(limits()).await;
    let mut big = connect_from(LOCAL, addr).await;
    let header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = big.write_all(header.as_bytes()).await;
    let answer = timeout(PATIENCE, read_to_end(&mut big)).await.unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    // The listener still serves.
    let mut next = connect_from(LOCAL, addr).await;
    assert!(get(&mut next).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn one_peer_cannot_take_every_place() {
    let limits = Limits {
        max_per_peer: 2,
        header_timeout: Duration::from_secs(60),
        ..Limits::DEFAULT
    };
    let (addr, _listener) = serve(limits).await;
    let _held = [
        connect_from(LOCAL, addr).await,
        connect_from(LOCAL, addr).await,
    ];
    let mut third = connect_from(LOCAL, addr).await;
    let refused = timeout(PATIENCE, get(&mut third)).await.unwrap();
    assert_eq!(
        refused, "",
        "the peer's third connection is closed unanswered"
    );
    let mut other = connect_from(OTHER, addr).await;
    let answer = timeout(PATIENCE, get(&mut other)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn beyond_the_cap_a_connection_waits_for_a_place() {
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(60),
        ..Limits::DEFAULT
    };
    let (addr, _listener) = serve(limits).await;
    let first = connect_from(LOCAL, addr).await;
    let _second = connect_from(OTHER, addr).await;
    let mut waiting = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), addr).await;
    let mut answer = tokio::spawn(async move { get(&mut waiting).await });
    assert!(
        timeout(Duration::from_millis(300), &mut answer)
            .await
            .is_err(),
        "no place is free, so the request waits"
    );
    drop(first);
    let answer = timeout(PATIENCE, answer).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
