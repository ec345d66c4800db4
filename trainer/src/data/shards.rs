//! Pre-tokenized shards in the common uint16 `.bin` layout (llm.c): a header of 256 little-endian
//! i32 (magic 20240520, version 1, token count), then the tokens as little-endian u16. A shard
//! directory holds `train_NNNNNN.bin`, `val_NNNNNN.bin`, the `tokenizer.json` they were written
//! with and `data.json` (fingerprint and counts).

use super::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: i32 = 20240520;
const VERSION: i32 = 1;
const HEADER_INTS: usize = 256;
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const META_FILE: &str = "data.json";

/// What `prepare` wrote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardMeta {
    pub source: String,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub data_fingerprint: String,
    pub tokenizer_fingerprint: String,
}

pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    let mut header = [0i32; HEADER_INTS];
    header[0] = MAGIC;
    header[1] = VERSION;
    header[2] = i32::try_from(tokens.len()).context("a shard holds at most 2^31 tokens")?;
    let mut bytes = Vec::with_capacity(HEADER_INTS * 4 + tokens.len() * 2);
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    let tmp = path.with_extension("bin.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn read_shard(path: &Path) -> Result<Vec<u16>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading shard {}", path.display()))?;
    ensure!(bytes.len() >= HEADER_INTS * 4, "shard {} is shorter than its header", path.display());
    let int = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    ensure!(int(0) == MAGIC && int(1) == VERSION, "{} is not a uint16 token shard (bad magic or version)", path.display());
    let n = int(2) as usize;
    let body = &bytes[HEADER_INTS * 4..];
    ensure!(body.len() == n * 2, "shard {} says {n} tokens but holds {} bytes of them", path.display(), body.len());
    Ok(body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

fn shard_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing shard directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "bin") && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{split}_")))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Writes a prepared corpus; returns the shard paths.
pub fn write_dir(dir: &Path, tokenizer: &TextTokenizer, train: &[u16], val: &[u16], shard_tokens: usize, meta: &ShardMeta) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for old in shard_files(dir, "train")?.into_iter().chain(shard_files(dir, "val")?) {
        std::fs::remove_file(&old).with_context(|| format!("removing old shard {}", old.display()))?;
    }
    let mut written = vec![];
    for (split, tokens) in [("train", train), ("val", val)] {
        for (i, chunk) in tokens.chunks(shard_tokens.max(1)).enumerate() {
            let p = dir.join(format!("{split}_{i:06}.bin"));
            write_shard(&p, chunk)?;
            written.push(p);
        }
    }
    tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(meta)?)?;
    Ok(written)
}

/// Reads a shard directory: training tokens, validation tokens and the tokenizer.
pub fn read_dir(dir: &Path) -> Result<(Vec<u16>, Vec<u16>, TextTokenizer)> {
    let tokenizer = TextTokenizer::load(&dir.join(TOKENIZER_FILE))
        .with_context(|| format!("{} needs the tokenizer file its shards were written with", dir.display()))?;
    let mut out = vec![];
    for split in ["train", "val"] {
        let mut tokens = vec![];
        for f in shard_files(dir, split)? {
            tokens.extend(read_shard(&f)?);
        }
        out.push(tokens);
    }
    let val = out.pop().unwrap_or_default();
    let train = out.pop().unwrap_or_default();
    if train.is_empty() {
        bail!("{} holds no train_*.bin shards (write them with `frugal-trainer prepare`)", dir.display());
    }
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = train.iter().chain(&val).find(|&&t| i64::from(t) >= vocab) {
        bail!("shard token {bad} is outside the tokenizer's vocabulary of {vocab}");
    }
    Ok((train, val, tokenizer))
}
