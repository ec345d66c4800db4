//! From a corpus to tokens, as documents stream by: count the documents and their bytes (which
//! fixes the validation split), make the tokenizer (a BPE reads the training documents once), then
//! read the documents again, encoding each and closing it with end-of-text, into the split it
//! belongs to. Training keeps the tokens in memory; `prepare` writes them to shards, so that its
//! memory does not grow with the corpus.

use super::corpus::{Corpus, Document, Split};
use super::shards::{self, ShardMeta, ShardWriter};
use super::tokenizer::{TextTokenizer, vocabulary_mismatch};
use super::tokens::{Tokens, Width};
use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a text corpus's tokenizer comes from (the spec's `data.tokenizer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenizerSource {
    /// One token a byte.
    Byte,
    /// A byte-level BPE trained on the training documents, to the model's vocabulary.
    Bpe,
    /// A `tokenizer.json`, used as it is; its end-of-text named, or its own.
    File { path: PathBuf, end_of_text: Option<String> },
}

/// Where tokens go as they come: memory, or shards.
pub trait TokenSink {
    fn push(&mut self, ids: &[u32]) -> Result<()>;
}

impl TokenSink for Tokens {
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            Tokens::push(self, id);
        }
        Ok(())
    }
}

impl TokenSink for ShardWriter {
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        ShardWriter::push(self, ids)
    }
}

/// The tokenizer `corpus` is read with for a model of `vocab` tokens: checked against the
/// model's vocabulary, or (BPE) trained on the training documents of `split`.
pub fn tokenizer_for(corpus: &Corpus, source: &TokenizerSource, vocab: i64, split: Split) -> Result<TextTokenizer> {
    match source {
        TokenizerSource::Byte | TokenizerSource::Bpe if vocab < 257 => {
            bail!("text needs a vocabulary of at least 257 (256 bytes and end-of-text), the model has {vocab}")
        }
        TokenizerSource::Byte => Ok(TextTokenizer::Byte),
        TokenizerSource::Bpe => train_bpe(corpus, vocab, split),
        TokenizerSource::File { path, end_of_text } => {
            let tok = TextTokenizer::from_file(path, end_of_text.as_deref())?;
            if let Some(e) = vocabulary_mismatch(tok.vocab_size(), vocab, &format!("data.tokenizerFile.path {}", path.display())) {
                bail!(e);
            }
            Ok(tok)
        }
    }
}

/// A BPE trained on the training documents, read once as they stream by.
fn train_bpe(corpus: &Corpus, vocab: i64, split: Split) -> Result<TextTokenizer> {
    // The trainer takes an iterator of text: the first bad document stops it and is reported.
    let failed: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let fail = failed.clone();
    let texts = corpus.split_documents(split)?.map_while(move |d| {
        let text = d.and_then(|(doc, held)| {
            String::from_utf8(doc.text).map(|t| (t, held)).map_err(|e| {
                anyhow!(
                    "corpus {}: the document is not UTF-8 at byte {}; BPE reads UTF-8: convert it, or use data.tokenizer: byte",
                    doc.origin,
                    e.utf8_error().valid_up_to()
                )
            })
        });
        match text {
            Ok(t) => Some(t),
            Err(e) => {
                *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        }
    });
    let tok = TextTokenizer::train_bpe(texts.filter(|(_, held)| !held).map(|(t, _)| t), vocab);
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    tok
}

/// Text encoded at a time, on all cores: enough to keep them busy, little beside a document.
const BATCH_BYTES: usize = 4 << 20;

/// Encodes every document of `corpus` with `tok`, each closed by end-of-text, into the sink of
/// the split it belongs to, in order.
pub fn encode_corpus(corpus: &Corpus, tok: &TextTokenizer, split: Split, train: &mut dyn TokenSink, val: &mut dyn TokenSink) -> Result<()> {
    let eot = tok.end_of_text();
    let mut batch: Vec<(Document, bool)> = vec![];
    let mut bytes = 0;
    let mut flush = |batch: &mut Vec<(Document, bool)>| -> Result<()> {
        let texts: Vec<&[u8]> = batch.iter().map(|(d, _)| d.text.as_slice()).collect();
        let encoded = tok.encode_batch(&texts).map_err(|(i, e)| e.context(format!("corpus {}", batch[i].0.origin)))?;
        for (mut ids, (_, held)) in encoded.into_iter().zip(batch.iter()) {
            ids.push(eot);
            if *held { val.push(&ids)? } else { train.push(&ids)? }
        }
        batch.clear();
        Ok(())
    };
    for d in corpus.split_documents(split)? {
        let (doc, held) = d?;
        crate::progress::advance(doc.text.len() as u64);
        bytes += doc.text.len();
        batch.push((doc, held));
        if bytes >= BATCH_BYTES {
            flush(&mut batch)?;
            bytes = 0;
        }
    }
    flush(&mut batch)
}

/// Training and validation tokens of a corpus, in memory, and its tokenizer.
pub fn tokenize(corpus: &Corpus, source: &TokenizerSource, vocab: i64, validation_fraction: f64) -> Result<(Tokens, Tokens, TextTokenizer)> {
    let split = Split { survey: corpus.survey()?, fraction: validation_fraction };
    let tok = tokenizer_for(corpus, source, vocab, split)?;
    let width = Width::for_vocab(tok.vocab_size());
    let (mut train, mut val) = (Tokens::new(width), Tokens::new(width));
    encode_corpus(corpus, &tok, split, &mut train, &mut val)?;
    Ok((train, val, tok))
}

/// What `prepare` wrote.
#[derive(Debug)]
pub struct Prepared {
    pub meta: ShardMeta,
    pub files: Vec<PathBuf>,
    pub tokenizer: TextTokenizer,
    pub documents: u64,
    pub bytes: u64,
}

/// Tokenizes a corpus into shards of at most `shard_tokens` tokens under `out`, streaming: memory
/// holds a document and a write buffer, not the corpus.
pub fn prepare(corpus: &Corpus, source: &TokenizerSource, vocab: i64, validation_fraction: f64, out: &Path, shard_tokens: usize) -> Result<Prepared> {
    let survey = corpus.survey()?;
    let split = Split { survey, fraction: validation_fraction };
    let tok = tokenizer_for(corpus, source, vocab, split)?;
    let width = Width::for_vocab(tok.vocab_size());
    shards::clear_dir(out)?;
    let mut train = ShardWriter::new(out, "train", width, shard_tokens);
    let mut val = ShardWriter::new(out, "val", width, shard_tokens);
    crate::progress::begin(&format!("prepare {}", corpus.path.display()), "bytes", Some(survey.bytes));
    encode_corpus(corpus, &tok, split, &mut train, &mut val)?;
    crate::progress::end();
    let (train_tokens, val_tokens) = (train.tokens(), val.tokens());
    let mut files = train.finish()?;
    files.extend(val.finish()?);
    // The fingerprint covers the split sizes before their tokens: read back what was written.
    let (train_read, val_read) = shards::read_splits(out)?;
    let meta = ShardMeta {
        source: corpus.path.display().to_string(),
        train_tokens,
        val_tokens,
        data_fingerprint: super::fingerprint(&tok.fingerprint(), &train_read, &val_read),
        tokenizer_fingerprint: tok.fingerprint(),
        bytes_per_token: width.bytes() as u8,
        end_of_text: Some(tok.end_of_text_text()),
    };
    shards::commit_dir(out, &tok, &meta)?;
    Ok(Prepared { meta, files, tokenizer: tok, documents: survey.documents, bytes: survey.bytes })
}
