//! Tokenizers: frugal's own, byte-level (one token a byte) and byte-level BPE trained on the
//! corpus with the `tokenizers` crate, and any Hugging Face `tokenizer.json`, used as it is.
//!
//! frugal's own lay out ids the same way: 0–255 are the bytes, 256 is end-of-text
//! (`<|endoftext|>`, the document boundary), learned merges follow in the order they were
//! learned. So byte ids mean the same in both, and every token maps back to the exact bytes it
//! covers, which is what bits per byte counts. Both are saved as a standard `tokenizer.json`: a
//! BPE model over GPT-2's byte-to-character alphabet with the ByteLevel pre-tokenizer and decoder
//! (the byte tokenizer is that model without merges), so other tools read the shards' tokenizer
//! as it is.
//!
//! A tokenizer file from elsewhere keeps its own ids; its end-of-text is the token that closes a
//! document, and the bytes a token covers are what it adds to decoded text.

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainer, Merges, Vocab};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Model, Tokenizer};

/// End-of-text in frugal's own tokenizers.
const EOT: u32 = 256;
/// End-of-text as text, GPT-2's spelling.
pub const EOT_TEXT: &str = "<|endoftext|>";
/// What a tokenizer file's end-of-text is called when nothing names it, in the order looked for
/// (GPT-2 and most byte-level BPEs, Llama 3, SentencePiece models, Gemma, others).
pub const END_OF_TEXT_NAMES: [&str; 5] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>"];
/// Ids below this are single bytes and end-of-text in frugal's own tokenizers.
const FIRST_MERGE: usize = 257;
/// The largest vocabulary a model may have (model.vocabSize's bound).
const MAX_VOCAB: i64 = 1 << 20;

/// How text becomes tokens.
#[derive(Clone, Debug)]
pub enum TextTokenizer {
    /// One token a byte, end-of-text 256.
    Byte,
    /// A `tokenizers` tokenizer: a BPE trained on the corpus, or a tokenizer file as it is.
    Model(Box<ModelTokenizer>),
}

/// A `tokenizers` tokenizer with what training needs of it.
#[derive(Clone, Debug)]
pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    /// The bytes each id stands for (special tokens: none).
    token_bytes: Vec<Vec<u8>>,
    end_of_text: u32,
}

impl TextTokenizer {
    /// Ids run from 0 to one less than this.
    pub fn vocab_size(&self) -> i64 {
        match self {
            Self::Byte => FIRST_MERGE as i64,
            Self::Model(m) => m.token_bytes.len() as i64,
        }
    }

    /// The token that closes every document.
    pub fn end_of_text(&self) -> u32 {
        match self {
            Self::Byte => EOT,
            Self::Model(m) => m.end_of_text,
        }
    }

    /// The end-of-text token as text.
    pub fn end_of_text_text(&self) -> String {
        match self {
            Self::Byte => EOT_TEXT.to_string(),
            Self::Model(m) => m.tokenizer.id_to_token(m.end_of_text).unwrap_or_default(),
        }
    }

