//! Keeping a self-made certificate current while it is served.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::{CertBundle, CertError, ExpiryGauge};
use crate::renewable::Renewable;
use crate::secret;

/// A self-made certificate, served from now on and kept current on a task
/// of its own (see [`keep_current`]); also returns the first bundle, so its
/// CA can be handed out before anything is served.
pub async fn serve_self_made<F, Fut>(
    kept: Kept,
    expiry: ExpiryGauge,
    every: Duration,
    mut before_serving: F,
    shutdown: CancellationToken,
) -> Result<(Arc<Renewable>, CertBundle, tokio::task::JoinHandle<()>), CertError>
where
    F: FnMut(CertBundle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let bundle = secret::current(
        kept.client.clone(),
        &kept.namespace,
        &kept.name,
        &kept.names,
    )
    .await?;
    // The clients get the CA before anything is served here too; if that
    // fails, the next round of `keep_current` tries again.
    if let Err(error) = before_serving(bundle.clone()).await {
        warn!(secret = %kept.name, %error, "cannot hand out the CA of {} yet", kept.what);
    }
    let served = Arc::new(Renewable::new(&bundle, &kept.name, expiry)?);
    let task = tokio::spawn(keep_current(
        kept,
        Arc::clone(&served),
        every,
        before_serving,
        shutdown,
    ));
    Ok((served, bundle, task))
}

/// Where a served certificate is kept, and what it is for (in logs).
pub struct Kept {
    pub client: Client,
    pub namespace: String,
    /// The Secret.
    pub name: String,
    /// The names the certificate covers.
    pub names: Vec<String>,
    /// What serves it, such as "the webhook".
    pub what: &'static str,
}

/// Every `every` until shutdown: renews the certificate in the Secret when
/// due (or picks up another replica's renewal), runs `before_serving` with
/// it (hand its CA to the clients first), then serves it. A failed round is
/// logged once, and its recovery too.
async fn keep_current<F, Fut>(
    kept: Kept,
    served: Arc<Renewable>,
    every: Duration,
    mut before_serving: F,
    shutdown: CancellationToken,
) where
    F: FnMut(CertBundle) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut failing = false;
    loop {
        // The round at start was `serve_self_made`'s.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let round = async {
            let bundle = secret::current(
                kept.client.clone(),
                &kept.namespace,
                &kept.name,
                &kept.names,
            )
            .await
            .map_err(|e| e.to_string())?;
            before_serving(bundle.clone()).await?;
            served.renew(&bundle, &kept.name).map_err(|e| e.to_string())
        };
        match round.await {
            Ok(renewed) => {
                if renewed {
                    info!(secret = %kept.name, "{} serves the renewed certificate", kept.what);
                }
                if failing {
                    info!(secret = %kept.name, "the certificate of {} is current again", kept.what);
                    failing = false;
                }
            }
            Err(error) if !failing => {
                warn!(secret = %kept.name, %error, "cannot keep the certificate of {} current", kept.what);
                failing = true;
            }
            Err(_) => {}
        }
    }
}
