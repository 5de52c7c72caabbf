//! The process-wide shutdown signal: a `watch` flag that flips to `true` once.

use tokio::sync::watch;

/// Resolves once `rx` reads `true` (or its sender is gone, which means the
/// same). The borrowed value is dropped before returning, so the future is
/// `Send` and can sit in a `select!` inside a spawned task.
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
