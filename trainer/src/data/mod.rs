//! Tokens for training and validation: documents in text, JSONL or Parquet files (byte-level,
//! BPE or tokenizer-file tokens), pre-tokenized shards, or the built-in `synthetic` language.
//! Documents are closed by an end-of-text token; the validation split is held out before any
//! tokenizer is trained. Sampling draws from the trainer's own RNG, whose state is the data
//! position saved in checkpoints.

pub mod corpus;
pub mod document;
pub mod jsonl;
pub mod parquet;
pub mod shards;
pub mod streamed;
pub mod synthetic;
pub mod tokenize;
pub mod tokenizer;
pub mod tokens;

use crate::rng::Rng;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataSource {
    /// Byte-level tokens of a UTF-8 (or any) text file.
    TextFile { path: std::path::PathBuf },
    /// Built-in generator with learnable structure and known entropy: a corpus of `tokens`
    /// tokens where each token is followed by one of `branching` successors, uniformly.
    Synthetic { branching: i64, tokens: i64 },
    /// Documents (text files, JSONL records or Parquet rows), each closed by end-of-text,
    /// tokenized byte-level, with BPE trained on the training split (vocabulary: the model's), or
    /// with a tokenizer file as it is.
    Text { corpus: Corpus, tokenizer: TokenizerSource },
    /// Shards and tokenizer written by `frugal-trainer prepare`.
    Shards { path: std::path::PathBuf },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    pub source: DataSource,
    /// Fraction of the corpus held out (its tail) for validation.
    pub validation_fraction: f64,
    /// Sequences evaluated per validation pass (0: the whole validation split).
    pub eval_sequences: i64,
}

pub use corpus::Corpus;
pub use synthetic::Synthetic;
pub use tokenize::{TokenizerSource, prepare, tokenize};
pub use tokenizer::TextTokenizer;
pub use tokens::{Tokens, Width};

/// Where sampling stands: enough to continue exactly where a run stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPosition {
    pub rng: Rng,
    pub sequences_drawn: u64,
}

/// Token ids of the training and validation splits.
struct Splits {
    train: Tokens,
    val: Tokens,
}

pub struct Data {
    splits: Splits,
    seq_len: i64,
    eval_sequences: i64,
    pub position: DataPosition,
    /// How text became tokens; None for the synthetic language, which has no text.
    pub tokenizer: Option<TextTokenizer>,
    /// Bytes of text each token id covers (end-of-text: 0; a synthetic token counts as one).
    pub token_bytes: Vec<u32>,
    /// SHA-256 over the tokenizer and both splits' tokens: same data, same fingerprint, however
    /// it was read (text, JSONL, Parquet or prepared shards).
    pub fingerprint: String,
    pub tokenizer_fingerprint: String,
}

