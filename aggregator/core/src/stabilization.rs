//! Scale-down stabilization with the HPA's semantics
//! (`behavior.scaleDown.stabilizationWindowSeconds`): a scale-up is taken at
//! once, a scale-down only to the highest value recommended within the
//! window, so a load that dips for a moment removes nothing and a steady but
//! noisy one does not flap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One target's recent recommendations.
#[derive(Debug, Default)]
pub struct Window {
    /// The recommendations that can still be the window's highest: values
    /// strictly decrease from front to back, so the front is the highest and
    /// each arrival drops the lower ones before it.
    kept: VecDeque<(Instant, u32)>,
}

impl Window {
    /// A window that starts with `current` recommended at `now`, so nothing
    /// is removed sooner than one window after watching begins.
    pub fn holding(now: Instant, current: u32) -> Self {
        Window {
            kept: VecDeque::from([(now, current)]),
        }
    }

    /// Records `recommended` and returns the value to move to: `recommended`
    /// when it is no scale-down, else the highest recommendation made less
    /// than `window` ago, never above `current`.
    pub fn stabilize(
        &mut self,
        now: Instant,
        window: Duration,
        recommended: u32,
        current: u32,
    ) -> u32 {
        let kept = &mut self.kept;
        while kept
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window)
        {
            kept.pop_front();
        }
        while kept.back().is_some_and(|&(_, value)| value <= recommended) {
            kept.pop_back();
        }
        kept.push_back((now, recommended));
        if recommended >= current {
            return recommended;
        }
        let highest = kept.front().map_or(recommended, |&(_, value)| value);
        highest.min(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_down_waits_for_the_window_and_a_scale_up_does_not() {
        let mut s = Window::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let at = |secs| t0 + Duration::from_secs(secs);
        // Steady at 5 for a while, then the load leaves.
        assert_eq!(s.stabilize(at(0), window, 5, 5), 5);
        assert_eq!(s.stabilize(at(100), window, 5, 5), 5);
        assert_eq!(
            s.stabilize(at(150), window, 3, 5),
            5,
            "5 was recommended 50 s ago"
        );
        assert_eq!(s.stabilize(at(399), window, 2, 5), 5, "299 s ago: still in");
        assert_eq!(
            s.stabilize(at(400), window, 2, 5),
            3,
            "300 s: out; 3 is the highest left"
        );
        assert_eq!(s.stabilize(at(449), window, 2, 3), 3);
        assert_eq!(s.stabilize(at(450), window, 2, 3), 2);
        // A scale-up is taken at once, and holds the next scale-down.
        assert_eq!(s.stabilize(at(800), window, 6, 2), 6);
        assert_eq!(s.stabilize(at(801), window, 4, 6), 6);
        assert_eq!(s.stabilize(at(1100), window, 4, 6), 4);
    }

    #[test]
    fn the_window_never_raises_a_variant_above_its_replicas() {
        let mut s = Window::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        // A scale-up to 8 was never carried out; the variant runs 3.
        assert_eq!(s.stabilize(t0, window, 8, 3), 8);
        assert_eq!(s.stabilize(t0 + Duration::from_secs(1), window, 2, 3), 3);
    }

    #[test]
    fn a_lower_replica_count_set_elsewhere_caps_the_held_value() {
        let t0 = Instant::now();
        let mut s = Window::default();
        let window = Duration::from_secs(10);
        assert_eq!(s.stabilize(t0, window, 6, 6), 6);
        // Something else lowered the replicas to 3 meanwhile.
        assert_eq!(s.stabilize(t0 + Duration::from_secs(1), window, 2, 3), 3);
    }

    #[test]
    fn without_a_window_every_recommendation_is_taken() {
        let mut s = Window::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1);
        assert_eq!(s.stabilize(later, Duration::ZERO, 1, 5), 1);
    }

    #[test]
    fn a_held_window_keeps_the_replicas_for_one_window() {
        let t0 = Instant::now();
        let mut s = Window::holding(t0, 4);
        let window = Duration::from_secs(60);
        assert_eq!(s.stabilize(t0, window, 1, 4), 4);
        let after = t0 + Duration::from_secs(61);
        assert_eq!(s.stabilize(after, window, 1, 4), 1);
    }

    #[test]
    fn memory_stays_bounded_by_the_distinct_falling_values() {
        let mut s = Window::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(3600);
        for i in 0..10_000u64 {
            // Noisy but steady: 4, 5, 4, 5, ...
            let value = 4 + (i % 2) as u32;
            s.stabilize(t0 + Duration::from_millis(i), window, value, 5);
        }
        assert!(s.kept.len() <= 2, "{:?}", s.kept);
    }
}
