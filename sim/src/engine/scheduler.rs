//! One engine rank's scheduler, modelled on vLLM V1's: a FIFO waiting queue,
//! a running batch of at most `max_num_seqs`, a per-step token budget shared
//! by decodes and (chunked) prefills, KV blocks allocated as tokens are
//! computed, and recompute preemption of the most recently admitted request
//! when a running one needs a block and none is free.
//!
//! It has no clock and no I/O besides sending tokens: the caller passes the
//! time and sleeps for the step durations it returns.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::request::{Request, Submission};
use crate::config::EngineConfig;
use crate::finish::FinishReason;
use crate::metrics::lora::AdapterId;
use crate::metrics::{EngineMetrics, FinishedRequest};

/// Why a submission was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the waiting queue is full ({waiting} of {capacity} requests waiting)")]
    QueueFull { waiting: usize, capacity: u32 },
    #[error("a sequence needs at least one prompt token and one output token")]
    EmptySequence,
    #[error(
        "a sequence of up to {tokens} tokens needs {blocks} KV blocks but the cache has only {capacity}"
    )]
    ExceedsKvCache {
        tokens: u32,
        blocks: u32,
        capacity: u32,
    },
}

/// Scheduler state at a point in time, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub running: usize,
    pub waiting: usize,
    pub used_blocks: u32,
    pub preemptions: u64,
    /// Sequences finished for any reason.
    pub finished: u64,
}

/// Progress of a request with `n` > 1 sequences per prompt.
#[derive(Debug)]
struct ParentProgress {
    remaining: u32,
    max_generated: u32,
}

#[derive(Debug)]
pub struct Scheduler {
    config: EngineConfig,
    waiting: VecDeque<Request>,
    running: Vec<Request>,
    free_blocks: u32,
    next_group: u64,
    parents: HashMap<(u64, u32), ParentProgress>,
    metrics: EngineMetrics,
    // Scratch lists reused across steps.
    skipped: Vec<Request>,
    batch_loras: Vec<AdapterId>,
    waiting_loras: Vec<AdapterId>,
}

fn blocks_for(tokens: u32, block_size: u32) -> u32 {
    tokens.div_ceil(block_size)
}

impl Scheduler {
    /// `created` is the Unix time reported in the `_created` series.
    pub fn new(config: EngineConfig, created: f64) -> Self {
        let spec_tokens = config.spec_decode.map(|s| s.num_tokens);
        Self {
            metrics: EngineMetrics::new(config.max_model_len, spec_tokens, created),
            free_blocks: config.num_gpu_blocks,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_group: 0,
            parents: HashMap::new(),
            skipped: Vec::new(),
            batch_loras: Vec::new(),
            waiting_loras: Vec::new(),
        }
    }

    /// Queues every sequence of `submission`, or none of them.
    pub fn submit(&mut self, submission: Submission, now: Instant) -> Result<(), SubmitError> {
        if let Some(capacity) = self.config.max_waiting {
            let waiting = self.waiting.len();
            if waiting + submission.sequences.len() > capacity as usize {
                return Err(SubmitError::QueueFull { waiting, capacity });
            }
        }
        for seq in &submission.sequences {
            if seq.prompt_tokens == 0 || seq.max_tokens == 0 {
                return Err(SubmitError::EmptySequence);
            }
            let tokens = seq.prompt_tokens.saturating_add(seq.max_tokens);
            let blocks = blocks_for(tokens, self.config.block_size);
            if blocks > self.config.num_gpu_blocks {
                let capacity = self.config.num_gpu_blocks;
                return Err(SubmitError::ExceedsKvCache {
                    tokens,
                    blocks,
                    capacity,
                });
            }
        }
        let group = self.next_group;
        self.next_group += 1;
        let mut submission = submission;
        let sequences = std::mem::take(&mut submission.sequences);
        for spec in sequences {
            if submission.n > 1 {
                self.parents
                    .entry((group, spec.parent))
                    .or_insert(ParentProgress {
                        remaining: submission.n,
                        max_generated: 0,
                    });
            }
            self.waiting
                .push_back(Request::new(group, spec, &submission, now));
        }
        Ok(())
    }

