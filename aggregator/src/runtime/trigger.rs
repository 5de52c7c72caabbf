//! Wakes the analysis when data arrives, remembering when the oldest
//! unprocessed change happened so ingest-to-decision latency can be measured,
//! and whether one of the changes was urgent (it changed a saturation
//! verdict, so the analysis should not wait for its usual batching interval).

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Trigger {
    notify: Notify,
    /// Wakes whoever waits for an urgent change.
    urgent: Notify,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    first: Option<Instant>,
    urgent: bool,
}

impl Trigger {
    /// Records a change observed at `at` and wakes the analysis.
    pub fn fire(&self, at: Instant) {
        self.record(at, false);
    }

    /// Records a change observed at `at` that should be analysed soon.
    pub fn fire_urgent(&self, at: Instant) {
        self.record(at, true);
        self.urgent.notify_waiters();
    }

    fn record(&self, at: Instant, urgent: bool) {
        let mut pending = self.lock();
        pending.first.get_or_insert(at);
        pending.urgent |= urgent;
        drop(pending);
        // `notify_one` keeps a permit when nobody waits, so no change is lost.
        self.notify.notify_one();
    }

    /// Waits until something fired since the last `take`.
    pub async fn fired(&self) {
        self.notify.notified().await;
    }

    /// Waits until an urgent change is pending (at once if one is).
    pub async fn urgent(&self) {
        loop {
            let notified = self.urgent.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between still wakes.
            notified.as_mut().enable();
            if self.lock().urgent {
                return;
            }
            notified.await;
        }
    }

    /// Takes the arrival time of the oldest change not yet analysed; nothing
    /// is urgent any more.
    pub fn take(&self) -> Option<Instant> {
        let mut pending = self.lock();
        pending.urgent = false;
        pending.first.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}
