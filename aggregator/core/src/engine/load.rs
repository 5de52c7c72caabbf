//! How much load a model carries, in a measure that can be compared over
//! time: what the flap guard and the rising-load guard compare.

use super::rates::WINDOW;
use crate::analysis::model::{VariantState, arrivals_and_backlog, plausible};

/// What a model's load is measured in; loads of different kinds are not
/// compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    /// Requests arriving per second.
    Arrivals,
    /// The KV cache in use, summed over replicas.
    KvCache,
}

/// A model's load at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Load {
    pub value: f64,
    pub measure: Measure,
}

impl Load {
    /// The requests arriving per second where the agents measure them and
    /// some arrive, else the KV cache in use: a model serving only long
    /// requests finishes none for minutes while its cache fills.
    pub(super) fn of(states: &[VariantState]) -> Load {
        let loads = || states.iter().flat_map(|s| &s.loads);
        let arrivals = arrivals_and_backlog(loads()).0;
        if arrivals > 0.0 {
            return Load {
                value: arrivals,
                measure: Measure::Arrivals,
            };
        }
        let kv = loads()
            .map(|l| l.kv_cache_usage)
            .filter(|v| plausible(*v))
            .sum();
        Load {
            value: kv,
            measure: Measure::KvCache,
        }
    }

    /// How far two loads may differ by chance alone. Arrivals are counted
    /// over at least one rate window, so at a low rate a few requests more
    /// or less make a large relative swing: two standard deviations of the
    /// difference of two Poisson rates. The KV cache moves by whole
    /// requests: a tenth of one replica's cache.
    pub(super) fn noise(self, other: f64) -> f64 {
        match self.measure {
            Measure::Arrivals => 2.0 * ((self.value + other) / WINDOW.as_secs_f64()).sqrt(),
            Measure::KvCache => 0.1,
        }
    }
}

#[cfg(test)]
impl Load {
    pub(super) fn arrivals(value: f64) -> Load {
        Load {
            value,
            measure: Measure::Arrivals,
        }
    }

    pub(super) fn kv(value: f64) -> Load {
        Load {
            value,
            measure: Measure::KvCache,
        }
    }
}
