//! Client of the Prometheus metrics source: instant PromQL queries over the
//! HTTP API (`GET /api/v1/query`), with TLS (custom CA, client certificate,
//! server-name override), an optional bearer token and a per-query timeout.
//!
//! HTTPS is required unless `PROMETHEUS_TLS_INSECURE_SKIP_VERIFY` is set,
//! which also disables certificate verification and is for development only.
//! [`PrometheusClient::pod_signals`] runs the [`signal_queries`] of a model
//! and joins them by the `pod` label.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use thiserror::Error;
use tracing::warn;
use wva_agent::tls::AcceptAnyCertificate;

use super::promql::{Namespace, signal_queries};

pub const KEY_BASE_URL: &str = "PROMETHEUS_BASE_URL";
pub const KEY_CA_CERT: &str = "PROMETHEUS_CA_CERT_PATH";
pub const KEY_CLIENT_CERT: &str = "PROMETHEUS_CLIENT_CERT_PATH";
pub const KEY_CLIENT_KEY: &str = "PROMETHEUS_CLIENT_KEY_PATH";
pub const KEY_SERVER_NAME: &str = "PROMETHEUS_SERVER_NAME";
pub const KEY_INSECURE: &str = "PROMETHEUS_TLS_INSECURE_SKIP_VERIFY";
pub const KEY_BEARER_TOKEN: &str = "PROMETHEUS_BEARER_TOKEN";

/// Query timeout when none is configured.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body accepted.
const MAX_BODY: usize = 32 << 20;

/// Where and how to reach Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    pub base_url: Uri,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    pub bearer_token: Option<String>,
    /// Bound on a whole request: connect, TLS, send and read the body.
    pub query_timeout: Duration,
}

