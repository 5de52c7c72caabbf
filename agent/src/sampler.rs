//! The scrape loop: one `Sample` per tick, published as the latest.
//!
//! Every tick yields exactly one sample. A failed scrape or extraction is a
//! sample with `up = false` and the reason, so the aggregator can tell a
//! broken target from a silent agent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::{debug, info, warn};
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
                .extract(body)
                .map_err(|e| ("extract", e.to_string())),
            Err(e) => Err((e.metric_label(), e.to_string())),
        };
        match outcome {
            Ok(()) => {
                sample.up = true;
                self.extractor.fill(&mut sample);
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

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
