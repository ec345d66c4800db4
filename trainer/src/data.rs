//! Tokens for training and validation: byte-level tokens of a text file, or the built-in
//! `synthetic` language. Sampling draws from the trainer's own RNG, whose state is the data
//! position saved in checkpoints.

use crate::config::{DataConfig, DataSource};
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Where sampling stands: enough to continue exactly where a run stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPosition {
    pub rng: Rng,
    pub sequences_drawn: u64,
}

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
    pub fn corpus(&self, rng: &mut Rng, len: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(len);
        let mut a = rng.below(self.vocab as u64) as i64;
        for _ in 0..len {
            out.push(a as u16);
            a = self.successor(a, rng.below(self.branching as u64) as i64);
        }
        out
    }
}

/// Token ids of the training and validation splits.
struct Corpus {
    train: Vec<u16>,
    val: Vec<u16>,
}

pub struct Data {
    corpus: Corpus,
    seq_len: i64,
    eval_sequences: i64,
    pub position: DataPosition,
}

/// A batch of inputs and next-token targets, [B, T] i64 on the CPU.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

fn to_batch(rows: &[i64], b: i64, t: i64) -> Batch {
    // rows holds b sequences of t+1 tokens.
    let all = Tensor::from_slice(rows).view([b, t + 1]);
    Batch { inputs: all.narrow(1, 0, t).contiguous(), targets: all.narrow(1, 1, t).contiguous() }
}

impl Data {
    pub fn new(cfg: &DataConfig, vocab: i64, seq_len: i64, seed: u64) -> Result<Self> {
        let (tokens, what): (Vec<u16>, String) = match &cfg.source {
            DataSource::TextFile { path } => {
                if vocab < 256 {
                    bail!("byte-level tokens need a vocabulary of at least 256, the model has {vocab}");
                }
                let bytes = std::fs::read(path).with_context(|| format!("reading corpus {}", path.display()))?;
                (bytes.into_iter().map(u16::from).collect(), format!("corpus {}", path.display()))
            }
            DataSource::Synthetic { branching, tokens } => {
                if vocab > u16::MAX as i64 + 1 {
                    bail!("the synthetic generator supports vocabularies up to 65,536 tokens, the model has {vocab}");
                }
                if *branching < 1 || *branching > vocab {
                    bail!("synthetic branching {branching} must be between 1 and the vocabulary size {vocab}");
                }
                // The language is fixed; the seed picks the sample.
                let mut rng = Rng::derive(seed, "synthetic-corpus");
                (Synthetic::new(vocab, *branching).corpus(&mut rng, *tokens as usize), "the synthetic corpus".into())
            }
        };
        let split = ((tokens.len() as f64) * (1.0 - cfg.validation_fraction)).round() as usize;
        let (train, val) = tokens.split_at(split.min(tokens.len()));
        if train.len() as i64 <= seq_len + 1 {
            bail!("{what} has {} training tokens, fewer than one sequence of {}", train.len(), seq_len + 1);
        }
        let corpus = Corpus { train: train.to_vec(), val: val.to_vec() };
        Ok(Self {
            corpus,
            seq_len,
            eval_sequences: cfg.eval_sequences,
            position: DataPosition { rng: Rng::derive(seed, "data"), sequences_drawn: 0 },
        })
    }

    /// The next `b` training sequences.
    pub fn next_batch(&mut self, b: i64) -> Batch {
        let t = self.seq_len;
        let mut rows = Vec::with_capacity((b * (t + 1)) as usize);
        let rng = &mut self.position.rng;
        let train = &self.corpus.train;
        let span = (train.len() - (t as usize + 1)) as u64;
        for _ in 0..b {
            let at = rng.below(span + 1) as usize;
            rows.extend(train[at..at + t as usize + 1].iter().map(|&x| x as i64));
        }
        self.position.sequences_drawn += b as u64;
        to_batch(&rows, b, t)
    }

    /// The validation set, in batches of at most `b` sequences: non-overlapping windows over the
    /// held-out tail of the corpus, the same every time.
    pub fn validation(&self, b: i64) -> Vec<Batch> {
        let t = self.seq_len as usize;
        let mut seqs: Vec<Vec<i64>> = vec![];
        let val = &self.corpus.val;
        let n = if val.len() > t { (val.len() - 1) / t } else { 0 };
        for i in 0..n {
            seqs.push(val[i * t..i * t + t + 1].iter().map(|&x| x as i64).collect());
        }
        if self.eval_sequences > 0 {
            seqs.truncate(self.eval_sequences as usize);
        }
        seqs.chunks(b.max(1) as usize)
            .map(|c| to_batch(&c.concat(), c.len() as i64, self.seq_len))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_deterministic_and_structured() {
        let cfg = DataConfig {
            source: DataSource::Synthetic { branching: 4, tokens: 10_000 },
            validation_fraction: 0.1,
            eval_sequences: 4,
        };
        let mut a = Data::new(&cfg, 64, 16, 5).unwrap();
        let mut b = Data::new(&cfg, 64, 16, 5).unwrap();
        let (x, y) = (a.next_batch(3), b.next_batch(3));
        assert!(x.inputs.equal(&y.inputs) && x.targets.equal(&y.targets));
        assert_eq!(a.validation(2).len(), 2);
        // Targets are inputs shifted by one.
        assert!(x.inputs.narrow(1, 1, 15).equal(&x.targets.narrow(1, 0, 15)));
        assert!((Synthetic::new(64, 4).entropy_nats() - 4f64.ln()).abs() < 1e-12);
        // Each token has at most `branching` distinct successors.
        let corpus = Synthetic::new(64, 4).corpus(&mut Rng::new(1), 20_000);
        let mut next = std::collections::HashMap::<u16, std::collections::HashSet<u16>>::new();
        for w in corpus.windows(2) {
            next.entry(w[0]).or_default().insert(w[1]);
        }
        assert!(next.values().all(|s| s.len() <= 4) && next.values().any(|s| s.len() == 4));
    }
}
