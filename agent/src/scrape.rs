//! HTTP scrape of one metrics endpoint into reused buffers.
//!
//! A `Scraper` keeps one keep-alive connection and two buffers (raw body and
//! gunzipped body) across scrapes, so a steady-state scrape does not allocate
//! body-sized memory. The body size limit is enforced while reading and while
//! decompressing, which bounds memory whatever the target sends. Targets
//! may be http or https.

use std::io::{Cursor, Read};
use std::mem;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::bufread::GzDecoder;
use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::tls::{TargetTls, TlsError};
use crate::token::{TokenError, read_bearer};

/// Text 0.0.4 only. The parser reads OpenMetrics too, but Python's
/// `prometheus_client` answers OpenMetrics to any Accept header that names
/// it, whatever its weight, and from 0.23 on writes vLLM's sample names
/// there as `vllm_…`: the agent would find no `vllm:` family at all.
const ACCEPT_EXPOSITION: &str = "text/plain;version=0.0.4";

/// Buffers keep their capacity unless it exceeds this many times the last
/// body, so one oversized body does not pin memory forever.
const SHRINK_RATIO: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum InvalidTarget {
    #[error("invalid scrape target {0}: expected http(s)://host[:port]/path")]
    Url(String),
    #[error("TLS for scrape target {target}: {source}")]
    Tls { target: String, source: TlsError },
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("request to target failed: {0}")]
    Request(String),
    #[error("target returned HTTP {}", .0.as_u16())]
    Status(StatusCode),
    #[error("scrape timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("metrics body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the metrics body failed: {0}")]
    Body(String),
    #[error("unsupported content-encoding {0:?}")]
    Encoding(String),
    #[error("gzip body cannot be decoded: {0}")]
    Gzip(std::io::Error),
    #[error("metrics body is not UTF-8: {0}")]
    Utf8(std::str::Utf8Error),
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl ScrapeError {
    /// Value of the `reason` label of `wva_agent_scrape_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ScrapeError::Connect { .. } => "connect",
            ScrapeError::Request(_) => "request",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::Body(_) => "body",
            ScrapeError::Encoding(_) | ScrapeError::Gzip(_) | ScrapeError::Utf8(_) => "decode",
            ScrapeError::Token(_) => "token",
        }
    }
}

/// Where the target's bearer token comes from.
#[derive(Debug)]
enum Bearer {
    /// Read again at every scrape (a rotated projected token).
    File(PathBuf),
    Value(HeaderValue),
}

#[derive(Debug, thiserror::Error)]
#[error("the bearer token holds characters not allowed in a header")]
pub struct InvalidToken;

/// Scrapes one target; reuse it for every scrape of that target.
#[derive(Debug)]
pub struct Scraper {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    target: Uri,
    authority: String,
    max_body_bytes: usize,
    /// Bearer token for targets that protect their metrics (EPP).
    bearer: Option<Bearer>,
    /// Whether to ask for gzip; a gzip body is decoded either way.
    accept_gzip: bool,
    /// Body as received (possibly gzip).
    raw: Vec<u8>,
    /// Body after gunzip.
    decoded: Vec<u8>,
    /// Holds its inflate state between scrapes; its input is swapped per body.
    gunzip: GzDecoder<Cursor<Vec<u8>>>,
}

impl Scraper {
    /// A scraper of an http target, or of an https one verified against the
    /// system's roots.
    pub fn new(target: Uri, max_body_bytes: usize) -> Result<Self, InvalidTarget> {
        Self::with_tls(target, max_body_bytes, &TargetTls::default())
    }

    /// A scraper whose https target is verified as `tls` says (unused for http).
    pub fn with_tls(
        target: Uri,
        max_body_bytes: usize,
        tls: &TargetTls,
    ) -> Result<Self, InvalidTarget> {
        let authority = match (target.scheme_str(), target.authority()) {
            (Some("http" | "https"), Some(authority)) => authority.to_string(),
            _ => return Err(InvalidTarget::Url(target.to_string())),
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls_error = |source| InvalidTarget::Tls {
            target: target.to_string(),
            source,
        };
        let (config, server_name) = if target.scheme_str() == Some("https") {
            tls.client_config().map_err(tls_error)?
        } else {
            // An http target never uses TLS, so it loads no roots either.
            (no_roots(), None)
        };
        let mut builder = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        if let Some(name) = server_name {
            builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
        }
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Scraper {
            client,
            target,
            authority,
            max_body_bytes,
            bearer: None,
            accept_gzip: false,
            raw: Vec::new(),
            decoded: Vec::new(),
            gunzip: GzDecoder::new(Cursor::new(Vec::new())),
        })
    }

    /// Sends `authorization: Bearer <token>` from this file, read again at
    /// every scrape.
    pub fn with_token_file(mut self, path: PathBuf) -> Self {
        self.bearer = Some(Bearer::File(path));
        self
    }

    /// Sends `authorization: Bearer <token>` with this token.
    pub fn with_token(mut self, token: &str) -> Result<Self, InvalidToken> {
        self.bearer = Some(Bearer::Value(Self::check_token(token)?));
        Ok(self)
    }

