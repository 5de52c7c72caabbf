//! State the engine keeps per pod and model from one analysis to the next
//! (request-rate readings, success counters), and forgets once the pod
//! leaves the store.
//!
//! Every pod that reports is looked at by every analysis, so a sweep asks the
//! store only about the pods this analysis did not look at: in a steady
//! fleet it hashes nothing.

use std::sync::Arc;

use crate::fast_hash::Map;
use crate::store::PodKey;

#[derive(Debug)]
pub struct PodModels<T> {
    pods: Map<PodKey, Slot<T>>,
    /// Counts sweeps; a slot seen since the last sweep holds the current one.
    epoch: u64,
}

/// One pod's state.
#[derive(Debug)]
pub struct Slot<T> {
    seen: u64,
    /// The pod's name, shared with every decision that lists the pod:
    /// an analysis lists every pod, and a copy of each name per analysis
    /// was a tenth of its time.
    name: Arc<str>,
    /// A pod serves one model or a few (a base model and its adapters, at
    /// most a sample's limit), so a list beats a map and allocates nothing
    /// per lookup.
    models: Vec<(String, T)>,
}

impl<T> Default for PodModels<T> {
    fn default() -> Self {
        PodModels {
            pods: Map::default(),
            epoch: 0,
        }
    }
}

impl<T> PodModels<T> {
    /// The pod's state, made when it has none; the pod counts as seen by
    /// this analysis.
    pub fn pod(&mut self, pod: &PodKey) -> &mut Slot<T> {
        let epoch = self.epoch;
        let slot = self.pods.entry_ref(pod).or_insert_with(|| Slot {
            seen: epoch,
            name: Arc::from(pod.pod.as_str()),
            models: Vec::new(),
        });
        slot.seen = epoch;
        slot
    }

    /// Runs `f` on the pod's value for `model`, made by `make` when there
    /// is none (then `f` is told so).
    pub fn update<R>(
        &mut self,
        pod: &PodKey,
        model: &str,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&mut T, bool) -> R,
    ) -> R {
        self.pod(pod).update(model, make, f)
    }

    /// Forgets the pods that are no longer in the store; `in_store` is asked
    /// only about those not seen since the previous sweep.
    pub fn sweep(&mut self, in_store: impl Fn(&PodKey) -> bool) {
        let epoch = self.epoch;
        self.pods
            .retain(|pod, slot| slot.seen == epoch || in_store(pod));
        self.epoch += 1;
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

impl<T> Slot<T> {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Runs `f` on the value for `model`, made by `make` when there is none
    /// (then `f` is told so).
    pub fn update<R>(
        &mut self,
        model: &str,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&mut T, bool) -> R,
    ) -> R {
        match self.models.iter().position(|(m, _)| m == model) {
            Some(i) => f(&mut self.models[i].1, false),
            None => {
                self.models.push((model.to_string(), make()));
                let (_, value) = self.models.last_mut().expect("just pushed");
                f(value, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn pod(name: &str) -> PodKey {
        PodKey {
            namespace: "ns".into(),
            pod: name.into(),
        }
    }

    /// The value after adding one, and whether it was new.
    fn bump(m: &mut PodModels<u32>, name: &str, model: &str) -> (u32, bool) {
        m.update(
            &pod(name),
            model,
            || 0,
            |v, new| {
                *v += 1;
                (*v, new)
            },
        )
    }

    #[test]
    fn values_are_kept_per_pod_and_model() {
        let mut m = PodModels::default();
        assert_eq!(bump(&mut m, "a", "x"), (1, true));
        assert_eq!(bump(&mut m, "a", "x"), (2, false));
        assert_eq!(bump(&mut m, "a", "y"), (1, true));
        assert_eq!(bump(&mut m, "b", "x"), (1, true));
    }

    #[test]
    fn a_pods_name_is_made_once_and_shared() {
        let mut m = PodModels::<u32>::default();
        let first = m.pod(&pod("a")).name().clone();
        bump(&mut m, "a", "x");
        let again = m.pod(&pod("a")).name().clone();
        assert_eq!(&*first, "a");
        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn a_sweep_asks_only_about_pods_not_seen_since_the_last() {
        let mut m = PodModels::default();
        bump(&mut m, "seen", "x");
        bump(&mut m, "quiet", "x");
        m.sweep(|_| panic!("every pod was seen"));
        // Next analysis: only one pod reports; the other is still connected.
        bump(&mut m, "seen", "x");
        let asked = RefCell::new(Vec::new());
        m.sweep(|p| {
            asked.borrow_mut().push(p.pod.clone());
            true
        });
        assert_eq!(*asked.borrow(), ["quiet"]);
        // Then it leaves the store: forgotten, values and all.
        m.sweep(|p| p.pod != "quiet");
        assert_eq!(bump(&mut m, "quiet", "x"), (1, true));
        m.sweep(|_| false);
        m.sweep(|_| false);
        assert!(m.is_empty());
    }
}
