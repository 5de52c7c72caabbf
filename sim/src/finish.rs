//! Why a sequence stopped, as vLLM names it in `finished_reason` and in
//! OpenAI responses.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token.
    Stop,
    /// max_tokens reached.
    Length,
    /// The client went away.
    Abort,
}

impl FinishReason {
    /// In vLLM's order, which is also the order of `vllm:request_success_total` series.
    pub const ALL: [FinishReason; 3] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }

    /// Position in [`FinishReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}
