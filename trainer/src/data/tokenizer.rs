//! Tokenizers: byte-level (one token a byte) and byte-level BPE trained on the corpus. Both
//! reserve id 256 for end-of-text, the document boundary, so byte ids mean the same in both and
//! every token maps back to the exact bytes it covers, which is what bits per byte counts.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// The end-of-text token that closes every document.
pub const EOT: u16 = 256;
/// Ids below this are single bytes (plus end-of-text at 256).
const FIRST_MERGE: u32 = 257;

/// How text becomes tokens. Serialised as the tokenizer file shards carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TextTokenizer {
    Byte,
    /// `merges[i]` makes token 257 + i from two earlier tokens.
    Bpe { merges: Vec<(u32, u32)> },
}

impl TextTokenizer {
    pub fn vocab_size(&self) -> i64 {
        match self {
            Self::Byte => FIRST_MERGE as i64,
            Self::Bpe { merges } => FIRST_MERGE as i64 + merges.len() as i64,
        }
    }

    /// SHA-256 of the tokenizer file's contents.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).expect("tokenizer serialises")))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing tokenizer {}", path.display()))
    }

    /// The bytes each token id stands for (end-of-text: none).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        out.push(vec![]);
        if let Self::Bpe { merges } = self {
            for &(a, b) in merges {
                let mut t = out[a as usize].clone();
                t.extend_from_slice(&out[b as usize]);
                out.push(t);
            }
        }
        out
    }

    /// Tokens of `text`, without end-of-text.
    pub fn encode(&self, text: &[u8]) -> Vec<u16> {
        match self {
            Self::Byte => text.iter().map(|&b| u16::from(b)).collect(),
            Self::Bpe { merges } => {
                let ranks: HashMap<(u32, u32), u32> =
                    merges.iter().enumerate().map(|(i, &p)| (p, FIRST_MERGE + i as u32)).collect();
                let mut cache: HashMap<&[u8], Vec<u16>> = HashMap::new();
                let mut out = Vec::with_capacity(text.len() / 2);
                for chunk in pre_tokenize(text) {
                    let ids = cache.entry(chunk).or_insert_with(|| apply_merges(chunk, &ranks));
                    out.extend_from_slice(ids);
                }
                out
            }
        }
    }

    pub fn decode(&self, tokens: &[u16]) -> Vec<u8> {
        let table = self.token_bytes();
        tokens.iter().flat_map(|&t| table[t as usize].iter().copied()).collect()
    }

    /// Learns `vocab_size - 257` merges from `text` (the classic byte-pair algorithm over
    /// pre-tokenized chunks, most frequent pair first, ties to the smallest pair so the result
    /// does not depend on hash order).
    pub fn train_bpe(text: &[u8], vocab_size: i64) -> Result<Self> {
        if vocab_size < FIRST_MERGE as i64 || vocab_size > u16::MAX as i64 + 1 {
            bail!("a BPE vocabulary must hold 257 to 65,536 tokens, asked for {vocab_size}");
        }
        let mut counts: HashMap<&[u8], u64> = HashMap::new();
        for chunk in pre_tokenize(text) {
            *counts.entry(chunk).or_default() += 1;
        }
        let mut words: Vec<(Vec<u32>, u64)> =
            counts.into_iter().map(|(w, c)| (w.iter().map(|&b| u32::from(b)).collect(), c)).collect();
        words.sort();
        let mut merges = Vec::new();
        while (FIRST_MERGE as i64 + merges.len() as i64) < vocab_size {
            let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
            for (w, c) in &words {
                for p in w.windows(2) {
                    *pairs.entry((p[0], p[1])).or_default() += c;
                }
            }
            let Some((&best, _)) = pairs.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else { break };
            let id = FIRST_MERGE + merges.len() as u32;
            for (w, _) in &mut words {
                merge_in_place(w, best, id);
            }
            merges.push(best);
        }
        Ok(Self::Bpe { merges })
    }
}

fn merge_in_place(w: &mut Vec<u32>, pair: (u32, u32), id: u32) {
    let mut i = 0;
    let mut j = 0;
    while i < w.len() {
        if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
            w[j] = id;
            i += 2;
        } else {
            w[j] = w[i];
            i += 1;
        }
        j += 1;
    }
    w.truncate(j);
}

/// Encodes one chunk: repeatedly applies the earliest-learned merge present.
fn apply_merges(chunk: &[u8], ranks: &HashMap<(u32, u32), u32>) -> Vec<u16> {
    let mut w: Vec<u32> = chunk.iter().map(|&b| u32::from(b)).collect();
    loop {
        let best = w.windows(2).filter_map(|p| ranks.get(&(p[0], p[1])).map(|&r| (r, (p[0], p[1])))).min();
        match best {
            Some((id, pair)) => merge_in_place(&mut w, pair, id),
            None => break,
        }
    }
    w.into_iter().map(|t| t as u16).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(b: u8) -> Class {
    if b.is_ascii_alphabetic() || b >= 0x80 {
        Class::Letter
    } else if b.is_ascii_digit() {
        Class::Digit
    } else if b.is_ascii_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Splits text into the chunks merges may not cross, GPT-2 style: a run of one character class,
/// where a single space joins the run that follows it (" the", " 42").
pub fn pre_tokenize(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= text.len() {
            return None;
        }
        let start = i;
        if text[i] == b' ' && i + 1 < text.len() && class(text[i + 1]) != Class::Space {
            i += 1;
        }
        let c = class(text[i]);
        i += 1;
        while i < text.len() && class(text[i]) == c {
            // A space run leaves its last space to the word after it.
            if c == Class::Space && text[i] == b' ' && i + 1 < text.len() && class(text[i + 1]) != Class::Space {
                break;
            }
            i += 1;
        }
        Some(&text[start..i])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpe_round_trips_and_compresses() {
        let text = b"the cat sat on the mat; the cat ate the rat. 1234 1234\n\n  indented  text\n".repeat(20);
        let tok = TextTokenizer::train_bpe(&text, 280).unwrap();
        assert_eq!(tok.vocab_size(), 280);
        // Training stops early once every chunk is one token.
        assert!(TextTokenizer::train_bpe(&text, 1000).unwrap().vocab_size() < 1000);
        let ids = tok.encode(&text);
        assert_eq!(tok.decode(&ids), text);
        assert!(ids.len() * 2 < text.len(), "{} tokens for {} bytes", ids.len(), text.len());
        assert!(ids.iter().all(|&t| t != EOT && (t as i64) < 280));
        // Chunks cover the text exactly.
        assert_eq!(pre_tokenize(&text).flat_map(|c| c.iter().copied()).collect::<Vec<_>>(), text);
        // Training is deterministic.
        assert_eq!(TextTokenizer::train_bpe(&text, 280).unwrap().fingerprint(), tok.fingerprint());
        assert_ne!(TextTokenizer::Byte.fingerprint(), tok.fingerprint());
        let table = tok.token_bytes();
        assert!(table[EOT as usize].is_empty());
        assert_eq!(ids.iter().map(|&t| table[t as usize].len()).sum::<usize>(), text.len());
    }
}
