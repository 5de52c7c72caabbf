//! Helpers shared by the integration tests; each test binary uses a subset.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vllm_sim::engine::{SequenceSpec, Submission, TokenEvent};
use vllm_sim::tokens::TokenSampler;
use vllm_sim::{Args, Replica, SimConfig, api, server};

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

pub fn config(extra: &[&str]) -> SimConfig {
    let mut argv = vec!["vllm-sim", "--model", MODEL];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv)
        .expect("valid test arguments")
        .to_config()
        .expect("valid test config")
}

/// A replica on the current runtime.
pub fn replica(extra: &[&str]) -> Arc<Replica> {
    Replica::start(config(extra))
}

/// Sends one request through the HTTP handler in-process (no socket).
pub async fn call(
    replica: &Arc<Replica>,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request");
    let response = api::handle(replica.clone(), request).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("infallible body")
        .to_bytes();
    (status, body)
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// One sequence of `prompt_tokens` generating `max_tokens`.
pub fn sequence(index: u32, prompt_tokens: u32, max_tokens: u32) -> SequenceSpec {
    SequenceSpec {
        index,
        parent: index,
        prompt_tokens,
        max_tokens,
        max_tokens_param: Some(max_tokens),
        eos_at: None,
        lora: None,
        sampler: TokenSampler::new(u64::from(index)),
    }
}

/// A one-sequence submission and the receiver of its tokens.
pub fn submission(
    prompt_tokens: u32,
    max_tokens: u32,
) -> (Submission, mpsc::UnboundedReceiver<TokenEvent>) {
    let (events, rx) = mpsc::unbounded_channel();
    let submission = Submission {
        arrival: Instant::now(),
        events,
        n: 1,
        sequences: vec![sequence(0, prompt_tokens, max_tokens)],
    };
    (submission, rx)
}

/// The value of the sample `name{labels…}` whose label block contains every
/// `label="value"` pair given.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {name}: {e}"))
        })
        .unwrap_or_else(|| panic!("no sample {name} with {labels:?} in:\n{text}"))
}

/// A `vllm:` family of an exposition: its type, the label names of its
/// samples and the `le` bounds of its buckets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub labels: BTreeSet<String>,
    pub buckets: Vec<String>,
}

/// Reads the `# TYPE` lines and sample lines of the `vllm:` families.
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .expect("TYPE line has a name and a type");
            current = name.starts_with("vllm:").then(|| name.to_owned());
            if let Some(name) = &current {
                families.entry(name.clone()).or_default().kind = kind.to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some(family) = current.as_ref().and_then(|name| families.get_mut(name)) else {
            continue;
        };
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let (block, _) = rest.rsplit_once('}').expect("label block is closed");
        for (name, value) in label_pairs(block) {
            if name == "le" && !family.buckets.contains(&value) {
                family.buckets.push(value.clone());
            }
            family.labels.insert(name);
        }
    }
    families
}

/// Label pairs of a label block, with escapes in values resolved.
fn label_pairs(block: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = block.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            return pairs;
        }
        assert_eq!(chars.next(), Some('"'), "label value of {name} is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("escape has a character")),
                '"' => break,
                c => value.push(c),
            }
        }
        pairs.push((name.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// A fixture from the shared metrics fixtures.
pub fn fixture(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "shared",
        "fixtures",
        "metrics",
        name,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "metrics fixture {} is missing ({e}); it ships in shared/fixtures/metrics",
            path.display()
        )
    })
}

/// A replica served over HTTP on an ephemeral loopback port.
pub struct Server {
    pub addr: SocketAddr,
    pub replica: Arc<Replica>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(extra: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let replica = replica(extra);
        let (stop, stopped) = oneshot::channel();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(server::serve(
            listener,
            replica.clone(),
            shutdown,
            std::time::Duration::from_secs(1),
        ));
        Self {
            addr,
            replica,
            stop: Some(stop),
            task,
        }
    }

    /// Stops accepting and waits for the server to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task");
    }

    /// Sends one request on a new connection and returns the response head
    /// and the whole body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (http::response::Parts, Bytes) {
        let response = send(self.addr, method, path, body).await;
        let (parts, body) = response.into_parts();
        (
            parts,
            body.collect().await.expect("response body").to_bytes(),
        )
    }
}

/// Sends one request on a new connection and returns the response with its
/// body unread.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request");
    sender.send_request(request).await.expect("response")
}
