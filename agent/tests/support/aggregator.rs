//! An in-process aggregator that hands every agent stream to the test.
// Shared by several test crates, each of which uses a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use wva_proto::v1::telemetry_server::{Telemetry, TelemetryServer};
use wva_proto::v1::{AgentMessage, ControlMessage, Hello, Sample, agent_message, control_message};

/// Upper bound of any wait in the tests; a hang fails instead of blocking.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// One agent stream, as the server sees it.
pub struct Connection {
    pub metadata: MetadataMap,
    pub inbound: Streaming<AgentMessage>,
    /// Dropping it (with `inbound`) closes the stream from the server side.
    pub control: mpsc::Sender<Result<ControlMessage, Status>>,
}

impl Connection {
    async fn next(&mut self) -> agent_message::Kind {
        let message = within("an agent message", self.inbound.message())
            .await
            .expect("stream failed")
            .expect("agent ended the stream");
        message.kind.expect("message without kind")
    }

    pub async fn hello(&mut self) -> Hello {
        match self.next().await {
            agent_message::Kind::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    pub async fn sample(&mut self) -> Sample {
        match self.next().await {
            agent_message::Kind::Sample(sample) => sample,
            other => panic!("expected Sample, got {other:?}"),
        }
    }

    pub fn authorization(&self) -> Option<&str> {
        self.metadata
            .get("authorization")
            .map(|v| v.to_str().expect("ASCII metadata"))
    }

    pub async fn set_interval(&self, interval_ms: u32) {
        let kind = control_message::Kind::SetInterval(wva_proto::v1::SetInterval { interval_ms });
        self.control
            .send(Ok(ControlMessage { kind: Some(kind) }))
            .await
            .expect("agent stream gone");
    }

    /// Ends the stream with an error status.
    pub async fn fail(self, status: Status) {
        self.control
            .send(Err(status))
            .await
            .expect("agent stream gone");
    }
}

/// A status to answer with, and who to tell once it was used.
type Refusal = (Status, oneshot::Sender<()>);

#[derive(Clone)]
struct Service {
    connections: mpsc::Sender<Connection>,
    /// Answer the next stream with this status instead of accepting it,
    /// then report it.
    refuse_next: Arc<Mutex<Option<Refusal>>>,
}

#[tonic::async_trait]
impl Telemetry for Service {
    type StreamStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        if let Some((status, refused)) = self.refuse_next.lock().unwrap().take() {
            let _ = refused.send(());
            return Err(status);
        }
        let (control, rx) = mpsc::channel(8);
        let (metadata, _, inbound) = request.into_parts();
        let connection = Connection {
            metadata,
            inbound,
            control,
        };
        self.connections
            .send(connection)
            .await
            .map_err(|_| Status::unavailable("test finished"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct TestAggregator {
    pub addr: SocketAddr,
    connections: mpsc::Receiver<Connection>,
    refuse_next: Arc<Mutex<Option<Refusal>>>,
    _shutdown: oneshot::Sender<()>,
}

impl TestAggregator {
    pub async fn start(tls: Option<ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, tls)
    }

    pub fn serve(listener: TcpListener, tls: Option<ServerTlsConfig>) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, connections) = mpsc::channel(8);
        let refuse_next = Arc::new(Mutex::new(None));
        let service = Service {
            connections: tx,
            refuse_next: refuse_next.clone(),
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let server = builder
            .add_service(TelemetryServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::spawn(async move { server.await.unwrap() });
        TestAggregator {
            addr,
            connections,
            refuse_next,
            _shutdown: shutdown,
        }
    }

    /// Refuses the next stream; the receiver fires once it did.
    pub fn refuse_next(&self, status: Status) -> oneshot::Receiver<()> {
        let (refused, rx) = oneshot::channel();
        *self.refuse_next.lock().unwrap() = Some((status, refused));
        rx
    }

    pub async fn accept(&mut self) -> Connection {
        within("an agent stream", self.connections.recv())
            .await
            .expect("server stopped")
    }
}
