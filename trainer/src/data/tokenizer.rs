//! Tokenizers: byte-level (one token a byte) and byte-level BPE trained on the corpus with the
//! `tokenizers` crate. Both lay out ids the same way: 0–255 are the bytes, 256 is end-of-text
//! (`<|endoftext|>`, the document boundary), learned merges follow in the order they were learned.
//! So byte ids mean the same in both, and every token maps back to the exact bytes it covers,
//! which is what bits per byte counts.
//!
//! Both are saved as a standard `tokenizer.json`: a BPE model over GPT-2's byte-to-character
//! alphabet with the ByteLevel pre-tokenizer and decoder (the byte tokenizer is that model without
//! merges), so other tools read the shards' tokenizer as it is.

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainer, Merges, Vocab};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Model, Tokenizer};

/// The end-of-text token that closes every document.
pub const EOT: u16 = 256;
/// End-of-text as text, GPT-2's spelling.
pub const EOT_TEXT: &str = "<|endoftext|>";
/// Ids below this are single bytes and end-of-text.
const FIRST_MERGE: usize = 257;
/// Token ids are stored as u16.
const MAX_VOCAB: i64 = u16::MAX as i64 + 1;

/// How text becomes tokens.
#[derive(Clone, Debug)]
pub enum TextTokenizer {
    Byte,
    Bpe(Box<Bpe>),
}

/// A trained byte-level BPE.
#[derive(Clone, Debug)]
pub struct Bpe {
    tokenizer: Tokenizer,
    /// The bytes each id stands for (end-of-text: none).
    token_bytes: Vec<Vec<u8>>,
}

impl TextTokenizer {
    pub fn vocab_size(&self) -> i64 {
        match self {
            Self::Byte => FIRST_MERGE as i64,
            Self::Bpe(b) => b.token_bytes.len() as i64,
        }
    }

