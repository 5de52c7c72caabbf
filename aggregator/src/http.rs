//! The aggregator's HTTP endpoints: `/metrics` (decision gauges and self
//! metrics), `/healthz`, `/readyz`, and `/v1/decisions` (the current
//! decisions as JSON, for people and tests).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use wva_core::decision::Decision;
use wva_listen::{Limits, Listener};

pub struct HttpState {
    pub registry: Registry,
    pub decisions: watch::Receiver<Arc<Vec<Decision>>>,
    /// Ready once the first analysis has run.
    pub ready: watch::Receiver<bool>,
}

/// Serves HTTP/1.1 within [`Limits::DEFAULT`] until `shutdown`; accept
/// errors are retried, never fatal, so `/healthz` keeps answering.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: CancellationToken) {
    let listener = Listener::new(listener, Limits::DEFAULT, "metrics");
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            _ = shutdown.cancelled() => return,
        };
        let state = Arc::clone(&state);
        let builder = listener.limits().http1();
        tokio::spawn(async move {
            let peer = connection.peer();
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(connection), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn route(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n",
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if *state.ready.borrow() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "no analysis has run yet\n"),
        "/v1/decisions" => {
            let decisions = state.decisions.borrow().clone();
            match serde_json::to_vec(&*decisions) {
                Ok(json) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .unwrap_or_default(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
