//! The flap guard: a scale-down the model had to undo within its
//! stabilization window is not repeated until its load has clearly fallen.
//!
//! V1's scale-down test spreads the current load over one replica fewer; on
//! fewer replicas a noisy load gathers in bursts the spread does not show,
//! so a steady load can pass the test at n replicas and fail at n − 1 within
//! seconds, again and again. The window delays each round; only memory of
//! the undone step ends them.

use std::time::{Duration, Instant};

use super::load::Load;
use crate::fast_hash::{Map, Set};
use crate::model_key::{ModelKey, ModelRef};

/// How far the load must fall below the one that undid a scale-down before
/// the model may scale down again.
const MARGIN: f64 = 0.2;

/// A scale-up this soon after a scale-down undoes it (or within the model's
/// stabilization window, when that is longer).
const UNDO_HORIZON: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub(super) struct FlapGuard {
    models: Map<ModelKey, Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    last_down: Option<Instant>,
    /// The load at which a scale-down was undone.
    undone_at: Option<Load>,
}

impl FlapGuard {
    /// Whether the model may scale down at `load`; a guard the load has
    /// fallen clearly below, or that was set in another measure, is lifted.
    pub(super) fn allows_down(&mut self, model: ModelRef<'_>, load: Load) -> bool {
        let Some(memory) = self.models.get_mut(&model) else {
            return true;
        };
        match memory.undone_at {
            Some(undone)
                if undone.measure == load.measure
                    && load.value >= undone.value * (1.0 - MARGIN) =>
            {
                false
            }
            _ => {
                memory.undone_at = None;
                true
            }
        }
    }

    /// Records that the model stepped (`up` or down) at `load`: a scale-up
    /// within [`UNDO_HORIZON`] (or `window`, when longer) of its last
    /// scale-down undoes it, unless nothing measured the load.
    pub(super) fn stepped(
        &mut self,
        model: ModelRef<'_>,
        (now, window): (Instant, Duration),
        up: bool,
        load: Load,
    ) {
        let memory = self.models.entry_ref(&model).or_default();
        if !up {
            memory.last_down = Some(now);
        } else if load.value > 0.0
            && memory
                .last_down
                .is_some_and(|down| now.saturating_duration_since(down) <= window.max(UNDO_HORIZON))
        {
            memory.undone_at = Some(load);
        }
    }

    pub(super) fn retain(&mut self, live: &Set<ModelRef<'_>>) {
        self.models.retain(|k, _| live.contains(&k.borrowed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_key::A_MODEL;

    #[test]
    fn an_undone_scale_down_waits_for_the_load_to_fall_clearly() {
        let mut g = FlapGuard::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        assert!(g.allows_down(A_MODEL, Load::arrivals(15.0)));
        g.stepped(A_MODEL, (t0, window), false, Load::arrivals(15.0));
        // Back up 10 s later at the same load: the scale-down was wrong.
        g.stepped(
            A_MODEL,
            (t0 + Duration::from_secs(10), window),
            true,
            Load::arrivals(15.0),
        );
        assert!(!g.allows_down(A_MODEL, Load::arrivals(15.0)));
        assert!(
            !g.allows_down(A_MODEL, Load::arrivals(12.5)),
            "a small dip is noise"
        );
        assert!(
            g.allows_down(A_MODEL, Load::arrivals(11.9)),
            "20 % lower is a new load"
        );
        assert!(
            g.allows_down(A_MODEL, Load::arrivals(15.0)),
            "and the guard is lifted"
        );
    }

    #[test]
    fn a_scale_up_long_after_a_scale_down_is_new_load_not_an_undo() {
        let mut g = FlapGuard::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(600);
        g.stepped(A_MODEL, (t0, window), false, Load::arrivals(10.0));
        g.stepped(
            A_MODEL,
            (t0 + Duration::from_secs(601), window),
            true,
            Load::arrivals(20.0),
        );
        assert!(g.allows_down(A_MODEL, Load::arrivals(20.0)));
        // Two scale-ups in a row are no undo either.
        g.stepped(
            A_MODEL,
            (t0 + Duration::from_secs(602), window),
            true,
            Load::arrivals(25.0),
        );
        assert!(g.allows_down(A_MODEL, Load::arrivals(25.0)));
    }

    #[test]
    fn an_undo_at_no_load_or_in_another_measure_holds_nothing() {
        let mut g = FlapGuard::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let later = |s| (t0 + Duration::from_secs(s), window);
        g.stepped(A_MODEL, (t0, window), false, Load::arrivals(0.0));
        g.stepped(A_MODEL, later(5), true, Load::arrivals(0.0));
        assert!(
            g.allows_down(A_MODEL, Load::arrivals(0.0)),
            "nothing to compare"
        );
        // Undone while the KV cache filled (long requests, none finishing);
        // requests that now arrive and finish are another kind of load.
        let kv = Load::kv(0.9);
        g.stepped(A_MODEL, later(10), false, kv);
        g.stepped(A_MODEL, later(15), true, kv);
        assert!(!g.allows_down(A_MODEL, kv));
        assert!(g.allows_down(A_MODEL, Load::arrivals(3.0)));
    }
}