    /// SHA-256 of the tokenizer file's contents (compact JSON).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.to_json(false).as_bytes()))
    }

    fn to_json(&self, pretty: bool) -> String {
        let tokenizer = match self {
            Self::Byte => byte_level_tokenizer(base_vocab(), vec![]).expect("the byte tokenizer builds"),
            Self::Model(m) => m.tokenizer.clone(),
        };
        tokenizer.to_string(pretty).expect("a tokenizer serialises")
    }

    /// Writes the standard `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json(true)).with_context(|| format!("writing {}", path.display()))
    }

    /// The tokenizer a Hugging Face model directory comes with: its `tokenizer.json`, end-of-text
    /// the `eos_token` of its `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"), None)
    }

    /// A Hugging Face `tokenizer.json`, used as it is (its truncation and padding, which would
    /// cut or pad documents, aside). Documents are closed by `end_of_text` when given, else by
    /// the `eos_token` of a `tokenizer_config.json` beside the file, else by the first of
    /// [`END_OF_TEXT_NAMES`] among its special tokens. A file in frugal's own layout with 257
    /// tokens is the byte tokenizer.
    pub fn from_file(path: &Path, end_of_text: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        let mut tokenizer: Tokenizer =
            text.parse().map_err(|e| anyhow!("tokenizer {} is not a tokenizer.json the tokenizers library reads: {e}", path.display()))?;
        tokenizer.with_truncation(None).map_err(|e| anyhow!("tokenizer {}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        let named = match end_of_text {
            Some(t) => Some((t.to_string(), "data.tokenizerFile.endOfText")),
            None => config_eos_token(path)?.map(|t| (t, "the eos_token of tokenizer_config.json beside it")),
        };
        let eot = match named {
            Some((token, from)) => tokenizer.token_to_id(&token).with_context(|| {
                format!("tokenizer {}: {from} is {token:?}, which is not one of its tokens; name the token that ends a document with data.tokenizerFile.endOfText", path.display())
            })?,
            None => END_OF_TEXT_NAMES
                .iter()
                .find_map(|name| {
                    let id = tokenizer.token_to_id(name)?;
                    tokenizer.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special).then_some(id)
                })
                .with_context(|| {
                    format!(
                        "tokenizer {} has no end-of-text token: none of {} is among its special tokens and no tokenizer_config.json beside it names an eos_token; name the token that ends a document with data.tokenizerFile.endOfText",
                        path.display(),
                        END_OF_TEXT_NAMES.join(", ")
                    )
                })?,
        };
        Self::from_tokenizer(tokenizer, eot).with_context(|| format!("tokenizer {}", path.display()))
    }

    fn from_tokenizer(tokenizer: Tokenizer, end_of_text: u32) -> Result<Self> {
        if let Some(token_bytes) = frugal_layout(&tokenizer) {
            if token_bytes.len() == FIRST_MERGE && end_of_text == EOT {
                return Ok(Self::Byte);
            }
            return Ok(Self::Model(Box::new(ModelTokenizer { tokenizer, token_bytes, end_of_text })));
        }
        let vocab = tokenizer.get_vocab(true);
        let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
        ensure!(n as i64 <= MAX_VOCAB, "its vocabulary runs to id {}, past the most a model holds, {MAX_VOCAB}", n - 1);
        let token_bytes = decoded_bytes(&tokenizer, n)?;
        Ok(Self::Model(Box::new(ModelTokenizer { tokenizer, token_bytes, end_of_text })))
    }

    /// The bytes each token id stands for (end-of-text and other special tokens: none).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        match self {
            Self::Byte => (0..=255u8).map(|b| vec![b]).chain(std::iter::once(vec![])).collect(),
            Self::Model(m) => m.token_bytes.clone(),
        }
    }

    /// Tokens of `text`, without end-of-text. A tokenizers model reads UTF-8 text that does not
    /// hold the end-of-text marker itself.
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        match self {
            Self::Byte => Ok(text.iter().map(|&b| u32::from(b)).collect()),
            Self::Model(m) => {
                let text = std::str::from_utf8(text).map_err(|e| {
                    anyhow!(
                        "the text is not UTF-8 (at byte {}); this tokenizer reads UTF-8: convert it, or use data.tokenizer: byte",
                        e.valid_up_to()
                    )
                })?;
                let ids = m.tokenizer.encode_fast(text, false).map_err(|e| anyhow!("encoding failed: {e}"))?.get_ids().to_vec();
                if ids.contains(&m.end_of_text) {
                    bail!(
                        "the text holds {:?}, the end-of-text marker kept for document boundaries: remove it from the text, or use data.tokenizer: byte",
                        self.end_of_text_text()
                    );
                }
                Ok(ids)
            }
        }
    }

    /// [`TextTokenizer::encode`] of several texts, on all cores; the first that fails is
    /// reported with its index.
    pub fn encode_batch(&self, texts: &[&[u8]]) -> std::result::Result<Vec<Vec<u32>>, (usize, anyhow::Error)> {
        let Self::Model(m) = self else {
            return Ok(texts.iter().map(|t| t.iter().map(|&b| u32::from(b)).collect()).collect());
        };
        let strs = texts.iter().enumerate().map(|(i, t)| std::str::from_utf8(t).map_err(|_| i)).collect::<std::result::Result<Vec<&str>, usize>>();
        let encoded = match strs {
            Ok(strs) => m.tokenizer.encode_batch_fast(strs, false).ok(),
            Err(_) => None,
        };
        let Some(encoded) = encoded else {
            // one of them fails: find it and say why
            return texts.iter().enumerate().map(|(i, t)| self.encode(t).map_err(|e| (i, e))).collect();
        };
        let ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.get_ids().to_vec()).collect();
        if let Some(i) = ids.iter().position(|ids| ids.contains(&m.end_of_text)) {
            return Err((i, self.encode(texts[i]).err().unwrap_or_else(|| anyhow!("the text holds the end-of-text marker"))));
        }
        Ok(ids)
    }

    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        let table = self.token_bytes();
        tokens.iter().flat_map(|&t| table[t as usize].iter().copied()).collect()
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (fewer when the text runs out of pairs) on
    /// `documents`, read once as they come: GPT-2's pre-tokenization, the most frequent pair
    /// merged first, ties to the smallest pair, so the result is the same every time.
    pub fn train_bpe<I, S>(documents: I, vocab_size: i64) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if !(FIRST_MERGE as i64..=MAX_VOCAB).contains(&vocab_size) {
            bail!("a BPE vocabulary (model.vocabSize) must hold 257 to {MAX_VOCAB} tokens, it is {vocab_size}");
        }
        let eot = AddedToken::from(EOT_TEXT, true);
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size as usize)
            .show_progress(false)
            .special_tokens(vec![eot])
            .initial_alphabet(byte_chars().into_iter().collect::<HashSet<char>>())
            .build();
        let mut trained = byte_level_tokenizer(base_vocab(), vec![])?;
        trained.train(&mut TrainerWrapper::from(trainer), documents).map_err(|e| anyhow!("training BPE: {e}"))?;
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
        Self::from_tokenizer(byte_level_tokenizer(vocab, merges)?, EOT)
    }
}

