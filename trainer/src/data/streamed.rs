//! Shards read from a bucket in ranges, as training needs them, through a cache of bounded size:
//! a corpus larger than the pod's disk trains, and each process fetches only the blocks around
//! the windows it draws (the replicas of a data-parallel run draw different windows, so each
//! reads only its share).
//!
//! The inputs step ([`crate::inputs`]) brings a shard directory's small files (`data.json`, the
//! tokenizer) into the local copy and writes [`STREAMED_FILE`] there instead of the `.bin`
//! shards: the bucket, the shards' names, sizes and ETags. [`super::shards`] then reads each
//! shard's header and windows with ranged GETs of [`BLOCK_BYTES`]-byte blocks, each for the
//! listed ETag (a shard replaced in the bucket mid-run is refused, never read half old and half
//! new), kept in memory up to [`cache_bytes`] and evicted least recently used.

use crate::store::{Location, Store};
use anyhow::{Context, Result};
use frugal_api::v1alpha1::ObjectStoreSpec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The file in a shard directory's local copy that says its shards are in a bucket.
pub const STREAMED_FILE: &str = "streamed.json";

/// Bytes a block is fetched in: `FRUGAL_STREAM_BLOCK_BYTES`, else 1 MiB.
pub const BLOCK_BYTES: u64 = 1 << 20;

/// The cache's bound: `FRUGAL_STREAM_CACHE_BYTES`, else 256 MiB (at least one block).
pub fn cache_bytes() -> u64 {
    env_bytes("FRUGAL_STREAM_CACHE_BYTES").unwrap_or(256 << 20)
}

fn block_bytes() -> u64 {
    env_bytes("FRUGAL_STREAM_BLOCK_BYTES").unwrap_or(BLOCK_BYTES).max(512)
}

fn env_bytes(key: &str) -> Option<u64> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// Bytes fetched from buckets by this process's streamed shards (blocks, not counting hits).
static FETCHED: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has fetched for streamed shards so far.
pub fn fetched_bytes() -> u64 {
    FETCHED.load(Ordering::Relaxed)
}

/// What [`STREAMED_FILE`] records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Streamed {
    /// The spec's field (`spec.data.source.shards.path`) and its URI, for errors.
    pub field: String,
    pub uri: String,
    /// The store settings the inputs were reached with (credentials are the environment's).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub shards: Vec<StreamedShard>,
}

/// A shard in the bucket: its name under the prefix, size and ETag when listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamedShard {
    pub name: String,
    pub size: u64,
    pub etag: Option<String>,
}

impl Streamed {
    /// The record in `dir`, if its shards are streamed.
    pub fn in_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(STREAMED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is not a streamed-shards record", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record into `dir`, replacing any earlier one whole.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!(".{STREAMED_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STREAMED_FILE)).with_context(|| format!("writing {}", dir.join(STREAMED_FILE).display()))
    }

    /// Connects to the bucket with this process's credentials, and a cache for its shards.
    pub fn open(&self) -> Result<(Store, Arc<BlockCache>)> {
        let spec = ObjectStoreSpec { uri: self.uri.clone(), endpoint: self.endpoint.clone(), region: self.region.clone(), credentials_secret: None };
        let store = Location::of(&self.field, &spec).and_then(|l| l.open()).map_err(anyhow::Error::msg)?;
        Ok((store, Arc::new(BlockCache::new(cache_bytes(), block_bytes()))))
    }
}

/// One shard in the bucket, read through the cache.
pub struct RemoteShard {
    pub store: Store,
    pub shard: StreamedShard,
    pub cache: Arc<BlockCache>,
}

