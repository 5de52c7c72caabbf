//! What one engine step costs.
//!
//! A step runs one forward pass over everything scheduled in it: one decode
//! token for each decoding sequence, and prompt chunks for the ones still in
//! prefill. A lone request thus sees its first token after
//! `prefill_overhead + prompt_tokens × prefill_per_token` and then one token
//! every `itl_base + itl_per_seq`; prefills sharing a step with decodes
//! lengthen that step for everyone, as they do on a real GPU.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyModel {
    pub prefill_overhead: Duration,
    pub prefill_per_token: Duration,
    pub itl_base: Duration,
    pub itl_per_seq: Duration,
}

impl LatencyModel {
    /// Duration of a step that decodes `decode_seqs` sequences and prefills
    /// `prefill_tokens` prompt tokens.
    pub fn step_time(&self, decode_seqs: u32, prefill_tokens: u32) -> Duration {
        let decode = if decode_seqs > 0 {
            self.itl_base
                .saturating_add(self.itl_per_seq.saturating_mul(decode_seqs))
        } else {
            Duration::ZERO
        };
        let prefill = if prefill_tokens > 0 {
            self.prefill_overhead
                .saturating_add(self.prefill_per_token.saturating_mul(prefill_tokens))
        } else {
            Duration::ZERO
        };
        decode.saturating_add(prefill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: LatencyModel = LatencyModel {
        prefill_overhead: Duration::from_millis(20),
        prefill_per_token: Duration::from_micros(100),
        itl_base: Duration::from_millis(10),
        itl_per_seq: Duration::from_micros(200),
    };

    #[test]
    fn prefill_only_step_is_overhead_plus_tokens() {
        assert_eq!(MODEL.step_time(0, 1000), Duration::from_millis(120));
    }

    #[test]
    fn decode_step_grows_with_batch() {
        assert_eq!(MODEL.step_time(1, 0), Duration::from_micros(10_200));
        assert_eq!(MODEL.step_time(100, 0), Duration::from_millis(30));
    }

    #[test]
    fn mixed_step_pays_both() {
        assert_eq!(
            MODEL.step_time(1, 10),
            MODEL.step_time(1, 0) + MODEL.step_time(0, 10)
        );
        assert_eq!(MODEL.step_time(0, 0), Duration::ZERO);
    }
}
