//! An engine rank: a [`Scheduler`] driven by one step-loop task.
//!
//! The loop plans a step, sleeps for its simulated duration, then completes
//! it, advancing every scheduled sequence at once, so hundreds of concurrent
//! requests cost one timer. Time is tokio time, so tests can pause it.

mod request;
mod scheduler;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use request::{SequenceSpec, Submission, TokenEvent};
pub use scheduler::{EngineSnapshot, Scheduler, SubmitError};

use crate::config::EngineConfig;
use crate::metrics::lora::LoraInfo;

/// How far the simulated clock may fall behind real time (a busy machine
/// waking the loop late) before it stops catching up and restarts from now.
const MAX_LAG: Duration = Duration::from_millis(50);

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct Engine {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    scheduler: Mutex<Scheduler>,
    wake: Notify,
    snapshot: watch::Sender<EngineSnapshot>,
    lora: Option<Arc<Mutex<LoraInfo>>>,
}

impl Engine {
    /// Starts the step loop on the current tokio runtime. `lora` is the
    /// registry behind `vllm:lora_requests_info`, shared by all ranks.
    pub fn start(config: EngineConfig, lora: Option<Arc<Mutex<LoraInfo>>>) -> Self {
        let shared = Arc::new(Shared {
            scheduler: Mutex::new(Scheduler::new(config, unix_now())),
            wake: Notify::new(),
            snapshot: watch::Sender::new(EngineSnapshot::default()),
            lora,
        });
        let task = tokio::spawn(run(shared.clone()));
        Self { shared, task }
    }

    /// Queues a request's sequences and wakes the loop.
    pub fn submit(&self, submission: Submission) -> Result<(), SubmitError> {
        self.shared
            .update(|s| s.submit(submission, Instant::now()))?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Follows the scheduler state; it changes after every submission and
    /// step.
    pub fn subscribe(&self) -> watch::Receiver<EngineSnapshot> {
        self.shared.snapshot.subscribe()
    }

    /// The scheduler, locked (for `/metrics`); hold it briefly.
    pub fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.shared.lock()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the scheduler and publishes the resulting state.
    fn update<T>(&self, f: impl FnOnce(&mut Scheduler) -> T) -> T {
        let mut scheduler = self.lock();
        let result = f(&mut scheduler);
        let snapshot = scheduler.snapshot();
        drop(scheduler);
        self.snapshot.send_if_modified(|current| {
            let changed = *current != snapshot;
            *current = snapshot;
            changed
        });
        result
    }

    /// Sets the `vllm:lora_requests_info` series of the current adapters, as
    /// vLLM does after every step.
    fn touch_lora(&self, hint: &mut Option<usize>) {
        let Some(lora) = &self.lora else { return };
        let mut scheduler = self.lock();
        let (running, waiting) = scheduler.lora_adapters();
        let mut info = lora.lock().unwrap_or_else(PoisonError::into_inner);
        *hint = Some(info.touch(*hint, running, waiting, unix_now()));
    }
}

async fn run(shared: Arc<Shared>) {
    // Simulated time at which the previous step ended, while busy.
    let mut clock: Option<Instant> = None;
    let mut lora_hint = None;
    loop {
        let now = Instant::now();
        let start = clock
            .filter(|end| now.saturating_duration_since(*end) < MAX_LAG)
            .unwrap_or(now);
        let Some(duration) = shared.update(|s| s.schedule(start)) else {
            clock = None;
            shared.wake.notified().await;
            continue;
        };
        let end = start + duration;
        if duration.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep_until(end).await;
        }
        shared.update(|s| s.finish_step(end));
        shared.touch_lora(&mut lora_hint);
        clock = Some(end);
    }
}
