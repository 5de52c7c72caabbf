//! A scrape target serving whatever the test sets.
// Shared by several test crates, each of which uses a part.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

#[derive(Clone)]
pub enum Reply {
    /// 200 with this body and a Content-Length.
    Text(Vec<u8>),
    /// 200 with these bytes and this Content-Encoding.
    Encoded(&'static str, Vec<u8>),
    /// 200 with this body in chunks and no Content-Length.
    Chunked(Vec<u8>),
    Status(StatusCode),
    /// Never answers.
    Hang,
    /// `with` to a request with a query, `without` to one without.
    ByQuery {
        with: Box<Reply>,
        without: Box<Reply>,
    },
}

impl Reply {
    fn to(self, uri: &Uri) -> Reply {
        match self {
            Reply::ByQuery { with, .. } if uri.query().is_some() => with.to(uri),
            Reply::ByQuery { without, .. } => without.to(uri),
            reply => reply,
        }
    }
}

pub struct Target {
    pub url: Uri,
    reply: Arc<Mutex<Reply>>,
    /// Path and query of every request, in order.
    asked: Arc<Mutex<Vec<String>>>,
    requests: mpsc::UnboundedReceiver<HeaderMap>,
}

impl Target {
    pub async fn start(reply: Reply) -> Self {
        Self::serve(reply, None).await
    }

    /// The same target behind TLS.
    pub async fn start_https(reply: Reply, tls: rustls::ServerConfig) -> Self {
        Self::serve(reply, Some(TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn serve(reply: Reply, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let (tx, requests) = mpsc::unbounded_channel();
        let shared = reply.clone();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (reply, tx, tls, log) = (shared.clone(), tx.clone(), tls.clone(), log.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let _ = tx.send(req.headers().clone());
                    log.lock().unwrap().push(req.uri().to_string());
                    let reply = reply.lock().unwrap().clone().to(req.uri());
                    respond(reply)
                });
                tokio::spawn(async move {
                    let http = http1::Builder::new();
                    match tls {
                        // A failed handshake is the client's test to assert.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Target {
            url: format!("{scheme}://{addr}/metrics").parse().unwrap(),
            reply,
            asked,
            requests,
        }
    }

    /// Path and query of every request so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Headers of the next request the target received.
    pub async fn request(&mut self) -> HeaderMap {
        self.requests.recv().await.expect("target stopped")
    }
}

pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

async fn respond(reply: Reply) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let full = |body: Vec<u8>| Full::new(Bytes::from(body)).boxed();
    let response = match reply {
        Reply::Text(body) => Response::new(full(body)),
        Reply::Encoded(encoding, bytes) => Response::builder()
            .header("content-encoding", encoding)
            .body(full(bytes))
            .unwrap(),
        Reply::Chunked(body) => {
            let chunks: Vec<_> = body
                .chunks(16 << 10)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            Response::new(StreamBody::new(tokio_stream::iter(chunks)).boxed())
        }
        Reply::Status(status) => Response::builder()
            .status(status)
            .body(full(b"unavailable\n".to_vec()))
            .unwrap(),
        Reply::Hang => std::future::pending().await,
        Reply::ByQuery { .. } => unreachable!("resolved by Reply::to"),
    };
    Ok(response)
}