    /// SHA-256 of the tokenizer file's contents (compact JSON).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.to_json(false).as_bytes()))
    }

    fn to_json(&self, pretty: bool) -> String {
        let tokenizer = match self {
            Self::Byte => byte_level_tokenizer(base_vocab(), vec![]).expect("the byte tokenizer builds"),
            Self::Bpe(b) => b.tokenizer.clone(),
        };
        tokenizer.to_string(pretty).expect("a tokenizer serialises")
    }

    /// Writes the standard `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json(true)).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a `tokenizer.json` written by [`TextTokenizer::save`]: any byte-level BPE with this
    /// id layout (a vocabulary of 257, no merges, is the byte tokenizer).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        let tokenizer: Tokenizer = text.parse().map_err(|e| anyhow!("parsing tokenizer {}: {e}", path.display()))?;
        Self::from_tokenizer(tokenizer).with_context(|| {
            format!(
                "tokenizer {}: the trainer reads byte-level BPE with ids 0–255 the bytes and 256 {EOT_TEXT}, \
                 as `frugal-trainer prepare` writes it; prepare the shards again",
                path.display()
            )
        })
    }

    fn from_tokenizer(tokenizer: Tokenizer) -> Result<Self> {
        ensure!(tokenizer.get_normalizer().is_none(), "it has a normalizer, which would change the text's bytes");
        match tokenizer.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space => {}
            Some(PreTokenizerWrapper::ByteLevel(_)) => bail!("its ByteLevel pre-tokenizer adds a prefix space, which would change the text's bytes"),
            _ => bail!("its pre-tokenizer is not ByteLevel"),
        }
        ensure!(matches!(tokenizer.get_model(), ModelWrapper::BPE(_)), "its model is not BPE");
        let vocab = tokenizer.get_vocab(true);
        let n = vocab.len();
        ensure!((FIRST_MERGE..=MAX_VOCAB as usize).contains(&n), "its vocabulary holds {n} tokens, not 257 to 65,536");
        let mut by_id = vec![None; n];
        for (token, id) in &vocab {
            let slot = by_id.get_mut(*id as usize).with_context(|| format!("token id {id} is past its vocabulary of {n}"))?;
            *slot = Some(token.as_str());
        }
        let chars = byte_chars();
        let mut token_bytes = Vec::with_capacity(n);
        for (id, token) in by_id.into_iter().enumerate() {
            let token = token.with_context(|| format!("token id {id} is missing"))?;
            let bytes = match id {
                256 => {
                    ensure!(token == EOT_TEXT, "id 256 is {token:?}, not {EOT_TEXT}");
                    vec![]
                }
                b if b < 256 => {
                    ensure!(token.chars().eq(std::iter::once(chars[b])), "id {b} is {token:?}, not byte {b}");
                    vec![b as u8]
                }
                _ => token
                    .chars()
                    .map(|c| byte_of(c, &chars))
                    .collect::<Option<Vec<u8>>>()
                    .with_context(|| format!("token {id} ({token:?}) is not byte-level"))?,
            };
            token_bytes.push(bytes);
        }
        ensure!(
            tokenizer.get_added_tokens_decoder().get(&u32::from(EOT)).is_some_and(|t| t.special && t.content == EOT_TEXT),
            "{EOT_TEXT} is not its special token 256"
        );
        if n == FIRST_MERGE {
            return Ok(Self::Byte);
        }
        Ok(Self::Bpe(Box::new(Bpe { tokenizer, token_bytes })))
    }

    /// The bytes each token id stands for (end-of-text: none).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        match self {
            Self::Byte => (0..=255u8).map(|b| vec![b]).chain(std::iter::once(vec![])).collect(),
            Self::Bpe(b) => b.token_bytes.clone(),
        }
    }

    /// Tokens of `text`, without end-of-text. BPE reads UTF-8 text without the end-of-text marker.
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u16>> {
        match self {
            Self::Byte => Ok(text.iter().map(|&b| u16::from(b)).collect()),
            Self::Bpe(b) => {
                let text = std::str::from_utf8(text).map_err(|e| {
                    anyhow!("the text is not UTF-8 (at byte {}); BPE reads UTF-8: convert it, or use data.tokenizer: byte", e.valid_up_to())
                })?;
                let ids = b.tokenizer.encode_fast(text, false).map_err(|e| anyhow!("BPE encoding failed: {e}"))?.get_ids().to_vec();
                if ids.contains(&u32::from(EOT)) {
                    bail!(
                        "the text holds {EOT_TEXT}, the end-of-text marker that BPE keeps for document boundaries: remove it from the text, or use data.tokenizer: byte"
                    );
                }
                // The vocabulary holds at most 65,536 ids (checked when it was built).
                Ok(ids.into_iter().map(|t| t as u16).collect())
            }
        }
    }

    pub fn decode(&self, tokens: &[u16]) -> Vec<u8> {
        let table = self.token_bytes();
        tokens.iter().flat_map(|&t| table[t as usize].iter().copied()).collect()
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (fewer when the text runs out of pairs) on
    /// `documents`: GPT-2's pre-tokenization, the most frequent pair merged first, ties to the
    /// smallest pair, so the result is the same every time.
    pub fn train_bpe(documents: &[&str], vocab_size: i64) -> Result<Self> {
        if !(FIRST_MERGE as i64..=MAX_VOCAB).contains(&vocab_size) {
            bail!("a BPE vocabulary (model.vocabSize) must hold 257 to 65,536 tokens, it is {vocab_size}");
        }
        let eot = AddedToken::from(EOT_TEXT, true);
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size as usize)
            .show_progress(false)
            .special_tokens(vec![eot])
            .initial_alphabet(byte_chars().into_iter().collect::<HashSet<char>>())
            .build();
        let mut trained = byte_level_tokenizer(base_vocab(), vec![])?;
        trained.train(&mut TrainerWrapper::from(trainer), documents.iter()).map_err(|e| anyhow!("training BPE: {e}"))?;
        // The trainer numbers end-of-text and the bytes its own way; renumber into this layout,
        // keeping the learned tokens in the order they were learned.
        let learned_vocab = trained.get_model().get_vocab();
        let mut learned: Vec<(u32, String)> = learned_vocab.into_iter().map(|(t, id)| (id, t)).collect();
        learned.sort();
        let mut vocab = base_vocab();
        let mut next = FIRST_MERGE as u32;
        for (_, token) in learned {
            if !vocab.contains_key(&token) {
                vocab.insert(token, next);
                next += 1;
            }
        }
        let model = serde_json::to_value(trained.get_model()).context("reading the trained merges")?;
        let merges: Merges = serde_json::from_value(model["merges"].clone()).context("reading the trained merges")?;
        Self::from_tokenizer(byte_level_tokenizer(vocab, merges)?)
    }
}

/// A byte-level BPE tokenizer over `vocab` and `merges`, end-of-text its special token.
fn byte_level_tokenizer(vocab: Vocab, merges: Merges) -> Result<Tokenizer> {
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow!("building BPE: {e}"))?;
    let mut t = Tokenizer::new(bpe);
    // No prefix space: a token's bytes are exactly the text's.
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_post_processor(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevel::new(false, true, true)));
    t.add_special_tokens(&[AddedToken::from(EOT_TEXT, true)]);
    Ok(t)
}

/// Bytes at 0–255 and end-of-text at 256.
fn base_vocab() -> Vocab {
    let mut v: Vocab = byte_chars().iter().enumerate().map(|(b, c)| (c.to_string(), b as u32)).collect();
    v.insert(EOT_TEXT.to_string(), u32::from(EOT));
    v
}

/// GPT-2's byte-level alphabet: the character that stands for each byte. Printable Latin-1 bytes
/// stand for themselves; the other 68 (controls, space, NBSP, soft hyphen) take U+0100 onwards in
/// byte order, so every token is printable text.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out = ['\0'; 256];
    let mut shifted = 0;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are characters")
        };
    }
    out
}

