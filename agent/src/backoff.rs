//! Exponential backoff with full jitter for reconnecting to the aggregator.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling)
//! spreads the reconnects of thousands of agents after an aggregator restart
//! instead of letting them arrive in synchronized waves.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Upper bound of the next delay: `base * 2^attempt`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from `[0, ceiling]` in whole milliseconds
    /// (finer jitter buys nothing); the next ceiling doubles.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// Starts over from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// After a session ends: one the aggregator accepted proves it is back,
    /// so the next attempt starts over (agents return within a second or two
    /// of an aggregator restart, however many came before); a refused or
    /// failed attempt keeps backing off.
    pub fn session_ended(&mut self, accepted: bool) {
        if accepted {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = rand::rng();
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            ceilings.push(backoff.ceiling());
            backoff.next_delay(&mut rng);
        }
        for pair in ceilings.windows(2) {
            assert!(pair[1] == pair[0] * 2 || pair[1] == CAP, "{pair:?}");
        }
        assert_eq!(ceilings[0], BASE);
        assert_eq!(ceilings[3], BASE * 8);
        // 200ms * 2^6 = 12.8s is the first ceiling above the cap.
        assert_eq!(ceilings[5], BASE * 32);
        assert!(ceilings[6..].iter().all(|&c| c == CAP));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = rand::rng();
        let mut delays = Vec::new();
        for _ in 0..500 {
            // Stay at the fourth attempt so every draw has the same bounds.
            let mut backoff = Backoff::new(BASE, CAP);
            for _ in 0..3 {
                backoff.next_delay(&mut rng);
            }
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert_eq!(delay.subsec_nanos() % 1_000_000, 0, "{delay:?}");
            delays.push(delay);
        }
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // Uniform over [0, 1.6s]: 500 draws cover most of the range.
        assert!(*min < BASE * 2, "smallest delay {min:?}");
        assert!(*max > BASE * 6, "largest delay {max:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = rand::rng();
        for _ in 0..10 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
        assert!(backoff.next_delay(&mut rng) <= BASE);
    }

    #[test]
    fn an_accepted_stream_starts_over_however_briefly_it_lasted() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = rand::rng();
        // Restarts of the aggregator: each attempt is accepted, then drops.
        for _ in 0..5 {
            backoff.next_delay(&mut rng);
            backoff.session_ended(true);
            assert_eq!(backoff.ceiling(), BASE);
        }
        // Refusals keep backing off.
        backoff.next_delay(&mut rng);
        backoff.session_ended(false);
        backoff.next_delay(&mut rng);
        backoff.session_ended(false);
        assert_eq!(backoff.ceiling(), BASE * 4);
    }
}
