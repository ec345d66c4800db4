//! Tokens for training and validation: a text file or directory (byte-level or BPE tokens),
//! pre-tokenized shards, or the built-in `synthetic` language. Documents are closed by an
//! end-of-text token; the validation split is held out before any tokenizer is trained. Sampling
//! draws from the trainer's own RNG, whose state is the data position saved in checkpoints.

pub mod shards;
pub mod synthetic;
pub mod text;
pub mod tokenizer;

use crate::config::{DataConfig, DataSource};
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

pub use synthetic::Synthetic;
pub use tokenizer::{EOT, TextTokenizer};

/// Where sampling stands: enough to continue exactly where a run stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPosition {
    pub rng: Rng,
    pub sequences_drawn: u64,
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
    /// How text became tokens; None for the synthetic language, which has no text.
    pub tokenizer: Option<TextTokenizer>,
    /// Bytes of text each token id covers (end-of-text: 0; a synthetic token counts as one).
    pub token_bytes: Vec<u32>,
    /// SHA-256 over the tokenizer and both splits' tokens: same data, same fingerprint, however
    /// it was read (text or prepared shards).
    pub fingerprint: String,
    pub tokenizer_fingerprint: String,
}

/// Training and validation tokens of a text corpus, as `prepare` writes them and `Data` reads them.
pub fn tokenize_text(
    path: &std::path::Path,
    kind: frugal_api::v1alpha1::Tokenizer,
    vocab: i64,
    validation_fraction: f64,
) -> Result<(Vec<u16>, Vec<u16>, TextTokenizer)> {
    let docs = text::read_documents(path)?;
    let (train_docs, val_docs) = text::split(docs, validation_fraction);
    let tok = match kind {
        frugal_api::v1alpha1::Tokenizer::Byte => TextTokenizer::Byte,
        frugal_api::v1alpha1::Tokenizer::Bpe => {
            let texts = train_docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    std::str::from_utf8(d).map_err(|e| {
                        anyhow::anyhow!(
                            "corpus {}: document {} (in name order) is not UTF-8 at byte {}; BPE reads UTF-8: convert it, or use data.tokenizer: byte",
                            path.display(),
                            i + 1,
                            e.valid_up_to()
                        )
                    })
                })
                .collect::<Result<Vec<&str>>>()?;
            TextTokenizer::train_bpe(&texts, vocab)?
        }
    };
    let encode = |docs: &[Vec<u8>], first: usize| -> Result<Vec<u16>> {
        let mut out = vec![];
        for (i, d) in docs.iter().enumerate() {
            out.extend(tok.encode(d).with_context(|| format!("corpus {}, document {} (in name order)", path.display(), first + i + 1))?);
            out.push(EOT);
        }
        Ok(out)
    };
    Ok((encode(&train_docs, 0)?, encode(&val_docs, train_docs.len())?, tok))
}

