//! Pre-tokenized shards in the common `.bin` layout (llm.c): a header of 256 little-endian i32
//! (magic 20240520, version, token count), then the tokens little-endian. Version 1 holds uint16
//! tokens (llm.c's own), version 2 uint32, for vocabularies past 65,536; a reader that knows only
//! version 1 refuses a version 2 shard rather than misreading it. A shard directory holds
//! `train_NNNNNN.bin`, `val_NNNNNN.bin`, the `tokenizer.json` they were written with and
//! `data.json` (counts, width, end-of-text and fingerprints), written last.
//!
//! Shards are written as tokens come and read where they lie, a window at a time, so neither
//! writing nor training holds a split in memory.

use super::streamed::{RemoteShard, Streamed, StreamedShard};
use super::tokenizer::TextTokenizer;
use super::tokens::{Tokens, Width};
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: i32 = 20240520;
const VERSION_U16: i32 = 1;
const VERSION_U32: i32 = 2;
const HEADER_BYTES: usize = 256 * 4;
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
    /// Bytes a token takes in the shards: 2 (uint16) or 4 (uint32); shards written before it was
    /// recorded hold uint16.
    #[serde(default = "two")]
    pub bytes_per_token: u8,
    /// The token that closes each document; unset in shards written before it was recorded,
    /// whose tokenizer's own `<|endoftext|>` it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_text: Option<String>,
}

fn two() -> u8 {
    2
}

/// Writes one split as numbered shards of at most `shard_tokens` tokens, as tokens come. A
/// shard is written under a temporary name and renamed once complete.
pub struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    width: Width,
    shard_tokens: usize,
    open: Option<OpenShard>,
    written: Vec<PathBuf>,
    tokens: u64,
    buf: Vec<u8>,
}

struct OpenShard {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    tokens: usize,
}

impl ShardWriter {
    pub fn new(dir: &Path, split: &'static str, width: Width, shard_tokens: usize) -> Self {
        Self { dir: dir.into(), split, width, shard_tokens: shard_tokens.max(1), open: None, written: vec![], tokens: 0, buf: vec![] }
    }

