//! The scrape loop: one `Sample` per tick, published as the latest.
//!
//! Every tick yields exactly one sample. A failed scrape or extraction is a
//! sample with `up = false` and the reason, so the aggregator can tell a
//! broken target from a silent agent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use prost::Message;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tracing::{debug, info, warn};
use wva_proto::MAX_MESSAGE_BYTES;
use wva_proto::v1::Sample;

use crate::args::{DEFAULT_INTERVAL, scrape_interval, scrape_timeout};
use crate::extract::Extractor;
use crate::filter::{Filter, Outcome};
use crate::latest::Publisher;
use crate::scrape::{ScrapeError, Scraper};
use crate::server::Health;
use crate::signals_target::SignalsTarget;
use crate::telemetry::Telemetry;

pub struct Sampler {
    scraper: Scraper,
    extractor: Extractor,
    /// Where the signals come from when not from the main target.
    signals_target: Option<SignalsTarget>,
    filter: Filter,
    telemetry: Arc<Telemetry>,
    seq: u64,
    /// Error of the previous tick, to log changes instead of every tick.
    last_error: String,
}

/// Why a tick produced no signals: the `reason` label and the message.
type Failure = (&'static str, String);

impl Sampler {
    /// A sampler that asks the target for filtered bodies as `filter` says.
    pub fn new(
        scraper: Scraper,
        extractor: Extractor,
        filter: Filter,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Sampler {
            scraper,
            extractor,
            signals_target: None,
            filter,
            telemetry,
            seq: 0,
            last_error: String::new(),
        }
    }

    /// Reads the signals from `target` instead of the main target (whose
    /// extractor then computes none).
    pub fn with_signals_target(mut self, target: SignalsTarget) -> Self {
        self.signals_target = Some(target);
        self
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
        let mut fetching = Duration::ZERO;
        let deadline = Deadline { started, timeout };
        let mut outcome = self.collect(deadline, &mut fetching).await;
        if outcome.is_ok() {
            self.extractor.fill(&mut sample);
            if let Some(target) = &mut self.signals_target {
                let fetched = Instant::now();
                target
                    .fill(&mut sample, deadline.at(), &self.telemetry)
                    .await;
                fetching += fetched.elapsed();
            }
            outcome = within_message_limit(&mut sample);
        }
        sample.scrape_duration_us = u32::try_from(fetching.as_micros()).unwrap_or(u32::MAX);
        self.telemetry.scrapes.inc();
        self.telemetry
            .scrape_duration
            .observe(fetching.as_secs_f64());
        self.telemetry
            .scrape_filtered
            .set(i64::from(self.filter.in_use()));
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

    /// Whether the target serves filtered bodies.
    pub fn filtered(&self) -> bool {
        self.filter.in_use()
    }

    /// Fills the extractor from a filtered body where the target serves one,
    /// else from the whole body; a filtered request the target refuses or
    /// answers with a body that cannot be used is followed at once by a
    /// plain one, so trying the filter never costs a sample.
    async fn collect(
        &mut self,
        deadline: Deadline,
        fetching: &mut Duration,
    ) -> Result<(), Failure> {
        let now = Instant::now().into_std();
        if let Some(uri) = self.filter.uri(now).cloned() {
            match self.fetch_and_extract(uri, deadline, fetching).await {
                Ok(()) => {
                    let outcome = if self.extractor.unread_samples() == 0 {
                        Outcome::Filtered
                    } else {
                        Outcome::Ignored
                    };
                    self.learn(outcome, now);
                    return Ok(());
                }
                Err(Attempt::Target(failure)) => return Err(failure),
                Err(Attempt::Filtered(failure)) => {
                    debug!(error = %failure.1, "a filtered scrape failed; scraping the whole body");
                    self.learn(Outcome::Failed, now);
                }
            }
        }
        let target = self.scraper.target().clone();
        self.fetch_and_extract(target, deadline, fetching)
            .await
            .map_err(Attempt::into_failure)
    }

    fn learn(&mut self, outcome: Outcome, now: std::time::Instant) {
        let was = self.filter.in_use();
        self.filter.learn(outcome, now);
        match (was, self.filter.in_use()) {
            (false, true) => {
                info!(target_url = %self.scraper.target(), "the target serves filtered scrapes")
            }
            (true, false) => {
                info!(target_url = %self.scraper.target(), ?outcome, "the target stopped serving filtered scrapes")
            }
            _ => {}
        }
    }

    async fn fetch_and_extract(
        &mut self,
        uri: Uri,
        deadline: Deadline,
        fetching: &mut Duration,
    ) -> Result<(), Attempt> {
        let started = Instant::now();
        let scraped = self.scraper.scrape_uri(uri, deadline.left(started)).await;
        *fetching += started.elapsed();
        let body = scraped.map_err(|e| {
            // A timeout is the tick's, however much of it this request had.
            let e = match e {
                ScrapeError::Timeout(_) => ScrapeError::Timeout(deadline.timeout),
                e => e,
            };
            let failure = (e.metric_label(), e.to_string());
            match e {
                // The answer to this request: another request may fare better.
                ScrapeError::Status(_) => Attempt::Filtered(failure),
                // The target or the way to it.
                _ => Attempt::Target(failure),
            }
        })?;
        self.extractor
            .extract_within(body, deadline.at().into_std())
            .map_err(|e| Attempt::Filtered(("extract", e.to_string())))
    }

    /// Ticks until dropped, at [`scrape_interval`]. An interval the aggregator sets
    /// through `interval` replaces either. Ticks never overlap: a scrape
    /// slower than the interval delays the next tick.
    pub async fn run(
        mut self,
        explicit_timeout: Option<Duration>,
        explicit_interval: Option<Duration>,
        mut interval: watch::Receiver<Duration>,
        publisher: Publisher,
        health: Arc<Health>,
    ) {
        interval.borrow_and_update();
        let mut fixed = explicit_interval;
        let mut period = self.period(fixed);
        let mut ticker = ticker_from(Instant::now(), period);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Ok(()) = interval.changed() => {
                    fixed = Some(*interval.borrow_and_update());
                    period = self.period(fixed);
                    ticker = ticker_from(Instant::now() + period, period);
                    continue;
                }
            }
            // The timeout stays that of the slower interval, so a target
            // that is briefly slow to answer is not a failure.
            let timeout = scrape_timeout(explicit_timeout, fixed.unwrap_or(DEFAULT_INTERVAL));
            let sample = self.sample(timeout).await;
            if publisher.publish(sample) {
                self.telemetry.samples_dropped.inc();
            }
            let now_period = self.period(fixed);
            if now_period != period {
                period = now_period;
                ticker = ticker_from(Instant::now() + period, period);
            }
            // Generous bound: a full interval plus a timed-out scrape, twice.
            health.tick_completed(2 * (period + timeout));
        }
    }

    fn period(&self, fixed: Option<Duration>) -> Duration {
        scrape_interval(fixed, self.filter.in_use())
    }
}

/// The time limit of one tick's requests and extraction.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    started: Instant,
    timeout: Duration,
}

impl Deadline {
    fn at(self) -> Instant {
        self.started + self.timeout
    }

    fn left(self, now: Instant) -> Duration {
        self.at().saturating_duration_since(now)
    }
}

/// How one request of a tick failed.
enum Attempt {
    /// The target is unreachable, slow or sent a broken stream.
    Target(Failure),
    /// The target answered this request with an error or a body that cannot
    /// be used.
    Filtered(Failure),
}

impl Attempt {
    fn into_failure(self) -> Failure {
        match self {
            Attempt::Target(f) | Attempt::Filtered(f) => f,
        }
    }
}

fn ticker_from(start: Instant, period: Duration) -> Interval {
    let mut ticker = interval_at(start, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
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