impl PrometheusConfig {
    /// A config for `base_url` with everything else at its default.
    pub fn new(base_url: Uri) -> Self {
        PrometheusConfig {
            base_url,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            insecure_skip_verify: false,
            bearer_token: None,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// Reads the `PROMETHEUS_*` keys through `get` (e.g. the environment,
    /// then a ConfigMap); empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, PrometheusError> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let url = get(KEY_BASE_URL).ok_or_else(|| config_error(KEY_BASE_URL, "is not set"))?;
        let base_url = url
            .trim()
            .parse()
            .map_err(|e| config_error(KEY_BASE_URL, format!("{url:?} is not a URL: {e}")))?;
        let insecure_skip_verify = match get(KEY_INSECURE).as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(config_error(
                    KEY_INSECURE,
                    format!("{other:?} is not true or false"),
                ));
            }
        };
        Ok(PrometheusConfig {
            ca_cert: get(KEY_CA_CERT).map(PathBuf::from),
            client_cert: get(KEY_CLIENT_CERT).map(PathBuf::from),
            client_key: get(KEY_CLIENT_KEY).map(PathBuf::from),
            server_name: get(KEY_SERVER_NAME),
            insecure_skip_verify,
            bearer_token: get(KEY_BEARER_TOKEN).map(|t| t.trim().to_string()),
            ..PrometheusConfig::new(base_url)
        })
    }

    /// Checks what can be checked without reading files.
    pub fn validate(&self) -> Result<(), PrometheusError> {
        let url = &self.base_url;
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if self.insecure_skip_verify => {}
            Some("http") => {
                return Err(config_error(
                    KEY_BASE_URL,
                    format!(
                        "{url} is not https (http is only allowed with {KEY_INSECURE}=true, for development)"
                    ),
                ));
            }
            _ => {
                return Err(config_error(
                    KEY_BASE_URL,
                    format!("{url:?} must be an https:// URL"),
                ));
            }
        }
        if url.host().is_none_or(str::is_empty) {
            return Err(config_error(KEY_BASE_URL, format!("{url} has no host")));
        }
        if url.query().is_some() {
            return Err(config_error(
                KEY_BASE_URL,
                format!("{url} must not have a query"),
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => {
                return Err(config_error(
                    KEY_CLIENT_KEY,
                    format!("is required when {KEY_CLIENT_CERT} is set"),
                ));
            }
            (None, Some(_)) => {
                return Err(config_error(
                    KEY_CLIENT_CERT,
                    format!("is required when {KEY_CLIENT_KEY} is set"),
                ));
            }
            _ => {}
        }
        if let Some(name) = &self.server_name {
            ServerName::try_from(name.as_str()).map_err(|_| {
                config_error(
                    KEY_SERVER_NAME,
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?;
        }
        if let Some(token) = &self.bearer_token
            && (token.is_empty() || HeaderValue::from_str(&format!("Bearer {token}")).is_err())
        {
            return Err(config_error(
                KEY_BEARER_TOKEN,
                "must be non-empty visible ASCII",
            ));
        }
        if self.query_timeout.is_zero() {
            return Err(config_error("query timeout", "must be positive"));
        }
        Ok(())
    }
}

/// Why a query (or building the client) failed.
#[derive(Debug, Error)]
pub enum PrometheusError {
    /// A configuration value is wrong; `key` names its `PROMETHEUS_*` key.
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("TLS handshake with {authority} failed: {source}{}", tls_hint(source))]
    Tls {
        authority: String,
        source: rustls::Error,
    },
    #[error("request to Prometheus at {authority} failed: {reason}")]
    Transport { authority: String, reason: String },
    #[error("Prometheus query at {authority} timed out after {after:?}")]
    Timeout { authority: String, after: Duration },
    #[error("Prometheus at {authority} answered HTTP {status}: {body}")]
    Status {
        authority: String,
        status: StatusCode,
        body: String,
    },
    /// Prometheus answered `"status":"error"` (e.g. `bad_data` for a parse error).
    #[error("Prometheus refused the query ({error_type}): {error}")]
    Query { error_type: String, error: String },
    #[error("unexpected Prometheus response: {0}")]
    Response(String),
}

fn config_error(key: &'static str, reason: impl Into<String>) -> PrometheusError {
    PrometheusError::Config {
        key,
        reason: reason.into(),
    }
}

/// What a TLS failure most likely means, for the operator.
fn tls_hint(error: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match error {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            " (the server's certificate is not trusted: check PROMETHEUS_CA_CERT_PATH)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            " (the server's certificate is not valid for this name: check PROMETHEUS_SERVER_NAME)"
        }
        E::AlertReceived(A::CertificateRequired | A::BadCertificate | A::UnknownCA)
        | E::AlertReceived(A::CertificateUnknown | A::HandshakeFailure) => {
            " (the server refused the client certificate: check PROMETHEUS_CLIENT_CERT_PATH)"
        }
        _ => "",
    }
}

/// One series of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The signals of one pod; `None` when Prometheus has no series for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodSignals {
    /// KV-cache usage, 0..1, averaged over the pod's engine ranks.
    pub kv_cache_usage: Option<f64>,
    pub requests_waiting: Option<f64>,
    pub requests_running: Option<f64>,
    /// Successful requests so far (a counter).
    pub request_success: Option<f64>,
}

/// A Prometheus HTTP API client; cheap to clone.
#[derive(Clone)]
pub struct PrometheusClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `base_url` without a trailing `/`, to which `/api/v1/query` is appended.
    base: String,
    authority: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl PrometheusClient {
    /// Validates `config`, reads its PEM files and builds the client.
    pub fn new(config: PrometheusConfig) -> Result<Self, PrometheusError> {
        config.validate()?;
        if config.insecure_skip_verify {
            warn!(
                "{KEY_INSECURE}=true: Prometheus's certificate is not verified and http is allowed; for development only"
            );
        }
        let tls = tls_config(&config)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let mut builder = if config.insecure_skip_verify {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        if let Some(name) = &config.server_name {
            let name = ServerName::try_from(name.clone()).expect("validated");
            builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
        }
        let connector = builder.enable_http1().build();
        let url = &config.base_url;
        let authority = url.authority().map(|a| a.to_string()).unwrap_or_default();
        let base = format!(
            "{}://{authority}{}",
            url.scheme_str().unwrap_or("https"),
            url.path().trim_end_matches('/')
        );
        Ok(PrometheusClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            authority,
            authorization: config.bearer_token.as_ref().map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).expect("validated");
                v.set_sensitive(true);
                v
            }),
            timeout: config.query_timeout,
        })
    }

    /// Runs the instant query `promql` and returns its vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PrometheusError> {
        let uri = format!("{}/api/v1/query?query={}", self.base, url_encode(promql));
        let mut request = Request::get(uri).header(header::ACCEPT, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| PrometheusError::Response(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.transport_error(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => self.transport_error(&*e),
                    Err(e) => PrometheusError::Response(format!("reading the body: {e}")),
                })?
                .to_bytes();
            decode(&self.authority, status, &body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PrometheusError::Timeout {
                authority: self.authority.clone(),
                after: self.timeout,
            })?
    }

    /// The signals of every pod serving `model` in `namespace`, joined by the
    /// `pod` label (series without one are ignored).
    pub async fn pod_signals(
        &self,
        namespace: &Namespace,
        model: &str,
    ) -> Result<BTreeMap<String, PodSignals>, PrometheusError> {
        let q = signal_queries(namespace, model);
        let (kv, waiting, running, success) = tokio::try_join!(
            self.query(&q.kv_cache_usage),
            self.query(&q.requests_waiting),
            self.query(&q.requests_running),
            self.query(&q.request_success),
        )?;
        let mut pods = BTreeMap::<String, PodSignals>::new();
        type Field = fn(&mut PodSignals) -> &mut Option<f64>;
        let fields: [(Vec<Sample>, Field); 4] = [
            (kv, |s| &mut s.kv_cache_usage),
            (waiting, |s| &mut s.requests_waiting),
            (running, |s| &mut s.requests_running),
            (success, |s| &mut s.request_success),
        ];
        for (samples, field) in fields {
            for (mut labels, value) in samples {
                if let Some(pod) = labels.remove("pod") {
                    *field(pods.entry(pod).or_default()) = Some(value);
                }
            }
        }
        Ok(pods)
    }

    fn transport_error(&self, error: &(dyn StdError + 'static)) -> PrometheusError {
        match find_rustls_error(error) {
            Some(tls) => PrometheusError::Tls {
                authority: self.authority.clone(),
                source: tls.clone(),
            },
            None => PrometheusError::Transport {
                authority: self.authority.clone(),
                reason: error_chain(error),
            },
        }
    }
}