    pub fn push(&mut self, mut ids: &[u32]) -> Result<()> {
        while !ids.is_empty() {
            if self.open.is_none() {
                let path = self.dir.join(format!("{}_{:06}.bin", self.split, self.written.len()));
                let tmp = path.with_extension("bin.tmp");
                let mut file =
                    std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
                file.write_all(&[0u8; HEADER_BYTES])?;
                self.open = Some(OpenShard { file, tmp, path, tokens: 0 });
            }
            let Some(shard) = self.open.as_mut() else { continue };
            let take = (self.shard_tokens - shard.tokens).min(ids.len());
            self.buf.clear();
            for &id in &ids[..take] {
                self.width.write(id, &mut self.buf);
            }
            shard.file.write_all(&self.buf).with_context(|| format!("writing {}", shard.tmp.display()))?;
            shard.tokens += take;
            self.tokens += take as u64;
            ids = &ids[take..];
            if shard.tokens == self.shard_tokens {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Completes the open shard: its header, then its name.
    fn close(&mut self) -> Result<()> {
        let Some(shard) = self.open.take() else { return Ok(()) };
        let mut header = Vec::with_capacity(12);
        let version = match self.width {
            Width::U16 => VERSION_U16,
            Width::U32 => VERSION_U32,
        };
        let count = i32::try_from(shard.tokens).context("a shard holds at most 2^31 tokens")?;
        for h in [MAGIC, version, count] {
            header.extend_from_slice(&h.to_le_bytes());
        }
        let mut f = shard.file.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", shard.tmp.display()))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header)?;
        f.sync_all()?;
        std::fs::rename(&shard.tmp, &shard.path).with_context(|| format!("writing {}", shard.path.display()))?;
        self.written.push(shard.path);
        Ok(())
    }

    /// Tokens pushed so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Closes the last shard; returns the shards written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.close()?;
        Ok(self.written)
    }
}

/// A shard file, open: its width and the byte range of its tokens.
fn open_shard(path: &Path) -> Result<(Width, std::fs::File, std::ops::Range<u64>)> {
    let f = std::fs::File::open(path).with_context(|| format!("reading shard {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("reading shard {}", path.display()))?.len();
    let mut header = [0u8; 12];
    ensure!(len >= HEADER_BYTES as u64 && f.read_exact_at(&mut header, 0).is_ok(), "shard {} is shorter than its header", path.display());
    let width = shard_width(&header, len, &path.display().to_string())?;
    Ok((width, f, HEADER_BYTES as u64..len))
}

/// The width of the shard `what` of `len` bytes whose header begins `header`, which must say it
/// holds as many tokens as its body.
fn shard_width(header: &[u8; 12], len: u64, what: &str) -> Result<Width> {
    let int = |i: usize| i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    ensure!(int(0) == MAGIC, "{what} is not a token shard (bad magic)");
    let width = match int(1) {
        VERSION_U16 => Width::U16,
        VERSION_U32 => Width::U32,
        v => bail!("shard {what} has version {v}; this trainer reads 1 (uint16) and 2 (uint32)"),
    };
    let n = int(2) as u64;
    let body = len - HEADER_BYTES as u64;
    ensure!(body == n * width.bytes() as u64, "shard {what} says {n} tokens but holds {body} bytes of them");
    Ok(width)
}

/// The training and validation tokens of shards in a bucket, as `streamed` lists them, read in
/// ranges when asked for.
fn streamed_splits(streamed: &Streamed) -> Result<(Tokens, Tokens)> {
    let (store, cache) = streamed.open()?;
    let mut splits = vec![];
    let mut width = None;
    for split in ["train", "val"] {
        let mut names: Vec<&StreamedShard> =
            streamed.shards.iter().filter(|s| s.name.starts_with(&format!("{split}_")) && s.name.ends_with(".bin")).collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        let mut parts = vec![];
        for shard in names {
            let remote = Arc::new(RemoteShard { store: store.clone(), shard: shard.clone(), cache: cache.clone() });
            let what = remote.uri();
            ensure!(shard.size >= HEADER_BYTES as u64, "shard {what} is shorter than its header");
            let mut header = [0u8; 12];
            remote.read_at(&mut header, 0).with_context(|| format!("{} ({}): reading shard {what}", streamed.field, streamed.uri))?;
            let w = shard_width(&header, shard.size, &what)?;
            if *width.get_or_insert(w) != w {
                bail!("shard {what} holds {}-byte tokens, the others {}: prepare the shards again", w.bytes(), width.map_or(0, Width::bytes));
            }
            parts.push((remote, HEADER_BYTES as u64..shard.size));
        }
        splits.push(Tokens::in_bucket(width.unwrap_or(Width::U16), parts));
    }
    let val = splits.pop().unwrap_or_else(|| Tokens::new(Width::U16));
    let train = splits.pop().unwrap_or_else(|| Tokens::new(Width::U16));
    Ok((train, val))
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

/// Removes the shards of an earlier `prepare` from `dir` (creating it if needed), so that none
/// is left beside the new ones.
pub fn clear_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for old in shard_files(dir, "train")?.into_iter().chain(shard_files(dir, "val")?) {
        std::fs::remove_file(&old).with_context(|| format!("removing old shard {}", old.display()))?;
    }
    let _ = std::fs::remove_file(dir.join(META_FILE));
    Ok(())
}

/// Writes the tokenizer and `data.json`, last: the shards beside them are complete.
pub fn commit_dir(dir: &Path, tokenizer: &TextTokenizer, meta: &ShardMeta) -> Result<()> {
    tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(meta)?).with_context(|| format!("writing {}", dir.join(META_FILE).display()))
}

/// The training and validation tokens of a shard directory, left in their files (or in their
/// bucket, when the directory is the local copy of streamed shards).
pub fn read_splits(dir: &Path) -> Result<(Tokens, Tokens)> {
    if let Some(streamed) = Streamed::in_dir(dir)? {
        return streamed_splits(&streamed);
    }
    let mut splits = vec![];
    let mut width = None;
    for split in ["train", "val"] {
        let paths = shard_files(dir, split)?;
        let mut parts = vec![];
        for path in &paths {
            let (w, file, body) = open_shard(path)?;
            if *width.get_or_insert(w) != w {
                bail!(
                    "shard {} holds {}-byte tokens, the others {}: prepare the shards again",
                    path.display(),
                    w.bytes(),
                    width.map_or(0, Width::bytes)
                );
            }
            parts.push((file, path.as_path(), body));
        }
        splits.push(Tokens::in_files(width.unwrap_or(Width::U16), parts));
    }
    let val = splits.pop().unwrap_or_else(|| Tokens::new(Width::U16));
    let train = splits.pop().unwrap_or_else(|| Tokens::new(Width::U16));
    Ok((train, val))
}

/// Reads a shard directory: training tokens, validation tokens (both left in their files, or
/// their bucket) and the tokenizer; for shards in a bucket, also the data fingerprint `prepare`
/// recorded (computing it would fetch every token).
pub fn read_dir(dir: &Path) -> Result<(Tokens, Tokens, TextTokenizer, Option<String>)> {
    let meta: Option<ShardMeta> = match std::fs::read(dir.join(META_FILE)) {
        Ok(bytes) => {
            Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is not the data.json prepare writes", dir.join(META_FILE).display()))?)
        }
        Err(_) => None,
    };
    let end_of_text = meta.as_ref().and_then(|m| m.end_of_text.as_deref());
    let tokenizer = TextTokenizer::from_file(&dir.join(TOKENIZER_FILE), end_of_text)
        .with_context(|| format!("{} needs the tokenizer file its shards were written with", dir.display()))?;
    let (train, val) = read_splits(dir)?;
    if train.is_empty() {
        bail!("{} holds no train_*.bin shards (write them with `frugal-trainer prepare`)", dir.display());
    }
    if train.is_streamed() {
        // every id is checked against the vocabulary only where reading them all is free
        let meta = meta.with_context(|| format!("{} has no {META_FILE}: streamed shards need the one `prepare` writes", dir.display()))?;
        return Ok((train, val, tokenizer, Some(meta.data_fingerprint)));
    }
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = [&train, &val].into_iter().filter_map(Tokens::max).find(|&t| i64::from(t) >= vocab) {
        bail!("shard token {bad} is outside the tokenizer's vocabulary of {vocab}");
    }
    Ok((train, val, tokenizer, None))
}
