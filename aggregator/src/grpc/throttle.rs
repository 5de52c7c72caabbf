//! Warnings that hostile clients can trigger at will are throttled: the
//! first is logged, then at most one per period, saying how many were
//! left out, so a flood of bad streams or samples cannot flood the log.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// When the last warning was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last one)` when this warning may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            *held += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_passes_then_one_per_period_with_the_count_left_out() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..1_000 {
            assert_eq!(throttle.allow(), None);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(throttle.allow(), Some(1_000));
        assert_eq!(throttle.allow(), None);
    }
}
