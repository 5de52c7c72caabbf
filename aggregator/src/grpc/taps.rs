//! Taps: the raw samples of one pod, copied for the operators who watch it.
//! Ingest offers every sample; while nobody taps, that costs one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use wva_core::store::PodKey;
use wva_proto::v1::Sample;

/// Samples a tap may have unread before it is cut off.
pub const TAP_BACKLOG: usize = 64;

/// Pods being tapped, and the channel each one's samples go to.
#[derive(Default)]
pub struct Taps {
    /// Open taps, so ingest can skip the map while nobody taps.
    pub(super) open: AtomicUsize,
    /// Each pod's channel, with an id telling a channel from its successor.
    pub(super) pods: Mutex<HashMap<PodKey, (usize, broadcast::Sender<Sample>)>>,
    next_id: AtomicUsize,
}

impl Taps {
    /// Hands a sample to the pod's taps, if any (ingest calls this per sample).
    pub fn offer(&self, pod: &PodKey, sample: &Sample) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tx)) = pods.get(pod) {
            // No receiver left is fine: it is removed when its stream ends.
            let _ = tx.send(sample.clone());
        }
    }

    /// Ends the pod's taps: its agent's stream ended.
    pub fn close(&self, pod: &PodKey) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Dropping the sender ends every receiver after what it has buffered.
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod);
    }

    pub(super) fn subscribe(self: &Arc<Self>, pod: PodKey) -> TapGuard {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let (id, tx) = pods.entry(pod.clone()).or_insert_with(|| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            (id, broadcast::channel(TAP_BACKLOG).0)
        });
        let rx = tx.subscribe();
        self.open.fetch_add(1, Ordering::Relaxed);
        TapGuard {
            taps: Arc::clone(self),
            pod,
            id: *id,
            rx,
        }
    }
}

/// One open tap; closing it forgets the pod's channel once nobody else
/// taps it.
pub(super) struct TapGuard {
    taps: Arc<Taps>,
    pod: PodKey,
    /// The channel `rx` belongs to, which a reconnected pod may have replaced.
    id: usize,
    pub(super) rx: broadcast::Receiver<Sample>,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.taps.open.fetch_sub(1, Ordering::Relaxed);
        let mut pods = self.taps.pods.lock().unwrap_or_else(|p| p.into_inner());
        if pods
            .get(&self.pod)
            .is_some_and(|(id, tx)| *id == self.id && tx.receiver_count() <= 1)
        {
            pods.remove(&self.pod);
        }
    }
}
