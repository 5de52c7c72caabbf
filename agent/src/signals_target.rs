//! A second local target the `--signal` values are read from: an exporter
//! sidecar beside a vLLM or EPP server (`--signals-target`). It is scraped
//! right after the main target, within the same tick's deadline; its
//! failure costs only the signals, which are then absent, never the
//! sample's own.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, info, warn};
use wva_proto::v1::{Role, Sample};

use crate::extract::Extractor;
use crate::scrape::{ScrapeError, Scraper};
use crate::signal_spec::SignalSpec;
use crate::telemetry::Telemetry;

/// The failure reason counted when the signals' target fails.
pub const FAILURE_REASON: &str = "signals_target";

pub struct SignalsTarget {
    scraper: Scraper,
    /// Generic: reads only the signals, from any exposition.
    extractor: Extractor,
    /// Error of the previous tick, to log changes instead of every tick.
    last_error: String,
}

impl SignalsTarget {
    pub fn new(scraper: Scraper, signals: Vec<SignalSpec>) -> Self {
        SignalsTarget {
            scraper,
            extractor: Extractor::with_signals(Role::Generic, signals),
            last_error: String::new(),
        }
    }

    /// Replaces `sample.signals` with this target's, read before `deadline`;
    /// none when it cannot be read.
    pub async fn fill(
        &mut self,
        sample: &mut Sample,
        deadline: Instant,
        telemetry: &Arc<Telemetry>,
    ) {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = match self.scraper.scrape(left).await {
            Ok(body) => self
                .extractor
                .extract_within(body, deadline.into_std())
                .map_err(|e| e.to_string()),
            Err(ScrapeError::Timeout(_)) => Err("no answer within the tick's timeout".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(()) => {
                self.extractor.fill_signals(sample);
                if !self.last_error.is_empty() {
                    info!(signals_target = %self.scraper.target(), "signals' target recovered");
                    self.last_error.clear();
                }
            }
            Err(error) => {
                sample.signals.clear();
                telemetry.scrape_failure(FAILURE_REASON).inc();
                if error == self.last_error {
                    debug!(signals_target = %self.scraper.target(), %error, "signals' target failed");
                } else {
                    warn!(signals_target = %self.scraper.target(), %error, "signals' target failed; the signals are absent");
                    self.last_error = error;
                }
            }
        }
    }
}
