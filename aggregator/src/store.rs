//! Live per-pod state: one entry per connected agent stream.
//!
//! A pod's signals live exactly as long as its stream (and never longer than
//! the staleness bound): the ingest removes the entry when the stream ends, and
//! readers ignore samples older than the bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wva_proto::v1::{Hello, Sample};

/// Identity of a pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub pod: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// What the aggregator knows about one pod.
#[derive(Debug, Clone)]
pub struct PodEntry {
    /// Which stream owns this entry; a reconnect replaces it with a new id.
    pub stream_id: u64,
    pub hello: Hello,
    pub registered_at: Instant,
    /// The latest sample and when it arrived (aggregator clock).
    pub latest: Option<(Sample, Instant)>,
}

impl PodEntry {
    /// The latest sample if it arrived within `staleness` of `now`.
    pub fn fresh_sample(&self, now: Instant, staleness: Duration) -> Option<(&Sample, Instant)> {
        let (sample, at) = self.latest.as_ref()?;
        (now.saturating_duration_since(*at) <= staleness).then_some((sample, *at))
    }
}

/// Result of offering a sample to the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Accepted,
    /// The stream was replaced by a newer one for the same pod.
    Superseded,
    /// The sequence number did not advance (duplicate or reordered).
    OutOfOrder {
        last: u64,
    },
}

/// All connected pods. Critical sections are short: a map lookup and a move.
#[derive(Debug, Default)]
pub struct PodStore {
    pods: Mutex<HashMap<PodKey, PodEntry>>,
}

impl PodStore {
    /// Registers a stream for a pod, replacing any previous stream of that pod.
    /// Returns the id of the replaced stream, if any.
    pub fn register(&self, key: PodKey, stream_id: u64, hello: Hello, at: Instant) -> Option<u64> {
        let entry = PodEntry {
            stream_id,
            hello,
            registered_at: at,
            latest: None,
        };
        self.lock().insert(key, entry).map(|old| old.stream_id)
    }

    /// Stores the latest sample of a stream.
    pub fn offer(&self, key: &PodKey, stream_id: u64, sample: Sample, at: Instant) -> Offer {
        let mut pods = self.lock();
        let Some(entry) = pods.get_mut(key).filter(|e| e.stream_id == stream_id) else {
            return Offer::Superseded;
        };
        if let Some((last, _)) = &entry.latest
            && sample.seq <= last.seq
        {
            return Offer::OutOfOrder { last: last.seq };
        }
        entry.latest = Some((sample, at));
        Offer::Accepted
    }

    /// Removes the pod if `stream_id` still owns it. Returns whether it did.
    pub fn remove(&self, key: &PodKey, stream_id: u64) -> bool {
        let mut pods = self.lock();
        if pods.get(key).is_some_and(|e| e.stream_id == stream_id) {
            pods.remove(key);
            true
        } else {
            false
        }
    }

    /// Drops pods whose latest sample (or registration, when none arrived) is
    /// older than `staleness`; returns the removed keys.
    pub fn expire(&self, now: Instant, staleness: Duration) -> Vec<PodKey> {
        let mut removed = Vec::new();
        self.lock().retain(|key, entry| {
            let seen = entry
                .latest
                .as_ref()
                .map_or(entry.registered_at, |(_, at)| *at);
            let alive = now.saturating_duration_since(seen) <= staleness;
            if !alive {
                removed.push(key.clone());
            }
            alive
        });
        removed
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` over a consistent view of every pod.
    pub fn with_pods<R>(&self, f: impl FnOnce(&HashMap<PodKey, PodEntry>) -> R) -> R {
        f(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PodKey, PodEntry>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }
}
