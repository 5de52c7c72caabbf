//! The scrape loop: one `Sample` per tick, published as the latest.
//!
//! Every tick yields exactly one sample. A failed scrape or extraction is a
//! sample with `up = false` and the reason, so the aggregator can tell a
//! broken target from a silent agent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::{debug, info, warn};
use wva_proto::MAX_MESSAGE_BYTES;
use wva_proto::v1::Sample;

use crate::args::scrape_timeout;
use crate::extract::Extractor;
use crate::latest::Publisher;
use crate::scrape::Scraper;
use crate::server::Health;
use crate::telemetry::Telemetry;

pub struct Sampler {
    scraper: Scraper,
    extractor: Extractor,
    telemetry: Arc<Telemetry>,
    seq: u64,
    /// Error of the previous tick, to log changes instead of every tick.
    last_error: String,
}

impl Sampler {
    pub fn new(scraper: Scraper, extractor: Extractor, telemetry: Arc<Telemetry>) -> Self {
        Sampler {
            scraper,
            extractor,
            telemetry,
            seq: 0,
            last_error: String::new(),
        }
    }

    /// Scrapes and extracts once.
    pub async fn sample(&mut self, timeout: Duration) -> Sample {
        self.seq += 1;
        let mut sample = Sample {
            seq: self.seq,
            scraped_at_ms: unix_millis(SystemTime::now()),
            ..Sample::default()
        };
        let started = Instant::now();
        let scraped = self.scraper.scrape(timeout).await;
        let elapsed = started.elapsed();
        sample.scrape_duration_us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        self.telemetry.scrapes.inc();
        self.telemetry
            .scrape_duration
            .observe(elapsed.as_secs_f64());

        let outcome = match scraped {
            Ok(body) => self
                .extractor
                .extract_within(body, (started + timeout).into_std())
                .map_err(|e| ("extract", e.to_string())),
            Err(e) => Err((e.metric_label(), e.to_string())),
        }
        .and_then(|()| {
            self.extractor.fill(&mut sample);
            within_message_limit(&mut sample)
        });
        match outcome {
            Ok(()) => {
                sample.up = true;
                if !self.last_error.is_empty() {
                    info!(target_url = %self.scraper.target(), "scrape recovered");
                    self.last_error.clear();
                }
            }
            Err((reason, error)) => {
                self.telemetry.scrape_failure(reason).inc();
                if error == self.last_error {
                    debug!(target_url = %self.scraper.target(), %error, "scrape failed");
                } else {
                    warn!(target_url = %self.scraper.target(), %error, "scrape failed");
                    self.last_error.clone_from(&error);
                }
                sample.error = error;
            }
        }
        sample
    }

    /// Ticks at the current interval until dropped; the aggregator may change
    /// the interval through `interval`. Ticks never overlap: a scrape slower
    /// than the interval delays the next tick.
    pub async fn run(
        mut self,
        explicit_timeout: Option<Duration>,
        mut interval: watch::Receiver<Duration>,
        publisher: Publisher,
        health: Arc<Health>,
    ) {
        let mut period = *interval.borrow_and_update();
        let mut ticker = interval_at(Instant::now(), period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Ok(()) = interval.changed() => {
                    period = *interval.borrow_and_update();
                    ticker = interval_at(Instant::now() + period, period);
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    continue;
                }
            }
            let timeout = scrape_timeout(explicit_timeout, period);
            let sample = self.sample(timeout).await;
            if publisher.publish(sample) {
                self.telemetry.samples_dropped.inc();
            }
            // Generous bound: a full interval plus a timed-out scrape, twice.
            health.tick_completed(2 * (period + timeout));
        }
    }
}

/// Keeps a sample the aggregator would refuse from being sent: over the
/// message limit, its signals are dropped and the scrape counts as failed.
fn within_message_limit(sample: &mut Sample) -> Result<(), (&'static str, String)> {
    // The sample travels as field 2 of an `AgentMessage`: a one-byte key and
    // its length before it.
    let len = sample.encoded_len();
    let encoded = 1 + prost::length_delimiter_len(len) + len;
    if encoded <= MAX_MESSAGE_BYTES {
        return Ok(());
    }
    let models = sample.models.len();
    sample.models.clear();
    sample.epp = None;
    Err((
        "sample_too_large",
        format!(
            "the signals of {models} models take {encoded} bytes, over the aggregator's {MAX_MESSAGE_BYTES}-byte limit"
        ),
    ))
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use wva_proto::v1::{AgentMessage, ModelSignals, agent_message};

    use super::*;

    fn with_models(n: usize) -> Sample {
        Sample {
            seq: 1,
            up: true,
            models: (0..n)
                .map(|i| ModelSignals {
                    model: format!("adapter-{i:08}-{}", "x".repeat(48)),
                    kv_cache_usage: 0.5,
                    ..ModelSignals::default()
                })
                .collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn a_sample_over_the_message_limit_becomes_a_failed_scrape() {
        let mut sample = with_models(5_000);
        let (reason, error) = within_message_limit(&mut sample).unwrap_err();
        assert_eq!(reason, "sample_too_large");
        assert!(error.contains("5000 models"), "{error}");
        assert!(sample.models.is_empty());
        let message = AgentMessage {
            kind: Some(agent_message::Kind::Sample(sample)),
        };
        assert!(message.encoded_len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_limit_is_the_whole_messages_size_to_the_byte() {
        let message_len = |sample: &Sample| {
            AgentMessage {
                kind: Some(agent_message::Kind::Sample(sample.clone())),
            }
            .encoded_len()
        };
        // Grow a sample byte by byte until its message is exactly the limit.
        let mut sample = with_models(1);
        sample.error = "e".repeat(MAX_MESSAGE_BYTES - 200);
        while message_len(&sample) < MAX_MESSAGE_BYTES {
            sample.error.push('e');
        }
        assert_eq!(message_len(&sample), MAX_MESSAGE_BYTES);
        assert!(within_message_limit(&mut sample.clone()).is_ok());
        sample.error.push('e');
        assert!(within_message_limit(&mut sample).is_err());
    }
}