    /// Plans the next step at `now`: drops abandoned sequences, schedules
    /// running ones (preempting if blocks run out), admits waiting ones, and
    /// returns how long the step takes, or `None` when there is nothing to do.
    pub fn schedule(&mut self, now: Instant) -> Option<Duration> {
        self.reap(now);
        let block_size = self.config.block_size;
        let spec_tokens = self.config.spec_decode.map_or(0, |s| s.num_tokens);
        let mut budget = self.config.max_num_batched_tokens;
        let mut decode_seqs = 0;
        let mut prefill_tokens = 0;
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (tokens, drafts) = self.running[i].next_chunk(spec_tokens, budget);
            let decoding = self.running[i].is_decoding();
            let scheduled = loop {
                let req = &mut self.running[i];
                let need =
                    blocks_for(req.num_computed + tokens, block_size).saturating_sub(req.blocks);
                if need <= self.free_blocks {
                    self.free_blocks -= need;
                    req.blocks += need;
                    req.scheduled = tokens;
                    req.drafts = drafts;
                    break true;
                }
                let victim_is_self = self.running.len() == i + 1;
                self.preempt_last();
                preempted = true;
                if victim_is_self {
                    break false;
                }
            };
            if !scheduled {
                break;
            }
            budget -= tokens;
            if decoding {
                decode_seqs += 1;
            } else {
                prefill_tokens += tokens;
            }
            i += 1;
        }
        // Like vLLM, admit nobody in a step that had to preempt.
        if !preempted {
            prefill_tokens += self.admit(now, budget);
        }
        (decode_seqs > 0 || prefill_tokens > 0)
            .then(|| self.config.latency.step_time(decode_seqs, prefill_tokens))
    }

    /// Moves waiting sequences into the batch in FIFO order while a slot, the
    /// token budget and KV blocks allow; sequences whose LoRA adapter would
    /// exceed max_loras are passed over. Returns the prompt tokens scheduled.
    fn admit(&mut self, now: Instant, mut budget: u32) -> u32 {
        let max_seqs = self.config.max_num_seqs as usize;
        let max_loras = self.config.max_loras as usize;
        self.batch_loras.clear();
        for lora in self.running.iter().filter_map(|r| r.spec.lora) {
            if !self.batch_loras.contains(&lora) {
                self.batch_loras.push(lora);
            }
        }
        let mut prefill_tokens = 0;
        while self.running.len() < max_seqs && budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let lora = front.spec.lora;
            if let Some(lora) = lora
                && !self.batch_loras.contains(&lora)
                && self.batch_loras.len() >= max_loras
            {
                self.skipped.extend(self.waiting.pop_front());
                continue;
            }
            let tokens = (front.num_tokens - front.num_computed).min(budget);
            let need = blocks_for(tokens, self.config.block_size);
            if need > self.free_blocks {
                break;
            }
            let Some(mut req) = self.waiting.pop_front() else {
                break;
            };
            self.free_blocks -= need;
            req.blocks = need;
            req.scheduled = tokens;
            req.scheduled_at.get_or_insert(now);
            // No prefix is ever shared, so every queried token is a miss.
            self.metrics.prefix_cache_queries += u64::from(req.num_tokens);
            if let Some(lora) = lora
                && !self.batch_loras.contains(&lora)
            {
                self.batch_loras.push(lora);
            }
            budget -= tokens;
            prefill_tokens += tokens;
            self.running.push(req);
        }
        while let Some(req) = self.skipped.pop() {
            self.waiting.push_front(req);
        }
        prefill_tokens
    }

    fn preempt_last(&mut self) {
        if let Some(mut victim) = self.running.pop() {
            self.free_blocks += victim.preempt();
            self.metrics.preemptions += 1;
            self.waiting.push_front(victim);
        }
    }

    /// Completes the step planned by [`schedule`](Self::schedule) at `now`:
    /// every sequence whose scheduled tokens complete its prompt or decode
    /// samples its next token(s).
    pub fn finish_step(&mut self, now: Instant) {
        let acceptance = self.config.spec_decode.map_or(0.0, |s| s.acceptance_rate);
        let mut step_prompt_tokens = 0_u64;
        let mut step_generated = 0_u64;
        for req in &mut self.running {
            if req.scheduled == 0 {
                continue;
            }
            req.num_computed += std::mem::take(&mut req.scheduled);
            let drafts = std::mem::take(&mut req.drafts);
            if req.num_computed < req.num_tokens {
                // A prefill chunk with more of the prompt to come.
                continue;
            }
            let accepted = if drafts > 0 {
                let accepted = req.spec.sampler.accepted_drafts(drafts, acceptance);
                self.metrics.record_drafts(drafts, accepted);
                accepted
            } else {
                0
            };
            if req.generated == 0 {
                self.metrics
                    .time_to_first_token
                    .observe_duration(now.saturating_duration_since(req.arrival));
                self.metrics.prompt_tokens += u64::from(req.spec.prompt_tokens);
                step_prompt_tokens += u64::from(req.spec.prompt_tokens);
                req.first_token_at = Some(now);
            } else if let Some(last) = req.last_token_at {
                self.metrics
                    .inter_token_latency
                    .observe_duration(now.saturating_duration_since(last));
            }
            req.last_token_at = Some(now);
            step_generated += u64::from(req.emit(1 + accepted));
        }
        self.metrics.generation_tokens += step_generated;
        self.metrics
            .iteration_tokens
            .observe((step_prompt_tokens + step_generated) as f64);
        self.reap(now);
    }

    /// Removes finished sequences and those whose client went away, frees
    /// their blocks and records them.
    fn reap(&mut self, now: Instant) {
        let Self {
            running,
            waiting,
            free_blocks,
            metrics,
            parents,
            ..
        } = self;
        let mut done = |req: &Request| {
            let reason = match req.finish {
                Some(reason) => reason,
                None if req.events.is_closed() => FinishReason::Abort,
                None => return false,
            };
            *free_blocks += req.blocks;
            record_finished(metrics, parents, req, reason, now);
            true
        };
        running.retain(|req| !done(req));
        waiting.retain(|req| !done(req));
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            running: self.running.len(),
            waiting: self.waiting.len(),
            used_blocks: self.config.num_gpu_blocks - self.free_blocks,
            preemptions: self.metrics.preemptions,
            finished: self.metrics.request_success.iter().sum(),
        }
    }

    /// Used KV blocks over all blocks.
    pub fn kv_cache_usage(&self) -> f64 {
        f64::from(self.config.num_gpu_blocks - self.free_blocks)
            / f64::from(self.config.num_gpu_blocks)
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Distinct adapters of the running and of the waiting sequences, each in
    /// order of first appearance.
    pub fn lora_adapters(&mut self) -> (&[AdapterId], &[AdapterId]) {
        fn distinct(out: &mut Vec<AdapterId>, requests: impl Iterator<Item = Option<AdapterId>>) {
            out.clear();
            for lora in requests.flatten() {
                if !out.contains(&lora) {
                    out.push(lora);
                }
            }
        }
        distinct(
            &mut self.batch_loras,
            self.running.iter().map(|r| r.spec.lora),
        );
        distinct(
            &mut self.waiting_loras,
            self.waiting.iter().map(|r| r.spec.lora),
        );
        (&self.batch_loras, &self.waiting_loras)
    }
}

