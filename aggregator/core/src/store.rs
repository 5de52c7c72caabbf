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

/// For maps that copy a key only when it is new (`entry_ref`).
impl From<&PodKey> for PodKey {
    fn from(key: &PodKey) -> Self {
        key.clone()
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// The longest a pod's own interval stretches its staleness bound: a
/// source's claim of a longer interval does not keep a silent pod.
pub const MAX_OWN_STALENESS: Duration = Duration::from_secs(300);

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

/// What the budget counts for a Hello: the struct, its strings and its
/// list, by capacity (what the allocator holds, not what is used).
fn hello_bytes(hello: &Hello) -> usize {
    let strings = [
        &hello.pod,
        &hello.namespace,
        &hello.variant,
        &hello.accelerator,
        &hello.agent_version,
        &hello.pod_uid,
        &hello.instance,
    ];
    std::mem::size_of::<Hello>()
        + strings.iter().map(|s| s.capacity()).sum::<usize>()
        + vec_bytes(&hello.models)
        + hello.models.iter().map(String::capacity).sum::<usize>()
}

/// What the budget counts for a sample: the struct, its error text, and its
/// models, queues, pools and forwarded signals with their names, by
/// capacity.
fn sample_bytes(sample: &Sample) -> usize {
    let epp = sample.epp.as_ref().map_or(0, |e| {
        named_bytes(&e.queues, |q| &q.model) + named_bytes(&e.pools, |p| &p.pool)
    });
    std::mem::size_of::<Sample>()
        + sample.error.capacity()
        + named_bytes(&sample.models, |m| &m.model)
        + named_bytes(&sample.signals, |s| &s.name)
        + epp
}

/// The heap a vector holds for its elements and their names.
fn named_bytes<T>(items: &Vec<T>, name: impl Fn(&T) -> &String) -> usize {
    vec_bytes(items) + items.iter().map(|i| name(i).capacity()).sum::<usize>()
}

/// The heap a vector holds for its elements.
fn vec_bytes<T>(items: &Vec<T>) -> usize {
    items.capacity() * std::mem::size_of::<T>()
}

impl PodEntry {
    /// The bytes the store's budget counts for this entry.
    fn footprint(&self) -> usize {
        std::mem::size_of::<PodEntry>()
            + hello_bytes(&self.hello)
            + self.latest.as_ref().map_or(0, |(s, _)| sample_bytes(s))
    }

    /// Whether a stream sending `hello` at `now` may replace this holder.
    fn may_be_replaced(
        &self,
        key: &PodKey,
        hello: &Hello,
        now: Instant,
        takeover: Takeover,
    ) -> Result<(), RegisterError> {
        let Takeover::SameAgentOrSilent { least_silence } = takeover else {
            return Ok(());
        };
        if !hello.instance.is_empty() && hello.instance == self.hello.instance {
            return Ok(());
        }
        let heard = self
            .latest
            .as_ref()
            .map_or(self.registered_at, |(_, at)| *at);
        let silent = now.saturating_duration_since(heard);
        // The holder's own interval counts up to a minute, so a squatter
        // cannot declare an endless one.
        let interval = Duration::from_millis(u64::from(self.hello.interval_ms)).min(MAX_INTERVAL);
        let needed = (interval * 3).max(least_silence);
        if silent >= needed {
            return Ok(());
        }
        Err(RegisterError::Held {
            pod: key.to_string(),
            silent_ms: silent.as_millis(),
            needed_ms: needed.as_millis(),
        })
    }

    /// The latest sample if it arrived within the pod's staleness bound
    /// ([`PodEntry::staleness`]) of `now`.
    pub fn fresh_sample(&self, now: Instant, staleness: Duration) -> Option<(&Sample, Instant)> {
        let (sample, at) = self.latest.as_ref()?;
        (now.saturating_duration_since(*at) <= self.staleness(staleness)).then_some((sample, *at))
    }

    /// How old this pod's latest sample may be: `staleness`, or two of the
    /// intervals its source samples it at (an agent's scrape interval, a
    /// polled source's poll interval) when those are longer, up to
    /// [`MAX_OWN_STALENESS`]. A pod polled every minute thus stays between
    /// polls.
    pub fn staleness(&self, staleness: Duration) -> Duration {
        let own = Duration::from_millis(u64::from(self.hello.interval_ms)) * 2;
        staleness.max(own.min(MAX_OWN_STALENESS))
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
    /// The store's memory budget had no room for the sample's signals: it
    /// was kept as a failed scrape.
    OverBudget,
}

/// Pods a store holds at most.
pub const MAX_PODS: usize = 10_000;
/// Bytes of pod state (names, models, signals) a store holds at most. Real
/// pods take a few hundred bytes each; clients that fill every name and
/// model list to its limit reach this budget long before the pod cap, so it
/// keeps the aggregator within its memory limit whatever they send.
pub const MAX_BYTES: usize = 96 << 20;

/// Who may replace the stream that holds a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Any admitted stream: its credential proves it speaks for the pod.
    Anyone,
    /// The same agent process (the Hello's `instance`), or anyone once the
    /// holder has sent nothing for three of its scrape intervals (at least
    /// `least_silence`): a shared token does not prove which pod a stream
    /// speaks for, so a live pod's identity cannot be taken from it.
    SameAgentOrSilent { least_silence: Duration },
}

/// The longest scrape interval a holder's silence is measured against.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Why a stream could not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("the aggregator holds {limit} pods, its limit")]
    Full { limit: usize },
    #[error("the aggregator's pod state is at its budget of {budget} bytes")]
    OverBudget { budget: usize },
    #[error(
        "pod {pod} is held by another agent that sent data {silent_ms} ms ago; \
         another stream takes it over after {needed_ms} ms of silence, or from the same agent instance"
    )]
    Held {
        pod: String,
        silent_ms: u128,
        needed_ms: u128,
    },
}