fn byte_of(c: char, chars: &[char; 256]) -> Option<u8> {
    chars.iter().position(|&x| x == c).map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_the_tokenizers_crates() {
        let chars = byte_chars();
        let ours: HashSet<char> = chars.iter().copied().collect();
        let theirs: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        assert_eq!(ours.len(), 256);
        assert_eq!(ours, theirs);
        // The byte tokenizer written as tokenizer.json gives the bytes through the crate's own
        // byte-level mapping, controls, spaces and multi-byte characters included.
        let text = "tab\there, NBSP\u{a0}and soft\u{ad}hyphen, é, 漢字, 🦀\n\r\x7f";
        let file = TextTokenizer::Byte.to_json(false);
        let hf: Tokenizer = file.parse().unwrap();
        let ids: Vec<u32> = hf.encode_fast(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert!(matches!(TextTokenizer::from_tokenizer(hf).unwrap(), TextTokenizer::Byte));
        // Arbitrary bytes still go through the byte tokenizer.
        assert_eq!(TextTokenizer::Byte.encode(&[0xff, 0xfe, 0]).unwrap(), vec![255, 254, 0]);
    }

    #[test]
    fn bpe_round_trips_and_compresses() {
        let text = "the cat sat on the mat; the cat ate the rat. 1234 1234\n\n  indented  text, ünïcödé\n".repeat(20);
        let tok = TextTokenizer::train_bpe(&[&text], 300).unwrap();
        assert_eq!(tok.vocab_size(), 300);
        // Training stops early once every pre-tokenized word is one token.
        assert!(TextTokenizer::train_bpe(&[&text], 1000).unwrap().vocab_size() < 1000);
        let ids = tok.encode(text.as_bytes()).unwrap();
        assert_eq!(tok.decode(&ids), text.as_bytes());
        assert!(ids.len() * 2 < text.len(), "{} tokens for {} bytes", ids.len(), text.len());
        assert!(ids.iter().all(|&t| t != EOT && (t as i64) < 300));
        assert!(ids.iter().any(|&t| t as usize >= FIRST_MERGE), "merges are used");
        // Bytes keep their ids.
        assert_eq!(tok.encode(b"\x07").unwrap(), vec![7]);
        // Training is deterministic.
        assert_eq!(TextTokenizer::train_bpe(&[&text], 300).unwrap().fingerprint(), tok.fingerprint());
        assert_ne!(TextTokenizer::Byte.fingerprint(), tok.fingerprint());
        let table = tok.token_bytes();
        assert!(table[EOT as usize].is_empty());
        assert_eq!(ids.iter().map(|&t| table[t as usize].len()).sum::<usize>(), text.len());

        // tokenizer.json round-trips, and the crate reads it as it is, to the same ids.
        let dir = std::env::temp_dir().join(format!("frugal-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = TextTokenizer::load(&path).unwrap();
        assert_eq!(loaded.fingerprint(), tok.fingerprint());
        assert_eq!(loaded.encode(text.as_bytes()).unwrap(), ids);
        let plain = Tokenizer::from_file(&path).unwrap();
        let plain_ids: Vec<u16> = plain.encode(text.as_str(), false).unwrap().get_ids().iter().map(|&t| t as u16).collect();
        assert_eq!(plain_ids, ids);
        assert_eq!(plain.decode(&plain_ids.iter().map(|&t| u32::from(t)).collect::<Vec<_>>(), false).unwrap(), text);
        assert_eq!(plain.token_to_id(EOT_TEXT), Some(u32::from(EOT)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_input_is_refused_with_the_fix() {
        let tok = TextTokenizer::train_bpe(&["abab abab abab"], 260).unwrap();
        let e = tok.encode(b"caf\xe9").unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("data.tokenizer: byte"), "{e}");
        let e = tok.encode(b"one<|endoftext|>two").unwrap_err().to_string();
        assert!(e.contains(EOT_TEXT) && e.contains("remove it"), "{e}");
        let e = TextTokenizer::train_bpe(&["x"], 100).unwrap_err().to_string();
        assert!(e.contains("model.vocabSize"), "{e}");

        // A tokenizer.json with another layout (GPT-2's: end-of-text last, bytes in another order).
        let mut vocab = base_vocab();
        vocab.insert(EOT_TEXT.into(), 257);
        vocab.insert("ab".into(), 256);
        let foreign = byte_level_tokenizer(vocab, vec![("a".into(), "b".into())]).unwrap();
        let dir = std::env::temp_dir().join(format!("frugal-tokenizer-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        foreign.save(&path, false).unwrap();
        let e = format!("{:#}", TextTokenizer::load(&path).unwrap_err());
        assert!(e.contains("prepare the shards again") && e.contains("id 256"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