/// Records a sequence that left the engine, with vLLM's phase definitions:
/// queued = first scheduled − queued, prefill = first token − first
/// scheduled, decode = last token − first token, inference = last token −
/// first scheduled (preemptions included). Phases an aborted sequence never
/// reached end at `now` or count as zero.
fn record_finished(
    metrics: &mut EngineMetrics,
    parents: &mut HashMap<(u64, u32), ParentProgress>,
    req: &Request,
    reason: FinishReason,
    now: Instant,
) {
    let since = |later: Option<Instant>, earlier: Option<Instant>| match (later, earlier) {
        (Some(later), Some(earlier)) => later.saturating_duration_since(earlier),
        _ => Duration::ZERO,
    };
    let scheduled = req.scheduled_at;
    let first = req.first_token_at;
    let last = req.last_token_at;
    metrics.record_finished(&FinishedRequest {
        reason,
        e2e: now.saturating_duration_since(req.arrival),
        queued: scheduled
            .unwrap_or(now)
            .saturating_duration_since(req.queued_at),
        prefill: since(first.or(Some(now)), scheduled),
        decode: since(last, first),
        inference: since(last.or(Some(now)), scheduled),
        prompt_tokens: req.spec.prompt_tokens,
        generation_tokens: req.generated,
        max_tokens_param: req.spec.max_tokens_param,
    });
    if req.n <= 1 {
        metrics.record_parent_finished(1, req.generated);
        return;
    }
    let key = (req.group, req.spec.parent);
    if let Some(parent) = parents.get_mut(&key) {
        parent.remaining -= 1;
        parent.max_generated = parent.max_generated.max(req.generated);
        if parent.remaining == 0 {
            let max_generated = parent.max_generated;
            parents.remove(&key);
            metrics.record_parent_finished(req.n, max_generated);
        }
    }
}
