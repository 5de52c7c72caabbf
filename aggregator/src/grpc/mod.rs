//! The aggregator's gRPC port: agent ingest, KEDA's external scaler and the
//! diagnostics stream, one server.

pub mod admission;
pub mod diagnostics;
pub mod ingest;
pub mod keda;
pub mod readers;
pub mod taps;
mod throttle;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::warn;
use wva_proto::MAX_MESSAGE_BYTES;
use wva_proto::keda::external_scaler_server::ExternalScalerServer;
use wva_proto::v1::diagnostics_server::DiagnosticsServer;
use wva_proto::v1::telemetry_server::TelemetryServer;

use self::diagnostics::DiagnosticsService;
use self::ingest::{Ingest, IngestService};
use self::keda::Scaler;
use self::readers::ReaderAuth;

/// How long in-flight connections may take to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(2);

/// Streams one connection may have open at once. An agent needs one; KEDA
/// opens one `StreamIsActive` per ScaledObject over a single connection, so
/// this is also the most ScaledObjects one KEDA operator can point here.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Streams a client may open and reset before the server accepted them,
/// before the connection is closed (the HTTP/2 rapid-reset attack).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors, before the
/// connection is closed.
const MAX_ERROR_RESETS: usize = 1024;

/// Serves agent ingest, KEDA's external scaler and diagnostics on one port,
/// over TLS when `tls` is given; the last two answer only clients `readers`
/// admits.
pub async fn serve(
    ingest: Arc<Ingest>,
    (scaler, diagnostics): (Scaler, DiagnosticsService),
    readers: ReaderAuth,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service =
        TelemetryServer::new(IngestService(ingest)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let keda_readers = readers.clone();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .tcp_nodelay(true)
        .add_service(service)
        .add_service(ExternalScalerServer::with_interceptor(scaler, move |r| {
            keda_readers.check(r)
        }))
        .add_service(DiagnosticsServer::with_interceptor(diagnostics, move |r| {
            readers.check(r)
        }));
    let stop = shutdown.clone();
    let stopped = async move { stop.cancelled().await };
    let server = async {
        match tls {
            Some(config) => {
                let incoming = tls::incoming(listener, config, shutdown.clone());
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            None => {
                let incoming = TcpListenerStream::new(listener);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
        }
    };
    tokio::select! {
        result = server => Ok(result?),
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => {
            warn!("gRPC connections did not drain in time; closing them");
            Ok(())
        }
    }
}
