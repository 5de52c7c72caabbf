//! The webhook's HTTPS endpoint: AdmissionReviews in, JSON patches out.
//!
//! `/inject/namespace` serves pods of namespaces labelled for injection and
//! `/inject/pod` every other namespace's pods (which opt in by annotation);
//! the webhook configuration routes each namespace to one of them. The
//! webhook never denies a pod: whatever goes wrong, the pod is admitted
//! without the agent and the reason is logged and returned as a warning.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use wva_certs::ExpiryGauge;
use wva_listen::{Limits, Listener};

use super::injection::{InjectionConfig, Outcome, Scope, mutate};

/// Larger than any pod the API server accepts (its request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one admission request (`outcome` of
/// `wva_webhook_admissions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The agent was added.
    Injected,
    /// Nothing to do: not opted in, opted out, already injected, not a pod.
    Skipped,
    /// The pod was admitted without the agent because of a mistake in it.
    NotInjected,
    /// The request was no readable AdmissionReview.
    Malformed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Skipped => "skipped",
            Verdict::NotInjected => "not_injected",
            Verdict::Malformed => "malformed",
        }
    }
}

/// Counts admission requests by verdict.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    admissions: Family<[(&'static str, &'static str); 1], Counter>,
    certificate_expiry: ExpiryGauge,
}

impl WebhookMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "wva_webhook_admissions",
            "Pod admission requests the agent-injection webhook answered, by outcome",
            self.admissions.clone(),
        );
        registry.register(
            "wva_webhook_certificate_expiry_timestamp_seconds",
            "Unix time the webhook's serving certificate expires",
            self.certificate_expiry.clone(),
        );
    }

    /// The gauge the certificate source keeps at its certificate's end.
    pub fn certificate_expiry(&self) -> ExpiryGauge {
        self.certificate_expiry.clone()
    }

    fn count(&self, verdict: Verdict) {
        self.admissions
            .get_or_create(&[("outcome", verdict.as_str())])
            .inc();
    }
}

/// Answers one AdmissionReview. An unreadable review is an error (the API
/// server then applies the webhook's failure policy); anything else is
/// admitted, with the agent when it applies.
pub fn review(
    body: &[u8],
    scope: Scope,
    config: &InjectionConfig,
) -> Result<(AdmissionReview<DynamicObject>, Verdict), String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Create || request.kind.kind != "Pod" {
        return Ok((response.into_review(), Verdict::Skipped));
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let pod = request
        .object
        .as_ref()
        .ok_or_else(|| "the request carries no object".to_string())
        .and_then(|object| serde_json::to_value(object).map_err(|e| e.to_string()))
        .and_then(|value| {
            serde_json::from_value::<Pod>(value).map_err(|e| format!("not a pod: {e}"))
        });
    let outcome = pod.and_then(|pod| {
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default();
        mutate(&pod, scope, config).map(|outcome| (name, outcome))
    });
    let (response, verdict) = match outcome {
        Ok((name, Outcome::Inject(ops))) => {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
                .map_err(|e| format!("building the patch: {e}"))?;
            info!(%namespace, pod = %name, "injecting wva-agent");
            let response = response
                .with_patch(patch)
                .map_err(|e| format!("serializing the patch: {e}"))?;
            (response, Verdict::Injected)
        }
        Ok((name, Outcome::Skip(why))) => {
            debug!(%namespace, pod = %name, why, "not injecting wva-agent");
            (response, Verdict::Skipped)
        }
        Err(error) => {
            warn!(%namespace, %error, "admitting the pod without wva-agent");
            let mut response = response;
            response.warnings = Some(vec![format!("wva-agent not injected: {error}")]);
            (response, Verdict::NotInjected)
        }
    };
    Ok((response.into_review(), verdict))
}

/// Serves the webhook over TLS until shutdown, with the injection
/// configuration `config` holds at each request.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    config: watch::Receiver<Arc<InjectionConfig>>,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = Listener::new(listener, Limits::DEFAULT, "webhook");
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (acceptor, config, metrics) = (acceptor.clone(), config.clone(), metrics.clone());
        let builder = listener.limits().http1();
        let peer = connection.peer();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "webhook: TLS handshake failed"),
                    Err(_) => return debug!(%peer, "webhook: TLS handshake timed out"),
                };
            // Each request uses the configuration current when it arrives.
            let service = service_fn(move |request| {
                handle(request, Arc::clone(&config.borrow()), metrics.clone())
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "webhook: connection ended");
            }
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    config: Arc<InjectionConfig>,
    metrics: WebhookMetrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let scope = match request.uri().path() {
        "/inject/namespace" => Scope::Namespace,
        "/inject/pod" => Scope::Pod,
        other => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                format!("no webhook at {other}"),
            ));
        }
    };
    if request.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview".into(),
        ));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    Ok(match review(&body, scope, &config) {
        Ok((review, verdict)) => match encode(&review) {
            Ok(json) => {
                metrics.count(verdict);
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .expect("static headers are valid")
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(error) => {
            warn!(%error, "webhook: rejecting a request it cannot read");
            metrics.count(Verdict::Malformed);
            text(StatusCode::BAD_REQUEST, error)
        }
    })
}

/// The review as JSON, with the patch as a base64 string: the API server's
/// type is a Go `[]byte`, which Go's JSON encodes that way (kube's type
/// would write an array of numbers).
fn encode(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    let mut json = serde_json::to_value(review)?;
    if let Some(patch) = json.pointer_mut("/response/patch")
        && let Value::Array(bytes) = patch
    {
        let bytes: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&json)
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")))
        .expect("static headers are valid")
}

/// The webhook's TLS configuration for a certificate source: HTTP/1.1, no
/// client certificates (the API server presents none).
pub fn tls_config(certs: Arc<dyn rustls::server::ResolvesServerCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(wva_certs::provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
