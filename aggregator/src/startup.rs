//! Start-up steps shared by the standalone and Kubernetes modes: settings
//! from the flags, the listeners, the saturation config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wva_certs::{CertFiles, ExpiryGauge};
use wva_core::admission::SharedToken;
use wva_core::config::hybrid::HybridConfig;
use wva_core::config::saturation::SaturationConfigSet;
use wva_core::config::scale_to_zero::ScaleToZeroConfigSet;
use wva_core::sources::{PolledSource, SourceKind};

use crate::args::{Args, ClientAuth};
use crate::grpc::readers::ReaderAuth;
use crate::grpc::tls::{self, ClientCertificates};
use crate::prometheus::client::{self as prometheus, PrometheusClient, PrometheusConfig};
use crate::runtime::Settings;
use crate::watchfile;

/// The static settings; reads the token and TLS files, failing on a bad one.
/// `lookup` reads keys that have no flag (`PROMETHEUS_*`): the environment,
/// then in a cluster the main ConfigMap.
/// Standalone mode trusts each stream to name its pod and variant, so a
/// port that anyone on the network can reach needs the shared token.
/// KEDA and diagnostics read every decision, so there they need a reader
/// credential too.
pub fn check_standalone_exposure(args: &Args) -> anyhow::Result<()> {
    if args.grpc_addr.ip().is_loopback() {
        return Ok(());
    }
    if args.agent_token_file.is_none() {
        bail!(
            "standalone mode on {} would let anyone who reaches it feed the analysis: \
             set --agent-token-file (WVA_AGENT_TOKEN_FILE) or listen on a loopback address",
            args.grpc_addr
        );
    }
    if args.reader_token_file.is_none() && args.tls_client_ca.is_none() {
        bail!(
            "standalone mode on {} would let anyone who reaches it read every decision: \
             set --reader-token-file (WVA_READER_TOKEN_FILE) or --tls-client-ca, \
             or listen on a loopback address",
            args.grpc_addr
        );
    }
    Ok(())
}

/// The reader credentials the flags configure.
pub fn readers(args: &Args) -> anyhow::Result<ReaderAuth> {
    Ok(ReaderAuth {
        token: read_token(args.reader_token_file.as_deref(), "--reader-token-file")?,
        certificates: args.tls_client_ca.is_some(),
    })
}

pub fn settings(args: &Args, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
    let mut polled: Vec<Arc<dyn PolledSource>> = Vec::new();
    if lookup(prometheus::KEY_BASE_URL).is_some_and(|v| !v.trim().is_empty()) {
        let config = PrometheusConfig::from_lookup(&lookup)?;
        info!(url = %config.base_url, "Prometheus source configured");
        polled.push(Arc::new(PrometheusClient::new(config)?));
    }
    if args.metrics_source == SourceKind::Prometheus && polled.is_empty() {
        bail!(
            "WVA_METRICS_SOURCE=prometheus needs {} to be set",
            prometheus::KEY_BASE_URL
        );
    }
    if args.experimental_proactive_model {
        info!(
            mode = "HYBRID",
            "operating mode: the model-based optimizer beside the saturation analysis (EXPERIMENTAL_PROACTIVE_MODEL=true)"
        );
    } else {
        info!(
            mode = "CAPACITY-ONLY",
            "operating mode: the saturation analysis alone (EXPERIMENTAL_PROACTIVE_MODEL=false)"
        );
        if let Some(path) = &args.service_class_config {
            warn!(
                file = %path.display(),
                "--service-class-config is read but not used: its classes apply only with EXPERIMENTAL_PROACTIVE_MODEL=true"
            );
        }
    }
    Ok(Settings {
        polled,
        default_source: args.metrics_source,
        poll_interval: args.poll_interval,
        webhook_metrics: None,
        legacy_metrics: args.legacy_metrics,
        controller_instance: args.controller_instance.clone(),
        scale_to_zero: args.scale_to_zero,
        hybrid: args.experimental_proactive_model,
        admission: Arc::new(SharedToken(read_token(
            args.agent_token_file.as_deref(),
            "--agent-token-file",
        )?)),
        tls: tls_config(args)?,
        readers: readers(args)?,
    })
}

/// Binds the gRPC ingest and the HTTP (metrics, probes) listeners.
pub async fn listen(args: &Args) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    let http = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    info!(grpc = %grpc.local_addr()?, metrics = %http.local_addr()?, "aggregator listening");
    Ok((grpc, http))
}