impl RemoteShard {
    /// `buf.len()` bytes from `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let block = self.cache.block;
        let end = offset + buf.len() as u64;
        anyhow::ensure!(end <= self.shard.size, "bytes {offset}..{end} of {}, which holds {}", self.shard.name, self.shard.size);
        let mut at = offset;
        while at < end {
            let index = at / block;
            let start = index * block;
            let bytes = self.cache.get(&self.shard.name, index, || {
                let range = start..(start + block).min(self.shard.size);
                let got = self.store.get_range(&self.shard.name, range.clone(), self.shard.etag.as_deref())?;
                anyhow::ensure!(got.len() as u64 == range.end - range.start, "{} gave {} bytes for {range:?}", self.shard.name, got.len());
                FETCHED.fetch_add(got.len() as u64, Ordering::Relaxed);
                Ok(got)
            })?;
            let upto = end.min(start + bytes.len() as u64);
            let into = (at - offset) as usize..(upto - offset) as usize;
            buf[into].copy_from_slice(&bytes[(at - start) as usize..(upto - start) as usize]);
            at = upto;
        }
        Ok(())
    }

    /// The shard's URI, for errors.
    pub fn uri(&self) -> String {
        format!("{}/{}", self.store.location.uri(), self.shard.name)
    }
}

/// Blocks of streamed shards held in memory, at most `capacity` bytes, least recently used
/// evicted first.
pub struct BlockCache {
    capacity: u64,
    block: u64,
    inner: Mutex<Blocks>,
}

/// A block: its shard's name and its index in it.
type BlockKey = (String, u64);

/// A block's bytes, and the tick it was last used at.
type Held = (Arc<Vec<u8>>, u64);

#[derive(Default)]
struct Blocks {
    held: HashMap<BlockKey, Held>,
    bytes: u64,
    tick: u64,
}

impl BlockCache {
    pub fn new(capacity: u64, block: u64) -> Self {
        Self { capacity: capacity.max(block), block, inner: Mutex::default() }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> u64 {
        self.inner.lock().expect("the block cache").bytes
    }

    /// Block `index` of `name`, fetched with `fetch` when not held. The lock is not held while
    /// fetching: two readers of one missing block may both fetch it.
    fn get(&self, name: &str, index: u64, fetch: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let key = (name.to_string(), index);
        {
            let mut b = self.inner.lock().expect("the block cache");
            b.tick += 1;
            let tick = b.tick;
            if let Some((bytes, used)) = b.held.get_mut(&key) {
                *used = tick;
                return Ok(bytes.clone());
            }
        }
        let bytes = Arc::new(fetch()?);
        let mut b = self.inner.lock().expect("the block cache");
        b.tick += 1;
        let tick = b.tick;
        if let Some((old, _)) = b.held.insert(key, (bytes.clone(), tick)) {
            b.bytes -= old.len() as u64;
        }
        b.bytes += bytes.len() as u64;
        while b.bytes > self.capacity {
            let Some(oldest) = b.held.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else { break };
            if let Some((gone, _)) = b.held.remove(&oldest) {
                b.bytes -= gone.len() as u64;
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_at_most_its_bound_and_evicts_the_least_recently_used() {
        let cache = BlockCache::new(3 * 4, 4);
        let fetched = std::cell::Cell::new(0);
        let get = |name: &str, i: u64| {
            cache
                .get(name, i, || {
                    fetched.set(fetched.get() + 1);
                    Ok(vec![i as u8; 4])
                })
                .unwrap()
        };
        for i in 0..3 {
            assert_eq!(*get("a", i), vec![i as u8; 4]);
        }
        assert_eq!((fetched.get(), cache.held_bytes()), (3, 12));
        // block 0 used again: block 1 is the least recently used when block 3 comes
        get("a", 0);
        get("a", 3);
        assert_eq!((fetched.get(), cache.held_bytes()), (4, 12));
        get("a", 0);
        get("a", 2);
        assert_eq!(fetched.get(), 4, "0 and 2 are still held");
        get("a", 1);
        assert_eq!(fetched.get(), 5, "1 was evicted");
        // another shard's block of the same index is another block
        get("b", 0);
        assert_eq!((fetched.get(), cache.held_bytes()), (6, 12));
    }
}
