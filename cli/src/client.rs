//! The connection to the aggregator's `wva.v1.Diagnostics` service, and what
//! its failures mean to an operator.

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status, Streaming};
use wva_agent::scrape::error_chain;
use wva_agent::tls::{TlsError, TlsFiles};
use wva_agent::token::read_bearer;
use wva_proto::v1::diagnostics_client::DiagnosticsClient;
use wva_proto::v1::{DecisionFilter, DecisionSnapshot, PodSample, TapRequest};

use crate::args::Connection;
use crate::error::{Error, Result};

/// HTTP/2 pings notice a vanished aggregator during a quiet watch or tap.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    rpc: DiagnosticsClient<Channel>,
    token: Option<AsciiMetadataValue>,
    server: String,
    timeout: Duration,
}

impl Client {
    /// Reads the credentials and connects (TCP, TLS, HTTP/2) within the
    /// connection's timeout.
    pub async fn connect(connection: &Connection) -> Result<Client> {
        let server = display(&connection.server);
        let tls = tls_files(connection)?;
        let token = connection
            .token_file
            .as_deref()
            .map(read_bearer)
            .transpose()?;
        let mut endpoint = Endpoint::from(connection.server.clone())
            .connect_timeout(connection.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(files) = tls {
            endpoint = endpoint
                .tls_config(files.load()?)
                .map_err(|e| TlsError::Config(error_chain(&e)))?;
        }
        // The endpoint's timeout covers TCP only; this one TLS and HTTP/2 too.
        let channel = match tokio::time::timeout(connection.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                return Err(Error::Unreachable {
                    reason: transport_reason(&e),
                    server,
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    reason: format!(
                        "no connection within {}",
                        humantime::format_duration(connection.timeout)
                    ),
                    server,
                });
            }
        };
        Ok(Client {
            rpc: DiagnosticsClient::new(channel),
            token,
            server,
            timeout: connection.timeout,
        })
    }

