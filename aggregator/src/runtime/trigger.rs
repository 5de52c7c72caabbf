//! Wakes the analysis when data arrives, remembering when the oldest
//! unprocessed change happened so ingest-to-decision latency can be measured.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Trigger {
    notify: Notify,
    first_pending: Mutex<Option<Instant>>,
}

impl Trigger {
    /// Records a change observed at `at` and wakes the analysis.
    pub fn fire(&self, at: Instant) {
        let mut first = self.first_pending.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(at);
        drop(first);
        // `notify_one` keeps a permit when nobody waits, so no change is lost.
        self.notify.notify_one();
    }

    /// Waits until something fired since the last `take`.
    pub async fn fired(&self) {
        self.notify.notified().await;
    }

    /// Takes the arrival time of the oldest change not yet analysed.
    pub fn take(&self) -> Option<Instant> {
        self.first_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