/// All connected pods. Critical sections are short: a map lookup and a move.
#[derive(Debug)]
pub struct PodStore {
    pods: Mutex<Pods>,
    limit: usize,
    budget: usize,
}

/// The pods and the bytes their state takes, kept together under one lock.
#[derive(Debug, Default)]
struct Pods {
    map: HashMap<PodKey, PodEntry>,
    bytes: usize,
}

impl Pods {
    fn insert(&mut self, key: PodKey, entry: PodEntry) -> Option<PodEntry> {
        self.bytes += entry.footprint();
        let old = self.map.insert(key, entry);
        self.bytes -= old.as_ref().map_or(0, PodEntry::footprint);
        old
    }

    fn remove(&mut self, key: &PodKey) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.footprint();
        }
    }
}

impl Default for PodStore {
    fn default() -> Self {
        PodStore::with_limits(MAX_PODS, MAX_BYTES)
    }
}

impl PodStore {
    /// A store of at most `limit` pods.
    pub fn with_limit(limit: usize) -> Self {
        PodStore::with_limits(limit, MAX_BYTES)
    }

    /// A store of at most `limit` pods taking at most `budget` bytes.
    pub fn with_limits(limit: usize, budget: usize) -> Self {
        PodStore {
            pods: Mutex::default(),
            limit,
            budget,
        }
    }

    /// Registers a stream for a pod, replacing the previous stream of that
    /// pod where `takeover` allows; a new pod is refused when the store is
    /// full. Returns the id of the replaced stream, if any.
    pub fn try_register(
        &self,
        key: PodKey,
        stream_id: u64,
        hello: Hello,
        at: Instant,
        takeover: Takeover,
    ) -> Result<Option<u64>, RegisterError> {
        let mut pods = self.lock();
        let old = match pods.map.get(&key) {
            None if pods.map.len() >= self.limit => {
                return Err(RegisterError::Full { limit: self.limit });
            }
            Some(holder) => {
                holder.may_be_replaced(&key, &hello, at, takeover)?;
                holder.footprint()
            }
            None => 0,
        };
        let entry = PodEntry {
            stream_id,
            hello,
            registered_at: at,
            latest: None,
        };
        if pods.bytes - old + entry.footprint() > self.budget {
            return Err(RegisterError::OverBudget {
                budget: self.budget,
            });
        }
        Ok(pods.insert(key, entry).map(|old| old.stream_id))
    }

    /// [`PodStore::try_register`] for tests, whose stores have room.
    #[cfg(any(test, feature = "test-support"))]
    pub fn register(&self, key: PodKey, stream_id: u64, hello: Hello, at: Instant) -> Option<u64> {
        self.try_register(key, stream_id, hello, at, Takeover::Anyone)
            .expect("a test store has room")
    }