/// A per-model config kept in a file, watched; `None` without a file.
pub fn config_file<T, E>(
    path: Option<&PathBuf>,
    what: &'static str,
    parse: fn(&str) -> Result<T, E>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<watch::Receiver<Arc<T>>>>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display + 'static,
{
    let Some(path) = path else { return Ok(None) };
    Ok(Some(watchfile::load_and_watch(
        path.clone(),
        what,
        parse,
        shutdown,
    )?))
}

/// The saturation config from `--saturation-config`, if given.
pub fn saturation_file(
    args: &Args,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<watch::Receiver<Arc<SaturationConfigSet>>>> {
    config_file(
        args.saturation_config.as_ref(),
        "saturation config",
        SaturationConfigSet::from_yaml_file_contents,
        shutdown,
    )
}

/// The scale-to-zero config from `--scale-to-zero-config`, if given.
pub fn scale_to_zero_file(
    args: &Args,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<watch::Receiver<Arc<ScaleToZeroConfigSet>>>> {
    config_file(
        args.scale_to_zero_config.as_ref(),
        "scale-to-zero config",
        ScaleToZeroConfigSet::from_yaml_file_contents,
        shutdown,
    )
}

/// HYBRID mode's serviceclass config from `--service-class-config`, if given.
pub fn service_class_file(
    args: &Args,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<watch::Receiver<Arc<HybridConfig>>>> {
    config_file(
        args.service_class_config.as_ref(),
        "serviceclass config",
        HybridConfig::from_yaml_file_contents,
        shutdown,
    )
}

/// Agents started locally reach a wildcard listener through loopback.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

fn read_token(path: Option<&Path>, flag: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(Some(token))
}

/// TLS on the gRPC port from `--tls-cert`/`--tls-key` (read again when
/// renewed), with `--tls-client-ca` as `--tls-client-auth` says.
fn tls_config(args: &Args) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, ExpiryGauge)>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let expiry = ExpiryGauge::default();
    let certs = Arc::new(CertFiles::load(cert, key, expiry.clone())?);
    Ok(Some((grpc_tls(args, certs)?, expiry)))
}

/// The gRPC port's TLS configuration for a certificate source, with the
/// client certificates the flags ask for.
pub fn grpc_tls(
    args: &Args,
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let clients = match &args.tls_client_ca {
        None => None,
        Some(path) => {
            let roots = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read --tls-client-ca {}", path.display()))?;
            if roots.is_empty() {
                bail!("--tls-client-ca {} holds no certificate", path.display());
            }
            Some(ClientCertificates {
                roots,
                optional: args.tls_client_auth == ClientAuth::Readers,
            })
        }
    };
    Ok(Arc::new(tls::server_config(certs, clients)?))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(["wva-aggregator", "--standalone"].iter().chain(extra))
    }

    #[test]
    fn an_open_standalone_port_needs_the_shared_token_and_a_reader_credential() {
        let error = check_standalone_exposure(&args(&["--grpc-addr", "0.0.0.0:9443"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--agent-token-file"), "{error}");
        assert!(check_standalone_exposure(&args(&["--grpc-addr", "127.0.0.1:9443"])).is_ok());
        assert!(check_standalone_exposure(&args(&["--grpc-addr", "[::1]:9443"])).is_ok());
        let open = ["--grpc-addr", "0.0.0.0:9443", "--agent-token-file", "t"];
        let error = check_standalone_exposure(&args(&open))
            .unwrap_err()
            .to_string();
        assert!(error.contains("read every decision"), "{error}");
        let with_reader_token = args(&[&open[..], &["--reader-token-file", "r"]].concat());
        assert!(check_standalone_exposure(&with_reader_token).is_ok());
        let tls = ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"];
        let with_certificates = args(&[&open[..], &tls].concat());
        assert!(check_standalone_exposure(&with_certificates).is_ok());
    }

    #[test]
    fn a_client_ca_goes_with_either_kind_of_server_certificate() {
        let self_made = ["--grpc-tls-secret", "wva-grpc-tls", "--tls-client-ca", "ca"];
        assert!(Args::try_parse_from([&["wva-aggregator"][..], &self_made].concat()).is_ok());
        let files = ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"];
        assert!(Args::try_parse_from([&["wva-aggregator"][..], &files].concat()).is_ok());
        assert!(
            Args::try_parse_from(["wva-aggregator", "--tls-client-ca", "ca"]).is_err(),
            "a client CA needs the port to serve TLS"
        );
    }

    #[test]
    fn client_certificates_can_be_asked_of_readers_only() {
        let tls = ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"];
        assert_eq!(args(&tls).tls_client_auth, ClientAuth::All);
        let readers = args(&[&tls[..], &["--tls-client-auth", "readers"]].concat());
        assert_eq!(readers.tls_client_auth, ClientAuth::Readers);
        assert!(
            Args::try_parse_from([
                "wva-aggregator",
                "--standalone",
                "--tls-client-auth",
                "readers"
            ])
            .is_err(),
            "--tls-client-auth needs --tls-client-ca"
        );
    }
}