/// The rustls configuration: roots (the CA file, the system's, or none when
/// verification is off) and the optional client certificate.
fn tls_config(config: &PrometheusConfig) -> Result<ClientConfig, PrometheusError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(KEY_BASE_URL, format!("TLS setup: {e}")))?;
    let builder = if config.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else if let Some(path) = &config.ca_cert {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(KEY_CA_CERT, path)? {
            roots
                .add(cert)
                .map_err(|e| config_error(KEY_CA_CERT, format!("{}: {e}", path.display())))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_native_roots().map_err(|e| {
            config_error(
                KEY_CA_CERT,
                format!("is not set and the system has no usable roots: {e}"),
            )
        })?
    };
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(KEY_CLIENT_CERT, cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                config_error(
                    KEY_CLIENT_KEY,
                    format!("{} holds no usable PEM private key: {e}", key.display()),
                )
            })?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                config_error(
                    KEY_CLIENT_KEY,
                    format!(
                        "{} does not fit the certificate in {}: {e}",
                        key.display(),
                        cert.display()
                    ),
                )
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The PEM certificates in `path`; at least one.
fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PrometheusError> {
    let pem = std::fs::read(path)
        .map_err(|e| config_error(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Decodes an API answer: a `status: error` body wins over the HTTP status.
fn decode(
    authority: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<Vec<Sample>, PrometheusError> {
    #[derive(Deserialize)]
    struct Envelope {
        status: String,
        data: Option<Data>,
        #[serde(rename = "errorType")]
        error_type: Option<String>,
        error: Option<String>,
    }
    #[derive(Deserialize)]
    struct Data {
        #[serde(rename = "resultType")]
        result_type: String,
        result: serde_json::Value,
    }
    #[derive(Deserialize)]
    struct Series {
        metric: BTreeMap<String, String>,
        value: (serde_json::Value, String),
    }

    let envelope = serde_json::from_slice::<Envelope>(body);
    if let Ok(Envelope {
        status: s,
        error_type,
        error,
        ..
    }) = &envelope
        && s == "error"
    {
        return Err(PrometheusError::Query {
            error_type: error_type.clone().unwrap_or_default(),
            error: error.clone().unwrap_or_default(),
        });
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(body);
        return Err(PrometheusError::Status {
            authority: authority.to_string(),
            status,
            body: text.trim().chars().take(200).collect(),
        });
    }
    let envelope =
        envelope.map_err(|e| PrometheusError::Response(format!("not an API answer: {e}")))?;
    let data = match (envelope.status.as_str(), envelope.data) {
        ("success", Some(data)) => data,
        (status, _) => {
            return Err(PrometheusError::Response(format!(
                "status {status:?} without data"
            )));
        }
    };
    if data.result_type != "vector" {
        return Err(PrometheusError::Response(format!(
            "expected an instant vector, got a {}",
            data.result_type
        )));
    }
    let series: Vec<Series> = serde_json::from_value(data.result)
        .map_err(|e| PrometheusError::Response(format!("malformed vector: {e}")))?;
    series
        .into_iter()
        .map(|s| {
            let value = parse_value(&s.value.1).ok_or_else(|| {
                PrometheusError::Response(format!("sample value {:?} is not a number", s.value.1))
            })?;
            Ok((s.metric, value))
        })
        .collect()
}

/// A sample value as Prometheus writes it (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The rustls error somewhere in `error`'s chain, looking inside I/O errors
/// (whose `source()` skips the error they wrap).
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = find_rustls_error(inner)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// `error` and its causes, `: `-separated, without repeats.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(url: &str) -> PrometheusConfig {
        PrometheusConfig::new(url.parse().unwrap())
    }

    fn key_of(result: Result<impl std::fmt::Debug, PrometheusError>) -> &'static str {
        match result {
            Err(PrometheusError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn https_is_required_unless_verification_is_explicitly_skipped() {
        assert!(https("https://prom:9091").validate().is_ok());
        let err = https("http://prom:9090").validate().unwrap_err();
        assert!(
            err.to_string().starts_with("PROMETHEUS_BASE_URL: "),
            "{err}"
        );
        assert!(err.to_string().contains(KEY_INSECURE), "{err}");
        let dev = PrometheusConfig {
            insecure_skip_verify: true,
            ..https("http://prom:9090")
        };
        assert!(dev.validate().is_ok());
        assert_eq!(key_of(https("ftp://prom").validate()), KEY_BASE_URL);
        assert_eq!(key_of(https("/api").validate()), KEY_BASE_URL);
    }

    #[test]
    fn client_cert_and_key_go_together() {
        let cert_only = PrometheusConfig {
            client_cert: Some("c.pem".into()),
            ..https("https://prom")
        };
        assert_eq!(key_of(cert_only.validate()), KEY_CLIENT_KEY);
        let key_only = PrometheusConfig {
            client_key: Some("k.pem".into()),
            ..https("https://prom")
        };
        assert_eq!(key_of(key_only.validate()), KEY_CLIENT_CERT);
    }

    #[test]
    fn bad_server_names_tokens_and_files_are_named() {
        let name = PrometheusConfig {
            server_name: Some("not a name".into()),
            ..https("https://prom")
        };
        assert_eq!(key_of(name.validate()), KEY_SERVER_NAME);
        let token = PrometheusConfig {
            bearer_token: Some("a\nb".into()),
            ..https("https://prom")
        };
        assert_eq!(key_of(token.validate()), KEY_BEARER_TOKEN);

        let dir = tempfile::tempdir().unwrap();
        let missing = PrometheusConfig {
            ca_cert: Some(dir.path().join("absent.pem")),
            ..https("https://prom")
        };
        let err = PrometheusClient::new(missing).err().unwrap().to_string();
        assert!(
            err.starts_with("PROMETHEUS_CA_CERT_PATH: cannot read ") && err.contains("absent.pem"),
            "{err}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let invalid = PrometheusConfig {
            ca_cert: Some(garbage.clone()),
            ..https("https://prom")
        };
        let err = PrometheusClient::new(invalid).err().unwrap().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let key = PrometheusConfig {
            insecure_skip_verify: true,
            client_cert: Some(garbage.clone()),
            client_key: Some(garbage),
            ..https("https://prom")
        };
        assert_eq!(
            key_of(PrometheusClient::new(key).map(|_| ())),
            KEY_CLIENT_CERT
        );
    }

    #[test]
    fn config_is_read_from_keys() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = PrometheusConfig::from_lookup(vars(&[
            (KEY_BASE_URL, "https://prom:9091/prom/"),
            (KEY_INSECURE, "false"),
            (KEY_SERVER_NAME, "prom.example"),
            (KEY_BEARER_TOKEN, "tok\n"),
            (KEY_CA_CERT, ""),
        ]))
        .unwrap();
        assert_eq!(c.base_url, "https://prom:9091/prom/");
        assert_eq!(c.server_name.as_deref(), Some("prom.example"));
        assert_eq!(c.bearer_token.as_deref(), Some("tok"));
        assert_eq!(c.ca_cert, None);
        assert!(!c.insecure_skip_verify);
        assert_eq!(
            key_of(PrometheusConfig::from_lookup(vars(&[]))),
            KEY_BASE_URL
        );
        assert_eq!(
            key_of(PrometheusConfig::from_lookup(vars(&[
                (KEY_BASE_URL, "https://p"),
                (KEY_INSECURE, "yes")
            ]))),
            KEY_INSECURE
        );
    }

    #[test]
    fn vectors_are_parsed_with_special_values() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1700000000.123,"1.5"]},
            {"metric":{"pod":"b"},"value":[1700000000,"NaN"]},
            {"metric":{},"value":[1700000000,"+Inf"]},
            {"metric":{"pod":"c"},"value":[1700000000,"-Inf"]}]}}"#;
        let v = decode("p", StatusCode::OK, body).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].0.get("pod").map(String::as_str), Some("a"));
        assert_eq!(v[0].1, 1.5);
        assert!(v[1].1.is_nan());
        assert!(v[2].0.is_empty());
        assert_eq!(v[2].1, f64::INFINITY);
        assert_eq!(v[3].1, f64::NEG_INFINITY);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(decode("p", StatusCode::OK, empty).unwrap().is_empty());
    }

    #[test]
    fn errors_say_what_failed() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let err = decode("p", StatusCode::BAD_REQUEST, bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus refused the query (bad_data): parse error at char 5"
        );
        let err = decode("p:9090", StatusCode::BAD_GATEWAY, b"upstream down").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus at p:9090 answered HTTP 502 Bad Gateway: upstream down"
        );
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
        assert!(
            decode("p", StatusCode::OK, scalar)
                .unwrap_err()
                .to_string()
                .contains("got a scalar")
        );
        let word = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#;
        assert!(decode("p", StatusCode::OK, word).is_err());
        let tls = PrometheusError::Tls {
            authority: "127.0.0.1:9090".into(),
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        };
        assert!(
            tls.to_string().starts_with(
                "TLS handshake with 127.0.0.1:9090 failed: invalid peer certificate: UnknownIssuer"
            ),
            "{tls}"
        );
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"a{b="c d"}+&"#),
            "a%7Bb%3D%22c%20d%22%7D%2B%26"
        );
        assert_eq!(url_encode("é\n"), "%C3%A9%0A");
    }
}