    /// Registers `key` for `stream_id` unless another stream holds it (an
    /// agent's stream wins over a polled source) or the store is full;
    /// returns whether it did.
    pub fn claim(&self, key: PodKey, stream_id: u64, hello: Hello, at: Instant) -> bool {
        let mut pods = self.lock();
        match pods.map.get(&key) {
            Some(entry) => entry.stream_id == stream_id,
            None if pods.map.len() >= self.limit => false,
            None => {
                let entry = PodEntry {
                    stream_id,
                    hello,
                    registered_at: at,
                    latest: None,
                };
                let room = pods.bytes + entry.footprint() <= self.budget;
                if room {
                    pods.insert(key, entry);
                }
                room
            }
        }
    }

    /// Stores the latest sample of a stream; one whose signals do not fit
    /// the memory budget is kept as a failed scrape.
    pub fn offer(&self, key: &PodKey, stream_id: u64, sample: Sample, at: Instant) -> Offer {
        let mut guard = self.lock();
        let pods = &mut *guard;
        let Some(entry) = pods.map.get_mut(key).filter(|e| e.stream_id == stream_id) else {
            return Offer::Superseded;
        };
        if let Some((last, _)) = &entry.latest
            && sample.seq <= last.seq
        {
            return Offer::OutOfOrder { last: last.seq };
        }
        let old = entry.latest.as_ref().map_or(0, |(s, _)| sample_bytes(s));
        let (sample, offer) = if pods.bytes - old + sample_bytes(&sample) <= self.budget {
            (sample, Offer::Accepted)
        } else {
            let failed = Sample {
                up: false,
                error: "the aggregator's pod state is at its memory budget".to_string(),
                models: Vec::new(),
                epp: None,
                ..sample
            };
            (failed, Offer::OverBudget)
        };
        pods.bytes = pods.bytes - old + sample_bytes(&sample);
        entry.latest = Some((sample, at));
        offer
    }

    /// Removes the pod if `stream_id` still owns it. Returns whether it did.
    pub fn remove(&self, key: &PodKey, stream_id: u64) -> bool {
        let mut pods = self.lock();
        if pods.map.get(key).is_some_and(|e| e.stream_id == stream_id) {
            pods.remove(key);
            true
        } else {
            false
        }
    }

