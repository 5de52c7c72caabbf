//! An accept that fails for want of file descriptors does not end the
//! listener. Its own test binary: it lowers this process's descriptor limit
//! (with util-linux's `prlimit`), which would disturb other tests.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::timeout;
use wva_listen::Limits;

use support::{connect_from, get, serve};

/// Descriptors this process has open now.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn the_listener_outlives_running_out_of_descriptors() {
    let (addr, listener) = serve(Limits::DEFAULT).await;
    // A few descriptors above what is open now, so the rest can be used up.
    let limit = open_descriptors() + 8;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile failed");

    // Use up every descriptor but one, which the client takes.
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    hoard.pop();
    let mut client = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr).await;
    let answer = tokio::spawn(async move { get(&mut client).await });

    // The server's accept fails (EMFILE) and is retried.
    timeout(Duration::from_secs(10), async {
        while listener.accept_errors() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server tried to accept and ran out of descriptors");
    drop(hoard);

    let answer = timeout(Duration::from_secs(10), answer)
        .await
        .expect("the connection is served once descriptors are free")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