/// The data fingerprint: tokenizer fingerprint, then both splits.
pub fn fingerprint(tokenizer_fingerprint: &str, train: &[u16], val: &[u16]) -> String {
    let mut h = Sha256::new();
    h.update(b"frugal-data-v1\0");
    h.update(tokenizer_fingerprint.as_bytes());
    for split in [train, val] {
        h.update((split.len() as u64).to_le_bytes());
        for t in split {
            h.update(t.to_le_bytes());
        }
    }
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
        let text_source = |path: &std::path::Path, kind| -> Result<(Vec<u16>, Vec<u16>, Option<TextTokenizer>)> {
            if vocab < 257 {
                bail!("text needs a vocabulary of at least 257 (256 bytes and end-of-text), the model has {vocab}");
            }
            let (train, val, tok) = tokenize_text(path, kind, vocab, cfg.validation_fraction)?;
            Ok((train, val, Some(tok)))
        };
        let (train, val, tokenizer, what) = match &cfg.source {
            DataSource::TextFile { path } => {
                let (t, v, tok) = text_source(path, frugal_api::v1alpha1::Tokenizer::Byte)?;
                (t, v, tok, format!("corpus {}", path.display()))
            }
            DataSource::Text { path, tokenizer } => {
                let (t, v, tok) = text_source(path, *tokenizer)?;
                (t, v, tok, format!("corpus {}", path.display()))
            }
            DataSource::Shards { path } => {
                let (t, v, tok) = shards::read_dir(path)?;
                if tok.vocab_size() > vocab {
                    bail!("the shards' tokenizer has {} tokens, more than the model's vocabulary of {vocab}", tok.vocab_size());
                }
                (t, v, Some(tok), format!("shards {}", path.display()))
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
                let tokens = Synthetic::new(vocab, *branching).corpus(&mut rng, *tokens as usize);
                let split = ((tokens.len() as f64) * (1.0 - cfg.validation_fraction)).round() as usize;
                let (train, val) = tokens.split_at(split.min(tokens.len()));
                (train.to_vec(), val.to_vec(), None, "the synthetic corpus".to_string())
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
        let fingerprint = fingerprint(&tokenizer_fingerprint, &train, &val);
        Ok(Self {
            corpus: Corpus { train, val },
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
    pub fn validation_tokens(&self) -> &[u16] {
        &self.corpus.val
    }

    pub fn seq_len(&self) -> i64 {
        self.seq_len
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

    /// Passes over the next `b` training sequences without reading them: the ones the other
    /// replicas of a data-parallel run train on. The position afterwards is the one
    /// [`Data::next_batch`] of `b` would leave.
    pub fn skip(&mut self, b: i64) {
        let span = (self.corpus.train.len() - (self.seq_len as usize + 1)) as u64;
        for _ in 0..b {
            let _ = self.position.rng.below(span + 1);
        }
        self.position.sequences_drawn += b as u64;
    }

    /// The validation set, in batches of at most `b` sequences: windows of the held-out split,
    /// each overlapping the next by one token so that every held-out token is a target exactly
    /// once (text splits are read as a fresh document, after end-of-text, up to their last
    /// byte; the last window may be shorter), the same every time.
    pub fn validation(&self, b: i64) -> Vec<Batch> {
        let t = self.seq_len as usize;
        let stream: Vec<i64> = match &self.tokenizer {
            // The final end-of-text closes the split, nothing follows it: not scored.
            Some(_) => {
                let val = self.corpus.val.strip_suffix(&[EOT]).unwrap_or(&self.corpus.val);
                std::iter::once(EOT).chain(val.iter().copied()).map(i64::from).collect()
            }
            None => self.corpus.val.iter().map(|&x| i64::from(x)).collect(),
        };
        let mut seqs: Vec<&[i64]> = vec![];
        let mut at = 0;
        while at + 1 < stream.len() {
            let end = (at + t + 1).min(stream.len());
            seqs.push(&stream[at..end]);
            at = end - 1;
        }
        if self.eval_sequences > 0 {
            seqs.truncate(self.eval_sequences as usize);
        }
        let mut out = vec![];
        let (full, partial): (Vec<&[i64]>, Vec<&[i64]>) = seqs.into_iter().partition(|s| s.len() == t + 1);
        for c in full.chunks(b.max(1) as usize) {
            out.push(to_batch(&c.concat(), c.len() as i64, self.seq_len));
        }
        for s in partial {
            out.push(to_batch(s, 1, s.len() as i64 - 1));
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
        let mut next = std::collections::HashMap::<u16, std::collections::HashSet<u16>>::new();
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
        let api_bpe = frugal_api::v1alpha1::Tokenizer::Bpe;
        let text = DataConfig { source: DataSource::Text { path: d.join("docs"), tokenizer: api_bpe }, validation_fraction: 0.3, eval_sequences: 0 };
        let from_text = Data::new(&text, 300, 16, 1).unwrap();
        // Documents are closed by end-of-text; the held-out document is not in the training split.
        let tok = from_text.tokenizer.clone().unwrap();
        assert_eq!(from_text.corpus.train.iter().filter(|&&t| t == EOT).count(), 2);
        assert_eq!(tok.decode(&from_text.corpus.val), b"third, the held-out one, about cats\n".repeat(30));
        let (train, val, tok2) = tokenize_text(&d.join("docs"), api_bpe, 300, 0.3).unwrap();
        let meta = shards::ShardMeta {
            source: "test".into(),
            train_tokens: train.len() as u64,
            val_tokens: val.len() as u64,
            data_fingerprint: fingerprint(&tok2.fingerprint(), &train, &val),
            tokenizer_fingerprint: tok2.fingerprint(),
        };
        let files = shards::write_dir(&d.join("shards"), &tok2, &train, &val, 100, &meta).unwrap();
        assert!(files.len() > 2, "small shards split the corpus: {files:?}");
        let from_shards = Data::new(&DataConfig { source: DataSource::Shards { path: d.join("shards") }, ..text.clone() }, 300, 16, 1).unwrap();
        assert_eq!(from_shards.fingerprint, from_text.fingerprint);
        assert_eq!(from_shards.fingerprint, meta.data_fingerprint);
        assert_eq!(from_shards.corpus.train, from_text.corpus.train);
        // A byte tokenizer gives different data.
        let bytes = Data::new(
            &DataConfig { source: DataSource::Text { path: d.join("docs"), tokenizer: frugal_api::v1alpha1::Tokenizer::Byte }, ..text },
            300,
            16,
            1,
        )
        .unwrap();
        assert_ne!(bytes.fingerprint, from_text.fingerprint);
        // Every held-out token is a validation target exactly once.
        let targets: i64 = bytes.validation(4).iter().map(|b| b.targets.numel() as i64).sum();
        assert_eq!(targets, bytes.corpus.val.len() as i64 - 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