    /// Drops pods whose latest sample (or registration, when none arrived) is
    /// older than their staleness bound ([`PodEntry::staleness`]); returns the
    /// removed keys.
    pub fn expire(&self, now: Instant, staleness: Duration) -> Vec<PodKey> {
        let mut pods = self.lock();
        let removed: Vec<PodKey> = pods
            .map
            .iter()
            .filter(|(_, entry)| {
                let seen = entry
                    .latest
                    .as_ref()
                    .map_or(entry.registered_at, |(_, at)| *at);
                now.saturating_duration_since(seen) > entry.staleness(staleness)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &removed {
            pods.remove(key);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the pods' state takes, as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Runs `f` over a consistent view of every pod.
    pub fn with_pods<R>(&self, f: impl FnOnce(&HashMap<PodKey, PodEntry>) -> R) -> R {
        f(&self.lock().map)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pods> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every mutation is a single insert/remove with its byte count), so
        // poisoning is ignored.
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALENESS: Duration = Duration::from_secs(5);

    fn key(pod: &str) -> PodKey {
        PodKey {
            namespace: "ns".to_string(),
            pod: pod.to_string(),
        }
    }

    fn hello(pod: &str, variant: &str) -> Hello {
        Hello {
            pod: pod.to_string(),
            namespace: "ns".to_string(),
            variant: variant.to_string(),
            ..Hello::default()
        }
    }

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            up: true,
            ..Sample::default()
        }
    }

    /// `(stream_id, seq of the latest sample)` of a pod, if it is in the store.
    fn state(store: &PodStore, key: &PodKey) -> Option<(u64, Option<u64>)> {
        store.with_pods(|pods| {
            pods.get(key)
                .map(|e| (e.stream_id, e.latest.as_ref().map(|(s, _)| s.seq)))
        })
    }

    #[test]
    fn register_offer_and_remove_by_stream_id() {
        let store = PodStore::default();
        let t0 = Instant::now();
        assert!(store.is_empty());
        assert_eq!(store.register(key("p"), 1, hello("p", "v"), t0), None);
        assert_eq!(store.len(), 1);
        assert_eq!(state(&store, &key("p")), Some((1, None)));

        assert_eq!(store.offer(&key("p"), 1, sample(1), t0), Offer::Accepted);
        assert_eq!(state(&store, &key("p")), Some((1, Some(1))));

        assert!(store.remove(&key("p"), 1));
        assert!(store.is_empty());
        assert!(
            !store.remove(&key("p"), 1),
            "a second removal finds nothing"
        );
    }

    #[test]
    fn pods_are_keyed_by_namespace_and_name() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let other_ns = PodKey {
            namespace: "other".to_string(),
            pod: "p".to_string(),
        };
        store.register(key("p"), 1, hello("p", "v"), t0);
        assert_eq!(
            store.register(other_ns.clone(), 2, hello("p", "v"), t0),
            None
        );
        assert_eq!(store.len(), 2);
        assert_eq!(store.offer(&other_ns, 1, sample(1), t0), Offer::Superseded);
        assert_eq!(store.offer(&key("p"), 1, sample(1), t0), Offer::Accepted);
        assert_eq!(state(&store, &other_ns), Some((2, None)));
    }

    #[test]
    fn offer_for_an_unknown_pod_is_superseded() {
        let store = PodStore::default();
        assert_eq!(
            store.offer(&key("ghost"), 1, sample(1), Instant::now()),
            Offer::Superseded
        );
        assert!(store.is_empty(), "an offer never creates an entry");
    }

    #[test]
    fn newer_stream_supersedes_the_older_one() {
        let store = PodStore::default();
        let t0 = Instant::now();
        store.register(key("p"), 1, hello("p", "old"), t0);
        assert_eq!(store.offer(&key("p"), 1, sample(10), t0), Offer::Accepted);

        assert_eq!(
            store.register(key("p"), 2, hello("p", "new"), t0),
            Some(1),
            "register reports the stream it replaced"
        );
        // The new stream starts clean: no sample carried over from the old one.
        assert_eq!(state(&store, &key("p")), Some((2, None)));
        // A restarted agent starts its sequence again at 1.
        assert_eq!(store.offer(&key("p"), 2, sample(1), t0), Offer::Accepted);
        store.with_pods(|pods| assert_eq!(pods[&key("p")].hello.variant, "new"));
    }

    #[test]
    fn old_stream_cannot_disturb_the_new_one() {
        let store = PodStore::default();
        let t0 = Instant::now();
        store.register(key("p"), 1, hello("p", "v"), t0);
        store.register(key("p"), 2, hello("p", "v"), t0);
        assert_eq!(store.offer(&key("p"), 2, sample(3), t0), Offer::Accepted);

        // Late samples of the old stream are refused and change nothing.
        assert_eq!(store.offer(&key("p"), 1, sample(99), t0), Offer::Superseded);
        assert_eq!(state(&store, &key("p")), Some((2, Some(3))));

        // The old stream ending does not remove the pod.
        assert!(!store.remove(&key("p"), 1));
        assert_eq!(state(&store, &key("p")), Some((2, Some(3))));

        // The new stream ending does.
        assert!(store.remove(&key("p"), 2));
        assert!(store.is_empty());
    }

    #[test]
    fn sequence_numbers_must_advance() {
        let store = PodStore::default();
        let t0 = Instant::now();
        store.register(key("p"), 1, hello("p", "v"), t0);
        assert_eq!(store.offer(&key("p"), 1, sample(5), t0), Offer::Accepted);
        assert_eq!(
            store.offer(&key("p"), 1, sample(5), t0),
            Offer::OutOfOrder { last: 5 },
            "duplicate"
        );
        assert_eq!(
            store.offer(&key("p"), 1, sample(4), t0),
            Offer::OutOfOrder { last: 5 },
            "reordered"
        );
        assert_eq!(state(&store, &key("p")), Some((1, Some(5))));
        assert_eq!(store.offer(&key("p"), 1, sample(7), t0), Offer::Accepted);
        assert_eq!(state(&store, &key("p")), Some((1, Some(7))));
    }

    #[test]
    fn rejected_sample_keeps_the_previous_arrival_time() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        store.register(key("p"), 1, hello("p", "v"), t0);
        store.offer(&key("p"), 1, sample(2), t0);
        store.offer(&key("p"), 1, sample(1), later);
        store.with_pods(|pods| {
            let (s, at) = pods[&key("p")].latest.as_ref().unwrap();
            assert_eq!((s.seq, *at), (2, t0));
        });
    }