/// The data fingerprint: tokenizer fingerprint, then each split's length and its ids as
/// little-endian bytes of the width its vocabulary needs (so uint16 data keeps the fingerprint
/// it had before wider ids existed).
pub fn fingerprint(tokenizer_fingerprint: &str, train: &Tokens, val: &Tokens) -> String {
    let mut h = Sha256::new();
    h.update(b"frugal-data-v1\0");
    h.update(tokenizer_fingerprint.as_bytes());
    train.hash_into(&mut h);
    val.hash_into(&mut h);
    hex::encode(h.finalize())
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
        // shards in a bucket: the fingerprint `prepare` recorded, not one computed by fetching
        // every token
        let mut streamed_fingerprint = None;
        let (train, val, tokenizer, what) = match &cfg.source {
            DataSource::TextFile { path } => {
                let (t, v, tok) = tokenize(&Corpus::text(path), &TokenizerSource::Byte, vocab, cfg.validation_fraction)?;
                (t, v, Some(tok), format!("corpus {}", path.display()))
            }
            DataSource::Text { corpus, tokenizer } => {
                let (t, v, tok) = tokenize(corpus, tokenizer, vocab, cfg.validation_fraction)?;
                (t, v, Some(tok), format!("corpus {}", corpus.path.display()))
            }
            DataSource::Shards { path } => {
                let (t, v, tok, recorded) = shards::read_dir(path)?;
                streamed_fingerprint = recorded;
                if let Some(e) = tokenizer::vocabulary_mismatch(tok.vocab_size(), vocab, &format!("the tokenizer of shards {}", path.display())) {
                    bail!(e);
                }
                (t, v, Some(tok), format!("shards {}", path.display()))
            }
            DataSource::Synthetic { branching, tokens } => {
                if *branching < 1 || *branching > vocab {
                    bail!("synthetic branching {branching} must be between 1 and the vocabulary size {vocab}");
                }
                // The language is fixed; the seed picks the sample.
                let mut rng = Rng::derive(seed, "synthetic-corpus");
                let tokens = Synthetic::new(vocab, *branching).corpus(&mut rng, *tokens as usize);
                let split = ((tokens.len() as f64) * (1.0 - cfg.validation_fraction)).round() as usize;
                let (train, val) = tokens.split_at(split.min(tokens.len()));
                let width = Width::for_vocab(vocab);
                (
                    Tokens::from_ids(width, train.iter().copied()),
                    Tokens::from_ids(width, val.iter().copied()),
                    None,
                    "the synthetic corpus".to_string(),
                )
            }
        };
        if train.len() as i64 <= seq_len + 1 {
            bail!("{what} has {} training tokens, fewer than one sequence of {}", train.len(), seq_len + 1);
        }
        let (token_bytes, tokenizer_fingerprint) = match &tokenizer {
            Some(t) => {
                let mut lens: Vec<u32> = t.token_bytes().iter().map(|b| b.len() as u32).collect();
                lens.resize(vocab as usize, 0);
                (lens, t.fingerprint())
            }
            None => (vec![1; vocab as usize], hex::encode(Sha256::digest(format!("synthetic:{vocab}")))),
        };
        let fingerprint = streamed_fingerprint.unwrap_or_else(|| fingerprint(&tokenizer_fingerprint, &train, &val));
        Ok(Self {
            splits: Splits { train, val },
            seq_len,
            eval_sequences: cfg.eval_sequences,
            position: DataPosition { rng: Rng::derive(seed, "data"), sequences_drawn: 0 },
            tokenizer,
            token_bytes,
            fingerprint,
            tokenizer_fingerprint,
        })
    }

    /// The held-out tokens.
    pub fn validation_tokens(&self) -> &Tokens {
        &self.splits.val
    }

    /// The training tokens.
    pub fn training_tokens(&self) -> &Tokens {
        &self.splits.train
    }

    pub fn seq_len(&self) -> i64 {
        self.seq_len
    }

    /// The next `b` training sequences.
    pub fn next_batch(&mut self, b: i64) -> Batch {
        let t = self.seq_len as usize;
        let mut rows = Vec::with_capacity(b as usize * (t + 1));
        let rng = &mut self.position.rng;
        let train = &self.splits.train;
        let span = (train.len() - (t + 1)) as u64;
        for _ in 0..b {
            let at = rng.below(span + 1) as usize;
            train.for_range(at, t + 1, |x| rows.push(i64::from(x)));
        }
        self.position.sequences_drawn += b as u64;
        to_batch(&rows, b, t as i64)
    }

    /// Passes over the next `b` training sequences without reading them: the ones the other
    /// replicas of a data-parallel run train on. The position afterwards is the one
    /// [`Data::next_batch`] of `b` would leave.
    pub fn skip(&mut self, b: i64) {
        let span = (self.splits.train.len() - (self.seq_len as usize + 1)) as u64;
        for _ in 0..b {
            let _ = self.position.rng.below(span + 1);
        }
        self.position.sequences_drawn += b as u64;
    }

    /// The validation set, in batches of at most `b` sequences: windows of the held-out split,
    /// each overlapping the next by one token so that every held-out token is a target exactly
    /// once (text splits are read as a fresh document, after end-of-text, up to their last
    /// byte; the last window may be shorter), the same every time. Only the windows evaluated
    /// are read.
    pub fn validation(&self, b: i64) -> Vec<Batch> {
        let t = self.seq_len as usize;
        let val = &self.splits.val;
        // Text: end-of-text leads; the final end-of-text closes the split, nothing follows it,
        // so it is not scored.
        let (lead, body) = match &self.tokenizer {
            Some(tok) => {
                let eot = tok.end_of_text();
                let n = val.len();
                (Some(eot), if n > 0 && val.get(n - 1) == eot { n - 1 } else { n })
            }
            None => (None, val.len()),
        };
        let len = body + usize::from(lead.is_some());
        let mut windows = vec![];
        let mut at = 0;
        while at + 1 < len {
            let end = (at + t + 1).min(len);
            windows.push(at..end);
            at = end - 1;
        }
        if self.eval_sequences > 0 {
            windows.truncate(self.eval_sequences as usize);
        }
        let read = |w: &std::ops::Range<usize>| -> Vec<i64> {
            let mut out = Vec::with_capacity(w.len());
            let mut from = w.start;
            if let Some(e) = lead {
                if from == 0 {
                    out.push(i64::from(e));
                    from = 1;
                }
                val.for_range(from - 1, w.end - from, |x| out.push(i64::from(x)));
            } else {
                val.for_range(from, w.end - from, |x| out.push(i64::from(x)));
            }
            out
        };
        let mut out = vec![];
        let (full, partial): (Vec<_>, Vec<_>) = windows.into_iter().partition(|w| w.len() == t + 1);
        for c in full.chunks(b.max(1) as usize) {
            let rows: Vec<i64> = c.iter().flat_map(&read).collect();
            out.push(to_batch(&rows, c.len() as i64, self.seq_len));
        }
        for w in partial {
            out.push(to_batch(&read(&w), 1, w.len() as i64 - 1));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_deterministic_and_structured() {
        let cfg = DataConfig { source: DataSource::Synthetic { branching: 4, tokens: 10_000 }, validation_fraction: 0.1, eval_sequences: 4 };
        let mut a = Data::new(&cfg, 64, 16, 5).unwrap();
        let mut b = Data::new(&cfg, 64, 16, 5).unwrap();
        let (x, y) = (a.next_batch(3), b.next_batch(3));
        assert!(x.inputs.equal(&y.inputs) && x.targets.equal(&y.targets));
        assert_eq!(a.validation(2).len(), 2);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, Data::new(&cfg, 64, 16, 6).unwrap().fingerprint);
        // Skipping sequences leaves the reader where drawing them would.
        a.skip(5);
        let _ = b.next_batch(5);
        assert_eq!(a.position, b.position);
        assert!(a.next_batch(2).inputs.equal(&b.next_batch(2).inputs));
        // Targets are inputs shifted by one.
        assert!(x.inputs.narrow(1, 1, 15).equal(&x.targets.narrow(1, 0, 15)));
        assert!((Synthetic::new(64, 4).entropy_nats() - 4f64.ln()).abs() < 1e-12);
        // Each token has at most `branching` distinct successors.
        let corpus = Synthetic::new(64, 4).corpus(&mut Rng::new(1), 20_000);
        let mut next = std::collections::HashMap::<u32, std::collections::HashSet<u32>>::new();
        for w in corpus.windows(2) {
            next.entry(w[0]).or_default().insert(w[1]);
        }
        assert!(next.values().all(|s| s.len() <= 4) && next.values().any(|s| s.len() == 4));
    }

    fn corpus_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("frugal-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("docs")).unwrap();
        for (i, doc) in ["first document, about cats and mats.\nline two.\n", "second: dogs and logs\n", "third, the held-out one, about cats\n"]
            .iter()
            .enumerate()
        {
            std::fs::write(d.join("docs").join(format!("{i}.txt")), doc.repeat(30)).unwrap();
        }
        d
    }

    #[test]
    fn text_and_prepared_shards_are_the_same_data() {
        let d = corpus_dir("shards");
        let docs = Corpus::text(d.join("docs"));
        let text = DataConfig {
            source: DataSource::Text { corpus: docs.clone(), tokenizer: TokenizerSource::Bpe },
            validation_fraction: 0.3,
            eval_sequences: 0,
        };
        let from_text = Data::new(&text, 300, 16, 1).unwrap();
        // Documents are closed by end-of-text; the held-out document is not in the training split.
        let tok = from_text.tokenizer.clone().unwrap();
        let eot = tok.end_of_text();
        assert_eq!(from_text.splits.train.to_vec().iter().filter(|&&t| t == eot).count(), 2);
        let val = from_text.splits.val.to_vec();
        assert_eq!(tok.decode(&val), b"third, the held-out one, about cats\n".repeat(30));
        assert_eq!(val.last(), Some(&eot));

        let prepared = prepare(&docs, &TokenizerSource::Bpe, 300, 0.3, &d.join("shards"), 100).unwrap();
        assert!(prepared.files.len() > 2, "small shards split the corpus: {:?}", prepared.files);
        assert_eq!(prepared.meta.bytes_per_token, 2);
        let from_shards = Data::new(&DataConfig { source: DataSource::Shards { path: d.join("shards") }, ..text.clone() }, 300, 16, 1).unwrap();
        assert_eq!(from_shards.fingerprint, from_text.fingerprint);
        assert_eq!(from_shards.fingerprint, prepared.meta.data_fingerprint);
        assert_eq!(from_shards.splits.train, from_text.splits.train);
        assert_eq!(from_shards.tokenizer_fingerprint, from_text.tokenizer_fingerprint);
        // The same draws from the same seed, read from memory or from the shard files.
        let (mut a, mut b) = (from_text, from_shards);
        assert!(a.next_batch(8).inputs.equal(&b.next_batch(8).inputs));
        assert!(a.validation(4).iter().zip(b.validation(4)).all(|(x, y)| x.targets.equal(&y.targets)));

        // The fingerprint of uint16 data is the one it had when ids were u16: the count, then
        // each id as two little-endian bytes.
        let mut h = Sha256::new();
        h.update(b"frugal-data-v1\0");
        h.update(a.tokenizer_fingerprint.as_bytes());
        for split in [&a.splits.train, &a.splits.val] {
            let ids = split.to_vec();
            h.update((ids.len() as u64).to_le_bytes());
            for t in ids {
                h.update((t as u16).to_le_bytes());
            }
        }
        assert_eq!(a.fingerprint, hex::encode(h.finalize()));

        // A byte tokenizer gives different data.
        let bytes =
            Data::new(&DataConfig { source: DataSource::Text { corpus: docs, tokenizer: TokenizerSource::Byte }, ..text }, 300, 16, 1).unwrap();
        assert_ne!(bytes.fingerprint, a.fingerprint);
        // Every held-out token is a validation target exactly once.
        let targets: i64 = bytes.validation(4).iter().map(|b| b.targets.numel() as i64).sum();
        assert_eq!(targets, bytes.splits.val.len() as i64 - 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
