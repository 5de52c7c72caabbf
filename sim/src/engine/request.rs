//! One generated sequence as the scheduler tracks it.

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::finish::FinishReason;
use crate::metrics::lora::AdapterId;
use crate::tokens::{EOS_TEXT, TokenSampler};

/// One output token of one sequence; the last one of a sequence says why it
/// finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Choice index of the sequence within its HTTP request.
    pub index: u32,
    pub text: &'static str,
    pub finish: Option<FinishReason>,
}

/// One HTTP request's worth of sequences, queued together on one engine.
#[derive(Debug)]
pub struct Submission {
    /// When the request reached the server (start of TTFT and e2e latency).
    pub arrival: Instant,
    /// Where tokens go; dropping the receiver aborts every sequence.
    pub events: mpsc::UnboundedSender<TokenEvent>,
    /// Sequences generated per prompt (the `n` parameter).
    pub n: u32,
    pub sequences: Vec<SequenceSpec>,
}

/// What to generate for one choice.
#[derive(Debug)]
pub struct SequenceSpec {
    pub index: u32,
    /// Prompt this sequence belongs to; the `n` sequences of one prompt share it.
    pub parent: u32,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    /// max_tokens as the client sent it (None when defaulted).
    pub max_tokens_param: Option<u32>,
    /// Output position of the end-of-sequence token, if before max_tokens.
    pub eos_at: Option<u32>,
    pub lora: Option<AdapterId>,
    pub sampler: TokenSampler,
}

#[derive(Debug)]
pub(crate) struct Request {
    pub group: u64,
    pub spec: SequenceSpec,
    pub n: u32,
    pub events: mpsc::UnboundedSender<TokenEvent>,
    /// Prompt plus generated tokens.
    pub num_tokens: u32,
    /// Tokens whose KV is computed (reset by preemption).
    pub num_computed: u32,
    pub generated: u32,
    pub blocks: u32,
    /// Tokens scheduled in the current step, of which `drafts` are
    /// speculative tokens to verify.
    pub scheduled: u32,
    pub drafts: u32,
    pub finish: Option<FinishReason>,
    pub arrival: Instant,
    pub queued_at: Instant,
    pub scheduled_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

impl Request {
    pub fn new(
        group: u64,
        spec: SequenceSpec,
        submission: &Submission,
        queued_at: Instant,
    ) -> Self {
        Self {
            group,
            num_tokens: spec.prompt_tokens,
            spec,
            n: submission.n,
            events: submission.events.clone(),
            num_computed: 0,
            generated: 0,
            blocks: 0,
            scheduled: 0,
            drafts: 0,
            finish: None,
            arrival: submission.arrival,
            queued_at,
            scheduled_at: None,
            first_token_at: None,
            last_token_at: None,
        }
    }

    /// Decoding: only the last sampled token still needs its KV computed.
    pub fn is_decoding(&self) -> bool {
        self.generated > 0 && self.num_tokens - self.num_computed == 1
    }

    /// Tokens to schedule this step within `budget`, and how many of them are
    /// drafts (at most `spec_tokens`, never past max_tokens).
    pub fn next_chunk(&self, spec_tokens: u32, budget: u32) -> (u32, u32) {
        if self.is_decoding() {
            let drafts = spec_tokens.min(self.spec.max_tokens - self.generated - 1);
            let tokens = (1 + drafts).min(budget);
            (tokens, tokens - 1)
        } else {
            ((self.num_tokens - self.num_computed).min(budget), 0)
        }
    }

    /// Sends up to `count` new tokens (fewer at EOS or max_tokens) and marks
    /// the sequence finished when it is. Returns how many were produced.
    pub fn emit(&mut self, count: u32) -> u32 {
        let limit = self
            .spec
            .eos_at
            .map_or(self.spec.max_tokens, |eos| eos.min(self.spec.max_tokens));
        let count = count.min(limit - self.generated);
        for _ in 0..count {
            self.generated += 1;
            let at_eos = self.spec.eos_at == Some(self.generated);
            let text = if at_eos {
                EOS_TEXT
            } else {
                self.spec.sampler.next_token()
            };
            let finish = if at_eos {
                Some(FinishReason::Stop)
            } else if self.generated == self.spec.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            self.finish = finish;
            // A receiver that is gone is noticed when the sequence is reaped.
            let _ = self.events.send(TokenEvent {
                index: self.spec.index,
                text,
                finish,
            });
        }
        self.num_tokens += count;
        self.num_computed = self.num_tokens - 1;
        count
    }

    /// Back to the waiting queue with nothing computed (vLLM's recompute
    /// preemption); returns the blocks it held.
    pub fn preempt(&mut self) -> u32 {
        self.num_computed = 0;
        self.scheduled = 0;
        self.drafts = 0;
        std::mem::take(&mut self.blocks)
    }
}
