//! Scale-down stabilization, as the HPA applies it
//! (`behavior.scaleDown.stabilizationWindowSeconds`): a replica count is
//! lowered only to the highest recommendation seen within the window, so a
//! short lull in load does not release replicas that the next second needs.
//! Scale-up is never delayed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Stabilizer {
    window: Duration,
    /// Recommendations within the window, oldest first.
    history: VecDeque<(Instant, u32)>,
}

impl Stabilizer {
    pub fn new(window: Duration) -> Self {
        Stabilizer {
            window,
            history: VecDeque::new(),
        }
    }

    /// Records `recommended` at `now` and returns the replica count to move to
    /// from `current`.
    pub fn next(&mut self, now: Instant, current: u32, recommended: u32) -> u32 {
        while self
            .history
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > self.window)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, recommended));
        if recommended >= current {
            return recommended;
        }
        let highest = self.history.iter().map(|&(_, r)| r).max();
        highest.map_or(recommended, |h| h.min(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn scale_up_is_immediate() {
        let t0 = Instant::now();
        let mut s = Stabilizer::new(WINDOW);
        assert_eq!(s.next(t0, 2, 2), 2);
        assert_eq!(s.next(at(t0, 1), 2, 5), 5);
    }

    #[test]
    fn scale_down_waits_for_the_window_to_forget_higher_recommendations() {
        let t0 = Instant::now();
        let mut s = Stabilizer::new(WINDOW);
        assert_eq!(s.next(t0, 4, 4), 4);
        assert_eq!(s.next(at(t0, 3), 4, 3), 4, "4 was recommended 3 s ago");
        assert_eq!(s.next(at(t0, 10), 4, 3), 4, "still inside the window");
        assert_eq!(
            s.next(at(t0, 11), 4, 2),
            3,
            "the highest left in the window"
        );
        assert_eq!(s.next(at(t0, 14), 3, 2), 3, "3 was recommended at 10 s");
        assert_eq!(s.next(at(t0, 21), 3, 2), 2, "only 2s are left");
    }

    #[test]
    fn a_zero_window_follows_every_recommendation() {
        let t0 = Instant::now();
        let mut s = Stabilizer::new(Duration::ZERO);
        assert_eq!(s.next(t0, 5, 5), 5);
        assert_eq!(s.next(at(t0, 1), 5, 1), 1);
    }

    #[test]
    fn never_proposes_more_than_current_while_scaling_down() {
        let t0 = Instant::now();
        let mut s = Stabilizer::new(WINDOW);
        assert_eq!(s.next(t0, 6, 6), 6);
        // Something else lowered the replicas to 3 meanwhile.
        assert_eq!(s.next(at(t0, 1), 3, 2), 3);
    }
}
