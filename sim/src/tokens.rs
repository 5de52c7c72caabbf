//! Token counting and generation without a tokenizer.
//!
//! Prompt length is approximated at four characters per token. Output text is
//! drawn from a fixed vocabulary by a generator seeded from the simulator's
//! seed and the prompt, so the same request against the same seed always
//! yields the same text, stop position and draft acceptance (like greedy
//! decoding), whatever else the server is doing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Characters per token of the prompt-length approximation.
pub const CHARS_PER_TOKEN: usize = 4;

/// Template tokens a chat message adds around its content (role header and
/// end-of-turn marker).
pub const CHAT_TOKENS_PER_MESSAGE: u32 = 4;

/// Approximate token count of `chars` characters of text, at least 1.
pub fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(CHARS_PER_TOKEN))
        .unwrap_or(u32::MAX)
        .max(1)
}

const VOCABULARY: [&str; 32] = [
    " the",
    " model",
    " serves",
    " requests",
    " with",
    " a",
    " batch",
    " of",
    " tokens",
    " and",
    " each",
    " step",
    " adds",
    " one",
    " more",
    " to",
    " every",
    " running",
    " sequence",
    " while",
    " cache",
    " blocks",
    " fill",
    " up",
    " as",
    " prompts",
    " grow",
    " so",
    " latency",
    " rises",
    ".",
    ",",
];

/// Text of the end-of-sequence token: it counts as output but shows nothing.
pub const EOS_TEXT: &str = "";

/// A 64-bit fingerprint of request content (FNV-1a), to seed its generator.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate parts so ["ab", "c"] and ["a", "bc"] differ.
        hash = hash.rotate_left(7) ^ 0xff;
    }
    hash
}

/// Mixes two 64-bit values into a well-spread seed (splitmix64 finaliser).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(a << 6)
        .wrapping_add(a >> 2);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random choices of one generated sequence.
#[derive(Debug)]
pub struct TokenSampler {
    rng: StdRng,
}

impl TokenSampler {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn next_token(&mut self) -> &'static str {
        VOCABULARY[self.rng.random_range(0..VOCABULARY.len())]
    }

    /// Output position (1-based) of the end-of-sequence token when each token
    /// ends the sequence with probability `p`, or `None` if that happens only
    /// after `max_tokens`.
    pub fn eos_position(&mut self, p: f64, max_tokens: u32) -> Option<u32> {
        if p <= 0.0 {
            return None;
        }
        // Inverse CDF of the geometric distribution.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let position = (u.ln() / (1.0 - p).ln()).ceil().max(1.0);
        (position <= f64::from(max_tokens)).then_some(position as u32)
    }

    /// How many of `drafts` speculative tokens the target model accepts: each
    /// is accepted with `rate` if every earlier one was.
    pub fn accepted_drafts(&mut self, drafts: u32, rate: f64) -> u32 {
        (0..drafts)
            .take_while(|_| self.rng.random::<f64>() < rate)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_rounds_up_and_is_at_least_one() {
        assert_eq!(estimate_tokens(0), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 2);
        assert_eq!(estimate_tokens(4000), 1000);
    }

    #[test]
    fn same_seed_same_tokens() {
        let mut a = TokenSampler::new(7);
        let mut b = TokenSampler::new(7);
        let xs: Vec<_> = (0..50).map(|_| a.next_token()).collect();
        let ys: Vec<_> = (0..50).map(|_| b.next_token()).collect();
        assert_eq!(xs, ys);
        let mut c = TokenSampler::new(8);
        let zs: Vec<_> = (0..50).map(|_| c.next_token()).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"x"]), fingerprint(&[b"x"]));
    }

    #[test]
    fn eos_position_is_within_range() {
        let mut s = TokenSampler::new(1);
        assert_eq!(s.eos_position(0.0, 100), None);
        let positions: Vec<_> = (0..200).filter_map(|_| s.eos_position(0.2, 100)).collect();
        assert!(positions.iter().all(|p| (1..=100).contains(p)));
        let mean = positions.iter().map(|p| f64::from(*p)).sum::<f64>() / positions.len() as f64;
        assert!((3.0..7.0).contains(&mean), "mean {mean} far from 1/p = 5");
    }

    #[test]
    fn acceptance_rate_extremes() {
        let mut s = TokenSampler::new(3);
        assert_eq!(s.accepted_drafts(4, 1.0), 4);
        assert_eq!(s.accepted_drafts(4, 0.0), 0);
    }
}