    /// The aggregator's URL as the user gave it, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub async fn get(&self, filter: DecisionFilter) -> Result<DecisionSnapshot> {
        let mut rpc = self.rpc.clone();
        self.answer(rpc.get_decisions(self.request(filter))).await
    }

    pub async fn watch(&self, filter: DecisionFilter) -> Result<Streaming<DecisionSnapshot>> {
        let mut rpc = self.rpc.clone();
        self.answer(rpc.watch_decisions(self.request(filter))).await
    }

    pub async fn tap(&self, tap: TapRequest) -> Result<Streaming<PodSample>> {
        let mut rpc = self.rpc.clone();
        self.answer(rpc.tap_pod(self.request(tap))).await
    }

    /// The answer to a call (for a stream, its opening) within the timeout.
    async fn answer<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => Err(self.refusal(status)),
            Err(_) => Err(Error::NoAnswer {
                server: self.server.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// The next message of a stream; the end of a stream is an error, since
    /// the aggregator never ends one on its own while it runs.
    pub async fn next<T>(&self, stream: &mut Streaming<T>) -> Result<T> {
        match stream.message().await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(Error::Closed),
            Err(status) if is_transport(&status) => Err(Error::Lost {
                server: self.server.clone(),
                reason: status_reason(&status),
            }),
            Err(status) => Err(Error::Cut(status_reason(&status))),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// What a status answering a call means.
    fn refusal(&self, status: Status) -> Error {
        if is_transport(&status) {
            Error::Unreachable {
                server: self.server.clone(),
                reason: status_reason(&status),
            }
        } else if status.code() == Code::Unimplemented {
            // An empty message comes from a gRPC server without the
            // service; a proxy or plain HTTP server says more.
            let detail = match status.message() {
                "" => String::new(),
                message => format!(": {message}"),
            };
            Error::Unimplemented {
                server: self.server.clone(),
                detail,
            }
        } else {
            Error::Refused(status_reason(&status))
        }
    }
}

/// The TLS files for an https URL; TLS options with an http URL are a
/// mistake worth stopping for, not something to ignore.
fn tls_files(connection: &Connection) -> Result<Option<TlsFiles>, TlsError> {
    let files = TlsFiles {
        ca: connection.tls_ca.clone(),
        ca_pem: None,
        client: connection.tls_cert.clone().zip(connection.tls_key.clone()),
        server_name: connection.tls_server_name.clone(),
    };
    if connection.server.scheme_str() == Some("https") {
        Ok(Some(files))
    } else if files.any_set() {
        Err(TlsError::NeedsHttps(display(&connection.server)))
    } else {
        Ok(None)
    }
}

/// `http://host:port`, without the `/` a parsed URL gains.
fn display(uri: &Uri) -> String {
    let text = uri.to_string();
    match text.strip_suffix('/') {
        Some(bare) if uri.path() == "/" => bare.to_string(),
        _ => text,
    }
}

/// A status made by the client's transport (no connection, connection
/// reset) rather than sent by the aggregator.
fn is_transport(status: &Status) -> bool {
    status.source().is_some()
}

/// The server's message, or for a transport failure its cause; the code's
/// description when there is neither.
fn status_reason(status: &Status) -> String {
    if let Some(source) = status.source() {
        return transport_reason(source);
    }
    match status.message() {
        "" => format!("{:?}: {}", status.code(), status.code().description()),
        message => message.to_string(),
    }
}

/// The cause of a transport failure, without tonic's generic outer layer.
fn transport_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(err);
    match chain.strip_prefix("transport error: ") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => chain,
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use clap::Parser;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Identity, Server, ServerTlsConfig};
    use wva_proto::v1::diagnostics_server::{Diagnostics, DiagnosticsServer};

    use super::*;
    use crate::args::Cli;

    /// A Diagnostics server playing a script: `get` wants a token, `watch`
    /// sends one snapshot and then cuts the watcher off, a tap of pod `gone`
    /// ends at once and any other pod is unknown.
    struct Scripted;

    type Answers<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Diagnostics for Scripted {
        type WatchDecisionsStream = Answers<DecisionSnapshot>;
        type TapPodStream = Answers<PodSample>;

        async fn watch_decisions(
            &self,
            _: Request<DecisionFilter>,
        ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
            let answers = vec![
                Ok(DecisionSnapshot::default()),
                Err(Status::resource_exhausted(
                    "this watcher fell 32 snapshots behind and was cut off",
                )),
            ];
            Ok(Response::new(Box::pin(tokio_stream::iter(answers))))
        }

        async fn get_decisions(
            &self,
            request: Request<DecisionFilter>,
        ) -> Result<Response<DecisionSnapshot>, Status> {
            match request.metadata().get("authorization") {
                Some(token) if token == "Bearer s3cret" => Ok(Response::new(DecisionSnapshot {
                    decisions: vec![],
                    leading: true,
                    at_ms: 0,
                })),
                _ => Err(Status::unauthenticated("a bearer token is required")),
            }
        }

        async fn tap_pod(
            &self,
            request: Request<TapRequest>,
        ) -> Result<Response<Self::TapPodStream>, Status> {
            let TapRequest { namespace, pod } = request.into_inner();
            if pod == "gone" {
                return Ok(Response::new(Box::pin(tokio_stream::empty())));
            }
            Err(Status::not_found(format!(
                "no pod {namespace}/{pod} streams to this aggregator"
            )))
        }
    }

    /// The URL of a [`Scripted`] server on loopback, over TLS with `tls`.
    async fn scripted_with(tls: Option<ServerTlsConfig>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut builder = Server::builder();
        if let Some(tls) = tls.clone() {
            builder = builder.tls_config(tls).unwrap();
        }
        let server = builder
            .add_service(DiagnosticsServer::new(Scripted))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    async fn scripted() -> String {
        scripted_with(None).await
    }

    #[tokio::test]
    async fn the_token_travels_as_bearer_metadata() {
        let server = scripted().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let token = token.to_str().unwrap();

        let with = Client::connect(&connection(&["--server", &server, "--token-file", token]))
            .await
            .unwrap();
        assert!(with.get(DecisionFilter::default()).await.unwrap().leading);

        let without = Client::connect(&connection(&["--server", &server]))
            .await
            .unwrap();
        let err = without.get(DecisionFilter::default()).await.unwrap_err();
        assert_eq!(err.to_string(), "a bearer token is required");
    }

    #[tokio::test]
    async fn tls_verifies_the_aggregator_by_the_given_ca_and_name() {
        wva_agent::tls::install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["wva.wva-system.svc".to_string()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let identity = Identity::from_pem(cert.pem(), key.serialize_pem());
        let server = scripted_with(Some(ServerTlsConfig::new().identity(identity))).await;

        let dir = tempfile::tempdir().unwrap();
        let (ca_file, token) = (dir.path().join("ca.pem"), dir.path().join("token"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&token, "s3cret").unwrap();
        let (ca_file, token) = (ca_file.to_str().unwrap(), token.to_str().unwrap());

        let client = Client::connect(&connection(&[
            "--server",
            &server,
            "--tls-ca",
            ca_file,
            "--tls-server-name",
            "wva.wva-system.svc",
            "--token-file",
            token,
        ]))
        .await
        .unwrap();
        assert!(client.get(DecisionFilter::default()).await.unwrap().leading);

        // By IP, the certificate's name does not match.
        let err = Client::connect(&connection(&["--server", &server, "--tls-ca", ca_file]))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the aggregator at {server}: ")),
            "{text}"
        );
        assert!(text.contains("certificate"), "{text}");
    }

    #[tokio::test]
    async fn refusals_and_stream_ends_read_as_the_server_means_them() {
        let server = scripted().await;
        let client = Client::connect(&connection(&["--server", &server]))
            .await
            .unwrap();

        let mut watch = client.watch(DecisionFilter::default()).await.unwrap();
        client.next(&mut watch).await.unwrap();
        let cut = client.next(&mut watch).await.unwrap_err();
        assert_eq!(
            cut.to_string(),
            "the aggregator cut the stream: this watcher fell 32 snapshots behind and was cut off"
        );

        let tap = |pod: &str| TapRequest {
            namespace: "llm".into(),
            pod: pod.into(),
        };
        let unknown = client.tap(tap("nope")).await.err().unwrap();
        assert_eq!(
            unknown.to_string(),
            "no pod llm/nope streams to this aggregator"
        );
        let mut gone = client.tap(tap("gone")).await.unwrap();
        let ended = client.next(&mut gone).await.unwrap_err();
        assert!(matches!(ended, Error::Closed), "{ended}");
    }

    fn connection(args: &[&str]) -> Connection {
        Cli::try_parse_from(["wvactl"].iter().chain(args).chain(&["get"]))
            .unwrap()
            .connection
    }

    #[test]
    fn urls_print_as_given() {
        assert_eq!(
            display(&"http://127.0.0.1:9443".parse().unwrap()),
            "http://127.0.0.1:9443"
        );
        assert_eq!(
            display(&"https://wva:9443/".parse().unwrap()),
            "https://wva:9443"
        );
    }

    #[test]
    fn tls_options_need_an_https_url() {
        let plain = connection(&["--server", "http://wva:9443"]);
        assert!(tls_files(&plain).unwrap().is_none());

        let err = tls_files(&connection(&[
            "--server",
            "http://wva:9443",
            "--tls-ca",
            "ca.pem",
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TLS flags need an https:// aggregator URL, not http://wva:9443"
        );

        let tls = connection(&[
            "--server",
            "https://10.0.0.7:9443",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-server-name",
            "wva.wva-system.svc",
        ]);
        let files = tls_files(&tls).unwrap().unwrap();
        assert_eq!(files.ca.unwrap().to_str(), Some("ca.pem"));
        assert_eq!(files.client.unwrap().1.to_str(), Some("k.pem"));
        assert_eq!(files.server_name.as_deref(), Some("wva.wva-system.svc"));
    }

    #[test]
    fn server_statuses_read_as_their_message() {
        let found = Status::not_found("no pod llm/x streams to this aggregator");
        assert!(!is_transport(&found));
        assert_eq!(
            status_reason(&found),
            "no pod llm/x streams to this aggregator"
        );
        assert_eq!(
            status_reason(&Status::unimplemented("")),
            "Unimplemented: Operation is not implemented or not supported"
        );
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert!(is_transport(&reset));
        assert_eq!(status_reason(&reset), "connection reset by peer");
    }

    #[tokio::test]
    async fn a_missing_token_file_stops_before_connecting() {
        let dir = std::env::temp_dir().join("wvactl-no-such-dir");
        let token = dir.join("token");
        let connection = connection(&["--token-file", token.to_str().unwrap()]);
        let err = Client::connect(&connection).await.err().unwrap();
        assert!(matches!(err, Error::Token(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read token file {}: ", token.display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let server = format!("http://127.0.0.1:{port}");
        let err = Client::connect(&connection(&["--server", &server]))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the aggregator at {server}: ")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
    }
}
