//! The built-in `synthetic` language: needs no files, has learnable structure and a known entropy.

use crate::rng::Rng;

/// A first-order Markov language over `vocab` tokens: after token a, one of `branching`
/// distinct successors (a hash of a, plus 0..branching) follows, uniformly. Every context has the
/// same conditional entropy, ln(branching) nats, so the best achievable loss is known exactly.
#[derive(Clone, Debug)]
pub struct Synthetic {
    vocab: i64,
    branching: i64,
}

impl Synthetic {
    pub fn new(vocab: i64, branching: i64) -> Self {
        assert!(branching >= 1 && branching <= vocab, "branching must be between 1 and the vocabulary size");
        Self { vocab, branching }
    }

    fn successor(&self, a: i64, j: i64) -> i64 {
        let mut h = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
        h ^= h >> 29;
        ((h % self.vocab as u64) as i64 + j) % self.vocab
    }

    /// Cross-entropy (nats per token) of the true process: the floor a model can reach.
    pub fn entropy_nats(&self) -> f64 {
        (self.branching as f64).ln()
    }

    /// A corpus of `len` tokens.
    pub fn corpus(&self, rng: &mut Rng, len: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(len);
        let mut a = rng.below(self.vocab as u64) as i64;
        for _ in 0..len {
            out.push(a as u32);
            a = self.successor(a, rng.below(self.branching as u64) as i64);
        }
        out
    }
}
