//! One stream per aggregator replica.
//!
//! Several aggregator URLs each get their own stream. With fan-out on, each
//! URL's host is resolved to every address it has (a headless Service lists
//! one per aggregator pod) and re-resolved periodically, so replicas that
//! come and go gain and lose their stream. Every replica then holds every
//! pod's signals, which is what lets a new leader decide at once after a
//! failover. All streams share the latest-sample slot: a sample is scraped
//! once and sent on each stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::latest::Subscriber;
use crate::stream::{self, StreamConfig};
use crate::telemetry::Telemetry;

/// How often a fanned-out host is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// The streams to keep open.
#[derive(Debug, Clone)]
pub struct Targets {
    pub urls: Vec<Uri>,
    pub fan_out: bool,
}

struct Running {
    /// Dropping it stops the stream.
    _stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

/// Keeps one stream per target open until `stop` fires.
pub async fn run(
    template: StreamConfig,
    targets: Targets,
    samples: Subscriber,
    interval: Arc<watch::Sender<Duration>>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<()>,
) {
    let mut running: HashMap<Uri, Running> = HashMap::new();
    loop {
        let wanted = endpoints(&targets).await;
        // Dropping a Running stops its stream with a clean goodbye.
        running.retain(|uri, _| {
            let keep = wanted.iter().any(|(u, _)| u == uri);
            if !keep {
                info!(aggregator = %uri, "aggregator replica gone; closing its stream");
            }
            keep
        });
        for (uri, url) in wanted {
            if running.contains_key(&uri) {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(());
            let config = template.for_target(uri.clone(), &url);
            let task = tokio::spawn(stream::run(
                config,
                samples.for_another_target(),
                Arc::clone(&interval),
                Arc::clone(&telemetry),
                stop_rx,
            ));
            running.insert(
                uri,
                Running {
                    _stop: stop_tx,
                    task,
                },
            );
        }
        if !targets.fan_out {
            // Nothing to re-resolve: wait for the end.
            let _ = stop.changed().await;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
    // Dropping the stop senders ends each stream cleanly; wait for them.
    let tasks: Vec<JoinHandle<()>> = running.into_values().map(|r| r.task).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// The URLs to connect to now, each with the configured URL it came from.
/// A host that fails to resolve keeps its URL (the stream's own reconnects
/// report the failure); a fanned-out host that resolves is replaced by one
/// URL per address.
async fn endpoints(targets: &Targets) -> Vec<(Uri, Uri)> {
    let mut out = Vec::new();
    for url in &targets.urls {
        if !targets.fan_out {
            out.push((url.clone(), url.clone()));
            continue;
        }
        match resolve(url).await {
            Ok(addrs) if !addrs.is_empty() => out.extend(
                addrs
                    .into_iter()
                    .filter_map(|a| with_address(url, a))
                    .map(|u| (u, url.clone())),
            ),
            Ok(_) => out.push((url.clone(), url.clone())),
            Err(e) => {
                warn!(aggregator = %url, error = %e, "cannot resolve the aggregator host; keeping its URL");
                out.push((url.clone(), url.clone()));
            }
        }
    }
    out.sort_by_key(|(u, _)| u.to_string());
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

async fn resolve(url: &Uri) -> std::io::Result<Vec<SocketAddr>> {
    let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// `url` with its authority replaced by `addr`.
fn with_address(url: &Uri, addr: SocketAddr) -> Option<Uri> {
    let mut parts = url.clone().into_parts();
    parts.authority = Some(addr.to_string().parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_without_fan_out_are_kept_as_given() {
        let targets = Targets {
            urls: vec![
                "http://b.example:9443".parse().unwrap(),
                "http://a.example:9443".parse().unwrap(),
            ],
            fan_out: false,
        };
        let got: Vec<String> = endpoints(&targets)
            .await
            .iter()
            .map(|(u, _)| u.to_string())
            .collect();
        assert_eq!(got, ["http://a.example:9443/", "http://b.example:9443/"]);
    }

    #[tokio::test]
    async fn fan_out_replaces_a_host_by_each_address() {
        let targets = Targets {
            urls: vec!["https://127.0.0.1:9443".parse().unwrap()],
            fan_out: true,
        };
        let got = endpoints(&targets).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.to_string(), "https://127.0.0.1:9443/");
    }

    #[test]
    fn an_address_replaces_the_authority_only() {
        let url: Uri = "https://wva-aggregator-headless.wva:9443".parse().unwrap();
        let v4 = with_address(&url, "10.0.0.7:9443".parse().unwrap()).unwrap();
        assert_eq!(v4.to_string(), "https://10.0.0.7:9443/");
        let v6 = with_address(&url, "[fd00::7]:9443".parse().unwrap()).unwrap();
        assert_eq!(v6.to_string(), "https://[fd00::7]:9443/");
    }

    #[tokio::test]
    async fn an_unresolvable_host_keeps_its_url() {
        let targets = Targets {
            urls: vec!["http://no-such-host.invalid:9443".parse().unwrap()],
            fan_out: true,
        };
        let got = endpoints(&targets).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.host(), Some("no-such-host.invalid"));
    }
}
