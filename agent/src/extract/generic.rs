//! Operator-configured signals (`--signal`): each aggregates the samples of
//! one name whose labels pass its matchers, whatever the role.
//!
//! A signal no sample matched is left out of the sample rather than sent as
//! 0: an absent series (an exporter that lost its Redis, a key not created
//! yet) is not an empty queue, and scaling on a made-up 0 would shrink a
//! workload whose load is merely unseen.

use wva_proto::v1::NamedValue;

use super::slots::resized;
use crate::parse::Sample;
use crate::signal_spec::{Agg, Matcher, SignalSpec};

/// The configured signals and one accumulator each, allocated once.
#[derive(Debug, Default)]
pub(super) struct Generic {
    signals: Vec<(SignalSpec, Acc)>,
}

/// Non-NaN values matched this scrape.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    count: usize,
    sum: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.sum += v;
        self.count += 1;
    }

    fn value(&self, agg: Agg) -> Option<f64> {
        (self.count > 0).then(|| match agg {
            Agg::Sum => self.sum,
            Agg::Max => self.max,
            Agg::Min => self.min,
            Agg::Avg => self.sum / self.count as f64,
        })
    }
}

impl Generic {
    pub(super) fn new(specs: Vec<SignalSpec>) -> Self {
        Generic {
            signals: specs.into_iter().map(|s| (s, Acc::default())).collect(),
        }
    }

    pub(super) fn clear(&mut self) {
        for (_, acc) in &mut self.signals {
            *acc = Acc::default();
        }
    }

    /// Adds `sample` to every signal it matches; whether its name is one a
    /// signal reads (so a filtered scrape that served it asked for it).
    pub(super) fn observe(&mut self, sample: &Sample) -> bool {
        let mut named = false;
        for (spec, acc) in &mut self.signals {
            if spec.metric != sample.name {
                continue;
            }
            named = true;
            if !sample.value.is_nan() && spec.matchers.iter().all(|m| matches(m, sample)) {
                acc.add(sample.value);
            }
        }
        named
    }

    /// Whether a signal reads family `name`: in the generic role, a
    /// malformed line of it fails the scrape.
    pub(super) fn reads(&self, name: &str) -> bool {
        self.signals.iter().any(|(spec, _)| spec.metric == name)
    }

    /// Writes the signals some sample matched, in flag order, reusing the
    /// names already in `out`.
    pub(super) fn fill(&self, out: &mut Vec<NamedValue>) {
        let present = || {
            self.signals
                .iter()
                .filter_map(|(spec, acc)| Some((spec.name.as_str(), acc.value(spec.agg)?)))
        };
        let slots = resized(out, present().count());
        for (slot, (name, value)) in slots.iter_mut().zip(present()) {
            slot.name.clear();
            slot.name.push_str(name);
            slot.value = value;
        }
    }
}

/// Prometheus semantics: a missing label has the value `""`.
fn matches(m: &Matcher, sample: &Sample) -> bool {
    let equal = match sample.labels.get(&m.label) {
        Some(label) => label.value_eq(&m.value),
        None => m.value.is_empty(),
    };
    equal == m.equal
}
