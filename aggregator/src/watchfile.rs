//! Loads a configuration file once (failing fast) and then re-reads it every
//! second, publishing each new valid version. An invalid edit is logged and
//! the previous version stays in force.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} file {path}: {message}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

fn load<T, E: Display>(
    path: &Path,
    what: &'static str,
    parse: fn(&str) -> Result<T, E>,
) -> Result<(String, T), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let value = parse(&text).map_err(|e| LoadError::Invalid {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((text, value))
}

/// Loads `path` now and keeps publishing it until `shutdown`.
pub fn load_and_watch<T, E>(
    path: PathBuf,
    what: &'static str,
    parse: fn(&str) -> Result<T, E>,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<T>>, LoadError>
where
    T: Send + Sync + 'static,
    E: Display + 'static,
{
    let (mut current, value) = load(&path, what, parse)?;
    let (tx, rx) = watch::channel(Arc::new(value));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) if text == current => continue,
                Ok(text) => text,
                Err(e) => {
                    error!(file = %path.display(), error = %e, "cannot re-read {what} file; keeping the previous version");
                    continue;
                }
            };
            match parse(&text) {
                Ok(value) => {
                    info!(file = %path.display(), "reloaded {what} file");
                    tx.send_replace(Arc::new(value));
                }
                Err(e) => {
                    error!(file = %path.display(), error = %e, "invalid {what} file; keeping the previous version");
                }
            }
            current = text;
        }
    });
    Ok(rx)
}