    #[test]
    fn fresh_sample_respects_the_staleness_bound() {
        let store = PodStore::default();
        let t0 = Instant::now();
        store.register(key("p"), 1, hello("p", "v"), t0);
        store.with_pods(|pods| {
            assert!(pods[&key("p")].fresh_sample(t0, STALENESS).is_none());
        });
        store.offer(&key("p"), 1, sample(1), t0);
        store.with_pods(|pods| {
            let entry = &pods[&key("p")];
            let (s, at) = entry.fresh_sample(t0 + STALENESS, STALENESS).unwrap();
            assert_eq!((s.seq, at), (1, t0), "exactly at the bound is still fresh");
            assert!(
                entry
                    .fresh_sample(t0 + STALENESS + Duration::from_millis(1), STALENESS)
                    .is_none()
            );
            // A clock reading before the arrival does not underflow.
            assert!(entry.fresh_sample(t0, STALENESS).is_some());
        });
    }

    #[test]
    fn expire_drops_pods_whose_last_sample_is_too_old() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(4);
        for (i, pod) in ["silent", "stale", "fresh"].into_iter().enumerate() {
            store.register(key(pod), i as u64, hello(pod, "v"), t0);
        }
        store.offer(&key("stale"), 1, sample(1), t0);
        store.offer(&key("fresh"), 2, sample(1), t1);

