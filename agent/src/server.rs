//! The agent's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! Readiness depends on the local scrape loop only, never on the aggregator:
//! the agent is a sidecar, and a pod is unready when any of its containers
//! is, so an aggregator outage must not take vLLM out of its Service.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;
use wva_listen::{Limits, Listener};

use crate::telemetry::Telemetry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Progress of the scrape loop, read by the probes.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    ready: AtomicBool,
    /// Milliseconds after `started` by which the next tick must complete.
    deadline_ms: AtomicU64,
}

impl Health {
    /// `first_tick_within`: how long the first tick may take.
    pub fn new(first_tick_within: Duration) -> Self {
        Health {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(millis(first_tick_within)),
        }
    }

    /// Records a completed tick; the next one is due within `next_within`.
    pub fn tick_completed(&self, next_within: Duration) {
        let deadline = self.started.elapsed() + next_within;
        self.deadline_ms.store(millis(deadline), Ordering::Release);
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How long the scrape loop is overdue, if it is.
    pub fn stalled_for(&self) -> Option<Duration> {
        let deadline = Duration::from_millis(self.deadline_ms.load(Ordering::Acquire));
        self.started.elapsed().checked_sub(deadline)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serves within [`Limits::DEFAULT`] until `stop` fires; connections are
/// handled on their own tasks.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<()>,
) {
    let listener = Listener::new(listener, Limits::DEFAULT, "agent");
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            _ = stop.changed() => return,
        };
        let (health, telemetry) = (health.clone(), telemetry.clone());
        let service = service_fn(move |req| {
            let response = respond(&req, &health, &telemetry);
            async move { Ok::<_, Infallible>(response) }
        });
        let builder = listener.limits().http1();
        tokio::spawn(async move {
            let peer = connection.peer();
            if let Err(e) = builder
                .serve_connection(TokioIo::new(connection), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    health: &Health,
    telemetry: &Telemetry,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, telemetry.encode());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/healthz" => match health.stalled_for() {
            None => text(StatusCode::OK, "ok\n".to_owned()),
            Some(late) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "scrape loop overdue by {}\n",
                    humantime::format_duration(Duration::from_millis(millis(late)))
                ),
            ),
        },
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "first scrape not completed\n".to_owned(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn health_follows_the_scrape_loop() {
        let health = Health::new(Duration::from_secs(3));
        assert!(!health.is_ready());
        assert_eq!(health.stalled_for(), None);

        health.tick_completed(Duration::from_secs(2));
        assert!(health.is_ready());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(health.stalled_for(), None);
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(health.stalled_for(), Some(Duration::from_millis(500)));

        health.tick_completed(Duration::from_secs(2));
        assert_eq!(health.stalled_for(), None);
    }
}