    /// The `authorization` value for `token`, if a header can carry it.
    pub fn check_token(token: &str) -> Result<HeaderValue, InvalidToken> {
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Asks for a gzip body. Off by default: on loopback, inflating costs
    /// more CPU than the bytes saved are worth.
    pub fn with_gzip(mut self, accept: bool) -> Self {
        self.accept_gzip = accept;
        self
    }

    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// Fetches the target once and returns the (decompressed) body.
    pub async fn scrape(&mut self, timeout: Duration) -> Result<&str, ScrapeError> {
        self.scrape_uri(self.target.clone(), timeout).await
    }

    /// Like [`Scraper::scrape`], asking `uri` on the target's connection
    /// (the target with a query, say).
    pub async fn scrape_uri(&mut self, uri: Uri, timeout: Duration) -> Result<&str, ScrapeError> {
        let fetched = tokio::time::timeout(timeout, self.fetch(uri))
            .await
            .map_err(|_| ScrapeError::Timeout(timeout))
            .and_then(|fetched| fetched)
            .and_then(|gzip| {
                if gzip {
                    self.gunzip().map(|()| true)
                } else {
                    Ok(false)
                }
            });
        let gzip = match fetched {
            Ok(gzip) => gzip,
            Err(e) => {
                // A failed scrape (too large, cut off, undecodable) keeps no
                // body: its buffers would otherwise stay at their peak.
                self.release();
                return Err(e);
            }
        };
        trim(&mut self.raw);
        let body = if gzip {
            trim(&mut self.decoded);
            &self.decoded
        } else {
            &self.raw
        };
        std::str::from_utf8(body).map_err(ScrapeError::Utf8)
    }

    /// Bytes the body buffers hold on to between scrapes.
    pub fn retained_bytes(&self) -> usize {
        self.raw.capacity() + self.decoded.capacity()
    }

    fn release(&mut self) {
        for buf in [&mut self.raw, &mut self.decoded] {
            buf.clear();
            trim(buf);
        }
    }

    /// Reads the body into `raw`; returns whether it is gzip-encoded.
    async fn fetch(&mut self, uri: Uri) -> Result<bool, ScrapeError> {
        let mut request = Request::get(uri).header(ACCEPT, ACCEPT_EXPOSITION).header(
            ACCEPT_ENCODING,
            if self.accept_gzip { "gzip" } else { "identity" },
        );
        match &self.bearer {
            Some(Bearer::File(path)) => {
                let mut bearer: HeaderValue = read_bearer(path)?;
                bearer.set_sensitive(true);
                request = request.header(AUTHORIZATION, bearer);
            }
            Some(Bearer::Value(bearer)) => request = request.header(AUTHORIZATION, bearer),
            None => {}
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ScrapeError::Request(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.request_error(e))?;
        if response.status() != StatusCode::OK {
            return Err(ScrapeError::Status(response.status()));
        }
        let gzip = is_gzip(response.headers())?;
        let limit = self.max_body_bytes;
        if content_length(response.headers()).is_some_and(|len| len > limit) {
            return Err(ScrapeError::TooLarge { limit });
        }
        self.raw.clear();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ScrapeError::Body(error_chain(&e)))?;
            if let Some(data) = frame.data_ref() {
                // The limit bounds the received body as well as the decoded one.
                if self.raw.len() + data.len() > limit {
                    return Err(ScrapeError::TooLarge { limit });
                }
                self.raw.extend_from_slice(data);
            }
        }
        Ok(gzip)
    }

    /// Decompresses `raw` into `decoded`, reusing the decoder's state. The
    /// limit is one budget for both: the compressed bytes are still held
    /// while the decoded ones are written.
    fn gunzip(&mut self) -> Result<(), ScrapeError> {
        let limit = self.max_body_bytes;
        let budget = limit.saturating_sub(self.raw.len());
        self.gunzip.reset(Cursor::new(mem::take(&mut self.raw)));
        self.decoded.clear();
        let read = (&mut self.gunzip)
            .take(budget as u64 + 1)
            .read_to_end(&mut self.decoded);
        // Hand the raw buffer back whatever the outcome.
        self.raw = mem::take(self.gunzip.get_mut()).into_inner();
        read.map_err(ScrapeError::Gzip)?;
        if self.decoded.len() > budget {
            return Err(ScrapeError::TooLarge { limit });
        }
        Ok(())
    }

    fn request_error(&self, err: hyper_util::client::legacy::Error) -> ScrapeError {
        if err.is_connect() {
            // The innermost cause is the precise one ("Connection refused").
            let mut cause: &dyn std::error::Error = &err;
            while let Some(next) = cause.source() {
                cause = next;
            }
            ScrapeError::Connect {
                authority: self.authority.clone(),
                reason: cause.to_string(),
            }
        } else {
            ScrapeError::Request(error_chain(&err))
        }
    }
}

/// A TLS configuration that trusts nothing.
fn no_roots() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, ScrapeError> {
    match headers.get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => Ok(false),
        Some(v) => Err(ScrapeError::Encoding(v.unwrap_or("<not ASCII>").to_owned())),
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > SHRINK_RATIO * buf.len().max(64 << 10) {
        buf.shrink_to(buf.len() * 2);
    }
}

/// "outer: inner: innermost", since transport errors hide their cause.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.ends_with(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}
