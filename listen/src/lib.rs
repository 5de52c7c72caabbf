//! wva-listen: bounded serving for every HTTP listener of the project (the
//! aggregator's `/metrics`, the agent's `:9400`, the webhook).
//!
//! A [`Listener`] admits a connection only within its [`Limits`]: a cap on
//! connections in all (more wait in the kernel's backlog) and per peer address
//! (more are closed at once, so one client cannot take every place from the
//! kubelet's probes). [`Limits::http1`] gives each connection a deadline for a
//! request's headers, which also closes a kept-alive connection that sends
//! nothing, and a small header buffer. An accept error such as EMFILE is
//! logged, counted and retried after a backoff; it never ends the listener.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// First wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What one listener admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections served at once for one peer address; more are closed.
    pub max_per_peer: usize,
    /// How long a client may take to send a request's headers, counted from
    /// the connection's start or the end of the previous response.
    pub header_timeout: Duration,
    /// The read buffer, and so the largest request head accepted (at least
    /// 8 KiB, hyper's minimum).
    pub max_header_bytes: usize,
}

impl Limits {
    /// For listeners that answer small GETs (metrics, health) or admission
    /// reviews: room for every scraper and probe, none for a flood.
    pub const DEFAULT: Limits = Limits {
        max_connections: 256,
        max_per_peer: 32,
        header_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
    };

    /// An HTTP/1 connection builder that enforces the header limits.
    pub fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_header_bytes.max(8 * 1024));
        builder
    }
}

/// A TCP listener that admits connections within its [`Limits`].
pub struct Listener {
    inner: TcpListener,
    limits: Limits,
    /// Names the listener in logs.
    name: &'static str,
    places: Arc<Semaphore>,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    accept_errors: AtomicU64,
}

/// A connection admitted by a [`Listener`]: the stream, holding its place
/// until it is dropped.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    _place: Place,
}

impl Connection {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A held place: one of all, and one of the peer's.
struct Place {
    _permit: OwnedSemaphorePermit,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

impl Listener {
    pub fn new(inner: TcpListener, limits: Limits, name: &'static str) -> Self {
        Listener {
            inner,
            limits,
            name,
            places: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            peers: Arc::default(),
            accept_errors: AtomicU64::new(0),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Accept errors so far (each was logged and retried).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// Waits for a free place and a connection within the peer's cap.
    /// Cancel-safe: dropped while waiting, it leaves no place taken.
    pub async fn accept(&self) -> Connection {
        let mut backoff = MIN_BACKOFF;
        loop {
            let permit = Arc::clone(&self.places)
                .acquire_owned()
                .await
                .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    backoff = MIN_BACKOFF;
                    if self.claim(peer.ip()) {
                        let place = Place {
                            _permit: permit,
                            peers: Arc::clone(&self.peers),
                            ip: peer.ip(),
                        };
                        return Connection {
                            stream,
                            peer,
                            _place: place,
                        };
                    }
                    debug!(
                        listener = self.name,
                        %peer,
                        max_per_peer = self.limits.max_per_peer,
                        "peer holds its share of connections; closing the new one"
                    );
                }
                // Out of file descriptors and the like: the pending
                // connection stays in the backlog; try again once the
                // condition had a moment to clear.
                Err(e) => {
                    self.accept_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(listener = self.name, error = %e, retry_in = ?backoff, "accepting a connection failed; still listening");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Takes one of the peer's places, if it has one left.
    fn claim(&self, ip: IpAddr) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let held = peers.entry(ip).or_default();
        if *held >= self.limits.max_per_peer.max(1) {
            return false;
        }
        *held += 1;
        true
    }
}