/// The refusal when a model's vocabulary cannot hold a tokenizer's ids, or None when it can.
/// A model may be wider than its tokenizer (ids it never sees, as nanoGPT pads GPT-2's 50,257
/// to 50,304), never narrower.
pub fn vocabulary_mismatch(tokenizer_vocab: i64, model_vocab: i64, tokenizer: &str) -> Option<String> {
    (tokenizer_vocab > model_vocab).then(|| {
        format!(
            "{tokenizer} has {tokenizer_vocab} tokens but the model's vocabulary holds {model_vocab}: set model.custom.vocabSize to {tokenizer_vocab} \
             (a preset's vocabulary is fixed: 257 for tiny and small, 50,257 for gpt2-*)"
        )
    })
}

/// The `eos_token` of the `tokenizer_config.json` beside `path`, if there is one.
fn config_eos_token(path: &Path) -> Result<Option<String>> {
    let config = path.with_file_name("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&config) else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config.display()))?;
    // a string, or an AddedToken object with its content
    Ok(match &value["eos_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    })
}

/// The bytes of each id when `tokenizer` is in frugal's own layout: a byte-level BPE without
/// normalizer or prefix space, ids 0–255 the bytes and 256 the special `<|endoftext|>`.
fn frugal_layout(tokenizer: &Tokenizer) -> Option<Vec<Vec<u8>>> {
    if tokenizer.get_normalizer().is_some() || !matches!(tokenizer.get_model(), ModelWrapper::BPE(_)) {
        return None;
    }
    if !matches!(tokenizer.get_pre_tokenizer(), Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space) {
        return None;
    }
    let vocab = tokenizer.get_vocab(true);
    let n = vocab.len();
    if n < FIRST_MERGE || n as i64 > MAX_VOCAB {
        return None;
    }
    let mut by_id = vec![None; n];
    for (token, id) in &vocab {
        *by_id.get_mut(*id as usize)? = Some(token.as_str());
    }
    let chars = byte_chars();
    let mut token_bytes = Vec::with_capacity(n);
    for (id, token) in by_id.into_iter().enumerate() {
        let token = token?;
        let bytes = match id {
            256 if token == EOT_TEXT => vec![],
            b if b < 256 && token.chars().eq(std::iter::once(chars[b])) => vec![b as u8],
            b if b > 256 => token.chars().map(|c| byte_of(c, &chars)).collect::<Option<Vec<u8>>>()?,
            _ => return None,
        };
        token_bytes.push(bytes);
    }
    tokenizer.get_added_tokens_decoder().get(&EOT).is_some_and(|t| t.special && t.content == EOT_TEXT).then_some(token_bytes)
}

/// What each of `n` ids adds to decoded text, as bytes: a byte-level model's tokens map back
/// through its alphabet exactly; a byte-fallback token `<0xNN>` is its byte; any other token is
/// what decoding it after a fixed token appends (so a SentencePiece `▁word` counts its space, as
/// it stands in running text). Special tokens cover no bytes.
fn decoded_bytes(tokenizer: &Tokenizer, n: usize) -> Result<Vec<Vec<u8>>> {
    let decoder = tokenizer.get_decoder().map(serde_json::to_value).transpose()?.unwrap_or_default();
    let pre = tokenizer.get_pre_tokenizer().map(serde_json::to_value).transpose()?.unwrap_or_default();
    let byte_level = has_type(&decoder, "ByteLevel") || has_type(&pre, "ByteLevel");
    let byte_fallback = has_type(&decoder, "ByteFallback");
    let added = tokenizer.get_added_tokens_decoder();
    let chars = byte_chars();
    // A plain token to decode after: the first that is neither special nor empty.
    let anchor = (0..n as u32)
        .find(|id| !added.contains_key(id) && tokenizer.decode(&[*id], false).is_ok_and(|s| !s.is_empty()))
        .context("it has no token that decodes to text")?;
    let base = tokenizer.decode(&[anchor], false).map_err(|e| anyhow!("decoding: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for id in 0..n as u32 {
        if let Some(t) = added.get(&id) {
            out.push(if t.special { vec![] } else { t.content.as_bytes().to_vec() });
            continue;
        }
        let Some(token) = tokenizer.id_to_token(id) else {
            // a hole in the ids: never produced
            out.push(vec![]);
            continue;
        };
        if byte_level && let Some(bytes) = token.chars().map(|c| byte_of(c, &chars)).collect::<Option<Vec<u8>>>() {
            out.push(bytes);
            continue;
        }
        if byte_fallback
            && let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && hex.len() == 2
        {
            out.push(vec![b]);
            continue;
        }
        let both = tokenizer.decode(&[anchor, id], false).map_err(|e| anyhow!("decoding token {id}: {e}"))?;
        out.push(match both.strip_prefix(base.as_str()) {
            Some(rest) => rest.as_bytes().to_vec(),
            None => tokenizer.decode(&[id], false).map_err(|e| anyhow!("decoding token {id}: {e}"))?.into_bytes(),
        });
    }
    Ok(out)
}

/// Whether a serialised decoder or pre-tokenizer is, or holds in a sequence, one of `kind`.
fn has_type(v: &serde_json::Value, kind: &str) -> bool {
    match v {
        serde_json::Value::Object(o) => o.get("type").and_then(|t| t.as_str()) == Some(kind) || o.values().any(|c| has_type(c, kind)),
        serde_json::Value::Array(a) => a.iter().any(|c| has_type(c, kind)),
        _ => false,
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
    v.insert(EOT_TEXT.to_string(), EOT);
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
        assert!(matches!(TextTokenizer::from_tokenizer(hf, EOT).unwrap(), TextTokenizer::Byte));
        // Arbitrary bytes still go through the byte tokenizer.
        assert_eq!(TextTokenizer::Byte.encode(&[0xff, 0xfe, 0]).unwrap(), vec![255, 254, 0]);
    }

    #[test]
    fn bpe_round_trips_and_compresses() {
        let text = "the cat sat on the mat; the cat ate the rat. 1234 1234\n\n  indented  text, ünïcödé\n".repeat(20);
        let tok = TextTokenizer::train_bpe([text.as_str()].into_iter(), 300).unwrap();
        assert_eq!(tok.vocab_size(), 300);
        // Training stops early once every pre-tokenized word is one token.
        assert!(TextTokenizer::train_bpe([text.as_str()].into_iter(), 1000).unwrap().vocab_size() < 1000);
        let ids = tok.encode(text.as_bytes()).unwrap();
        assert_eq!(tok.decode(&ids), text.as_bytes());
        assert!(ids.len() * 2 < text.len(), "{} tokens for {} bytes", ids.len(), text.len());
        assert!(ids.iter().all(|&t| t != EOT && (t as i64) < 300));
        assert!(ids.iter().any(|&t| t as usize >= FIRST_MERGE), "merges are used");
        // Bytes keep their ids.
        assert_eq!(tok.encode(b"\x07").unwrap(), vec![7]);
        // Training is deterministic.
        assert_eq!(TextTokenizer::train_bpe([text.as_str()].into_iter(), 300).unwrap().fingerprint(), tok.fingerprint());
        assert_ne!(TextTokenizer::Byte.fingerprint(), tok.fingerprint());
        let table = tok.token_bytes();
        assert!(table[EOT as usize].is_empty());
        assert_eq!(ids.iter().map(|&t| table[t as usize].len()).sum::<usize>(), text.len());

        // tokenizer.json round-trips, and the crate reads it as it is, to the same ids.
        let dir = std::env::temp_dir().join(format!("frugal-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = TextTokenizer::from_file(&path, None).unwrap();
        assert_eq!(loaded.fingerprint(), tok.fingerprint());
        assert_eq!(loaded.encode(text.as_bytes()).unwrap(), ids);
        assert_eq!(loaded.end_of_text(), EOT);
        let plain = Tokenizer::from_file(&path).unwrap();
        let plain_ids: Vec<u32> = plain.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(plain_ids, ids);
        assert_eq!(plain.decode(&plain_ids, false).unwrap(), text);
        assert_eq!(plain.token_to_id(EOT_TEXT), Some(EOT));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tokenizer_in_another_layout_keeps_its_own_ids() {
        // GPT-2's layout: end-of-text last, a merge before it.
        let mut vocab = base_vocab();
        vocab.insert(EOT_TEXT.into(), 257);
        vocab.insert("ab".into(), 256);
        let foreign = byte_level_tokenizer(vocab, vec![("a".into(), "b".into())]).unwrap();
        let dir = std::env::temp_dir().join(format!("frugal-tokenizer-foreign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        foreign.save(&path, false).unwrap();
        let tok = TextTokenizer::from_file(&path, None).unwrap();
        assert_eq!((tok.vocab_size(), tok.end_of_text()), (258, 257));
        let ids = tok.encode(b"abc ab").unwrap();
        assert_eq!(ids, foreign.encode_fast("abc ab", false).unwrap().get_ids());
        assert!(ids.contains(&256));
        assert_eq!(tok.decode(&ids), b"abc ab");

        // A tokenizer_config.json beside it names the end-of-text; a name it lacks is refused.
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": {"content": "ab"}}"#).unwrap();
        assert_eq!(TextTokenizer::from_file(&path, None).unwrap().end_of_text(), 256);
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
        let e = format!("{:#}", TextTokenizer::from_file(&path, None).unwrap_err());
        assert!(e.contains("\"</s>\"") && e.contains("data.tokenizerFile.endOfText"), "{e}");
        // The spec's endOfText comes first.
        assert_eq!(TextTokenizer::from_file(&path, Some("ab")).unwrap().end_of_text(), 256);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_input_is_refused_with_the_fix() {
        let tok = TextTokenizer::train_bpe(["abab abab abab"].into_iter(), 260).unwrap();
        let e = tok.encode(b"caf\xe9").unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("data.tokenizer: byte"), "{e}");
        let e = tok.encode(b"one<|endoftext|>two").unwrap_err().to_string();
        assert!(e.contains(EOT_TEXT) && e.contains("remove it"), "{e}");
        let e = TextTokenizer::train_bpe(["x"].into_iter(), 100).unwrap_err().to_string();
        assert!(e.contains("model.vocabSize"), "{e}");

        // A tokenizer without an end-of-text token, unless one is named.
        let dir = std::env::temp_dir().join(format!("frugal-tokenizer-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let mut v = base_vocab();
        v.remove(EOT_TEXT);
        v.insert("<|im_end|>".into(), 256);
        let mut t = Tokenizer::new(BPE::builder().vocab_and_merges(v, vec![]).build().unwrap());
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevel::new(false, true, true)));
        t.add_special_tokens(&[AddedToken::from("<|im_end|>", true)]);
        t.save(&path, false).unwrap();
        let e = format!("{:#}", TextTokenizer::from_file(&path, None).unwrap_err());
        assert!(e.contains("has no end-of-text token") && e.contains("data.tokenizerFile.endOfText") && e.contains("</s>"), "{e}");
        assert_eq!(TextTokenizer::from_file(&path, Some("<|im_end|>")).unwrap().end_of_text(), 256);
        let e = format!("{:#}", TextTokenizer::from_file(&path, Some("<|eot|>")).unwrap_err());
        assert!(e.contains("\"<|eot|>\", which is not one of its tokens"), "{e}");
        std::fs::write(&path, "{\"not\": \"a tokenizer\"}").unwrap();
        let e = format!("{:#}", TextTokenizer::from_file(&path, None).unwrap_err());
        assert!(e.contains("is not a tokenizer.json"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);

        let e = vocabulary_mismatch(50_257, 257, "data.tokenizerFile.path gpt2/tokenizer.json").unwrap();
        assert!(e.contains("50257 tokens") && e.contains("holds 257") && e.contains("model.custom.vocabSize to 50257"), "{e}");
        assert_eq!(vocabulary_mismatch(50_257, 50_304, "x"), None);
    }
}