        let now = t0 + STALENESS + Duration::from_millis(1);
        let mut removed = store.expire(now, STALENESS);
        removed.sort();
        assert_eq!(removed, [key("silent"), key("stale")]);
        assert_eq!(store.len(), 1);
        assert!(state(&store, &key("fresh")).is_some());
    }

    #[test]
    fn expire_keeps_pods_at_the_bound_and_uses_registration_without_samples() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        store.register(key("old"), 1, hello("old", "v"), t0);
        store.offer(&key("old"), 1, sample(1), t1);
        store.register(key("new"), 2, hello("new", "v"), t1);

        // Registered long ago, but a recent sample keeps it; a just-registered
        // pod without samples is kept too.
        assert_eq!(
            store.expire(t1 + STALENESS, STALENESS),
            Vec::<PodKey>::new()
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_pod_sampled_less_often_stays_for_two_of_its_intervals() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        for (pod, interval) in [("polled", minute), ("agent", Duration::from_secs(1))] {
            let hello = Hello {
                interval_ms: interval.as_millis() as u32,
                ..hello(pod, "v")
            };
            store.register(key(pod), 1, hello, t0);
            store.offer(&key(pod), 1, sample(1), t0);
        }
        let between_polls = t0 + minute;
        assert_eq!(store.expire(between_polls, STALENESS), [key("agent")]);
        store.with_pods(|pods| {
            let polled = &pods[&key("polled")];
            assert!(polled.fresh_sample(between_polls, STALENESS).is_some());
            assert!(
                polled
                    .fresh_sample(t0 + minute * 2 + Duration::from_millis(1), STALENESS)
                    .is_none()
            );
        });
        // A claimed interval stretches the bound only so far.
        let hello = Hello {
            interval_ms: u32::MAX,
            ..hello("slow", "v")
        };
        store.register(key("slow"), 2, hello, t0);
        let at_the_cap = store.expire(t0 + MAX_OWN_STALENESS, STALENESS);
        assert!(!at_the_cap.contains(&key("slow")), "{at_the_cap:?}");
        let after = t0 + MAX_OWN_STALENESS + Duration::from_millis(1);
        assert!(store.expire(after, STALENESS).contains(&key("slow")));
    }

    #[test]
    fn pod_key_displays_namespace_slash_pod() {
        assert_eq!(key("p-0").to_string(), "ns/p-0");
    }

    #[test]
    fn a_full_store_refuses_new_pods_but_not_reconnects() {
        let store = PodStore::with_limit(2);
        let t0 = Instant::now();
        store.register(key("a"), 1, hello("a", "v"), t0);
        store.register(key("b"), 2, hello("b", "v"), t0);
        assert_eq!(
            store.try_register(key("c"), 3, hello("c", "v"), t0, Takeover::Anyone),
            Err(RegisterError::Full { limit: 2 })
        );
        assert!(!store.claim(key("c"), 3, hello("c", "v"), t0));
        // A pod already held may reconnect.
        assert_eq!(
            store.try_register(key("a"), 4, hello("a", "v"), t0, Takeover::Anyone),
            Ok(Some(1))
        );
        assert!(store.remove(&key("b"), 2));
        assert_eq!(
            store.try_register(key("c"), 5, hello("c", "v"), t0, Takeover::Anyone),
            Ok(None)
        );
    }

    #[test]
    fn a_live_pod_is_taken_over_only_by_its_own_agent_or_after_silence() {
        let store = PodStore::default();
        let t0 = Instant::now();
        let policy = Takeover::SameAgentOrSilent {
            least_silence: Duration::from_secs(3),
        };
        let agent = |instance: &str, interval_ms| Hello {
            instance: instance.to_string(),
            interval_ms,
            ..hello("a", "v")
        };
        store.register(key("a"), 1, agent("first", 1_000), t0);
        store.offer(&key("a"), 1, sample(1), t0 + Duration::from_secs(2));

        // Another agent while the holder sends: refused, saying for how long.
        let held = store.try_register(
            key("a"),
            2,
            agent("other", 1_000),
            t0 + Duration::from_secs(4),
            policy,
        );
        assert_eq!(
            held,
            Err(RegisterError::Held {
                pod: "ns/a".to_string(),
                silent_ms: 2_000,
                needed_ms: 3_000,
            })
        );
        // An agent without an instance is another agent too.
        assert!(
            store
                .try_register(
                    key("a"),
                    2,
                    agent("", 1_000),
                    t0 + Duration::from_secs(4),
                    policy
                )
                .is_err()
        );
        // The same agent reconnecting takes over at once.
        assert_eq!(
            store.try_register(
                key("a"),
                3,
                agent("first", 1_000),
                t0 + Duration::from_secs(2),
                policy
            ),
            Ok(Some(1))
        );
        // After three of the holder's intervals (10 s) of silence, anyone may.
        store.register(key("b"), 4, agent("slow", 10_000), t0);
        assert!(
            store
                .try_register(
                    key("b"),
                    5,
                    agent("other", 1_000),
                    t0 + Duration::from_secs(29),
                    policy
                )
                .is_err()
        );
        assert_eq!(
            store.try_register(
                key("b"),
                5,
                agent("other", 1_000),
                t0 + Duration::from_secs(30),
                policy
            ),
            Ok(Some(4))
        );
        // Where the credential proves the pod, the newest stream wins.
        assert_eq!(
            store.try_register(key("b"), 6, agent("third", 1_000), t0, Takeover::Anyone),
            Ok(Some(5))
        );
    }

    #[test]
    fn the_memory_budget_refuses_new_pods_and_strips_samples_once_full() {
        use wva_proto::v1::ModelSignals;

        let t0 = Instant::now();
        let long = |m: usize| format!("model-{m}-{}", "x".repeat(240));
        let big = |pod: &str| Hello {
            models: (0..64).map(long).collect(),
            ..hello(pod, "v")
        };
        let one = PodEntry {
            stream_id: 0,
            hello: big("a"),
            registered_at: t0,
            latest: None,
        }
        .footprint();
        assert!(one > 64 * 250, "names are counted: {one}");
        let store = PodStore::with_limits(100, one * 2 + one / 2);
        store.register(key("a"), 1, big("a"), t0);
        store.register(key("b"), 2, big("b"), t0);
        assert!(matches!(
            store.try_register(key("c"), 3, big("c"), t0, Takeover::Anyone),
            Err(RegisterError::OverBudget { .. })
        ));
        assert!(!store.claim(key("c"), 3, big("c"), t0));

        // A sample that does not fit is kept as a failed scrape.
        let full = Sample {
            models: (0..64)
                .map(|m| ModelSignals {
                    model: long(m),
                    ..ModelSignals::default()
                })
                .collect(),
            ..sample(1)
        };
        assert_eq!(store.offer(&key("a"), 1, full, t0), Offer::OverBudget);
        store.with_pods(|pods| {
            let (kept, _) = pods[&key("a")].latest.as_ref().unwrap();
            assert!(!kept.up && kept.models.is_empty(), "{kept:?}");
        });
        // Leaving gives the room back, to the byte.
        let before = store.bytes();
        assert!(store.remove(&key("b"), 2));
        assert_eq!(store.bytes(), before - one);
        store.expire(t0 + STALENESS * 2, STALENESS);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn forwarded_signals_count_against_the_budget() {
        use wva_proto::v1::NamedValue;

        let signal = NamedValue {
            name: "q".repeat(63),
            value: 1.0,
        };
        let forwarded = Sample {
            signals: vec![signal; 16],
            ..sample(1)
        };
        let each = std::mem::size_of::<NamedValue>() + 63;
        assert!(
            sample_bytes(&forwarded) >= sample_bytes(&sample(1)) + 16 * each,
            "{}",
            sample_bytes(&forwarded)
        );
    }
}
